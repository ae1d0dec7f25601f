//! The core's calls: one [`Leg`] (the invite session: dialog, offer/answer, media intents) and one
//! media task per call, and what moves between them, the transaction layer and the events. An
//! INVITE to a business number becomes a leg, whose offer is agreed before any port or task is
//! taken (a refused offer gets its 488 and no call); what the leg asks of media is carried out
//! here. Calls are not tied to a connection: in-dialog requests go to the route set's first hop,
//! over a live connection to it or a new one.

use crate::transport::ConnId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use watrunk_call::{
    CallDirection, CallEvent, CallOutput, Ending, Fault, Leg, LegPolicy, LegSetup, Local,
    MediaFailure, MediaIntent, MetaHeaders, OutboundCall,
};
use watrunk_media::{
    IceConnected, IceRole, Identity, MediaConfig, MediaError, MediaEvent, MediaSession,
    MediaSocket, Prepared, Stats,
};
use watrunk_sdp::{self as sdp, Capabilities, LocalMedia, Security};
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
        result: Result<Ready, MediaError>,
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

/// A call's local description, made by its media task.
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
    leg: Leg,
    id: String,
    number: String,
    remote: String,
    sink: SocketAddr,
    meta: MetaHeaders,
    media: Option<mpsc::Sender<MediaCmd>>,
    /// The peer the INVITE came from (inbound): its connection is tried first for our requests.
    origin: Option<Peer>,
    timings: Timings,
    stats: Option<Stats>,
    /// Kept until the media task has stopped, then reported with the final stats.
    ended: Option<Ending>,
    local_rtp: Option<SocketAddr>,
    ssrc: u32,
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

/// The media stack's failure as the leg takes it: whose fault, and what happened.
fn media_failure(e: &MediaError) -> MediaFailure {
    let (fault, detail) = match e {
        MediaError::Peer(d) => (Fault::Peer, d),
        MediaError::Timeout(d) => (Fault::Timeout, d),
        MediaError::Local(d) => (Fault::Local, d),
    };
    MediaFailure {
        fault,
        detail: detail.clone(),
    }
}

impl Core {
    /// The WhatsApp leg's configuration for one of our numbers.
    fn leg_setup(&self, number: &str, srtp: Srtp) -> LegSetup {
        let port = self.cfg.tls.map(|a| a.port()).unwrap_or(5061);
        let hostport = if port == 5061 {
            self.cfg.hostname.clone()
        } else {
            format!("{}:{port}", self.cfg.hostname)
        };
        LegSetup {
            local: Local {
                contact: format!("<sip:{number}@{hostport};transport=tls>"),
                user_agent: SERVER.to_string(),
                warning_host: self.cfg.hostname.clone(),
            },
            capabilities: Capabilities::whatsapp(match srtp {
                Srtp::Dtls => Security::Dtls,
                Srtp::Sdes => Security::Sdes,
            }),
            policy: LegPolicy::whatsapp(),
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
        if self.media.is_none() {
            return Some(reply(
                req,
                503,
                "Service Unavailable (no media address: --media-ip)",
                to_tag,
            ));
        }
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
        // The offer is agreed before any port or task is taken; a refusal makes no call.
        let setup = self.leg_setup(&number.number, number.srtp);
        let leg = match Leg::incoming(req.clone(), id, setup, &mut self.rng) {
            Ok(leg) => leg,
            Err(refusal) => return Some(refusal),
        };
        let key = self.new_key();
        let name = format!(
            "c{key}-{}",
            &watrunk_sip::dialog::new_tag(&mut self.rng)[..6]
        );
        let meta = MetaHeaders::of(req);
        let remote = req.from().and_then(|f| user_of(&f.uri)).unwrap_or_default();
        let entry = Entry {
            leg,
            id: name.clone(),
            number: number.number.clone(),
            remote: remote.clone(),
            sink: number.sink,
            meta: meta.clone(),
            media: None,
            origin: Some(from.clone()),
            timings: Timings {
                start: Some(now),
                ..Timings::default()
            },
            stats: None,
            ended: None,
            local_rtp: None,
            ssrc: 0,
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
        // Otherwise the API answers; media is prepared then, for the sink it may choose.
        if self.cfg.calls.auto_answer {
            if let Some(e) = self.calls.entries.get_mut(&key) {
                let _ = e.leg.answer();
            }
        }
        self.pump(key);
        None
    }

    fn new_key(&mut self) -> CallKey {
        self.calls.next_key += 1;
        self.calls.next_key
    }

    /// The leg's `Prepare`: a media task that makes our local description, then runs the session.
    fn start_media(&mut self, key: CallKey, role: IceRole, security: Security) {
        let (Some(media), Some(entry)) = (self.media.as_ref(), self.calls.entries.get_mut(&key))
        else {
            return;
        };
        if entry.media.is_some() {
            return;
        }
        let mut cfg = MediaConfig::new(media.ip, SocketAddr::new(entry.sink.ip(), 0), entry.sink);
        cfg.media_ip6 = media.ip6;
        cfg.public_ip = media.public_ip;
        let (tx, rx) = mpsc::channel(16);
        entry.media = Some(tx);
        // The set-up is boxed: its state would otherwise size the call's media task for its
        // whole life.
        let set_up = Box::pin(set_up_media(
            key,
            MediaSetUp {
                cfg,
                identity: media.identity.clone(),
                role,
                socket: media.socket.clone(),
                security,
                seed: self.rng.next_u64(),
            },
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
                        e.leg.handle_send_failure(&r.method, &reason);
                    }
                    self.pump(key);
                }
            },
            CallInput::Command(c) => self.command(c),
        }
    }

    fn media_ready(&mut self, key: CallKey, result: Result<Ready, MediaError>) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        entry.timings.media_ready = entry.timings.start.map(|s| s.elapsed());
        match result {
            Err(e) => {
                tracing::warn!("call {}: media: {e}", entry.id);
                entry.leg.media_failed(media_failure(&e));
            }
            Ok(ready) => {
                entry.local_rtp = Some(ready.app_addr);
                entry.ssrc = ready.local.ssrc;
                entry.leg.media_ready(ready.local);
            }
        }
        self.pump(key);
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
            MediaEvent::Failed(e) => {
                tracing::info!("call {}: media failed: {e}", entry.id);
                entry.leg.media_failed(media_failure(&e));
                self.pump(key);
            }
        }
    }

    /// A request for a call found by Call-ID (BYE, re-INVITE, UPDATE ...): its leg answers it.
    /// `Some(None)`: taken, the leg's response follows; `None`: no such call.
    pub(super) fn in_dialog_request(
        &mut self,
        id: TransactionId,
        req: &Request,
    ) -> Option<Option<Response>> {
        let key = *self.calls.by_sip_call_id.get(req.call_id()?)?;
        let entry = self.calls.entries.get_mut(&key)?;
        entry.leg.handle_request(id, req);
        self.pump_later.push(key);
        Some(None)
    }

    pub(super) fn on_ack(&mut self, req: &Request) {
        let Some(&key) = req.call_id().and_then(|c| self.calls.by_sip_call_id.get(c)) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            e.leg.handle_ack(req);
        }
        self.pump(key);
    }

    pub(super) fn on_cancelled(&mut self, req: &Request) {
        let Some(&key) = req.call_id().and_then(|c| self.calls.by_sip_call_id.get(c)) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            e.leg.handle_cancel(req);
        }
        self.pump(key);
    }

    pub(super) fn on_response(&mut self, id: TransactionId, resp: &Response) {
        let Some(&key) = self.calls.by_transaction.get(&id) else {
            return;
        };
        if let Some(e) = self.calls.entries.get_mut(&key) {
            if resp.status >= 200 && e.timings.final_response.is_none() && e.leg.is_calling() {
                e.timings.final_response = e.timings.start.map(|s| s.elapsed());
            }
            e.leg.handle_response(Instant::now(), id, resp);
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
                e.leg.handle_ack_timeout();
            } else {
                e.leg.handle_request_timeout(id);
            }
        }
        self.pump(key);
    }

    pub(super) fn pump_pending(&mut self) {
        for key in std::mem::take(&mut self.pump_later) {
            self.pump(key);
        }
    }

    /// Carries out what a call's leg asked for.
    fn pump(&mut self, key: CallKey) {
        let now = Instant::now();
        loop {
            let Some(entry) = self.calls.entries.get_mut(&key) else {
                return;
            };
            let Some(out) = entry.leg.poll_output() else {
                break;
            };
            match out {
                CallOutput::Respond {
                    transaction,
                    response,
                } => {
                    if response.status == 200 && entry.timings.final_response.is_none() {
                        entry.timings.final_response = entry.timings.start.map(|s| s.elapsed());
                    }
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
                CallOutput::Media(intent) => self.media_intent(key, intent),
                CallOutput::Event(ev) => self.call_event(key, ev),
            }
        }
    }

    fn media_intent(&mut self, key: CallKey, intent: MediaIntent) {
        let Some(entry) = self.calls.entries.get_mut(&key) else {
            return;
        };
        let command = match intent {
            MediaIntent::Prepare { security, ice_role } => {
                self.start_media(key, ice_role, security);
                return;
            }
            MediaIntent::Start { plan, ssrc } => MediaCmd::Start { plan, ssrc },
            MediaIntent::SendDtmf { keys } => MediaCmd::Dtmf(keys),
            MediaIntent::Stop => MediaCmd::Stop,
            // The WhatsApp leg never renegotiates (its policy refuses re-offers), so the relay
            // has no use for a new plan yet; the PBX bridge's legs will.
            MediaIntent::Update { .. } => {
                tracing::warn!(
                    "call {}: a media update is not supported by the relay",
                    entry.id
                );
                return;
            }
        };
        if let Some(m) = &entry.media {
            // A full queue or a finished task: a Stop is then not needed, its MediaStopped is
            // on the way; a lost DTMF key is the API caller's to retry.
            let _ = m.try_send(command);
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
                "event": "call.answered", "call": entry.id, "direction": direction_name(entry.leg.direction()),
                "local_rtp": entry.local_rtp.map(|a| a.to_string()), "sink": entry.sink.to_string(),
                "ssrc": entry.ssrc, "ms": ms(entry.timings.final_response),
                }))
            }
            CallEvent::Confirmed => self
                .events
                .emit(json!({"event": "call.confirmed", "call": entry.id})),
            CallEvent::MediaUpdated(direction) => self.events.emit(json!({
                "event": "media.updated", "call": entry.id, "direction": direction.attribute(),
            })),
            CallEvent::ReofferRefused(status) => self.events.emit(json!({
                "event": "media.update_refused", "call": entry.id, "status": status,
            })),
            CallEvent::Ended(ending) => {
                entry.ended = Some(ending);
                if entry.media.is_none() {
                    self.finish(key);
                }
            }
        }
    }

    /// Reports `call.ended` and forgets the call once both its signalling and its media are done.
    fn finish(&mut self, key: CallKey) {
        let Some(entry) = self.calls.entries.remove(&key) else {
            return;
        };
        let Some(ending) = entry.ended.clone().filter(|_| entry.media.is_none()) else {
            self.calls.entries.insert(key, entry);
            return;
        };
        self.calls.by_sip_call_id.retain(|_, k| *k != key);
        self.calls.by_name.remove(&entry.id);
        self.calls.by_transaction.retain(|_, k| *k != key);
        let direction = entry.leg.direction();
        if !entry.answered && direction == CallDirection::Outbound {
            self.unanswered
                .push(format!("{}: {}", entry.id, ending.reason));
        }
        let t = &entry.timings;
        let sip_ms = match (t.final_response, t.media_ready) {
            (Some(f), Some(m)) if direction == CallDirection::Inbound => {
                ms(Some(f.saturating_sub(m)))
            }
            _ => serde_json::Value::Null,
        };
        let stats = entry.stats.as_ref().map(|s| {
            json!({
                "packets_out": s.packets_out, "packets_in": s.packets_in, "bytes_out": s.bytes_out,
                "bytes_in": s.bytes_in, "silence_out": s.silence_out, "dtmf_out": s.dtmf_out,
                "srtp_rejected": s.srtp_rejected, "lost": s.lost, "jitter_us": s.jitter_us, "rtt_us": s.rtt_us,
            })
        });
        let inbound = direction == CallDirection::Inbound;
        self.events.emit(json!({
            "event": "call.ended",
            "call": entry.id,
            "direction": direction_name(direction),
            "from": if inbound { &entry.remote } else { &entry.number },
            "to": if inbound { &entry.number } else { &entry.remote },
            "by": ending.by.name(),
            "status": ending.status,
            "reason": ending.reason,
            "sip_reason": ending.sip_reason,
            "media_failure": ending.media_failure.as_ref().map(|f| f.to_string()),
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
            .filter(|o| o.addr == addr && o.conn.is_some_and(|c| self.connections.is_live(c)))
            .and_then(|o| o.conn);
        let peer = Peer {
            transport: Transport::Tls,
            addr,
            conn,
        };
        self.connections.name_hop(addr, server_name);
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
                    .is_none_or(|e| e.leg.is_ended())
                {
                    return;
                }
                match self.layer.send_request(now, r, peer) {
                    Ok(id) => {
                        self.calls.by_transaction.insert(id, key);
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.leg.request_sent(&method, id);
                        }
                    }
                    Err(err) => {
                        tracing::warn!("call {key}: {method}: {err}");
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.leg.handle_send_failure(&method, &err.to_string());
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
                let found = self.find(&call);
                let r = match found.and_then(|k| self.calls.entries.get_mut(&k)) {
                    None => Err(format!("no call {call}")),
                    Some(e) if !e.leg.is_ringing() => Err(format!("{call} is not ringing")),
                    Some(e) if e.leg.is_answering() => {
                        Err(format!("{call} is being answered already"))
                    }
                    Some(e) => {
                        if let Some(sink) = sink {
                            e.sink = sink;
                        }
                        e.leg.answer().map_err(|e| e.to_string())
                    }
                };
                if let Some(key) = found {
                    self.pump(key);
                }
                let _ = reply.send(r);
            }
            Command::HangUp { call, reply } => {
                let r = match self.find(&call) {
                    None => Err(format!("no call {call}")),
                    Some(key) => {
                        if let Some(e) = self.calls.entries.get_mut(&key) {
                            e.leg.hang_up("hung up by the application", 16);
                        }
                        self.pump(key);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::Dtmf { call, keys, reply } => {
                let found = self.find(&call);
                let r = match found.and_then(|k| self.calls.entries.get_mut(&k)) {
                    None => Err(format!("no call {call}")),
                    Some(e) if !e.leg.is_answered() || e.media.is_none() => {
                        Err(format!("{call} has no media up"))
                    }
                    Some(e) => e.leg.send_dtmf(&keys).map_err(|e| e.to_string()),
                };
                if let Some(key) = found {
                    self.pump(key);
                }
                let _ = reply.send(r);
            }
            Command::List { reply } => {
                let calls: Vec<serde_json::Value> = self
                    .calls
                    .entries
                    .values()
                    .map(|e| {
                        json!({
                            "call": e.id, "direction": direction_name(e.leg.direction()), "state": e.leg.state_name(),
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

    /// A business-initiated call: its leg asks for media first (our offer needs its candidates),
    /// then sends the INVITE.
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
        let setup = self.leg_setup(from, number.srtp);
        let leg = Leg::outgoing(
            OutboundCall {
                from_number: from.into(),
                hostname: self.cfg.hostname.clone(),
                to_user: to.into(),
                domain: self.cfg.calls.meta_domain.clone(),
                password: number.password.clone(),
            },
            setup,
            &mut self.rng,
        )
        .map_err(|e| e.to_string())?;
        let key = self.new_key();
        let name = format!(
            "c{key}-{}",
            &watrunk_sip::dialog::new_tag(&mut self.rng)[..6]
        );
        self.calls
            .by_sip_call_id
            .insert(leg.call_id().to_string(), key);
        self.calls.entries.insert(
            key,
            Box::new(Entry {
                leg,
                id: name.clone(),
                number: from.into(),
                remote: to.into(),
                sink: sink.unwrap_or(number.sink),
                meta: MetaHeaders::default(),
                media: None,
                origin: None,
                timings: Timings {
                    start: Some(Instant::now()),
                    ..Timings::default()
                },
                stats: None,
                ended: None,
                local_rtp: None,
                ssrc: 0,
                answered: false,
            }),
        );
        self.calls.by_name.insert(name.clone(), key);
        self.events.emit(json!({
            "event": "call.outgoing", "call": name, "direction": "outbound", "from": from, "to": to,
        }));
        self.pump(key);
        Ok(name)
    }
}

fn direction_name(d: CallDirection) -> &'static str {
    match d {
        CallDirection::Inbound => "inbound",
        CallDirection::Outbound => "outbound",
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

/// What a call's media set-up needs from the core.
struct MediaSetUp {
    cfg: MediaConfig,
    identity: Identity,
    role: IceRole,
    socket: Arc<MediaSocket>,
    security: Security,
    /// Seeds the generator of this call's ICE credentials, SSRC and SDES key.
    seed: u64,
}

/// Prepares the call's media, tells the core our local description, and starts the session when
/// the core says so; `None` when the call ended first (the core has been told).
async fn set_up_media(
    key: CallKey,
    set_up: MediaSetUp,
    mut commands: mpsc::Receiver<MediaCmd>,
    core: mpsc::Sender<CallInput>,
) -> Option<(MediaSession, mpsc::Receiver<MediaCmd>)> {
    let MediaSetUp {
        cfg,
        identity,
        role,
        socket,
        security,
        seed,
    } = set_up;
    let prepared = match Box::pin(Prepared::new(cfg, identity, role, &socket)).await {
        Ok(p) => p,
        Err(e) => {
            let _ = core
                .send(CallInput::MediaReady {
                    key,
                    result: Err(e),
                })
                .await;
            let _ = core.send(CallInput::MediaStopped { key }).await;
            return None;
        }
    };
    let local = prepared.local_media(
        &Capabilities::whatsapp(security),
        &mut StdRng::seed_from_u64(seed),
    );
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
