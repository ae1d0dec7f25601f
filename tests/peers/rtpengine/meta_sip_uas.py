#!/usr/bin/env python3
"""Meta's side of a business-initiated call (WHATSAPP-SIP §3) over TLS, with rtpengine as its media
relay: takes watrunk's INVITE, challenges it with a 407 carrying two challenges (SHA-256, then MD5),
checks the credentials (username = the number without '+', the number's password: 403 otherwise),
hands the offer to rtpengine (ng offer: WebRTC -> plain RTP toward a tone source at --plain), gets
rtpengine's ICE-lite DTLS answer (ng answer) and sends it in a 200 OK with Meta's Record-Route,
Contact and headers, waits for the ACK, lets the call run --seconds, then says BYE with
x-wa-meta-call-duration. Exits 0 when the call ran and the BYE got 200.
"""
import argparse, hashlib, json, os, random, socket, ssl, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ng  # noqa: E402


def parse(buf):
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


def auth_params(value):
    params = {}
    for part in value.split(" ", 1)[1].split(","):
        k, _, v = part.strip().partition("=")
        params[k.lower()] = v.strip('"')
    return params


def verify(value, method, password, nonces):
    p = auth_params(value)
    alg = p.get("algorithm", "MD5").upper()
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if alg == "SHA-256" else (lambda s: hashlib.md5(s.encode()).hexdigest())
    if p.get("nonce") not in nonces:
        return False, p
    ha1 = h("%s:%s:%s" % (p["username"], p["realm"], password))
    ha2 = h("%s:%s" % (method, p["uri"]))
    want = h("%s:%s:%s:%s:%s:%s" % (ha1, p["nonce"], p["nc"], p["cnonce"], p["qop"], ha2)) if "qop" in p else h("%s:%s:%s" % (ha1, p["nonce"], ha2))
    return want == p.get("response"), p


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--listen", required=True)
    a.add_argument("--cert", required=True)
    a.add_argument("--key", required=True)
    a.add_argument("--password", required=True)
    a.add_argument("--ng", default="127.0.0.1:2223")
    a.add_argument("--plain", required=True, help="ip:port of the plain RTP tone source (rtpengine's far side)")
    a.add_argument("--work", required=True)
    a.add_argument("--seconds", type=float, default=6)
    a = a.parse_args()
    ng_addr = (a.ng.rsplit(":", 1)[0], int(a.ng.rsplit(":", 1)[1]))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    h, p = a.listen.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((h, int(p)))
    ls.listen(4)
    ls.settimeout(30)
    print("uas: listening on %s" % a.listen, flush=True)
    raw, peer = ls.accept()
    s = ctx.wrap_socket(raw, server_side=True)
    s.settimeout(0.5)
    t0 = time.monotonic()
    buf = b""

    def log(m):
        print("uas: %.3f %s" % (time.monotonic() - t0, m), flush=True)

    def next_message(limit):
        nonlocal buf
        end = time.monotonic() + limit
        while time.monotonic() < end:
            m = parse(buf)
            if m:
                buf = m[3]
                log("<- " + m[0])
                return m[:3]
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            buf += chunk
        return None

    to_tag = "%x" % random.getrandbits(32)

    def respond(hdr, status, extra=(), body=""):
        r = ["SIP/2.0 %s" % status] + ["Via: %s" % v for v in hdr["via"]]
        r += ["From: " + hdr["from"][0], "To: %s;tag=%s" % (hdr["to"][0].split(";tag=")[0], to_tag),
              "Call-ID: " + hdr["call-id"][0], "CSeq: " + hdr["cseq"][0], "Server: Facebook SipGateway"]
        r += list(extra)
        if body:
            r.append("Content-Type: application/sdp")
        r.append("Content-Length: %d" % len(body.encode()))
        s.sendall(("\r\n".join(r) + "\r\n\r\n" + body).encode())
        log("-> " + status)

    nonces = set()
    invite = None
    while True:
        m = next_message(20)
        if not m:
            sys.exit("uas: no INVITE")
        first, hdr, body = m
        if first.startswith("ACK"):
            continue
        if not first.startswith("INVITE"):
            respond(hdr, "200 OK")
            continue
        for bad in ("session-expires", "supported", "require"):
            if bad in hdr and (bad != "supported" or "timer" in hdr[bad][0]):
                respond(hdr, "500 Server Internal Error")
                sys.exit("uas: watrunk sent %s" % bad)
        creds = hdr.get("proxy-authorization")
        if not creds:
            n1, n2 = os.urandom(8).hex(), os.urandom(8).hex()
            nonces |= {n1, n2}
            respond(hdr, "407 Proxy Authentication Required", [
                'Proxy-Authenticate: Digest realm="wa.meta.vc",nonce="%s",opaque="%s",algorithm=SHA-256,qop="auth"' % (n1, os.urandom(8).hex()),
                'Proxy-Authenticate: Digest realm="wa.meta.vc",nonce="%s",opaque="%s",algorithm=MD5,qop="auth"' % (n2, os.urandom(8).hex())])
            continue
        ok, params = verify(creds[0], "INVITE", a.password, nonces)
        expected_user = first.split()[1]
        from_user = hdr["from"][0].split("sip:", 1)[1].split("@")[0]
        if not ok or params.get("username") != from_user.lstrip("+"):
            respond(hdr, "403 Forbidden")
            sys.exit("uas: bad credentials %s" % params)
        log("credentials ok: username=%s algorithm=%s uri=%s" % (params["username"], params.get("algorithm"), expected_user))
        invite = (first, hdr, body)
        break
    first, hdr, body = invite
    respond(hdr, "100 Trying")
    open(os.path.join(a.work, "business-offer.sdp"), "w", newline="").write(body)
    call_id = hdr["call-id"][0]
    ftag = hdr["from"][0].split("tag=")[1].split(";")[0]
    off = ng.ng_request({"command": "offer", "call-id": call_id, "from-tag": ftag, "sdp": body,
                         "transport-protocol": "RTP/AVP", "ICE": "remove", "DTLS": "off", "SDES": ["off"],
                         "rtcp-mux": ["demux"], "ICE-lite": "backward", "replace": ["origin", "session-connection"]}, ng_addr)
    if off.get("result") != "ok":
        sys.exit("uas: ng offer: %s" % off)
    open(os.path.join(a.work, "plain-offer.sdp"), "w").write(off["sdp"])
    pip, pport = a.plain.rsplit(":", 1)
    plain_answer = ("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %s RTP/AVP 111 126\r\n"
                    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n") % (pip, pip, pport)
    ans = ng.ng_request({"command": "answer", "call-id": call_id, "from-tag": ftag, "to-tag": to_tag, "sdp": plain_answer,
                         "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "rtcp-mux": ["require"],
                         "replace": ["origin", "session-connection"]}, ng_addr)
    if ans.get("result") != "ok":
        sys.exit("uas: ng answer: %s" % ans)
    answer = ans["sdp"]
    open(os.path.join(a.work, "meta-answer.sdp"), "w", newline="").write(answer)
    local = "%s:%d" % s.getsockname()[:2]
    respond(hdr, "180 Ringing")
    respond(hdr, "200 OK", [
        "Record-Route: <sip:%s;transport=tls;lr>" % local,
        "Contact: <sip:%s@%s;transport=tls;ob>;isfocus" % (expected_user.split("sip:")[1].split("@")[0], local),
        "Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS", "X-FB-External-Domain: wa.meta.vc"], answer)
    m = next_message(10)
    if not m or not m[0].startswith("ACK"):
        sys.exit("uas: no ACK for the 200")
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        m = next_message(min(0.5, end - time.monotonic()))
        if m and m[0].startswith("BYE"):
            respond(m[1], "200 OK")
            log("watrunk hung up first")
            return
    contact = hdr["contact"][0].split("<", 1)[1].split(">", 1)[0]
    bye = ["BYE %s SIP/2.0" % contact, "Via: SIP/2.0/TLS %s;branch=z9hG4bK%x" % (local, random.getrandbits(48)),
           "Max-Forwards: 70", "From: %s;tag=%s" % (hdr["to"][0].split(";tag=")[0], to_tag), "To: " + hdr["from"][0],
           "Call-ID: " + call_id, "CSeq: 1 BYE", "x-wa-meta-call-duration: %d" % int(a.seconds),
           "Reason: SIP;cause=200;text=\"user hung up\"", "Content-Length: 0"]
    s.sendall(("\r\n".join(bye) + "\r\n\r\n").encode())
    log("-> BYE")
    m = next_message(5)
    if not m or not m[0].startswith("SIP/2.0 200"):
        sys.exit("uas: BYE not answered 200")
    ng.ng_request({"command": "delete", "call-id": call_id, "from-tag": ftag}, ng_addr)


main()
