//! Server transactions (RFC 3261 §17.2): INVITE, with the Accepted state of RFC 6026 §7.1, and
//! non-INVITE. The automatic 100 Trying, the 487 after a CANCEL and the retransmission of our 2xx
//! until its ACK arrives (RFC 3261 §13.3.1.4, a UAS core duty kept here so the TU sends a 2xx once)
//! live here.

use std::mem;
use std::time::{Duration, Instant};

use super::{Backoff, Ctx, Event, Peer, RespondError, TimeoutReason};
use crate::message::{reason_phrase, Request, Response};
use crate::method::Method;

/// Server INVITE transaction (RFC 3261 §17.2.1, Figure 7; RFC 6026 §7.1).
///
/// | state      | input                    | action                              | next       |
/// |------------|--------------------------|-------------------------------------|------------|
/// | Proceeding | INVITE (retransmission)  | resend the last 1xx, if any         | Proceeding |
/// | Proceeding | trying delay, no 1xx yet | send 100 Trying                     | Proceeding |
/// | Proceeding | TU 1xx                   | send                                | Proceeding |
/// | Proceeding | CANCEL matched (layer)   | send 487; start G (UDP), H          | Completed  |
/// | Proceeding | TU 300-699               | send; start G (UDP), H (64*T1)      | Completed  |
/// | Proceeding | TU 2xx                   | send; start 2xx resend (T1..T2), L  | Accepted   |
/// | Completed  | INVITE (retransmission)  | resend the final response           | Completed  |
/// | Completed  | Timer G                  | resend; G = min(2G, T2)             | Completed  |
/// | Completed  | Timer H                  | Timeout(NoAck) to TU                | Terminated |
/// | Completed  | ACK                      | start I (T4; zero on TCP/TLS)       | Confirmed  |
/// | Confirmed  | ACK, INVITE              | absorbed                            | Confirmed  |
/// | Confirmed  | Timer I                  |                                     | Terminated |
/// | Accepted   | INVITE resent, not ACKed | resend the 2xx                      | Accepted   |
/// | Accepted   | 2xx resend timer, no ACK | resend the 2xx (any transport)      | Accepted   |
/// | Accepted   | TU 2xx                   | send; it replaces the one resent    | Accepted   |
/// | Accepted   | first ACK (of the 2xx)   | Ack to TU; stop resending           | Accepted   |
/// | Accepted   | Timer L (64*T1)          | Timeout(NoAck) to TU if never ACKed | Terminated |
/// | any        | transport error          | (the layer reports it)              | Terminated |
#[derive(Debug)]
pub(super) struct ServerInvite {
    request: Request,
    /// The To tag of our responses, reused for the 487 and for the 200 to a CANCEL (RFC 3261 §9.2).
    to_tag: String,
    state: InviteState,
}

#[derive(Debug)]
enum InviteState {
    Proceeding {
        last: Option<Response>,
        auto_trying: Option<Instant>,
    },
    Completed {
        response: Response,
        timer_g: Option<Backoff>,
        timer_h: Instant,
    },
    Confirmed {
        timer_i: Instant,
    },
    /// `resend` is None once the ACK arrived.
    Accepted {
        response: Response,
        resend: Option<Backoff>,
        timer_l: Instant,
    },
    Terminated,
}

impl ServerInvite {
    /// `trying_delay`: when to send 100 Trying if the TU has not sent a provisional; None: never.
    /// `fresh_tag`: our To tag if the request has none and the TU sends no tagged response first.
    pub fn start(
        now: Instant,
        request: Request,
        trying_delay: Option<Duration>,
        fresh_tag: String,
        cx: &mut Ctx<'_>,
    ) -> Self {
        let mut tx = ServerInvite {
            to_tag: request
                .to()
                .and_then(|t| t.tag().map(str::to_string))
                .unwrap_or(fresh_tag),
            request,
            state: InviteState::Proceeding {
                last: None,
                auto_trying: trying_delay.map(|d| now + d),
            },
        };
        if trying_delay.is_some_and(|d| d.is_zero()) {
            tx.on_timeout(now, cx);
        }
        tx
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, InviteState::Terminated)
    }

    pub fn terminate(&mut self) {
        self.state = InviteState::Terminated;
    }

    pub fn has_final(&self) -> bool {
        !matches!(self.state, InviteState::Proceeding { .. })
    }

    /// A 2xx sent and ACKed: only a retransmitted INVITE is absorbed until Timer L (Accepted).
    pub fn is_acked_accepted(&self) -> bool {
        matches!(self.state, InviteState::Accepted { resend: None, .. })
    }

    /// The To tag our responses carry (or will carry), chosen now if no tagged response was sent
    /// yet.
    pub fn to_tag(&self) -> String {
        self.to_tag.clone()
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            InviteState::Proceeding { auto_trying, .. } => *auto_trying,
            InviteState::Completed {
                timer_g, timer_h, ..
            } => Some(timer_g.map_or(*timer_h, |g| g.at.min(*timer_h))),
            InviteState::Confirmed { timer_i } => Some(*timer_i),
            InviteState::Accepted {
                resend, timer_l, ..
            } => Some(resend.map_or(*timer_l, |r| r.at.min(*timer_l))),
            InviteState::Terminated => None,
        }
    }

    /// A request that matched this transaction: a retransmitted INVITE or an ACK.
    pub fn on_request(&mut self, now: Instant, request: Request, from: &Peer, cx: &mut Ctx<'_>) {
        use InviteState::*;
        if request.method != Method::ACK {
            match &self.state {
                Proceeding {
                    last: Some(resp), ..
                }
                | Completed { response: resp, .. }
                | Accepted {
                    response: resp,
                    resend: Some(_),
                    ..
                } => cx.send_response(resp.clone()),
                _ => {}
            }
            return;
        }
        let id = cx.id;
        self.state = match mem::replace(&mut self.state, Terminated) {
            Completed { .. } => match cx.unreliable_only(cx.timers.t4) {
                i if i.is_zero() => Terminated,
                i => Confirmed { timer_i: now + i },
            },
            Accepted {
                response,
                resend: Some(_),
                timer_l,
            } => {
                cx.event(Event::Ack {
                    invite_id: Some(id),
                    request,
                    from: from.clone(),
                });
                Accepted {
                    response,
                    resend: None,
                    timer_l,
                }
            }
            // A repeated ACK, or an ACK before any final response (the peer's mistake): absorbed.
            state => state,
        };
    }

    pub fn respond(
        &mut self,
        now: Instant,
        response: Response,
        cx: &mut Ctx<'_>,
    ) -> Result<(), RespondError> {
        use InviteState::*;
        if let Some(tag) = response.to().and_then(|t| t.tag().map(str::to_string)) {
            self.to_tag = tag;
        }
        let status = response.status;
        self.state = match (mem::replace(&mut self.state, Terminated), status) {
            (Proceeding { .. }, 100..=199) => {
                cx.send_response(response.clone());
                Proceeding {
                    last: Some(response),
                    auto_trying: None,
                }
            }
            (Proceeding { .. }, 200..=299) => {
                cx.send_response(response.clone());
                Accepted {
                    response,
                    resend: Some(Backoff::start(now, cx.timers.t1)),
                    timer_l: now + cx.long(),
                }
            }
            (Proceeding { .. }, _) => Self::complete(now, response, cx),
            (
                Accepted {
                    resend, timer_l, ..
                },
                200..=299,
            ) => {
                cx.send_response(response.clone());
                Accepted {
                    response,
                    resend,
                    timer_l,
                }
            }
            (state, _) => {
                self.state = state;
                return Err(RespondError::AlreadyFinal);
            }
        };
        Ok(())
    }

    fn complete(now: Instant, response: Response, cx: &mut Ctx<'_>) -> InviteState {
        cx.send_response(response.clone());
        InviteState::Completed {
            response,
            timer_g: (!cx.reliable()).then(|| Backoff::start(now, cx.timers.t1)),
            timer_h: now + cx.long(),
        }
    }

    /// A CANCEL matched: if no final response was sent, answer 487 (RFC 3261 §9.2). Returns whether
    /// the INVITE was cancelled.
    pub fn cancel(&mut self, now: Instant, cx: &mut Ctx<'_>) -> bool {
        if self.has_final() || self.is_terminated() {
            return false;
        }
        let tag = self.to_tag();
        let resp = Response::to_request(&self.request, 487, reason_phrase(487), Some(&tag));
        self.state = Self::complete(now, resp, cx);
        true
    }

    pub fn on_timeout(&mut self, now: Instant, cx: &mut Ctx<'_>) {
        use InviteState::*;
        let id = cx.id;
        let t2 = cx.timers.t2;
        self.state = match mem::replace(&mut self.state, Terminated) {
            Proceeding {
                auto_trying: Some(t),
                ..
            } if t <= now => {
                let trying = trying_for(&self.request);
                cx.send_response(trying.clone());
                Proceeding {
                    last: Some(trying),
                    auto_trying: None,
                }
            }
            Completed { timer_h, .. } if timer_h <= now => {
                cx.event(Event::Timeout {
                    id,
                    reason: TimeoutReason::NoAck,
                });
                Terminated
            }
            Completed {
                response,
                timer_g: Some(g),
                timer_h,
            } if g.at <= now => {
                cx.send_response(response.clone());
                Completed {
                    response,
                    timer_g: Some(g.next(now, Some(t2))),
                    timer_h,
                }
            }
            Confirmed { timer_i } if timer_i <= now => Terminated,
            Accepted {
                resend, timer_l, ..
            } if timer_l <= now => {
                if resend.is_some() {
                    cx.event(Event::Timeout {
                        id,
                        reason: TimeoutReason::NoAck,
                    });
                }
                Terminated
            }
            Accepted {
                response,
                resend: Some(r),
                timer_l,
            } if r.at <= now => {
                cx.send_response(response.clone());
                Accepted {
                    response,
                    resend: Some(r.next(now, Some(t2))),
                    timer_l,
                }
            }
            state => state,
        };
    }
}

/// 100 Trying (RFC 3261 §8.2.6.1): no To tag, Timestamp echoed.
fn trying_for(request: &Request) -> Response {
    let mut r = Response::to_request(request, 100, reason_phrase(100), None);
    r.headers.copy_from(&request.headers, "Timestamp");
    r
}

/// Server non-INVITE transaction (RFC 3261 §17.2.2, Figure 8).
///
/// | state             | input                    | action                           | next       |
/// |-------------------|--------------------------|----------------------------------|------------|
/// | Trying            | request (retransmission) | absorbed                         | Trying     |
/// | Trying/Proceeding | TU 1xx                   | send                             | Proceeding |
/// | Proceeding        | request (retransmission) | resend the last provisional      | Proceeding |
/// | Trying/Proceeding | TU 200-699               | send; J (64*T1; zero on TCP/TLS) | Completed  |
/// | Trying/Proceeding | 64*T1 without a final    | Timeout(NoTuResponse) to TU      | Terminated |
/// | Completed         | request (retransmission) | resend the final response        | Completed  |
/// | Completed         | Timer J                  |                                  | Terminated |
/// | any               | transport error          | (the layer reports it)           | Terminated |
///
/// The 64*T1 limit without a final response is ours, not the RFC's: by then the client's Timer F
/// has fired, so keeping the transaction would only hold a slot of the bounded layer.
#[derive(Debug)]
pub(super) struct ServerNonInvite {
    request: Request,
    state: NonInviteState,
}

#[derive(Debug)]
enum NonInviteState {
    Trying {
        give_up: Instant,
    },
    Proceeding {
        last: Response,
        give_up: Instant,
    },
    Completed {
        response: Response,
        timer_j: Instant,
    },
    Terminated,
}

impl ServerNonInvite {
    pub fn start(now: Instant, request: Request, cx: &Ctx<'_>) -> Self {
        ServerNonInvite {
            request,
            state: NonInviteState::Trying {
                give_up: now + cx.long(),
            },
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, NonInviteState::Terminated)
    }

    pub fn is_completed(&self) -> bool {
        matches!(self.state, NonInviteState::Completed { .. })
    }

    pub fn terminate(&mut self) {
        self.state = NonInviteState::Terminated;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            NonInviteState::Trying { give_up } | NonInviteState::Proceeding { give_up, .. } => {
                Some(*give_up)
            }
            NonInviteState::Completed { timer_j, .. } => Some(*timer_j),
            NonInviteState::Terminated => None,
        }
    }

    pub fn on_request(&mut self, cx: &mut Ctx<'_>) {
        match &self.state {
            NonInviteState::Proceeding { last: resp, .. }
            | NonInviteState::Completed { response: resp, .. } => cx.send_response(resp.clone()),
            NonInviteState::Trying { .. } | NonInviteState::Terminated => {}
        }
    }

    pub fn respond(
        &mut self,
        now: Instant,
        response: Response,
        cx: &mut Ctx<'_>,
    ) -> Result<(), RespondError> {
        use NonInviteState::*;
        self.state = match (mem::replace(&mut self.state, Terminated), response.status) {
            (Trying { give_up } | Proceeding { give_up, .. }, 100..=199) => {
                cx.send_response(response.clone());
                Proceeding {
                    last: response,
                    give_up,
                }
            }
            (Trying { .. } | Proceeding { .. }, _) => {
                cx.send_response(response.clone());
                match cx.unreliable_only(cx.long()) {
                    j if j.is_zero() => Terminated,
                    j => Completed {
                        response,
                        timer_j: now + j,
                    },
                }
            }
            (state, _) => {
                self.state = state;
                return Err(RespondError::AlreadyFinal);
            }
        };
        Ok(())
    }

    pub fn on_timeout(&mut self, now: Instant, cx: &mut Ctx<'_>) {
        use NonInviteState::*;
        let id = cx.id;
        self.state = match mem::replace(&mut self.state, Terminated) {
            Trying { give_up } | Proceeding { give_up, .. } if give_up <= now => {
                cx.event(Event::Timeout {
                    id,
                    reason: TimeoutReason::NoTuResponse,
                });
                Terminated
            }
            Completed { timer_j, .. } if timer_j <= now => Terminated,
            state => state,
        };
    }
}
