#!/usr/bin/env python3
"""inject_srtp.py CAP.pcap DST_PORT: takes the last SRTP packet (RTP, not RTCP) the capture shows
arriving at DST_PORT, and sends it again from its own source address (spoofed with a raw socket, as an
on-path attacker could): 5 exact replays, then 5 copies with the authentication tag altered. The
receiver must drop and count all ten. Root only; traffic stays on this namespace's loopback."""
import os, socket, struct, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_helper import read_pcap

last = None
for _ts, src, sport, dst, dport, payload in read_pcap(sys.argv[1]):
    if dport == int(sys.argv[2]) and len(payload) > 12 and 128 <= payload[0] <= 191 and not 192 <= payload[1] <= 223:
        last = (src, sport, dst, dport, payload)
if last is None:
    sys.exit("no SRTP packet to port %s in the capture" % sys.argv[2])
src, sport, dst, dport, payload = last
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

def send(data):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    raw.sendto(ip + udp, (dst, 0))

for _ in range(5):
    send(payload)
bad = bytearray(payload); bad[-1] ^= 0xFF
for _ in range(5):
    send(bytes(bad))
print("injected 5 replays and 5 bad tags from %s:%d to %s:%d" % (src, sport, dst, dport))
