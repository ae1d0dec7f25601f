//! A WhatsApp call bridged to a PBX, message by message: Meta's captured INVITE on one side, an
//! Asterisk-shaped PBX (PCMU, telephone-event 101) on the other. What each leg sends, and what
//! crosses between them.

use std::time::Instant;

use watrunk_sdp::{Capabilities, Codec, LocalMedia, Security};
use watrunk_sip::transaction::{build_cancel, Peer, TransactionId, TransactionLayer, Transport};
use watrunk_sip::uri::Uri;
use watrunk_sip::{Method, Request, Response};

use crate::tests::{
    ack_for, layer, local_media, meta_invite, response_to, rng, server_transaction,
};
use crate::*;

const PBX_RTP: &str = "198.18.0.20:10000";

/// An Asterisk answer (chan_pjsip shapes: PCMU, telephone-event 101 with fmtp 0-16, ptime 20).
fn asterisk_answer() -> Vec<u8> {
    b"v=0\r\no=- 1733500000 1733500002 IN IP4 198.18.0.20\r\ns=Asterisk\r\n\
c=IN IP4 198.18.0.20\r\nt=0 0\r\nm=audio 10000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
a=ptime:20\r\na=maxptime:150\r\na=sendrecv\r\n"
        .to_vec()
}

/// Asterisk's answer again as a re-offer (its version one up) with `direction` instead of
/// sendrecv: a hold.
fn asterisk_hold(direction: &str) -> Vec<u8> {
    String::from_utf8(asterisk_answer())
        .unwrap()
        .replace("1733500002", "1733500003")
        .replace("a=sendrecv", &format!("a={direction}"))
        .into_bytes()
}

fn pbx_setup() -> LegSetup {
    LegSetup {
        local: Local {
            contact: "<sip:+15550001111@198.18.0.1:5060;transport=udp>".into(),
            user_agent: "watrunk/test".into(),
            warning_host: "sip.example.com".into(),
        },
        capabilities: Capabilities::pbx(
            Security::Plain,
            vec![Codec::Opus, Codec::Pcmu, Codec::Pcma, Codec::TelephoneEvent],
        ),
        policy: LegPolicy::generic(),
    }
}

/// The business number at the PBX, from the WhatsApp caller.
fn pbx_call() -> OutboundCall {
    OutboundCall {
        from_number: "+12195550714".into(),
        hostname: "sip.example.com".into(),
        to_user: "+15550001111".into(),
        domain: "pbx.example.com:5060".into(),
        transport: "udp".into(),
        password: None,
        username: None,
        asserted_identity: false,
    }
}

/// The plain side of the WhatsApp leg's media, as the PBX leg's local description.
fn pbx_local() -> LocalMedia {
    LocalMedia::for_capabilities(&pbx_setup().capabilities, &mut rng())
        .with_candidates(["198.18.0.1:30000".parse().unwrap()])
}

fn drain(bridge: &mut Bridge) -> Vec<BridgeOutput> {
    std::iter::from_fn(|| bridge.poll_output()).collect()
}

fn of(out: &[BridgeOutput], leg: LegId) -> Vec<&CallOutput> {
    out.iter()
        .filter_map(|o| match o {
            BridgeOutput::Leg(l, c) if *l == leg => Some(c),
            _ => None,
        })
        .collect()
}

fn sent(out: &[BridgeOutput], leg: LegId) -> Vec<Request> {
    of(out, leg)
        .into_iter()
        .filter_map(|c| match c {
            CallOutput::Send(r) | CallOutput::Ack(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn responded(out: &[BridgeOutput], leg: LegId) -> Vec<Response> {
    of(out, leg)
        .into_iter()
        .filter_map(|c| match c {
            CallOutput::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

/// Sends a leg's request through a transaction layer (UDP toward the PBX, TLS toward Meta): its
/// id, and the request as sent.
fn send_on(
    bridge: &mut Bridge,
    leg: LegId,
    layer: &mut TransactionLayer,
    req: Request,
) -> (TransactionId, Request) {
    let peer = match leg {
        LegId::Pbx | LegId::Transfer => Peer {
            transport: Transport::Udp,
            addr: "198.18.0.20:5060".parse().unwrap(),
            conn: None,
        },
        LegId::WhatsApp => Peer {
            transport: Transport::Tls,
            addr: "157.240.0.1:5061".parse().unwrap(),
            conn: Some(1),
        },
    };
    let id = layer
        .send_request(Instant::now(), req.clone(), peer)
        .unwrap();
    bridge.leg_mut(leg).request_sent(&req.method, id);
    (id, layer.request(id).unwrap().clone())
}

fn send_to_pbx(
    bridge: &mut Bridge,
    layer: &mut TransactionLayer,
    req: Request,
) -> (TransactionId, Request) {
    send_on(bridge, LegId::Pbx, layer, req)
}

/// Meta's call, ringing at the PBX: the bridge, Meta's INVITE, the PBX's client transaction and
/// the INVITE the PBX got.
fn ringing_at_the_pbx() -> (Bridge, Request, TransactionLayer, TransactionId, Request) {
    let invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let whatsapp = incoming_leg(&invite);
    let mut bridge = Bridge::inbound(whatsapp, pbx_call(), pbx_setup(), &mut rng()).unwrap();
    let out = drain(&mut bridge);
    assert_eq!(
        responded(&out, LegId::WhatsApp)
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [180],
        "Meta hears ringing at once"
    );
    assert!(of(&out, LegId::Pbx).iter().any(|c| matches!(
        c,
        CallOutput::Media(MediaIntent::Prepare {
            security: Security::Plain,
            ..
        })
    )));
    bridge.leg_mut(LegId::Pbx).media_ready(pbx_local());
    let mut out = sent(&drain(&mut bridge), LegId::Pbx);
    assert_eq!(out.len(), 1);
    let mut layer = layer();
    let (tx, pbx_invite) = send_to_pbx(&mut bridge, &mut layer, out.remove(0));
    let out = drain(&mut bridge);
    assert!(out.is_empty(), "{out:?}");
    (bridge, invite, layer, tx, pbx_invite)
}

/// The PBX's 200 with its answer.
fn pbx_ok(pbx_invite: &Request) -> Response {
    let mut ok = response_to(pbx_invite, 200, "pbx1");
    ok.headers.push("Contact", "<sip:pbx@198.18.0.20:5060>");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = asterisk_answer();
    ok
}

/// The call up on both legs: the PBX answered, then WhatsApp did and Meta ACKed. Our 200 to Meta,
/// and the PBX's 200.
fn up_on_both_legs(
    bridge: &mut Bridge,
    invite: &Request,
    tx: TransactionId,
    pbx_invite: &Request,
) -> (Response, Response) {
    let ok = pbx_ok(pbx_invite);
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &ok);
    drain(bridge);
    bridge
        .leg_mut(LegId::WhatsApp)
        .media_ready(local_media(Security::Dtls));
    let our_200 = responded(&drain(bridge), LegId::WhatsApp)[0].clone();
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_ack(Instant::now(), &ack_for(invite));
    drain(bridge);
    (our_200, ok)
}

/// A request of the PBX's in its dialog (it answered with `ok` to `pbx_invite`); a re-INVITE gets
/// `sdp` as its offer.
fn from_the_pbx(
    method: Method,
    cseq: u32,
    ok: &Response,
    pbx_invite: &Request,
    sdp: Option<Vec<u8>>,
) -> Request {
    let mut req = Request::new(
        method.clone(),
        Uri::parse("sip:+15550001111@198.18.0.1:5060").unwrap(),
    );
    req.headers.push(
        "Via",
        format!("SIP/2.0/UDP 198.18.0.20:5060;branch=z9hG4bKpbx{cseq}"),
    );
    req.headers.push("From", ok.headers.get("To").unwrap());
    req.headers
        .push("To", pbx_invite.headers.get("From").unwrap());
    req.headers.push("Call-ID", pbx_invite.call_id().unwrap());
    req.headers.push("CSeq", format!("{cseq} {method}"));
    if let Some(sdp) = sdp {
        req.headers.push("Contact", "<sip:pbx@198.18.0.20:5060>");
        req.headers.push("Content-Type", "application/sdp");
        req.body = sdp;
    }
    req
}

fn incoming_leg(invite: &Request) -> Leg {
    let tx = server_transaction(invite);
    crate::tests::incoming(invite.clone(), tx)
}

#[test]
fn the_pbx_gets_an_ordinary_trunk_invite_for_the_business_number() {
    let (_, _, _, _, invite) = ringing_at_the_pbx();
    assert_eq!(
        invite.uri.to_string(),
        "sip:+15550001111@pbx.example.com:5060;transport=udp"
    );
    let from = invite.from().unwrap();
    assert_eq!(
        from.uri.user_base(),
        Some("+12195550714"),
        "the caller's E.164"
    );
    assert!(invite
        .headers
        .get("Via")
        .unwrap()
        .starts_with("SIP/2.0/UDP"));
    let sdp = String::from_utf8(invite.body.clone()).unwrap();
    assert!(
        sdp.contains("m=audio 30000 RTP/AVP 111 0 8 126\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000\r\n"), "{sdp}");
    assert!(
        sdp.contains("a=rtpmap:126 telephone-event/8000\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("c=IN IP4 198.18.0.1\r\n"), "{sdp}");
    for absent in ["a=ice-", "a=fingerprint", "a=crypto", "a=candidate"] {
        assert!(
            !sdp.contains(absent),
            "plain RTP toward the PBX: {absent}\n{sdp}"
        );
    }
}

#[test]
fn the_pbx_answer_connects_the_media_and_then_meta_gets_its_200() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    // Ringing at the PBX: nothing more for Meta, which heard 180 already.
    let ringing = response_to(&pbx_invite, 180, "pbx1");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &ringing);
    let out = drain(&mut bridge);
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");
    // The PBX answers with PCMU.
    let ok = pbx_ok(&pbx_invite);
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &ok);
    let out = drain(&mut bridge);
    let acks = sent(&out, LegId::Pbx);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method, Method::ACK);
    let plan = out
        .iter()
        .find_map(|o| match o {
            BridgeOutput::Connect(plan) => Some(plan.clone()),
            _ => None,
        })
        .expect("the media is connected to the PBX");
    assert_eq!(plan.remote_rtp, Some(PBX_RTP.parse().unwrap()));
    assert_eq!(plan.codec, Codec::Pcmu);
    assert_eq!((plan.audio_pt, plan.dtmf_pt), (0, Some(101)));
    // Only now does the WhatsApp leg answer: it asks for its media first.
    assert!(of(&out, LegId::WhatsApp).iter().any(|c| matches!(
        c,
        CallOutput::Media(MediaIntent::Prepare {
            security: Security::Dtls,
            ..
        })
    )));
    assert!(responded(&out, LegId::WhatsApp).is_empty());
    bridge
        .leg_mut(LegId::WhatsApp)
        .media_ready(local_media(Security::Dtls));
    let out = drain(&mut bridge);
    let ok = &responded(&out, LegId::WhatsApp)[0];
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("UDP/TLS/RTP/SAVPF 111"));
    assert!(of(&out, LegId::WhatsApp)
        .iter()
        .any(|c| matches!(c, CallOutput::Media(MediaIntent::Start { .. }))));
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_ack(Instant::now(), &ack_for(&invite));
    drain(&mut bridge);
    assert!(bridge.leg(LegId::WhatsApp).is_answered());
    assert!(bridge.leg(LegId::Pbx).is_answered());
}

#[test]
fn a_busy_pbx_is_a_486_to_meta_with_its_q850_cause() {
    let (mut bridge, _, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let busy = response_to(&pbx_invite, 486, "pbx1");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &busy);
    let out = drain(&mut bridge);
    let to_meta = responded(&out, LegId::WhatsApp);
    assert_eq!(to_meta.len(), 1);
    assert_eq!(to_meta[0].status, 486);
    let reason = to_meta[0].headers.get("Reason").unwrap();
    assert!(
        reason.starts_with("Q.850;cause=17;text=\"PBX: "),
        "{reason}"
    );
    assert!(bridge.is_ended());
}

#[test]
fn meta_cancelling_cancels_the_pbx_leg() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    bridge.leg_mut(LegId::Pbx).handle_response(
        Instant::now(),
        tx,
        &response_to(&pbx_invite, 180, "pbx1"),
    );
    drain(&mut bridge);
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_cancel(&build_cancel(&invite));
    let out = drain(&mut bridge);
    let ended = of(&out, LegId::WhatsApp).into_iter().find_map(|c| match c {
        CallOutput::Event(CallEvent::Ended(e)) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(ended.expect("Meta's call ended").status, Some(487));
    assert!(
        of(&out, LegId::Pbx)
            .iter()
            .any(|c| matches!(c, CallOutput::Cancel { invite } if *invite == tx)),
        "{out:?}"
    );
    // The PBX's 487 ends its leg; Meta hears nothing more.
    bridge.leg_mut(LegId::Pbx).handle_response(
        Instant::now(),
        tx,
        &response_to(&pbx_invite, 487, "pbx1"),
    );
    let out = drain(&mut bridge);
    assert!(responded(&out, LegId::WhatsApp).is_empty());
    assert!(bridge.is_ended());
}

#[test]
fn meta_hanging_up_sends_bye_to_the_pbx_and_the_pbx_hanging_up_sends_bye_to_meta() {
    for pbx_first in [false, true] {
        let (mut bridge, invite, mut layer, tx, pbx_invite) = ringing_at_the_pbx();
        let (our_200, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
        if pbx_first {
            let bye = from_the_pbx(Method::BYE, 102, &ok, &pbx_invite, None);
            let bye_tx = server_transaction(&bye);
            bridge.leg_mut(LegId::Pbx).handle_request(bye_tx, &bye);
            let out = drain(&mut bridge);
            assert_eq!(responded(&out, LegId::Pbx)[0].status, 200);
            let to_meta = sent(&out, LegId::WhatsApp);
            assert_eq!(to_meta.len(), 1, "{out:?}");
            assert_eq!(to_meta[0].method, Method::BYE);
            assert!(to_meta[0]
                .headers
                .get("Reason")
                .unwrap()
                .contains("cause=16"));
            // Its Route is Meta's Record-Route, reversed: the dialog is the WhatsApp leg's own.
            let (bye_tx, bye) =
                send_on(&mut bridge, LegId::WhatsApp, &mut layer, to_meta[0].clone());
            bridge.leg_mut(LegId::WhatsApp).handle_response(
                Instant::now(),
                bye_tx,
                &response_to(&bye, 200, "meta"),
            );
            drain(&mut bridge);
            assert_eq!(to_meta[0].call_id(), invite.call_id());
        } else {
            let mut bye = Request::new(
                Method::BYE,
                Uri::parse("sip:+15550001111@sip.example.com").unwrap(),
            );
            bye.headers.push("Via", invite.headers.get("Via").unwrap());
            bye.headers
                .push("From", invite.headers.get("From").unwrap());
            bye.headers.push("To", our_200.headers.get("To").unwrap());
            bye.headers.push("Call-ID", invite.call_id().unwrap());
            bye.headers.push("CSeq", "9990 BYE");
            let bye_tx = server_transaction(&bye);
            bridge.leg_mut(LegId::WhatsApp).handle_request(bye_tx, &bye);
            let out = drain(&mut bridge);
            assert_eq!(responded(&out, LegId::WhatsApp)[0].status, 200);
            let to_pbx = sent(&out, LegId::Pbx);
            assert_eq!(to_pbx.len(), 1, "{out:?}");
            assert_eq!(to_pbx[0].method, Method::BYE);
            assert_eq!(to_pbx[0].call_id(), pbx_invite.call_id());
            assert!(to_pbx[0]
                .headers
                .get("Reason")
                .unwrap()
                .contains("cause=16"));
            let (bye_tx, bye) = send_to_pbx(&mut bridge, &mut layer, to_pbx[0].clone());
            bridge.leg_mut(LegId::Pbx).handle_response(
                Instant::now(),
                bye_tx,
                &response_to(&bye, 200, "pbx1"),
            );
            drain(&mut bridge);
        }
        assert!(bridge.leg(LegId::WhatsApp).is_ended());
        assert!(bridge.leg(LegId::Pbx).is_ended());
    }
}

#[test]
fn a_pbx_hold_stays_on_the_pbx_leg() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    // Asterisk holds with a sendonly re-INVITE from the same address.
    let hold = asterisk_hold("sendonly");
    let reinvite = from_the_pbx(Method::INVITE, 103, &ok, &pbx_invite, Some(hold));
    let re_tx = server_transaction(&reinvite);
    bridge.leg_mut(LegId::Pbx).handle_request(re_tx, &reinvite);
    let out = drain(&mut bridge);
    let answer = &responded(&out, LegId::Pbx)[0];
    assert_eq!(answer.status, 200);
    assert!(String::from_utf8_lossy(&answer.body).contains("a=recvonly"));
    assert!(
        of(&out, LegId::WhatsApp).is_empty(),
        "Meta hears nothing of it: {out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, BridgeOutput::Connect(p) if p.direction == Direction::RecvOnly)),
        "the media learns the PBX holds: {out:?}"
    );
}

#[test]
fn pbx_failures_map_to_what_meta_understands() {
    assert_eq!(whatsapp_status_for(Some(486)), (486, "Busy Here", 17));
    assert_eq!(whatsapp_status_for(Some(404)), (404, "Not Found", 1));
    assert_eq!(whatsapp_status_for(Some(603)), (603, "Decline", 21));
    assert_eq!(whatsapp_status_for(Some(408)).0, 480);
    assert_eq!(
        whatsapp_status_for(Some(488)),
        (488, "Not Acceptable Here", 88)
    );
    assert_eq!(whatsapp_status_for(Some(502)).0, 503);
    assert_eq!(whatsapp_status_for(None), (503, "Service Unavailable", 38));
}

#[test]
fn a_pbx_that_never_answers_is_cancelled_at_the_ring_timeout_and_meta_gets_480() {
    let (mut bridge, _invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let start = Instant::now();
    bridge.ring_until(start + std::time::Duration::from_secs(30));
    assert_eq!(
        bridge.poll_timeout(),
        Some(start + std::time::Duration::from_secs(30))
    );
    bridge.leg_mut(LegId::Pbx).handle_response(
        Instant::now(),
        tx,
        &response_to(&pbx_invite, 180, "pbx1"),
    );
    drain(&mut bridge);
    bridge.handle_timeout(start + std::time::Duration::from_secs(29));
    assert!(drain(&mut bridge).is_empty(), "not yet");
    bridge.handle_timeout(start + std::time::Duration::from_secs(30));
    let out = drain(&mut bridge);
    let to_meta = responded(&out, LegId::WhatsApp);
    assert_eq!(to_meta.len(), 1);
    assert_eq!(to_meta[0].status, 480);
    let reason = to_meta[0].headers.get("Reason").unwrap();
    assert!(reason.starts_with("Q.850;cause=19;"), "{reason}");
    assert!(
        of(&out, LegId::Pbx)
            .iter()
            .any(|c| matches!(c, CallOutput::Cancel { invite } if *invite == tx)),
        "{out:?}"
    );
    assert_eq!(bridge.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn a_malformed_pbx_reoffer_is_refused_on_its_leg_and_changes_nothing() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    let plan_before = bridge.pbx_plan().cloned();
    let bad =
        b"v=0\r\no=- 1 2 IN IP4 198.18.0.20\r\ns=-\r\nm=audio notaport RTP/AVP 0\r\n".to_vec();
    let reinvite = from_the_pbx(Method::INVITE, 104, &ok, &pbx_invite, Some(bad));
    let re_tx = server_transaction(&reinvite);
    bridge.leg_mut(LegId::Pbx).handle_request(re_tx, &reinvite);
    let out = drain(&mut bridge);
    let refused = &responded(&out, LegId::Pbx)[0];
    assert_eq!(refused.status, 488, "{refused:?}");
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, BridgeOutput::Connect(_))),
        "the media is left as it was: {out:?}"
    );
    assert_eq!(bridge.pbx_plan().cloned(), plan_before);
    assert!(bridge.leg(LegId::Pbx).is_answered());
    assert!(bridge.leg(LegId::WhatsApp).is_answered());
}

/// The PBX's INVITE to the WhatsApp user +12195550714 at us, with Asterisk's PCMU offer and
/// `extra` headers.
fn pbx_invite_to_whatsapp(call_id: &str, extra: &[(&str, &str)]) -> Request {
    let mut invite = Request::new(
        Method::INVITE,
        Uri::parse("sip:+12195550714@198.18.0.1:5060").unwrap(),
    );
    invite.headers.push(
        "Via",
        format!("SIP/2.0/UDP 198.18.0.20:5060;branch=z9hG4bK{call_id}"),
    );
    invite.headers.push("Max-Forwards", "70");
    invite
        .headers
        .push("From", "\"Agent 201\" <sip:201@198.18.0.20>;tag=ast1");
    invite.headers.push("To", "<sip:+12195550714@198.18.0.1>");
    invite
        .headers
        .push("Call-ID", format!("{call_id}@198.18.0.20"));
    invite.headers.push("CSeq", "102 INVITE");
    invite.headers.push("Contact", "<sip:201@198.18.0.20:5060>");
    for (name, value) in extra {
        invite.headers.push(name, *value);
    }
    invite.headers.push("Content-Type", "application/sdp");
    invite.body = asterisk_answer();
    invite
}

/// The PBX calls a WhatsApp user: Asterisk's INVITE (its PCMU offer) to +12195550714 at us.
fn pbx_calls_whatsapp() -> (Bridge, Request, TransactionLayer) {
    let invite = pbx_invite_to_whatsapp("pbx-call-1", &[]);
    let tx = server_transaction(&invite);
    let pbx = Leg::incoming(Instant::now(), invite.clone(), tx, pbx_setup(), &mut rng()).unwrap();
    let meta = OutboundCall {
        from_number: "+15550001111".into(),
        hostname: "sip.example.com".into(),
        to_user: "+12195550714".into(),
        domain: "wa.meta.vc".into(),
        transport: "tls".into(),
        password: Some("pw".into()),
        username: None,
        asserted_identity: false,
    };
    let bridge = Bridge::outbound(
        pbx,
        pbx_local(),
        meta,
        crate::tests::setup(Security::Sdes),
        &mut rng(),
    )
    .unwrap();
    (bridge, invite, layer())
}

#[test]
fn a_pbx_call_connects_its_offer_first_then_calls_meta() {
    let (mut bridge, _invite, mut layer) = pbx_calls_whatsapp();
    assert_eq!(bridge.direction(), CallDirection::Outbound);
    let out = drain(&mut bridge);
    let BridgeOutput::Connect(plan) = &out[0] else {
        panic!("the PBX's media is connected before the WhatsApp leg's is made: {out:?}");
    };
    assert_eq!(plan.remote_rtp, Some(PBX_RTP.parse().unwrap()));
    assert_eq!((plan.codec, plan.audio_pt), (Codec::Pcmu, 0));
    assert!(
        responded(&out, LegId::Pbx).is_empty(),
        "no 180 before Meta rings: {out:?}"
    );
    assert!(matches!(
        of(&out, LegId::WhatsApp)[..],
        [CallOutput::Media(MediaIntent::Prepare {
            security: Security::Sdes,
            ..
        })]
    ));
    bridge
        .leg_mut(LegId::WhatsApp)
        .media_ready(local_media(Security::Sdes));
    let invite = sent(&drain(&mut bridge), LegId::WhatsApp).remove(0);
    assert_eq!(
        invite.uri.to_string(),
        "sip:+12195550714@wa.meta.vc;transport=tls"
    );
    assert_eq!(
        invite.from().unwrap().uri.user_base(),
        Some("+15550001111"),
        "from the business number"
    );
    let (tx, sent_invite) = send_on(&mut bridge, LegId::WhatsApp, &mut layer, invite);

    // Meta rings: now the PBX hears 180.
    bridge.leg_mut(LegId::WhatsApp).handle_response(
        Instant::now(),
        tx,
        &response_to(&sent_invite, 180, "m1"),
    );
    let out = drain(&mut bridge);
    let to_pbx = responded(&out, LegId::Pbx);
    assert_eq!(to_pbx.len(), 1);
    assert_eq!(to_pbx[0].status, 180);

    // Meta answers: ACK to Meta, and the PBX gets its 200 with our plain side in PCMU.
    let mut ok = response_to(&sent_invite, 200, "m1");
    ok.headers
        .push("Contact", "<sip:+12195550714@wa.meta.vc;transport=tls>");
    ok.body = crate::tests::meta_sdes_answer(&sent_invite);
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_response(Instant::now(), tx, &ok);
    let out = drain(&mut bridge);
    assert_eq!(sent(&out, LegId::WhatsApp)[0].method, Method::ACK);
    let to_pbx = responded(&out, LegId::Pbx);
    assert_eq!(to_pbx.len(), 1, "{out:?}");
    assert_eq!(to_pbx[0].status, 200);
    let sdp = String::from_utf8(to_pbx[0].body.clone()).unwrap();
    assert!(sdp.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{sdp}");
    assert!(sdp.contains("c=IN IP4 198.18.0.1\r\n"), "{sdp}");
    assert!(bridge.leg(LegId::WhatsApp).is_answered());
}

/// The PBX's call with its INVITE to Meta sent, and Meta's `status` to it: the INVITE's
/// transaction.
fn meta_answers_the_pbx_call(
    bridge: &mut Bridge,
    layer: &mut TransactionLayer,
    status: u16,
) -> TransactionId {
    drain(bridge);
    bridge
        .leg_mut(LegId::WhatsApp)
        .media_ready(local_media(Security::Sdes));
    let invite = sent(&drain(bridge), LegId::WhatsApp).remove(0);
    let (tx, sent_invite) = send_on(bridge, LegId::WhatsApp, layer, invite);
    bridge.leg_mut(LegId::WhatsApp).handle_response(
        Instant::now(),
        tx,
        &response_to(&sent_invite, status, "m1"),
    );
    tx
}

#[test]
fn meta_busy_is_the_pbx_calls_486_with_its_cause() {
    let (mut bridge, _invite, mut layer) = pbx_calls_whatsapp();
    meta_answers_the_pbx_call(&mut bridge, &mut layer, 486);
    let out = drain(&mut bridge);
    let to_pbx = responded(&out, LegId::Pbx);
    assert_eq!(to_pbx.len(), 1, "{out:?}");
    assert_eq!(to_pbx[0].status, 486);
    let reason = to_pbx[0].headers.get("Reason").unwrap();
    assert!(reason.starts_with("Q.850;cause=17;"), "{reason}");
    assert!(bridge.is_ended());
}

#[test]
fn the_pbx_cancelling_cancels_the_call_to_meta() {
    let (mut bridge, invite, mut layer) = pbx_calls_whatsapp();
    let tx = meta_answers_the_pbx_call(&mut bridge, &mut layer, 180);
    drain(&mut bridge);
    let cancel = build_cancel(&invite);
    bridge.leg_mut(LegId::Pbx).handle_cancel(&cancel);
    let out = drain(&mut bridge);
    assert!(
        of(&out, LegId::WhatsApp)
            .iter()
            .any(|c| matches!(c, CallOutput::Cancel { invite } if *invite == tx)),
        "{out:?}"
    );
}

#[test]
fn a_silent_pbx_ends_the_call_unless_it_holds_inactive() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    // FreeSWITCH's inactive hold: it sends nothing, and that is no reason to end the call.
    let hold = asterisk_hold("inactive");
    let reinvite = from_the_pbx(Method::INVITE, 103, &ok, &pbx_invite, Some(hold));
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&reinvite), &reinvite);
    drain(&mut bridge);
    let quiet = std::time::Duration::from_secs(60);
    assert!(!bridge.pbx_media_timeout(quiet), "on hold");
    assert!(drain(&mut bridge).is_empty());
    // Resumed, then silent: both legs get a BYE saying why.
    let resume = from_the_pbx(
        Method::INVITE,
        104,
        &ok,
        &pbx_invite,
        Some(asterisk_answer()),
    );
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&resume), &resume);
    drain(&mut bridge);
    assert!(bridge.pbx_media_timeout(quiet));
    let out = drain(&mut bridge);
    for leg in [LegId::Pbx, LegId::WhatsApp] {
        let byes = sent(&out, leg);
        assert_eq!(byes.len(), 1, "{leg:?}: {out:?}");
        assert_eq!(byes[0].method, Method::BYE);
        let reason = byes[0].headers.get("Reason").unwrap();
        assert!(
            reason.starts_with("Q.850;cause=41;") && reason.contains("no RTP for 60 s"),
            "{reason}"
        );
    }
}

/// Asterisk with `100rel=yes` sees our `Supported: 100rel` and rings reliably: each new RSeq gets
/// one PRACK in the early dialog (a retransmission none), Meta hears nothing more, and the
/// dialog's later requests number above the PRACKs.
#[test]
fn the_pbxs_reliable_ringing_gets_one_prack_per_rseq_on_the_pbx_leg_only() {
    let (mut bridge, invite, mut layer, tx, pbx_invite) = ringing_at_the_pbx();
    assert_eq!(pbx_invite.headers.get("Supported"), Some("100rel"));
    let mut ringing = response_to(&pbx_invite, 180, "pbx1");
    ringing.headers.push("Require", "100rel");
    ringing.headers.push("RSeq", "4711");
    ringing
        .headers
        .push("Contact", "<sip:pbx@198.18.0.20:5060>");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &ringing);
    let out = drain(&mut bridge);
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");
    let pracks = sent(&out, LegId::Pbx);
    assert_eq!(pracks.len(), 1, "{out:?}");
    let prack = &pracks[0];
    assert_eq!(prack.method, Method::PRACK);
    assert_eq!(prack.uri.to_string(), "sip:pbx@198.18.0.20:5060");
    let invite_seq = pbx_invite
        .headers
        .get("CSeq")
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(
        prack.headers.get("RAck"),
        Some(format!("4711 {invite_seq} INVITE").as_str())
    );
    assert!(prack.to().unwrap().tag() == Some("pbx1"));
    let prack_seq: u32 = prack
        .headers
        .get("CSeq")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, _) = send_to_pbx(&mut bridge, &mut layer, prack.clone());
    // The same 180 again: no second PRACK.
    bridge
        .leg_mut(LegId::Pbx)
        .handle_response(Instant::now(), tx, &ringing);
    assert!(sent(&drain(&mut bridge), LegId::Pbx).is_empty());
    // Answered, then Meta hangs up: the BYE to the PBX numbers above the PRACK.
    let (_, _) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    bridge.hang_up("test", 16);
    let bye = sent(&drain(&mut bridge), LegId::Pbx)
        .into_iter()
        .find(|r| r.method == Method::BYE)
        .expect("a BYE to the PBX");
    let bye_seq: u32 = bye
        .headers
        .get("CSeq")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bye_seq > prack_seq, "BYE {bye_seq} after PRACK {prack_seq}");
}

#[test]
fn a_key_by_info_from_the_pbx_is_rfc_4733_toward_meta_and_a_bad_one_is_refused() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    let info = |cseq: u32, content_type: &str, body: &str| {
        let mut req = from_the_pbx(Method::INFO, cseq, &ok, &pbx_invite, None);
        req.headers.push("Content-Type", content_type);
        req.body = body.as_bytes().to_vec();
        req
    };
    for (cseq, content_type, body, status, key) in [
        (
            110,
            "application/dtmf-relay",
            "Signal=10\r\nDuration=160\r\n",
            200,
            Some("*"),
        ),
        (111, "application/dtmf", "9", 200, Some("9")),
        (112, "application/dtmf-relay", "Duration=160\r\n", 400, None),
        (113, "application/dtmf", "x", 400, None),
    ] {
        let req = info(cseq, content_type, body);
        bridge
            .leg_mut(LegId::Pbx)
            .handle_request(server_transaction(&req), &req);
        let out = drain(&mut bridge);
        assert_eq!(responded(&out, LegId::Pbx)[0].status, status, "{body:?}");
        let sent_keys: Vec<&str> = of(&out, LegId::WhatsApp)
            .into_iter()
            .filter_map(|c| match c {
                CallOutput::Media(MediaIntent::SendDtmf { keys }) => Some(keys.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(sent_keys, key.into_iter().collect::<Vec<_>>(), "{body:?}");
    }
}

#[test]
fn a_stray_ack_leaves_our_offer_waiting_for_the_right_one() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    // A connected-line re-INVITE without SDP: our 200 carries an offer.
    let reinvite = from_the_pbx(Method::INVITE, 120, &ok, &pbx_invite, None);
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&reinvite), &reinvite);
    let our_offer = responded(&drain(&mut bridge), LegId::Pbx)[0].clone();
    assert_eq!(our_offer.status, 200);
    assert!(!our_offer.body.is_empty());
    // An ACK of another INVITE (a 491's, sent with a new branch): not the answer.
    let stray = from_the_pbx(Method::ACK, 119, &ok, &pbx_invite, None);
    bridge
        .leg_mut(LegId::Pbx)
        .handle_ack(Instant::now(), &stray);
    let out = drain(&mut bridge);
    assert!(sent(&out, LegId::Pbx).is_empty(), "no BYE: {out:?}");
    // The right ACK carries the answer.
    let ack = from_the_pbx(Method::ACK, 120, &ok, &pbx_invite, Some(asterisk_answer()));
    bridge.leg_mut(LegId::Pbx).handle_ack(Instant::now(), &ack);
    let out = drain(&mut bridge);
    assert!(sent(&out, LegId::Pbx).is_empty(), "no BYE: {out:?}");
    assert!(bridge.leg(LegId::Pbx).is_answered());
}

/// The PBX's REFER on an answered call: 202 and NOTIFY 100 on its leg, a `Transfer` for the
/// owner; the new leg's answer moves the media, ends the old leg (NOTIFY 200, then BYE) without
/// touching Meta; Meta's BYE then ends the new leg.
#[test]
fn a_refer_moves_the_pbx_side_to_the_new_leg_and_meta_hears_nothing() {
    let (mut bridge, invite, mut layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (our_200, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    let mut refer = from_the_pbx(Method::REFER, 130, &ok, &pbx_invite, None);
    refer.headers.push("Refer-To", "<sip:202@198.18.0.20:5060>");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&refer), &refer);
    let out = drain(&mut bridge);
    assert_eq!(responded(&out, LegId::Pbx)[0].status, 202);
    let notify = &sent(&out, LegId::Pbx)[0];
    assert_eq!(notify.method, Method::NOTIFY);
    assert_eq!(notify.headers.get("Event"), Some("refer"));
    assert_eq!(
        String::from_utf8_lossy(&notify.body),
        "SIP/2.0 100 Trying\r\n"
    );
    let target = out
        .iter()
        .find_map(|o| match o {
            BridgeOutput::Transfer(t) => Some(t.to_string()),
            _ => None,
        })
        .expect("a transfer for the owner");
    assert_eq!(target, "sip:202@198.18.0.20:5060");
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");

    // The owner's new leg: its INVITE, answered by 202 with its own media.
    let mut call = pbx_call();
    call.to_user = "202".into();
    let leg = Leg::outgoing(call, pbx_setup(), &mut rng()).unwrap();
    bridge.start_transfer(leg);
    let out = drain(&mut bridge);
    assert!(of(&out, LegId::Transfer)
        .iter()
        .any(|c| matches!(c, CallOutput::Media(MediaIntent::Prepare { .. }))));
    bridge.leg_mut(LegId::Transfer).media_ready(pbx_local());
    let new_invite = sent(&drain(&mut bridge), LegId::Transfer).remove(0);
    let (new_tx, new_invite) = send_on(&mut bridge, LegId::Transfer, &mut layer, new_invite);
    let mut answer = pbx_ok(&new_invite);
    answer.body = String::from_utf8(asterisk_answer())
        .unwrap()
        .replace("m=audio 10000", "m=audio 12000")
        .into_bytes();
    bridge
        .leg_mut(LegId::Transfer)
        .handle_response(Instant::now(), new_tx, &answer);
    let out = drain(&mut bridge);
    let plan = out
        .iter()
        .find_map(|o| match o {
            BridgeOutput::Connect(p) => Some(p.clone()),
            _ => None,
        })
        .expect("the media moves to 202");
    assert_eq!(plan.remote_rtp, Some("198.18.0.20:12000".parse().unwrap()));
    let to_old = sent(&out, LegId::Pbx);
    assert_eq!(
        to_old
            .iter()
            .map(|r| r.method.to_string())
            .collect::<Vec<_>>(),
        ["NOTIFY", "BYE"]
    );
    assert_eq!(
        String::from_utf8_lossy(&to_old[0].body),
        "SIP/2.0 200 OK\r\n"
    );
    assert!(to_old[0]
        .headers
        .get("Subscription-State")
        .unwrap()
        .starts_with("terminated"));
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");

    // The old leg's BYE answered: the call goes on, and the new leg takes the PBX leg's place.
    let (bye_tx, old_bye) = send_on(&mut bridge, LegId::Pbx, &mut layer, to_old[1].clone());
    bridge.leg_mut(LegId::Pbx).handle_response(
        Instant::now(),
        bye_tx,
        &response_to(&old_bye, 200, "pbx1"),
    );
    let out = drain(&mut bridge);
    let promoted = out.iter().find_map(|o| match o {
        BridgeOutput::Promoted(call_id) => Some(call_id.clone()),
        _ => None,
    });
    assert_eq!(promoted.as_deref(), Some(new_invite.call_id().unwrap()));
    assert!(bridge.leg(LegId::WhatsApp).is_answered());
    assert!(
        bridge.leg(LegId::Pbx).is_answered(),
        "202's leg is the PBX leg now"
    );

    // 202 transfers the user on (a second REFER, in its own dialog): a transfer like the first.
    let mut again = from_the_pbx(Method::REFER, 140, &answer, &new_invite, None);
    again.headers.push("Refer-To", "<sip:203@198.18.0.20:5060>");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&again), &again);
    let out = drain(&mut bridge);
    assert_eq!(responded(&out, LegId::Pbx)[0].status, 202);
    assert_eq!(
        String::from_utf8_lossy(&sent(&out, LegId::Pbx)[0].body),
        "SIP/2.0 100 Trying\r\n"
    );
    assert!(out.iter().any(
        |o| matches!(o, BridgeOutput::Transfer(t) if t.to_string() == "sip:203@198.18.0.20:5060")
    ));
    let mut bye = Request::new(
        Method::BYE,
        Uri::parse("sip:+15550001111@sip.example.com").unwrap(),
    );
    bye.headers.push("Via", invite.headers.get("Via").unwrap());
    bye.headers
        .push("From", invite.headers.get("From").unwrap());
    bye.headers.push("To", our_200.headers.get("To").unwrap());
    bye.headers.push("Call-ID", invite.call_id().unwrap());
    bye.headers.push("CSeq", "9990 BYE");
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_request(server_transaction(&bye), &bye);
    let out = drain(&mut bridge);
    let to_new = sent(&out, LegId::Pbx);
    assert_eq!(to_new.len(), 1, "{out:?}");
    assert_eq!(to_new[0].method, Method::BYE);
}

#[test]
fn a_refer_elsewhere_or_before_the_answer_is_declined_in_a_notify() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    let mut refer = from_the_pbx(Method::REFER, 131, &ok, &pbx_invite, None);
    refer.headers.push("Refer-To", "<sip:+4420@evil.example>");
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&refer), &refer);
    drain(&mut bridge);
    // The owner finds the target is not the PBX.
    bridge.refuse_transfer(403, "Forbidden (transfers go to the PBX only)");
    let notify = &sent(&drain(&mut bridge), LegId::Pbx)[0];
    assert_eq!(
        String::from_utf8_lossy(&notify.body),
        "SIP/2.0 403 Forbidden (transfers go to the PBX only)\r\n"
    );
    // No Refer-To: 400.
    let bad = from_the_pbx(Method::REFER, 132, &ok, &pbx_invite, None);
    bridge
        .leg_mut(LegId::Pbx)
        .handle_request(server_transaction(&bad), &bad);
    assert_eq!(responded(&drain(&mut bridge), LegId::Pbx)[0].status, 400);
}

/// The PBX's `invite` to a WhatsApp user taken by a PBX leg and answered: the leg, and our 200.
fn answered_pbx_invite(invite: &Request) -> (Leg, Response) {
    let mut leg = Leg::incoming(
        Instant::now(),
        invite.clone(),
        server_transaction(invite),
        pbx_setup(),
        &mut rng(),
    )
    .unwrap();
    leg.media_ready(pbx_local());
    leg.answer().unwrap();
    let ok = std::iter::from_fn(|| leg.poll_output())
        .find_map(|o| match o {
            CallOutput::Respond { response, .. } if response.status == 200 => Some(response),
            _ => None,
        })
        .expect("our 200");
    (leg, ok)
}

#[test]
fn a_pbx_invite_requiring_session_timers_gets_them_in_our_200() {
    // FreeSWITCH with sip_require_timer.
    let invite = pbx_invite_to_whatsapp(
        "pbx-timer",
        &[
            ("Require", "timer"),
            ("Session-Expires", "90;refresher=uac"),
        ],
    );
    let (_, ok) = answered_pbx_invite(&invite);
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
}

#[test]
fn the_pbx_invite_asserts_the_caller_when_configured() {
    let invite = meta_invite("meta-invite-user-initiated-digest-01.sip");
    let mut call = pbx_call();
    call.asserted_identity = true;
    let mut bridge = Bridge::inbound(incoming_leg(&invite), call, pbx_setup(), &mut rng()).unwrap();
    drain(&mut bridge);
    bridge.leg_mut(LegId::Pbx).media_ready(pbx_local());
    let pbx_invite = sent(&drain(&mut bridge), LegId::Pbx).remove(0);
    assert_eq!(
        pbx_invite.headers.get("P-Asserted-Identity"),
        Some("<sip:+12195550714@sip.example.com>")
    );
    assert!(
        ringing_at_the_pbx()
            .4
            .headers
            .get("P-Asserted-Identity")
            .is_none(),
        "not by default"
    );
}

#[test]
fn an_invite_with_replaces_from_the_pbx_takes_the_pbx_legs_place_and_meta_hears_nothing() {
    let (mut bridge, invite, _layer, tx, pbx_invite) = ringing_at_the_pbx();
    let (_, _ok) = up_on_both_legs(&mut bridge, &invite, tx, &pbx_invite);
    let our_tag = pbx_invite
        .from()
        .and_then(|f| f.tag().map(str::to_string))
        .unwrap();
    let dialog = |local_tag: &str, remote_tag: &str| watrunk_sip::dialog::DialogId {
        call_id: pbx_invite.call_id().unwrap().to_string(),
        local_tag: local_tag.into(),
        remote_tag: remote_tag.into(),
    };
    // RFC 3891 §3: to-tag is ours, from-tag the PBX's; tags the other way round match nothing.
    assert!(bridge.replaceable(&dialog(&our_tag, "pbx1")));
    assert!(!bridge.replaceable(&dialog("pbx1", &our_tag)));

    // The phone the agent consulted (202) takes the call over: its INVITE, with its own media.
    let replaces = format!(
        "{};to-tag={our_tag};from-tag=pbx1",
        pbx_invite.call_id().unwrap()
    );
    let mut new_invite = pbx_invite_to_whatsapp("replacing-1", &[("Replaces", &replaces)]);
    new_invite.body = String::from_utf8(asterisk_answer())
        .unwrap()
        .replace("m=audio 10000", "m=audio 12000")
        .into_bytes();
    let new_tx = server_transaction(&new_invite);
    let leg = Leg::incoming(
        Instant::now(),
        new_invite.clone(),
        new_tx,
        pbx_setup(),
        &mut rng(),
    )
    .unwrap();
    bridge.replace_pbx_side(leg);
    let out = drain(&mut bridge);
    assert!(of(&out, LegId::Transfer)
        .iter()
        .any(|c| matches!(c, CallOutput::Media(MediaIntent::Prepare { .. }))));
    assert!(
        !bridge.replaceable(&dialog(&our_tag, "pbx1")),
        "one at a time"
    );
    bridge.leg_mut(LegId::Transfer).media_ready(pbx_local());
    let mut out = drain(&mut bridge);
    let answered = responded(&out, LegId::Transfer);
    assert_eq!(answered.last().map(|r| r.status), Some(200), "{out:?}");
    if !out.iter().any(|o| matches!(o, BridgeOutput::Connect(_))) {
        bridge
            .leg_mut(LegId::Transfer)
            .handle_ack(Instant::now(), &ack_for(&new_invite));
        out = drain(&mut bridge);
    }
    let plan = out
        .iter()
        .find_map(|o| match o {
            BridgeOutput::Connect(p) => Some(p.clone()),
            _ => None,
        })
        .expect("the media moves to the replacing phone");
    assert_eq!(plan.remote_rtp, Some("198.18.0.20:12000".parse().unwrap()));
    let to_old = sent(&out, LegId::Pbx);
    assert_eq!(
        to_old
            .iter()
            .map(|r| r.method.to_string())
            .collect::<Vec<_>>(),
        ["BYE"],
        "the replaced leg gets a BYE and no NOTIFY: there was no REFER"
    );
    assert!(of(&out, LegId::WhatsApp).is_empty(), "{out:?}");
    assert!(bridge.leg(LegId::WhatsApp).is_answered());
}

#[test]
fn a_pbx_that_makes_us_the_refresher_gets_a_refresh_every_half_interval() {
    let mut invite = pbx_invite_to_whatsapp(
        "pbx-timer-uas",
        &[
            ("Supported", "timer"),
            ("Session-Expires", "90;refresher=uas"),
            ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"),
        ],
    );
    invite.headers.push("Min-SE", "90");
    let (mut leg, ok) = answered_pbx_invite(&invite);
    assert_eq!(ok.headers.get("Session-Expires"), Some("90;refresher=uas"));
    assert_eq!(leg.poll_timeout(), None, "the timer starts with the dialog");
    let t0 = Instant::now();
    leg.handle_ack(t0, &ack_for(&invite));
    let due = leg.poll_timeout().expect("a refresh is due");
    assert_eq!(due, t0 + std::time::Duration::from_secs(45));
    let sent_now = |leg: &mut Leg| -> Vec<Request> {
        std::iter::from_fn(|| leg.poll_output())
            .filter_map(|o| match o {
                CallOutput::Send(r) => Some(r),
                _ => None,
            })
            .collect()
    };
    leg.handle_timeout(due - std::time::Duration::from_secs(1));
    assert!(sent_now(&mut leg).is_empty(), "not before it is due");
    leg.handle_timeout(due);
    let refresh = sent_now(&mut leg);
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].method, Method::UPDATE, "the PBX allows UPDATE");
    assert_eq!(
        refresh[0].headers.get("Session-Expires"),
        Some("90;refresher=uac"),
        "we refresh, and stay the refresher"
    );
    assert_eq!(refresh[0].headers.get("Supported"), Some("timer"));
    assert!(String::from_utf8_lossy(&refresh[0].body).contains("a=sendrecv"));
    assert_eq!(
        leg.poll_timeout(),
        Some(due + std::time::Duration::from_secs(45)),
        "the next one half an interval on"
    );
}

/// A PBX leg made from the PBX's `invite`, taken at `t0`.
fn pbx_leg(t0: Instant, invite: &Request) -> Leg {
    Leg::incoming(
        t0,
        invite.clone(),
        server_transaction(invite),
        pbx_setup(),
        &mut rng(),
    )
    .unwrap()
}

#[test]
fn a_pbx_invite_requiring_100rel_gets_a_reliable_180_until_its_prack() {
    // Asterisk with 100rel=required.
    let invite = pbx_invite_to_whatsapp("pbx-100rel", &[("Require", "100rel")]);
    let t0 = Instant::now();
    let mut leg = pbx_leg(t0, &invite);
    let responses = |leg: &mut Leg| -> Vec<Response> {
        std::iter::from_fn(|| leg.poll_output())
            .filter_map(|o| match o {
                CallOutput::Respond { response, .. } => Some(response),
                _ => None,
            })
            .collect()
    };
    let ringing = responses(&mut leg).remove(0);
    assert_eq!(ringing.status, 180);
    assert_eq!(ringing.headers.get("Require"), Some("100rel"));
    let rseq: u32 = ringing.headers.get("RSeq").unwrap().parse().unwrap();
    assert!((1..=0x7fff_ffff).contains(&rseq));
    let ms = std::time::Duration::from_millis;
    assert_eq!(leg.poll_timeout(), Some(t0 + ms(500)));
    leg.handle_timeout(t0 + ms(500));
    assert_eq!(
        responses(&mut leg)[0].headers.get("RSeq"),
        Some(&*rseq.to_string())
    );
    assert_eq!(leg.poll_timeout(), Some(t0 + ms(1500)), "T1, doubling");

    let to_tag = ringing
        .to()
        .and_then(|t| t.tag().map(str::to_string))
        .unwrap();
    let prack = |rack: String| {
        let mut prack = Request::new(
            Method::PRACK,
            Uri::parse("sip:+15550001111@198.18.0.1").unwrap(),
        );
        prack
            .headers
            .push("Via", "SIP/2.0/UDP 198.18.0.20:5060;branch=z9hG4bKprack");
        prack
            .headers
            .push("From", invite.headers.get("From").unwrap());
        prack
            .headers
            .push("To", format!("<sip:+12195550714@198.18.0.1>;tag={to_tag}"));
        prack.headers.push("Call-ID", invite.call_id().unwrap());
        prack.headers.push("CSeq", "103 PRACK");
        prack.headers.push("RAck", rack);
        prack
    };
    let wrong = prack(format!("{} 102 INVITE", rseq.wrapping_add(1)));
    leg.handle_request(server_transaction(&wrong), &wrong);
    assert_eq!(responses(&mut leg)[0].status, 481);
    let right = prack(format!("{rseq} 102 INVITE"));
    leg.handle_request(server_transaction(&right), &right);
    assert_eq!(responses(&mut leg)[0].status, 200);
    assert_eq!(leg.poll_timeout(), None, "no more retransmissions");
    assert!(leg.is_ringing());

    // A PRACK that crosses our 200 (Meta answered at once) is still the 180's: 200, once.
    let mut leg = pbx_leg(t0, &invite);
    let ringing = responses(&mut leg).remove(0);
    let rseq = ringing.headers.get("RSeq").unwrap().to_string();
    let to_tag = ringing
        .to()
        .and_then(|t| t.tag().map(str::to_string))
        .unwrap();
    leg.media_ready(pbx_local());
    leg.answer().unwrap();
    assert_eq!(responses(&mut leg).last().map(|r| r.status), Some(200));
    let mut crossing = prack(format!("{rseq} 102 INVITE"));
    crossing
        .headers
        .set("To", format!("<sip:+12195550714@198.18.0.1>;tag={to_tag}"));
    leg.handle_request(server_transaction(&crossing), &crossing);
    assert_eq!(responses(&mut leg)[0].status, 200);
    leg.handle_request(server_transaction(&crossing), &crossing);
    assert_eq!(
        responses(&mut leg)[0].status,
        481,
        "a second time it names nothing"
    );
}

#[test]
fn a_reliable_180_never_pracked_refuses_the_invite_and_meta_never_gets_one() {
    let invite = pbx_invite_to_whatsapp("pbx-100rel-lost", &[("Require", "100rel")]);
    let t0 = Instant::now();
    let mut leg = pbx_leg(t0, &invite);
    leg.handle_timeout(t0 + std::time::Duration::from_secs(32));
    let last = std::iter::from_fn(|| leg.poll_output())
        .filter_map(|o| match o {
            CallOutput::Respond { response, .. } => Some(response.status),
            _ => None,
        })
        .last();
    assert_eq!(last, Some(500));
    assert!(leg.is_ended());

    // The WhatsApp leg takes no reliable provisionals (Meta's INVITEs never ask).
    let mut meta = meta_invite("meta-invite-user-initiated-digest-01.sip");
    meta.headers.push("Require", "100rel");
    let refusal = Leg::incoming(
        t0,
        meta.clone(),
        server_transaction(&meta),
        crate::tests::setup(Security::Dtls),
        &mut rng(),
    )
    .unwrap_err();
    assert_eq!(refusal.status, 420);
    assert_eq!(refusal.headers.get("Unsupported"), Some("100rel"));
}

#[test]
fn with_local_ringback_the_pbx_gets_183_with_our_answer_when_meta_rings_and_the_same_in_the_200() {
    let (bridge, _invite, mut layer) = pbx_calls_whatsapp();
    let mut bridge = bridge.with_local_ringback();
    drain(&mut bridge);
    bridge
        .leg_mut(LegId::WhatsApp)
        .media_ready(local_media(Security::Sdes));
    let invite = sent(&drain(&mut bridge), LegId::WhatsApp).remove(0);
    let (tx, sent_invite) = send_on(&mut bridge, LegId::WhatsApp, &mut layer, invite);
    bridge.leg_mut(LegId::WhatsApp).handle_response(
        Instant::now(),
        tx,
        &response_to(&sent_invite, 180, "m1"),
    );
    let out = drain(&mut bridge);
    let plan = out
        .iter()
        .find_map(|o| match o {
            BridgeOutput::Ringback(p) => Some(p.clone()),
            _ => None,
        })
        .expect("a ring tone toward the PBX");
    assert_eq!(plan.remote_rtp, Some(PBX_RTP.parse().unwrap()));
    assert_eq!((plan.codec, plan.audio_pt), (Codec::Pcmu, 0));
    let to_pbx = responded(&out, LegId::Pbx);
    assert_eq!(
        to_pbx.iter().map(|r| r.status).collect::<Vec<_>>(),
        [183],
        "183 instead of 180"
    );
    let early = String::from_utf8(to_pbx[0].body.clone()).unwrap();
    assert!(early.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{early}");

    let mut ok = response_to(&sent_invite, 200, "m1");
    ok.headers
        .push("Contact", "<sip:+12195550714@wa.meta.vc;transport=tls>");
    ok.body = crate::tests::meta_sdes_answer(&sent_invite);
    bridge
        .leg_mut(LegId::WhatsApp)
        .handle_response(Instant::now(), tx, &ok);
    let to_pbx = responded(&drain(&mut bridge), LegId::Pbx);
    assert_eq!(to_pbx[0].status, 200);
    assert_eq!(
        String::from_utf8(to_pbx[0].body.clone()).unwrap(),
        early,
        "the 200 repeats the 183's answer (RFC 3261 §13.2.1)"
    );
}
