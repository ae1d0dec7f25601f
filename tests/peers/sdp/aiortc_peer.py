#!/usr/bin/env python3
"""aiortc (Debian python3-aiortc 1.4) as an SDP peer for the watrunk-sdp acceptance tests.  Run with /usr/bin/python3.

  aiortc_peer.py [--offer-out OFFER [--control-answer-in BAD --control-result RES0] [--answer-in ANSWER --result RES]]
                 [--remote-offer-in THEIRS --answer-out OURS --answer-result RES2] [--timeout 20]

  --offer-out       pc1 (one audio track) makes a complete offer (aiortc gathers before setLocalDescription returns:
                    no trickle) and writes it (CRLF).
  --control-answer-in  (optional, before --answer-in) a deliberately broken answer, applied to a separate pc with an
                    offer of the same shape;
                    --control-result gets "OK" (bad: the stack did not notice) or the error text (expected).
  --answer-in       then waits for that file and applies it with setRemoteDescription(answer); RES gets "OK" (plus a
                    JSON line with what aiortc negotiated) or the exception text.
  --remote-offer-in pc2 waits for an offer file, does setRemoteDescription(offer) + createAnswer + setLocalDescription and
                    writes its answer to --answer-out; RES2 gets "OK" or the exception text.
No media is sent or checked (the peers exit right after the SDP step). iceServers=[] (else aiortc adds a public STUN
server). aioice never gathers 127.0.0.1: run it inside `unshare -n` with 198.18.0.1 on lo (see capture-offers.sh).
Exit status 0 when every requested step succeeded.
"""
import argparse, asyncio, json, os, sys, time, traceback

from aiortc import RTCPeerConnection, RTCSessionDescription, RTCConfiguration
from aiortc.mediastreams import AudioStreamTrack


def write(path, text):
    """Atomic write, CRLF line ends."""
    text = "".join(l.rstrip("\r") + "\r\n" for l in text.splitlines())
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write_result(path, ok, info=None):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(("OK\n" + (json.dumps(info) + "\n" if info else "")) if ok is True else str(ok).rstrip() + "\n")
    os.replace(tmp, path)


async def wait_file(path, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path, newline="").read()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {path} within {timeout} s")


def err(e):
    return f"{type(e).__name__}: {e}"


def negotiated(pc):
    out = {"signalingState": pc.signalingState}
    t = pc.getTransceivers()
    if t:
        out["currentDirection"] = t[0].currentDirection
        # the codecs aiortc will send with, in order (the first one is used)
        out["codecs"] = [{"payloadType": c.payloadType, "mimeType": c.mimeType, "clockRate": c.clockRate,
                          "channels": c.channels} for c in (getattr(t[0], "_codecs", None) or [])]
    dtls = None
    try:
        dtls = t[0].sender.transport
        out["dtlsRole"] = dtls._role          # "client" or "server" once the remote description is applied
        out["iceControlling"] = dtls.transport.transport.iceControlling
        rp = dtls.transport.transport._connection  # aioice.Connection
        out["remoteCandidates"] = [f"{c.host}:{c.port}" for c in rp.remote_candidates]
        out["remoteIceLite"] = getattr(rp, "remote_is_lite", None)
    except Exception:                          # private attributes: best effort only
        pass
    return out


async def offer_side(a):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    try:
        await pc.setLocalDescription(await pc.createOffer())
        write(a.offer_out, pc.localDescription.sdp)
        if not a.answer_in:
            return True
        if a.control_answer_in:
            # a separate pc with an offer of the same shape (mid 0, one audio section): pc must not see the bad answer
            pcc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcc.addTrack(AudioStreamTrack())
            try:
                await pcc.setLocalDescription(await pcc.createOffer())
                bad = await wait_file(a.control_answer_in, a.timeout)
                await pcc.setRemoteDescription(RTCSessionDescription(bad, "answer"))
                write_result(a.control_result, True, negotiated(pcc))
            except Exception as e:
                write_result(a.control_result, err(e))
            finally:
                await pcc.close()
        try:
            ans = await wait_file(a.answer_in, a.timeout)
            await pc.setRemoteDescription(RTCSessionDescription(ans, "answer"))
            write_result(a.result, True, negotiated(pc))
            return True
        except Exception as e:
            write_result(a.result, err(e))
            traceback.print_exc()
            return False
    finally:
        await pc.close()


async def answer_side(a):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    try:
        off = await wait_file(a.remote_offer_in, a.timeout)
        await pc.setRemoteDescription(RTCSessionDescription(off, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        write(a.answer_out, pc.localDescription.sdp)
        write_result(a.answer_result, True, negotiated(pc))
        return True
    except Exception as e:
        write_result(a.answer_result, err(e))
        traceback.print_exc()
        return False
    finally:
        await pc.close()


async def main(a):
    # aiortc starts ICE checks in the background after setRemoteDescription; closing the pc right away makes those
    # tasks log "Task exception was never retrieved" noise: nothing to do with the SDP step
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    jobs = []
    if a.offer_out:
        jobs.append(offer_side(a))
    if a.remote_offer_in:
        jobs.append(answer_side(a))
    res = await asyncio.gather(*jobs)
    return 0 if all(res) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--offer-out"); p.add_argument("--answer-in"); p.add_argument("--result")
    p.add_argument("--control-answer-in"); p.add_argument("--control-result")
    p.add_argument("--remote-offer-in"); p.add_argument("--answer-out"); p.add_argument("--answer-result")
    p.add_argument("--timeout", type=float, default=20)
    a = p.parse_args()
    if not (a.offer_out or a.remote_offer_in) or (a.answer_in and not (a.offer_out and a.result)) \
            or (a.remote_offer_in and not a.answer_out):
        p.error("need --offer-out [--answer-in --result] and/or --remote-offer-in --answer-out [--answer-result]")
    sys.exit(asyncio.run(main(a)))
