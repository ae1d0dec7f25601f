//! Call set-up timing through a real `watrunk serve` (release build) on loopback: Meta's SDES sample
//! INVITE, one call after another over one TLS connection, each answered, ACKed and ended with BYE.
//! Measured per call: INVITE → 200 OK at the client, the server's own 200-after-INVITE excluding
//! media preparation (from `call.ended`), and the first SRTP packet after the keys are up. The
//! reference in the same run is an OPTIONS round trip over the same connection (the floor for any
//! SIP answer), so the report is a ratio that survives a noisy machine.
//!
//!     cargo bench -p watrunk --bench call_setup -- [--calls N]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use watrunk_sip::{Message, Request, Response};

#[path = "../../../tests/common/mod.rs"]
mod common;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, v: &mut [f64]) -> String {
    format!(
        "{name:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        percentile(v, 0.5),
        percentile(v, 0.99),
        percentile(v, 1.0)
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn read_message(tls: &mut Tls, buf: &mut Vec<u8>) -> Message {
    common::read_message(tls, buf).expect("valid SIP from watrunk before the connection closed")
}

fn final_response(tls: &mut Tls, buf: &mut Vec<u8>) -> Response {
    loop {
        if let Message::Response(r) = read_message(tls, buf) {
            if r.status >= 200 {
                return r;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let state = std::env::temp_dir().join(format!("watrunk-bench-setup-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    // The far side's media: where Meta's offer says it receives, and the agent's sink.
    let meta_media = UdpSocket::bind("127.0.0.1:0").unwrap();
    meta_media
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_watrunk"))
        .args([
            "serve",
            "--hostname",
            "localhost",
            "--tls",
            "127.0.0.1:0",
            "--api",
            "off",
        ])
        .args([
            "--number",
            "+12145551869",
            "--media-ip",
            "127.0.0.1",
            "--events",
            "-",
        ])
        .arg("--sink")
        .arg(sink.local_addr().unwrap().to_string())
        .arg("--state-dir")
        .arg(&state)
        .env("WATRUNK_LOG", "info,dtls=error,webrtc_ice=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watrunk serve");
    let events = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let (out, ev) = (child.stdout.take().unwrap(), events.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                ev.lock().unwrap().push(v);
            }
        }
    });
    // The TLS port from the log line.
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("SIP over TLS on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watrunk started");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(state.join("localhost.selfsigned.crt")).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();

    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/whatsapp/meta-invite-user-initiated-sdes-01.sip"
    ))
    .unwrap();
    let media_port = meta_media.local_addr().unwrap().port();
    let sample: String = sample
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-authorization"))
        .map(|l| {
            if l.starts_with("a=crypto:*") {
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
                    .into()
            } else if l.starts_with("m=audio ") {
                format!("m=audio {media_port} RTP/SAVP 111 126")
            } else if l.starts_with("c=IN IP4") {
                "c=IN IP4 127.0.0.1".into()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let Message::Request(template) =
        Message::parse_datagram(&watrunk_sip::samples::normalize_meta_sample(&sample)).unwrap()
    else {
        panic!("the sample is a request")
    };

    let mut options_rtt = Vec::new();
    let mut invite_to_200 = Vec::new();
    let mut server_answer = Vec::new();
    let mut server_final = Vec::new();
    let mut first_srtp_after_keys = Vec::new();
    let mut ok_to_first_srtp = Vec::new();
    for i in 0..calls {
        // Reference: an OPTIONS round trip on the same connection.
        let options = format!(
            "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKo{i}\r\nMax-Forwards: 70\r\nFrom: <sip:bench@localhost>;tag=o{i}\r\nTo: <sip:localhost>\r\nCall-ID: o{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let t = Instant::now();
        tls.write_all(options.as_bytes()).unwrap();
        tls.flush().unwrap();
        let r = final_response(&mut tls, &mut buf);
        options_rtt.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.status, 200);

        let mut invite: Request = template.clone();
        let call_id = format!("bench-{i}");
        invite.headers.set("Call-ID", call_id.clone());
        invite.headers.set(
            "Via",
            format!("SIP/2.0/TLS 127.0.0.1:5999;rport;branch=z9hG4bKi{i}"),
        );
        let t = Instant::now();
        tls.write_all(&invite.to_bytes()).unwrap();
        tls.flush().unwrap();
        let ok = final_response(&mut tls, &mut buf);
        invite_to_200.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(ok.status, 200, "{ok:?}");
        let got_ok = Instant::now();
        let mut pkt = [0u8; 2048];
        if meta_media.recv_from(&mut pkt).is_ok() {
            ok_to_first_srtp.push(got_ok.elapsed().as_secs_f64() * 1e3);
        }
        let to = ok.headers.get("To").unwrap().to_string();
        let from = invite.headers.get("From").unwrap().to_string();
        let seq = invite.cseq().unwrap().seq;
        let ack = format!(
            "ACK sip:+12145551869@localhost;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKa{i}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let bye = format!(
            "BYE sip:+12145551869@localhost;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKb{i}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {} BYE\r\nContent-Length: 0\r\n\r\n",
            seq + 1
        );
        tls.write_all(ack.as_bytes()).unwrap();
        tls.write_all(bye.as_bytes()).unwrap();
        tls.flush().unwrap();
        assert_eq!(final_response(&mut tls, &mut buf).status, 200);
        // Drain what the call still sent.
        meta_media
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        while meta_media.recv_from(&mut pkt).is_ok() {}
        meta_media
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
    }
    // The server's own view, from call.ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "call.ended")
            .count();
        if n >= calls || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for e in events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "call.ended")
    {
        let t = &e["timings_ms"];
        if let Some(v) = t["answer_excluding_media"].as_f64() {
            server_answer.push(v);
        }
        if let Some(v) = t["final_response"].as_f64() {
            server_final.push(v);
        }
        if let (Some(out), Some(keys)) = (t["first_rtp_out"].as_f64(), t["secure"].as_f64()) {
            first_srtp_after_keys.push(out - keys);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);

    println!("call set-up through watrunk serve (release), {calls} calls, SDES, one TLS connection, loopback");
    let ref_p50 = percentile(&mut options_rtt, 0.5);
    println!(
        "{}",
        summary("reference: OPTIONS round trip", &mut options_rtt)
    );
    println!(
        "{}",
        summary("INVITE -> 200 OK at the client", &mut invite_to_200)
    );
    println!(
        "{}",
        summary(
            "server: 200 after INVITE, excl. media prepare",
            &mut server_answer
        )
    );
    println!(
        "{}",
        summary("server: 200 after INVITE, all", &mut server_final)
    );
    if !first_srtp_after_keys.is_empty() {
        println!(
            "{}",
            summary(
                "server: first SRTP after keys up",
                &mut first_srtp_after_keys
            )
        );
    }
    if !ok_to_first_srtp.is_empty() {
        println!(
            "{}",
            summary("client: first SRTP after the 200 OK", &mut ok_to_first_srtp)
        );
    }
    println!(
        "ratio INVITE->200 / OPTIONS round trip (p50): {:.2}",
        percentile(&mut invite_to_200, 0.5) / ref_p50
    );
}
