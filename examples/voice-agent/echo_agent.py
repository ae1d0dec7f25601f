#!/usr/bin/env python3
"""The smallest voice agent for watrunk: it listens on the sink address (`watrunk serve --sink`),
receives each call's audio as plain RTP (Opus, 48 kHz clock, 20 ms packets) and plays it back to
the caller, so a caller hears themselves after a short delay. Python standard library only.

Each call arrives from its own local port L (announced as `local_rtp` in watrunk's call.answered
and media.up events); sending RTP to L puts audio into that call. A real agent would decode the
Opus payloads, run speech recognition and a model, and send synthesised Opus back the same way.

    python3 echo_agent.py --listen 127.0.0.1:4000 [--delay-ms 500]
"""
import argparse
import random
import socket
import struct
import time
from collections import deque


class Call:
    """Our outgoing RTP stream into one call: our own SSRC, sequence numbers and timestamps."""

    def __init__(self):
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.pending = deque(maxlen=200)  # (due time, payload type, payload): bounded
        self.last_heard = time.monotonic()

    def packet(self, pt, payload):
        header = struct.pack("!BBHII", 0x80, pt & 0x7F, self.seq, self.ts, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF  # 20 ms at 48 kHz
        return header + payload


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:4000", help="the sink address given to watrunk (--sink)")
    ap.add_argument("--delay-ms", type=float, default=300, help="how long after hearing it the audio is played back")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: run until interrupted)")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host.strip("[]"), int(port)))
    sock.settimeout(0.005)
    calls = {}
    started = time.monotonic()
    print("echo agent on %s" % args.listen, flush=True)
    while not args.seconds or time.monotonic() - started < args.seconds:
        try:
            data, source = sock.recvfrom(2048)
            if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:  # RTP, not RTCP
                call = calls.get(source)
                if call is None:
                    call = calls[source] = Call()
                    print("new call from %s:%d" % source[:2], flush=True)
                cc = data[0] & 0x0F
                offset = 12 + 4 * cc
                if data[0] & 0x10 and len(data) >= offset + 4:  # skip a header extension
                    offset += 4 + 4 * struct.unpack("!H", data[offset + 2:offset + 4])[0]
                call.pending.append((time.monotonic() + args.delay_ms / 1000, data[1], data[offset:]))
                call.last_heard = time.monotonic()
        except socket.timeout:
            pass
        now = time.monotonic()
        for source, call in list(calls.items()):
            while call.pending and call.pending[0][0] <= now:
                _, pt, payload = call.pending.popleft()
                sock.sendto(call.packet(pt, payload), source)
            if now - call.last_heard > 10 and not call.pending:
                print("call from %s:%d is quiet: forgotten" % source[:2], flush=True)
                del calls[source]


if __name__ == "__main__":
    main()
