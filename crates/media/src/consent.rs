//! Consent freshness (RFC 7675) once a call is set up, without the ICE agent.
//!
//! webrtc-ice keeps an agent per call alive for as long as the call lasts: tasks, a 200 ms tick,
//! candidate and pair tables, about 30 KiB. After set-up a call needs two things of ICE only, so
//! they are done here over the shared socket: a check on the selected pair every 5 s (±20 %,
//! §5.1) whose answers keep consent, the call failing after 30 s without one; and answers to the
//! peer's own checks, since a full agent (a browser, aiortc) keeps consent toward us the same way.
//! `Freshness` is the sans-IO core; `keep` drives it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::ATTR_USERNAME;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::textattrs::TextAttribute;
use tokio::sync::mpsc;
use webrtc_ice::control::{AttrControlled, AttrControlling};
use webrtc_ice::priority::PriorityAttr;
use webrtc_ice::udp_mux::UDPMuxConn;

use crate::lite::answer_check;
use crate::mux::MediaSocket;
use crate::session::{Draws, MediaEvent};
use crate::MediaError;

/// RFC 7675 §5.1: a consent check every 5 s on average.
pub(crate) const CONSENT_INTERVAL: Duration = Duration::from_secs(5);
/// Checks whose answer still counts: a late answer to any of the last few is consent (§5.1).
const OUTSTANDING: usize = 4;
/// PRIORITY of our checks: a peer-reflexive host candidate, component 1 (RFC 8445 §5.1.2.1).
const CHECK_PRIORITY: u32 = (110 << 24) | (65535 << 8) | 255;

/// One side's ICE username fragment and password.
#[derive(Debug, Clone)]
pub(crate) struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

/// The peer let `timeout` pass without answering a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// What a packet from the peer was to consent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// The peer's own check: send this answer back.
    Check(Vec<u8>),
    /// The answer to one of our checks: consent is fresh.
    Answer,
    /// Neither (another call's, unsigned, not a binding): dropped.
    Ignored,
}

/// Consent toward one selected pair.
pub(crate) struct Freshness {
    local: IceCredentials,
    remote: IceCredentials,
    controlling: bool,
    tie_breaker: u64,
    /// A xorshift state for the interval's jitter (seeded by the call).
    jitter: u64,
    timeout: Duration,
    last_answer: Instant,
    next_check: Instant,
    sent: [Option<TransactionId>; OUTSTANDING],
    sent_count: usize,
}

impl Freshness {
    /// Consent as of `now` (the pair was just selected, so it holds), with our role in the end.
    pub(crate) fn new(
        now: Instant,
        local: IceCredentials,
        remote: IceCredentials,
        controlling: bool,
        timeout: Duration,
        draws: Draws,
    ) -> Freshness {
        let mut freshness = Freshness {
            local,
            remote,
            controlling,
            tie_breaker: draws.tie_breaker,
            jitter: draws.jitter,
            timeout,
            last_answer: now,
            next_check: now,
            sent: [None; OUTSTANDING],
            sent_count: 0,
        };
        freshness.next_check = now + freshness.interval();
        freshness
    }

    /// §5.1's interval, randomized to 0.8-1.2 of it; at most half the timeout, so that even a
    /// short timeout sees two checks before it.
    fn interval(&mut self) -> Duration {
        let base = CONSENT_INTERVAL.min(self.timeout / 2);
        // xorshift64: spread, not secrecy, is what the jitter needs.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let unit = (self.jitter >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.8 + 0.4 * unit)
    }

    /// When `handle_timeout` wants to run next.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_check.min(self.last_answer + self.timeout)
    }

    /// The check to send now, if one is due; `Expired` once the timeout passed unanswered.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<Option<Vec<u8>>, Expired> {
        if now >= self.last_answer + self.timeout {
            return Err(Expired);
        }
        if now < self.next_check {
            return Ok(None);
        }
        self.next_check = now + self.interval();
        let id = TransactionId::new();
        self.sent[self.sent_count % OUTSTANDING] = Some(id);
        self.sent_count += 1;
        Ok(self.check(id))
    }

    /// A STUN packet from the peer's address (or signed for our ufrag).
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        packet: &[u8],
        from: SocketAddr,
    ) -> Received {
        let username = format!("{}:{}", self.local.ufrag, self.remote.ufrag);
        if let Some((answer, _)) = answer_check(packet, from, &username, &self.local.pwd) {
            return Received::Check(answer);
        }
        let mut message = Message::new();
        if message.unmarshal_binary(packet).is_err() || message.typ != BINDING_SUCCESS {
            return Received::Ignored;
        }
        if !self.sent.contains(&Some(message.transaction_id)) {
            return Received::Ignored;
        }
        // An answer is only consent when the peer knows its password (§5.1: authenticated).
        let integrity = MessageIntegrity::new_short_term_integrity(self.remote.pwd.clone());
        if integrity.check(&mut message).is_err() {
            return Received::Ignored;
        }
        self.last_answer = now;
        Received::Answer
    }

    fn check(&self, id: TransactionId) -> Option<Vec<u8>> {
        let username = format!("{}:{}", self.remote.ufrag, self.local.ufrag);
        let role: Box<dyn Setter> = if self.controlling {
            Box::new(AttrControlling(self.tie_breaker))
        } else {
            Box::new(AttrControlled(self.tie_breaker))
        };
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(id),
            Box::new(TextAttribute::new(ATTR_USERNAME, username)),
            Box::new(PriorityAttr(CHECK_PRIORITY)),
            role,
            Box::new(MessageIntegrity::new_short_term_integrity(
                self.remote.pwd.clone(),
            )),
            Box::new(FINGERPRINT),
        ];
        let mut message = Message::new();
        message.build(&setters).ok()?;
        Some(message.raw)
    }
}

/// Keeps consent for one call until dropped.
pub(crate) struct Keeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drives `freshness` toward `remote`: the call's STUN comes from the shared socket's consent path,
/// `conn` (the call's ufrag connection) only lets the peer's answers find the call by `remote`. A
/// lost consent fails the call on `events`.
pub(crate) fn keep(
    socket: Arc<MediaSocket>,
    conn: UDPMuxConn,
    remote: SocketAddr,
    mut freshness: Freshness,
    events: mpsc::Sender<MediaEvent>,
) -> Keeper {
    let mut inbound = socket.consent_path(conn.key());
    let task = tokio::spawn(async move {
        let target = socket.target(remote);
        // The peer's answers carry no USERNAME: they find the call by its address.
        conn.add_address(remote).await;
        loop {
            let wake = tokio::time::Instant::from_std(freshness.poll_timeout());
            tokio::select! {
                received = inbound.recv() => {
                    let Some(datagram) = received else { return };
                    let (packet, from) = *datagram;
                    if let Received::Check(answer) =
                        freshness.handle_packet(Instant::now(), &packet, from)
                    {
                        let _ = socket.socket().send_to(&answer, socket.target(from)).await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    match freshness.handle_timeout(Instant::now()) {
                        Ok(Some(check)) => {
                            let _ = socket.socket().send_to(&check, target).await;
                        }
                        Ok(None) => {}
                        Err(Expired) => {
                            let reason = "ICE consent expired: the peer stopped answering checks";
                            let _ = events
                                .send(MediaEvent::Failed(Box::new(MediaError::Timeout(reason.into()))))
                                .await;
                            return;
                        }
                    }
                }
            }
        }
    });
    Keeper { task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::Getter;

    const OURS: &str = "ours-password-ours-password";
    const THEIRS: &str = "their-password-their-password";

    fn freshness(now: Instant, timeout: Duration) -> Freshness {
        Freshness::new(
            now,
            IceCredentials {
                ufrag: "us".into(),
                pwd: OURS.into(),
            },
            IceCredentials {
                ufrag: "them".into(),
                pwd: THEIRS.into(),
            },
            true,
            timeout,
            Draws {
                tie_breaker: 7,
                jitter: 0x2545_f491_4f6c_dd1d,
                first_seq: 1,
                first_ts: 1,
            },
        )
    }

    fn answer(request: &[u8], password: &str) -> Vec<u8> {
        let mut req = Message::new();
        req.unmarshal_binary(request).unwrap();
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_SUCCESS),
            Box::new(req.transaction_id),
            Box::new(MessageIntegrity::new_short_term_integrity(password.into())),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        m.raw
    }

    fn peer() -> SocketAddr {
        "198.18.0.2:40000".parse().unwrap()
    }

    #[test]
    fn a_check_is_signed_with_the_peers_password_and_names_both_ufrags_and_our_role() {
        let t0 = Instant::now();
        let mut f = freshness(t0, Duration::from_secs(30));
        assert_eq!(f.handle_timeout(t0), Ok(None), "consent holds at selection");
        let due = f.poll_timeout();
        let gap = due - t0;
        assert!(
            gap >= Duration::from_secs(4) && gap <= Duration::from_secs(6),
            "{gap:?}"
        );
        let check = f.handle_timeout(due).unwrap().expect("a check is due");
        let mut m = Message::new();
        m.unmarshal_binary(&check).unwrap();
        assert_eq!(m.typ, BINDING_REQUEST);
        assert_eq!(m.get(ATTR_USERNAME).unwrap(), b"them:us");
        MessageIntegrity::new_short_term_integrity(THEIRS.into())
            .check(&mut m.clone())
            .unwrap();
        stun::fingerprint::FINGERPRINT.check(&m).unwrap();
        let mut controlling = AttrControlling::default();
        controlling.get_from(&m).unwrap();
        let mut priority = PriorityAttr::default();
        priority.get_from(&m).unwrap();
        assert_eq!(priority.0, CHECK_PRIORITY);
    }

    #[test]
    fn answers_keep_consent_and_silence_expires_it_after_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let mut f = freshness(t0, timeout);
        let mut now = t0;
        // Answered checks for a minute: consent holds throughout.
        while now < t0 + Duration::from_secs(60) {
            now = f.poll_timeout();
            let check = f.handle_timeout(now).unwrap().expect("due");
            assert_eq!(
                f.handle_packet(now, &answer(&check, THEIRS), peer()),
                Received::Answer
            );
        }
        // Then the peer goes quiet: checks still go out until 30 s after the last answer.
        let last_answer = now;
        let mut checks = 0;
        let expired_at = loop {
            now = f.poll_timeout();
            match f.handle_timeout(now) {
                Ok(Some(_)) => checks += 1,
                Ok(None) => {}
                Err(Expired) => break now,
            }
        };
        assert_eq!(expired_at, last_answer + timeout);
        assert!((5..=8).contains(&checks), "{checks} checks in 30 s");
    }

    #[test]
    fn an_answer_counts_only_when_signed_by_the_peer_for_a_check_we_sent() {
        let t0 = Instant::now();
        let mut f = freshness(t0, Duration::from_secs(30));
        let at = f.poll_timeout();
        let check = f.handle_timeout(at).unwrap().unwrap();
        assert_eq!(
            f.handle_packet(at, &answer(&check, OURS), peer()),
            Received::Ignored,
            "signed with the wrong password"
        );
        let mut other = freshness(t0, Duration::from_secs(30));
        let stranger = other.handle_timeout(other.poll_timeout()).unwrap().unwrap();
        assert_eq!(
            f.handle_packet(at, &answer(&stranger, THEIRS), peer()),
            Received::Ignored,
            "not a transaction of ours"
        );
        // Neither refreshed consent: it expires 30 s after selection.
        assert_eq!(f.handle_timeout(t0 + Duration::from_secs(30)), Err(Expired));
    }

    #[test]
    fn the_peers_own_checks_are_answered() {
        let t0 = Instant::now();
        let mut f = freshness(t0, Duration::from_secs(30));
        // The peer's check names us first and is signed with our password.
        let mut theirs = freshness(t0, Duration::from_secs(30));
        std::mem::swap(&mut theirs.local, &mut theirs.remote);
        let check = theirs
            .handle_timeout(theirs.poll_timeout())
            .unwrap()
            .unwrap();
        match f.handle_packet(t0, &check, peer()) {
            Received::Check(answer) => {
                let mut m = Message::new();
                m.unmarshal_binary(&answer).unwrap();
                assert_eq!(m.typ, BINDING_SUCCESS);
                MessageIntegrity::new_short_term_integrity(OURS.into())
                    .check(&mut m)
                    .unwrap();
            }
            other => panic!("not answered: {other:?}"),
        }
    }

    /// Over a real shared socket: our checks reach the peer and its answers keep the call; the
    /// peer's checks are answered; once the peer goes quiet the call fails after the timeout.
    #[tokio::test]
    async fn the_keeper_keeps_consent_over_the_shared_socket_until_the_peer_goes_quiet() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let socket = MediaSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let peer = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap();
        let remote = peer.local_addr().unwrap();
        let timeout = Duration::from_millis(600);
        let (events, mut failed) = mpsc::channel(4);
        let conn = socket.ufrag_conn("us");
        let _keeper = keep(
            socket.clone(),
            conn,
            remote,
            freshness(Instant::now(), timeout),
            events,
        );
        let mut theirs = freshness(Instant::now(), timeout);
        std::mem::swap(&mut theirs.local, &mut theirs.remote);
        let their_check = theirs.check(TransactionId::new()).unwrap();
        let mut buf = [0u8; 1500];
        let started = Instant::now();
        let (mut our_checks, mut their_answers) = (0, 0);
        while started.elapsed() < Duration::from_secs(2) {
            peer.send_to(&their_check, socket.local_addr())
                .await
                .unwrap();
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), peer.recv(&mut buf)).await
            else {
                continue;
            };
            let mut m = Message::new();
            m.unmarshal_binary(&buf[..n]).unwrap();
            if m.typ == BINDING_REQUEST {
                our_checks += 1;
                peer.send_to(&answer(&buf[..n], THEIRS), socket.local_addr())
                    .await
                    .unwrap();
            } else if m.typ == BINDING_SUCCESS {
                MessageIntegrity::new_short_term_integrity(OURS.into())
                    .check(&mut m)
                    .unwrap();
                their_answers += 1;
            }
            assert!(failed.try_recv().is_err(), "consent lost while answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(our_checks >= 4, "{our_checks} checks in 2 s at 300 ms");
        assert!(
            their_answers >= 4,
            "{their_answers} of the peer's checks answered"
        );
        let quiet = Instant::now();
        let event = tokio::time::timeout(Duration::from_secs(3), failed.recv())
            .await
            .expect("consent expires once the peer is quiet")
            .unwrap();
        assert!(
            matches!(&event, MediaEvent::Failed(e) if e.to_string().contains("consent expired")),
            "{event:?}"
        );
        assert!(
            quiet.elapsed() <= timeout + Duration::from_millis(400),
            "{:?}",
            quiet.elapsed()
        );
    }
}
