//! ICE role conflicts (RFC 8445 §7.3.1.1, §7.2.5.1), which webrtc-ice does not handle: it sends its
//! tie-breaker but drops a request that claims its own role and ignores a 487 answer. The shared
//! socket sees every check both ways, so it does it for the agents: it learns each agent's role and
//! tie-breaker from the checks it sends, answers a peer that loses the tie-break with 487 Role
//! Conflict (signed with the agent's password), and tells the call when the peer wins (by the
//! comparison or by answering us with 487), so that the call goes on in the other role.

use std::collections::HashMap;
use std::sync::Mutex;

use stun::error_code::{ErrorCodeAttribute, CODE_ROLE_CONFLICT};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, Setter, BINDING_ERROR, CLASS_ERROR_RESPONSE, CLASS_REQUEST, METHOD_BINDING,
};
use tokio::sync::mpsc;
use webrtc_ice::control::{AttrControlled, AttrControlling};

/// One agent's side of a possible conflict.
struct Agent {
    /// Ours (requests to us are signed with it) and the peer's (its answers are).
    password: String,
    remote_password: String,
    tell: mpsc::Sender<()>,
    /// Controlling, and the tie-breaker, as its last check said.
    claims: Option<(bool, u64)>,
}

/// What to do with an inbound STUN packet.
pub(crate) enum Verdict {
    /// Hand it to the agent.
    Forward,
    /// Send this 487 back instead.
    Answer(Vec<u8>),
}

#[derive(Default)]
pub(crate) struct RoleConflicts {
    agents: Mutex<HashMap<String, Agent>>,
}

impl RoleConflicts {
    pub fn watch(&self, ufrag: &str, password: &str, remote_password: &str) -> mpsc::Receiver<()> {
        let (tell, rx) = mpsc::channel(1);
        self.lock().insert(
            ufrag.to_string(),
            Agent {
                password: password.to_string(),
                remote_password: remote_password.to_string(),
                tell,
                claims: None,
            },
        );
        rx
    }

    pub fn unwatch(&self, ufrag: &str) {
        self.lock().remove(ufrag);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A check one of our agents sends: its USERNAME is `theirs:ours`.
    pub fn outbound(&self, packet: &[u8]) {
        let Some(m) = request(packet) else { return };
        let Some(ours) = username(&m).and_then(|u| u.split(':').nth(1).map(str::to_string)) else {
            return;
        };
        let claims = claim(&m);
        if let (Some(agent), Some(claims)) = (self.lock().get_mut(&ours), claims) {
            agent.claims = Some(claims);
        }
    }

    /// A STUN packet for the agent with local ufrag `ufrag` (known from the address when it is a
    /// response).
    pub fn inbound(&self, packet: &[u8], ufrag: &str) -> Verdict {
        let mut m = Message::new();
        if m.unmarshal_binary(packet).is_err() || m.typ.method != METHOD_BINDING {
            return Verdict::Forward;
        }
        let mut agents = self.lock();
        let Some(agent) = agents.get_mut(ufrag) else {
            return Verdict::Forward;
        };
        // Only what is signed counts: a forged check or 487 must not move our role.
        let key = if m.typ.class == CLASS_ERROR_RESPONSE {
            &agent.remote_password
        } else {
            &agent.password
        };
        if MessageIntegrity::new_short_term_integrity(key.clone())
            .check(&mut m.clone())
            .is_err()
        {
            return Verdict::Forward;
        }
        if m.typ.class == CLASS_ERROR_RESPONSE {
            let mut error = ErrorCodeAttribute::default();
            if error.get_from(&m).is_ok() && error.code == CODE_ROLE_CONFLICT {
                // §7.2.5.1: the peer kept its role; we take the other one.
                agent.claims = None;
                let _ = agent.tell.try_send(());
            }
            return Verdict::Forward;
        }
        if m.typ.class != CLASS_REQUEST {
            return Verdict::Forward;
        }
        let (Some((ours_controlling, ours)), Some((theirs_controlling, theirs))) =
            (agent.claims, claim(&m))
        else {
            return Verdict::Forward;
        };
        if ours_controlling != theirs_controlling {
            return Verdict::Forward;
        }
        // §7.3.1.1: both controlling, the larger tie-breaker stays controlling; both controlled,
        // the larger becomes controlling.
        let we_keep_our_role = if ours_controlling {
            ours >= theirs
        } else {
            ours < theirs
        };
        if we_keep_our_role {
            match role_conflict_answer(&m, &agent.password) {
                Some(answer) => Verdict::Answer(answer),
                None => Verdict::Forward,
            }
        } else {
            agent.claims = None;
            let _ = agent.tell.try_send(());
            Verdict::Forward
        }
    }
}

fn request(packet: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.unmarshal_binary(packet).ok()?;
    (m.typ.method == METHOD_BINDING && m.typ.class == CLASS_REQUEST).then_some(m)
}

fn username(m: &Message) -> Option<String> {
    String::from_utf8(m.get(stun::attributes::ATTR_USERNAME).ok()?).ok()
}

/// The role a check claims (controlling?) and its tie-breaker.
fn claim(m: &Message) -> Option<(bool, u64)> {
    let mut controlling = AttrControlling::default();
    if controlling.get_from(m).is_ok() {
        return Some((true, controlling.0));
    }
    let mut controlled = AttrControlled::default();
    controlled.get_from(m).ok()?;
    Some((false, controlled.0))
}

fn role_conflict_answer(request: &Message, password: &str) -> Option<Vec<u8>> {
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_ERROR),
        Box::new(request.transaction_id),
        Box::new(ErrorCodeAttribute {
            code: CODE_ROLE_CONFLICT,
            reason: b"Role Conflict".to_vec(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity(
            password.to_string(),
        )),
        Box::new(FINGERPRINT),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;

    const OURS: &str = "ours";
    const PWD: &str = "our-password-our-password";
    const REMOTE_PWD: &str = "their-password-their-password";

    fn check(username: &str, claim: (bool, u64), password: &str) -> Vec<u8> {
        let mut m = Message::new();
        let role: Box<dyn Setter> = if claim.0 {
            Box::new(AttrControlling(claim.1))
        } else {
            Box::new(AttrControlled(claim.1))
        };
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::message::BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(stun::textattrs::TextAttribute::new(
                stun::attributes::ATTR_USERNAME,
                username.to_string(),
            )),
            role,
            Box::new(MessageIntegrity::new_short_term_integrity(
                password.to_string(),
            )),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        m.raw
    }

    /// Conflicts with our agent claiming `ours`; the peer's check claims `theirs`, signed with `pwd`.
    fn conflict(ours: (bool, u64), theirs: (bool, u64), pwd: &str) -> (Verdict, bool) {
        let conflicts = RoleConflicts::default();
        let mut told = conflicts.watch(OURS, PWD, REMOTE_PWD);
        conflicts.outbound(&check(&format!("theirs:{OURS}"), ours, REMOTE_PWD));
        let verdict = conflicts.inbound(&check(&format!("{OURS}:theirs"), theirs, pwd), OURS);
        (verdict, told.try_recv().is_ok())
    }

    fn is_signed_487(answer: &[u8]) -> bool {
        let mut m = Message::new();
        m.unmarshal_binary(answer).unwrap();
        let mut error = ErrorCodeAttribute::default();
        error.get_from(&m).unwrap();
        m.typ == BINDING_ERROR
            && error.code == CODE_ROLE_CONFLICT
            && MessageIntegrity::new_short_term_integrity(PWD.into())
                .check(&mut m)
                .is_ok()
    }

    #[test]
    fn both_controlling_the_larger_tie_breaker_keeps_control() {
        match conflict((true, 10), (true, 5), PWD) {
            (Verdict::Answer(a), false) => assert!(is_signed_487(&a)),
            _ => panic!("we win: a signed 487, no switch"),
        }
        assert!(matches!(
            conflict((true, 10), (true, 50), PWD),
            (Verdict::Forward, true)
        ));
    }

    #[test]
    fn both_controlled_the_larger_tie_breaker_takes_control() {
        assert!(matches!(
            conflict((false, 10), (false, 5), PWD),
            (Verdict::Forward, true)
        ));
        match conflict((false, 10), (false, 50), PWD) {
            (Verdict::Answer(a), false) => assert!(is_signed_487(&a)),
            _ => panic!("they take control: a signed 487, no switch"),
        }
    }

    #[test]
    fn no_conflict_and_forged_checks_change_nothing() {
        assert!(matches!(
            conflict((true, 10), (false, 50), PWD),
            (Verdict::Forward, false)
        ));
        assert!(matches!(
            conflict((true, 10), (true, 50), "a-forger-guessing-passwords"),
            (Verdict::Forward, false)
        ));
    }

    #[test]
    fn a_signed_487_from_the_peer_switches_us() {
        let conflicts = RoleConflicts::default();
        let mut told = conflicts.watch(OURS, PWD, REMOTE_PWD);
        let request = {
            let mut m = Message::new();
            m.unmarshal_binary(&check("theirs:ours", (true, 1), REMOTE_PWD))
                .unwrap();
            m
        };
        let forged = role_conflict_answer(&request, "not-their-password").unwrap();
        assert!(matches!(conflicts.inbound(&forged, OURS), Verdict::Forward));
        assert!(told.try_recv().is_err(), "an unsigned 487 moved us");
        let genuine = role_conflict_answer(&request, REMOTE_PWD).unwrap();
        assert!(matches!(
            conflicts.inbound(&genuine, OURS),
            Verdict::Forward
        ));
        assert!(told.try_recv().is_ok());
    }
}
