//! watrunk's registration at a PBX as a trunk (RFC 3261 §10), without I/O: REGISTER, its 401/407
//! answered once per attempt, a refresh before the binding expires, a retry after a failure.
//! Never toward Meta (WhatsApp numbers do not register, WHATSAPP-SIP §3).
//!
//! | state      | input                         | output                         | next       |
//! |------------|-------------------------------|--------------------------------|------------|
//! | Due(at)    | `handle_timeout` at `at`      | REGISTER                       | Sending    |
//! | Sending    | 401/407, not yet answered     | REGISTER with credentials      | Sending    |
//! | Sending    | 2xx                           | Registered event               | Due(80 %)  |
//! | Sending    | other final, timeout          | Failed event                   | Due(+30 s) |

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use watrunk_sip::dialog::new_tag;
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::transaction::TransactionId;
use watrunk_sip::uri::Uri;
use watrunk_sip::{Method, Request, Response};

/// After a failed attempt, the next one.
const RETRY: Duration = Duration::from_secs(30);

/// Who registers where.
#[derive(Clone, Debug)]
pub struct RegistrationSetup {
    /// The registrar's `host[:port]` and the transport (`udp`, `tcp`, `tls`).
    pub registrar: String,
    pub transport: String,
    /// The address-of-record's user (the trunk's account at the PBX).
    pub user: String,
    /// Our Contact (where the PBX sends calls).
    pub contact: String,
    /// The binding's lifetime we ask for.
    pub expires: u32,
    pub password: Option<String>,
    pub user_agent: String,
}

/// What became of an attempt, for the owner's log and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// Bound for this long (what the registrar granted).
    Registered(Duration),
    /// The attempt failed: the status, if one came, and why.
    Failed(Option<u16>, String),
}

enum State {
    Due(Instant),
    Sending {
        transaction: Option<TransactionId>,
        authenticated: bool,
        request: Request,
    },
}

pub struct Registration {
    setup: RegistrationSetup,
    call_id: String,
    from_tag: String,
    cseq: u32,
    state: State,
    requests: VecDeque<Request>,
    events: VecDeque<RegistrationEvent>,
    rng: StdRng,
}

impl Registration {
    /// A registration whose first REGISTER is due at `now`.
    pub fn new(setup: RegistrationSetup, now: Instant, rng: &mut impl RngCore) -> Registration {
        let mut rng = StdRng::seed_from_u64(rng.next_u64());
        let host = setup.registrar.clone();
        Registration {
            call_id: format!("reg-{}@{host}", new_tag(&mut rng)),
            from_tag: new_tag(&mut rng),
            cseq: 0,
            state: State::Due(now),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            setup,
            rng,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Due(at) => Some(at),
            State::Sending { .. } => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Due(at) = self.state {
            if now >= at {
                let request = self.register();
                self.requests.push_back(request.clone());
                self.state = State::Sending {
                    transaction: None,
                    authenticated: false,
                    request,
                };
            }
        }
    }

    /// The next REGISTER to send (without Via: the transaction layer adds it).
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    /// The owner started the client transaction of the last REGISTER.
    pub fn request_sent(&mut self, id: TransactionId) {
        if let State::Sending { transaction, .. } = &mut self.state {
            *transaction = Some(id);
        }
    }

    /// Whether `id` is our REGISTER's transaction.
    pub fn owns(&self, id: TransactionId) -> bool {
        matches!(self.state, State::Sending { transaction: Some(t), .. } if t == id)
    }

    pub fn handle_response(&mut self, now: Instant, id: TransactionId, response: &Response) {
        if !self.owns(id) || response.status < 200 {
            return;
        }
        let State::Sending {
            authenticated,
            request,
            ..
        } = std::mem::replace(&mut self.state, State::Due(now + RETRY))
        else {
            return;
        };
        match response.status {
            200..=299 => {
                let granted = granted_expires(response).unwrap_or(self.setup.expires);
                let granted = Duration::from_secs(u64::from(granted.max(1)));
                // Refreshed at 80 % of its life, and never later than 30 s before the end.
                let refresh = (granted * 4 / 5)
                    .min(granted.saturating_sub(RETRY))
                    .max(Duration::from_secs(1).min(granted));
                self.state = State::Due(now + refresh);
                self.events
                    .push_back(RegistrationEvent::Registered(granted));
            }
            401 | 407 if !authenticated && self.setup.password.is_some() => {
                match self.authenticated(&request, response) {
                    Some(retry) => {
                        self.requests.push_back(retry.clone());
                        self.state = State::Sending {
                            transaction: None,
                            authenticated: true,
                            request: retry,
                        };
                    }
                    None => self.events.push_back(RegistrationEvent::Failed(
                        Some(response.status),
                        "the challenge offers no digest algorithm we support".into(),
                    )),
                }
            }
            status => self.events.push_back(RegistrationEvent::Failed(
                Some(status),
                format!(
                    "the PBX refused the registration: {status} {}",
                    response.reason
                ),
            )),
        }
    }

    /// The REGISTER's transaction timed out or could not be sent.
    pub fn handle_request_timeout(&mut self, now: Instant, id: TransactionId) {
        if self.owns(id) {
            self.state = State::Due(now + RETRY);
            self.events.push_back(RegistrationEvent::Failed(
                None,
                "no answer from the registrar".into(),
            ));
        }
    }

    fn register(&mut self) -> Request {
        self.cseq += 1;
        let setup = &self.setup;
        let uri = format!("sip:{};transport={}", setup.registrar, setup.transport);
        let mut req = Request::new(
            Method::REGISTER,
            Uri::parse(&uri).unwrap_or_else(|_| Uri::parse("sip:invalid").expect("a SIP URI")),
        );
        let aor = format!("<sip:{}@{}>", setup.user, setup.registrar);
        req.headers.push("Max-Forwards", "70");
        req.headers
            .push("From", format!("{aor};tag={}", self.from_tag));
        req.headers.push("To", aor);
        req.headers.push("Call-ID", self.call_id.clone());
        req.headers.push("CSeq", format!("{} REGISTER", self.cseq));
        req.headers.push("Contact", setup.contact.clone());
        req.headers.push("Expires", setup.expires.to_string());
        req.headers.push("User-Agent", setup.user_agent.clone());
        req
    }

    fn authenticated(&mut self, request: &Request, challenge: &Response) -> Option<Request> {
        let (challenge_header, creds_header) = if challenge.status == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let challenges = Challenge::parse_supported(challenge.headers.get_all(challenge_header));
        let chosen = digest::choose_challenge(&challenges)?;
        let creds = Credentials::new(
            self.setup.user.clone(),
            self.setup.password.clone().unwrap_or_default(),
        );
        let auth = digest::answer_with_random_cnonce(
            chosen,
            &creds,
            "REGISTER",
            &request.uri.to_string(),
            &[],
            1,
            &mut self.rng,
        );
        let retry = watrunk_sip::dialog::retry_with_auth(
            request,
            creds_header,
            &auth.to_string(),
            &mut self.rng,
        );
        self.cseq += 1;
        Some(retry)
    }
}

/// The binding's lifetime a 2xx grants: its Contact's `expires`, else its Expires header.
fn granted_expires(response: &Response) -> Option<u32> {
    let from_contact = response.headers.values("Contact").find_map(|c| {
        c.split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("expires"))
            .and_then(|(_, v)| v.trim().parse().ok())
    });
    from_contact.or_else(|| {
        response
            .headers
            .get("Expires")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use watrunk_sip::digest::{NonceIssuer, Verifier};
    use watrunk_sip::transaction::{Peer, TransactionLayer, Transport};

    fn setup() -> RegistrationSetup {
        RegistrationSetup {
            registrar: "pbx.example.com:5060".into(),
            transport: "udp".into(),
            user: "watrunk-trunk".into(),
            contact: "<sip:watrunk-trunk@198.51.100.7:5060;transport=udp>".into(),
            expires: 300,
            password: Some("trunk-secret".into()),
            user_agent: "watrunk/test".into(),
        }
    }

    fn send(
        reg: &mut Registration,
        layer: &mut TransactionLayer,
        now: Instant,
    ) -> (TransactionId, Request) {
        let req = reg.poll_request().expect("a REGISTER");
        let peer = Peer {
            transport: Transport::Udp,
            addr: "192.0.2.5:5060".parse().unwrap(),
            conn: None,
        };
        let id = layer.send_request(now, req, peer).unwrap();
        reg.request_sent(id);
        (id, layer.request(id).unwrap().clone())
    }

    #[test]
    fn registers_with_credentials_and_refreshes_before_the_binding_ends() {
        let now = Instant::now();
        let mut layer = crate::tests::layer();
        let mut reg = Registration::new(setup(), now, &mut StdRng::seed_from_u64(1));
        assert_eq!(reg.poll_timeout(), Some(now));
        reg.handle_timeout(now);
        let (id, first) = send(&mut reg, &mut layer, now);
        assert_eq!(first.method, Method::REGISTER);
        assert_eq!(
            first.uri.to_string(),
            "sip:pbx.example.com:5060;transport=udp"
        );
        assert_eq!(first.headers.get("Expires"), Some("300"));
        // The PBX challenges; the answer verifies with the trunk's password.
        let mut verifier = Verifier::new(NonceIssuer::new([7; 32], 300), "pbx".to_string());
        let mut challenge = Response::to_request(&first, 401, "Unauthorized", Some("r1"));
        challenge.headers.push(
            "WWW-Authenticate",
            verifier
                .challenge(watrunk_sip::digest::Algorithm::Md5, 1, false)
                .to_string(),
        );
        reg.handle_response(now, id, &challenge);
        let (id2, second) = send(&mut reg, &mut layer, now);
        let auth =
            watrunk_sip::digest::Authorization::parse(second.headers.get("Authorization").unwrap())
                .unwrap();
        assert_eq!(auth.username, "watrunk-trunk");
        verifier
            .verify(
                &auth,
                "REGISTER",
                &second.uri.to_string(),
                "trunk-secret",
                &[],
                1,
            )
            .unwrap();
        assert_eq!(
            second.call_id(),
            first.call_id(),
            "one Call-ID for the binding"
        );
        // Granted 120 s: refreshed at 90 s (30 s before the end).
        let mut ok = Response::to_request(&second, 200, "OK", Some("r1"));
        ok.headers.push(
            "Contact",
            "<sip:watrunk-trunk@198.51.100.7:5060;transport=udp>;expires=120",
        );
        reg.handle_response(now, id2, &ok);
        assert_eq!(
            reg.poll_event(),
            Some(RegistrationEvent::Registered(Duration::from_secs(120)))
        );
        assert_eq!(reg.poll_timeout(), Some(now + Duration::from_secs(90)));
        reg.handle_timeout(now + Duration::from_secs(90));
        let (_, refresh) = send(&mut reg, &mut layer, now + Duration::from_secs(90));
        let seq = |r: &Request| r.cseq().unwrap().seq;
        assert!(seq(&refresh) > seq(&second), "CSeq goes up");
    }

    #[test]
    fn a_refusal_or_silence_is_retried_later() {
        let now = Instant::now();
        let mut layer = crate::tests::layer();
        let mut reg = Registration::new(setup(), now, &mut StdRng::seed_from_u64(2));
        reg.handle_timeout(now);
        let (id, first) = send(&mut reg, &mut layer, now);
        reg.handle_response(
            now,
            id,
            &Response::to_request(&first, 403, "Forbidden", Some("r")),
        );
        assert!(matches!(
            reg.poll_event(),
            Some(RegistrationEvent::Failed(Some(403), _))
        ));
        assert_eq!(reg.poll_timeout(), Some(now + RETRY));
        reg.handle_timeout(now + RETRY);
        let (id, _) = send(&mut reg, &mut layer, now + RETRY);
        reg.handle_request_timeout(now + RETRY, id);
        assert!(matches!(
            reg.poll_event(),
            Some(RegistrationEvent::Failed(None, _))
        ));
        assert_eq!(reg.poll_timeout(), Some(now + RETRY * 2));
    }
}
