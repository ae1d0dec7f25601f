//! ICE-lite (RFC 8445 §2.5) the way Meta's relay runs it, for `watrunk sim`: answer the peer's
//! connectivity checks when they are signed with our password, never send one. The first check
//! carrying USE-CANDIDATE picks the peer's address; the responder goes on answering consent checks
//! (RFC 7675) until the call ends. webrtc-ice's own `lite` mode still sends triggered checks, so it
//! is no stand-in for Meta.

use std::net::SocketAddr;
use std::sync::Arc;

use stun::attributes::{ATTR_USERNAME, ATTR_USE_CANDIDATE};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::xoraddr::XorMappedAddress;
use tokio::sync::mpsc;
use webrtc_ice::udp_mux::UDPMuxConn;
use webrtc_util::Conn;

use crate::mux::MediaSocket;

/// Answers checks for one call until dropped.
pub(crate) struct Responder {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts answering the checks that reach `conn` (the call's ufrag on the shared socket). The
/// receiver yields the address the peer nominated, once.
pub(crate) fn respond(
    socket: Arc<MediaSocket>,
    conn: UDPMuxConn,
    credentials: (String, String),
    remote_ufrag: String,
) -> (Responder, mpsc::Receiver<SocketAddr>) {
    let (nominated_tx, nominated_rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let username = format!("{}:{remote_ufrag}", credentials.0);
        let mut nominated = false;
        let mut known: Vec<SocketAddr> = Vec::with_capacity(4);
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, from)) = conn.recv_from(&mut buf).await else {
                return;
            };
            let Some((answer, use_candidate)) =
                answer_check(&buf[..n], from, &username, &credentials.1)
            else {
                continue;
            };
            if !known.contains(&from) && known.len() < 8 {
                // DTLS and SRTP from this address now reach the call's slow path.
                conn.add_address(from).await;
                known.push(from);
            }
            let _ = socket.socket().send_to(&answer, socket.target(from)).await;
            if use_candidate && !nominated {
                nominated = true;
                let _ = nominated_tx.try_send(from);
            }
        }
    });
    (Responder { task }, nominated_rx)
}

/// The success response to a binding request for `username` signed with `password`, and whether
/// it nominates; `None` for anything else (dropped, as a lite agent that is not asked).
pub fn answer_check(
    packet: &[u8],
    from: SocketAddr,
    username: &str,
    password: &str,
) -> Option<(Vec<u8>, bool)> {
    let mut request = Message::new();
    request.unmarshal_binary(packet).ok()?;
    if request.typ != BINDING_REQUEST {
        return None;
    }
    let asked = request.get(ATTR_USERNAME).ok()?;
    if asked != username.as_bytes() {
        return None;
    }
    MessageIntegrity::new_short_term_integrity(password.to_string())
        .check(&mut request.clone())
        .ok()?;
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_SUCCESS),
        Box::new(request.transaction_id),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity(
            password.to_string(),
        )),
        Box::new(FINGERPRINT),
    ];
    answer.build(&setters).ok()?;
    Some((answer.raw, request.contains(ATTR_USE_CANDIDATE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::Getter;
    use stun::textattrs::TextAttribute;

    const PWD: &str = "sim-password-sim-password";

    fn check(username: &str, password: &str, nominate: bool) -> Vec<u8> {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_string())),
        ];
        if nominate {
            setters.push(Box::new(webrtc_ice::use_candidate::UseCandidateAttr::new()));
        }
        setters.push(Box::new(MessageIntegrity::new_short_term_integrity(
            password.to_string(),
        )));
        setters.push(Box::new(FINGERPRINT));
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn a_signed_check_gets_a_signed_answer_with_the_mapped_address() {
        let from: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let (answer, nominates) =
            answer_check(&check("sim:watrunk", PWD, true), from, "sim:watrunk", PWD).unwrap();
        assert!(nominates);
        let mut m = Message::new();
        m.unmarshal_binary(&answer).unwrap();
        assert_eq!(m.typ, BINDING_SUCCESS);
        MessageIntegrity::new_short_term_integrity(PWD.into())
            .check(&mut m.clone())
            .unwrap();
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&m).unwrap();
        assert_eq!((mapped.ip, mapped.port), (from.ip(), from.port()));
    }

    #[test]
    fn checks_with_another_username_or_password_are_not_answered() {
        let from: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        assert!(answer_check(
            &check("other:watrunk", PWD, false),
            from,
            "sim:watrunk",
            PWD
        )
        .is_none());
        assert!(answer_check(
            &check("sim:watrunk", "wrong-password-wrong-pass", false),
            from,
            "sim:watrunk",
            PWD
        )
        .is_none());
        let plain = check("sim:watrunk", PWD, false);
        assert!(!answer_check(&plain, from, "sim:watrunk", PWD).unwrap().1);
    }

    /// A call lasts: the responder answers every consent check of a long call, not only the first
    /// hundreds (RFC 7675: one every few seconds for as long as the call runs).
    #[tokio::test]
    async fn the_responder_answers_a_long_calls_consent_checks() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let socket = MediaSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let conn = socket.ufrag_conn("sim");
        let (_responder, _nominated) = respond(
            socket.clone(),
            conn,
            ("sim".into(), PWD.into()),
            "watrunk".into(),
        );
        let peer = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        for n in 0..1000 {
            let sent = check("sim:watrunk", PWD, n == 0);
            peer.send_to(&sent, socket.local_addr()).await.unwrap();
            let got =
                tokio::time::timeout(std::time::Duration::from_secs(1), peer.recv(&mut buf)).await;
            let len = match got {
                Ok(Ok(len)) => len,
                other => panic!("check {n} was not answered: {other:?}"),
            };
            assert_answers(&sent, &buf[..len], peer.local_addr().unwrap(), n);
        }
    }

    /// `answer` is a success response to `check` (same transaction), signed with the password,
    /// with the address the check came from.
    fn assert_answers(check: &[u8], answer: &[u8], from: SocketAddr, n: usize) {
        let mut request = Message::new();
        request.unmarshal_binary(check).unwrap();
        let mut m = Message::new();
        m.unmarshal_binary(answer)
            .unwrap_or_else(|e| panic!("answer {n} is not STUN: {e}"));
        assert_eq!(m.typ, BINDING_SUCCESS, "answer {n}");
        assert_eq!(m.transaction_id, request.transaction_id, "answer {n}");
        MessageIntegrity::new_short_term_integrity(PWD.into())
            .check(&mut m.clone())
            .unwrap_or_else(|e| panic!("answer {n} is not signed with the password: {e}"));
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&m).unwrap();
        assert_eq!(
            (mapped.ip, mapped.port),
            (from.ip(), from.port()),
            "answer {n}"
        );
    }
}
