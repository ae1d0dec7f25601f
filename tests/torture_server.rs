//! The RFC 4475/5118 torture corpus and the PROTOS c07-sip cases against a running `watrunk serve`, over
//! UDP, TCP and TLS, with the verdicts of tests/data/sip-torture/expected.toml. Every rejection must carry
//! a reason phrase that says what was wrong, and the server must survive all of it.

#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    file: String,
    status: u16,
    stream: Option<u16>,
    #[serde(default)]
    close: bool,
    stream_file: Option<String>,
    why: String,
}

fn table() -> Table {
    toml::from_str(&String::from_utf8(read_data("sip-torture/expected.toml")).unwrap()).unwrap()
}

fn stream_bytes(c: &Case) -> Vec<u8> {
    match c.stream_file.as_deref() {
        Some(f) if f.ends_with(":first") => {
            // Only the first message of the datagram (RFC 4475 §3.1.1.8 is about UDP trailing octets).
            let all = read_data(&format!("sip-torture/{}", f.trim_end_matches(":first")));
            let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            all[..end].to_vec()
        }
        Some(f) => read_data(&format!("sip-torture/{f}")),
        None => read_data(&format!("sip-torture/{}", c.file)),
    }
}

fn check(c: &Case, transport: &str, expected: u16, got: Option<&[u8]>, failures: &mut Vec<String>) {
    match (expected, got) {
        (0, None) => {}
        (0, Some(r)) => failures.push(format!(
            "{transport} {}: expected no answer, got {:?}",
            c.file,
            status_of(r)
        )),
        (e, None) => failures.push(format!(
            "{transport} {}: expected {e}, got nothing ({})",
            c.file, c.why
        )),
        (e, Some(r)) => {
            let (status, reason) = status_of(r);
            if status != e {
                failures.push(format!(
                    "{transport} {}: expected {e}, got {status} {reason} ({})",
                    c.file, c.why
                ));
            } else if status >= 400 && reason.trim().is_empty() {
                failures.push(format!(
                    "{transport} {}: {status} without a reason phrase",
                    c.file
                ));
            } else if status == 400 && !reason.contains('(') {
                failures.push(format!(
                    "{transport} {}: 400 reason does not say what was wrong: {reason}",
                    c.file
                ));
            }
        }
    }
}

/// One server per transport: the same message (same branch) sent again over another transport would
/// be a retransmission of the first transaction (RFC 3261 §17.2.3 matching ignores the transport).
#[test]
fn torture_corpus_over_udp_tcp_and_tls() {
    let mut failures = Vec::new();
    let t = table();
    for transport in ["udp", "tcp", "tls"] {
        let mut server = Server::start(&[]);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for c in &t.case {
            if transport == "udp" {
                // A fresh server per message: several corpus messages share a branch and sent-by, so on a
                // long-lived server they would match an earlier message's transaction (RFC 3261 §17.2.3).
                let alone = Server::start(&[]);
                let bytes = read_data(&format!("sip-torture/{}", c.file));
                let wait = if c.status == 0 {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(3)
                };
                let got = udp_answer(&client, alone.udp.unwrap(), &bytes, wait);
                check(c, "udp", c.status, got.as_deref(), &mut failures);
                continue;
            }
            let expected = c.stream.unwrap_or(c.status);
            let wait = if expected == 0 {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            };
            let sbytes = stream_bytes(c);
            let out = if transport == "tcp" {
                let mut tcp = TcpStream::connect(server.tcp.unwrap()).unwrap();
                tcp.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let out = stream_exchange(&mut tcp, &sbytes, wait);
                let closed = out.closed
                    || (c.close && read_stream_response(&mut tcp, Duration::from_secs(3)).closed);
                (out.response, closed)
            } else {
                let mut tls = server.tls_connect();
                tls.sock
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let out = stream_exchange(&mut tls, &sbytes, wait);
                let closed = out.closed
                    || (c.close && read_stream_response(&mut tls, Duration::from_secs(3)).closed);
                (out.response, closed)
            };
            check(c, transport, expected, out.0.as_deref(), &mut failures);
            if c.close && !out.1 {
                failures.push(format!(
                    "{transport} {}: connection should be closed (framing lost)",
                    c.file
                ));
            }
        }
        server.assert_alive();
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends a datagram from one long-lived socket and returns the answer carrying the request's Call-ID.
/// The corpus reuses branches across messages, so a later message can match an earlier transaction
/// (RFC 3261 §17.2.3) and get its answer again; that answer must still come back to the same socket.
fn udp_answer(
    sock: &std::net::UdpSocket,
    to: std::net::SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let call_id = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.trim().eq_ignore_ascii_case("call-id") || n.trim().eq_ignore_ascii_case("i"))
            .then(|| v.trim().to_string())
    });
    sock.send_to(bytes, to).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        let answer = &buf[..n];
        let matches = match &call_id {
            Some(id) => header(&String::from_utf8_lossy(answer), "Call-ID") == Some(id.as_str()),
            None => true,
        };
        if matches {
            return Some(answer.to_vec());
        }
    }
    None
}

#[test]
fn rejections_carry_the_rfc_headers() {
    let server = Server::start(&[]);
    let answer = |file: &str| {
        let r = udp_exchange(
            server.udp.unwrap(),
            &read_data(&format!("sip-torture/{file}")),
            Duration::from_secs(3),
        )
        .unwrap();
        String::from_utf8(r).unwrap()
    };
    let r = answer("rfc4475/bext01.dat");
    assert_eq!(
        header(&r, "Unsupported"),
        Some("nothingSupportsThis, nothingSupportsThisEither")
    );
    let r = answer("rfc4475/intmeth.dat");
    assert!(r.starts_with("SIP/2.0 501 "));
    assert_eq!(
        header(&r, "Allow"),
        Some("INVITE, ACK, BYE, CANCEL, OPTIONS")
    );
    let r = answer("rfc4475/invut.dat");
    assert!(header(&r, "Accept").unwrap().contains("application/sdp"));
    let r = answer("rfc4475/badvers.dat");
    assert!(r.starts_with("SIP/2.0 505 Version Not Supported"));
    // The response goes back with the request's Via intact and rport filled in where asked.
    let r = answer("rfc4475/scalar02.dat");
    assert!(r.contains("Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32"));
}

#[test]
fn protos_c07_sip_cases_never_crash_or_hang_the_server() {
    let mut server = Server::start(&[]);
    let dir = data_dir().join("protos/testcases");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 37);
    let mut answered = 0;
    let mut first_answer = None;
    for case in &cases {
        let bytes = std::fs::read(case).unwrap();
        if let Some(r) = udp_exchange(server.udp.unwrap(), &bytes, Duration::from_millis(500)) {
            let (status, _) = status_of(&r);
            if first_answer.is_none() {
                first_answer = Some((case.clone(), status));
            }
            assert!(
                matches!(status, 400 | 501 | 503 | 513),
                "{}: unexpected {status}",
                case.display()
            );
            answered += 1;
        }
        let mut tcp = TcpStream::connect(server.tcp.unwrap()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = tcp.write_all(&bytes);
        let _ = read_stream_response(&mut tcp, Duration::from_millis(200));
    }
    // Test case 0 is a valid INVITE: it must get the regular answer.
    assert_eq!(first_answer, Some((cases[0].clone(), 503)));
    assert!(answered >= 1);
    let ok = udp_exchange(
        server.udp.unwrap(),
        &options_request("UDP", "127.0.0.1:9", "alive1"),
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(status_of(&ok).0, 200);
    server.assert_alive();
}

#[test]
fn oversized_and_hostile_streams_lose_only_their_own_connection() {
    let mut server = Server::start(&[]);
    // A TLS connection that stays up through everything below.
    let mut steady = server.tls_connect();
    let out = stream_exchange(
        &mut steady,
        &options_request("TLS", "127.0.0.1:9", "steady1"),
        Duration::from_secs(3),
    );
    assert_eq!(status_of(out.response.as_deref().unwrap()).0, 200);

    // 10 MiB declared in Content-Length: 513 and the connection closed at the 64 KiB limit.
    for tls in [false, true] {
        let head = b"OPTIONS sip:probe@localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbig\r\nTo: <sip:probe@localhost>\r\nFrom: <sip:t@localhost>;tag=1\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\nContent-Length: 10485760\r\n\r\n";
        let body = vec![b'x'; 10 * 1024 * 1024];
        let (sent, outcome) = if tls {
            let mut s = server.tls_connect();
            let sent = s.write_all(head).and_then(|_| s.write_all(&body)).is_ok();
            (sent, read_stream_response(&mut s, Duration::from_secs(5)))
        } else {
            let mut s = TcpStream::connect(server.tcp.unwrap()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let sent = s.write_all(head).and_then(|_| s.write_all(&body)).is_ok();
            (sent, read_stream_response(&mut s, Duration::from_secs(5)))
        };
        let label = if tls { "tls" } else { "tcp" };
        match outcome.response.as_deref() {
            Some(r) => assert_eq!(status_of(r).0, 513, "{label}"),
            None => assert!(
                !sent || outcome.closed,
                "{label}: 10 MiB neither refused nor cut off"
            ),
        }
        assert!(
            outcome.closed || !sent,
            "{label}: connection not closed after the size limit"
        );
    }

    // 10 MiB of garbage with no header end: cut off, no answer.
    let mut s = TcpStream::connect(server.tcp.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let garbage = vec![b'A'; 10 * 1024 * 1024];
    let _ = s.write_all(&garbage);
    let mut buf = [0u8; 16];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "garbage stream not closed"
    );

    // A failed TLS handshake (plain text on the TLS port) and a half-open TLS connection.
    let mut plain = TcpStream::connect(server.tls.unwrap()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = plain.write_all(&options_request("TCP", "127.0.0.1:9", "plain"));
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    let _idle = TcpStream::connect(server.tls.unwrap()).unwrap();

    let out = stream_exchange(
        &mut steady,
        &options_request("TLS", "127.0.0.1:9", "steady2"),
        Duration::from_secs(3),
    );
    assert_eq!(
        status_of(out.response.as_deref().unwrap()).0,
        200,
        "the steady connection was disturbed"
    );
    let ok = udp_exchange(
        server.udp.unwrap(),
        &options_request("UDP", "127.0.0.1:9", "alive2"),
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(status_of(&ok).0, 200);
    server.assert_alive();
    assert!(
        server.log().contains("TLS handshake"),
        "handshake failure not reported:\n{}",
        server.log()
    );
}

#[test]
fn keepalive_ping_gets_pong() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.tcp.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"\r\n\r\n").unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"\r\n");
}
