//! RFC 4475 and RFC 5118 torture messages through the sans-IO parser and the UAS policy checks, against
//! the verdicts in tests/data/sip-torture/expected.toml (the server-level test replays the same table
//! over UDP, TCP and TLS).

mod common;

use serde::Deserialize;
use watrunk_sip::validate::{check_request, UasPolicy};
use watrunk_sip::Message;

#[derive(Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    file: String,
    status: u16,
    layer: String,
    why: String,
}

/// The status the sans-IO layers decide, or None when the message passes them (the application decides).
fn verdict(bytes: &[u8]) -> Option<u16> {
    match Message::parse_datagram(bytes) {
        Err(e) => Some(e.status().unwrap_or(0)),
        Ok(Message::Response(_)) => Some(0),
        Ok(Message::Request(r)) => check_request(&r, &UasPolicy::default())
            .err()
            .map(|rej| rej.status),
    }
}

#[test]
fn every_torture_message_gets_its_verdict() {
    let table: Table =
        toml::from_str(&String::from_utf8(common::read("sip-torture/expected.toml")).unwrap())
            .unwrap();
    assert_eq!(
        table.case.len(),
        50 + 12,
        "every RFC 4475 and RFC 5118 message is in the table"
    );
    let mut failures = Vec::new();
    for c in &table.case {
        let bytes = common::read(&format!("sip-torture/{}", c.file));
        let got = verdict(&bytes);
        let expected = match c.layer.as_str() {
            "app" => None,
            _ => Some(c.status),
        };
        if got != expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?} ({})",
                c.file, expected, got, c.why
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_responses_say_what_was_wrong() {
    let bytes = common::read("sip-torture/rfc4475/scalar02.dat");
    let e = Message::parse_datagram(&bytes).unwrap_err();
    let r = e.response().unwrap();
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("CSeq"), "{}", r.reason);
    assert_eq!(
        r.headers.get("Call-ID"),
        Some("scalar02.23o0pd9vanlq3wnrlnewofjas9ui32")
    );

    let bytes = common::read("sip-torture/rfc4475/insuf.dat");
    let r = Message::parse_datagram(&bytes)
        .unwrap_err()
        .response()
        .unwrap();
    assert!(r.reason.contains("missing"), "{}", r.reason);
    assert!(r.headers.get("Via").unwrap().contains("z9hG4bKkdj.insuf"));
}

#[test]
fn parsed_torture_details() {
    let Message::Request(r) =
        Message::parse_datagram(&common::read("sip-torture/rfc4475/wsinv.dat")).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.headers.values("Via").count(), 3);
    assert_eq!(r.top_via().unwrap().branch(), Some("390skdjuw"));
    assert_eq!(r.cseq().unwrap().seq, 9);
    assert_eq!(r.max_forwards(), Some(68));
    assert_eq!(r.to().unwrap().tag(), Some("1918181833n"));
    assert_eq!(
        r.headers.get("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        r.headers.get("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    assert_eq!(r.body.len(), 150);

    let Message::Request(r) =
        Message::parse_datagram(&common::read("sip-torture/rfc4475/semiuri.dat")).unwrap()
    else {
        panic!()
    };
    let uri = r.uri.as_sip().unwrap();
    assert_eq!(uri.user.as_deref(), Some("user;par=u%40example.net"));

    let Message::Request(r) =
        Message::parse_datagram(&common::read("sip-torture/rfc4475/esc02.dat")).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r.headers.values("Contact").count(),
        2,
        "C%6Fntact is another header"
    );

    let Message::Request(r) = Message::parse_datagram(&common::read(
        "sip-torture/rfc5118/wire/ipv4-mapped-ipv6.sip",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(r.top_via().unwrap().port, Some(19823));
}
