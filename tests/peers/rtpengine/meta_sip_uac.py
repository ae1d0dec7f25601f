#!/usr/bin/env python3
"""A Meta-shaped SIP UAC over TLS carrying a given SDP offer: the signalling half of Meta's
user-initiated call (WHATSAPP-SIP §4), while rtpengine plays Meta's media relay.

INVITE (Meta's headers: Record-Route, x-wa-meta-wacid, From +user@wa.meta.vc) -> optional 407,
answered with digest (MD5 or SHA-256, username = the business number without '+') -> 200 OK: its
SDP is written to --answer-out -> ACK -> --seconds of call -> BYE (or, with --expect-bye, wait for
watrunk's BYE and answer it 200). Prints one line per message and exits 0 when the call ran.
"""
import argparse, hashlib, os, random, socket, ssl, sys, time


def parse(buf):
    """One SIP message from the front of buf: (first line, headers {lower: [values]}, body, rest)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode(errors="replace").split("\r\n")
    hdr = {}
    for l in head[1:]:
        k, _, v = l.partition(":")
        hdr.setdefault(k.strip().lower(), []).append(v.strip())
    n = int(hdr.get("content-length", ["0"])[0])
    if len(buf) < end + 4 + n:
        return None
    return head[0], hdr, buf[end + 4:end + 4 + n].decode(errors="replace"), buf[end + 4 + n:]


def digest(challenge, method, uri, user, password):
    params = {}
    for part in challenge.split(" ", 1)[1].split(","):
        k, _, v = part.strip().partition("=")
        params[k.lower()] = v.strip('"')
    alg = params.get("algorithm", "MD5").upper()
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if alg == "SHA-256" else (lambda s: hashlib.md5(s.encode()).hexdigest())
    realm, nonce = params["realm"], params["nonce"]
    cnonce, nc = "%016x" % random.getrandbits(64), "00000001"
    ha1 = h("%s:%s:%s" % (user, realm, password))
    ha2 = h("%s:%s" % (method, uri))
    if "auth" in params.get("qop", ""):
        resp = h("%s:%s:%s:%s:auth:%s" % (ha1, nonce, nc, cnonce, ha2))
        extra = ', qop=auth, nc=%s, cnonce="%s"' % (nc, cnonce)
    else:
        resp, extra = h("%s:%s:%s" % (ha1, nonce, ha2)), ""
    if "opaque" in params:
        extra += ', opaque="%s"' % params["opaque"]
    return ('Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s", algorithm=%s%s'
            % (user, realm, nonce, uri, resp, alg, extra))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="host:port of watrunk's TLS listener")
    p.add_argument("--number", required=True, help="the business number called, +E.164")
    p.add_argument("--user", default="+12195550714")
    p.add_argument("--offer", required=True)
    p.add_argument("--answer-out", required=True)
    p.add_argument("--password")
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--expect-bye", action="store_true", help="wait for watrunk to hang up")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)), timeout=10)
    s = ctx.wrap_socket(raw)  # no ALPN, like Meta (WHATSAPP-SIP §1.3)
    s.settimeout(0.5)
    local = "%s:%d" % s.getsockname()[:2]
    body = open(a.offer, newline="").read().replace("\r\n", "\n").replace("\n", "\r\n")
    callid = "outgoing:wacid.%x" % random.getrandbits(64)
    ftag = "%x" % random.getrandbits(32)
    ruri = "sip:%s@localhost;transport=tls" % a.number
    t0 = time.monotonic()

    def log(msg):
        print("uac: %.3f %s" % (time.monotonic() - t0, msg), flush=True)

    def request(method, cseq, to_tag="", body_="", auth=None, branch=None):
        h = ["%s %s SIP/2.0" % (method, ruri if method != "BYE" or not contact else contact),
             "Via: SIP/2.0/TLS %s;rport;branch=%s" % (local, branch or "z9hG4bK%x" % random.getrandbits(48)),
             "Record-Route: <sip:%s;transport=tls;lr>" % local,
             "Max-Forwards: 70",
             'From: "%s" <sip:%s@wa.meta.vc>;tag=%s' % (a.user.lstrip("+"), a.user, ftag),
             "To: <sip:%s@localhost>%s" % (a.number, ";tag=" + to_tag if to_tag else ""),
             "Contact: <sip:%s@%s;transport=tls;ob>;isfocus" % (a.user, local),
             "Call-ID: " + callid, "CSeq: %d %s" % (cseq, method),
             "x-wa-meta-wacid: %s" % callid.split(".", 1)[1],
             "Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS", "User-Agent: Facebook SipGateway"]
        if method == "BYE":
            h = [x for x in h if not x.startswith("Record-Route")]
            h.insert(1, "Route: %s" % route) if route else None
            h.append("x-wa-meta-call-duration: %d" % int(a.seconds))
        if auth:
            h.append("Proxy-Authorization: " + auth)
        if body_:
            h.append("Content-Type: application/sdp")
        h.append("Content-Length: %d" % len(body_.encode()))
        s.sendall(("\r\n".join(h) + "\r\n\r\n" + body_).encode())
        log("-> %s (CSeq %d)" % (method, cseq))

    buf = b""

    def next_message(deadline):
        nonlocal buf
        while time.monotonic() < deadline:
            m = parse(buf)
            if m:
                buf = m[3]
                return m[:3]
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                sys.exit("uac: watrunk closed the connection")
            buf += chunk
        return None

    def respond_200(first, hdr):
        r = ["SIP/2.0 200 OK"] + ["%s: %s" % (k, v) for k in ("via", "from", "to", "call-id", "cseq") for v in hdr.get(k, [])]
        s.sendall(("\r\n".join(r) + "\r\nContent-Length: 0\r\n\r\n").encode())
        log("-> 200 OK to " + first.split()[0])

    contact, route = None, None
    cseq = 1
    request("INVITE", cseq, body_=body)
    authed = False
    to_tag = None
    while True:
        m = next_message(time.monotonic() + 20)
        if not m:
            sys.exit("uac: no final response")
        first, hdr, b = m
        log("<- " + first)
        if not first.startswith("SIP/2.0"):
            continue
        code = int(first.split()[1])
        if code < 200:
            continue
        tag = hdr["to"][0].split("tag=")[1].split(";")[0] if "tag=" in hdr["to"][0] else ""
        if code in (401, 407) and not authed and a.password:
            # ACK the 407 (same branch as the INVITE is not needed over TLS for this peer), then retry.
            challenges = hdr.get("proxy-authenticate", []) + hdr.get("www-authenticate", [])
            chosen = next((c for c in challenges if "SHA-256" in c), challenges[0])
            auth = digest(chosen, "INVITE", ruri, a.number.lstrip("+"), a.password)
            cseq += 1
            authed = True
            request("INVITE", cseq, body_=body, auth=auth)
            continue
        if code != 200:
            sys.exit("uac: call failed: " + first)
        to_tag = tag
        contact = hdr["contact"][0].split("<", 1)[1].split(">", 1)[0]
        open(a.answer_out + ".tmp", "w", newline="").write(b)
        os.rename(a.answer_out + ".tmp", a.answer_out)
        break
    request("ACK", cseq, to_tag)
    end = time.monotonic() + (a.seconds if not a.expect_bye else 60)
    while time.monotonic() < end:
        m = next_message(min(end, time.monotonic() + 0.5))
        if not m:
            continue
        first, hdr, _ = m
        log("<- " + first)
        if first.startswith("BYE"):
            respond_200(first, hdr)
            if a.expect_bye:
                log("watrunk hung up: " + "; ".join(hdr.get("reason", [])))
                return
        elif not first.startswith("SIP/2.0"):
            respond_200(first, hdr)
    if a.expect_bye:
        sys.exit("uac: watrunk did not hang up")
    request("BYE", cseq + 1, to_tag)
    m = next_message(time.monotonic() + 5)
    log("BYE -> " + (m[0] if m else "no answer"))
    if not m or not m[0].startswith("SIP/2.0 200"):
        sys.exit(1)


main()
