//! RFC 3261 §17 transaction layer on a virtual clock: retransmission instants, timers A-M, ACK and
//! CANCEL handling, RFC 2543 matching, reliable transports and the transaction limit.

use std::time::{Duration, Instant};

use watrunk_sip::transaction::{
    CancelError, Config, Event, IncomingError, Output, Peer, RespondError, SendError,
    TimeoutReason, TransactionId, TransactionLayer, Transport,
};
use watrunk_sip::{Message, Method, Request, Response};

fn peer(transport: Transport) -> Peer {
    Peer {
        transport,
        addr: "192.0.2.10:5061".parse().unwrap(),
        conn: transport.is_reliable().then_some(7),
    }
}

fn layer() -> TransactionLayer {
    TransactionLayer::new(Config {
        sent_by: Some("sip.example.com:5061".into()),
        ..Config::default()
    })
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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An INVITE we send. Its Via has no branch: the layer adds one.
fn uac_invite() -> Request {
    req("
INVITE sip:+12195550714@wa.meta.vc;transport=tls SIP/2.0
Via: SIP/2.0/UDP sip.example.com:5061
From: <sip:+17015558857@sip.example.com>;tag=uac1
To: <sip:+12195550714@wa.meta.vc>
Call-ID: out-1
CSeq: 1 INVITE
Route: <sip:edge1.example.net;lr>
Route: <sip:wa.meta.vc;transport=tls;lr>
Contact: <sip:+17015558857@sip.example.com;transport=tls>
Content-Length: 0

")
}

fn uac_options() -> Request {
    let mut r = req("
OPTIONS sip:wa.meta.vc SIP/2.0
Via: SIP/2.0/UDP sip.example.com:5061
From: <sip:ping@sip.example.com>;tag=opt1
To: <sip:wa.meta.vc>
Call-ID: opt-1
CSeq: 7 OPTIONS
Content-Length: 0

");
    r.headers.remove("Via");
    r
}

/// An INVITE as Meta sends it, with the given top Via branch parameter (`None`: no branch at all).
fn uas_invite(branch: Option<&str>) -> Request {
    let via_params = branch.map_or(String::new(), |b| format!(";branch={b}"));
    req(&format!(
        "
INVITE sip:+17015558857@sip.example.com;transport=tls SIP/2.0
Via: SIP/2.0/TLS [2a03:2880:f000::1]:33819{via_params};alias
Max-Forwards: 70
From: \"12195550714\" <sip:+12195550714@wa.meta.vc>;tag=caller1
To: <sip:+17015558857@sip.example.com>
Contact: <sip:+12195550714@wa.meta.vc;transport=tls;ob>;isfocus
Call-ID: in-1
CSeq: 2824 INVITE
Timestamp: 54
Record-Route: <sip:wa.meta.vc;transport=tls;lr>
Content-Length: 0

"
    ))
}

fn uas_options() -> Request {
    req("
OPTIONS sip:sip.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKopt77
From: <sip:ping@wa.meta.vc>;tag=m1
To: <sip:sip.example.com>
Call-ID: opt-in-1
CSeq: 1 OPTIONS
Content-Length: 0

")
}

/// The ACK a UAC sends for our non-2xx final response to `invite`: same branch, To with our tag.
fn ack_for(invite: &Request, to_tag: &str) -> Request {
    let mut ack = Request::new(Method::ACK, invite.uri.clone());
    ack.headers.copy_from(&invite.headers, "Via");
    ack.headers.copy_from(&invite.headers, "From");
    let to = invite.headers.get("To").unwrap();
    ack.headers.push("To", format!("{to};tag={to_tag}"));
    ack.headers.copy_from(&invite.headers, "Call-ID");
    ack.headers
        .push("CSeq", format!("{} ACK", invite.cseq().unwrap().seq));
    ack
}

fn cancel_for(invite: &Request) -> Request {
    watrunk_sip::transaction::build_cancel(invite)
}

fn drain(l: &mut TransactionLayer) -> Vec<Output> {
    std::iter::from_fn(|| l.poll_output()).collect()
}

/// Fires every timer at its exact instant up to `end`; returns outputs with their offset from `t0`.
fn run_until(l: &mut TransactionLayer, t0: Instant, end: Instant) -> Vec<(Duration, Output)> {
    let mut all = Vec::new();
    while let Some(t) = l.poll_timeout().filter(|t| *t <= end) {
        l.handle_timeout(t);
        all.extend(drain(l).into_iter().map(|o| (t - t0, o)));
    }
    all
}

fn sent(outs: &[Output]) -> Vec<&Message> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Transmit { message, .. } => Some(message),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(outs: &[Output]) -> Vec<&Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            Output::Transmit { .. } => None,
        })
        .collect()
}

/// (transaction, status) of each `Event::Response`.
fn responses(outs: &[Output]) -> Vec<(TransactionId, u16)> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Response { id, response } => Some((*id, response.status)),
            _ => None,
        })
        .collect()
}

fn sent_at(outs: &[(Duration, Output)]) -> Vec<(u128, &Message)> {
    outs.iter()
        .filter_map(|(t, o)| match o {
            Output::Transmit { message, .. } => Some((t.as_millis(), message)),
            Output::Event(_) => None,
        })
        .collect()
}

fn events_at(outs: &[(Duration, Output)]) -> Vec<(u128, &Event)> {
    outs.iter()
        .filter_map(|(t, o)| match o {
            Output::Event(e) => Some((t.as_millis(), e)),
            Output::Transmit { .. } => None,
        })
        .collect()
}

fn response(m: &Message) -> &Response {
    match m {
        Message::Response(r) => r,
        Message::Request(_) => panic!("expected a response, got {m:?}"),
    }
}

fn request(m: &Message) -> &Request {
    match m {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request, got {m:?}"),
    }
}

/// Receives `r` as a new request and returns the id of its server transaction.
fn receive_new(l: &mut TransactionLayer, now: Instant, r: Request, from: Peer) -> TransactionId {
    l.handle_incoming(now, Message::Request(r), from).unwrap();
    let outs = drain(l);
    let ids: Vec<_> = events(&outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::Request { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "{outs:?}");
    ids[0]
}

fn reply(r: &Request, status: u16, tag: Option<&str>) -> Response {
    Response::to_request(r, status, watrunk_sip::message::reason_phrase(status), tag)
}

fn incoming(l: &mut TransactionLayer, now: Instant, r: Response) -> Vec<Output> {
    l.handle_incoming(now, Message::Response(r), peer(Transport::Udp))
        .unwrap();
    drain(l)
}

/// RFC 3261 §17.1.1.2: Timer A starts at T1 and doubles after each retransmission. Unlike Timer E
/// and G it is not capped at T2 (T2 is "the maximum retransmit interval for non-INVITE requests and
/// INVITE responses"), so the INVITE goes out at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; Timer B
/// ends it at 32 s.
#[test]
fn timer_a_doubles_until_timer_b_over_udp() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Udp))
        .unwrap();
    let first = drain(&mut l);
    let [Output::Transmit {
        id: Some(tx),
        to,
        message,
    }] = first.as_slice()
    else {
        panic!("{first:?}")
    };
    assert_eq!((*tx, to), (id, &peer(Transport::Udp)));
    let invite = request(message);
    let via = invite.top_via().unwrap();
    assert!(
        via.rfc3261_branch().is_some(),
        "layer adds a z9hG4bK branch"
    );
    assert_eq!(via.host.to_string(), "sip.example.com");
    assert_eq!(invite.headers.get("Max-Forwards"), Some("70"));

    let outs = run_until(&mut l, t0, t0 + secs(60));
    let resent = sent_at(&outs);
    let times: Vec<u128> = resent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [500, 1500, 3500, 7500, 15500, 31500]);
    assert!(
        resent.iter().all(|(_, m)| *m == message),
        "retransmissions are the same INVITE"
    );
    assert_eq!(
        events_at(&outs),
        [
            (
                32000,
                &Event::Timeout {
                    id,
                    reason: TimeoutReason::NoFinalResponse
                }
            ),
            (32000, &Event::Terminated { id }),
        ]
    );
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn timer_a_respects_configured_t1() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        timers: watrunk_sip::transaction::TimerConfig {
            t1: ms(100),
            ..Default::default()
        },
        ..Config::default()
    });
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Udp))
        .unwrap();
    drain(&mut l);
    let outs = run_until(&mut l, t0, t0 + secs(60));
    let times: Vec<u128> = sent_at(&outs).iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [100, 300, 700, 1500, 3100, 6300]);
    assert_eq!(
        events_at(&outs)[0],
        (
            6400,
            &Event::Timeout {
                id,
                reason: TimeoutReason::NoFinalResponse
            }
        )
    );
}

#[test]
fn timer_e_caps_at_t2_and_timer_f_reports_timeout() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_options(), peer(Transport::Udp))
        .unwrap();
    let first = drain(&mut l);
    let options = sent(&first)[0].clone();
    assert_eq!(
        request(&options)
            .top_via()
            .unwrap()
            .to_string()
            .split(";branch=")
            .next(),
        Some("SIP/2.0/UDP sip.example.com:5061"),
        "a request without Via gets one from sent_by"
    );
    let outs = run_until(&mut l, t0, t0 + secs(60));
    let resent = sent_at(&outs);
    let times: Vec<u128> = resent.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(resent.iter().all(|(_, m)| **m == options));
    assert_eq!(
        events_at(&outs),
        [
            (
                32000,
                &Event::Timeout {
                    id,
                    reason: TimeoutReason::NoFinalResponse
                }
            ),
            (32000, &Event::Terminated { id }),
        ]
    );
}

#[test]
fn timer_e_is_t2_once_proceeding() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_options(), peer(Transport::Udp))
        .unwrap();
    let options = request(sent(&drain(&mut l))[0]).clone();
    let outs = incoming(&mut l, t0 + ms(100), reply(&options, 180, Some("x")));
    assert_eq!(responses(&outs), [(id, 180)]);
    let outs = run_until(&mut l, t0, t0 + secs(13));
    let times: Vec<u128> = sent_at(&outs).iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [500, 4500, 8500, 12500]);
}

#[test]
fn timer_k_is_t4_on_udp_and_zero_on_tcp() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_options(), peer(Transport::Udp))
        .unwrap();
    let options = request(sent(&drain(&mut l))[0]).clone();
    let ok = reply(&options, 200, Some("srv"));
    let outs = incoming(&mut l, t0 + secs(1), ok.clone());
    assert_eq!(
        events(&outs),
        [&Event::Response {
            id,
            response: ok.clone()
        }]
    );
    // Completed: a retransmitted 200 is absorbed, nothing is resent.
    assert!(incoming(&mut l, t0 + secs(2), ok).is_empty());
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert_eq!(events_at(&outs), [(6000, &Event::Terminated { id })]);
    assert!(sent_at(&outs).is_empty());

    let id = l
        .send_request(t0, uac_options(), peer(Transport::Tcp))
        .unwrap();
    let options = request(sent(&drain(&mut l))[0]).clone();
    let ok = reply(&options, 200, Some("srv"));
    let outs = incoming(&mut l, t0 + secs(1), ok.clone());
    assert_eq!(
        events(&outs),
        [
            &Event::Response { id, response: ok },
            &Event::Terminated { id }
        ]
    );
    assert!(l.is_empty());
}

#[test]
fn timer_g_resends_final_response_and_timer_h_reports_missing_ack() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Udp));
    let busy = reply(&invite, 486, Some("uas1"));
    l.respond(t0, id, busy.clone()).unwrap();
    let outs = drain(&mut l);
    assert_eq!(sent(&outs), [&Message::Response(busy.clone())]);
    let outs = run_until(&mut l, t0, t0 + secs(60));
    let resent = sent_at(&outs);
    let times: Vec<u128> = resent.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(resent
        .iter()
        .all(|(_, m)| **m == Message::Response(busy.clone())));
    assert_eq!(
        events_at(&outs),
        [
            (
                32000,
                &Event::Timeout {
                    id,
                    reason: TimeoutReason::NoAck
                }
            ),
            (32000, &Event::Terminated { id }),
        ]
    );
}

#[test]
fn timer_i_is_t4_on_udp_and_zero_on_tls() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Udp));
    l.respond(t0, id, reply(&invite, 486, Some("uas1")))
        .unwrap();
    drain(&mut l);
    let ack = ack_for(&invite, "uas1");
    l.handle_incoming(
        t0 + ms(600),
        Message::Request(ack.clone()),
        peer(Transport::Udp),
    )
    .unwrap();
    let at_ack = drain(&mut l);
    assert!(
        at_ack.is_empty(),
        "the ACK for a non-2xx stays in the transaction: {at_ack:?}"
    );
    // Confirmed absorbs retransmitted ACKs and INVITEs.
    l.handle_incoming(t0 + secs(1), Message::Request(ack), peer(Transport::Udp))
        .unwrap();
    l.handle_incoming(
        t0 + secs(1),
        Message::Request(invite.clone()),
        peer(Transport::Udp),
    )
    .unwrap();
    assert!(drain(&mut l).is_empty());
    let outs = run_until(&mut l, t0, t0 + secs(60));
    // The ACK at 600 ms stopped Timer G (its 500 ms firing was never run); I ends it T4 later.
    assert_eq!(sent_at(&outs).len(), 0);
    assert_eq!(events_at(&outs), [(5600, &Event::Terminated { id })]);

    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Tls));
    l.respond(t0, id, reply(&invite, 486, Some("uas1")))
        .unwrap();
    drain(&mut l);
    l.handle_incoming(
        t0 + ms(50),
        Message::Request(ack_for(&invite, "uas1")),
        peer(Transport::Tls),
    )
    .unwrap();
    assert_eq!(events(&drain(&mut l)), [&Event::Terminated { id }]);
}

#[test]
fn timer_j_is_64_t1_on_udp_and_retransmissions_get_the_final_response() {
    let t0 = Instant::now();
    let mut l = layer();
    let options = uas_options();
    let id = receive_new(&mut l, t0, options.clone(), peer(Transport::Udp));
    // Trying: a retransmission before any response is absorbed.
    l.handle_incoming(
        t0 + ms(500),
        Message::Request(options.clone()),
        peer(Transport::Udp),
    )
    .unwrap();
    assert!(drain(&mut l).is_empty());
    let ok = reply(&options, 200, Some("us"));
    l.respond(t0 + secs(1), id, ok.clone()).unwrap();
    assert_eq!(sent(&drain(&mut l)), [&Message::Response(ok.clone())]);
    l.handle_incoming(
        t0 + secs(10),
        Message::Request(options.clone()),
        peer(Transport::Udp),
    )
    .unwrap();
    let outs = drain(&mut l);
    assert_eq!(outs.len(), 1, "no second Event::Request: {outs:?}");
    assert_eq!(sent(&outs), [&Message::Response(ok.clone())]);
    assert_eq!(
        l.respond(t0 + secs(11), id, ok.clone()),
        Err(RespondError::AlreadyFinal)
    );
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert_eq!(events_at(&outs), [(33000, &Event::Terminated { id })]);

    let id = receive_new(&mut l, t0, options.clone(), peer(Transport::Tcp));
    l.respond(t0, id, ok).unwrap();
    assert_eq!(events(&drain(&mut l)), [&Event::Terminated { id }]);
}

#[test]
fn retransmitted_invite_is_absorbed_and_the_last_response_resent() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let from = peer(Transport::Udp);
    let id = receive_new(&mut l, t0, invite.clone(), from.clone());
    let again = |l: &mut TransactionLayer, at: Duration| {
        l.handle_incoming(t0 + at, Message::Request(invite.clone()), from.clone())
            .unwrap();
        drain(l)
    };
    assert!(
        again(&mut l, ms(100)).is_empty(),
        "nothing sent yet, nothing to resend"
    );
    let ringing = reply(&invite, 180, Some("uas1"));
    l.respond(t0 + ms(150), id, ringing.clone()).unwrap();
    drain(&mut l);
    assert_eq!(
        again(&mut l, ms(600)),
        [Output::Transmit {
            id: Some(id),
            to: from.clone(),
            message: Message::Response(ringing),
        }]
    );
    let ok = Response::dialog_response(
        &invite,
        200,
        "OK",
        "uas1",
        "<sip:+17015558857@sip.example.com;transport=tls>",
    );
    l.respond(t0 + secs(1), id, ok.clone()).unwrap();
    drain(&mut l);
    assert_eq!(sent(&again(&mut l, ms(1100))), [&Message::Response(ok)]);
}

#[test]
fn trying_is_automatic_after_200_ms_unless_the_tu_sent_a_provisional() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Tls));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(200)));
    let outs = run_until(&mut l, t0, t0 + ms(300));
    let [(200, Message::Response(trying))] = sent_at(&outs)[..] else {
        panic!("{outs:?}")
    };
    assert_eq!((trying.status, trying.reason.as_str()), (100, "Trying"));
    assert_eq!(
        trying.to().unwrap().tag(),
        None,
        "100 Trying carries no To tag"
    );
    assert_eq!(trying.headers.get("Timestamp"), Some("54"));
    assert_eq!(trying.headers.get("Via"), invite.headers.get("Via"));
    let _ = id;

    // The TU answered first: no 100.
    let invite2 = uas_invite(Some("z9hG4bKinv2"));
    let id2 = receive_new(&mut l, t0, invite2.clone(), peer(Transport::Tls));
    l.respond(t0 + ms(50), id2, reply(&invite2, 180, Some("t2")))
        .unwrap();
    drain(&mut l);
    let outs = run_until(&mut l, t0, t0 + secs(1));
    assert!(sent_at(&outs).is_empty(), "{outs:?}");

    // Configured off.
    let mut quiet = TransactionLayer::new(Config {
        trying_delay: None,
        ..Config::default()
    });
    receive_new(
        &mut quiet,
        t0,
        uas_invite(Some("z9hG4bKinv3")),
        peer(Transport::Tls),
    );
    assert_eq!(quiet.poll_timeout(), None);
}

#[test]
fn ack_for_non_2xx_is_built_inside_the_client_transaction() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Udp))
        .unwrap();
    let invite = request(sent(&drain(&mut l))[0]).clone();
    incoming(&mut l, t0 + ms(100), reply(&invite, 100, None));
    let mut challenge = reply(&invite, 407, Some("meta9"));
    challenge.headers.push(
        "Proxy-Authenticate",
        "Digest realm=\"wa.meta.vc\",nonce=\"n\",qop=\"auth\"",
    );
    let outs = incoming(&mut l, t0 + ms(200), challenge.clone());
    assert_eq!(
        events(&outs),
        [&Event::Response {
            id,
            response: challenge.clone()
        }]
    );
    let acks = sent(&outs);
    assert_eq!(acks.len(), 1);
    let ack = request(acks[0]);
    assert_eq!(ack.method, Method::ACK);
    assert_eq!(ack.uri, invite.uri);
    assert_eq!(
        ack.headers.get_all("Via").collect::<Vec<_>>(),
        [invite.headers.get("Via").unwrap()]
    );
    assert_eq!(ack.headers.get("From"), invite.headers.get("From"));
    assert_eq!(
        ack.headers.get("To"),
        Some("<sip:+12195550714@wa.meta.vc>;tag=meta9")
    );
    assert_eq!(ack.headers.get("Call-ID"), Some("out-1"));
    assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
    assert_eq!(
        ack.headers.get_all("Route").collect::<Vec<_>>(),
        [
            "<sip:edge1.example.net;lr>",
            "<sip:wa.meta.vc;transport=tls;lr>"
        ]
    );
    assert!(!ack.headers.contains("Contact"));
    let ack = ack.clone();

    // A retransmitted 407 gets the same ACK again and is not reported.
    let outs = incoming(&mut l, t0 + secs(1), challenge);
    assert_eq!(
        outs,
        [Output::Transmit {
            id: Some(id),
            to: peer(Transport::Udp),
            message: Message::Request(ack),
        }]
    );
    // Timer D: 32 s on UDP.
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert_eq!(events_at(&outs), [(32200, &Event::Terminated { id })]);
}

#[test]
fn cancel_gets_200_and_the_invite_487() {
    let t0 = Instant::now();
    let mut l = layer();
    let from = peer(Transport::Udp);
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), from.clone());
    l.respond(t0, id, reply(&invite, 180, Some("uas1")))
        .unwrap();
    drain(&mut l);

    let mut cancel = cancel_for(&invite);
    cancel.headers.push("Reason", "SIP;cause=487");
    l.handle_incoming(t0 + secs(2), Message::Request(cancel.clone()), from.clone())
        .unwrap();
    let outs = drain(&mut l);
    let msgs = sent(&outs);
    assert_eq!(msgs.len(), 2, "{outs:?}");
    let cancel_ok = response(msgs[0]);
    assert_eq!(
        (cancel_ok.status, cancel_ok.headers.get("CSeq")),
        (200, Some("2824 CANCEL"))
    );
    assert_eq!(
        cancel_ok.to().unwrap().tag(),
        Some("uas1"),
        "same To tag as the INVITE's responses"
    );
    let terminated = response(msgs[1]);
    assert_eq!(
        (
            terminated.status,
            terminated.reason.as_str(),
            terminated.headers.get("CSeq")
        ),
        (487, "Request Terminated", Some("2824 INVITE"))
    );
    assert_eq!(terminated.to().unwrap().tag(), Some("uas1"));
    assert_eq!(
        events(&outs),
        [&Event::Cancelled {
            invite_id: id,
            request: cancel.clone(),
            from: from.clone()
        }]
    );
    assert_eq!(
        l.respond(t0 + secs(3), id, reply(&invite, 200, Some("uas1"))),
        Err(RespondError::AlreadyFinal),
        "too late for the TU to answer"
    );
    // A retransmitted CANCEL gets its 200 again, and only that.
    l.handle_incoming(t0 + secs(3), Message::Request(cancel), from.clone())
        .unwrap();
    let outs = drain(&mut l);
    assert_eq!(sent(&outs).len(), 1);
    assert_eq!(
        response(sent(&outs)[0]).headers.get("CSeq"),
        Some("2824 CANCEL")
    );
    // The ACK for the 487 completes the INVITE transaction.
    l.handle_incoming(
        t0 + secs(3),
        Message::Request(ack_for(&invite, "uas1")),
        from,
    )
    .unwrap();
    assert!(drain(&mut l).is_empty());
    let outs = run_until(&mut l, t0, t0 + secs(60));
    let terminated: Vec<_> = events_at(&outs)
        .into_iter()
        .filter(|(_, e)| **e == Event::Terminated { id })
        .collect();
    assert_eq!(
        terminated,
        [(8000, &Event::Terminated { id })],
        "Timer I, T4 after the ACK"
    );
    assert!(l.is_empty());
}

#[test]
fn cancel_after_the_200_has_no_effect_on_the_call() {
    let t0 = Instant::now();
    let mut l = layer();
    let from = peer(Transport::Tls);
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), from.clone());
    let ok = Response::dialog_response(
        &invite,
        200,
        "OK",
        "uas1",
        "<sip:+17015558857@sip.example.com;transport=tls>",
    );
    l.respond(t0 + ms(100), id, ok).unwrap();
    drain(&mut l);

    l.handle_incoming(
        t0 + ms(150),
        Message::Request(cancel_for(&invite)),
        from.clone(),
    )
    .unwrap();
    let outs = drain(&mut l);
    let msgs = sent(&outs);
    assert_eq!(
        msgs.len(),
        1,
        "only the CANCEL is answered, no 487: {outs:?}"
    );
    let r = response(msgs[0]);
    assert_eq!(
        (r.status, r.headers.get("CSeq")),
        (200, Some("2824 CANCEL"))
    );
    assert!(events(&outs).is_empty(), "no Event::Cancelled: {outs:?}");

    // The call goes on: the ACK for the 2xx (its own branch) reaches the TU, tied to the INVITE.
    let mut ack = ack_for(&invite, "uas1");
    ack.headers.set(
        "Via",
        "SIP/2.0/TLS [2a03:2880:f000::1]:33819;branch=z9hG4bKack1;alias",
    );
    l.handle_incoming(t0 + ms(200), Message::Request(ack.clone()), from.clone())
        .unwrap();
    assert_eq!(
        events(&drain(&mut l)),
        [&Event::Ack {
            invite_id: Some(id),
            request: ack,
            from
        }]
    );
}

#[test]
fn cancel_matching_nothing_gets_481() {
    let t0 = Instant::now();
    let mut l = layer();
    let cancel = cancel_for(&uas_invite(Some("z9hG4bKnothing")));
    l.handle_incoming(t0, Message::Request(cancel), peer(Transport::Udp))
        .unwrap();
    let outs = drain(&mut l);
    assert!(events(&outs).is_empty());
    let r = response(sent(&outs)[0]);
    assert_eq!(
        (r.status, r.headers.get("CSeq")),
        (481, Some("2824 CANCEL"))
    );
}

#[test]
fn outgoing_cancel_waits_for_a_provisional_and_copies_the_invite() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Tls))
        .unwrap();
    let invite = request(sent(&drain(&mut l))[0]).clone();
    assert_eq!(l.cancel(t0, id), Err(CancelError::NoProvisionalYet));
    incoming(&mut l, t0 + ms(100), reply(&invite, 180, Some("meta9")));
    let cid = l.cancel(t0 + secs(1), id).unwrap();
    let outs = drain(&mut l);
    let cancel = request(sent(&outs)[0]);
    assert_eq!(cancel.method, Method::CANCEL);
    assert_eq!(cancel.uri, invite.uri);
    assert_eq!(
        cancel.headers.get_all("Via").collect::<Vec<_>>(),
        [invite.headers.get("Via").unwrap()]
    );
    for h in ["From", "To", "Call-ID"] {
        assert_eq!(cancel.headers.get(h), invite.headers.get(h), "{h}");
    }
    assert_eq!(
        cancel.to().unwrap().tag(),
        None,
        "To as in the INVITE, without the response's tag"
    );
    assert_eq!(cancel.headers.get("CSeq"), Some("1 CANCEL"));
    assert_eq!(cancel.headers.get_all("Route").count(), 2);
    let cancel = cancel.clone();

    let outs = incoming(&mut l, t0 + ms(1100), reply(&cancel, 200, Some("meta9")));
    assert_eq!(responses(&outs), [(cid, 200)]);
    let outs = incoming(&mut l, t0 + ms(1200), reply(&invite, 487, Some("meta9")));
    assert_eq!(request(sent(&outs)[0]).headers.get("CSeq"), Some("1 ACK"));
    assert_eq!(responses(&outs), [(id, 487)]);
    assert_eq!(
        l.cancel(t0 + secs(2), id),
        Err(CancelError::UnknownTransaction)
    );
}

#[test]
fn invite_without_final_response_after_our_cancel_times_out() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Tls))
        .unwrap();
    let invite = request(sent(&drain(&mut l))[0]).clone();
    incoming(&mut l, t0 + ms(100), reply(&invite, 183, Some("meta9")));
    l.cancel(t0 + secs(10), id).unwrap();
    drain(&mut l);
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert!(events_at(&outs).contains(&(
        42000,
        &Event::Timeout {
            id,
            reason: TimeoutReason::NoFinalResponse
        }
    )));
}

#[test]
fn no_retransmissions_over_tcp_or_tls() {
    let t0 = Instant::now();
    let mut l = layer();
    let inv = l
        .send_request(t0, uac_invite(), peer(Transport::Tls))
        .unwrap();
    let opt = l
        .send_request(t0, uac_options(), peer(Transport::Tcp))
        .unwrap();
    assert_eq!(sent(&drain(&mut l)).len(), 2);
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let srv = receive_new(&mut l, t0, invite.clone(), peer(Transport::Tls));
    l.respond(t0, srv, reply(&invite, 486, Some("uas1")))
        .unwrap();
    assert_eq!(sent(&drain(&mut l)).len(), 1);

    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert!(sent_at(&outs).is_empty(), "{outs:?}");
    let mut ev = events_at(&outs);
    ev.sort_by_key(|(t, e)| (*t, format!("{e:?}")));
    assert_eq!(
        ev,
        [
            (32000, &Event::Terminated { id: inv }),
            (32000, &Event::Terminated { id: opt }),
            (32000, &Event::Terminated { id: srv }),
            (
                32000,
                &Event::Timeout {
                    id: inv,
                    reason: TimeoutReason::NoFinalResponse
                }
            ),
            (
                32000,
                &Event::Timeout {
                    id: opt,
                    reason: TimeoutReason::NoFinalResponse
                }
            ),
            (
                32000,
                &Event::Timeout {
                    id: srv,
                    reason: TimeoutReason::NoAck
                }
            ),
        ]
    );
}

#[test]
fn rfc2543_requests_are_matched_by_the_fallback_key() {
    let t0 = Instant::now();
    let mut l = layer();
    let from = peer(Transport::Udp);
    let invite = uas_invite(None);
    assert!(invite.top_via().unwrap().branch().is_none());
    let id = receive_new(&mut l, t0, invite.clone(), from.clone());

    // The same request again is a retransmission: absorbed, the last response resent.
    let busy = reply(&invite, 486, Some("uas1"));
    l.respond(t0, id, busy.clone()).unwrap();
    drain(&mut l);
    l.handle_incoming(t0 + ms(100), Message::Request(invite.clone()), from.clone())
        .unwrap();
    assert_eq!(sent(&drain(&mut l)), [&Message::Response(busy)]);

    // Its ACK (To tag of our response, same top Via) matches the INVITE transaction: not for the
    // TU.
    l.handle_incoming(
        t0 + ms(200),
        Message::Request(ack_for(&invite, "uas1")),
        from.clone(),
    )
    .unwrap();
    assert!(drain(&mut l).is_empty());
    let outs = run_until(&mut l, t0, t0 + secs(1));
    assert!(sent_at(&outs).is_empty(), "Confirmed: Timer G stopped");

    // Another CSeq is another transaction.
    let mut next = invite.clone();
    next.headers.set("CSeq", "2825 INVITE");
    let id2 = receive_new(&mut l, t0 + secs(1), next.clone(), from.clone());
    assert_ne!(id, id2);

    // A CANCEL without cookie finds it by the same key, with method INVITE.
    l.handle_incoming(
        t0 + secs(2),
        Message::Request(cancel_for(&next)),
        from.clone(),
    )
    .unwrap();
    let outs = drain(&mut l);
    let statuses: Vec<u16> = sent(&outs).iter().map(|m| response(m).status).collect();
    assert_eq!(statuses, [200, 487]);
    assert!(matches!(events(&outs)[..], [Event::Cancelled { invite_id, .. }] if *invite_id == id2));
}

#[test]
fn transactions_beyond_the_limit_get_503() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions: 2,
        ..Config::default()
    });
    let from = peer(Transport::Udp);
    let mut opt = uas_options();
    receive_new(&mut l, t0, opt.clone(), from.clone());
    opt.headers
        .set("Via", "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKopt78");
    receive_new(&mut l, t0, opt.clone(), from.clone());
    opt.headers
        .set("Via", "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKopt79");
    l.handle_incoming(t0, Message::Request(opt), from.clone())
        .unwrap();
    let outs = drain(&mut l);
    let [Output::Transmit {
        id: None,
        to,
        message,
    }] = outs.as_slice()
    else {
        panic!("{outs:?}")
    };
    assert_eq!(to, &from);
    let r = response(message);
    assert_eq!(r.status, 503);
    assert!(r.reason.contains("too many transactions"), "{}", r.reason);
    assert_eq!(r.headers.get("Retry-After"), Some("5"));
    assert_eq!(l.len(), 2);
    assert_eq!(
        l.send_request(t0, uac_options(), peer(Transport::Udp)),
        Err(SendError::TooManyTransactions { limit: 2 })
    );
}

/// A full layer still takes the requests of dialogs that are up: a call's BYE is never refused
/// for overload.
#[test]
fn in_dialog_requests_pass_a_full_layer() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions: 1,
        ..Config::default()
    });
    let from = peer(Transport::Udp);
    receive_new(&mut l, t0, uas_options(), from.clone());
    let mut bye = uas_options();
    bye.method = Method::BYE;
    bye.headers.set("CSeq", "2 BYE");
    bye.headers
        .set("Via", "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKbye1");
    let mut stranger = bye.clone();
    let to = bye.headers.get("To").unwrap().to_string();
    bye.headers.set("To", format!("{to};tag=ours"));
    let id = receive_new(&mut l, t0, bye, from.clone());
    assert_eq!(l.len(), 2, "the BYE has its transaction ({id:?})");
    // Out of dialog, the same request is refused.
    stranger
        .headers
        .set("Via", "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKbye2");
    l.handle_incoming(t0, Message::Request(stranger), from)
        .unwrap();
    let outs = drain(&mut l);
    assert_eq!(response(sent(&outs)[0]).status, 503, "{outs:?}");
}

/// One address may hold only so many server transactions; another is not affected, and a slot
/// freed is a slot taken again.
#[test]
fn one_source_cannot_take_every_transaction() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions_per_source: 2,
        ..Config::default()
    });
    let flood = peer(Transport::Udp);
    let mut other = peer(Transport::Udp);
    other.addr = "192.0.2.99:5060".parse().unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut opt = uas_options();
        opt.headers.set(
            "Via",
            format!("SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKflood{n}"),
        );
        l.handle_incoming(t0, Message::Request(opt), flood.clone())
            .unwrap();
        let outs = drain(&mut l);
        match n {
            2 => {
                let r = response(sent(&outs)[0]);
                assert_eq!(r.status, 503, "{outs:?}");
                assert!(r.reason.contains("from this address"), "{}", r.reason);
            }
            _ => ids.extend(events(&outs).iter().filter_map(|e| match e {
                Event::Request { id, .. } => Some(*id),
                _ => None,
            })),
        }
    }
    let mut opt = uas_options();
    opt.headers
        .set("Via", "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKother");
    receive_new(&mut l, t0, opt, other);
    // The flood's first transaction is answered: waiting out Timer J, it holds no slot.
    l.respond(t0, ids[0], reply(&uas_options(), 200, None))
        .unwrap();
    let _ = run_until(&mut l, t0, t0 + secs(33));
    let mut opt = uas_options();
    opt.headers
        .set("Via", "SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKflood9");
    receive_new(&mut l, t0 + secs(33), opt, flood);
}

/// An answered request over UDP waits out Timer J for retransmissions without holding a slot: a
/// layer of two takes any number of answered requests. Beyond `max_completed` the oldest is let go
/// early: its retransmission is then a new request, while a younger one's still gets the layer's
/// cached answer.
#[test]
fn answered_requests_wait_for_retransmissions_without_holding_a_slot() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions: 2,
        max_transactions_per_source: 2,
        max_completed: 3,
        ..Config::default()
    });
    let from = peer(Transport::Udp);
    let mut requests = Vec::new();
    for n in 0..5 {
        let mut opt = uas_options();
        opt.headers.set(
            "Via",
            format!("SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKdone{n}"),
        );
        let id = receive_new(&mut l, t0, opt.clone(), from.clone());
        l.respond(t0, id, reply(&opt, 200, None)).unwrap();
        drain(&mut l);
        requests.push(opt);
    }
    assert_eq!(
        l.len(),
        3,
        "the three youngest answered transactions are kept"
    );
    l.handle_incoming(
        t0 + ms(500),
        Message::Request(requests[4].clone()),
        from.clone(),
    )
    .unwrap();
    let outs = drain(&mut l);
    assert_eq!(response(sent(&outs)[0]).status, 200, "{outs:?}");
    assert!(
        events(&outs).is_empty(),
        "the TU does not see it again: {outs:?}"
    );
    receive_new(&mut l, t0 + ms(500), requests[0].clone(), from);
    assert_eq!(l.len(), 4);
    // Timer J still ends the kept ones (32 s); the new one gives up only at 32.5 s.
    let _ = run_until(&mut l, t0, t0 + ms(32_200));
    assert_eq!(l.len(), 1, "only the unanswered one is left");
}

#[test]
fn an_acked_2xx_waits_out_timer_l_without_holding_a_slot() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions: 2,
        max_transactions_per_source: 2,
        ..Config::default()
    });
    let from = peer(Transport::Udp);
    let call = |n: u32| {
        let mut invite = uas_invite(Some(&format!("z9hG4bKcall{n}")));
        invite.headers.set("Call-ID", format!("in-{n}"));
        invite
    };
    let answer = |l: &mut TransactionLayer, invite: &Request, id| {
        let ok = Response::dialog_response(invite, 200, "OK", "uas1", "<sip:a@sip.example.com>");
        l.respond(t0, id, ok).unwrap();
        drain(l);
    };
    // Calls answered and ACKed, one after the other: more than both limits.
    for n in 0..4 {
        let invite = call(n);
        let id = receive_new(&mut l, t0, invite.clone(), from.clone());
        answer(&mut l, &invite, id);
        let mut ack = ack_for(&invite, "uas1");
        ack.headers.set(
            "Via",
            format!("SIP/2.0/UDP 192.0.2.10:5061;branch=z9hG4bKack{n}"),
        );
        l.handle_incoming(t0, Message::Request(ack), from.clone())
            .unwrap();
        drain(&mut l);
    }
    assert_eq!(l.len(), 4, "each waits out Timer L");
    // The INVITE of an ACKed call, resent, is still absorbed.
    l.handle_incoming(t0 + ms(100), Message::Request(call(3)), from.clone())
        .unwrap();
    assert!(drain(&mut l).is_empty());
    // A 2xx not ACKed yet still holds its slot.
    for n in 4..6 {
        let invite = call(n);
        let id = receive_new(&mut l, t0, invite.clone(), from.clone());
        answer(&mut l, &invite, id);
    }
    l.handle_incoming(t0 + ms(100), Message::Request(call(6)), from.clone())
        .unwrap();
    let outs = drain(&mut l);
    assert_eq!(response(sent(&outs)[0]).status, 503, "{outs:?}");
    let _ = run_until(&mut l, t0, t0 + secs(33));
    assert!(l.is_empty(), "Timer L ends them all");
}

#[test]
fn client_invite_passes_every_2xx_to_the_tu_until_timer_m() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_invite(), peer(Transport::Udp))
        .unwrap();
    let invite = request(sent(&drain(&mut l))[0]).clone();
    let ok = reply(&invite, 200, Some("meta9"));
    for at in [100, 600, 1600] {
        let outs = incoming(&mut l, t0 + ms(at), ok.clone());
        assert_eq!(
            outs,
            [Output::Event(Event::Response {
                id,
                response: ok.clone()
            })],
            "no ACK from the transaction for a 2xx"
        );
    }
    let fork = reply(&invite, 200, Some("fork2"));
    assert_eq!(
        incoming(&mut l, t0 + ms(1700), fork.clone()),
        [Output::Event(Event::Response { id, response: fork })]
    );
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert_eq!(events_at(&outs), [(32100, &Event::Terminated { id })]);
    assert_eq!(
        l.handle_incoming(t0 + secs(40), Message::Response(ok), peer(Transport::Udp)),
        Err(IncomingError::UnmatchedResponse { status: 200 })
    );
}

#[test]
fn our_2xx_is_resent_until_its_ack_then_the_ack_goes_to_the_tu() {
    let t0 = Instant::now();
    let mut l = layer();
    let from = peer(Transport::Tls);
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), from.clone());
    let ok = Response::dialog_response(
        &invite,
        200,
        "OK",
        "uas1",
        "<sip:+17015558857@sip.example.com;transport=tls>",
    );
    l.respond(t0, id, ok.clone()).unwrap();
    drain(&mut l);
    let outs = run_until(&mut l, t0, t0 + ms(4000));
    let times: Vec<u128> = sent_at(&outs).iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [500, 1500, 3500],
        "RFC 3261 §13.3.1.4: T1 doubling, on any transport"
    );
    let mut ack = ack_for(&invite, "uas1");
    ack.headers.set(
        "Via",
        "SIP/2.0/TLS [2a03:2880:f000::1]:33819;branch=z9hG4bKack1;alias",
    );
    l.handle_incoming(t0 + secs(4), Message::Request(ack.clone()), from.clone())
        .unwrap();
    assert_eq!(
        events(&drain(&mut l)),
        [&Event::Ack {
            invite_id: Some(id),
            request: ack.clone(),
            from: from.clone()
        }]
    );
    l.handle_incoming(t0 + secs(5), Message::Request(ack.clone()), from.clone())
        .unwrap();
    assert!(drain(&mut l).is_empty(), "a repeated ACK is absorbed");
    let outs = run_until(&mut l, t0, t0 + secs(60));
    assert!(sent_at(&outs).is_empty());
    assert_eq!(events_at(&outs), [(32000, &Event::Terminated { id })]);
    // Once the transaction is gone, an ACK still reaches the TU, without an INVITE id.
    l.handle_incoming(t0 + secs(40), Message::Request(ack.clone()), from.clone())
        .unwrap();
    assert_eq!(
        events(&drain(&mut l)),
        [&Event::Ack {
            invite_id: None,
            request: ack,
            from
        }]
    );
}

#[test]
fn a_2xx_never_acked_is_reported_at_timer_l() {
    let t0 = Instant::now();
    let mut l = layer();
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Udp));
    let ok = Response::dialog_response(
        &invite,
        200,
        "OK",
        "uas1",
        "<sip:+17015558857@sip.example.com>",
    );
    l.respond(t0, id, ok).unwrap();
    drain(&mut l);
    let outs = run_until(&mut l, t0, t0 + secs(60));
    let times: Vec<u128> = sent_at(&outs).iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert_eq!(
        events_at(&outs),
        [
            (
                32000,
                &Event::Timeout {
                    id,
                    reason: TimeoutReason::NoAck
                }
            ),
            (32000, &Event::Terminated { id }),
        ]
    );
}

#[test]
fn local_misuse_is_refused() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config::default());
    assert_eq!(
        l.send_request(t0, uac_options(), peer(Transport::Udp)),
        Err(SendError::NoVia)
    );
    let ack = ack_for(&uas_invite(Some("z9hG4bKx")), "t");
    assert_eq!(
        l.send_request(t0, ack, peer(Transport::Udp)),
        Err(SendError::AckIsNotATransaction)
    );
    let invite = uas_invite(Some("z9hG4bKinv1"));
    let id = receive_new(&mut l, t0, invite.clone(), peer(Transport::Tls));
    assert_eq!(
        l.respond(t0, id, reply(&invite, 200, None)),
        Err(RespondError::NoToTag)
    );
    assert_eq!(
        l.respond(t0, id, reply(&invite, 99, None)),
        Err(RespondError::InvalidStatus(99))
    );
    let out = l
        .send_request(t0, uac_invite(), peer(Transport::Tls))
        .unwrap();
    assert_eq!(
        l.respond(t0, out, reply(&invite, 200, Some("x"))),
        Err(RespondError::NotServerTransaction)
    );
    let sent_invite = l.request(out).unwrap().clone();
    assert_eq!(
        l.send_request(t0, sent_invite, peer(Transport::Tls)),
        Err(SendError::DuplicateBranch)
    );
}

#[test]
fn transport_error_ends_the_transaction() {
    let t0 = Instant::now();
    let mut l = layer();
    let id = l
        .send_request(t0, uac_options(), peer(Transport::Tcp))
        .unwrap();
    drain(&mut l);
    l.handle_transport_error(id);
    assert_eq!(
        events(&drain(&mut l)),
        [&Event::TransportError { id }, &Event::Terminated { id }]
    );
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
}
