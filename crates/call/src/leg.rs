//! One call leg's invite session: the dialog, the offer/answer and the media intents, for INVITEs we
//! receive (inbound) and INVITEs we send (outbound). Every input is a method; every effect is a
//! [`CallOutput`] drained with [`Leg::poll_output`]. States are an enum whose transitions take the
//! old state by value ([`Leg::step`]).
//!
//! Inbound:
//!
//! | state     | input                              | output                                  | next      |
//! |-----------|------------------------------------|-----------------------------------------|-----------|
//! | (new)     | INVITE, offer refused              | `Err(488 + Warning)`: no leg is made    | -         |
//! | (new)     | INVITE, offer agreed or no offer   | 180 Ringing                             | Ringing   |
//! | Ringing   | `answer()`                         | Media(Prepare)                          | Ringing   |
//! | Ringing   | `media_ready` after `answer()`     | 200 OK (Record-Route copied), Start     | Accepted  |
//! | Ringing   | `reject`, `hang_up`, media failed  | the final response, Stop                | Ended     |
//! | Ringing   | CANCEL (layer answered 487)        | Ended, Stop                             | Ended     |
//! | Accepted  | ACK (with the answer, if we offered)| Confirmed (Start)                      | Up        |
//! | Accepted  | no ACK by Timer H                  | BYE (Reason: no ACK), Stop              | Ending    |
//!
//! Outbound:
//!
//! | state     | input                              | output                                  | next      |
//! |-----------|------------------------------------|-----------------------------------------|-----------|
//! | (new)     | `outgoing`                         | Media(Prepare)                          | Preparing |
//! | Preparing | `media_ready`                      | INVITE with our offer                   | Calling   |
//! | Calling   | 401/407, first time                | INVITE with credentials                 | Calling   |
//! | Calling   | 401/407 again, or no password      | Ended (credentials rejected)            | Ended     |
//! | Calling   | 1xx                                | Ringing event on 180/183                | Calling   |
//! | Calling   | 2xx with an acceptable answer      | ACK, Answered, Start                    | Up        |
//! | Calling   | 2xx with an unacceptable answer    | ACK, BYE (Reason: the rule)             | Ending    |
//! | Calling   | 3xx-6xx, timeout                   | Ended with a readable reason, Stop      | Ended     |
//! | Calling   | `hang_up`                          | CANCEL (once a provisional came)        | Calling   |
//!
//! In the dialog (Up; Accepted answers requests the same way, but a re-offer before the ACK gets
//! 500 with Retry-After, RFC 3261 §14.2):
//!
//! | input                                   | policy      | output                                   |
//! |-----------------------------------------|-------------|------------------------------------------|
//! | BYE                                     | any         | 200, Ended, Stop                         |
//! | re-INVITE or UPDATE                     | WhatsApp    | 488 (no renegotiation on this leg)       |
//! | re-INVITE/UPDATE with an offer          | generic     | 200 with our answer, Update              |
//! | re-INVITE without an offer              | generic     | 200 with our offer; answer in the ACK    |
//! | UPDATE without an offer (a refresh)     | generic     | 200                                      |
//! | re-INVITE/UPDATE while our offer is out | generic     | 491 Request Pending (glare)              |
//! | `reoffer` (hold, resume)                | generic     | re-INVITE or UPDATE; Update on its 2xx   |
//! | 491 to our re-offer                     | generic     | the re-offer again after 2.1-4 s / 0-2 s |
//! | `hang_up`, media failed                 | any         | BYE, Stop                                | (Ending)
//!
//! Ending ends on the BYE's response or timeout. Never sent on the WhatsApp leg: re-INVITE,
//! UPDATE, Session-Expires, REGISTER (WHATSAPP-SIP §3, §5).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use watrunk_sdp::{self as sdp, AgreedOffer, Capabilities, IceRole, LocalMedia, MediaPlan};
use watrunk_sdp::{OfferState, SdpError, Security};
use watrunk_sip::dialog::{new_tag, Dialog};
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::message::reason_phrase;
use watrunk_sip::transaction::TransactionId;
use watrunk_sip::uri::Uri;
use watrunk_sip::{Method, Request, Response};

pub use watrunk_sdp::Direction;

use crate::ending::{outbound_failure, Ending, MediaFailure, Side};
use crate::policy::LegPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallDirection {
    Inbound,
    Outbound,
}

/// What the binary's media should do for this leg.
#[derive(Debug, PartialEq, Eq)]
pub enum MediaIntent {
    /// Make our local description: a port, ICE credentials and candidates in `ice_role`, the DTLS
    /// identity or an SDES key. Answer with [`Leg::media_ready`] or [`Leg::media_failed`].
    Prepare {
        security: Security,
        ice_role: IceRole,
    },
    /// Run the session from this plan, sending with `ssrc` (the one our SDP announced).
    Start { plan: Box<MediaPlan>, ssrc: u32 },
    /// A re-negotiation changed the plan (hold, resume, a new address or codec).
    Update { plan: Box<MediaPlan> },
    /// Send these keys as RFC 4733 events.
    SendDtmf { keys: String },
    /// The leg is over: release its media.
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// Outbound: the far side is ringing (180/183).
    Ringing,
    /// The call is answered: inbound when our 200 is sent, outbound when the 2xx arrived.
    Answered,
    /// Inbound: the ACK for our 200 arrived.
    Confirmed,
    /// A re-negotiation finished: the stream's direction from our side now.
    MediaUpdated(Direction),
    /// Our re-offer was refused with this status; the previous media stays.
    ReofferRefused(u16),
    /// The far side pressed a key by SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    Dtmf(char),
    /// The far side asks us to call `target` instead (a blind transfer, RFC 3515): its REFER got
    /// 202; how the new call goes is told with [`Leg::notify_refer`].
    Refer(Uri),
    Ended(Ending),
}

#[derive(Debug, PartialEq, Eq)]
pub enum CallOutput {
    /// Send this response on the server transaction.
    Respond {
        transaction: TransactionId,
        response: Response,
    },
    /// Start a client transaction for this request (INVITE, re-INVITE, UPDATE, BYE). The binary
    /// hands the transaction id back through [`Leg::request_sent`].
    Send(Request),
    /// The ACK for a 2xx (sent outside any transaction).
    Ack(Request),
    /// CANCEL the outbound INVITE.
    Cancel {
        invite: TransactionId,
    },
    Media(MediaIntent),
    Event(CallEvent),
}

/// The local facts a leg needs: our Contact, User-Agent and the host named in Warning headers.
#[derive(Clone, Debug)]
pub struct Local {
    /// `<sip:+15550001111@sip.example.com;transport=tls>`
    pub contact: String,
    pub user_agent: String,
    /// The host in `Warning: 399 <host> "..."`.
    pub warning_host: String,
}

/// Everything a leg is configured with.
#[derive(Clone, Debug)]
pub struct LegSetup {
    pub local: Local,
    /// What our SDP may say: the profile, our offers' key exchange, the codecs.
    pub capabilities: Capabilities,
    pub policy: LegPolicy,
}

/// A call we place: who calls whom, at which domain.
#[derive(Clone, Debug)]
pub struct OutboundCall {
    /// `+15550001111`
    pub from_number: String,
    /// Our hostname: the From host Meta checks (WHATSAPP-SIP §3.2).
    pub hostname: String,
    /// `+15557654321` or a BSUID.
    pub to_user: String,
    /// Meta's SIP domain, `wa.meta.vc`; a PBX's `host[:port]`.
    pub domain: String,
    /// The Request-URI's transport: `tls` toward Meta; `udp`, `tcp` or `tls` toward a PBX.
    pub transport: String,
    /// The SIP password for a 401/407: the number's toward Meta, ours toward a PBX.
    pub password: Option<String>,
    /// The digest username; None: the From user without '+' (Meta's rule, WHATSAPP-SIP §3.6).
    pub username: Option<String>,
    /// Say the caller again in `P-Asserted-Identity` (RFC 3325), for a PBX that trusts us.
    pub asserted_identity: bool,
}

/// How we send a re-offer on a generic leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reoffer {
    Invite,
    Update,
}

impl Reoffer {
    fn method(self) -> Method {
        match self {
            Reoffer::Invite => Method::INVITE,
            Reoffer::Update => Method::UPDATE,
        }
    }
}

/// Local misuse of a leg: the caller asked for something the state or the policy does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("local misuse: the call is {state}, which does not allow {what}")]
    WrongState {
        what: &'static str,
        state: &'static str,
    },
    #[error("local misuse: {0} is not allowed on this leg (its policy forbids it)")]
    Forbidden(&'static str),
    #[error("local misuse: an offer of ours is still waiting for its answer")]
    OfferPending,
    #[error("local misuse: the call negotiated no telephone-event payload type")]
    NoDtmf,
    #[error("configuration: {0} does not make a SIP URI")]
    BadTarget(String),
}

struct Ringing {
    invite: Request,
    transaction: TransactionId,
    to_tag: String,
    /// None: the INVITE had no offer; ours goes in the 200 (RFC 3261 §13.2.1).
    offer: Option<AgreedOffer>,
    /// `answer()` was called: the 200 goes out once our local description exists.
    answering: bool,
    local: Option<LocalMedia>,
    /// Our 180 asks for a PRACK (RFC 3262): until it comes.
    reliable: Option<Box<ReliableRinging>>,
}

/// RFC 3262 §3: a reliable provisional is retransmitted from T1, doubling, until its PRACK; after
/// 64·T1 without one the INVITE is refused with a 5xx.
const RELIABLE_T1: std::time::Duration = std::time::Duration::from_millis(500);

/// Our reliable 180, waiting for its PRACK.
struct ReliableRinging {
    rseq: u32,
    response: Response,
    interval: std::time::Duration,
    retransmit_at: Instant,
    give_up_at: Instant,
}

/// The request requires the option tag `tag` (`Require`).
fn option_required(req: &Request, tag: &str) -> bool {
    req.headers
        .values("Require")
        .any(|v| v.trim().eq_ignore_ascii_case(tag))
}

struct Preparing {
    invite: Request,
    cancel_wanted: bool,
}

/// The key of a SIP INFO DTMF (the legacy `application/dtmf-relay` body, `Signal=5` and
/// `Duration=160` lines, as Asterisk and Cisco send it; or `application/dtmf`, the key alone), or
/// the status and phrase that refuse it.
fn info_dtmf(req: &Request) -> Result<char, (u16, &'static str)> {
    let content_type = req
        .headers
        .get("Content-Type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let body = std::str::from_utf8(&req.body).map_err(|_| (400, "Bad Request (body not UTF-8)"))?;
    let signal = match content_type.as_str() {
        "application/dtmf-relay" => body
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("signal"))
            .map(|(_, v)| v.trim())
            .ok_or((400, "Bad Request (no Signal= line)"))?,
        "application/dtmf" => body.trim(),
        _ => return Err((415, "Unsupported Media Type (only DTMF by INFO)")),
    };
    let mut chars = signal.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || "*#ABCDabcd".contains(c) => {
            Ok(c.to_ascii_uppercase())
        }
        _ => match signal {
            "10" => Ok('*'),
            "11" => Ok('#'),
            _ => Err((400, "Bad Request (not a DTMF key)")),
        },
    }
}

/// What became of a provisional response that asked for a PRACK.
enum Prack {
    Sent,
    /// Seen before (its RSeq was PRACKed): discarded.
    Retransmission,
    /// No usable RSeq or early dialog: taken as an ordinary provisional.
    NotReliable,
}

/// A PRACK for our reliable 180 (RFC 3262 §3): its RAck must name that 180's RSeq and the INVITE's
/// CSeq; it stops the retransmissions.
fn prack_received(r: &mut Ringing, prack: &Request) -> Response {
    let matches = match (r.reliable.as_deref(), rack_of(prack)) {
        (Some(rel), Some(rack)) => rack == (rel.rseq, cseq_number(&r.invite)),
        _ => false,
    };
    if !matches {
        return Response::to_request(
            prack,
            481,
            "Call/Transaction Does Not Exist (no reliable provisional with that RAck)",
            None,
        );
    }
    r.reliable = None;
    Response::to_request(prack, 200, "OK", None)
}

/// A PRACK's RAck for an INVITE's provisional: (RSeq, the INVITE's CSeq number).
fn rack_of(prack: &Request) -> Option<(u32, u32)> {
    let mut parts = prack.headers.get("RAck")?.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    parts
        .next()
        .filter(|m| m.eq_ignore_ascii_case("INVITE"))
        .map(|_| (rseq, cseq))
}

/// A generic peer's INVITE that asks for a session timer (RFC 4028: `Session-Expires`, with
/// `timer` supported or required): the session interval in seconds, and whether we refresh it
/// (`refresher=uas`; else the caller does, with re-INVITE or UPDATE, which we answer).
fn session_timer(invite: &Request) -> Option<(u32, bool)> {
    let value = invite.headers.get("Session-Expires")?;
    let timer = invite
        .headers
        .values("Supported")
        .chain(invite.headers.values("Require"))
        .any(|v| v.trim().eq_ignore_ascii_case("timer"));
    if !timer {
        return None;
    }
    let mut parts = value.split(';');
    let delta: u32 = parts.next()?.trim().parse().ok()?;
    let refresher = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("refresher"))
        .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("uas"));
    Some((delta, refresher))
}

/// Our duty as a session timer's refresher (RFC 4028 §10): a refresh every half interval.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    /// The session interval, in seconds.
    interval: u32,
    /// The next refresh is due; None until the dialog is confirmed (its ACK).
    at: Option<Instant>,
    /// The peer allows UPDATE (its INVITE's Allow): refreshes go by UPDATE, else re-INVITE.
    by_update: bool,
}

impl Refresh {
    fn half(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.interval) * 500)
    }
}

/// The sequence number of a request's CSeq (0 when unreadable).
fn cseq_number(req: &Request) -> u32 {
    req.headers
        .get("CSeq")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The response requires RFC 3262's reliability (`Require: 100rel`).
fn requires_100rel(response: &Response) -> bool {
    response
        .headers
        .values("Require")
        .any(|v| v.trim().eq_ignore_ascii_case("100rel"))
}

struct Calling {
    invite: Request,
    /// None until the binary reports the INVITE sent.
    transaction: Option<TransactionId>,
    authenticated: bool,
    provisional: bool,
    cancel_wanted: bool,
    offer: OfferState,
    local: LocalMedia,
    /// The RSeq of the last reliable provisional we PRACKed (RFC 3262 §4).
    acked_rseq: Option<u32>,
    /// The CSeq of our last PRACK in the early dialog: the dialog's requests go above it.
    prack_seq: Option<u32>,
}

/// An established dialog (also while our 200 waits for its ACK).
struct Up {
    dialog: Dialog,
    /// The plan negotiated telephone-event: DTMF may be sent.
    dtmf: bool,
    /// Our description and the running plan, kept only by a leg that renegotiates (the WhatsApp
    /// leg drops them once media starts: it never sends or answers a re-offer).
    sdp: Option<Box<Sdp>>,
    /// We refresh the session timer (the peer's INVITE said `refresher=uas`).
    refresh: Option<Refresh>,
}

/// What a renegotiating leg keeps of its offer/answer.
struct Sdp {
    local: LocalMedia,
    /// The plan media runs; None while our offer in a 200 waits for its answer in the ACK.
    plan: Option<MediaPlan>,
    reneg: Reneg,
}

impl Up {
    /// `plan` is what media starts with (None: our offer in a 200 waits for the ACK's answer).
    fn new(
        dialog: Dialog,
        local: LocalMedia,
        plan: Option<MediaPlan>,
        reneg: Reneg,
        policy: &LegPolicy,
    ) -> Up {
        let keep =
            policy.answers_reoffers || policy.may_reinvite || policy.may_update || plan.is_none();
        Up {
            dialog,
            dtmf: plan.as_ref().is_some_and(|p| p.dtmf_pt.is_some()),
            sdp: keep.then(|| Box::new(Sdp { local, plan, reneg })),
            refresh: None,
        }
    }

    fn reneg(&self) -> Option<&Reneg> {
        self.sdp.as_ref().map(|s| &s.reneg)
    }
}

/// In-dialog offer/answer (RFC 3264 §8).
enum Reneg {
    Idle,
    /// Our re-INVITE or UPDATE with `offer` is out; `transaction` once the binary sent it.
    Offered {
        how: Reoffer,
        transaction: Option<TransactionId>,
        offer: OfferState,
        previous: Direction,
    },
    /// A 491 came back: the same re-offer goes again at `at` (RFC 3261 §14.1).
    Retry {
        at: Instant,
        how: Reoffer,
        direction: Direction,
        previous: Direction,
    },
    /// Our offer went in a 2xx (an INVITE or re-INVITE without one, CSeq number `cseq`); its
    /// answer is in that INVITE's ACK.
    OfferedInAnswer {
        offer: OfferState,
        cseq: u32,
    },
}

enum State {
    Ringing(Box<Ringing>),
    Preparing(Box<Preparing>),
    Calling(Box<Calling>),
    /// Inbound: our 200 is out, its ACK not yet in.
    Accepted(Box<Up>),
    Up(Box<Up>),
    /// Our BYE is out; the ending is reported when it is answered or times out.
    Ending(Box<Ending>),
    Ended,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Ringing(_) => "ringing",
            State::Preparing(_) => "preparing",
            State::Calling(_) => "calling",
            State::Accepted(_) => "answered",
            State::Up(_) => "up",
            State::Ending(_) => "ending",
            State::Ended => "ended",
        }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What does not change with the state.
struct Ctx {
    direction: CallDirection,
    setup: LegSetup,
    call_id: String,
    out: VecDeque<CallOutput>,
    /// Seeds the next generator this leg needs (a cnonce, a branch, a retry delay): a word kept
    /// instead of a generator's state, for as long as the call lasts.
    seed: u64,
    /// Outbound: the password for a 401/407, and the username if not the From user's.
    password: Option<String>,
    username: Option<String>,
    /// The initial INVITE's client transaction (its 2xx retransmissions are ACKed again).
    invite_tx: Option<TransactionId>,
    bye: Option<TransactionId>,
    /// Media was asked for: it gets a Stop when the leg ends.
    media_asked: bool,
    media_failure: Option<MediaFailure>,
    /// Our reliable 180 was not PRACKed before we answered: its RAck (RSeq, the INVITE's CSeq),
    /// for a PRACK that crosses our 200.
    unpracked: Option<(u32, u32)>,
}

/// One call leg. See the module documentation for its state table.
pub struct Leg {
    cx: Ctx,
    state: State,
}

impl fmt::Debug for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leg")
            .field("direction", &self.cx.direction)
            .field("call_id", &self.cx.call_id)
            .field("state", &self.state)
            .finish()
    }
}

impl Leg {
    /// An INVITE we received at `now` (authenticated by the binary's admission policy). Its offer
    /// is parsed and agreed here, once: a refused offer gives back the final response (488 with
    /// the rule and a Warning, or 500 for our configuration) and no leg. Otherwise 180 Ringing
    /// goes out: reliably (RFC 3262: RSeq, retransmitted until its PRACK) when the INVITE
    /// requires `100rel` of a leg whose policy allows it, else 420.
    pub fn incoming(
        now: Instant,
        invite: Request,
        transaction: TransactionId,
        setup: LegSetup,
        rng: &mut impl RngCore,
    ) -> Result<Leg, Response> {
        let mut rng = StdRng::seed_from_u64(rng.next_u64());
        let to_tag = new_tag(&mut rng);
        let offer = if invite.body.is_empty() && setup.policy.accepts_offerless_invite {
            None
        } else {
            let agreed =
                sdp::parse(&invite.body).and_then(|offer| sdp::agree(offer, &setup.capabilities));
            match agreed {
                Ok(a) => Some(a),
                Err(e) => {
                    let mut refusal = sdp_refusal(&e, &setup.local.warning_host);
                    refusal = with_request_headers(refusal, &invite, &to_tag);
                    refusal
                        .headers
                        .push("Server", setup.local.user_agent.clone());
                    return Err(refusal);
                }
            }
        };
        let mut ringing = Response::to_request(&invite, 180, "Ringing", Some(&to_tag));
        ringing.headers.copy_from(&invite.headers, "Record-Route");
        ringing.headers.push("Contact", setup.local.contact.clone());
        ringing
            .headers
            .push("Server", setup.local.user_agent.clone());
        let reliable = if option_required(&invite, "100rel") {
            if !setup.policy.reliable_provisionals {
                let mut refusal = Response::to_request(
                    &invite,
                    420,
                    "Bad Extension (no reliable provisional responses on this leg)",
                    Some(&to_tag),
                );
                refusal.headers.push("Unsupported", "100rel");
                return Err(refusal);
            }
            let rseq = rng.gen_range(1..=0x7fff_ffffu32);
            ringing.headers.push("Require", "100rel");
            ringing.headers.push("RSeq", rseq.to_string());
            Some(Box::new(ReliableRinging {
                rseq,
                response: ringing.clone(),
                interval: RELIABLE_T1,
                retransmit_at: now + RELIABLE_T1,
                give_up_at: now + RELIABLE_T1 * 64,
            }))
        } else {
            None
        };
        let mut leg = Leg {
            cx: Ctx {
                direction: CallDirection::Inbound,
                call_id: invite.call_id().unwrap_or_default().to_string(),
                setup,
                out: VecDeque::new(),
                seed: rng.next_u64(),
                password: None,
                username: None,
                invite_tx: None,
                bye: None,
                media_asked: false,
                media_failure: None,
                unpracked: None,
            },
            state: State::Ringing(Box::new(Ringing {
                invite,
                transaction,
                to_tag,
                offer,
                answering: false,
                local: None,
                reliable,
            })),
        };
        leg.cx.out.push_back(CallOutput::Respond {
            transaction,
            response: ringing,
        });
        Ok(leg)
    }

    /// A call we place: asks media for our local description first (the offer needs it); the
    /// INVITE (without Via: the transaction layer adds it) follows `media_ready`.
    pub fn outgoing(
        call: OutboundCall,
        setup: LegSetup,
        rng: &mut impl RngCore,
    ) -> Result<Leg, CallError> {
        let mut rng = StdRng::seed_from_u64(rng.next_u64());
        let target = format!(
            "sip:{}@{};transport={}",
            call.to_user, call.domain, call.transport
        );
        let uri = Uri::parse(&target).map_err(|_| CallError::BadTarget(target.clone()))?;
        let call_id = format!("{}@{}", new_tag(&mut rng), call.hostname);
        let mut invite = Request::new(Method::INVITE, uri);
        invite.headers.push("Max-Forwards", "70");
        invite.headers.push(
            "From",
            format!(
                "<sip:{}@{}>;tag={}",
                call.from_number,
                call.hostname,
                new_tag(&mut rng)
            ),
        );
        if call.asserted_identity {
            invite.headers.push(
                "P-Asserted-Identity",
                format!("<sip:{}@{}>", call.from_number, call.hostname),
            );
        }
        invite
            .headers
            .push("To", format!("<sip:{}@{}>", call.to_user, call.domain));
        invite.headers.push("Call-ID", call_id.clone());
        invite.headers.push("CSeq", "1 INVITE");
        invite.headers.push("Contact", setup.local.contact.clone());
        invite.headers.push("Allow", setup.policy.allow());
        if setup.policy.reliable_provisionals {
            invite.headers.push("Supported", "100rel");
        }
        invite
            .headers
            .push("User-Agent", setup.local.user_agent.clone());
        invite.headers.push("Content-Type", "application/sdp");
        let security = setup.capabilities.security;
        let mut leg = Leg {
            cx: Ctx {
                direction: CallDirection::Outbound,
                setup,
                call_id,
                out: VecDeque::new(),
                seed: rng.next_u64(),
                password: call.password,
                username: call.username,
                invite_tx: None,
                bye: None,
                media_asked: false,
                media_failure: None,
                unpracked: None,
            },
            state: State::Preparing(Box::new(Preparing {
                invite,
                cancel_wanted: false,
            })),
        };
        leg.cx.ask_media(security, offerer_ice_role(security));
        Ok(leg)
    }

    /// Outbound, before the INVITE goes out: one more header for it (a transfer's `Replaces`).
    pub fn add_invite_header(&mut self, name: &str, value: impl Into<String>) {
        if let State::Preparing(p) = &mut self.state {
            p.invite.headers.push(name, value);
        }
    }

    pub fn direction(&self) -> CallDirection {
        self.cx.direction
    }

    pub fn call_id(&self) -> &str {
        &self.cx.call_id
    }

    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Inbound and not answered yet.
    pub fn is_ringing(&self) -> bool {
        matches!(self.state, State::Ringing(_))
    }

    /// `answer()` was called on a ringing leg.
    pub fn is_answering(&self) -> bool {
        matches!(&self.state, State::Ringing(r) if r.answering)
    }

    /// Outbound and waiting for the final response.
    pub fn is_calling(&self) -> bool {
        matches!(self.state, State::Calling(_))
    }

    /// Up or answered: media may flow.
    pub fn is_answered(&self) -> bool {
        matches!(self.state, State::Accepted(_) | State::Up(_))
    }

    /// Inbound, before the answer: the plan the INVITE's offer agreed (None without an offer).
    pub fn offered_plan(&self) -> Option<&MediaPlan> {
        match &self.state {
            State::Ringing(r) => r.offer.as_ref().map(AgreedOffer::plan),
            _ => None,
        }
    }

    /// The dialog of an answered leg (what an INVITE with Replaces names, RFC 3891 §3).
    pub fn dialog_id(&self) -> Option<&watrunk_sip::dialog::DialogId> {
        match &self.state {
            State::Accepted(up) | State::Up(up) => Some(up.dialog.id()),
            _ => None,
        }
    }

    /// The plan media runs now, once negotiated.
    pub fn plan(&self) -> Option<&MediaPlan> {
        match &self.state {
            State::Accepted(up) | State::Up(up) => up.sdp.as_ref().and_then(|s| s.plan.as_ref()),
            _ => None,
        }
    }

    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.cx.out.pop_front()
    }

    /// When [`Leg::handle_timeout`] wants to run (a re-offer waiting after a 491).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Up(up) => {
                let retry = match up.reneg() {
                    Some(Reneg::Retry { at, .. }) => Some(*at),
                    _ => None,
                };
                let refresh = up.refresh.and_then(|r| r.at);
                retry.into_iter().chain(refresh).min()
            }
            State::Ringing(r) => r
                .reliable
                .as_ref()
                .map(|rel| rel.retransmit_at.min(rel.give_up_at)),
            _ => None,
        }
    }

    /// Runs what [`Leg::poll_timeout`] asked for.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(|state, cx| match state {
            State::Ringing(mut r) => match r.reliable.as_deref_mut() {
                Some(rel) if now >= rel.give_up_at => {
                    let response =
                        Response::new(500, "Server Internal Error (no PRACK for our reliable 180)");
                    let response = with_request_headers(response, &r.invite, &r.to_tag);
                    cx.out.push_back(CallOutput::Respond {
                        transaction: r.transaction,
                        response,
                    });
                    let ending = Ending::new(
                        Side::Remote,
                        Some(500),
                        "no PRACK for our reliable 180 within 32 s (RFC 3262)",
                    );
                    (cx.end(ending), ())
                }
                Some(rel) if now >= rel.retransmit_at => {
                    cx.out.push_back(CallOutput::Respond {
                        transaction: r.transaction,
                        response: rel.response.clone(),
                    });
                    rel.interval *= 2;
                    rel.retransmit_at = now + rel.interval;
                    (State::Ringing(r), ())
                }
                _ => (State::Ringing(r), ()),
            },
            State::Up(mut up) => {
                let Up {
                    dialog,
                    sdp: kept,
                    refresh,
                    ..
                } = &mut *up;
                if let (Some(r), Some(kept)) = (refresh.as_mut(), kept.as_deref_mut()) {
                    if r.at.is_some_and(|at| at <= now) {
                        let how = if r.by_update {
                            Reoffer::Update
                        } else {
                            Reoffer::Invite
                        };
                        let direction = kept.local.direction;
                        // An offer/answer under way: the refresh goes a little later.
                        r.at = Some(match cx.send_reoffer(dialog, kept, how, direction) {
                            Ok(()) => {
                                cx.refresh_headers(r.interval);
                                now + r.half()
                            }
                            Err(_) => now + std::time::Duration::from_secs(2),
                        });
                    }
                }
                if let Some(kept) = kept.as_deref_mut() {
                    if let Reneg::Retry {
                        at,
                        how,
                        direction,
                        previous,
                    } = kept.reneg
                    {
                        if at <= now {
                            kept.reneg = Reneg::Idle;
                            kept.local.direction = previous;
                            if let Err(e) = cx.send_reoffer(dialog, kept, how, direction) {
                                debug_assert!(false, "a retried re-offer is sendable: {e}");
                            }
                        }
                    }
                }
                (State::Up(up), ())
            }
            other => (other, ()),
        })
    }

    /// The one place the state is taken out and put back: every transition consumes the old state.
    fn step<T>(&mut self, f: impl FnOnce(State, &mut Ctx) -> (State, T)) -> T {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let (next, result) = f(state, &mut self.cx);
        self.state = next;
        result
    }

    /// The binary started the client transaction for the last [`CallOutput::Send`].
    pub fn request_sent(&mut self, method: &Method, transaction: TransactionId) {
        if *method == Method::BYE {
            self.cx.bye = Some(transaction);
            return;
        }
        match &mut self.state {
            State::Calling(c) if *method == Method::INVITE => {
                c.transaction = Some(transaction);
                self.cx.invite_tx = Some(transaction);
                if c.cancel_wanted && c.provisional {
                    self.cx.out.push_back(CallOutput::Cancel {
                        invite: transaction,
                    });
                }
            }
            State::Up(up) => {
                if let Some(Sdp {
                    reneg:
                        Reneg::Offered {
                            how,
                            transaction: t @ None,
                            ..
                        },
                    ..
                }) = up.sdp.as_deref_mut()
                {
                    if how.method() == *method {
                        *t = Some(transaction);
                    }
                }
            }
            _ => {}
        }
    }

    /// Inbound: answer the call. The 200 OK goes out as soon as our local description exists
    /// (at once when it does; else after `media_ready`).
    pub fn answer(&mut self) -> Result<(), CallError> {
        self.step(|state, cx| match state {
            State::Ringing(mut r) => {
                if r.answering {
                    return (State::Ringing(r), Err(CallError::OfferPending));
                }
                r.answering = true;
                if r.local.is_some() {
                    (cx.send_answer(r), Ok(()))
                } else {
                    let (security, role) = match &r.offer {
                        Some(a) => (a.security(), a.ice_role()),
                        None => {
                            let security = cx.setup.capabilities.security;
                            (security, offerer_ice_role(security))
                        }
                    };
                    cx.ask_media(security, role);
                    (State::Ringing(r), Ok(()))
                }
            }
            other => {
                let state = other.name();
                (
                    other,
                    Err(CallError::WrongState {
                        what: "answer",
                        state,
                    }),
                )
            }
        })
    }

    /// Inbound, before the answer, for an INVITE with an offer and our local description at hand:
    /// 183 Session Progress with our answer, for early media (RFC 3261 §13.2.1: the 200 carries the
    /// same answer). The plan it agreed. Refused without an offer (ours would need a reliable
    /// provisional) and for an INVITE that requires reliable provisionals.
    pub fn early_answer(&mut self) -> Result<MediaPlan, CallError> {
        let State::Ringing(r) = &self.state else {
            return Err(CallError::WrongState {
                what: "early media",
                state: self.state.name(),
            });
        };
        let (Some(agreed), Some(local), None) = (&r.offer, &r.local, &r.reliable) else {
            return Err(CallError::Forbidden(
                "early media without an offer, our description, or with 100rel required",
            ));
        };
        let (answer, plan) = agreed
            .answer(local)
            .map_err(|_| CallError::Forbidden("an answer to this offer"))?;
        let mut progress =
            Response::to_request(&r.invite, 183, "Session Progress", Some(&r.to_tag));
        progress
            .headers
            .copy_from(&r.invite.headers, "Record-Route");
        progress
            .headers
            .push("Contact", self.cx.setup.local.contact.clone());
        progress
            .headers
            .push("Server", self.cx.setup.local.user_agent.clone());
        progress.headers.push("Content-Type", "application/sdp");
        progress.body = sdp::print(&answer).into_bytes();
        self.cx.out.push_back(CallOutput::Respond {
            transaction: r.transaction,
            response: progress,
        });
        Ok(plan)
    }

    /// Inbound, before answering: a final error response (404, 486, 488 with its Warning ...).
    /// `response` needs only status, reason and extra headers: the rest is copied from the INVITE.
    pub fn reject(&mut self, response: Response, reason: String) -> Result<(), CallError> {
        self.step(|state, cx| match state {
            State::Ringing(r) => {
                let status = response.status;
                let response = with_request_headers(response, &r.invite, &r.to_tag);
                cx.out.push_back(CallOutput::Respond {
                    transaction: r.transaction,
                    response,
                });
                (
                    cx.end(Ending::new(Side::Local, Some(status), reason)),
                    Ok(()),
                )
            }
            other => {
                let state = other.name();
                (
                    other,
                    Err(CallError::WrongState {
                        what: "reject",
                        state,
                    }),
                )
            }
        })
    }

    /// Our local description for the `Prepare` intent.
    pub fn media_ready(&mut self, local: LocalMedia) {
        self.step(|state, cx| match state {
            State::Ringing(mut r) => {
                r.local = Some(local);
                if r.answering {
                    (cx.send_answer(r), ())
                } else {
                    (State::Ringing(r), ())
                }
            }
            State::Preparing(p) => (cx.send_invite(*p, local), ()),
            other => (other, ()),
        })
    }

    /// Media failed: before the answer the call is refused (inbound: 500 with a Warning) or
    /// abandoned; after it, BYE with Q.850 cause 41 (temporary failure).
    pub fn media_failed(&mut self, failure: MediaFailure) {
        let reason = format!("media failed: {failure}");
        self.cx.media_failure.get_or_insert(failure.clone());
        self.step(|state, cx| match state {
            State::Ringing(r) => {
                let mut resp = Response::new(500, "Server Internal Error (media set-up failed)");
                resp.headers.push(
                    "Warning",
                    format!(
                        "399 {} \"{}\"",
                        cx.setup.local.warning_host,
                        failure.detail.replace(['"', '\\'], "'")
                    ),
                );
                let response = with_request_headers(resp, &r.invite, &r.to_tag);
                cx.out.push_back(CallOutput::Respond {
                    transaction: r.transaction,
                    response,
                });
                (
                    cx.end(Ending::new(
                        Side::Local,
                        Some(500),
                        format!("media set-up failed: {failure}"),
                    )),
                    (),
                )
            }
            State::Preparing(_) => (
                cx.end(Ending::new(
                    Side::Local,
                    None,
                    format!("media set-up failed: {failure}"),
                )),
                (),
            ),
            other => (cx.hang_up(other, &reason, 41), ()),
        })
    }

    /// The application, the API or a media failure ends the call. `q850_cause` goes in the BYE's
    /// Reason.
    pub fn hang_up(&mut self, reason: &str, q850_cause: u16) {
        self.step(|state, cx| (cx.hang_up(state, reason, q850_cause), ()))
    }

    /// How the call asked for by the far side's REFER goes (RFC 3515 §2.4.5): a NOTIFY in this
    /// dialog with the new call's status line as `message/sipfrag`; `done` ends the implicit
    /// subscription (a final status).
    pub fn notify_refer(&mut self, status: u16, phrase: &str, done: bool) {
        let (State::Accepted(up) | State::Up(up)) = &mut self.state else {
            return;
        };
        let Ok(mut notify) = up.dialog.create_request(Method::NOTIFY) else {
            return;
        };
        notify.headers.push("Event", "refer");
        notify.headers.push(
            "Subscription-State",
            if done {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            },
        );
        notify
            .headers
            .push("Contact", self.cx.setup.local.contact.clone());
        notify
            .headers
            .push("User-Agent", self.cx.setup.local.user_agent.clone());
        notify
            .headers
            .push("Content-Type", "message/sipfrag;version=2.0");
        notify.body = format!("SIP/2.0 {status} {phrase}\r\n").into_bytes();
        self.cx.out.push_back(CallOutput::Send(notify));
    }

    /// DTMF keys toward the far side, once media runs with a negotiated telephone-event.
    pub fn send_dtmf(&mut self, keys: &str) -> Result<(), CallError> {
        match &self.state {
            State::Accepted(up) | State::Up(up) => {
                if up.dtmf {
                    self.cx
                        .out
                        .push_back(CallOutput::Media(MediaIntent::SendDtmf {
                            keys: keys.to_string(),
                        }));
                    Ok(())
                } else if up.sdp.as_ref().is_some_and(|s| s.plan.is_none()) {
                    Err(CallError::OfferPending)
                } else {
                    Err(CallError::NoDtmf)
                }
            }
            other => Err(CallError::WrongState {
                what: "DTMF",
                state: other.name(),
            }),
        }
    }

    /// Sends a new offer with `direction` (hold: `SendOnly` or `Inactive`; resume: `SendRecv`),
    /// if the leg's policy allows `how`.
    pub fn reoffer(&mut self, how: Reoffer, direction: Direction) -> Result<(), CallError> {
        let allowed = match how {
            Reoffer::Invite => self.cx.setup.policy.may_reinvite,
            Reoffer::Update => self.cx.setup.policy.may_update,
        };
        if !allowed {
            return Err(CallError::Forbidden(match how {
                Reoffer::Invite => "re-INVITE",
                Reoffer::Update => "UPDATE",
            }));
        }
        self.step(|state, cx| match state {
            State::Up(mut up) => {
                let Up {
                    dialog, sdp: kept, ..
                } = &mut *up;
                let r = match kept.as_deref_mut() {
                    Some(kept) => cx.send_reoffer(dialog, kept, how, direction),
                    None => Err(CallError::Forbidden("a re-offer")),
                };
                (State::Up(up), r)
            }
            other => {
                let state = other.name();
                (
                    other,
                    Err(CallError::WrongState {
                        what: "a re-offer",
                        state,
                    }),
                )
            }
        })
    }

    /// The ACK for our 200 (it carries the answer when our 200 carried the offer).
    pub fn handle_ack(&mut self, now: Instant, ack: &Request) {
        self.step(|state, cx| match state {
            State::Accepted(mut up) => {
                cx.out.push_back(CallOutput::Event(CallEvent::Confirmed));
                if let Some(r) = up.refresh.as_mut() {
                    r.at = Some(now + r.half());
                }
                match cx.take_answer_from_ack(&mut up, ack) {
                    Ok(()) => (State::Up(up), ()),
                    Err(reason) => (cx.hang_up(State::Up(up), &reason, 65), ()),
                }
            }
            State::Up(mut up) => match cx.take_answer_from_ack(&mut up, ack) {
                Ok(()) => (State::Up(up), ()),
                Err(reason) => (cx.hang_up(State::Up(up), &reason, 65), ()),
            },
            other => (other, ()),
        })
    }

    /// Inbound: the INVITE was cancelled (the transaction layer answered 487).
    pub fn handle_cancel(&mut self, cancel: &Request) {
        self.step(|state, cx| match state {
            State::Ringing(_) => {
                let mut ending = Ending::new(
                    Side::Remote,
                    Some(487),
                    "cancelled by the caller before answer",
                );
                ending.sip_reason = cancel.headers.get("Reason").map(str::to_string);
                (cx.end(ending), ())
            }
            other => (other, ()),
        })
    }

    /// A request inside this leg's dialog (BYE, re-INVITE, UPDATE, OPTIONS ...), found by the
    /// binary through its Call-ID. The response comes out as [`CallOutput::Respond`].
    pub fn handle_request(&mut self, transaction: TransactionId, req: &Request) {
        self.step(|state, cx| {
            let (next, response) = cx.in_dialog(state, req);
            let mut response = response;
            response
                .headers
                .push("Server", cx.setup.local.user_agent.clone());
            cx.out.push_back(CallOutput::Respond {
                transaction,
                response,
            });
            (next, ())
        })
    }

    /// Inbound: Timer H fired without an ACK for our 200 (WHATSAPP-SIP §4.3: a route set problem).
    pub fn handle_ack_timeout(&mut self) {
        self.step(|state, cx| match state {
            State::Accepted(up) => {
                let ending = Ending::new(
                    Side::Local,
                    None,
                    "no ACK for our 200 OK within 32 s (is Record-Route intact between Meta and us?)",
                );
                (
                    cx.send_bye(up, "SIP;cause=408;text=\"no ACK\"", ending),
                    (),
                )
            }
            other => (other, ()),
        })
    }

    /// A response to one of our requests (INVITE, re-INVITE, UPDATE, BYE).
    pub fn handle_response(
        &mut self,
        now: Instant,
        transaction: TransactionId,
        response: &Response,
    ) {
        if Some(transaction) == self.cx.bye {
            if response.status >= 200 {
                self.step(|state, cx| (cx.finish_ending(state), ()));
            }
            return;
        }
        self.step(|state, cx| match state {
            State::Calling(c) => (cx.calling_response(c, transaction, response), ()),
            State::Up(mut up) => {
                if Some(transaction) == cx.invite_tx {
                    // A 2xx retransmission after we are up: ACK it again (RFC 3261 §13.2.2.4).
                    if (200..300).contains(&response.status) {
                        if let Ok(ack) = up.dialog.create_request(Method::ACK) {
                            cx.out.push_back(CallOutput::Ack(ack));
                        }
                    }
                    return (State::Up(up), ());
                }
                (cx.reoffer_response(now, up, transaction, response), ())
            }
            other => (other, ()),
        })
    }

    /// A client transaction of ours timed out or could not be sent.
    pub fn handle_request_timeout(&mut self, transaction: TransactionId) {
        if Some(transaction) == self.cx.bye {
            self.step(|state, cx| (cx.finish_ending(state), ()));
            return;
        }
        self.step(|state, cx| match state {
            State::Calling(c) if c.transaction == Some(transaction) => {
                let target = c.invite.uri.to_string();
                let reason = format!(
                    "no answer from {target} (timeout): is its host reachable over the transport it names?"
                );
                (cx.end(Ending::new(Side::Remote, Some(408), reason)), ())
            }
            // RFC 3261 §14.1: a re-offer that times out ends the dialog.
            State::Up(up) if matches!(up.reneg(), Some(Reneg::Offered { transaction: Some(t), .. }) if *t == transaction) => {
                let ending = Ending::new(Side::Remote, Some(408), "the far side did not answer our re-offer");
                (cx.send_bye(up, "SIP;cause=408;text=\"re-offer timeout\"", ending), ())
            }
            other => (other, ()),
        })
    }

    /// A request could not be sent at all (no next hop, overload).
    pub fn handle_send_failure(&mut self, method: &Method, reason: &str) {
        self.step(|state, cx| match (state, method) {
            (State::Ending(e), &Method::BYE) => (cx.finish_ending(State::Ending(e)), ()),
            (State::Calling(_), &Method::INVITE) => (
                cx.end(Ending::new(
                    Side::Local,
                    None,
                    format!("the INVITE could not be sent: {reason}"),
                )),
                (),
            ),
            (State::Up(mut up), m) if matches!(up.reneg(), Some(Reneg::Offered { how, .. }) if how.method() == *m) => {
                if let Some(kept) = up.sdp.as_deref_mut() {
                    if let Reneg::Offered { previous, .. } = kept.reneg {
                        kept.local.direction = previous;
                    }
                    kept.reneg = Reneg::Idle;
                }
                (State::Up(up), ())
            }
            (other, _) => (other, ()),
        })
    }
}

impl Ctx {
    /// A generator for what the leg draws now; the seed moves on.
    fn rng(&mut self) -> StdRng {
        let mut rng = StdRng::seed_from_u64(self.seed);
        self.seed = rng.next_u64();
        rng
    }

    fn ask_media(&mut self, security: Security, ice_role: IceRole) {
        self.media_asked = true;
        self.out.push_back(CallOutput::Media(MediaIntent::Prepare {
            security,
            ice_role,
        }));
    }

    fn event(&mut self, e: CallEvent) {
        self.out.push_back(CallOutput::Event(e));
    }

    /// The leg is over: Stop for media that was asked for, then the Ended event.
    fn end(&mut self, mut ending: Ending) -> State {
        if ending.media_failure.is_none() {
            ending.media_failure = self.media_failure.clone();
        }
        if self.media_asked {
            self.media_asked = false;
            self.out.push_back(CallOutput::Media(MediaIntent::Stop));
        }
        self.event(CallEvent::Ended(ending));
        State::Ended
    }

    fn finish_ending(&mut self, state: State) -> State {
        match state {
            State::Ending(ending) => {
                self.event(CallEvent::Ended(*ending));
                State::Ended
            }
            other => other,
        }
    }

    fn hang_up(&mut self, state: State, reason: &str, q850_cause: u16) -> State {
        match state {
            State::Ringing(r) => {
                let response = with_request_headers(
                    Response::new(480, "Temporarily Unavailable"),
                    &r.invite,
                    &r.to_tag,
                );
                self.out.push_back(CallOutput::Respond {
                    transaction: r.transaction,
                    response,
                });
                self.end(Ending::new(Side::Local, Some(480), reason))
            }
            // The INVITE has not gone out: nothing to cancel.
            State::Preparing(_) => self.end(Ending::new(Side::Local, None, reason)),
            State::Calling(mut c) => {
                c.cancel_wanted = true;
                // CANCEL waits for a provisional response (RFC 3261 §9.1) and for the transaction
                // to exist; `request_sent` and the 1xx send it then.
                if let (Some(t), true) = (c.transaction, c.provisional) {
                    self.out.push_back(CallOutput::Cancel { invite: t });
                }
                State::Calling(c)
            }
            State::Accepted(up) | State::Up(up) => self.send_bye(
                up,
                &format!(
                    "Q.850;cause={q850_cause};text=\"{}\"",
                    reason.replace(['"', '\\'], "'")
                ),
                Ending {
                    q850_cause: Some(q850_cause),
                    ..Ending::new(Side::Local, None, reason)
                },
            ),
            other @ (State::Ending(_) | State::Ended) => other,
        }
    }

    /// BYE with this Reason; Stop for media. The ending is reported when the BYE is answered.
    fn send_bye(&mut self, mut up: Box<Up>, reason_value: &str, mut ending: Ending) -> State {
        if ending.media_failure.is_none() {
            ending.media_failure = self.media_failure.clone();
        }
        match up.dialog.create_request(Method::BYE) {
            Ok(mut bye) => {
                bye.headers.push("Reason", reason_value.to_string());
                bye.headers
                    .push("User-Agent", self.setup.local.user_agent.clone());
                self.out.push_back(CallOutput::Send(bye));
                if self.media_asked {
                    self.media_asked = false;
                    self.out.push_back(CallOutput::Media(MediaIntent::Stop));
                }
                State::Ending(Box::new(ending))
            }
            Err(_) => self.end(ending),
        }
    }

    /// Ringing → the 200 OK with our answer (or our offer), and Start when the plan is known.
    fn send_answer(&mut self, r: Box<Ringing>) -> State {
        if let Some(rel) = &r.reliable {
            self.unpracked = Some((rel.rseq, cseq_number(&r.invite)));
        }
        let Ringing {
            invite,
            transaction,
            to_tag,
            offer,
            local,
            ..
        } = *r;
        let Some(local) = local else {
            return self.end(Ending::new(
                Side::Local,
                None,
                "no local media to answer with",
            ));
        };
        let made = match &offer {
            Some(agreed) => agreed
                .answer(&local)
                .map(|(answer, plan)| (sdp::print(&answer), Some(plan), Reneg::Idle))
                .map_err(|e| {
                    let reason = format!("offer refused: {}: {e}", e.rule());
                    (e, reason)
                }),
            None => sdp::offer(&local)
                .map(|state| {
                    let body = sdp::print(state.sdp());
                    let cseq = cseq_number(&invite);
                    (body, None, Reneg::OfferedInAnswer { offer: state, cseq })
                })
                .map_err(|e| {
                    let reason = format!("our offer cannot be made: {e}");
                    (e, reason)
                }),
        };
        let (body, plan, reneg) = match made {
            Ok(made) => made,
            Err((e, reason)) => {
                let response = with_request_headers(
                    sdp_refusal(&e, &self.setup.local.warning_host),
                    &invite,
                    &to_tag,
                );
                self.out.push_back(CallOutput::Respond {
                    transaction,
                    response,
                });
                return self.end(Ending::new(Side::Local, Some(e.status()), reason));
            }
        };
        let mut ok =
            Response::dialog_response(&invite, 200, "OK", &to_tag, &self.setup.local.contact);
        ok.headers.push("Allow", self.setup.policy.allow());
        ok.headers
            .push("Server", self.setup.local.user_agent.clone());
        let mut refresh = None;
        if self.setup.policy.answers_reoffers {
            if let Some((interval, ours)) = session_timer(&invite) {
                let refresher = if ours { "uas" } else { "uac" };
                ok.headers.push(
                    "Session-Expires",
                    format!("{interval};refresher={refresher}"),
                );
                ok.headers.push("Require", "timer");
                let by_update = invite
                    .headers
                    .values("Allow")
                    .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"));
                refresh = ours.then_some(Refresh {
                    interval,
                    at: None,
                    by_update: by_update && self.setup.policy.may_update,
                });
            }
        }
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body.into_bytes();
        let dialog = match Dialog::from_uas(&invite, &ok) {
            Ok(d) => d,
            Err(e) => {
                let response =
                    Response::to_request(&invite, 400, format!("Bad Request ({e})"), Some(&to_tag));
                self.out.push_back(CallOutput::Respond {
                    transaction,
                    response,
                });
                return self.end(Ending::new(
                    Side::Remote,
                    Some(400),
                    format!("the INVITE cannot make a dialog: {e}"),
                ));
            }
        };
        self.out.push_back(CallOutput::Respond {
            transaction,
            response: ok,
        });
        self.event(CallEvent::Answered);
        if let Some(plan) = &plan {
            self.out.push_back(CallOutput::Media(MediaIntent::Start {
                plan: Box::new(plan.clone()),
                ssrc: local.ssrc,
            }));
        }
        let mut up = Box::new(Up::new(dialog, local, plan, reneg, &self.setup.policy));
        up.refresh = refresh.filter(|_| up.sdp.is_some());
        State::Accepted(up)
    }

    /// Preparing → our offer in the INVITE.
    fn send_invite(&mut self, p: Preparing, local: LocalMedia) -> State {
        let Preparing {
            mut invite,
            cancel_wanted,
        } = p;
        if cancel_wanted {
            return self.end(Ending::new(
                Side::Local,
                None,
                "hung up before the INVITE was sent",
            ));
        }
        match sdp::offer(&local) {
            Ok(offer) => {
                invite.body = sdp::print(offer.sdp()).into_bytes();
                self.out.push_back(CallOutput::Send(invite.clone()));
                State::Calling(Box::new(Calling {
                    invite,
                    transaction: None,
                    authenticated: false,
                    provisional: false,
                    acked_rseq: None,
                    prack_seq: None,
                    cancel_wanted: false,
                    offer,
                    local,
                }))
            }
            Err(e) => self.end(Ending::new(
                Side::Local,
                None,
                format!("our offer cannot be made: {e}"),
            )),
        }
    }

    fn calling_response(
        &mut self,
        mut c: Box<Calling>,
        transaction: TransactionId,
        response: &Response,
    ) -> State {
        if c.transaction != Some(transaction) {
            return State::Calling(c);
        }
        match response.status {
            100 => State::Calling(c),
            101..=199 => {
                if self.setup.policy.reliable_provisionals && requires_100rel(response) {
                    match self.prack(&mut c, response) {
                        Prack::Sent | Prack::NotReliable => {}
                        Prack::Retransmission => return State::Calling(c),
                    }
                }
                c.provisional = true;
                if c.cancel_wanted {
                    self.out.push_back(CallOutput::Cancel {
                        invite: transaction,
                    });
                } else if matches!(response.status, 180 | 183) {
                    self.event(CallEvent::Ringing);
                }
                State::Calling(c)
            }
            200..=299 => self.answered(c, response),
            401 | 407 if !c.authenticated && self.password.is_some() => {
                self.authenticate(c, response)
            }
            status => {
                let reason =
                    outbound_failure(status, response, c.authenticated, self.password.is_some());
                let mut ending = Ending::new(Side::Remote, Some(status), reason);
                ending.sip_reason = response.headers.get("Reason").map(str::to_string);
                self.end(ending)
            }
        }
    }

    /// A reliable provisional response (RFC 3262): its PRACK in the early dialog, once per RSeq;
    /// a retransmission is discarded (§4).
    fn prack(&mut self, c: &mut Calling, response: &Response) -> Prack {
        let Some(rseq) = response
            .headers
            .get("RSeq")
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            return Prack::NotReliable;
        };
        if c.acked_rseq.is_some_and(|acked| rseq <= acked) {
            return Prack::Retransmission;
        }
        let Ok(mut early) = Dialog::from_uac(&c.invite, response) else {
            return Prack::NotReliable;
        };
        if let Some(seq) = c.prack_seq {
            early.advance_local_seq(seq);
        }
        let Ok(mut prack) = early.create_request(Method::PRACK) else {
            return Prack::NotReliable;
        };
        let invite_seq = cseq_number(&c.invite);
        prack
            .headers
            .push("RAck", format!("{rseq} {invite_seq} INVITE"));
        prack
            .headers
            .push("User-Agent", self.setup.local.user_agent.clone());
        c.acked_rseq = Some(rseq);
        c.prack_seq = early.local_seq();
        self.out.push_back(CallOutput::Send(prack));
        Prack::Sent
    }

    /// Calling → Up on a 2xx: ACK, then the answer is accepted (or the call is ended by BYE).
    fn answered(&mut self, c: Box<Calling>, response: &Response) -> State {
        let Calling {
            invite,
            cancel_wanted,
            offer,
            local,
            prack_seq,
            ..
        } = *c;
        let mut dialog = match Dialog::from_uac(&invite, response) {
            Ok(mut d) => {
                if let Some(seq) = prack_seq {
                    d.advance_local_seq(seq);
                }
                d
            }
            Err(e) => {
                return self.end(Ending::new(
                    Side::Remote,
                    Some(response.status),
                    format!("the 2xx makes no usable dialog: {e}"),
                ))
            }
        };
        if let Ok(ack) = dialog.create_request(Method::ACK) {
            self.out.push_back(CallOutput::Ack(ack));
        }
        self.event(CallEvent::Answered);
        let accepted = sdp::parse(&response.body).and_then(|a| sdp::accept_answer(&offer, &a));
        match accepted {
            Ok(plan) => {
                self.out.push_back(CallOutput::Media(MediaIntent::Start {
                    plan: Box::new(plan.clone()),
                    ssrc: local.ssrc,
                }));
                let up = Box::new(Up::new(
                    dialog,
                    local,
                    Some(plan),
                    Reneg::Idle,
                    &self.setup.policy,
                ));
                if cancel_wanted {
                    return self.hang_up(State::Up(up), "hung up before answer", 16);
                }
                State::Up(up)
            }
            Err(e) => {
                let reason = format!("the far side's answer is refused: {}: {e}", e.rule());
                let up = Box::new(Up {
                    dialog,
                    dtmf: false,
                    sdp: None,
                    refresh: None,
                });
                // Q.850 cause 65: bearer capability not implemented.
                self.hang_up(State::Up(up), &reason, 65)
            }
        }
    }

    /// Calling → Calling with the INVITE again, carrying our credentials.
    fn authenticate(&mut self, mut c: Box<Calling>, response: &Response) -> State {
        let (challenge_header, creds_header) = if response.status == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let challenges = Challenge::parse_supported(response.headers.get_all(challenge_header));
        let Some(challenge) = digest::choose_challenge(&challenges) else {
            return self.end(Ending::new(
                Side::Remote,
                Some(response.status),
                "the challenge offers no digest algorithm we support",
            ));
        };
        // Meta's digest username is the business number without '+' (WHATSAPP-SIP §3.6).
        let user = self.username.clone().unwrap_or_else(|| {
            c.invite
                .from()
                .and_then(|f| f.uri.user_base().map(str::to_string))
                .unwrap_or_default()
                .trim_start_matches('+')
                .to_string()
        });
        let creds = Credentials::new(user, self.password.clone().unwrap_or_default());
        let uri = c.invite.uri.to_string();
        let mut rng = self.rng();
        let auth = digest::answer_with_random_cnonce(
            challenge,
            &creds,
            "INVITE",
            &uri,
            &c.invite.body,
            1,
            &mut rng,
        );
        let retry = watrunk_sip::dialog::retry_with_auth(
            &c.invite,
            creds_header,
            &auth.to_string(),
            &mut rng,
        );
        c.invite = retry.clone();
        c.authenticated = true;
        c.transaction = None;
        c.provisional = false;
        self.out.push_back(CallOutput::Send(retry));
        State::Calling(c)
    }

    /// Our re-INVITE or UPDATE with a new offer (`up.reneg` must be idle).
    /// The re-offer just queued refreshes the session timer: it says so (RFC 4028 §7.4), and that
    /// we stay the refresher.
    fn refresh_headers(&mut self, interval: u32) {
        if let Some(CallOutput::Send(req)) = self.out.back_mut() {
            req.headers
                .push("Session-Expires", format!("{interval};refresher=uac"));
            req.headers.push("Supported", "timer");
        }
    }

    fn send_reoffer(
        &mut self,
        dialog: &mut Dialog,
        up: &mut Sdp,
        how: Reoffer,
        direction: Direction,
    ) -> Result<(), CallError> {
        if !matches!(up.reneg, Reneg::Idle) || up.plan.is_none() {
            return Err(CallError::OfferPending);
        }
        let previous = up.local.direction;
        up.local.direction = direction;
        up.local.session_version += 1;
        let offer = match sdp::offer(&up.local) {
            Ok(o) => o,
            Err(_) => {
                up.local.direction = previous;
                return Err(CallError::Forbidden("an offer from this leg's media"));
            }
        };
        let Ok(mut req) = dialog.create_request(how.method()) else {
            up.local.direction = previous;
            return Err(CallError::WrongState {
                what: "a re-offer",
                state: "ended",
            });
        };
        req.headers
            .push("Contact", self.setup.local.contact.clone());
        req.headers.push("Allow", self.setup.policy.allow());
        req.headers
            .push("User-Agent", self.setup.local.user_agent.clone());
        req.headers.push("Content-Type", "application/sdp");
        req.body = sdp::print(offer.sdp()).into_bytes();
        self.out.push_back(CallOutput::Send(req));
        up.reneg = Reneg::Offered {
            how,
            transaction: None,
            offer,
            previous,
        };
        Ok(())
    }

    /// A response to our re-INVITE or UPDATE.
    fn reoffer_response(
        &mut self,
        now: Instant,
        mut up: Box<Up>,
        transaction: TransactionId,
        response: &Response,
    ) -> State {
        let matches = matches!(up.reneg(), Some(Reneg::Offered { transaction: Some(t), .. }) if *t == transaction);
        if !matches || response.status < 200 {
            return State::Up(up);
        }
        let Some(Reneg::Offered {
            how,
            offer,
            previous,
            ..
        }) = up
            .sdp
            .as_deref_mut()
            .map(|s| std::mem::replace(&mut s.reneg, Reneg::Idle))
        else {
            return State::Up(up);
        };
        match response.status {
            200..=299 => {
                if how == Reoffer::Invite {
                    if let Ok(ack) = up.dialog.create_request(Method::ACK) {
                        self.out.push_back(CallOutput::Ack(ack));
                    }
                }
                match sdp::parse(&response.body).and_then(|a| sdp::accept_answer(&offer, &a)) {
                    Ok(plan) => {
                        self.update_media(&mut up, plan);
                        State::Up(up)
                    }
                    Err(e) => {
                        let reason =
                            format!("the answer to our re-offer is refused: {}: {e}", e.rule());
                        self.hang_up(State::Up(up), &reason, 65)
                    }
                }
            }
            491 => {
                // RFC 3261 §14.1: 2.1-4 s when we chose the Call-ID, else 0-2 s, in 10 ms steps.
                let steps = match self.direction {
                    CallDirection::Outbound => self.rng().gen_range(210..=400),
                    CallDirection::Inbound => self.rng().gen_range(0..=200),
                };
                if let Some(kept) = up.sdp.as_deref_mut() {
                    kept.reneg = Reneg::Retry {
                        at: now + Duration::from_millis(steps * 10),
                        how,
                        direction: kept.local.direction,
                        previous,
                    };
                }
                State::Up(up)
            }
            // RFC 3261 §12.2.1.2: the dialog is gone.
            408 | 481 => {
                let ending = Ending::new(
                    Side::Remote,
                    Some(response.status),
                    format!(
                        "the far side lost the dialog ({} to our re-offer)",
                        response.status
                    ),
                );
                up.dialog.terminate();
                if response.status == 408 {
                    self.send_bye(up, "SIP;cause=408;text=\"re-offer timeout\"", ending)
                } else {
                    self.end(ending)
                }
            }
            status => {
                if let Some(kept) = up.sdp.as_deref_mut() {
                    kept.local.direction = previous;
                }
                self.event(CallEvent::ReofferRefused(status));
                State::Up(up)
            }
        }
    }

    /// A renegotiation's plan: Start when media had none yet, else Update.
    fn update_media(&mut self, up: &mut Up, plan: MediaPlan) {
        let direction = plan.direction;
        up.dtmf = plan.dtmf_pt.is_some();
        let Some(kept) = up.sdp.as_deref_mut() else {
            return;
        };
        let first = kept.plan.is_none();
        kept.plan = Some(plan.clone());
        let ssrc = kept.local.ssrc;
        self.out.push_back(CallOutput::Media(if first {
            MediaIntent::Start {
                plan: Box::new(plan),
                ssrc,
            }
        } else {
            MediaIntent::Update {
                plan: Box::new(plan),
            }
        }));
        self.event(CallEvent::MediaUpdated(direction));
    }

    /// The ACK's answer to the offer in our 2xx, if one is pending.
    fn take_answer_from_ack(&mut self, up: &mut Up, ack: &Request) -> Result<(), String> {
        // Only the ACK of the INVITE whose 200 carried our offer answers it; another (a stray ACK
        // of an earlier INVITE) leaves the offer waiting.
        let Some(sdp) = up.sdp.as_deref_mut() else {
            return Ok(());
        };
        let Reneg::OfferedInAnswer { cseq, .. } = sdp.reneg else {
            return Ok(());
        };
        if cseq_number(ack) != cseq {
            return Ok(());
        }
        let Reneg::OfferedInAnswer { offer, .. } = std::mem::replace(&mut sdp.reneg, Reneg::Idle)
        else {
            return Ok(());
        };
        match sdp::parse(&ack.body).and_then(|a| sdp::accept_answer(&offer, &a)) {
            Ok(plan) => {
                self.update_media(up, plan);
                Ok(())
            }
            Err(e) => Err(format!(
                "the ACK carries no usable answer to our offer: {}: {e}",
                e.rule()
            )),
        }
    }

    /// An in-dialog request: the next state and the response.
    fn in_dialog(&mut self, state: State, req: &Request) -> (State, Response) {
        let (mut up, confirmed) = match state {
            State::Accepted(up) => (up, false),
            State::Up(up) => (up, true),
            State::Ringing(mut r) if req.method == Method::PRACK => {
                let resp = prack_received(&mut r, req);
                return (State::Ringing(r), resp);
            }
            // Both sides hung up at once: answer theirs; ours ends the call when it is answered.
            State::Ending(e) if req.method == Method::BYE => {
                return (State::Ending(e), Response::to_request(req, 200, "OK", None))
            }
            other => {
                let resp = Response::to_request(
                    req,
                    481,
                    "Call/Transaction Does Not Exist (no such dialog)",
                    None,
                );
                return (other, resp);
            }
        };
        let restore = |up: Box<Up>| {
            if confirmed {
                State::Up(up)
            } else {
                State::Accepted(up)
            }
        };
        if let Err(e) = up.dialog.handle_request(req) {
            let resp = Response::to_request(req, e.status(), e.to_string(), None);
            return (restore(up), resp);
        }
        match req.method {
            Method::BYE => {
                let mut ending = Ending::new(Side::Remote, None, "hung up by the far side");
                ending.sip_reason = req.headers.get("Reason").map(str::to_string);
                ending.meta_duration_secs = req
                    .headers
                    .get("x-wa-meta-call-duration")
                    .and_then(|v| v.trim().parse().ok());
                let ok = Response::to_request(req, 200, "OK", None);
                (self.end(ending), ok)
            }
            Method::INVITE | Method::UPDATE => {
                let (up, resp) = self.reoffer_received(up, req, confirmed);
                (restore(up), resp)
            }
            // The PRACK of our reliable 180 that crossed our 200 (RFC 3262 §3).
            Method::PRACK => {
                let rack = rack_of(req);
                let resp = if rack.is_some() && rack == self.unpracked {
                    self.unpracked = None;
                    Response::to_request(req, 200, "OK", None)
                } else {
                    Response::to_request(
                        req,
                        481,
                        "Call/Transaction Does Not Exist (no reliable provisional with that RAck)",
                        None,
                    )
                };
                (restore(up), resp)
            }
            Method::OPTIONS => {
                let mut ok = Response::to_request(req, 200, "OK", None);
                ok.headers.push("Allow", self.setup.policy.allow());
                ok.headers.push("Accept", "application/sdp");
                (restore(up), ok)
            }
            Method::REFER if self.setup.policy.answers_reoffers => {
                let target = req
                    .headers
                    .get("Refer-To")
                    .and_then(|v| watrunk_sip::values::NameAddr::parse(v, "Refer-To").ok())
                    .map(|n| n.uri)
                    .filter(|u| u.as_sip().is_some());
                let response = match target {
                    Some(target) => {
                        self.event(CallEvent::Refer(target));
                        let mut accepted = Response::to_request(req, 202, "Accepted", None);
                        accepted
                            .headers
                            .push("Contact", self.setup.local.contact.clone());
                        accepted
                    }
                    None => {
                        Response::to_request(req, 400, "Bad Request (no SIP URI in Refer-To)", None)
                    }
                };
                (restore(up), response)
            }
            Method::INFO if self.setup.policy.answers_reoffers => {
                let response = match info_dtmf(req) {
                    Ok(key) => {
                        self.event(CallEvent::Dtmf(key));
                        Response::to_request(req, 200, "OK", None)
                    }
                    Err(refusal) => {
                        let mut r = Response::to_request(req, refusal.0, refusal.1, None);
                        r.headers
                            .push("Accept", "application/dtmf-relay, application/dtmf");
                        r
                    }
                };
                (restore(up), response)
            }
            _ => {
                let mut r = Response::to_request(req, 405, "Method Not Allowed", None);
                r.headers.push("Allow", self.setup.policy.allow());
                (restore(up), r)
            }
        }
    }

    /// A re-INVITE or UPDATE from the far side.
    fn reoffer_received(
        &mut self,
        mut up: Box<Up>,
        req: &Request,
        confirmed: bool,
    ) -> (Box<Up>, Response) {
        if !self.setup.policy.answers_reoffers {
            return (
                up,
                Response::to_request(
                    req,
                    488,
                    "Not Acceptable Here (no re-INVITE or UPDATE in WhatsApp calls)",
                    None,
                ),
            );
        }
        if !confirmed && req.method == Method::INVITE {
            let mut r = Response::to_request(
                req,
                500,
                "Server Internal Error (the ACK for our 200 has not arrived)",
                None,
            );
            r.headers
                .push("Retry-After", self.rng().gen_range(0..=10).to_string());
            return (up, r);
        }
        match up.reneg() {
            Some(Reneg::Idle | Reneg::Retry { .. }) => {}
            Some(_) => return (up, Response::to_request(req, 491, "Request Pending", None)),
            // A leg that renegotiates keeps its description (`Up::new`).
            None => {
                return (
                    up,
                    Response::to_request(req, 488, "Not Acceptable Here (no renegotiation)", None),
                )
            }
        }
        // While our re-offer waits for its retry, theirs is answered with what we want already
        // (`local.direction`); ours still goes at its time.
        let mut ok = Response::to_request(req, 200, "OK", None);
        ok.headers.push("Contact", self.setup.local.contact.clone());
        ok.headers.push("Allow", self.setup.policy.allow());
        if req.body.is_empty() {
            if req.method == Method::UPDATE {
                // A refresh without an offer (RFC 3311 §5.2): nothing to negotiate.
                return (up, ok);
            }
            let Some(kept) = up.sdp.as_deref_mut() else {
                return (up, ok);
            };
            kept.local.session_version += 1;
            return match sdp::offer(&kept.local) {
                Ok(offer) => {
                    ok.headers.push("Content-Type", "application/sdp");
                    ok.body = sdp::print(offer.sdp()).into_bytes();
                    kept.reneg = Reneg::OfferedInAnswer {
                        offer,
                        cseq: cseq_number(req),
                    };
                    (up, ok)
                }
                Err(e) => (
                    up,
                    with_request_headers(sdp_refusal(&e, &self.setup.local.warning_host), req, ""),
                ),
            };
        }
        let agreed = sdp::parse(&req.body).and_then(|o| sdp::agree(o, &self.setup.capabilities));
        let answered = agreed.and_then(|a| {
            let local = &mut up
                .sdp
                .as_deref_mut()
                .ok_or_else(|| SdpError::Local("no description kept to answer with".into()))?
                .local;
            local.session_version += 1;
            a.answer(local)
        });
        match answered {
            Ok((answer, plan)) => {
                ok.headers.push("Content-Type", "application/sdp");
                ok.body = sdp::print(&answer).into_bytes();
                self.update_media(&mut up, plan);
                (up, ok)
            }
            // RFC 3264 §8: a refused re-offer leaves the session as it was.
            Err(e) => {
                let mut r = sdp_refusal(&e, &self.setup.local.warning_host);
                r = with_request_headers(r, req, "");
                (up, r)
            }
        }
    }
}

/// Our ICE role when we make the offer: controlling with ICE (DTLS), none with SDES or plain RTP.
fn offerer_ice_role(security: Security) -> IceRole {
    match security {
        Security::Dtls => IceRole::Controlling,
        _ => IceRole::None,
    }
}

/// The refusal of an SDP: its status (488, or 500 for our configuration), the rule in the reason
/// phrase and a `Warning: 399` naming it.
fn sdp_refusal(e: &SdpError, warning_host: &str) -> Response {
    let mut r = Response::new(
        e.status(),
        format!("{} ({})", reason_phrase(e.status()), e.rule()),
    );
    r.headers.push("Warning", e.warning(warning_host));
    r
}

/// `response` (status, reason, extra headers) as a response to `req`: Via, From, To (with
/// `to_tag` when the request had none and one is given), Call-ID and CSeq copied, then its own
/// headers and body.
fn with_request_headers(response: Response, req: &Request, to_tag: &str) -> Response {
    let tag = (!to_tag.is_empty()).then_some(to_tag);
    let mut base = Response::to_request(req, response.status, response.reason.clone(), tag);
    for h in response.headers.iter() {
        base.headers.push(h.name.as_str(), h.value.clone());
    }
    base.body = response.body;
    base
}
