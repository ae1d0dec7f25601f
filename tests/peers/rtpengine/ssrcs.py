#!/usr/bin/env python3
"""ssrcs.py CAP.pcap SRC_PORT: the SSRCs of the RTP (not RTCP) packets sent from SRC_PORT, with counts.
SRTP leaves the RTP header in the clear, so this is what the far side sees. Prints JSON."""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_helper import read_pcap

counts = {}
for _ts, _src, sport, _dst, _dport, payload in read_pcap(sys.argv[1]):
    if sport != int(sys.argv[2]) or len(payload) < 12 or not 128 <= payload[0] <= 191:
        continue
    if 192 <= payload[1] <= 223:  # RTCP
        continue
    ssrc = int.from_bytes(payload[8:12], "big")
    counts[ssrc] = counts.get(ssrc, 0) + 1
print(json.dumps({"ssrcs": {str(k): v for k, v in counts.items()}}))
