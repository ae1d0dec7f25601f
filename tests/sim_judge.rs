//! `watrunk sim` as a strict judge: small business peers, each breaking one rule of WHATSAPP-SIP,
//! against `sim call` (Meta calling the business) and `sim serve` (Meta answering the business).
//! Each run must exit non-zero with the rule named in the `sim.call` line's `violations`. The
//! well-behaved business (watrunk itself) is judged clean in tests/sim.rs.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_sdp::{self as sdp, Fingerprint, LocalMedia, Profile, Security};
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::{Message, Method, Request, Response, Uri};

/// What a faulty business gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// None: the control run.
    Keeps,
    /// Its 200 OK drops Meta's Record-Route (§4.3).
    NoRecordRoute,
    /// Its DTLS answer says `a=setup:passive` (§6.6: the business is the DTLS client).
    SetupPassive,
    /// Its DTLS answer carries a second fingerprint (§6.5: exactly one sha-256).
    TwoFingerprints,
    /// Its RTP keeps another SSRC than its SDP announced (as a relay forwarding the agent's).
    ForeignSsrc,
    /// It protects two packets with the same sequence number.
    RepeatedSeq,
    /// It sends no media at all (§7.3: the business speaks first).
    Silent,
    /// It puts Meta on hold with a re-INVITE (§5.2: Meta takes none; a PBX bridge must absorb it).
    Reinvite,
}

fn self_signed(dir: &std::path::Path) -> (rustls::ServerConfig, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let pem = dir.join("business.crt");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    (config, pem)
}

/// Sends 60 SRTP packets toward the sim, one every 20 ms, with `fault` applied.
fn send_media(local: &LocalMedia, plan: &sdp::MediaPlan, socket: &UdpSocket, fault: Fault) {
    let to = plan
        .remote_rtp
        .expect("the sim's SDES offer has an address");
    let mut srtp = SrtpContext::new(
        SrtpProfile::AesCm128HmacSha1_80,
        &local.sdes_key[..16],
        &local.sdes_key[16..],
    )
    .unwrap();
    let ssrc = if fault == Fault::ForeignSsrc {
        local.ssrc ^ 0x5a5a_5a5a
    } else {
        local.ssrc
    };
    for i in 0..60u16 {
        let seq = if fault == Fault::RepeatedSeq {
            i / 2
        } else {
            i
        };
        let mut packet = [0u8; 200];
        packet[0] = 0x80;
        packet[1] = plan.audio_pt;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(i) * 960).to_be_bytes());
        packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
        // An Opus silence frame (TOC 0xf8 and two zero octets).
        packet[12..15].copy_from_slice(&[0xf8, 0xff, 0xfe]);
        let len = srtp.protect_rtp(&mut packet, 15).unwrap();
        let _ = socket.send_to(&packet[..len], to);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A business SIP server over TLS that takes one call from `sim call` and commits `fault`.
fn faulty_business(dir: &std::path::Path, fault: Fault) -> (SocketAddr, std::path::PathBuf) {
    let (config, pem) = self_signed(dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = Vec::new();
        let Some(Message::Request(invite)) = read_message(&mut tls, &mut buf) else {
            return;
        };
        let offer = sdp::parse(&invite.body).unwrap();
        let media = UdpSocket::bind("127.0.0.1:0").unwrap();
        let security = if sdp::print(&offer).contains("RTP/SAVP ") {
            Security::Sdes
        } else {
            Security::Dtls
        };
        let mut local = LocalMedia::generate(Profile::WhatsApp, security, &mut rand::thread_rng())
            .with_candidates([media.local_addr().unwrap()])
            .with_fingerprint(Fingerprint::sha256(vec![0x42; 32]));
        local.ice_ufrag = "fAuLt".into();
        local.ice_pwd = "faultyfaultyfaultyfaulty".into();
        let (answer, plan) = sdp::answer(&offer, &local).unwrap();
        let mut body = sdp::print(&answer);
        match fault {
            Fault::SetupPassive => body = body.replace("a=setup:active", "a=setup:passive"),
            Fault::TwoFingerprints => {
                let extra = format!("a=fingerprint:sha-512 {}\r\n", ["AB"; 64].join(":"));
                let at = body.find("a=setup:").unwrap();
                body.insert_str(at, &extra);
            }
            _ => {}
        }
        let contact = format!("<sip:+15550001111@{addr};transport=tls>");
        let mut ok = Response::dialog_response(&invite, 200, "OK", "faulty", &contact);
        if fault == Fault::NoRecordRoute {
            ok.headers.remove("Record-Route");
        }
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body.into_bytes();
        tls.write_all(&ok.to_bytes()).unwrap();
        let mut sender = None;
        while let Some(msg) = read_message(&mut tls, &mut buf) {
            let Message::Request(req) = msg else { continue };
            match req.method {
                Method::ACK if fault == Fault::Reinvite => {
                    let meta_contact = invite.headers.get("Contact").unwrap();
                    let target = watrunk_sip::NameAddr::parse(meta_contact, "Contact")
                        .unwrap()
                        .uri;
                    let mut hold = Request::new(Method::INVITE, target);
                    hold.headers.push(
                        "Via",
                        format!("SIP/2.0/TLS {addr};branch=z9hG4bKfaultyhold"),
                    );
                    for rr in invite.headers.get_all("Record-Route") {
                        hold.headers.push("Route", rr);
                    }
                    hold.headers.push("From", ok.headers.get("To").unwrap());
                    hold.headers.push("To", invite.headers.get("From").unwrap());
                    hold.headers.push("Call-ID", invite.call_id().unwrap());
                    hold.headers.push("CSeq", "1 INVITE");
                    hold.headers.push("Contact", contact.as_str());
                    hold.headers.push("Content-Type", "application/sdp");
                    hold.body = ok.body.clone();
                    tls.write_all(&hold.to_bytes()).unwrap();
                }
                Method::ACK if security == Security::Sdes && fault != Fault::Silent => {
                    let media = media.try_clone().unwrap();
                    let local = local.clone();
                    let plan = plan.clone();
                    sender = Some(std::thread::spawn(move || {
                        send_media(&local, &plan, &media, fault)
                    }));
                }
                Method::BYE => {
                    let r = Response::to_request(&req, 200, "OK", None);
                    let _ = tls.write_all(&r.to_bytes());
                    break;
                }
                _ => {}
            }
        }
        if let Some(s) = sender {
            let _ = s.join();
        }
    });
    (addr, pem)
}

/// `sim call` toward a faulty business: (exit ok, the sim.call line).
fn meta_calls(fault: Fault, srtp: &str) -> (bool, serde_json::Value, String) {
    let dir = TempDir::new("judge-call");
    let (addr, ca) = faulty_business(dir.path(), fault);
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "call", &addr.to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args(["--srtp", srtp, "--hangup-after", "3"])
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(30),
    );
    let call = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "sim.call")
        .unwrap_or_else(|| panic!("no sim.call line:\n{out}"));
    (ok, call, out)
}

fn rules(call: &serde_json::Value) -> Vec<String> {
    call["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations list: {call}"))
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_string())
        .collect()
}

fn assert_judged(fault: Fault, srtp: &str, rule: &str) {
    let (ok, call, out) = meta_calls(fault, srtp);
    assert!(!ok, "{fault:?}: the sim must exit non-zero\n{out}");
    let named = rules(&call);
    assert!(
        named.iter().any(|r| r == rule),
        "{fault:?}: {rule} not named in {named:?}\n{call}"
    );
}

#[test]
fn a_business_keeping_every_rule_is_judged_clean() {
    let (ok, call, out) = meta_calls(Fault::Keeps, "sdes");
    assert!(ok, "{out}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
}

#[test]
fn a_200_without_metas_record_route_is_named() {
    assert_judged(Fault::NoRecordRoute, "sdes", "record-route");
}

#[test]
fn a_passive_dtls_answer_is_named() {
    assert_judged(Fault::SetupPassive, "dtls", "sdp:setup");
}

#[test]
fn two_fingerprints_are_named() {
    assert_judged(Fault::TwoFingerprints, "dtls", "sdp:several-fingerprints");
}

#[test]
fn rtp_with_another_ssrc_than_announced_is_named() {
    let (ok, call, out) = meta_calls(Fault::ForeignSsrc, "sdes");
    assert!(!ok, "{out}");
    assert_eq!(rules(&call), ["one-ssrc"], "{call}");
}

#[test]
fn a_sequence_number_sent_twice_is_named() {
    let (ok, call, out) = meta_calls(Fault::RepeatedSeq, "sdes");
    assert!(!ok, "{out}");
    assert_eq!(rules(&call), ["srtp-rejected"], "{call}");
}

#[test]
fn a_reinvite_toward_meta_is_named() {
    assert_judged(Fault::Reinvite, "dtls", "in-dialog");
}

#[test]
fn a_business_that_never_speaks_is_named() {
    assert_judged(Fault::Silent, "sdes", "first-media");
}

/// What a faulty business does wrong when it calls a user through `sim serve`.
#[derive(Clone, Copy, Debug)]
enum CallerFault {
    Keeps,
    Md5,
    PlusInUsername,
    UriNotRequestUri,
    NoRouteSet,
}

/// A business placing one call into `sim serve`, answering its 407 with `fault`; the sim's exit
/// status and its sim.call line.
fn business_calls(fault: CallerFault) -> (bool, serde_json::Value, String) {
    let dir = TempDir::new("judge-serve");
    let port = free_port();
    std::fs::write(dir.path().join("pw"), "per-number-secret").unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sim = Background::spawn(
        "sim serve",
        Command::new(bin())
            .args(["sim", "serve", "--listen", &addr.to_string()])
            .args(["--tls-name", "127.0.0.1", "--business-host", "localhost"])
            .args(["--hangup-after", "10", "--srtp", "sdes", "--calls", "1"])
            .arg("--password-file")
            .arg(dir.path().join("pw"))
            .arg("--state-dir")
            .arg(dir.path().join("simstate")),
        dir.path().join("sim.log"),
    );
    wait_tcp(addr, Duration::from_secs(10));
    let ca = dir.path().join("simstate/127.0.0.1.selfsigned.crt");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();

    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local_media =
        LocalMedia::generate(Profile::WhatsApp, Security::Sdes, &mut rand::thread_rng())
            .with_candidates([media.local_addr().unwrap()]);
    let offer = sdp::offer(&local_media).unwrap();
    let ruri = "sip:+12195550714@wa.meta.vc;transport=tls";
    let mut invite = Request::new(Method::INVITE, Uri::parse(ruri).unwrap());
    let via = |branch: &str| format!("SIP/2.0/TLS {local};branch=z9hG4bK{branch};rport");
    invite.headers.push("Via", via("judge1"));
    invite.headers.push("Max-Forwards", "70");
    invite
        .headers
        .push("From", "<sip:+15550001111@localhost>;tag=biz");
    invite.headers.push("To", "<sip:+12195550714@wa.meta.vc>");
    invite
        .headers
        .push("Call-ID", format!("judge-{fault:?}@localhost"));
    invite.headers.push("CSeq", "1 INVITE");
    invite.headers.push(
        "Contact",
        format!("<sip:+15550001111@{local};transport=tls>"),
    );
    invite.headers.push("Content-Type", "application/sdp");
    invite.body = sdp::print(offer.sdp()).into_bytes();
    tls.write_all(&invite.to_bytes()).unwrap();
    let challenge = loop {
        match read_message(&mut tls, &mut buf) {
            Some(Message::Response(r)) if r.status >= 200 => break r,
            Some(_) => continue,
            None => panic!("no answer from the sim:\n{}", sim.log()),
        }
    };
    assert_eq!(challenge.status, 407);
    let mut ack = Request::new(Method::ACK, invite.uri.clone());
    for h in ["Via", "From", "Call-ID", "Max-Forwards"] {
        ack.headers.push(h, invite.headers.get(h).unwrap());
    }
    ack.headers.push("To", challenge.headers.get("To").unwrap());
    ack.headers.push("CSeq", "1 ACK");
    tls.write_all(&ack.to_bytes()).unwrap();

    let challenges = Challenge::parse_supported(challenge.headers.get_all("Proxy-Authenticate"));
    let chosen = match fault {
        CallerFault::Md5 => challenges
            .iter()
            .find(|c| c.algorithm == digest::Algorithm::Md5)
            .unwrap(),
        _ => digest::choose_challenge(&challenges).unwrap(),
    };
    let username = match fault {
        CallerFault::PlusInUsername => "+15550001111",
        _ => "15550001111",
    };
    let uri = match fault {
        CallerFault::UriNotRequestUri => "sip:+19999999999@wa.meta.vc",
        _ => ruri,
    };
    let auth = digest::answer(
        chosen,
        &Credentials::new(username, "per-number-secret"),
        "INVITE",
        uri,
        &invite.body,
        1,
        "c0ffee00",
    );
    let mut retry = invite.clone();
    retry.headers.set("Via", via("judge2"));
    retry.headers.set("CSeq", "2 INVITE");
    retry.headers.push("Proxy-Authorization", auth.to_string());
    tls.write_all(&retry.to_bytes()).unwrap();
    let ok = loop {
        match read_message(&mut tls, &mut buf) {
            Some(Message::Response(r)) if r.status >= 200 => break r,
            Some(_) => continue,
            None => break Response::new(0, "closed"),
        }
    };
    if ok.status == 200 {
        let answer = sdp::parse(&ok.body).unwrap();
        let plan = sdp::accept_answer(&offer, &answer).unwrap();
        let mut dialog = watrunk_sip::Dialog::from_uac(&retry, &ok).unwrap();
        let strip = |mut r: Request| {
            r.headers
                .push_front("Via", via(&format!("judge{}", r.method)));
            if matches!(fault, CallerFault::NoRouteSet) {
                r.headers.remove("Route");
            }
            r
        };
        let ack = strip(dialog.create_request(Method::ACK).unwrap());
        tls.write_all(&ack.to_bytes()).unwrap();
        send_media(&local_media, &plan, &media, Fault::Keeps);
        let bye = strip(dialog.create_request(Method::BYE).unwrap());
        tls.write_all(&bye.to_bytes()).unwrap();
        let _ = read_message(&mut tls, &mut buf);
    }
    let mut sim = sim;
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = sim.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = sim.log();
    let call = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "sim.call")
        .unwrap_or_else(|| panic!("no sim.call line:\n{log}"));
    let exited_ok = status.unwrap_or_else(|| panic!("sim serve did not exit:\n{log}"));
    (exited_ok.success(), call, log)
}

#[test]
fn a_business_calling_by_every_rule_is_judged_clean() {
    let (ok, call, log) = business_calls(CallerFault::Keeps);
    assert!(ok, "{log}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
}

#[test]
fn the_md5_answer_to_metas_two_challenges_is_named() {
    let (ok, call, log) = business_calls(CallerFault::Md5);
    assert!(!ok, "{log}");
    assert_eq!(call["status"], 200, "Meta still takes the call: {call}");
    assert_eq!(rules(&call), ["digest-algorithm"], "{call}");
}

#[test]
fn a_username_with_plus_is_named_and_refused() {
    let (ok, call, log) = business_calls(CallerFault::PlusInUsername);
    assert!(!ok, "{log}");
    assert_eq!(call["status"], 403, "{call}");
    assert!(
        rules(&call).contains(&"digest-username".to_string()),
        "{call}"
    );
}

#[test]
fn a_digest_uri_other_than_the_request_uri_is_named_and_refused() {
    let (ok, call, log) = business_calls(CallerFault::UriNotRequestUri);
    assert!(!ok, "{log}");
    assert_eq!(call["status"], 403, "{call}");
    assert!(rules(&call).contains(&"digest-uri".to_string()), "{call}");
}

#[test]
fn ack_and_bye_without_the_route_set_are_named() {
    let (ok, call, log) = business_calls(CallerFault::NoRouteSet);
    assert!(!ok, "{log}");
    assert_eq!(
        rules(&call),
        ["route-set", "route-set"],
        "the ACK and the BYE: {call}"
    );
}
