#!/usr/bin/python3
"""A G.711 voice agent that shares no code with watrunk: CPython's audioop does the mu-law/A-law
coding and numpy finds the frequency. It receives RTP on --listen, answers every source with a tone
(--tone-hz) in packets of --ptime ms from the same socket, and after --seconds prints one JSON line
per source: what arrived (payload types, sizes, timestamp steps, sequence gaps, SSRCs) and what it
heard (dominant frequency and RMS level, a fraction of full scale)."""

import argparse
import json
import math
import random
import socket
import struct
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

import numpy

RATE = 8000


class Stream:
    def __init__(self, law, tone_hz, ptime_ms):
        self.law = law
        self.packets = 0
        self.payload_types = set()
        self.sizes = set()
        self.ts_steps = set()
        self.seq_gaps = 0
        self.ssrcs = []
        self.last = None
        self.pcm = bytearray()
        self.samples_per_packet = RATE * ptime_ms // 1000
        self.tone_hz = tone_hz
        self.out_seq = random.randrange(65536)
        self.out_ts = random.randrange(1 << 32)
        self.out_ssrc = random.randrange(1 << 32)
        self.phase = 0
        self.sent = 0

    def take(self, packet):
        if len(packet) < 12 or packet[0] >> 6 != 2:
            return
        pt = packet[1] & 0x7F
        seq, ts, ssrc = struct.unpack("!HII", packet[2:12])
        start = 12 + 4 * (packet[0] & 0x0F)
        payload = packet[start:]
        self.packets += 1
        self.payload_types.add(pt)
        self.sizes.add(len(payload))
        if ssrc not in self.ssrcs:
            self.ssrcs.append(ssrc)
        if self.last is not None:
            last_seq, last_ts = self.last
            if seq != (last_seq + 1) & 0xFFFF:
                self.seq_gaps += 1
            self.ts_steps.add((ts - last_ts) & 0xFFFFFFFF)
        self.last = (seq, ts)
        if pt in (0, 8):
            decode = audioop.ulaw2lin if pt == 0 else audioop.alaw2lin
            self.pcm += decode(payload, 2)

    def next_packet(self):
        n = self.samples_per_packet
        t = (numpy.arange(n) + self.phase) / RATE
        self.phase += n
        samples = (numpy.sin(2 * math.pi * self.tone_hz * t) * 0.3 * 32767).astype("<i2")
        encode = audioop.lin2ulaw if self.law == "pcmu" else audioop.lin2alaw
        payload = encode(samples.tobytes(), 2)
        pt = 0 if self.law == "pcmu" else 8
        header = struct.pack("!BBHII", 0x80, pt, self.out_seq, self.out_ts, self.out_ssrc)
        self.out_seq = (self.out_seq + 1) & 0xFFFF
        self.out_ts = (self.out_ts + n) & 0xFFFFFFFF
        self.sent += 1
        return header + payload

    def report(self, source):
        samples = numpy.frombuffer(bytes(self.pcm), dtype="<i2").astype(float)
        samples = samples[RATE // 2:]  # past the start
        heard_hz = heard_rms = None
        if len(samples) >= RATE // 2:
            spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
            freqs = numpy.fft.rfftfreq(len(samples), 1 / RATE)
            heard_hz = round(float(freqs[int(numpy.argmax(spectrum))]), 1)
            heard_rms = round(float(numpy.sqrt(numpy.mean(samples ** 2)) / 32767), 3)
        # The first second on its own: what was heard before the call was answered (ringback).
        early_hz = None
        first = numpy.frombuffer(bytes(self.pcm), dtype="<i2").astype(float)[:RATE]
        if len(first) == RATE and numpy.any(first):
            spectrum = numpy.abs(numpy.fft.rfft(first * numpy.hanning(len(first))))
            early_hz = round(float(numpy.fft.rfftfreq(len(first), 1 / RATE)[int(numpy.argmax(spectrum))]), 1)
        return {
            "event": "g711.stream",
            "early_hz": early_hz,
            "from": f"{source[0]}:{source[1]}",
            "packets": self.packets,
            "payload_types": sorted(self.payload_types),
            "payload_sizes": sorted(self.sizes),
            "ts_steps": sorted(self.ts_steps),
            "seq_gaps": self.seq_gaps,
            "ssrcs": self.ssrcs,
            "heard_hz": heard_hz,
            "heard_rms": heard_rms,
            "sent": self.sent,
        }


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--listen", required=True)
    args.add_argument("--law", choices=["pcmu", "pcma"], default="pcmu")
    args.add_argument("--tone-hz", type=float, default=880.0)
    args.add_argument("--ptime", type=int, default=30)
    args.add_argument("--seconds", type=float, default=10.0)
    a = args.parse_args()
    host, port = a.listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    sock.settimeout(0.005)
    streams = {}
    next_send = {}
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            packet, source = sock.recvfrom(2048)
            if source not in streams:
                streams[source] = Stream(a.law, a.tone_hz, a.ptime)
                next_send[source] = time.monotonic()
            streams[source].take(packet)
        except socket.timeout:
            pass
        now = time.monotonic()
        for source, due in next_send.items():
            if now >= due:
                sock.sendto(streams[source].next_packet(), source)
                next_send[source] = due + a.ptime / 1000
    for source, stream in streams.items():
        print(json.dumps(stream.report(source)), flush=True)


if __name__ == "__main__":
    main()
