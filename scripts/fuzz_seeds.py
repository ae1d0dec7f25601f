#!/usr/bin/env python3
"""Builds the seed corpus of each fuzz target from tests/data (called by scripts/fuzz.sh).

Usage: fuzz_seeds.py TARGET OUT_DIR. Writes one file per seed, named by its content's hash.
"""
import hashlib
import hmac
import json
import pathlib
import re
import struct
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def sip_messages():
    """Every SIP message in tests/data: the RFC 4475/5118 torture messages, PROTOS, Meta's samples."""
    files = sorted(DATA.glob("sip-torture/**/*.dat")) + sorted(DATA.glob("sip-torture/**/*.sip"))
    files += sorted(DATA.glob("protos/testcases/*.bin")) + sorted(DATA.glob("whatsapp/*.sip"))
    for f in files:
        yield f.read_bytes()


def with_crlf(b):
    """The samples are stored with LF line ends in places; SIP wants CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", b)


def sip_stream():
    msgs = list(sip_messages())
    for i, m in enumerate(msgs):
        yield bytes([i % 256]) + m
        yield bytes([(i * 37) % 256]) + with_crlf(m)
    # Pipelined: a ping, two messages, a pong.
    wa = [with_crlf(m) for m in msgs[-8:]]
    yield b"\x05\r\n\r\n" + b"".join(wa[:2]) + b"\r\n"


def sip_datagram():
    for m in sip_messages():
        yield m
        yield with_crlf(m)


def digest():
    vectors = json.loads((DATA / "digest" / "digest-vectors.json").read_text())["vectors"]
    for v in vectors:
        inputs = v.get("inputs", {})
        ch = v.get("challenge_header", "").split(":", 1)[-1].strip()
        au = v.get("authorization_header", "").split(":", 1)[-1].strip()
        fields = [ch, au, inputs.get("method", "INVITE"), inputs.get("uri", "sip:a@b"),
                  inputs.get("username", "u"), inputs.get("password", "p"), inputs.get("entity_body", "")]
        yield "\n".join(str(f) for f in fields).encode()
    # The digest headers of Meta's samples.
    for f in sorted(DATA.glob("whatsapp/*.sip")):
        text = f.read_text(errors="replace")
        ch = re.findall(r"^(?:Proxy|WWW)-Authenticate:\s*(.*?)\s*$", text, re.M | re.I)
        au = re.findall(r"^(?:Proxy-)?Authorization:\s*(.*?)\s*$", text, re.M | re.I)
        for c in ch or [""]:
            for a in au or [""]:
                yield f"{c}\n{a}\nINVITE\nsip:+15551234567@wa.meta.vc;transport=tls\n15551234567\nsecret".encode()


def sdp():
    for f in sorted(DATA.glob("**/*.sdp")):
        yield f.read_bytes()
    for m in sip_messages():
        head, sep, body = with_crlf(m).partition(b"\r\n\r\n")
        if sep and body.startswith(b"v="):
            yield body


def stun_check(username, password, use_candidate, txid):
    """A STUN binding request with USERNAME, MESSAGE-INTEGRITY and FINGERPRINT (RFC 5389)."""
    def attr(t, v):
        return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

    body = attr(0x0006, username)
    body += attr(0x0024, struct.pack("!I", 0x6E0001FF))  # PRIORITY
    if use_candidate:
        body += attr(0x0025, b"")
    head = lambda n: struct.pack("!HHI", 0x0001, n, 0x2112A442) + txid
    mac = hmac.new(password, head(len(body) + 24) + body, hashlib.sha1).digest()
    body += attr(0x0008, mac)
    crc = (zlib.crc32(head(len(body) + 8) + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += attr(0x8028, struct.pack("!I", crc))
    return head(len(body)) + body


def media_demux():
    # Every RTP/RTCP/SRTP packet in the SRTP vectors (hex strings starting with version 2).
    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)
        elif isinstance(v, str):
            s = re.sub(r"\s", "", v)
            if len(s) >= 24 and len(s) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", s):
                b = bytes.fromhex(s)
                if 128 <= b[0] <= 191:
                    yield b

    yield from walk(json.loads((DATA / "srtp" / "srtp-vectors.json").read_text()))
    # The packets the per-packet path meets: Opus RTP, telephone-event, SR and RR with report blocks.
    yield bytes.fromhex("80 6f 12 34 de ca fb ad ca fe ba be") + b"\xab" * 40
    yield bytes.fromhex("90 e6 00 01 00 00 00 a0 11 22 33 44 be de 00 01 10 aa 00 00") + b"\x05\x0a\x00\xa0"
    sr = bytes.fromhex("81 c8 00 0c ca fe ba be") + bytes(20) + bytes.fromhex("01 02 03 04") + bytes(20)
    yield sr
    yield bytes.fromhex("81 c9 00 07 ca fe ba be 01 02 03 04") + bytes(12) + bytes.fromhex("00 00 12 34 00 00 00 10")
    for i, (user, nominate) in enumerate([(b"ours:theirs", False), (b"ours:theirs", True), (b"other:x", False)]):
        yield stun_check(user, b"0123456789abcdefghijkl", nominate, bytes([i]) * 12)
    # A DTLS ClientHello's record header.
    yield bytes.fromhex("16 fe fd 00 00 00 00 00 00 00 00 00 20 01 00 00 14")


TARGETS = {
    "sip_stream": sip_stream,
    "sip_datagram": sip_datagram,
    "digest": digest,
    "sdp": sdp,
    "media_demux": media_demux,
}


def main():
    target, out = sys.argv[1], pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for seed in TARGETS[target]():
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        n += 1
    print(f"{target}: {n} seeds from tests/data")


if __name__ == "__main__":
    main()
