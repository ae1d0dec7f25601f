//! Calls through `watrunk serve` with Meta's own sample INVITEs (tests/data/whatsapp) replayed over
//! TLS: the 407 with two challenges, the 200 whose answer passes `watrunk sdp check`, ACK and BYE, and
//! the refusals a user sees (unknown number 404, wrong password 403, bad SDP 488 with the rule), plus
//! CANCEL and a lost ACK. Every call's end is checked in its `call.ended` event, including that the
//! server is back to idle (no call, no media route or connection left).

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::{Message, Request, Response};

const PASSWORD: &str = "meta-gave-us-this";
const NUMBERS: &str = "+17015558857,+12145551869";

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn serve(dir: &Path, extra: &[&str]) -> (Server, UdpSocket) {
    serve_with_open_files(dir, extra, None)
}

/// The same, with the server's open-files limit set.
fn serve_with_open_files(
    dir: &Path,
    extra: &[&str],
    open_files: Option<u64>,
) -> (Server, UdpSocket) {
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    // The sink: a UDP socket standing in for the voice agent.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();
    let mut args = vec![
        "--number",
        NUMBERS,
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--media-ip",
        "127.0.0.1",
        "--sink",
        &sink_addr,
        "--events",
        "-",
    ];
    args.extend_from_slice(extra);
    (Server::start_with_open_files(&args, open_files), sink)
}

/// One of Meta's samples as wire bytes, with Meta's own credentials (for Meta's realm) removed and
/// a masked SDES key replaced by a real one.
fn meta_invite(name: &str) -> Request {
    let raw = String::from_utf8(read_data(&format!("whatsapp/{name}"))).unwrap();
    let raw = raw
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-authorization"))
        .map(|l| {
            if l.starts_with("a=fingerprint:*") {
                // Masked in the sample; a real sha-256 value in its place.
                format!(
                    "a=fingerprint:sha-256 {}",
                    (0..32)
                        .map(|i| format!("{:02X}", i * 7 + 3))
                        .collect::<Vec<_>>()
                        .join(":")
                )
            } else if l.starts_with("a=crypto:*") {
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
                    .to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    match Message::parse_datagram(&watrunk_sip::samples::normalize_meta_sample(&raw)).unwrap() {
        Message::Request(r) => r,
        _ => panic!("{name} is not a request"),
    }
}

/// The same INVITE as a new call: its own Call-ID and branch.
fn as_new_call(mut invite: Request, call_id: &str) -> Request {
    invite.headers.set("Call-ID", call_id);
    let via = invite.headers.get("Via").unwrap().to_string();
    let fresh = match via.split_once("branch=") {
        Some((a, b)) => {
            let rest = b
                .split_once(';')
                .map(|(_, r)| format!(";{r}"))
                .unwrap_or_default();
            format!("{a}branch=z9hG4bK{call_id}{rest}")
        }
        None => via,
    };
    invite.headers.set("Via", fresh);
    invite
}

/// Reads SIP messages from the stream until one matches, within `wait`.
fn read_until(
    tls: &mut Tls,
    buf: &mut Vec<u8>,
    wait: Duration,
    want: impl Fn(&Message) -> bool,
) -> Message {
    use std::io::Read;
    let deadline = std::time::Instant::now() + wait;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    (n.trim().eq_ignore_ascii_case("content-length") || n.trim() == "l")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
            let m = Message::parse_datagram(&msg).expect("watrunk sends valid SIP");
            if want(&m) {
                return m;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no expected message in {wait:?}"
        );
        let mut chunk = [0u8; 16384];
        match tls.read(&mut chunk) {
            Ok(0) => panic!("watrunk closed the connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn final_response(tls: &mut Tls, buf: &mut Vec<u8>) -> Response {
    match read_until(
        tls,
        buf,
        Duration::from_secs(10),
        |m| matches!(m, Message::Response(r) if r.status >= 200),
    ) {
        Message::Response(r) => r,
        _ => unreachable!(),
    }
}

fn send(tls: &mut Tls, msg: &[u8]) {
    tls.write_all(msg).unwrap();
    tls.flush().unwrap();
}

/// The ACK Meta sends for a non-2xx final response (same branch, RFC 3261 §17.1.1.3).
fn ack_for(invite: &Request, resp: &Response) -> Vec<u8> {
    let mut ack = Request::new(watrunk_sip::Method::ACK, invite.uri.clone());
    ack.headers.push("Via", invite.headers.get("Via").unwrap());
    ack.headers
        .push("From", invite.headers.get("From").unwrap());
    ack.headers.push("To", resp.headers.get("To").unwrap());
    ack.headers.push("Call-ID", invite.call_id().unwrap());
    ack.headers
        .push("CSeq", format!("{} ACK", invite.cseq().unwrap().seq));
    ack.headers.push("Max-Forwards", "70");
    ack.to_bytes()
}

/// INVITE, 407, ACK, INVITE with credentials for `password`: the final response to the second.
fn invite_with_digest(
    tls: &mut Tls,
    buf: &mut Vec<u8>,
    invite: &Request,
    password: &str,
) -> (Request, Response) {
    let (_, retry, resp) = invite_with_digest_seen(tls, buf, invite, password);
    (retry, resp)
}

/// The same, with the challenge it answered.
fn invite_with_digest_seen(
    tls: &mut Tls,
    buf: &mut Vec<u8>,
    invite: &Request,
    password: &str,
) -> (Response, Request, Response) {
    send(tls, &invite.to_bytes());
    let challenge = final_response(tls, buf);
    assert_eq!(challenge.status, 407, "{challenge:?}");
    let offered: Vec<&str> = challenge.headers.get_all("Proxy-Authenticate").collect();
    assert_eq!(offered.len(), 2, "two challenges: {offered:?}");
    assert!(
        offered[0].contains("SHA-256") && offered[1].contains("MD5"),
        "SHA-256 first: {offered:?}"
    );
    send(tls, &ack_for(invite, &challenge));
    let challenges = Challenge::parse_supported(offered.iter().copied());
    let chosen = digest::choose_challenge(&challenges).unwrap();
    let user = invite
        .uri
        .as_sip()
        .unwrap()
        .user_base()
        .unwrap()
        .trim_start_matches('+')
        .to_string();
    let auth = digest::answer_with_random_cnonce(
        chosen,
        &Credentials::new(user, password),
        "INVITE",
        &invite.uri.to_string(),
        &invite.body,
        1,
        &mut rand::thread_rng(),
    );
    let retry = watrunk_sip::dialog::retry_with_auth(
        invite,
        "Proxy-Authorization",
        &auth.to_string(),
        &mut rand::thread_rng(),
    );
    send(tls, &retry.to_bytes());
    let resp = final_response(tls, buf);
    (challenge, retry, resp)
}

/// A response as a prober compares two: the called number, `own` (the test's Call-ID), and every
/// nonce, opaque, tag and branch made alike.
fn alike(r: &Response, number: &str, own: &str) -> String {
    let mut text = String::from_utf8(r.to_bytes())
        .unwrap()
        .replace(number, "NUMBER")
        .replace(own, "OWN");
    for (start, ends) in [
        ("nonce=\"", &['"'][..]),
        ("opaque=\"", &['"'][..]),
        ("tag=", &[';', '>', '\r'][..]),
        ("branch=", &[';', '\r'][..]),
    ] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(start) {
            out.push_str(&rest[..i + start.len()]);
            rest = &rest[i + start.len()..];
            rest = &rest[rest.find(ends).unwrap_or(rest.len())..];
            out.push('*');
        }
        out.push_str(rest);
        text = out;
    }
    text
}

fn sdp_check(dir: &Path, sdp: &[u8]) -> (bool, String) {
    let f = dir.join("answer.sdp");
    std::fs::write(&f, sdp).unwrap();
    run(
        Command::new(bin())
            .args([
                "sdp", "check", "--strict", "--side", "business", "--as", "answer",
            ])
            .arg(&f),
        Duration::from_secs(10),
    )
}

fn bye_for(invite: &Request, ok: &Response, cseq: u32) -> Vec<u8> {
    let mut bye = Request::new(
        watrunk_sip::Method::BYE,
        watrunk_sip::Uri::parse("sip:watrunk@localhost;transport=tls").unwrap(),
    );
    bye.headers
        .push("Via", "SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKbye1;rport");
    bye.headers
        .push("From", invite.headers.get("From").unwrap());
    bye.headers.push("To", ok.headers.get("To").unwrap());
    bye.headers.push("Call-ID", invite.call_id().unwrap());
    bye.headers.push("CSeq", format!("{cseq} BYE"));
    bye.headers.push("Max-Forwards", "70");
    bye.headers.push("x-wa-meta-call-duration", "3");
    bye.to_bytes()
}

fn assert_idle(ended: &serde_json::Value) {
    assert_eq!(ended["server"]["calls"], 0, "{ended}");
    assert_eq!(ended["server"]["media_routes"], 0, "{ended}");
    assert_eq!(ended["server"]["media_conns"], 0, "{ended}");
}

#[test]
fn metas_sample_invites_get_a_407_then_a_200_whose_answer_passes_sdp_check() {
    let dir = TempDir::new("calls-samples");
    let (mut server, _sink) = serve(dir.path(), &["--challenge", "--digest-algorithm", "both"]);
    let mut seen: Vec<String> = Vec::new();
    for name in [
        "meta-invite-user-initiated-01.sip",
        "meta-invite-user-initiated-digest-01.sip",
        "meta-invite-user-initiated-digest-02.sip",
        "meta-invite-user-initiated-sdes-01.sip",
    ] {
        let mut tls = server.tls_connect();
        let mut buf = Vec::new();
        let invite = meta_invite(name);
        let (retry, ok) = invite_with_digest(&mut tls, &mut buf, &invite, PASSWORD);
        assert_eq!(ok.status, 200, "{name}: {ok:?}\n{}", server.log());
        let (passes, out) = sdp_check(dir.path(), &ok.body);
        assert!(
            passes,
            "{name}: our answer fails sdp check:\n{out}\n{}",
            String::from_utf8_lossy(&ok.body)
        );
        // Record-Route copied exactly and in order (WHATSAPP-SIP §4.3).
        let rr_in: Vec<&str> = invite.headers.get_all("Record-Route").collect();
        let rr_out: Vec<&str> = ok.headers.get_all("Record-Route").collect();
        assert_eq!(rr_in, rr_out, "{name}");
        assert!(ok.headers.get("Session-Expires").is_none());
        // Meta's ACK for the 2xx, then its BYE.
        let mut ack = Request::new(
            watrunk_sip::Method::ACK,
            watrunk_sip::Uri::parse("sip:watrunk@localhost;transport=tls").unwrap(),
        );
        ack.headers
            .push("Via", "SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKack2;rport");
        ack.headers.push("From", retry.headers.get("From").unwrap());
        ack.headers.push("To", ok.headers.get("To").unwrap());
        ack.headers.push("Call-ID", retry.call_id().unwrap());
        ack.headers
            .push("CSeq", format!("{} ACK", retry.cseq().unwrap().seq));
        ack.headers.push("Max-Forwards", "70");
        send(&mut tls, &ack.to_bytes());
        // This sample's call, found by Meta's call id (x-wa-meta-wacid, else the Call-ID).
        let meta_call_id = retry
            .headers
            .get("x-wa-meta-wacid")
            .or(retry.call_id())
            .unwrap()
            .to_string();
        // Two samples are one call's two INVITEs (same Call-ID): the newest such call is this one.
        let incoming = server.wait_event(
            "call.incoming",
            |e| {
                e["meta_call_id"] == meta_call_id.as_str()
                    && !seen.iter().any(|c| e["call"] == c.as_str())
            },
            Duration::from_secs(5),
        );
        let call = incoming["call"].as_str().unwrap().to_string();
        seen.push(call.clone());
        let answered = server.wait_event(
            "call.answered",
            |e| e["call"] == call,
            Duration::from_secs(5),
        );
        assert_eq!(answered["direction"], "inbound", "{name}: {answered}");
        // The answer takes the offer's key exchange (WHATSAPP-SIP §6.6).
        let answer = String::from_utf8_lossy(&ok.body).to_string();
        let offered_sdes = String::from_utf8_lossy(&invite.body).contains("RTP/SAVP ");
        if offered_sdes {
            assert!(
                answer.contains("RTP/SAVP") && answer.contains("a=crypto:"),
                "{name}: {answer}"
            );
        } else {
            assert!(
                answer.contains("UDP/TLS/RTP/SAVPF") && answer.contains("a=setup:active"),
                "{name}: {answer}"
            );
        }
        send(
            &mut tls,
            &bye_for(&retry, &ok, retry.cseq().unwrap().seq + 1),
        );
        let bye_ok = final_response(&mut tls, &mut buf);
        assert_eq!(bye_ok.status, 200, "{name}");
        let ended = server.wait_event("call.ended", |e| e["call"] == call, Duration::from_secs(10));
        assert_eq!(ended["by"], "remote", "{ended}");
        assert_eq!(ended["meta_call_duration_secs"], 3, "{ended}");
        assert!(
            ended["timings_ms"]["final_response"].as_f64().is_some(),
            "{ended}"
        );
        assert_idle(&ended);
    }
    server.assert_alive();
}

#[test]
fn refusals_unknown_number_and_wrong_password_alike_bad_sdp_488_naming_the_rule() {
    let dir = TempDir::new("calls-refusals");
    let (mut server, _sink) = serve(dir.path(), &["--challenge", "--digest-algorithm", "both"]);
    let mut tls = server.tls_connect();
    let mut buf = Vec::new();

    // A number this server does not have and one it has, each with a wrong password: the same
    // 407, then the same 403 (apart from nonces, tags and the number itself), so no number can
    // be found by probing.
    let mut seen = Vec::new();
    for (number, own) in [("+19990000000", "probe-one"), ("+17015558857", "probe-two")] {
        let mut invite = as_new_call(meta_invite("meta-invite-user-initiated-01.sip"), own);
        invite.uri =
            watrunk_sip::Uri::parse(&format!("sip:{number}@localhost;transport=tls")).unwrap();
        invite
            .headers
            .set("To", format!("<sip:{number}@meta-voip.example.com>"));
        let (challenge, _, refusal) =
            invite_with_digest_seen(&mut tls, &mut buf, &invite, "not-the-password");
        assert_eq!(
            (refusal.status, refusal.reason.as_str()),
            (403, "Forbidden"),
            "{refusal:?}"
        );
        seen.push((alike(&challenge, number, own), alike(&refusal, number, own)));
    }
    assert_eq!(seen[0], seen[1]);
    // The operator is told what each was.
    let failed = server.wait_event(
        "auth.failed",
        |e| e["number"] == "+17015558857",
        Duration::from_secs(5),
    );
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("wrong credentials"),
        "{failed}"
    );
    server.wait_event(
        "auth.failed",
        |e| e["number"] == "unknown",
        Duration::from_secs(5),
    );

    // Good credentials, an offer without Opus: 488 naming the rule.
    let mut invite = as_new_call(meta_invite("meta-invite-user-initiated-01.sip"), "noopus");
    let body = String::from_utf8(invite.body.clone()).unwrap();
    invite.body = body.replace("opus/48000/2", "PCMU/8000").into_bytes();
    let (_, r) = invite_with_digest(&mut tls, &mut buf, &invite, PASSWORD);
    assert_eq!(r.status, 488, "{r:?}");
    assert!(r.reason.contains("no-opus"), "{}", r.reason);
    let warning = r.headers.get("Warning").expect("a Warning");
    assert!(warning.starts_with("399 localhost \""), "{warning}");
    assert!(warning.to_ascii_lowercase().contains("opus"), "{warning}");
    server.assert_alive();
}

#[test]
fn a_config_without_the_password_fails_at_start_naming_the_key() {
    let dir = TempDir::new("calls-config");
    let (ok, out) = run(
        Command::new(bin())
            .args([
                "serve",
                "--hostname",
                "localhost",
                "--number",
                "+15550001111",
                "--challenge",
                "--media-ip",
                "127.0.0.1",
                "--sink",
                "127.0.0.1:4000",
                "--tls",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(dir.path()),
        Duration::from_secs(10),
    );
    assert!(!ok);
    assert!(out.contains("--sip-password-file"), "{out}");
    let toml = dir.path().join("watrunk.toml");
    std::fs::write(
        &toml,
        "hostname = \"localhost\"\n[media]\nip = \"127.0.0.1\"\nsink = \"127.0.0.1:4000\"\n[[number]]\nnumber = \"+15550001111\"\nchallenge = true\n",
    )
    .unwrap();
    let (ok, out) = run(
        Command::new(bin())
            .args(["serve", "--tls", "127.0.0.1:0", "--config"])
            .arg(&toml),
        Duration::from_secs(10),
    );
    assert!(!ok);
    assert!(out.contains("number[0].password_file"), "{out}");
}

#[test]
fn cancel_before_answer_gets_487_and_frees_the_call() {
    let dir = TempDir::new("calls-cancel");
    let (mut server, _sink) = serve(dir.path(), &["--no-auto-answer"]);
    let mut tls = server.tls_connect();
    let mut buf = Vec::new();
    let invite = meta_invite("meta-invite-user-initiated-01.sip");
    send(&mut tls, &invite.to_bytes());
    let ringing = read_until(
        &mut tls,
        &mut buf,
        Duration::from_secs(5),
        |m| matches!(m, Message::Response(r) if r.status == 180),
    );
    let incoming = server.wait_event("call.incoming", |_| true, Duration::from_secs(5));
    assert_eq!(incoming["to"], "+17015558857");
    assert_eq!(incoming["from"], "+12195550714");
    let Message::Response(ringing) = ringing else {
        unreachable!()
    };
    assert!(ringing.to().unwrap().tag().is_some());
    let cancel = watrunk_sip::transaction::build_cancel(&invite);
    send(&mut tls, &cancel.to_bytes());
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let Message::Response(r) = read_until(
            &mut tls,
            &mut buf,
            Duration::from_secs(5),
            |m| matches!(m, Message::Response(r) if r.status >= 200),
        ) else {
            unreachable!()
        };
        statuses.push((r.cseq().unwrap().method.to_string(), r.status));
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [("CANCEL".to_string(), 200), ("INVITE".to_string(), 487)]
    );
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(10));
    assert_eq!(ended["status"], 487, "{ended}");
    assert_idle(&ended);
    server.assert_alive();
}

#[test]
fn a_lost_ack_ends_the_call_with_a_bye_after_timer_h() {
    let dir = TempDir::new("calls-noack");
    // No media flows here: the RTP timeout (20 s) would end the call before Timer H.
    let (mut server, _sink) = serve(dir.path(), &["--rtp-timeout-secs", "0"]);
    let mut tls = server.tls_connect();
    let mut buf = Vec::new();
    let mut invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    // The route set points back at this test's TLS side, like Meta's points at wa.meta.vc.
    invite.headers.remove("Record-Route");
    let ok = {
        send(&mut tls, &invite.to_bytes());
        final_response(&mut tls, &mut buf)
    };
    assert_eq!(ok.status, 200);
    // No ACK. Timer H (64*T1 = 32 s) later watrunk gives up and says BYE, over this connection
    // (the INVITE's Contact, sip:...@wa.meta.vc, is not where this test listens, so the BYE's
    // next hop is looked up and fails; the call must end all the same).
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(45));
    assert_eq!(ended["by"], "local", "{ended}");
    assert!(
        ended["reason"].as_str().unwrap().contains("no ACK"),
        "{ended}"
    );
    assert_idle(&ended);
    server.assert_alive();
}

/// A TLS server standing in for Meta's proxy (wa.meta.vc): the certificate is the dev CA's, trusted
/// by watrunk through --tls-ca.
fn meta_proxy(
    dir: &Path,
) -> (
    std::net::TcpListener,
    Arc<rustls::ServerConfig>,
    std::path::PathBuf,
) {
    let (ca, cert, key) = dev_pki(&dir.join("pki"));
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(config),
        ca,
    )
}

#[test]
fn after_the_tls_connection_drops_our_bye_goes_over_a_new_connection_through_the_route_set() {
    let dir = TempDir::new("calls-reconnect");
    let (proxy, proxy_tls, ca) = meta_proxy(dir.path());
    let proxy_addr = proxy.local_addr().unwrap();
    let (mut server, _sink) = serve(dir.path(), &["--tls-ca", ca.to_str().unwrap()]);
    let mut tls = server.tls_connect();
    let mut buf = Vec::new();
    let mut invite = as_new_call(
        meta_invite("meta-invite-user-initiated-digest-01.sip"),
        "reconnect",
    );
    // Meta's route set, with its first hop (wa.meta.vc) played by this test's proxy.
    invite.headers.remove("Record-Route");
    invite.headers.push(
        "Record-Route",
        format!("<sip:{proxy_addr};transport=tls;lr>"),
    );
    invite.headers.push(
        "Record-Route",
        "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
    );
    send(&mut tls, &invite.to_bytes());
    let ok = final_response(&mut tls, &mut buf);
    assert_eq!(ok.status, 200, "{ok:?}");
    let mut ack = Request::new(
        watrunk_sip::Method::ACK,
        watrunk_sip::Uri::parse("sip:watrunk@localhost;transport=tls").unwrap(),
    );
    ack.headers
        .push("Via", "SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKackr;rport");
    ack.headers
        .push("From", invite.headers.get("From").unwrap());
    ack.headers.push("To", ok.headers.get("To").unwrap());
    ack.headers.push("Call-ID", invite.call_id().unwrap());
    ack.headers
        .push("CSeq", format!("{} ACK", invite.cseq().unwrap().seq));
    ack.headers.push("Max-Forwards", "70");
    send(&mut tls, &ack.to_bytes());
    let call = server.wait_event("call.confirmed", |_| true, Duration::from_secs(5))["call"]
        .as_str()
        .unwrap()
        .to_string();
    // Meta's connection goes away mid-call; the call does not.
    drop(tls);
    std::thread::sleep(Duration::from_millis(300));
    let api = format!("http://{}", server.api.unwrap());
    ureq::post(&format!("{api}/calls/{call}/hangup"))
        .call()
        .expect("hang up through the API");
    // watrunk opens a new TLS connection to the route set's first hop and says BYE there.
    proxy.set_nonblocking(false).unwrap();
    let (tcp, _) = proxy.accept().expect("watrunk connects to the first hop");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ServerConnection::new(proxy_tls).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let bye = loop {
        use std::io::Read;
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).expect("the BYE arrives");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            match Message::parse_datagram(&buf[..end + 4]).unwrap() {
                Message::Request(r) => break r,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(bye.method, watrunk_sip::Method::BYE);
    // R-URI: Meta's Contact; Route: the Record-Route exactly, in order (WHATSAPP-SIP §3.11, §4.4).
    assert_eq!(
        bye.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls;ob"
    );
    let routes: Vec<&str> = bye.headers.get_all("Route").collect();
    let rr: Vec<&str> = invite.headers.get_all("Record-Route").collect();
    assert_eq!(routes, rr);
    assert!(
        bye.headers
            .get("Reason")
            .unwrap()
            .starts_with("Q.850;cause=16"),
        "{bye:?}"
    );
    let ok = Response::to_request(&bye, 200, "OK", None);
    stream.write_all(&ok.to_bytes()).unwrap();
    stream.flush().unwrap();
    let ended = server.wait_event("call.ended", |e| e["call"] == call, Duration::from_secs(10));
    assert_eq!(ended["by"], "local", "{ended}");
    assert_idle(&ended);
    server.assert_alive();
}

/// One HTTP/1.1 request written as it is (so that Host and Origin are exactly the test's); the
/// status of the answer.
fn http_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// A web page the user opens must not reach the control API: a foreign Origin on the events
/// WebSocket and on a POST gets 403, as does a foreign Host (DNS rebinding); the API's own
/// address gets through. With --api-token-file, a request without the bearer token gets 401.
#[test]
fn the_control_api_refuses_web_pages_and_foreign_hosts() {
    let dir = TempDir::new("api-guard");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-for-the-test\n").unwrap();
    let (server, _sink) = serve(dir.path(), &["--api-token-file", token.to_str().unwrap()]);
    let api = server.api.expect("the control API");
    let us = format!("Host: {api}\r\nAuthorization: Bearer t0ken-for-the-test\r\n");
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    assert_eq!(
        http_status(api, &format!("GET /calls HTTP/1.1\r\n{us}\r\n")),
        200
    );
    assert_eq!(
        http_status(api, &format!("GET /events HTTP/1.1\r\n{us}{ws}\r\n")),
        101,
        "our own WebSocket"
    );
    assert_eq!(
        http_status(
            api,
            &format!("GET /events HTTP/1.1\r\n{us}{ws}Origin: http://evil.example\r\n\r\n")
        ),
        403,
        "a web page's WebSocket"
    );
    assert_eq!(
        http_status(
            api,
            &format!(
                "POST /calls/c1/hangup HTTP/1.1\r\n{us}Origin: http://evil.example\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        ),
        403,
        "a web page's POST"
    );
    assert_eq!(
        http_status(
            api,
            &format!(
                "GET /calls HTTP/1.1\r\nHost: evil.example:{}\r\n\
                 Authorization: Bearer t0ken-for-the-test\r\n\r\n",
                api.port()
            )
        ),
        403,
        "a rebound name"
    );
    assert_eq!(
        http_status(api, &format!("GET /calls HTTP/1.1\r\nHost: {api}\r\n\r\n")),
        401,
        "no token"
    );
}

/// Meta's offer with telephone-event only at 48000 Hz: the call is taken, our answer names no
/// telephone-event, and a key asked of the control API is refused with the reason (409), not
/// accepted and dropped.
#[test]
fn dtmf_on_a_call_without_telephone_event_8000_is_refused_with_the_reason() {
    let dir = TempDir::new("calls-dtmf-48k");
    let (server, _sink) = serve(dir.path(), &[]);
    let mut tls = server.tls_connect();
    let mut buf = Vec::new();
    let mut invite = as_new_call(meta_invite("meta-invite-user-initiated-01.sip"), "dtmf-48k");
    let body = String::from_utf8(invite.body.clone()).unwrap();
    assert!(body.contains("telephone-event/8000"), "{body}");
    invite.body = body
        .replace("telephone-event/8000", "telephone-event/48000")
        .into_bytes();
    invite
        .headers
        .set("Content-Length", invite.body.len().to_string());
    send(&mut tls, &invite.to_bytes());
    let ok = final_response(&mut tls, &mut buf);
    assert_eq!(ok.status, 200, "{ok:?}\n{}", server.log());
    let answer = String::from_utf8_lossy(&ok.body);
    assert!(!answer.contains("telephone-event"), "{answer}");
    send(&mut tls, &ack_for(&invite, &ok));
    let call = server.wait_event("call.confirmed", |_| true, Duration::from_secs(5))["call"]
        .as_str()
        .unwrap()
        .to_string();
    let api = format!("http://{}", server.api.unwrap());
    let refused =
        ureq::post(&format!("{api}/calls/{call}/dtmf")).send_json(serde_json::json!({"keys": "1"}));
    match refused {
        Err(ureq::Error::Status(409, r)) => {
            let text = r.into_string().unwrap();
            assert!(text.contains("telephone-event"), "{text}");
        }
        other => panic!("the key was not refused with a reason: {other:?}"),
    }
    let _ = ureq::post(&format!("{api}/calls/{call}/hangup")).call();
}

/// A TLS connection to the server from `source` (an address of this host: 127.0.0.2 is one).
fn tls_connect_from(server: &Server, source: &str) -> Tls {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&server.tls.unwrap().into()).unwrap();
    let tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(server.tls_config(), "localhost".try_into().unwrap())
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// A bounded brute force over TLS: 10,000 guesses at the password from one address. After
/// --auth-max-failures (10) the address is banned: every later guess, and then the right
/// password, gets the same 403; another address is not affected; the failures are events, the log
/// says so without a line per guess. (That the ban ends is the admission unit tests' job: here it
/// outlasts the guessing.)
#[test]
fn a_password_guesser_is_banned_and_another_address_is_not() {
    let dir = TempDir::new("calls-brute-force");
    let (server, _sink) = serve(
        dir.path(),
        &[
            "--challenge",
            "--digest-algorithm",
            "both",
            "--auth-max-failures",
            "10",
            "--auth-ban-secs",
            "300",
        ],
    );
    let mut guesser = tls_connect_from(&server, "127.0.0.1");
    let mut buf = Vec::new();
    let invite = as_new_call(meta_invite("meta-invite-user-initiated-01.sip"), "guesses");
    send(&mut guesser, &invite.to_bytes());
    let challenge = final_response(&mut guesser, &mut buf);
    assert_eq!(challenge.status, 407);
    let offered: Vec<&str> = challenge.headers.get_all("Proxy-Authenticate").collect();
    let challenges = Challenge::parse_supported(offered.iter().copied());
    let chosen = digest::choose_challenge(&challenges).unwrap().clone();
    let guess = |n: u32, password: &str| {
        let auth = digest::answer(
            &chosen,
            &Credentials::new("17015558857", password),
            "INVITE",
            &invite.uri.to_string(),
            &invite.body,
            n,
            "0a4f113b",
        );
        let mut retry = as_new_call(invite.clone(), &format!("guess-{n}"));
        retry.headers.set("CSeq", format!("{} INVITE", n + 1));
        retry.headers.push("Proxy-Authorization", auth.to_string());
        retry
    };
    // Sent 100 at a time, then their 100 answers read.
    let started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            bytes.extend(guess(batch * 100 + i + 1, &format!("guess-{batch}-{i}")).to_bytes());
        }
        send(&mut guesser, &bytes);
        for _ in 0..100 {
            *statuses
                .entry(final_response(&mut guesser, &mut buf).status)
                .or_default() += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        statuses,
        [(403, 10_000)].into(),
        "every guess refused alike"
    );
    // The right password from the banned address fails too.
    send(&mut guesser, &guess(10_001, PASSWORD).to_bytes());
    let banned = final_response(&mut guesser, &mut buf);
    assert_eq!((banned.status, banned.reason.as_str()), (403, "Forbidden"));
    // Another address, the right password: the call is taken.
    let mut caller = tls_connect_from(&server, "127.0.0.2");
    let call = as_new_call(meta_invite("meta-invite-user-initiated-01.sip"), "honest");
    let (_, ok) = invite_with_digest(&mut caller, &mut buf, &call, PASSWORD);
    assert_eq!(ok.status, 200, "{ok:?}");
    // The operator was told: ten failures as events, one ban, and a log that did not grow
    // with the guesses.
    let events = server.events();
    let failed = events
        .iter()
        .filter(|e| e["event"] == "auth.failed")
        .count();
    assert_eq!(failed, 10, "only checked answers are failures: {events:#?}");
    let ban = server.wait_event("auth.banned", |_| true, Duration::from_secs(5));
    assert_eq!(ban["source"], "127.0.0.1", "{ban}");
    assert_eq!(ban["failures"], 10, "{ban}");
    let log = server.log();
    let lines = log.matches("authentication failed from 127.0.0.1").count();
    assert!((1..=10).contains(&lines), "{lines} lines\n{log}");
    assert!(
        log.contains("127.0.0.1 banned for 300 s after 10 failed authentications"),
        "{log}"
    );
    eprintln!("10,000 guesses over TLS in {took:?}");
}

/// This process's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_sec)
}

/// With an open-files limit of 1,024 and 1,100 TLS connections from one address that send
/// nothing, the server neither spins nor runs out of descriptors: the address gets its 128,
/// the rest are refused (and said so in the log), the server stays under 5 % of a CPU, and a
/// call from another address is taken.
#[test]
fn idle_connections_from_one_address_neither_spin_nor_lock_others_out() {
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut own);
        own.rlim_cur = own.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &own);
    }
    assert!(
        own.rlim_cur >= 1300,
        "this test needs 1,300 descriptors of its own"
    );
    let dir = TempDir::new("calls-idle-conns");
    let (server, _sink) = serve_with_open_files(
        dir.path(),
        &["--challenge", "--digest-algorithm", "both"],
        Some(1024),
    );
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..1100 {
        let tcp = std::net::TcpStream::connect(server.tls.unwrap()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn =
            rustls::ClientConnection::new(server.tls_config(), "localhost".try_into().unwrap())
                .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut up = true;
        while s.conn.is_handshaking() {
            if s.conn.complete_io(&mut s.sock).is_err() {
                up = false;
                break;
            }
        }
        if up {
            held.push(s);
        } else {
            refused += 1;
        }
    }
    let cpu_before = cpu_time(server.pid());
    let quiet = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let busy = (cpu_time(server.pid()) - cpu_before).as_secs_f64() / quiet.elapsed().as_secs_f64();
    // Another address, while the 128 are held: a call is taken.
    let mut caller = tls_connect_from(&server, "127.0.0.2");
    let mut buf = Vec::new();
    let call = as_new_call(
        meta_invite("meta-invite-user-initiated-01.sip"),
        "while-held",
    );
    let (_, ok) = invite_with_digest(&mut caller, &mut buf, &call, PASSWORD);
    let log = server.log();
    assert_eq!((held.len(), refused), (128, 972), "{log}");
    assert!(
        busy < 0.05,
        "the server used {:.1} % of a CPU",
        busy * 100.0
    );
    assert!(
        log.contains("127.0.0.1 already has 128 connections: refusing another"),
        "{log}"
    );
    assert!(
        log.matches("refusing another").count() <= 10,
        "refusals are logged a few times, not once each\n{log}"
    );
    assert_eq!(ok.status, 200, "{ok:?}\n{log}");
    eprintln!(
        "{} held, {refused} refused, {:.2} % CPU",
        held.len(),
        busy * 100.0
    );
}
