//! Client transactions (RFC 3261 §17.1): INVITE, with the Accepted state of RFC 6026 §7.2, and
//! non-INVITE. The ACK for a non-2xx final response is built and retransmitted here.

use std::mem;
use std::time::Instant;

use super::{Backoff, CancelError, Ctx, Event, TimeoutReason};
use crate::message::{Request, Response};
use crate::method::Method;

/// Client INVITE transaction (RFC 3261 §17.1.1, Figure 5; RFC 6026 §7.2).
///
/// | state              | input                     | action                         | next       |
/// |--------------------|---------------------------|--------------------------------|------------|
/// | Calling            | Timer A (UDP only)        | resend; A doubles, no cap      | Calling    |
/// | Calling            | Timer B (64*T1)           | Timeout(NoFinalResponse)       | Terminated |
/// | Calling/Proceeding | 1xx                       | to TU                          | Proceeding |
/// | Proceeding         | 64*T1 after our CANCEL    | Timeout(NoFinalResponse)       | Terminated |
/// | Calling/Proceeding | 2xx                       | to TU; start Timer M (64*T1)   | Accepted   |
/// | Calling/Proceeding | 300-699                   | to TU; send ACK; start Timer D | Completed  |
/// | Completed          | 300-699 (retransmission)  | resend ACK                     | Completed  |
/// | Completed          | Timer D (zero on TCP/TLS) |                                | Terminated |
/// | Accepted           | 2xx (resent or forked)    | to TU (the UAC core ACKs 2xx)  | Accepted   |
/// | Accepted           | Timer M                   |                                | Terminated |
/// | any                | transport error           | (the layer reports it)         | Terminated |
///
/// Anything else (a 1xx after a final response, a non-2xx in Accepted) is absorbed.
#[derive(Debug)]
pub(super) struct ClientInvite {
    request: Request,
    state: InviteState,
}

#[derive(Debug)]
enum InviteState {
    Calling {
        timer_a: Option<Backoff>,
        timer_b: Instant,
    },
    Proceeding {
        cancel_deadline: Option<Instant>,
    },
    Completed {
        ack: Request,
        timer_d: Instant,
    },
    Accepted {
        timer_m: Instant,
    },
    Terminated,
}

impl ClientInvite {
    pub fn start(now: Instant, request: Request, cx: &mut Ctx<'_>) -> Self {
        cx.send_request(request.clone());
        let timer_a = (!cx.reliable()).then(|| Backoff::start(now, cx.timers.t1));
        ClientInvite {
            request,
            state: InviteState::Calling {
                timer_a,
                timer_b: now + cx.long(),
            },
        }
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

    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            InviteState::Calling { timer_a, timer_b } => {
                Some(timer_a.map_or(*timer_b, |a| a.at.min(*timer_b)))
            }
            InviteState::Proceeding { cancel_deadline } => *cancel_deadline,
            InviteState::Completed { timer_d, .. } => Some(*timer_d),
            InviteState::Accepted { timer_m } => Some(*timer_m),
            InviteState::Terminated => None,
        }
    }

    pub fn on_response(&mut self, now: Instant, response: Response, cx: &mut Ctx<'_>) {
        use InviteState::*;
        let id = cx.id;
        self.state = match (mem::replace(&mut self.state, Terminated), response.status) {
            (Calling { .. }, 100..=199) => {
                cx.event(Event::Response { id, response });
                Proceeding {
                    cancel_deadline: None,
                }
            }
            (Proceeding { cancel_deadline }, 100..=199) => {
                cx.event(Event::Response { id, response });
                Proceeding { cancel_deadline }
            }
            (Calling { .. } | Proceeding { .. }, 200..=299) => {
                cx.event(Event::Response { id, response });
                Accepted {
                    timer_m: now + cx.long(),
                }
            }
            (Calling { .. } | Proceeding { .. }, _) => {
                let ack = ack_for_non_2xx(&self.request, &response);
                cx.send_request(ack.clone());
                cx.event(Event::Response { id, response });
                match cx.unreliable_only(cx.timers.d) {
                    d if d.is_zero() => Terminated,
                    d => Completed {
                        ack,
                        timer_d: now + d,
                    },
                }
            }
            (Completed { ack, timer_d }, 300..) => {
                cx.send_request(ack.clone());
                Completed { ack, timer_d }
            }
            (Accepted { timer_m }, 200..=299) => {
                cx.event(Event::Response { id, response });
                Accepted { timer_m }
            }
            (state, _) => state,
        };
    }

    pub fn on_timeout(&mut self, now: Instant, cx: &mut Ctx<'_>) {
        use InviteState::*;
        let id = cx.id;
        self.state = match mem::replace(&mut self.state, Terminated) {
            Calling { timer_b, .. } if timer_b <= now => {
                cx.event(Event::Timeout {
                    id,
                    reason: TimeoutReason::NoFinalResponse,
                });
                Terminated
            }
            Calling {
                timer_a: Some(a),
                timer_b,
            } if a.at <= now => {
                cx.send_request(self.request.clone());
                Calling {
                    timer_a: Some(a.next(now, None)),
                    timer_b,
                }
            }
            Proceeding {
                cancel_deadline: Some(t),
            } if t <= now => {
                cx.event(Event::Timeout {
                    id,
                    reason: TimeoutReason::NoFinalResponse,
                });
                Terminated
            }
            Completed { timer_d, .. } if timer_d <= now => Terminated,
            Accepted { timer_m } if timer_m <= now => Terminated,
            state => state,
        };
    }

    /// Our CANCEL for this INVITE went out: RFC 3261 §9.1 gives the INVITE 64*T1 more for its final
    /// response. A CANCEL may only be sent once a provisional response has arrived.
    pub fn cancel_sent(&mut self, now: Instant, cx: &Ctx<'_>) -> Result<(), CancelError> {
        match &mut self.state {
            InviteState::Proceeding { cancel_deadline } => {
                cancel_deadline.get_or_insert(now + cx.long());
                Ok(())
            }
            InviteState::Calling { .. } => Err(CancelError::NoProvisionalYet),
            _ => Err(CancelError::AlreadyFinal),
        }
    }
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): Request-URI, Call-ID, From, the top
/// Via (same branch) and Route of the INVITE, To of the response (with its tag), CSeq number with
/// method ACK.
pub fn ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let mut ack = Request::new(Method::ACK, invite.uri.clone());
    if let Some(via) = invite.headers.values("Via").next() {
        ack.headers.push("Via", via.to_string());
    }
    ack.headers.push("Max-Forwards", "70");
    ack.headers.copy_from(&invite.headers, "From");
    ack.headers.copy_from(&response.headers, "To");
    ack.headers.copy_from(&invite.headers, "Call-ID");
    let seq = invite.cseq().map_or(0, |c| c.seq);
    ack.headers.push("CSeq", format!("{seq} ACK"));
    ack.headers.copy_from(&invite.headers, "Route");
    ack
}

/// Client non-INVITE transaction (RFC 3261 §17.1.2, Figure 6).
///
/// | state             | input                      | action                   | next       |
/// |-------------------|----------------------------|--------------------------|------------|
/// | Trying            | Timer E (UDP only)         | resend; E = min(2E, T2)  | Trying     |
/// | Proceeding        | Timer E (UDP only)         | resend; E = T2           | Proceeding |
/// | Trying/Proceeding | Timer F (64*T1)            | Timeout(NoFinalResponse) | Terminated |
/// | Trying/Proceeding | 1xx                        | to TU                    | Proceeding |
/// | Trying/Proceeding | 200-699                    | to TU; start Timer K     | Completed  |
/// | Completed         | any response               | absorbed                 | Completed  |
/// | Completed         | Timer K (T4; 0 on TCP/TLS) |                          | Terminated |
/// | any               | transport error            | (the layer reports it)   | Terminated |
#[derive(Debug)]
pub(super) struct ClientNonInvite {
    request: Request,
    state: NonInviteState,
}

#[derive(Debug)]
enum NonInviteState {
    Trying {
        timer_e: Option<Backoff>,
        timer_f: Instant,
    },
    Proceeding {
        timer_e: Option<Backoff>,
        timer_f: Instant,
    },
    Completed {
        timer_k: Instant,
    },
    Terminated,
}

impl ClientNonInvite {
    pub fn start(now: Instant, request: Request, cx: &mut Ctx<'_>) -> Self {
        cx.send_request(request.clone());
        let timer_e = (!cx.reliable()).then(|| Backoff::start(now, cx.timers.t1));
        ClientNonInvite {
            request,
            state: NonInviteState::Trying {
                timer_e,
                timer_f: now + cx.long(),
            },
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, NonInviteState::Terminated)
    }

    pub fn terminate(&mut self) {
        self.state = NonInviteState::Terminated;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            NonInviteState::Trying { timer_e, timer_f }
            | NonInviteState::Proceeding { timer_e, timer_f } => {
                Some(timer_e.map_or(*timer_f, |e| e.at.min(*timer_f)))
            }
            NonInviteState::Completed { timer_k } => Some(*timer_k),
            NonInviteState::Terminated => None,
        }
    }

    pub fn on_response(&mut self, now: Instant, response: Response, cx: &mut Ctx<'_>) {
        use NonInviteState::*;
        let id = cx.id;
        self.state = match (mem::replace(&mut self.state, Terminated), response.status) {
            (Trying { timer_e, timer_f } | Proceeding { timer_e, timer_f }, 100..=199) => {
                cx.event(Event::Response { id, response });
                Proceeding { timer_e, timer_f }
            }
            (Trying { .. } | Proceeding { .. }, _) => {
                cx.event(Event::Response { id, response });
                match cx.unreliable_only(cx.timers.t4) {
                    k if k.is_zero() => Terminated,
                    k => Completed { timer_k: now + k },
                }
            }
            (state, _) => state,
        };
    }

    pub fn on_timeout(&mut self, now: Instant, cx: &mut Ctx<'_>) {
        use NonInviteState::*;
        let id = cx.id;
        let t2 = cx.timers.t2;
        self.state = match mem::replace(&mut self.state, Terminated) {
            Trying { timer_f, .. } | Proceeding { timer_f, .. } if timer_f <= now => {
                cx.event(Event::Timeout {
                    id,
                    reason: TimeoutReason::NoFinalResponse,
                });
                Terminated
            }
            Trying {
                timer_e: Some(e),
                timer_f,
            } if e.at <= now => {
                cx.send_request(self.request.clone());
                Trying {
                    timer_e: Some(e.next(now, Some(t2))),
                    timer_f,
                }
            }
            Proceeding {
                timer_e: Some(e),
                timer_f,
            } if e.at <= now => {
                cx.send_request(self.request.clone());
                Proceeding {
                    timer_e: Some(Backoff::start(now, t2)),
                    timer_f,
                }
            }
            Completed { timer_k } if timer_k <= now => Terminated,
            state => state,
        };
    }
}
