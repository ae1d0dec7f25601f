#!/usr/bin/env python3
"""consent.py CAP.pcap PORT: the STUN binding traffic of the media socket on PORT once its call is set
up (after its first SRTP packet), as JSON: requests and success answers, each way. This is consent
freshness (RFC 7675) as the wire shows it: {"sent": {"requests", "answers"}, "received": {...}}."""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_helper import read_pcap

port = int(sys.argv[2])
counts = {"sent": {"requests": 0, "answers": 0}, "received": {"requests": 0, "answers": 0}}
set_up = False
for _ts, _src, sport, _dst, dport, payload in read_pcap(sys.argv[1]):
    if port not in (sport, dport) or len(payload) < 20:
        continue
    if sport == port and 128 <= payload[0] <= 191:
        set_up = True
    if not set_up or payload[4:8] != b"\x21\x12\xa4\x42":
        continue
    kind = {0x0001: "requests", 0x0101: "answers"}.get(int.from_bytes(payload[0:2], "big"))
    if kind:
        counts["sent" if sport == port else "received"][kind] += 1
print(json.dumps(counts))
