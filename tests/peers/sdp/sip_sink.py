#!/usr/bin/env python3
"""A tiny SIP/UDP listener that records the SDP body of every INVITE it gets and refuses the call (486).

  sip_sink.py --bind 127.0.0.1:5090 --out-dir DIR --expect user1,user2 [--timeout 10]

For an INVITE from sip:USER@..., the body goes to DIR/USER.sdp (CRLF kept as received) and the whole request to
DIR/USER.invite. Answers 100 Trying + 486 Busy Here, absorbs the ACK. Exits 0 once every --expect user was seen,
1 on timeout. Used by capture-offers.sh to get baresip's offers without a real call.
"""
import argparse, os, re, socket, sys, time


def main(a):
    host, port = a.bind.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    want = set(u for u in a.expect.split(",") if u)
    seen = set()
    end = time.monotonic() + a.timeout
    while want - seen:
        left = end - time.monotonic()
        if left <= 0:
            print(f"sip_sink: timeout, missing {sorted(want - seen)}", file=sys.stderr)
            return 1
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        if not lines[0].startswith("INVITE "):
            continue                                   # ACK, retransmitted provisional answers, etc.
        hdr = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdr.setdefault(k.strip().lower(), []).append(v.strip())
        frm = (hdr.get("from") or hdr.get("f") or [""])[0]
        m = re.search(r"sips?:([^@;>]+)@", frm)
        user = m.group(1) if m else "unknown"
        if user not in seen:
            open(os.path.join(a.out_dir, user + ".sdp"), "wb").write(body)
            open(os.path.join(a.out_dir, user + ".invite"), "wb").write(data)
            seen.add(user)
        keep = []
        for name in ("via", "v"):
            keep += [f"Via: {v}" for v in hdr.get(name, [])]
        to = (hdr.get("to") or hdr.get("t") or [""])[0]
        if ";tag=" not in to:
            to += ";tag=sink" + str(abs(hash(frm)) % 100000)
        common = keep + [f"From: {frm}", f"To: {to}", f"Call-ID: {(hdr.get('call-id') or hdr.get('i') or [''])[0]}",
                         f"CSeq: {hdr.get('cseq', [''])[0]}"]
        for status in ("100 Trying", "486 Busy Here"):
            s.sendto(("\r\n".join([f"SIP/2.0 {status}"] + common + ["Content-Length: 0", "", ""])).encode(), peer)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True); p.add_argument("--out-dir", required=True)
    p.add_argument("--expect", required=True); p.add_argument("--timeout", type=float, default=10)
    sys.exit(main(p.parse_args()))
