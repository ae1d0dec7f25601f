//! The core's calls: it owns one [`Call`] state machine per call and one media task per call, and
//! moves what they say between the transaction layer, the media stack and the events. An INVITE to
//! a business number becomes a call; its SDP is checked before any port is taken (488 with the
//! rule), media is prepared in the call's task, and the answer goes out when it is ready. Calls are
//! not tied to a connection: in-dialog requests go to the route set's first hop, over a live
//! connection to it or a new one.

use crate::transport::ConnId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use watrunk_call::{
    Call, CallEvent, CallOutput, Direction, Ending, Local, MetaHeaders, OutboundCall, Side,
};
use watrunk_media::{
    IceConnected, IceRole, Identity, MediaConfig, MediaEvent, MediaSession, MediaSocket, Prepared,
    Stats,
};
use watrunk_sdp::{self as sdp, LocalMedia, Profile, Security};
use watrunk_sip::transaction::{Peer, TransactionId, Transport};
use watrunk_sip::values::NameAddr;
use watrunk_sip::{Message, Method, Request, Response, Uri};

use super::{reply, Core, SERVER};
use crate::config::{NumberConfig, Srtp};

pub type CallKey = u64;

/// What the call tasks, the resolver and the API tell the core.
pub enum CallInput {
    MediaReady {
        key: CallKey,
        result: Result<Ready, String>,
    },
    Media {
        key: CallKey,
        event: MediaEvent,
    },
    MediaStopped {
        key: CallKey,
    },
    /// The next hop of a request a call sends, looked up.
    Resolved {
        key: CallKey,
        message: Message,
        to: Result<SocketAddr, String>,
        server_name: String,
    },
    Command(Command),
}

/// Control-API requests.
pub enum Command {
    Originate {
        from: String,
        to: String,
        sink: Option<SocketAddr>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Answer {
        call: String,
        sink: Option<SocketAddr>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    HangUp {
        call: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Dtmf {
        call: String,
        keys: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    List {
        reply: oneshot::Sender<serde_json::Value>,
    },
}

pub struct Ready {
    local: LocalMedia,
    app_addr: SocketAddr,
}

enum MediaCmd {
    /// Boxed: every call's command channel has room for 32 of these.
    Start {
        plan: Box<sdp::MediaPlan>,
        ssrc: u32,
    },
    Dtmf(String),
    Stop,
}

/// The media every call shares: one UDP socket, one DTLS identity.
pub struct MediaShared {
    pub socket: Arc<MediaSocket>,
    pub identity: Identity,
    pub ip: IpAddr,
    pub ip6: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
}

#[derive(Default)]
struct Timings {
    /// The authenticated INVITE (inbound) or the originate request (outbound).
    start: Option<Instant>,
    media_ready: Option<Duration>,
    final_response: Option<Duration>,
    ice: Option<Duration>,
    secure: Option<Duration>,
    first_rtp_out: Option<Duration>,
    first_rtp_in: Option<Duration>,
}

struct Entry {
    call: Call,
    id: String,
    number: String,
    remote: String,
    sink: SocketAddr,
    meta: MetaHeaders,
    /// Inbound: Meta's offer.
    offer: Option<sdp::Session>,
    /// Outbound: our offer.
    offer_state: Option<sdp::OfferState>,
    ready: Option<Ready>,
    media: Option<mpsc::Sender<MediaCmd>>,
    /// The peer the INVITE came from (inbound): its connection is tried first for our requests.
    origin: Option<Peer>,
    timings: Timings,
    stats: Option<Stats>,
    /// Kept until the media task has stopped, then reported with the final stats.
    ended: Option<Ending>,
    media_failure: Option<String>,
    local_rtp: Option<SocketAddr>,
    ssrc: u32,
    wants_answer: bool,
    /// Inbound: our ICE role toward the offer, for media prepared on answer.
    ice_role: IceRole,
    answered: bool,
}

#[derive(Default)]
pub struct Calls {
    next_key: CallKey,
    /// Boxed: a table of 2.4 KiB entries at most 7/8 full leaves whole pages of empty slots.
    entries: HashMap<CallKey, Box<Entry>>,
    by_sip_call_id: HashMap<String, CallKey>,
    by_name: HashMap<String, CallKey>,
    by_transaction: HashMap<TransactionId, CallKey>,
}

impl Calls {
    /// Whether a live call may send or receive over the connection `conn` to `remote`: the one
    /// its INVITE came on or from the same peer, or (for calls we placed, whose hop is chosen per
    /// request) any connection at all.
    pub fn may_use(&self, conn: ConnId, remote: SocketAddr) -> bool {
        self.entries.values().any(|e| match &e.origin {
            Some(o) => o.conn == Some(conn) || o.addr == remote,
            None => true,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn ms(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| {
        json!((d.as_secs_f64() * 10_000.0).round() / 10.0)
    })
}

fn user_of(uri: &Uri) -> Option<String> {
    uri.user_base().map(str::to_string)
}

/// host and port of a URI, for the next hop (TLS: 5061 by default).
fn hop_of(uri: &Uri) -> Option<(String, u16)> {
    let sip = uri.as_sip()?;
    let host = sip.host.to_string();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, sip.port.unwrap_or(5061)))
}

impl Core {
    fn local_for(&self, number: &str) -> Local {
        let port = self.cfg.tls.map(|a| a.port()).unwrap_or(5061);
        let hostport = if port == 5061 {
            self.cfg.hostname.clone()
        } else {
            format!("{}:{port}", self.cfg.hostname)
        };
        Local {
            contact: format!("<sip:{number}@{hostport};transport=tls>"),
            user_agent: SERVER.to_string(),
        }
    }

    /// A new INVITE, authenticated: the answer for the layer, or None when a call took it.
    pub(super) fn incoming_invite(
        &mut self,
        id: TransactionId,
        req: &Request,
        from: &Peer,
        number: &NumberConfig,
        to_tag: &str,
    ) -> Option<Response> {
        let now = Instant::now();
        let host = self.cfg.hostname.clone();
        let Some(media) = self.media.as_ref() else {
            return Some(reply(
                req,
                503,
                "Service Unavailable (no media address: --media-ip)",
                to_tag,
            ));
        };
        if self
            .calls
            .by_sip_call_id
            .contains_key(req.call_id().unwrap_or_default())
        {
            return Some(reply(
                req,
                482,
                "Loop Detected (a call with this Call-ID exists)",
                to_tag,
            ));
        }
        // The offer is checked before any port or task is taken.
        let offer = match sdp::parse(&req.body) {
            Ok(o) => o,
            Err(e) => return Some(sdp_refusal(req, &e, &host, to_tag)),
        };
        let mut probe = LocalMedia::generate(Profile::WhatsApp, Security::Dtls)
            .with_candidates([SocketAddr::new(media.ip, 9)])
            .with_fingerprint(media.identity.fingerprint().clone());
        probe.ice_ufrag = "probe".into();
        probe.ice_pwd = "probeprobeprobeprobeprobe".into();
        if let Err(e) = sdp::answer(&offer, &probe) {
            return Some(sdp_refusal(req, &e, &host, to_tag));
        }
        let role = match sdp::remote_ice_mode(&offer) {
            None => IceRole::None,
            Some(lite) => IceRole::for_answer(true, lite),
        };
        let key = self.new_key();
        let call = Call::incoming(req.clone(), id, self.local_for(&number.number));
        let name = format!("c{key}-{}", &watrunk_sip::dialog::new_tag()[..6]);
        let meta = MetaHeaders::of(req);
        let remote = req.from().and_then(|f| user_of(&f.uri)).unwrap_or_default();
        let sink = number.sink.expect("resolved config has a sink per number");
        let entry = Entry {
            call,
            id: name.clone(),
            number: number.number.clone(),
            remote: remote.clone(),
            sink,
            meta: meta.clone(),
            offer: Some(offer),
            offer_state: None,
            ready: None,
            media: None,
            origin: Some(from.clone()),
            timings: Timings {
                start: Some(now),
                ..Timings::default()
            },
            stats: None,
            ended: None,
            media_failure: None,
            local_rtp: None,
            ssrc: 0,
            wants_answer: self.cfg.calls.auto_answer,
            ice_role: role,
            answered: false,
        };
        self.calls
            .by_sip_call_id
            .insert(req.call_id().unwrap_or_default().to_string(), key);
        self.calls.by_name.insert(name.clone(), key);
        self.calls.by_transaction.insert(id, key);
        self.calls.entries.insert(key, Box::new(entry));
        self.events.emit(json!({
            "event": "call.incoming",
            "call": name,
            "direction": "inbound",
            "from": remote,
            "to": number.number,
            "meta_call_id": meta.call_id,
            "meta_user_id": meta.user_id,
            "meta_user_name": meta.user_name,
            "cta_payload": meta.cta_payload,
            "deeplink_payload": meta.deeplink_payload,
        }));
        // Answered by the API: media waits for the answer, which may choose the call's sink.
        if self.cfg.calls.auto_answer {
            self.start_media(key, role, Security::Dtls);
        }
        self.pump(key);
        None
    }

    fn new_key(&mut self) -> CallKey {
        self.calls.next_key += 1;
        self.calls.next_key
    }

    fn start_media(&mut self, key: CallKey, role: IceRole, security: Security) {
        let (Some(media), Some(entry)) = (self.media.as_ref(), self.calls.entries.get_mut(&key))
        else {
            return;
        };
        let mut cfg = MediaConfig::new(media.ip, SocketAddr::new(entry.sink.ip(), 0), entry.sink);
        cfg.media_ip6 = media.ip6;
        cfg.public_ip = media.public_ip;
        let (tx, rx) = mpsc::channel(16);
        entry.media = Some(tx);
        // The set-up is boxed: its state would otherwise size the call's media task for its
        // whole life.
        let set_up = Box::pin(set_up_media(
            key,
            cfg,
            media.identity.clone(),
            role,
            media.socket.clone(),
            security,
            rx,
            self.call_tx.clone(),
        ));
        tokio::spawn(run_media(key, set_up, self.call_tx.clone()));
    }

    pub(super) fn on_call_input(&mut self, input: CallInput) {
        match input {
            CallInput::MediaReady { key, result } => self.media_ready(key, result),
            CallInput::Media { key, event } => self.media_event(key, event),
            CallInput::MediaStopped { key } => {
                if let Some(e) = self.calls.entries.get_mut(&key) {
                    e.media = None;
                }
                self.finish(key);
            }
            CallInput::Resolved {
                key,
                message,
                to,
                server_name,
            } => match to {
                Ok(addr) => self.send_to_hop(key, message, addr, server_name),
                Err(reason) => {
                    tracing::warn!("call {key}: {reason}");
                    if let (Some(e), Message::Request(r)) =
                        (self.calls.entries.get_mut(&key), &message)
                    {
                        e.call.handle_send_failure(&r.method, &reason);
                    }
                    self.pump(key);
                }
            },
            CallInput::Command(c) => self.command(c),
        }
    }

    fn media_ready(&mut self, key: CallKey, result: Result<Ready, String>) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        entry.timings.media_ready = entry.timings.start.map(|s| s.elapsed());
        match result {
            Err(reason) => {
                tracing::warn!("call {}: media: {reason}", entry.id);
                entry.media_failure = Some(reason.clone());
                match entry.call.direction() {
                    Direction::Inbound => {
                        let mut r =
                            Response::new(500, "Server Internal Error (media set-up failed)");
                        r.headers
                            .push("Warning", format!("399 {} \"{reason}\"", self.cfg.hostname));
                        let _ = entry
                            .call
                            .reject(r, format!("media set-up failed: {reason}"));
                    }
                    Direction::Outbound => {
                        entry.ended = Some(Ending {
                            by: Side::Local,
                            status: None,
                            reason: format!("media set-up failed: {reason}"),
                            sip_reason: None,
                            meta_duration_secs: None,
                        });
                    }
                }
                entry.media = None;
            }
            Ok(ready) => {
                entry.local_rtp = Some(ready.app_addr);
                entry.ssrc = ready.local.ssrc;
                match entry.call.direction() {
                    Direction::Inbound => {
                        entry.ready = Some(ready);
                        if entry.wants_answer {
                            self.answer_call(key);
                        }
                    }
                    Direction::Outbound => self.send_offer(key, ready),
                }
            }
        }
        self.pump(key);
    }

    fn answer_call(&mut self, key: CallKey) {
        let host = self.cfg.hostname.clone();
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        let (Some(offer), Some(ready)) = (&entry.offer, &entry.ready) else {
            entry.wants_answer = true;
            return;
        };
        match sdp::answer(offer, &ready.local) {
            Ok((answer, plan)) => {
                if entry.call.answer(sdp::print(&answer).into_bytes()).is_ok() {
                    entry.timings.final_response = entry.timings.start.map(|s| s.elapsed());
                    if let Some(m) = &entry.media {
                        let _ = m.try_send(MediaCmd::Start {
                            plan: Box::new(plan),
                            ssrc: ready.local.ssrc,
                        });
                    }
                    // The offer/answer is done (Meta sends no re-INVITE): what it needed goes
                    // rather than stay with the call.
                    entry.offer = None;
                    entry.ready = None;
                }
            }
            Err(e) => {
                let r = sdp_refusal_response(&e, &host);
                let _ = entry
                    .call
                    .reject(r, format!("offer refused: {}: {e}", e.rule()));
            }
        }
    }

    fn send_offer(&mut self, key: CallKey, ready: Ready) {
        let domain = self.cfg.calls.meta_domain.clone();
        let hostname = self.cfg.hostname.clone();
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        let state = match sdp::offer(&ready.local) {
            Ok(s) => s,
            Err(e) => {
                entry.ended = Some(Ending {
                    by: Side::Local,
                    status: None,
                    reason: format!("our offer cannot be made: {e}"),
                    sip_reason: None,
                    meta_duration_secs: None,
                });
                if let Some(m) = &entry.media {
                    let _ = m.try_send(MediaCmd::Stop);
                }
                return;
            }
        };
        let password = self
            .cfg
            .calls
            .numbers
            .get(&entry.number)
            .and_then(|n| n.password.clone());
        let local = {
            let port = self.cfg.tls.map(|a| a.port()).unwrap_or(5061);
            let hostport = if port == 5061 {
                hostname.clone()
            } else {
                format!("{hostname}:{port}")
            };
            Local {
                contact: format!("<sip:{}@{hostport};transport=tls>", entry.number),
                user_agent: SERVER.to_string(),
            }
        };
        entry.call = Call::outgoing(
            OutboundCall {
                from_number: entry.number.clone(),
                hostname,
                to_user: entry.remote.clone(),
                domain,
                offer: sdp::print(state.sdp()).into_bytes(),
                password,
            },
            local,
        );
        self.calls
            .by_sip_call_id
            .insert(entry.call.call_id().to_string(), key);
        entry.offer_state = Some(state);
        entry.ready = Some(ready);
    }

    fn media_event(&mut self, key: CallKey, event: MediaEvent) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        match event {
            MediaEvent::IceConnected(ice) => {
                let IceConnected {
                    local,
                    remote,
                    role,
                    elapsed,
                } = *ice;
                entry.timings.ice = Some(elapsed);
                self.events.emit(json!({
                    "event": "media.ice", "call": entry.id, "local": local.to_string(),
                    "remote": remote.to_string(), "role": role.name(), "ms": ms(Some(elapsed)),
                }));
            }
            MediaEvent::SecureUp { profile, elapsed } => {
                entry.timings.secure = Some(elapsed);
                self.events.emit(json!({
                    "event": "media.up", "call": entry.id, "local_rtp": entry.local_rtp.map(|a| a.to_string()),
                    "sink": entry.sink.to_string(), "ssrc": entry.ssrc, "srtp": profile, "ms": ms(Some(elapsed)),
                }));
            }
            MediaEvent::FirstRtpOut { elapsed } => entry.timings.first_rtp_out = Some(elapsed),
            MediaEvent::FirstRtpIn { elapsed } => entry.timings.first_rtp_in = Some(elapsed),
            MediaEvent::Stats(s) => entry.stats = Some(*s),
            MediaEvent::Failed { reason } => {
                tracing::info!("call {}: media failed: {reason}", entry.id);
                entry.media_failure.get_or_insert(reason.clone());
                // Q.850 cause 41: temporary failure.
                entry.call.hang_up(&format!("media failed: {reason}"), 41);
                self.pump(key);
            }
        }
    }

    /// A request for a call found by Call-ID: BYE ends it; anything else in the dialog is refused.
    pub(super) fn in_dialog_request(
        &mut self,
        id: TransactionId,
        req: &Request,
    ) -> Option<Option<Response>> {
        let key = *self.calls.by_sip_call_id.get(req.call_id()?)?;
        let entry = self.calls.entries.get_mut(&key)?;
        let resp = match req.method {
            Method::BYE => entry.call.handle_bye(req),
            // No re-INVITE or UPDATE toward or from Meta (WHATSAPP-SIP §3.9).
            Method::INVITE | Method::UPDATE => Response::to_request(
                req,
                488,
                "Not Acceptable Here (no re-INVITE or UPDATE in WhatsApp calls)",
                None,
            ),
            Method::OPTIONS => Response::to_request(req, 200, "OK", None),
            _ => Response::to_request(req, 405, "Method Not Allowed", None),
        };
        let _ = id;
        let mut resp = resp;
        resp.headers.push("Server", SERVER);
        self.pump_later.push(key);
        Some(Some(resp))
    }

    pub(super) fn on_ack(&mut self, req: &Request) {
        let Some(&key) = req.call_id().and_then(|c| self.calls.by_sip_call_id.get(c)) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            e.call.handle_ack();
        }
        self.pump(key);
    }

    pub(super) fn on_cancelled(&mut self, req: &Request) {
        let Some(&key) = req.call_id().and_then(|c| self.calls.by_sip_call_id.get(c)) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            e.call.handle_cancel(req);
        }
        self.pump(key);
    }

    pub(super) fn on_response(&mut self, id: TransactionId, resp: &Response) {
        let Some(&key) = self.calls.by_transaction.get(&id) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            if resp.status >= 200 && e.timings.final_response.is_none() && e.call.invite().is_some()
            {
                e.timings.final_response = e.timings.start.map(|s| s.elapsed());
            }
            e.call.handle_response(id, resp);
        }
        self.pump(key);
    }

    /// A transaction of a call timed out: a missing ACK (server INVITE) or no answer (client).
    pub(super) fn on_timeout(&mut self, id: TransactionId, no_ack: bool) {
        let Some(&key) = self.calls.by_transaction.get(&id) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            if no_ack {
                e.call.handle_ack_timeout();
            } else {
                e.call.handle_request_timeout(id);
            }
        }
        self.pump(key);
    }

    pub(super) fn pump_pending(&mut self) {
        for key in std::mem::take(&mut self.pump_later) {
            self.pump(key);
        }
    }

    /// Carries out what a call asked for.
    fn pump(&mut self, key: CallKey) {
        let now = Instant::now();
        loop {
            let Some(entry) = self.calls.entries.get_mut(&key) else {
                return;
            };
            let Some(out) = entry.call.poll_output() else {
                break;
            };
            match out {
                CallOutput::Respond {
                    transaction,
                    response,
                } => {
                    if let Err(e) = self.layer.respond(now, transaction, response) {
                        tracing::debug!("call {key}: respond: {e}");
                    }
                }
                CallOutput::Send(request) => self.route(key, Message::Request(request)),
                CallOutput::Ack(ack) => self.route(key, Message::Request(ack)),
                CallOutput::Cancel { invite } => match self.layer.cancel(now, invite) {
                    Ok(id) => {
                        self.calls.by_transaction.insert(id, key);
                    }
                    Err(e) => tracing::debug!("call {key}: cancel: {e}"),
                },
                CallOutput::RemoteAnswer(body) => self.accept_answer(key, &body),
                CallOutput::Event(ev) => self.call_event(key, ev),
            }
        }
    }

    fn accept_answer(&mut self, key: CallKey, body: &[u8]) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        let result = sdp::parse(body).and_then(|answer| match &entry.offer_state {
            Some(state) => sdp::accept_answer(state, &answer),
            None => Err(sdp::SdpError::Syntax("no offer of ours".into())),
        });
        match result {
            Ok(plan) => {
                if let Some(m) = &entry.media {
                    let _ = m.try_send(MediaCmd::Start {
                        plan: Box::new(plan),
                        ssrc: entry.ssrc,
                    });
                }
                entry.offer_state = None;
                entry.ready = None;
            }
            Err(e) => {
                let reason = format!("Meta's answer is refused: {}: {e}", e.rule());
                entry.media_failure = Some(reason.clone());
                entry.call.hang_up(&reason, 65);
            }
        }
    }

    fn call_event(&mut self, key: CallKey, ev: CallEvent) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        match ev {
            CallEvent::Ringing => self
                .events
                .emit(json!({"event": "call.ringing", "call": entry.id})),
            CallEvent::Answered => {
                entry.answered = true;
                self.events.emit(json!({
                "event": "call.answered", "call": entry.id, "direction": entry.call.direction().name(),
                "local_rtp": entry.local_rtp.map(|a| a.to_string()), "sink": entry.sink.to_string(),
                "ssrc": entry.ssrc, "ms": ms(entry.timings.final_response),
                }))
            }
            CallEvent::Confirmed => self
                .events
                .emit(json!({"event": "call.confirmed", "call": entry.id})),
            CallEvent::Ended(ending) => {
                entry.ended = Some(ending);
                match &entry.media {
                    Some(m) => {
                        if m.try_send(MediaCmd::Stop).is_err() {
                            // The task is gone already; its MediaStopped is on the way.
                        }
                    }
                    None => self.finish(key),
                }
            }
        }
    }

    /// Reports `call.ended` and forgets the call once both its signalling and its media are done.
    fn finish(&mut self, key: CallKey) {
        let Some(entry) = self.calls.entries.get(&key) else {
            return;
        };
        if entry.media.is_some() || entry.ended.is_none() {
            return;
        }
        let entry = self.calls.entries.remove(&key).expect("present");
        self.calls.by_sip_call_id.retain(|_, k| *k != key);
        self.calls.by_name.remove(&entry.id);
        self.calls.by_transaction.retain(|_, k| *k != key);
        let ending = entry.ended.expect("checked");
        if !entry.answered && entry.call.direction() == Direction::Outbound {
            self.unanswered
                .push(format!("{}: {}", entry.id, ending.reason));
        }
        let t = &entry.timings;
        let sip_ms = match (t.final_response, t.media_ready) {
            (Some(f), Some(m)) if entry.call.direction() == Direction::Inbound => {
                ms(Some(f.saturating_sub(m)))
            }
            _ => serde_json::Value::Null,
        };
        let stats = entry.stats.map(|s| {
            json!({
                "packets_out": s.packets_out, "packets_in": s.packets_in, "bytes_out": s.bytes_out,
                "bytes_in": s.bytes_in, "silence_out": s.silence_out, "dtmf_out": s.dtmf_out,
                "srtp_rejected": s.srtp_rejected, "lost": s.lost, "jitter_us": s.jitter_us, "rtt_us": s.rtt_us,
            })
        });
        self.events.emit(json!({
            "event": "call.ended",
            "call": entry.id,
            "direction": entry.call.direction().name(),
            "from": if entry.call.direction() == Direction::Inbound { &entry.remote } else { &entry.number },
            "to": if entry.call.direction() == Direction::Inbound { &entry.number } else { &entry.remote },
            "by": ending.by.name(),
            "status": ending.status,
            "reason": ending.reason,
            "sip_reason": ending.sip_reason,
            "media_failure": entry.media_failure,
            "meta_call_id": entry.meta.call_id,
            "meta_call_duration_secs": ending.meta_duration_secs,
            "timings_ms": {
                "media_prepare": ms(t.media_ready),
                "final_response": ms(t.final_response),
                "answer_excluding_media": sip_ms,
                "ice": ms(t.ice),
                "secure": ms(t.secure),
                "first_rtp_out": ms(t.first_rtp_out),
                "first_rtp_in": ms(t.first_rtp_in),
            },
            "stats": stats,
            // What the server still holds once this call is gone: idle is 0 calls and (0, 0) media.
            "server": {
                "calls": self.calls.entries.len(),
                "media_routes": self.media.as_ref().map(|m| m.socket.usage().0),
                "media_conns": self.media.as_ref().map(|m| m.socket.usage().1),
            },
        }));
        if let Some(done) = self.call_done.take_if(|(name, _)| *name == entry.id) {
            let _ = done.1.send(());
        }
    }

    /// Where a call's request goes: the route set's first hop, else the Request-URI (RFC 3261
    /// §8.1.2); calls we place go to the configured Meta server.
    fn route(&mut self, key: CallKey, message: Message) {
        let Message::Request(req) = &message else {
            return;
        };
        let target = req
            .headers
            .values("Route")
            .next()
            .and_then(|r| NameAddr::parse(r, "Route").ok())
            .map(|n| n.uri)
            .unwrap_or_else(|| req.uri.clone());
        let outbound_initial =
            req.method == Method::INVITE && req.to().is_some_and(|t| t.tag().is_none());
        let (host, port) = if outbound_initial || req.method == Method::CANCEL {
            split_server(&self.cfg.calls.meta_server)
        } else {
            match hop_of(&target) {
                Some(h) => h,
                None => {
                    tracing::warn!("call {key}: no next hop in {target}");
                    return;
                }
            }
        };
        // A hop we already talk to (the INVITE's connection) needs no lookup.
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.send_to_hop(key, message, SocketAddr::new(ip, port), host);
            return;
        }
        let tx = self.call_tx.clone();
        tokio::spawn(async move {
            let to = match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    addrs
                        .iter()
                        .find(|a| a.is_ipv4())
                        .or(addrs.first())
                        .copied()
                        .ok_or_else(|| format!("{host} has no address"))
                }
                Err(e) => Err(format!("cannot resolve {host}: {e}")),
            };
            let _ = tx
                .send(CallInput::Resolved {
                    key,
                    message,
                    to,
                    server_name: host,
                })
                .await;
        });
    }

    fn send_to_hop(
        &mut self,
        key: CallKey,
        message: Message,
        addr: SocketAddr,
        server_name: String,
    ) {
        let now = Instant::now();
        // The INVITE's own connection when the hop is where it came from; else any live one.
        let conn = self
            .calls
            .entries
            .get(&key)
            .and_then(|e| e.origin.as_ref())
            .filter(|o| o.addr == addr && self.conns.contains_key(&o.conn.unwrap_or(u64::MAX)))
            .and_then(|o| o.conn);
        let peer = Peer {
            transport: Transport::Tls,
            addr,
            conn,
        };
        self.server_names.insert(addr, server_name);
        match message {
            Message::Request(r) if r.method == Method::ACK => {
                if let Err(e) = self.layer.send_stateless(Message::Request(r), peer) {
                    tracing::debug!("call {key}: ack: {e}");
                }
            }
            Message::Request(r) => {
                let method = r.method.clone();
                if self
                    .calls
                    .entries
                    .get(&key)
                    .is_none_or(|e| e.call.is_ended())
                {
                    return;
                }
                match self.layer.send_request(now, r, peer) {
                    Ok(id) => {
                        self.calls.by_transaction.insert(id, key);
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.call.request_sent(&method, id);
                        }
                    }
                    Err(err) => {
                        tracing::warn!("call {key}: {method}: {err}");
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.call.handle_send_failure(&method, &err.to_string());
                        }
                    }
                }
            }
            Message::Response(_) => {}
        }
        self.pump(key);
    }

    fn find(&self, name: &str) -> Option<CallKey> {
        self.calls.by_name.get(name).copied()
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Originate {
                from,
                to,
                sink,
                reply,
            } => {
                let _ = reply.send(self.originate(&from, &to, sink));
            }
            Command::Answer { call, sink, reply } => {
                let r = match self.find(&call) {
                    None => Err(format!("no call {call}")),
                    Some(key) => {
                        let e = self.calls.entries.get_mut(&key).expect("indexed");
                        if e.call.direction() != Direction::Inbound || e.call.invite().is_none() {
                            Err(format!("{call} is not ringing"))
                        } else if e.wants_answer {
                            Err(format!("{call} is being answered already"))
                        } else {
                            e.wants_answer = true;
                            if let Some(sink) = sink {
                                e.sink = sink;
                            }
                            let role = e.ice_role;
                            self.start_media(key, role, Security::Dtls);
                            Ok(())
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Command::HangUp { call, reply } => {
                let r = match self.find(&call) {
                    None => Err(format!("no call {call}")),
                    Some(key) => {
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.call.hang_up("hung up by the application", 16);
                        }
                        self.pump(key);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::Dtmf { call, keys, reply } => {
                let r = match self.find(&call).and_then(|k| self.calls.entries.get(&k)) {
                    None => Err(format!("no call {call}")),
                    Some(e) => match &e.media {
                        Some(m) if e.call.is_answered() => m
                            .try_send(MediaCmd::Dtmf(keys))
                            .map_err(|_| "DTMF queue full".to_string()),
                        _ => Err(format!("{call} has no media up")),
                    },
                };
                let _ = reply.send(r);
            }
            Command::List { reply } => {
                let calls: Vec<serde_json::Value> = self
                    .calls
                    .entries
                    .values()
                    .map(|e| {
                        json!({
                            "call": e.id, "direction": e.call.direction().name(), "state": e.call.state_name(),
                            "number": e.number, "remote": e.remote, "sink": e.sink.to_string(),
                            "local_rtp": e.local_rtp.map(|a| a.to_string()),
                            "age_ms": ms(e.timings.start.map(|s| s.elapsed())),
                        })
                    })
                    .collect();
                let _ = reply.send(json!({ "calls": calls }));
            }
        }
    }

    /// A business-initiated call: media first (our offer needs its candidates), then the INVITE.
    pub(super) fn originate(
        &mut self,
        from: &str,
        to: &str,
        sink: Option<SocketAddr>,
    ) -> Result<String, String> {
        let Some(number) = self.cfg.calls.numbers.get(from).cloned() else {
            return Err(format!(
                "{from} is not a configured business number (--number)"
            ));
        };
        if self.media.is_none() {
            return Err("no media address: --media-ip".into());
        }
        if to.is_empty() || to.contains(['@', ' ', ';', '<', '>']) {
            return Err(format!("{to:?} is not a WhatsApp user number or BSUID"));
        }
        let sink = sink
            .or(number.sink)
            .ok_or("no sink: pass one or configure --sink")?;
        let key = self.new_key();
        let name = format!("c{key}-{}", &watrunk_sip::dialog::new_tag()[..6]);
        // A placeholder until the offer exists: it never emits anything.
        let placeholder = Call::outgoing(
            OutboundCall {
                from_number: from.into(),
                hostname: self.cfg.hostname.clone(),
                to_user: to.into(),
                domain: self.cfg.calls.meta_domain.clone(),
                offer: Vec::new(),
                password: None,
            },
            self.local_for(from),
        );
        let mut placeholder = placeholder;
        while placeholder.poll_output().is_some() {}
        self.calls.entries.insert(
            key,
            Box::new(Entry {
                call: placeholder,
                id: name.clone(),
                number: from.into(),
                remote: to.into(),
                sink,
                meta: MetaHeaders::default(),
                offer: None,
                offer_state: None,
                ready: None,
                media: None,
                origin: None,
                timings: Timings {
                    start: Some(Instant::now()),
                    ..Timings::default()
                },
                stats: None,
                ended: None,
                media_failure: None,
                local_rtp: None,
                ssrc: 0,
                wants_answer: false,
                ice_role: IceRole::Controlling,
                answered: false,
            }),
        );
        self.calls.by_name.insert(name.clone(), key);
        self.events.emit(json!({
            "event": "call.outgoing", "call": name, "direction": "outbound", "from": from, "to": to,
        }));
        let (role, security) = match number.srtp {
            Srtp::Dtls => (IceRole::Controlling, Security::Dtls),
            Srtp::Sdes => (IceRole::None, Security::Sdes),
        };
        self.start_media(key, role, security);
        Ok(name)
    }
}

fn split_server(s: &str) -> (String, u16) {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(5061),
        ),
        _ => (s.to_string(), 5061),
    }
}

fn sdp_refusal_response(e: &sdp::SdpError, host: &str) -> Response {
    let mut r = Response::new(
        e.status(),
        format!(
            "{} ({})",
            watrunk_sip::message::reason_phrase(e.status()),
            e.rule()
        ),
    );
    r.headers.push("Warning", e.warning(host));
    r.headers.push("Server", SERVER);
    r
}

fn sdp_refusal(req: &Request, e: &sdp::SdpError, host: &str, to_tag: &str) -> Response {
    let mut r = reply(
        req,
        e.status(),
        &format!(
            "{} ({})",
            watrunk_sip::message::reason_phrase(e.status()),
            e.rule()
        ),
        to_tag,
    );
    r.headers.push("Warning", e.warning(host));
    r
}

/// One call's media task: its set-up, then the session's events to the core and the core's
/// commands to the session.
async fn run_media(
    key: CallKey,
    set_up: impl std::future::Future<Output = Option<(MediaSession, mpsc::Receiver<MediaCmd>)>>,
    core: mpsc::Sender<CallInput>,
) {
    let Some((mut session, mut commands)) = set_up.await else {
        return;
    };
    loop {
        tokio::select! {
            e = session.events.recv() => match e {
                Some(event) => { let _ = core.send(CallInput::Media { key, event }).await; }
                None => break,
            },
            c = commands.recv() => match c {
                Some(MediaCmd::Dtmf(keys)) => {
                    for k in keys.chars() {
                        if let Err(e) = session.send_dtmf(k, Duration::from_millis(100)) {
                            tracing::info!("call {key}: DTMF {k}: {e}");
                        }
                    }
                }
                Some(MediaCmd::Start { .. }) => {}
                Some(MediaCmd::Stop) | None => break,
            },
        }
    }
    for event in Box::pin(session.stop()).await {
        let _ = core.send(CallInput::Media { key, event }).await;
    }
    let _ = core.send(CallInput::MediaStopped { key }).await;
}

/// Prepares the call's media, tells the core what to put in the SDP, and starts the session when
/// the core says so; `None` when the call ended first (the core has been told).
#[allow(clippy::too_many_arguments)]
async fn set_up_media(
    key: CallKey,
    cfg: MediaConfig,
    identity: Identity,
    role: IceRole,
    socket: Arc<MediaSocket>,
    security: Security,
    mut commands: mpsc::Receiver<MediaCmd>,
    core: mpsc::Sender<CallInput>,
) -> Option<(MediaSession, mpsc::Receiver<MediaCmd>)> {
    let prepared = match Box::pin(Prepared::new(cfg, identity, role, &socket)).await {
        Ok(p) => p,
        Err(e) => {
            let _ = core
                .send(CallInput::MediaReady {
                    key,
                    result: Err(e.to_string()),
                })
                .await;
            let _ = core.send(CallInput::MediaStopped { key }).await;
            return None;
        }
    };
    let mut local = LocalMedia::generate(Profile::WhatsApp, security)
        .with_candidates(prepared.candidates().iter().copied())
        .with_fingerprint(prepared.fingerprint().clone());
    let (ufrag, pwd) = prepared.ice_credentials();
    local.ice_ufrag = ufrag.to_string();
    local.ice_pwd = pwd.to_string();
    let ready = Ready {
        local,
        app_addr: prepared.app_addr(),
    };
    let _ = core
        .send(CallInput::MediaReady {
            key,
            result: Ok(ready),
        })
        .await;
    let (plan, ssrc) = loop {
        match commands.recv().await {
            Some(MediaCmd::Start { plan, ssrc }) => break (plan, ssrc),
            Some(MediaCmd::Dtmf(_)) => continue,
            Some(MediaCmd::Stop) | None => {
                Box::pin(prepared.close()).await;
                let _ = core.send(CallInput::MediaStopped { key }).await;
                return None;
            }
        }
    };
    Some((prepared.start(*plan, ssrc), commands))
}
