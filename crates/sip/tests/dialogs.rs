//! RFC 3261 §12 dialogs: route sets (UAS in order, UAC reversed), Record-Route copied exactly into
//! our 2xx, in-dialog requests (R-URI, Route, CSeq, the ACK for a 2xx), CSeq order, and the 401/407
//! retry.

use std::time::Instant;

use watrunk_sip::dialog::{Dialog, DialogError, DialogId, DialogState, Role};
use watrunk_sip::transaction::{Config, Event, Output, Peer, TransactionLayer, Transport};
use watrunk_sip::{retry_with_auth, Message, Method, Request, Response, Uri};

fn rng() -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(3)
}

fn parse(text: &str) -> Message {
    let wire = text.trim_start().replace('\n', "\r\n");
    Message::parse_datagram(wire.as_bytes()).unwrap()
}

fn req(text: &str) -> Request {
    match parse(text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn resp(text: &str) -> Response {
    match parse(text) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("not a response"),
    }
}

const CONTACT: &str = "<sip:+17015558857@sip.example.com:5061;transport=tls>";

/// Meta's user-initiated INVITE, with three Record-Route values on two lines, spaced as received.
fn meta_invite() -> Request {
    req("
INVITE sip:+17015558857;tgrp=wacall@sip.example.com;transport=tls SIP/2.0
Via: SIP/2.0/TLS [2a03:2880:f000::1]:33819;rport=33819;branch=z9hG4bKPjNvs;alias
Max-Forwards: 70
Record-Route: <sip:wa.meta.vc;transport=tls;lr>
Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>,   <sip:157.240.19.130:5061;transport=tls;lr;r2=on>
From: \"12195550714\" <sip:+12195550714@wa.meta.vc>;tag=bbf1ad6e
To: <sip:+17015558857@sip.example.com>
Contact: <sip:+12195550714@wa.meta.vc;transport=tls;ob>;isfocus
Call-ID: outgoing:wacid.HBgLMTIx==
CSeq: 2824 INVITE
X-FB-External-Domain: wa.meta.vc
Content-Length: 0

")
}

/// Our business-initiated INVITE after the 407 (it carries the credentials).
fn our_invite() -> Request {
    req("
INVITE sip:+12195550714@wa.meta.vc;transport=tls SIP/2.0
Via: SIP/2.0/TLS sip.example.com:5061;branch=z9hG4bKours1
Max-Forwards: 70
From: <sip:+17015558857@sip.example.com>;tag=uac1
To: <sip:+12195550714@wa.meta.vc>
Contact: <sip:+17015558857@sip.example.com:5061;transport=tls>
Call-ID: f304a1d2cafb8139@0.0.0.0
CSeq: 2 INVITE
Proxy-Authorization: Digest username=\"17015558857\", realm=\"wa.meta.vc\", nonce=\"abc\", uri=\"sip:+12195550714@wa.meta.vc;transport=tls\", response=\"0123\", qop=auth, nc=00000001, cnonce=\"c\"
Content-Length: 0

")
}

/// Meta's 200 OK to it (record-route as in the capture meta-200ok-business-initiated-sdes-01).
fn meta_200() -> Response {
    resp("
SIP/2.0 200 OK
Via: SIP/2.0/TLS sip.example.com:5061;branch=z9hG4bKours1
Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>
Record-Route: <sip:wa.meta.vc;transport=tls;lr>
Call-ID: f304a1d2cafb8139@0.0.0.0
From: <sip:+17015558857@sip.example.com>;tag=uac1
To: <sip:+12195550714@wa.meta.vc>;tag=0d185053
CSeq: 2 INVITE
Contact: <sip:+12195550714@wa.meta.vc;transport=tls;ob;X-FB-Sip-Smc-Tier=collaboration.sip_gateway.sip.prod>;isfocus
Content-Length: 0

")
}

fn routes(r: &Request) -> Vec<&str> {
    r.headers.get_all("Route").collect()
}

#[test]
fn record_route_is_copied_exactly_into_our_200() {
    let invite = meta_invite();
    let ok = Response::dialog_response(&invite, 200, "OK", "uas1", CONTACT);
    let received: Vec<&str> = invite.headers.get_all("Record-Route").collect();
    assert_eq!(received.len(), 2);
    assert_eq!(
        ok.headers.get_all("Record-Route").collect::<Vec<_>>(),
        received
    );
    let wire = String::from_utf8(ok.to_bytes()).unwrap();
    let rr_lines: Vec<&str> = wire
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .collect();
    assert_eq!(
        rr_lines,
        [
            "Record-Route: <sip:wa.meta.vc;transport=tls;lr>",
            "Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>,   <sip:157.240.19.130:5061;transport=tls;lr;r2=on>",
        ]
    );
    assert_eq!(
        ok.headers.get("To"),
        Some("<sip:+17015558857@sip.example.com>;tag=uas1")
    );
    assert_eq!(ok.headers.get("Contact"), Some(CONTACT));
    assert_eq!(ok.headers.get("Via"), invite.headers.get("Via"));
    assert_eq!(ok.headers.get("CSeq"), Some("2824 INVITE"));
}

#[test]
fn uas_dialog_keeps_the_record_route_order_and_builds_bye() {
    let invite = meta_invite();
    let ok = Response::dialog_response(&invite, 200, "OK", "uas1", CONTACT);
    let mut d = Dialog::from_uas(&invite, &ok).unwrap();
    assert_eq!(d.role(), Role::Uas);
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(
        d.id(),
        &DialogId {
            call_id: "outgoing:wacid.HBgLMTIx==".into(),
            local_tag: "uas1".into(),
            remote_tag: "bbf1ad6e".into(),
        }
    );
    assert_eq!(
        d.route_set(),
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
            "<sip:157.240.19.130:5061;transport=tls;lr;r2=on>",
        ]
    );
    assert_eq!((d.local_seq(), d.remote_seq()), (None, Some(2824)));
    assert!(!d.secure(), "sip: Request-URI, so not secure even over TLS");

    let bye = d.create_request(Method::BYE).unwrap();
    assert_eq!(
        bye.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls;ob"
    );
    assert_eq!(routes(&bye), d.route_set());
    assert_eq!(
        bye.headers.get("From"),
        Some("<sip:+17015558857@sip.example.com>;tag=uas1")
    );
    assert_eq!(bye.headers.get("To"), invite.headers.get("From"));
    assert_eq!(bye.headers.get("Call-ID"), invite.headers.get("Call-ID"));
    assert_eq!(bye.headers.get("CSeq"), Some("1 BYE"));
    assert!(
        !bye.headers.contains("Via"),
        "the transaction layer adds Via"
    );
    assert_eq!(
        d.create_request(Method::BYE).unwrap().headers.get("CSeq"),
        Some("2 BYE")
    );
    assert_eq!(d.create_request(Method::ACK), Err(DialogError::AckFromUas));
}

#[test]
fn uac_dialog_reverses_the_record_route_and_acks_with_the_invite_cseq() {
    let invite = our_invite();
    let mut d = Dialog::from_uac(&invite, &meta_200()).unwrap();
    assert_eq!(d.role(), Role::Uac);
    assert_eq!(
        d.route_set(),
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
        ],
        "reversed: the first hop is wa.meta.vc"
    );
    assert_eq!(d.id().remote_tag, "0d185053");
    assert_eq!((d.local_seq(), d.remote_seq()), (Some(2), None));

    let ack = d.create_request(Method::ACK).unwrap();
    assert_eq!(ack.headers.get("CSeq"), Some("2 ACK"));
    assert_eq!(
        ack.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls;ob;X-FB-Sip-Smc-Tier=collaboration.sip_gateway.sip.prod"
    );
    assert_eq!(routes(&ack), d.route_set());
    assert_eq!(
        ack.headers.get("Proxy-Authorization"),
        invite.headers.get("Proxy-Authorization"),
        "the ACK for a 2xx repeats the INVITE's credentials"
    );
    assert_eq!(
        ack.headers.get("To"),
        Some("<sip:+12195550714@wa.meta.vc>;tag=0d185053")
    );

    let mut bye = d.create_request(Method::BYE).unwrap();
    assert_eq!(bye.headers.get("CSeq"), Some("3 BYE"));
    assert_eq!(bye.uri, ack.uri);
    assert_eq!(routes(&bye)[0], "<sip:wa.meta.vc;transport=tls;lr>");
    assert!(!bye.headers.contains("Proxy-Authorization"));
    bye.headers.push("Reason", "Q.850;cause=16");
    d.terminate();
    assert_eq!(d.create_request(Method::BYE), Err(DialogError::Terminated));
}

#[test]
fn strict_router_first_goes_into_the_request_uri() {
    let mut invite = meta_invite();
    invite.headers.remove("Record-Route");
    invite.headers.push(
        "Record-Route",
        "<sip:strict.example.net;method=INVITE;transport=tls>",
    );
    invite.headers.push("Record-Route", "<sip:wa.meta.vc;lr>");
    let ok = Response::dialog_response(&invite, 200, "OK", "uas1", CONTACT);
    let mut d = Dialog::from_uas(&invite, &ok).unwrap();
    let bye = d.create_request(Method::BYE).unwrap();
    assert_eq!(
        bye.uri,
        Uri::parse("sip:strict.example.net;transport=tls").unwrap()
    );
    assert_eq!(
        routes(&bye),
        [
            "<sip:wa.meta.vc;lr>",
            "<sip:+12195550714@wa.meta.vc;transport=tls;ob>"
        ],
        "remaining routes, then the remote target"
    );
}

#[test]
fn early_dialog_is_confirmed_by_the_2xx_which_sets_the_route_set() {
    let invite = our_invite();
    let mut ringing = meta_200();
    ringing.status = 180;
    ringing.reason = "Ringing".into();
    ringing.headers.remove("Record-Route");
    ringing.headers.remove("Contact");
    ringing
        .headers
        .push("Record-Route", "<sip:early.example.net;lr>");
    let mut d = Dialog::from_uac(&invite, &ringing).unwrap();
    assert_eq!(d.state(), DialogState::Early);
    assert_eq!(d.route_set(), ["<sip:early.example.net;lr>"]);
    assert_eq!(
        d.remote_target(),
        &invite.uri,
        "no Contact yet: the Request-URI"
    );
    d.handle_response(&meta_200());
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(d.route_set()[0], "<sip:wa.meta.vc;transport=tls;lr>");
    assert_eq!(
        d.remote_target().as_sip().unwrap().user_base(),
        Some("+12195550714")
    );
    assert!(
        Dialog::from_uac(&invite, &{
            let mut r = meta_200();
            r.headers.remove("Contact");
            r
        })
        .is_err(),
        "a 2xx without Contact cannot create a dialog"
    );
}

#[test]
fn in_dialog_requests_are_checked_for_order_and_identity() {
    let invite = meta_invite();
    let ok = Response::dialog_response(&invite, 200, "OK", "uas1", CONTACT);
    let mut d = Dialog::from_uas(&invite, &ok).unwrap();
    let in_dialog = |method: &str, seq: u32, to_tag: &str| {
        req(&format!(
            "
{method} sip:+17015558857@sip.example.com:5061;transport=tls SIP/2.0
Via: SIP/2.0/TLS [2a03:2880:f000::1]:33819;branch=z9hG4bK{method}{seq}
From: \"12195550714\" <sip:+12195550714@wa.meta.vc>;tag=bbf1ad6e
To: <sip:+17015558857@sip.example.com>;tag={to_tag}
Call-ID: outgoing:wacid.HBgLMTIx==
CSeq: {seq} {method}
Content-Length: 0

"
        ))
    };
    assert_eq!(d.handle_request(&in_dialog("ACK", 2824, "uas1")), Ok(()));
    let err = d
        .handle_request(&in_dialog("OPTIONS", 2823, "uas1"))
        .unwrap_err();
    assert_eq!(
        err,
        DialogError::OutOfOrder {
            received: 2823,
            last: 2824
        }
    );
    assert_eq!(err.status(), 500);
    assert_eq!(
        d.handle_request(&in_dialog("BYE", 2825, "other"))
            .unwrap_err()
            .status(),
        481
    );
    assert_eq!(d.handle_request(&in_dialog("BYE", 2825, "uas1")), Ok(()));
    assert_eq!(d.remote_seq(), Some(2825));
    assert_eq!(d.state(), DialogState::Terminated);
    assert_eq!(
        d.handle_request(&in_dialog("BYE", 2826, "uas1"))
            .unwrap_err()
            .status(),
        481
    );
}

#[test]
fn secure_needs_sips_and_tls() {
    let mut invite = meta_invite();
    invite.uri = Uri::parse("sips:+17015558857@sip.example.com").unwrap();
    let ok = Response::dialog_response(&invite, 200, "OK", "uas1", CONTACT);
    assert!(Dialog::from_uas(&invite, &ok).unwrap().secure());
    invite
        .headers
        .set("Via", "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1");
    assert!(!Dialog::from_uas(&invite, &ok).unwrap().secure());
}

#[test]
fn auth_retry_keeps_call_id_and_from_tag_with_cseq_plus_one_and_a_new_branch() {
    let first = req("
INVITE sip:+12195550714@wa.meta.vc;transport=tls SIP/2.0
Via: SIP/2.0/TLS sip.example.com:5061;branch=z9hG4bKfirst;rport
Max-Forwards: 70
From: <sip:+17015558857@sip.example.com>;tag=uac1
To: <sip:+12195550714@wa.meta.vc>
Call-ID: c-1
CSeq: 1 INVITE
Content-Type: application/sdp
Content-Length: 4

v=0
");
    let retry = retry_with_auth(
        &first,
        "Proxy-Authorization",
        "Digest username=\"17015558857\"",
        &mut rng(),
    );
    assert_eq!(retry.headers.get("CSeq"), Some("2 INVITE"));
    for h in ["Call-ID", "From", "To", "Content-Type"] {
        assert_eq!(retry.headers.get(h), first.headers.get(h), "{h}");
    }
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.uri, first.uri);
    let (old, new) = (first.top_via().unwrap(), retry.top_via().unwrap());
    assert_ne!(new.branch(), old.branch());
    assert!(new.rfc3261_branch().is_some());
    assert_eq!(
        (&new.host, new.port, new.rport()),
        (&old.host, old.port, old.rport())
    );
    assert_eq!(retry.headers.get_all("Via").count(), 1);
    assert_eq!(
        retry.headers.get("Proxy-Authorization"),
        Some("Digest username=\"17015558857\"")
    );

    let again = retry_with_auth(
        &retry,
        "Proxy-Authorization",
        "Digest username=\"x\"",
        &mut rng(),
    );
    assert_eq!(again.headers.get("CSeq"), Some("3 INVITE"));
    assert_eq!(
        again
            .headers
            .get_all("Proxy-Authorization")
            .collect::<Vec<_>>(),
        ["Digest username=\"x\""]
    );
}

/// Meta's business-initiated flow through the layer: INVITE, 407 (ACKed by the transaction), the
/// retry as a new transaction, 200, and the ACK for the 2xx from the dialog, sent with its own
/// branch.
#[test]
fn the_407_flow_end_to_end() {
    let t0 = Instant::now();
    let meta = Peer {
        transport: Transport::Tls,
        addr: "57.144.67.157:5061".parse().unwrap(),
        conn: Some(1),
    };
    let mut l = TransactionLayer::new(Config {
        sent_by: Some("sip.example.com:5061".into()),
        ..Config::default()
    });
    let mut first = our_invite();
    first.headers.remove("Proxy-Authorization");
    first.headers.remove("Via");
    first.headers.set("CSeq", "1 INVITE");
    let id1 = l.send_request(t0, first, meta.clone()).unwrap();
    let sent1 = l.request(id1).unwrap().clone();
    std::iter::from_fn(|| l.poll_output()).for_each(drop);
    let challenge = Response::to_request(&sent1, 407, "Proxy Authentication Required", Some("m1"));
    l.handle_incoming(t0, Message::Response(challenge), meta.clone())
        .unwrap();
    let outs: Vec<Output> = std::iter::from_fn(|| l.poll_output()).collect();
    let acked = outs.iter().any(|o| {
        matches!(o, Output::Transmit { message: Message::Request(a), .. } if a.method == Method::ACK)
    });
    assert!(acked, "the transaction ACKs the 407: {outs:?}");

    let retry = retry_with_auth(
        &sent1,
        "Proxy-Authorization",
        "Digest username=\"17015558857\"",
        &mut rng(),
    );
    let id2 = l.send_request(t0, retry, meta.clone()).unwrap();
    assert_ne!(id1, id2);
    let sent2 = l.request(id2).unwrap().clone();
    assert_eq!(sent2.headers.get("CSeq"), Some("2 INVITE"));
    assert_ne!(
        sent2.top_via().unwrap().branch(),
        sent1.top_via().unwrap().branch()
    );
    std::iter::from_fn(|| l.poll_output()).for_each(drop);

    let mut ok = meta_200();
    ok.headers.set("Via", sent2.headers.get("Via").unwrap());
    l.handle_incoming(t0, Message::Response(ok.clone()), meta.clone())
        .unwrap();
    let outs: Vec<Output> = std::iter::from_fn(|| l.poll_output()).collect();
    let Some(Output::Event(Event::Response { id, response })) = outs.first() else {
        panic!("{outs:?}")
    };
    assert_eq!((*id, response.status), (id2, 200));
    let mut d = Dialog::from_uac(&sent2, response).unwrap();
    let ack = d.create_request(Method::ACK).unwrap();
    l.send_stateless(Message::Request(ack), meta.clone())
        .unwrap();
    let outs: Vec<Output> = std::iter::from_fn(|| l.poll_output()).collect();
    let [Output::Transmit {
        id: None,
        message: Message::Request(ack),
        ..
    }] = outs.as_slice()
    else {
        panic!("{outs:?}")
    };
    assert_eq!(ack.headers.get("CSeq"), Some("2 ACK"));
    assert_eq!(
        ack.headers.get("Proxy-Authorization"),
        Some("Digest username=\"17015558857\"")
    );
    let via = ack.top_via().unwrap();
    assert!(via.rfc3261_branch().is_some());
    assert_ne!(
        via.branch(),
        sent2.top_via().unwrap().branch(),
        "the ACK for a 2xx has a branch of its own"
    );
    assert_eq!(via.transport, "TLS");
}
