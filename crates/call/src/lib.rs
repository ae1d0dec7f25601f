//! One call: the state machine joining a call's SIP transactions and dialog with its SDP and media,
//! for calls Meta sends us (inbound, user-initiated) and calls we place (outbound,
//! business-initiated). Sans-IO: the server feeds it inputs (`handle_*`, `answer`, `hang_up`) and
//! drains [`Call::poll_output`]; it never touches a socket, a clock or the media stack. Which SDP
//! to answer with, and when media starts, is the server's business; the call only carries bodies.
//!
//! Inbound:
//!
//! | state     | input                              | output                          | next      |
//! |-----------|------------------------------------|---------------------------------|-----------|
//! | Ringing   | `incoming` (authenticated INVITE)  | 180 Ringing                     | Ringing   |
//! | Ringing   | `answer(sdp)`                      | 200 OK (Record-Route copied)    | Answered  |
//! | Ringing   | `reject(status)`                   | the final response              | Ended     |
//! | Ringing   | CANCEL (layer answered 487)        | Ended event                     | Ended     |
//! | Answered  | ACK                                | Established event               | Up        |
//! | Answered  | no ACK by Timer H                  | BYE (Reason: no ACK)            | Ending    |
//!
//! Outbound:
//!
//! | state     | input                              | output                          | next      |
//! |-----------|------------------------------------|---------------------------------|-----------|
//! | Calling   | 401/407, first time                | INVITE with credentials         | Calling   |
//! | Calling   | 401/407 again, or no password      | Ended (credentials rejected)    | Ended     |
//! | Calling   | 1xx                                | Ringing event on 180/183        | Calling   |
//! | Calling   | 2xx with an answer                 | ACK, Answered event             | Up        |
//! | Calling   | 3xx-6xx, timeout                   | Ended with a readable reason    | Ended     |
//! | Calling   | `hang_up`                          | CANCEL                          | Calling   |
//!
//! Either direction: in `Up` a BYE received is answered 200 and ends the call; `hang_up` (or a media
//! failure) sends BYE and moves to `Ending`, which ends on the BYE's response or timeout. Never sent:
//! re-INVITE, UPDATE, Session-Expires, REGISTER (WHATSAPP-SIP §3, §5).

use std::fmt;

use watrunk_sip::dialog::{new_tag, Dialog};
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::transaction::TransactionId;
use watrunk_sip::uri::Uri;
use watrunk_sip::{Method, Request, Response};

/// What our INVITEs and responses advertise (WHATSAPP-SIP §3.4: no UPDATE, no timer).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Meta → us (a WhatsApp user calls the business).
    Inbound,
    /// Us → Meta (the business calls a WhatsApp user).
    Outbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Who ended the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// Why and how a call ended, for the `call.ended` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub by: Side,
    /// The final SIP status of the INVITE when the call never came up (487, 403, 486 ...).
    pub status: Option<u16>,
    /// A sentence a user can act on ("declined by the user", "no ACK after 32 s" ...).
    pub reason: String,
    /// The Reason header of a BYE or CANCEL, as received.
    pub sip_reason: Option<String>,
    /// Meta's `x-wa-meta-call-duration` on its BYE, seconds.
    pub meta_duration_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// Outbound: the far side is ringing (180/183).
    Ringing,
    /// The call is answered: inbound when our 200 is sent, outbound when the 2xx arrived.
    Answered,
    /// Inbound: the ACK for our 200 arrived.
    Confirmed,
    Ended(Ending),
}

#[derive(Debug, PartialEq, Eq)]
pub enum CallOutput {
    /// Send this response on the server transaction.
    Respond {
        transaction: TransactionId,
        response: Response,
    },
    /// Start a client transaction for this request (an INVITE with credentials, a BYE). The server
    /// hands the transaction id back through [`Call::request_sent`].
    Send(Request),
    /// The ACK for a 2xx (sent outside any transaction).
    Ack(Request),
    /// CANCEL the outbound INVITE.
    Cancel {
        invite: TransactionId,
    },
    /// Outbound: the SDP answer of the 2xx, for the media side to accept.
    RemoteAnswer(Vec<u8>),
    Event(CallEvent),
}

/// The local facts a call needs: our hostname and Contact.
#[derive(Clone, Debug)]
pub struct Local {
    /// `<sip:+15550001111@sip.example.com;transport=tls>`
    pub contact: String,
    pub user_agent: String,
}

/// A business-initiated call: who calls whom, where, with which offer.
#[derive(Clone, Debug)]
pub struct OutboundCall {
    /// `+15550001111`
    pub from_number: String,
    /// Our hostname: the From host Meta checks (WHATSAPP-SIP §3.2).
    pub hostname: String,
    /// `+15557654321` or a BSUID.
    pub to_user: String,
    /// Meta's SIP domain, `wa.meta.vc`.
    pub domain: String,
    pub offer: Vec<u8>,
    /// The number's SIP password, for Meta's 407 (username: the number without '+').
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("the call is not in a state for this ({0})")]
    WrongState(&'static str),
    #[error("the request has no usable dialog: {0}")]
    Dialog(String),
}

enum State {
    /// Inbound, before our final response.
    Ringing {
        invite: Box<Request>,
        transaction: TransactionId,
        to_tag: String,
    },
    /// Inbound: 200 sent, waiting for the ACK.
    Answered {
        dialog: Box<Dialog>,
    },
    /// Outbound, before a final response. `transaction` is None until the server reports it sent.
    Calling {
        invite: Box<Request>,
        transaction: Option<TransactionId>,
        authenticated: bool,
        provisional: bool,
        cancel_wanted: bool,
    },
    Up {
        dialog: Box<Dialog>,
    },
    /// Our BYE is out; `ending` is reported when it is answered or times out.
    Ending {
        ending: Ending,
    },
    Ended,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Ringing { .. } => "ringing",
            State::Answered { .. } => "answered",
            State::Calling { .. } => "calling",
            State::Up { .. } => "up",
            State::Ending { .. } => "ending",
            State::Ended => "ended",
        }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Meta's headers on an INVITE or BYE (WHATSAPP-SIP §4.5), both spellings (`x-wa-meta-*` and the
/// older `X-WA-Meta-*` differ only in case, which header lookup ignores).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaHeaders {
    /// `x-wa-meta-wacid`, else the Call-ID.
    pub call_id: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub country_code: Option<String>,
    pub cta_payload: Option<String>,
    pub deeplink_payload: Option<String>,
}

impl MetaHeaders {
    pub fn of(req: &Request) -> MetaHeaders {
        let get = |n: &str| req.headers.get(n).map(str::to_string);
        MetaHeaders {
            call_id: get("x-wa-meta-wacid").or_else(|| req.call_id().map(str::to_string)),
            user_id: get("x-wa-meta-user-id"),
            user_name: get("x-wa-meta-user-name"),
            country_code: get("x-wa-meta-user-country-code"),
            cta_payload: get("x-wa-meta-cta-payload"),
            deeplink_payload: get("x-wa-meta-deeplink-payload"),
        }
    }
}

pub struct Call {
    direction: Direction,
    local: Local,
    state: State,
    call_id: String,
    out: std::collections::VecDeque<CallOutput>,
    /// Outbound: the password for the 407.
    password: Option<String>,
    bye: Option<TransactionId>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("direction", &self.direction)
            .field("call_id", &self.call_id)
            .field("state", &self.state)
            .finish()
    }
}

impl Call {
    /// An authenticated INVITE from Meta: answers 180 Ringing at once.
    pub fn incoming(invite: Request, transaction: TransactionId, local: Local) -> Call {
        let to_tag = new_tag();
        let mut ringing = Response::to_request(&invite, 180, "Ringing", Some(&to_tag));
        ringing.headers.copy_from(&invite.headers, "Record-Route");
        ringing.headers.push("Contact", local.contact.clone());
        ringing.headers.push("Server", local.user_agent.clone());
        let mut call = Call {
            direction: Direction::Inbound,
            call_id: invite.call_id().unwrap_or_default().to_string(),
            local,
            state: State::Ringing {
                invite: Box::new(invite),
                transaction,
                to_tag,
            },
            out: Default::default(),
            password: None,
            bye: None,
        };
        call.out.push_back(CallOutput::Respond {
            transaction,
            response: ringing,
        });
        call
    }

    /// A business-initiated call: emits the INVITE (no Via: the transaction layer adds it).
    pub fn outgoing(call: OutboundCall, local: Local) -> Call {
        let call_id = format!("{}@{}", new_tag(), call.hostname);
        let target = format!("sip:{}@{};transport=tls", call.to_user, call.domain);
        let uri = Uri::parse(&target).unwrap_or_else(|_| {
            Uri::parse(&format!("sip:{}", call.domain)).expect("a domain is a URI")
        });
        let mut invite = Request::new(Method::INVITE, uri);
        invite.headers.push("Max-Forwards", "70");
        invite.headers.push(
            "From",
            format!(
                "<sip:{}@{}>;tag={}",
                call.from_number,
                call.hostname,
                new_tag()
            ),
        );
        invite
            .headers
            .push("To", format!("<sip:{}@{}>", call.to_user, call.domain));
        invite.headers.push("Call-ID", call_id.clone());
        invite.headers.push("CSeq", "1 INVITE");
        invite.headers.push("Contact", local.contact.clone());
        invite.headers.push("Allow", ALLOW);
        invite.headers.push("User-Agent", local.user_agent.clone());
        invite.headers.push("Content-Type", "application/sdp");
        invite.body = call.offer;
        let mut c = Call {
            direction: Direction::Outbound,
            local,
            state: State::Calling {
                invite: Box::new(invite.clone()),
                transaction: None,
                authenticated: false,
                provisional: false,
                cancel_wanted: false,
            },
            call_id,
            out: Default::default(),
            password: call.password,
            bye: None,
        };
        c.out.push_back(CallOutput::Send(invite));
        c
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Up or answered: media may flow.
    pub fn is_answered(&self) -> bool {
        matches!(self.state, State::Answered { .. } | State::Up { .. })
    }

    /// The inbound INVITE (while ringing), for the server to build its answer from.
    pub fn invite(&self) -> Option<&Request> {
        match &self.state {
            State::Ringing { invite, .. } | State::Calling { invite, .. } => Some(invite),
            _ => None,
        }
    }

    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    /// The server started the client transaction for the last [`CallOutput::Send`].
    pub fn request_sent(&mut self, method: &Method, transaction: TransactionId) {
        match (&mut self.state, method) {
            (
                State::Calling {
                    transaction: t,
                    cancel_wanted,
                    provisional,
                    ..
                },
                &Method::INVITE,
            ) => {
                *t = Some(transaction);
                if *cancel_wanted && *provisional {
                    self.out.push_back(CallOutput::Cancel {
                        invite: transaction,
                    });
                }
            }
            (_, &Method::BYE) => self.bye = Some(transaction),
            _ => {}
        }
    }

    /// Inbound: answer with this SDP (200 OK, Record-Route copied exactly, WHATSAPP-SIP §4.3).
    pub fn answer(&mut self, sdp: Vec<u8>) -> Result<(), CallError> {
        if !matches!(self.state, State::Ringing { .. }) {
            return Err(CallError::WrongState("answer"));
        }
        let State::Ringing {
            invite,
            transaction,
            to_tag,
        } = std::mem::replace(&mut self.state, State::Ended)
        else {
            unreachable!("checked above");
        };
        let mut ok = Response::dialog_response(&invite, 200, "OK", &to_tag, &self.local.contact);
        ok.headers.push("Allow", ALLOW);
        ok.headers.push("Server", self.local.user_agent.clone());
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = sdp;
        let dialog = match Dialog::from_uas(&invite, &ok) {
            Ok(d) => d,
            Err(e) => {
                let r =
                    Response::to_request(&invite, 400, format!("Bad Request ({e})"), Some(&to_tag));
                self.out.push_back(CallOutput::Respond {
                    transaction,
                    response: r,
                });
                self.end(Ending {
                    by: Side::Remote,
                    status: Some(400),
                    reason: format!("the INVITE cannot make a dialog: {e}"),
                    sip_reason: None,
                    meta_duration_secs: None,
                });
                return Err(CallError::Dialog(e.to_string()));
            }
        };
        self.out.push_back(CallOutput::Respond {
            transaction,
            response: ok,
        });
        self.out.push_back(CallOutput::Event(CallEvent::Answered));
        self.state = State::Answered {
            dialog: Box::new(dialog),
        };
        Ok(())
    }

    /// Inbound, before answering: a final error response (404, 486, 488 with its Warning ...).
    pub fn reject(&mut self, mut response: Response, reason: String) -> Result<(), CallError> {
        if !matches!(self.state, State::Ringing { .. }) {
            return Err(CallError::WrongState("reject"));
        }
        let State::Ringing {
            invite,
            transaction,
            to_tag,
        } = std::mem::replace(&mut self.state, State::Ended)
        else {
            unreachable!("checked above");
        };
        let status = response.status;
        if response.headers.get("To").is_none() {
            let mut base =
                Response::to_request(&invite, status, response.reason.clone(), Some(&to_tag));
            for h in response.headers.iter() {
                base.headers.push(h.name.as_str(), h.value.clone());
            }
            base.body = std::mem::take(&mut response.body);
            response = base;
        }
        self.out.push_back(CallOutput::Respond {
            transaction,
            response,
        });
        self.end(Ending {
            by: Side::Local,
            status: Some(status),
            reason,
            sip_reason: None,
            meta_duration_secs: None,
        });
        Ok(())
    }

    /// The ACK for our 200.
    pub fn handle_ack(&mut self) {
        if let State::Answered { .. } = self.state {
            let State::Answered { dialog } = std::mem::replace(&mut self.state, State::Ended)
            else {
                unreachable!()
            };
            self.state = State::Up { dialog };
            self.out.push_back(CallOutput::Event(CallEvent::Confirmed));
        }
    }

    /// Inbound: the INVITE was cancelled (the transaction layer answered 487).
    pub fn handle_cancel(&mut self, cancel: &Request) {
        if let State::Ringing { .. } = self.state {
            self.end(Ending {
                by: Side::Remote,
                status: Some(487),
                reason: "cancelled by the caller before answer".into(),
                sip_reason: cancel.headers.get("Reason").map(str::to_string),
                meta_duration_secs: None,
            });
        }
    }

    /// A BYE in the dialog. Returns the response to send on its transaction.
    pub fn handle_bye(&mut self, bye: &Request) -> Response {
        let ok = Response::to_request(bye, 200, "OK", None);
        let duration = bye
            .headers
            .get("x-wa-meta-call-duration")
            .and_then(|v| v.trim().parse().ok());
        let ending = Ending {
            by: Side::Remote,
            status: None,
            reason: "hung up by the far side".into(),
            sip_reason: bye.headers.get("Reason").map(str::to_string),
            meta_duration_secs: duration,
        };
        match &mut self.state {
            State::Up { dialog } | State::Answered { dialog } => {
                if let Err(e) = dialog.handle_request(bye) {
                    let status = e.status();
                    return Response::to_request(bye, status, e.to_string(), None);
                }
                self.end(ending);
            }
            // Both sides hung up at once: answer theirs, ours ends the call when it is answered.
            State::Ending { .. } => {}
            _ => {
                return Response::to_request(
                    bye,
                    481,
                    "Call/Transaction Does Not Exist (no such dialog)",
                    None,
                )
            }
        }
        ok
    }

    /// Inbound: Timer H fired without an ACK for our 200 (WHATSAPP-SIP §4.3: a route set problem).
    pub fn handle_ack_timeout(&mut self) {
        if matches!(self.state, State::Answered { .. }) {
            self.send_bye(
                "Reason: SIP;cause=408;text=\"no ACK\"",
                Ending {
                    by: Side::Local,
                    status: None,
                    reason: "no ACK for our 200 OK within 32 s (is Record-Route intact between Meta and us?)"
                        .into(),
                    sip_reason: None,
                    meta_duration_secs: None,
                },
            );
        }
    }

    /// The application, the API or a media failure ends the call. `cause` goes in the BYE's Reason.
    pub fn hang_up(&mut self, reason: &str, q850_cause: u16) {
        match &mut self.state {
            State::Ringing { .. } => {
                let resp = Response::new(480, "Temporarily Unavailable");
                let _ = self.reject(resp, reason.to_string());
            }
            State::Calling {
                transaction,
                provisional,
                cancel_wanted,
                ..
            } => {
                *cancel_wanted = true;
                match (*transaction, *provisional) {
                    (Some(t), true) => self.out.push_back(CallOutput::Cancel { invite: t }),
                    // CANCEL waits for a provisional response (RFC 3261 §9.1).
                    (Some(_), false) => {}
                    // The INVITE has not gone out: nothing to cancel.
                    (None, _) => self.end(Ending {
                        by: Side::Local,
                        status: None,
                        reason: reason.to_string(),
                        sip_reason: None,
                        meta_duration_secs: None,
                    }),
                }
            }
            State::Answered { .. } | State::Up { .. } => self.send_bye(
                &format!("Reason: Q.850;cause={q850_cause};text=\"{reason}\""),
                Ending {
                    by: Side::Local,
                    status: None,
                    reason: reason.to_string(),
                    sip_reason: None,
                    meta_duration_secs: None,
                },
            ),
            State::Ending { .. } | State::Ended => {}
        }
    }

    fn send_bye(&mut self, reason_header: &str, ending: Ending) {
        let dialog = match std::mem::replace(&mut self.state, State::Ended) {
            State::Answered { dialog } | State::Up { dialog } => dialog,
            other => {
                self.state = other;
                return;
            }
        };
        let mut dialog = dialog;
        match dialog.create_request(Method::BYE) {
            Ok(mut bye) => {
                if let Some((name, value)) = reason_header.split_once(": ") {
                    bye.headers.push(name, value.to_string());
                }
                bye.headers
                    .push("User-Agent", self.local.user_agent.clone());
                self.out.push_back(CallOutput::Send(bye));
                self.state = State::Ending { ending };
            }
            Err(_) => self.end(ending),
        }
    }

    /// A response to one of our requests (INVITE or BYE).
    pub fn handle_response(&mut self, transaction: TransactionId, response: &Response) {
        if Some(transaction) == self.bye {
            if response.status >= 200 {
                self.finish_ending();
            }
            return;
        }
        let State::Calling {
            invite,
            transaction: current,
            authenticated,
            provisional,
            cancel_wanted,
        } = &mut self.state
        else {
            // A 2xx retransmission after we are up: ACK it again (RFC 3261 §13.2.2.4).
            if let (State::Up { dialog }, 200..=299) = (&mut self.state, response.status) {
                if let Ok(ack) = dialog.create_request(Method::ACK) {
                    self.out.push_back(CallOutput::Ack(ack));
                }
            }
            return;
        };
        if *current != Some(transaction) {
            return;
        }
        match response.status {
            100 => {}
            101..=199 => {
                *provisional = true;
                if *cancel_wanted {
                    self.out.push_back(CallOutput::Cancel {
                        invite: transaction,
                    });
                } else if matches!(response.status, 180 | 183) {
                    self.out.push_back(CallOutput::Event(CallEvent::Ringing));
                }
            }
            200..=299 => {
                let invite = invite.clone();
                let cancel_wanted = *cancel_wanted;
                match Dialog::from_uac(&invite, response) {
                    Ok(mut dialog) => {
                        if let Ok(ack) = dialog.create_request(Method::ACK) {
                            self.out.push_back(CallOutput::Ack(ack));
                        }
                        self.state = State::Up {
                            dialog: Box::new(dialog),
                        };
                        self.out.push_back(CallOutput::Event(CallEvent::Answered));
                        self.out
                            .push_back(CallOutput::RemoteAnswer(response.body.clone()));
                        if cancel_wanted {
                            self.hang_up("hung up before answer", 16);
                        }
                    }
                    Err(e) => {
                        self.end(Ending {
                            by: Side::Remote,
                            status: Some(response.status),
                            reason: format!("Meta's 2xx makes no usable dialog: {e}"),
                            sip_reason: None,
                            meta_duration_secs: None,
                        });
                    }
                }
            }
            401 | 407 if !*authenticated && self.password.is_some() => {
                let (challenge_header, creds_header) = if response.status == 401 {
                    ("WWW-Authenticate", "Authorization")
                } else {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                };
                let challenges =
                    Challenge::parse_supported(response.headers.get_all(challenge_header));
                let Some(challenge) = digest::choose_challenge(&challenges) else {
                    let status = response.status;
                    self.end(Ending {
                        by: Side::Remote,
                        status: Some(status),
                        reason: "Meta's challenge offers no digest algorithm we support".into(),
                        sip_reason: None,
                        meta_duration_secs: None,
                    });
                    return;
                };
                let user = invite
                    .from()
                    .and_then(|f| f.uri.user_base().map(str::to_string))
                    .unwrap_or_default();
                // Meta's digest username is the business number without '+' (WHATSAPP-SIP §3.6).
                let creds = Credentials::new(
                    user.trim_start_matches('+'),
                    self.password.clone().unwrap_or_default(),
                );
                let uri = invite.uri.to_string();
                let auth = digest::answer_with_random_cnonce(
                    challenge,
                    &creds,
                    "INVITE",
                    &uri,
                    &invite.body,
                    1,
                );
                let retry =
                    watrunk_sip::dialog::retry_with_auth(invite, creds_header, &auth.to_string());
                **invite = retry.clone();
                *authenticated = true;
                *current = None;
                *provisional = false;
                self.out.push_back(CallOutput::Send(retry));
            }
            status => {
                let reason =
                    outbound_failure(status, response, *authenticated, self.password.is_some());
                self.end(Ending {
                    by: Side::Remote,
                    status: Some(status),
                    reason,
                    sip_reason: response.headers.get("Reason").map(str::to_string),
                    meta_duration_secs: None,
                });
            }
        }
    }

    /// A client transaction of ours timed out or could not be sent.
    pub fn handle_request_timeout(&mut self, transaction: TransactionId) {
        if Some(transaction) == self.bye {
            self.finish_ending();
            return;
        }
        if let State::Calling { transaction: t, .. } = &self.state {
            if *t == Some(transaction) {
                self.end(Ending {
                    by: Side::Remote,
                    status: Some(408),
                    reason: "no answer from Meta (timeout): is wa.meta.vc:5061 reachable over TLS?"
                        .into(),
                    sip_reason: None,
                    meta_duration_secs: None,
                });
            }
        }
    }

    /// A request could not be sent at all (no next hop, overload). `method` is its method.
    pub fn handle_send_failure(&mut self, method: &Method, reason: &str) {
        match (&self.state, method) {
            (State::Ending { .. }, &Method::BYE) => self.finish_ending(),
            (State::Calling { .. }, &Method::INVITE) => self.end(Ending {
                by: Side::Local,
                status: None,
                reason: format!("the INVITE could not be sent: {reason}"),
                sip_reason: None,
                meta_duration_secs: None,
            }),
            _ => {}
        }
    }

    fn finish_ending(&mut self) {
        if let State::Ending { ending } = std::mem::replace(&mut self.state, State::Ended) {
            self.out
                .push_back(CallOutput::Event(CallEvent::Ended(ending)));
        }
    }

    fn end(&mut self, ending: Ending) {
        self.state = State::Ended;
        self.out
            .push_back(CallOutput::Event(CallEvent::Ended(ending)));
    }
}

/// What a failed business-initiated call means for the user (WHATSAPP-SIP §6).
fn outbound_failure(
    status: u16,
    response: &Response,
    authenticated: bool,
    has_password: bool,
) -> String {
    let warning = response
        .headers
        .get("Warning")
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    let what = match status {
        401 | 407 if !has_password => "Meta asks for digest credentials: configure the number's SIP password",
        401 | 407 | 403 if authenticated => "Meta rejected our credentials: check the number's SIP password",
        403 => "forbidden: no call permission from this user, or the From host does not match the number's SIP hostname",
        404 => "not found: the number or user is not reachable on WhatsApp (or the Request-URI is not at wa.meta.vc)",
        480 => "the user is unavailable",
        486 | 600 => "the user is busy",
        487 => "cancelled before answer",
        603 => "declined by the user",
        408 | 504 => "no answer (timeout)",
        488 | 606 => "Meta did not accept our SDP offer",
        300..=399 => "redirected, which Meta does not do: not followed",
        500..=599 => "Meta's side failed",
        _ => "the call failed",
    };
    format!("{status} {}: {what}{warning}", response.reason)
}

#[cfg(test)]
mod tests;
