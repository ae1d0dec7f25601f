//! A connectivity check with a wrong MESSAGE-INTEGRITY is ignored; the same check signed with our
//! ICE password is answered (the control). The checks are built with the `stun` crate, sent from a
//! plain UDP socket to the shared media port of a call that waits for its peer.

use std::net::SocketAddr;
use std::time::Duration;

use stun::agent::TransactionId;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use watrunk_media::{IceRole, Identity, MediaConfig, MediaSocket, Prepared};
use watrunk_sdp::{RemoteCandidate, RemoteIce};

mod common;
use webrtc_ice::control::AttrControlling;
use webrtc_ice::priority::PriorityAttr;

const PEER_UFRAG: &str = "peer";
const PEER_PWD: &str = "peerpasswordpeerpassword";

fn binding_request(username: &str, password: &str) -> Message {
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(
            stun::attributes::ATTR_USERNAME,
            username.to_string(),
        )),
        Box::new(AttrControlling(7)),
        Box::new(PriorityAttr(2_130_706_431)),
        Box::new(MessageIntegrity::new_short_term_integrity(
            password.to_string(),
        )),
        Box::new(FINGERPRINT),
    ];
    m.build(&setters).unwrap();
    m
}

/// The response to `request` that reaches `peer` within `wait`, if any (the agent's own checks to
/// us are skipped).
async fn response_to(peer: &UdpSocket, request: &Message, wait: Duration) -> Option<Message> {
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, peer.recv(&mut buf)).await {
        let mut m = Message::new();
        if m.unmarshal_binary(&buf[..n]).is_ok() && m.transaction_id == request.transaction_id {
            return Some(m);
        }
    }
    None
}

#[tokio::test]
async fn stun_with_a_bad_message_integrity_is_ignored() {
    let loopback = "127.0.0.1".parse().unwrap();
    let socket = MediaSocket::bind(SocketAddr::new(loopback, 0))
        .await
        .unwrap();
    let peer = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    peer.connect(socket.local_addr()).await.unwrap();
    let cfg = MediaConfig::new(
        loopback,
        SocketAddr::new(loopback, 0),
        "127.0.0.1:9".parse().unwrap(),
        2,
    );
    // Controlled: the call waits for the peer's checks (a browser offering).
    let prepared = Prepared::new(
        cfg,
        Identity::generate().unwrap(),
        IceRole::Controlled,
        &socket,
    )
    .await
    .unwrap();
    let (ufrag, pwd) = {
        let (u, p) = prepared.ice_credentials();
        (u.to_string(), p.to_string())
    };
    let plan = common::sdes_plan(
        peer.local_addr().unwrap(),
        &[1; 30],
        &[2; 30],
        Some(RemoteIce {
            ufrag: PEER_UFRAG.into(),
            pwd: PEER_PWD.into(),
            candidates: vec![RemoteCandidate {
                foundation: "1".into(),
                component: 1,
                priority: 2_130_706_431,
                address: peer.local_addr().unwrap(),
                typ: "host".into(),
            }],
            lite: false,
        }),
    );
    let session = prepared.start(plan, 1);
    let username = format!("{ufrag}:{PEER_UFRAG}");

    let forged = binding_request(&username, "not-the-password-of-this-call");
    peer.send(&forged.raw).await.unwrap();
    assert!(
        response_to(&peer, &forged, Duration::from_millis(700))
            .await
            .is_none(),
        "a check with a bad MESSAGE-INTEGRITY was answered"
    );

    let genuine = binding_request(&username, &pwd);
    peer.send(&genuine.raw).await.unwrap();
    let answer = response_to(&peer, &genuine, Duration::from_secs(3))
        .await
        .expect("the genuine check was not answered");
    assert_eq!(answer.typ, BINDING_SUCCESS);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&answer).unwrap();
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        peer.local_addr().unwrap()
    );
    MessageIntegrity::new_short_term_integrity(pwd)
        .check(&mut answer.clone())
        .expect("the answer is signed with our password");
    session.stop().await;
    assert_eq!(
        socket.usage(),
        (0, 0),
        "the call left state on the shared socket"
    );
}
