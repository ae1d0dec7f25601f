#!/usr/bin/env python3
"""Headless Chromium's RTCPeerConnection as an SDP peer for the watrunk-sdp acceptance tests, driven over the DevTools
protocol (CDP) with python3-websockets; no Playwright.  Run with /usr/bin/python3.  Adapted from the shared
peers/chromium/chromium_peer.py (page code: peer.js next to this file).

  chromium_peer.py [--offer-out OFFER [--control-answer-in BAD --control-result RES0] [--answer-in ANSWER --result RES]]
                   [--remote-offer-in THEIRS --answer-out OURS --answer-result RES2] [--timeout 20]

Same contract as aiortc_peer.py: --offer-out writes pc1's offer (after ICE gathering is complete, CRLF);
--control-answer-in/--control-result (optional) apply a deliberately broken answer (to a separate pc with an offer
of the same shape), which should fail;
--answer-in waits for the answer file and applies pc.setRemoteDescription({type:'answer'}), RES gets "OK" plus a JSON
line (signalingState, currentDirection, the sender's negotiated codecs with payload types) or the error text;
--remote-offer-in waits for an offer, pc2 answers it (setRemoteDescription + createAnswer + setLocalDescription) and
writes the answer to --answer-out, RES2 gets "OK"/error.
Chromium skips the loopback interface for ICE: run inside `unshare -n` with a veth pair (see capture-offers.sh).
`--disable-features=WebRtcHideLocalIpsWithMdns` keeps real IPs in the candidates instead of *.local names.
Exit status 0 when every requested step succeeded.
"""
import argparse, asyncio, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
HERE = os.path.dirname(os.path.abspath(__file__))


class CDP:
    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method, **params):
        self.n += 1
        my = self.n
        await self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    async def js(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError((d.get("exception") or {}).get("description") or d.get("text") or json.dumps(d)[:2000])
        return r["result"].get("value")


def write(path, text):
    text = "".join(l.rstrip("\r") + "\r\n" for l in text.splitlines())
    with open(path + ".tmp", "w", newline="") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_result(path, ok, info=None):
    if not path:
        return
    with open(path + ".tmp", "w") as f:
        f.write(("OK\n" + (json.dumps(info) + "\n" if info else "")) if ok is True else str(ok).rstrip() + "\n")
    os.replace(path + ".tmp", path)


async def wait_file(path, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path, newline="").read()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {path} within {timeout} s")


T0 = time.monotonic()


def note(msg):
    print(f"{time.monotonic() - T0:6.2f} {msg}", file=sys.stderr, flush=True)


async def run(a, cdp):
    ok = True
    note("page attached")
    await cdp.js(open(os.path.join(HERE, "peer.js")).read())
    if a.offer_out:
        if a.control_answer_in:
            await cdp.js("sdpPeer.controlOffer()")
        o = await cdp.js("sdpPeer.offer()")
        if not o["complete"]:
            print("warning: ICE gathering did not complete within 5 s", file=sys.stderr)
        write(a.offer_out, o["sdp"])
        note("offer written")
        if a.control_answer_in:
            try:
                bad = await wait_file(a.control_answer_in, a.timeout)
                write_result(a.control_result, True, await cdp.js(f"sdpPeer.acceptControl({json.dumps(bad)})"))
            except Exception as e:
                write_result(a.control_result, f"{type(e).__name__}: {e}")
        if a.answer_in:
            try:
                ans = await wait_file(a.answer_in, a.timeout)
                write_result(a.result, True, await cdp.js(f"sdpPeer.accept({json.dumps(ans)})"))
            except Exception as e:
                write_result(a.result, f"{type(e).__name__}: {e}")
                ok = False
    if a.remote_offer_in:
        try:
            off = await wait_file(a.remote_offer_in, a.timeout)
            r = await cdp.js(f"sdpPeer.answer({json.dumps(off)})")
            write(a.answer_out, r["sdp"])
            note("answer written")
            write_result(a.answer_result, True, r["negotiated"])
        except Exception as e:
            write_result(a.answer_result, f"{type(e).__name__}: {e}")
            ok = False
    await cdp.js("sdpPeer.close()")
    return ok


async def main(a):
    prof = tempfile.mkdtemp(prefix="chromium-sdp-profile-")
    log = open(os.path.join(prof, "stderr.log"), "w")
    proc = subprocess.Popen(["/usr/bin/chromium", *FLAGS, f"--user-data-dir={prof}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        portfile = os.path.join(prof, "DevToolsActivePort")
        for _ in range(1200):               # 30 s: slow when the machine is busy
            if os.path.exists(portfile) and open(portfile).read().strip():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            time.sleep(0.025)
        port = open(portfile).read().split()[0]
        note("chromium started")
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = [p for p in pages if p["type"] == "page"][0]
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            return 0 if await run(a, CDP(ws)) else 1
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if os.environ.get("CHROMIUM_KEEP_PROFILE"):
            print("profile:", prof, file=sys.stderr)
        else:
            shutil.rmtree(prof, ignore_errors=True)


if __name__ == "__main__":
    # stopped by PID (the scripts' EXIT trap): still take Chromium down with us (the finally in main)
    def on_term(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # once: a second TERM must not interrupt the clean-up
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
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
