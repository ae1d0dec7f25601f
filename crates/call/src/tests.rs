//! The WhatsApp leg against Meta's captured messages (tests/data/whatsapp): what goes out for each
//! input, checked header by header. Whole flows between two legs are in `tests/harness.rs`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use watrunk_sdp::{Capabilities, Fingerprint, LocalMedia, Security};
use watrunk_sip::digest::{Authorization, NonceIssuer, Verifier};
use watrunk_sip::transaction::{
    Event, Output, Peer, TimerConfig, TransactionId, TransactionLayer, Transport,
};
use watrunk_sip::uri::Uri;
use watrunk_sip::{Message, Method, Request, Response};

use crate::*;

pub(crate) fn sample(name: &str) -> Message {
    let path = format!(
        "{}/../../tests/data/whatsapp/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Message::parse_datagram(&watrunk_sip::samples::normalize_meta_sample(&text))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub(crate) fn request(name: &str) -> Request {
    match sample(name) {
        Message::Request(r) => r,
        _ => panic!("{name} is not a request"),
    }
}

pub(crate) fn setup(security: Security) -> LegSetup {
    LegSetup {
        local: Local {
            contact: "<sip:+12145551869@sip.example.com;transport=tls>".into(),
            user_agent: "watrunk/test".into(),
            warning_host: "sip.example.com".into(),
        },
        capabilities: Capabilities::whatsapp(security),
        policy: LegPolicy::whatsapp(),
    }
}

pub(crate) fn rng() -> StdRng {
    StdRng::seed_from_u64(11)
}

/// Our local description as media would make it.
pub(crate) fn local_media(security: Security) -> LocalMedia {
    let mut local = LocalMedia::for_capabilities(&Capabilities::whatsapp(security), &mut rng())
        .with_candidates(["198.18.0.1:40000".parse().unwrap()])
        .with_fingerprint(Fingerprint::sha256(vec![0xab; 32]));
    local.ice_ufrag = "wAtR".into();
    local.ice_pwd = "k9/+eWq3mZ1xT0pLr8sVn2bY".into();
    local
}

/// A Meta-shaped DTLS offer (ICE-lite, its relay's candidate): the doc samples mask their keys.
pub(crate) fn meta_offer() -> Vec<u8> {
    let mut meta = local_media(Security::Dtls);
    meta.ice_lite = true;
    meta.candidates = vec!["157.240.0.10:3480".parse().unwrap()];
    let offer = watrunk_sdp::offer(&meta).unwrap();
    watrunk_sdp::print(offer.sdp()).into_bytes()
}

/// A sample INVITE from Meta, carrying a usable offer.
pub(crate) fn meta_invite(name: &str) -> Request {
    let mut invite = request(name);
    invite.body = meta_offer();
    invite
}

/// Meta's ACK for our 200 (what the leg reads of it: the Call-ID and the body).
pub(crate) fn ack_for(invite: &Request) -> Request {
    let mut ack = Request::new(
        Method::ACK,
        Uri::parse("sip:+12145551869@sip.example.com").unwrap(),
    );
    ack.headers.push("Call-ID", invite.call_id().unwrap());
    ack
}

pub(crate) fn incoming(invite: Request, tx: TransactionId) -> Leg {
    Leg::incoming(
        Instant::now(),
        invite,
        tx,
        setup(Security::Dtls),
        &mut rng(),
    )
    .expect("Meta's offer is agreed")
}

/// A real transaction id: the layer hands one out for an incoming request.
pub(crate) fn server_transaction(req: &Request) -> TransactionId {
    let mut layer = TransactionLayer::new(TimerConfig::default());
    let peer = Peer {
        transport: Transport::Tls,
        addr: "127.0.0.1:5061".parse().unwrap(),
        conn: Some(1),
    };
    layer
        .handle_incoming(
            std::time::Instant::now(),
            Message::Request(req.clone()),
            peer,
        )
        .unwrap();
    loop {
        match layer.poll_output().expect("an event") {
            Output::Event(Event::Request { id, .. }) => return id,
            _ => continue,
        }
    }
}

pub(crate) fn drain(call: &mut Leg) -> Vec<CallOutput> {
    std::iter::from_fn(|| call.poll_output()).collect()
}

pub(crate) fn responses(out: &[CallOutput]) -> Vec<&Response> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Respond { response, .. } => Some(response),
            _ => None,
        })
        .collect()
}

pub(crate) fn ended(out: &[CallOutput]) -> Option<&Ending> {
    out.iter().find_map(|o| match o {
        CallOutput::Event(CallEvent::Ended(e)) => Some(e),
        _ => None,
    })
}

fn answered_inbound() -> (Leg, Request) {
    let invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let tx = server_transaction(&invite);
    let mut call = incoming(invite.clone(), tx);
    let out = drain(&mut call);
    assert_eq!(responses(&out)[0].status, 180);
    call.answer().unwrap();
    let asked = drain(&mut call);
    assert!(
        matches!(
            &asked[..],
            [CallOutput::Media(MediaIntent::Prepare {
                security: Security::Dtls,
                ice_role: watrunk_sdp::IceRole::Controlling
            })]
        ),
        "media is asked for, controlling toward Meta's ICE-lite relay: {asked:?}"
    );
    call.media_ready(local_media(Security::Dtls));
    (call, invite)
}

#[test]
fn inbound_200_copies_record_route_exactly_and_in_order() {
    let (mut call, invite) = answered_inbound();
    let out = drain(&mut call);
    let ok = responses(&out)[0];
    assert_eq!(ok.status, 200);
    let rr_in: Vec<&str> = invite.headers.get_all("Record-Route").collect();
    let rr_out: Vec<&str> = ok.headers.get_all("Record-Route").collect();
    assert_eq!(rr_in.len(), 2);
    assert_eq!(rr_in, rr_out);
    assert_eq!(
        ok.headers.get("Contact"),
        Some("<sip:+12145551869@sip.example.com;transport=tls>")
    );
    assert!(ok.to().unwrap().tag().is_some());
    let answer = watrunk_sdp::parse(&ok.body).unwrap();
    assert!(
        watrunk_sdp::check(
            &answer,
            watrunk_sdp::Side::Business,
            Some(watrunk_sdp::Kind::Answer)
        )
        .is_empty(),
        "our answer meets the WhatsApp profile"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Media(MediaIntent::Start { .. }))));
    for never in ["Session-Expires", "Require", "Supported"] {
        assert!(ok.headers.get(never).is_none(), "{never} must not be sent");
    }
    assert!(!ok.headers.get("Allow").unwrap().contains("UPDATE"));
    assert!(out.contains(&CallOutput::Event(CallEvent::Answered)));
    assert_eq!(call.state_name(), "answered");
}

#[test]
fn inbound_ack_then_bye_from_meta_ends_with_its_duration() {
    let (mut call, invite) = answered_inbound();
    let ok = responses(&drain(&mut call))[0].clone();
    call.handle_ack(Instant::now(), &ack_for(&invite));
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Event(CallEvent::Confirmed)]
    );
    // Meta's BYE in this dialog: its From is the INVITE's From, its To our tagged To.
    let mut bye = Request::new(
        Method::BYE,
        Uri::parse("sip:+12145551869@sip.example.com").unwrap(),
    );
    bye.headers.push("Via", invite.headers.get("Via").unwrap());
    bye.headers
        .push("From", invite.headers.get("From").unwrap());
    bye.headers.push("To", ok.headers.get("To").unwrap());
    bye.headers.push("Call-ID", invite.call_id().unwrap());
    bye.headers.push("CSeq", "9990 BYE");
    bye.headers.push("x-wa-meta-call-duration", "17");
    bye.headers
        .push("Reason", "SIP;cause=200;text=\"user hung up\"");
    let bye_tx = server_transaction(&bye);
    call.handle_request(bye_tx, &bye);
    let out = drain(&mut call);
    assert_eq!(responses(&out)[0].status, 200);
    assert!(out.contains(&CallOutput::Media(MediaIntent::Stop)));
    let e = ended(&out).cloned().expect("ended");
    assert_eq!(e.by, Side::Remote);
    assert_eq!(e.meta_duration_secs, Some(17));
    assert_eq!(
        e.sip_reason.as_deref(),
        Some("SIP;cause=200;text=\"user hung up\"")
    );
    assert!(call.is_ended());
}

#[test]
fn inbound_lost_ack_sends_bye_through_the_route_set_and_ends_when_answered() {
    let (mut call, invite) = answered_inbound();
    drain(&mut call);
    call.handle_ack_timeout();
    let out = drain(&mut call);
    let bye = match &out[..] {
        [CallOutput::Send(bye), CallOutput::Media(MediaIntent::Stop)] => bye.clone(),
        other => panic!("expected one BYE and Stop, got {other:?}"),
    };
    assert_eq!(bye.method, Method::BYE);
    // R-URI: Meta's Contact; Route: the Record-Route in received order (we are the UAS).
    assert_eq!(
        bye.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls;ob"
    );
    let routes: Vec<&str> = bye.headers.get_all("Route").collect();
    let rr: Vec<&str> = invite.headers.get_all("Record-Route").collect();
    assert_eq!(routes, rr);
    assert!(bye.headers.get("Reason").unwrap().contains("408"));
    assert_eq!(call.state_name(), "ending");
    let tx = server_transaction(&invite);
    call.request_sent(&Method::BYE, tx);
    call.handle_response(Instant::now(), tx, &Response::new(200, "OK"));
    let e = ended(&drain(&mut call)).cloned().expect("ended");
    assert_eq!(e.by, Side::Local);
    assert!(e.reason.contains("no ACK"), "{}", e.reason);
}

#[test]
fn inbound_cancel_before_answer_ends_with_487() {
    let invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let tx = server_transaction(&invite);
    let mut call = incoming(invite.clone(), tx);
    drain(&mut call);
    let cancel = watrunk_sip::transaction::build_cancel(&invite);
    call.handle_cancel(&cancel);
    let e = ended(&drain(&mut call)).cloned().expect("ended");
    assert_eq!(e.status, Some(487));
    assert_eq!(e.by, Side::Remote);
    assert!(
        call.answer().is_err(),
        "a cancelled call cannot be answered"
    );
}

#[test]
fn inbound_reject_keeps_the_warning_and_has_our_tag() {
    let invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let tx = server_transaction(&invite);
    let mut call = incoming(invite, tx);
    drain(&mut call);
    let mut r = Response::new(488, "Not Acceptable Here (no-opus)");
    r.headers.push("Warning", "399 sip.example.com \"no Opus\"");
    call.reject(r, "offer refused: no-opus".into()).unwrap();
    let out = drain(&mut call);
    let resp = responses(&out)[0];
    assert_eq!(resp.status, 488);
    assert_eq!(
        resp.headers.get("Warning"),
        Some("399 sip.example.com \"no Opus\"")
    );
    assert!(resp.to().unwrap().tag().is_some());
    assert_eq!(ended(&out).unwrap().status, Some(488));
}

fn outbound(password: Option<&str>) -> (Leg, Request) {
    let mut call = Leg::outgoing(
        OutboundCall {
            from_number: "+17125550259".into(),
            hostname: "meta-voip.example.com".into(),
            to_user: "+12195550714".into(),
            domain: "wa.meta.vc".into(),
            transport: "tls".into(),
            password: password.map(str::to_string),
            username: None,
            asserted_identity: false,
        },
        setup(Security::Sdes),
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        &drain(&mut call)[..],
        [CallOutput::Media(MediaIntent::Prepare {
            security: Security::Sdes,
            ice_role: watrunk_sdp::IceRole::None
        })]
    ));
    call.media_ready(local_media(Security::Sdes));
    let invite = match &drain(&mut call)[..] {
        [CallOutput::Send(r)] => r.clone(),
        other => panic!("{other:?}"),
    };
    (call, invite)
}

/// The INVITE as the layer sent it (with a Via), and its client transaction id.
pub(crate) fn send(
    call: &mut Leg,
    layer: &mut TransactionLayer,
    req: Request,
) -> (TransactionId, Request) {
    let peer = Peer {
        transport: Transport::Tls,
        addr: "127.0.0.1:5061".parse().unwrap(),
        conn: Some(1),
    };
    let id = layer
        .send_request(std::time::Instant::now(), req.clone(), peer)
        .unwrap();
    call.request_sent(&req.method, id);
    (id, layer.request(id).unwrap().clone())
}

pub(crate) fn layer() -> TransactionLayer {
    TransactionLayer::new(watrunk_sip::transaction::Config {
        sent_by: Some("sip.example.com:5061".into()),
        ..Default::default()
    })
}

pub(crate) fn response_to(req: &Request, status: u16, to_tag: &str) -> Response {
    Response::to_request(
        req,
        status,
        watrunk_sip::message::reason_phrase(status),
        Some(to_tag),
    )
}

#[test]
fn outbound_invite_is_shaped_for_meta() {
    let (_, invite) = outbound(Some("pw"));
    assert_eq!(
        invite.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls"
    );
    let from = invite.from().unwrap();
    assert_eq!(
        from.uri.to_string(),
        "sip:+17125550259@meta-voip.example.com"
    );
    assert!(from.tag().is_some());
    assert_eq!(
        invite.to().unwrap().uri.to_string(),
        "sip:+12195550714@wa.meta.vc"
    );
    for never in ["Session-Expires", "Supported", "Require"] {
        assert!(invite.headers.get(never).is_none());
    }
    assert_eq!(invite.headers.get("Content-Type"), Some("application/sdp"));
}

#[test]
fn outbound_answers_metas_dual_407_with_sha256_and_username_without_plus() {
    let (mut call, invite) = outbound(Some("s3cret"));
    let mut layer = layer();
    let (tx, sent) = send(&mut call, &mut layer, invite);
    // Meta's challenge: SHA-256 first, then MD5, as in meta-407-dual-challenge-headers-fragment-01.
    let issuer = NonceIssuer::new([7; 32], 300);
    let mut challenge = response_to(&sent, 407, "meta1");
    challenge.headers.push(
        "Proxy-Authenticate",
        issuer
            .challenge(
                "wa.meta.vc",
                watrunk_sip::digest::Algorithm::Sha256,
                10,
                false,
            )
            .to_string(),
    );
    challenge.headers.push(
        "Proxy-Authenticate",
        issuer
            .challenge("wa.meta.vc", watrunk_sip::digest::Algorithm::Md5, 10, false)
            .to_string(),
    );
    call.handle_response(Instant::now(), tx, &challenge);
    let retry = match &drain(&mut call)[..] {
        [CallOutput::Send(r)] => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(retry.call_id(), sent.call_id());
    assert_eq!(retry.from().unwrap().tag(), sent.from().unwrap().tag());
    assert_eq!(retry.cseq().unwrap().seq, sent.cseq().unwrap().seq + 1);
    let auth = Authorization::parse(retry.headers.get("Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(auth.username, "17125550259");
    assert_eq!(auth.algorithm, watrunk_sip::digest::Algorithm::Sha256);
    // Meta's side of it: a verifier with the number's password accepts it.
    let mut verifier = Verifier::new(issuer, "wa.meta.vc");
    verifier
        .verify(
            &auth,
            "INVITE",
            &retry.uri.to_string(),
            "s3cret",
            &retry.body,
            11,
        )
        .expect("Meta accepts our credentials");
    // A second 407 means the password is wrong: the call ends with that said.
    let (tx2, sent2) = send(&mut call, &mut layer, retry);
    call.handle_response(Instant::now(), tx2, &response_to(&sent2, 407, "meta2"));
    let e = ended(&drain(&mut call)).cloned().expect("ended");
    assert_eq!(e.status, Some(407));
    assert!(e.reason.contains("password"), "{}", e.reason);
}

#[test]
fn outbound_2xx_is_acked_through_metas_route_set() {
    let (mut call, invite) = outbound(None);
    let mut layer = layer();
    let (tx, sent) = send(&mut call, &mut layer, invite);
    call.handle_response(Instant::now(), tx, &response_to(&sent, 180, "m1"));
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Event(CallEvent::Ringing)]
    );
    let mut ok = response_to(&sent, 200, "m1");
    ok.headers.push(
        "Record-Route",
        "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
    );
    ok.headers
        .push("Record-Route", "<sip:wa.meta.vc;transport=tls;lr>");
    ok.headers.push(
        "Contact",
        "<sip:+12195550714@wa.meta.vc;transport=tls;ob>;isfocus",
    );
    ok.body = meta_sdes_answer(&sent);
    call.handle_response(Instant::now(), tx, &ok);
    let out = drain(&mut call);
    let ack = match &out[0] {
        CallOutput::Ack(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ack.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls;ob"
    );
    let routes: Vec<&str> = ack.headers.get_all("Route").collect();
    assert_eq!(
        routes,
        [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
        ]
    );
    assert!(out.contains(&CallOutput::Event(CallEvent::Answered)));
    let plan = match out.iter().find_map(|o| match o {
        CallOutput::Media(MediaIntent::Start { plan, .. }) => Some(plan),
        _ => None,
    }) {
        Some(plan) => plan,
        None => panic!("the answer starts media: {out:?}"),
    };
    assert!(matches!(plan.keying, watrunk_sdp::Keying::Sdes { .. }));
}

#[test]
fn outbound_failures_say_what_they_mean() {
    for (status, words) in [
        (603, "declined"),
        (403, "permission"),
        (404, "not found"),
        (486, "busy"),
    ] {
        let (mut call, invite) = outbound(Some("pw"));
        let mut layer = layer();
        let (tx, sent) = send(&mut call, &mut layer, invite);
        call.handle_response(Instant::now(), tx, &response_to(&sent, status, "m"));
        let e = ended(&drain(&mut call)).cloned().expect("ended");
        assert_eq!(e.status, Some(status));
        assert!(e.reason.contains(words), "{status}: {}", e.reason);
    }
}

#[test]
fn outbound_hang_up_while_ringing_cancels() {
    let (mut call, invite) = outbound(None);
    let mut layer = layer();
    let (tx, sent) = send(&mut call, &mut layer, invite);
    call.handle_response(Instant::now(), tx, &response_to(&sent, 180, "m1"));
    drain(&mut call);
    call.hang_up("business hung up", 16);
    assert_eq!(drain(&mut call), vec![CallOutput::Cancel { invite: tx }]);
    call.handle_response(Instant::now(), tx, &response_to(&sent, 487, "m1"));
    assert_eq!(ended(&drain(&mut call)).unwrap().status, Some(487));
}

/// Meta's SDES answer to our INVITE's offer, as its relay writes it (ICE-lite, its own key).
pub(crate) fn meta_sdes_answer(invite: &Request) -> Vec<u8> {
    let offer = watrunk_sdp::parse(&invite.body).unwrap();
    let mut meta = local_media(Security::Sdes);
    meta.ice_lite = true;
    meta.sdes_key = [9; 30];
    let (answer, _) = watrunk_sdp::answer(&offer, &meta).unwrap();
    watrunk_sdp::print(&answer).into_bytes()
}

#[test]
fn an_offer_breaking_the_profile_makes_no_leg_and_gets_488_with_the_rule() {
    let mut invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let text = String::from_utf8(invite.body.clone()).unwrap();
    invite.body = text.replace("opus/48000/2", "speex/16000").into_bytes();
    let tx = server_transaction(&invite);
    let refusal = Leg::incoming(
        Instant::now(),
        invite,
        tx,
        setup(Security::Dtls),
        &mut rng(),
    )
    .unwrap_err();
    assert_eq!(refusal.status, 488);
    assert_eq!(refusal.reason, "Not Acceptable Here (no-opus)");
    assert_eq!(
        refusal.headers.get("Warning"),
        Some("399 sip.example.com \"no opus/48000/2 in the offer\"")
    );
    assert!(refusal.to().unwrap().tag().is_some());
}

#[test]
fn the_whatsapp_leg_refuses_reinvite_and_never_sends_one() {
    let (mut call, invite) = answered_inbound();
    let ok = responses(&drain(&mut call))[0].clone();
    call.handle_ack(Instant::now(), &ack_for(&invite));
    drain(&mut call);
    let mut reinvite = Request::new(
        Method::INVITE,
        Uri::parse("sip:+12145551869@sip.example.com").unwrap(),
    );
    reinvite
        .headers
        .push("Via", invite.headers.get("Via").unwrap());
    reinvite
        .headers
        .push("From", invite.headers.get("From").unwrap());
    reinvite.headers.push("To", ok.headers.get("To").unwrap());
    reinvite.headers.push("Call-ID", invite.call_id().unwrap());
    reinvite.headers.push("CSeq", "9990 INVITE");
    reinvite.body = invite.body.clone();
    let tx = server_transaction(&reinvite);
    call.handle_request(tx, &reinvite);
    let out = drain(&mut call);
    assert_eq!(responses(&out)[0].status, 488);
    assert!(!out
        .iter()
        .any(|o| matches!(o, CallOutput::Media(MediaIntent::Update { .. }))));
    assert_eq!(
        call.reoffer(Reoffer::Invite, Direction::SendOnly),
        Err(CallError::Forbidden("re-INVITE"))
    );
    assert_eq!(
        call.reoffer(Reoffer::Update, Direction::SendOnly),
        Err(CallError::Forbidden("UPDATE"))
    );
    assert!(drain(&mut call).is_empty());
}

#[test]
fn a_bad_domain_is_an_error_not_a_panic() {
    let r = Leg::outgoing(
        OutboundCall {
            from_number: "+17125550259".into(),
            hostname: "meta-voip.example.com".into(),
            to_user: "+12195550714".into(),
            domain: "wa meta vc".into(),
            transport: "tls".into(),
            password: None,
            username: None,
            asserted_identity: false,
        },
        setup(Security::Dtls),
        &mut rng(),
    );
    assert!(matches!(r, Err(CallError::BadTarget(_))), "{r:?}");
}
