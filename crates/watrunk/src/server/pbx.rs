//! The PBX side of bridged calls: the PBX leg's configuration and INVITE, its local description
//! (the plain side of the call's media), its events, where the call's media meets the PBX, and
//! calls the PBX places to WhatsApp users.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use watrunk_call::{
    Bridge, CallEvent, Leg, LegId, LegPolicy, LegSetup, Local, MediaIntent, MetaHeaders,
    OutboundCall, Registration, RegistrationEvent, RegistrationSetup,
};
use watrunk_media::{Law, Sink, SinkAudio, SinkKeys, SinkPayloads};
use watrunk_sdp::{Capabilities, Codec, Keying, LocalMedia, MediaPlan};
use watrunk_sip::transaction::{Peer, TransactionId, Transport};
use watrunk_sip::{Request, Response};

use super::media_task::MediaCmd;
use super::registry::{CallKey, Entry, Parties, Session};
use super::{reply, Core, SERVER};
use crate::config::PbxTarget;

/// The PBX answered, offered or re-negotiated: the call's media talks to its RTP address in the
/// codec, payload types and SDES keys agreed with it; a running relay follows a move
/// (`direct_media`), a codec change or new keys. A hold or resume changes none of it (the relay
/// keeps sending both ways, so that neither side's RTP timeout fires), nor does an unspecified
/// address (an RFC 2543 hold).
pub(super) fn connect_to_pbx(entry: &mut Entry, plan: &MediaPlan) {
    let addr = plan
        .remote_rtp
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
        .unwrap_or(entry.sink.addr);
    let audio = sink_audio(plan.codec);
    let payloads = SinkPayloads {
        audio: plan.audio_pt,
        dtmf: plan.dtmf_pt.unwrap_or(SinkPayloads::default().dtmf),
        dtmf_clock: plan.dtmf_clock,
    };
    let keys = match &plan.keying {
        Keying::Sdes {
            suite,
            local_key,
            remote_key,
            ..
        } => SinkKeys::sdes(*suite, local_key, remote_key),
        _ => None,
    };
    let change = Sink {
        addr,
        audio,
        payloads,
        keys,
    };
    if change == entry.sink {
        return;
    }
    if let Some(media) = &entry.media {
        tracing::info!(
            "call {}: the PBX's media is now {addr} ({audio:?}, PT {}/{}{})",
            entry.id,
            payloads.audio,
            payloads.dtmf,
            keys.map(|k| format!(", SRTP {}", k.suite.name()))
                .unwrap_or_default()
        );
        if media
            .try_send(MediaCmd::Retarget(Box::new(change)))
            .is_err()
        {
            tracing::warn!("call {}: the media task took no new target", entry.id);
        }
    }
    entry.sink = change;
}

/// What the relay speaks toward a PBX that agreed `codec`.
fn sink_audio(codec: Codec) -> SinkAudio {
    match codec {
        Codec::Pcmu => SinkAudio::G711(Law::Mu),
        Codec::Pcma => SinkAudio::G711(Law::A),
        Codec::G722 => SinkAudio::G722,
        Codec::Opus | Codec::TelephoneEvent => SinkAudio::Opus,
    }
}

/// Meta rings for the PBX's call and its trunk wants our ring tone (`ringback`): it plays from the
/// call's local RTP port to the PBX's, in the codec our 183 agreed, until the call's media starts.
pub(super) fn play_ringback(
    entry: &mut Entry,
    plan: &MediaPlan,
    pbxs: &[PbxTarget],
    rng: &mut impl rand::RngCore,
) {
    let (Some(tone), Some(socket), Some(to)) = (
        pbxs.get(entry.pbx).and_then(|p| p.ringback),
        entry.plain_socket.as_ref(),
        plan.remote_rtp.filter(|a| !a.ip().is_unspecified()),
    ) else {
        return;
    };
    let audio = sink_audio(plan.codec);
    match watrunk_media::ringback::ringback(socket, to, audio, plan.audio_pt, tone, rng.next_u64())
    {
        Ok(ringback) => {
            tracing::info!("call {}: ringback toward the PBX at {to}", entry.id);
            entry.ringback = Some(ringback);
        }
        Err(e) => tracing::warn!("call {}: {e}", entry.id),
    }
}

impl Core {
    /// The PBX leg's configuration toward `pbx` for one of our numbers: plain RTP, our codecs,
    /// in-dialog offer/answer (hold, refreshes) answered on this leg only.
    pub(super) fn pbx_setup(&self, pbx: &PbxTarget, number: &str) -> LegSetup {
        let us = self.reached_by_pbx_at(pbx);
        let transport = transport_param(pbx.transport);
        LegSetup {
            local: Local {
                contact: format!("<sip:{number}@{us};transport={transport}>"),
                user_agent: SERVER.to_string(),
                warning_host: self.cfg.hostname.clone(),
            },
            capabilities: Capabilities::pbx(pbx.security, pbx.codecs.clone()),
            policy: LegPolicy::generic(),
        }
    }

    /// Where the PBX reaches us over its transport: that listener's address (TLS: our name).
    fn reached_by_pbx_at(&self, pbx: &PbxTarget) -> String {
        let listener = match pbx.transport {
            Transport::Udp => self.cfg.udp,
            Transport::Tcp => self.cfg.tcp,
            Transport::Tls => None,
        };
        match (pbx.transport, listener) {
            (Transport::Tls, _) => match self.cfg.tls.map(|a| a.port()) {
                Some(5061) | None => self.cfg.hostname.clone(),
                Some(port) => format!("{}:{port}", self.cfg.hostname),
            },
            (_, Some(addr)) => super::udp_hostport(&self.cfg.hostname, addr),
            (_, None) => self.cfg.hostname.clone(),
        }
    }

    /// The PBX trunk a business number's calls are bridged to: the one that names it, else the
    /// one that names no number (None: its calls go to its sink, not bridged).
    pub(super) fn pbx_for(&self, number: &str) -> Option<usize> {
        let pbxs = &self.cfg.calls.pbxs;
        pbxs.iter()
            .position(|p| p.numbers.iter().any(|n| n == number))
            .or_else(|| pbxs.iter().position(|p| p.numbers.is_empty()))
    }

    /// watrunk's registrations at the PBXs as a trunk (`--pbx-register`, `register = true`),
    /// with the trunk of each.
    pub(super) fn pbx_registrations(&mut self) -> Vec<(usize, Registration)> {
        let first_number = self
            .cfg
            .calls
            .numbers
            .keys()
            .next()
            .map(|n| n.trim_start_matches('+').to_string())
            .unwrap_or_else(|| "watrunk".into());
        let pbxs = self.cfg.calls.pbxs.clone();
        pbxs.iter()
            .enumerate()
            .filter(|(_, pbx)| pbx.register)
            .map(|(trunk, pbx)| {
                let user = pbx.username.clone().unwrap_or_else(|| first_number.clone());
                let us = self.reached_by_pbx_at(pbx);
                let transport = transport_param(pbx.transport);
                let setup = RegistrationSetup {
                    registrar: pbx.hostport.clone(),
                    transport: transport.into(),
                    contact: format!("<sip:{user}@{us};transport={transport}>"),
                    user,
                    expires: 300,
                    password: pbx.password.clone(),
                    user_agent: SERVER.to_string(),
                };
                (
                    trunk,
                    Registration::new(setup, Instant::now(), &mut self.rng),
                )
            })
            .collect()
    }

    /// The registration whose transaction `id` is.
    pub(super) fn registration_of(&mut self, id: TransactionId) -> Option<&mut Registration> {
        self.registrations
            .iter_mut()
            .map(|(_, r)| r)
            .find(|r| r.owns(id))
    }

    /// Sends what the registrations ask and reports what became of them.
    pub(super) fn pump_registrations(&mut self) {
        for i in 0..self.registrations.len() {
            self.pump_registration(i);
        }
    }

    fn pump_registration(&mut self, i: usize) {
        let Some(pbx) = self
            .registrations
            .get(i)
            .and_then(|(trunk, _)| self.cfg.calls.pbxs.get(*trunk))
            .cloned()
        else {
            return;
        };
        let now = Instant::now();
        while let Some(req) = self.registrations[i].1.poll_request() {
            let Some(ip) = pbx.sources.first() else {
                tracing::warn!("REGISTER: the PBX {} has no address", pbx.host);
                break;
            };
            let addr = SocketAddr::new(*ip, pbx.port);
            self.connections.name_hop(addr, pbx.host.clone());
            let peer = Peer {
                transport: pbx.transport,
                addr,
                conn: None,
            };
            match self.layer.send_request(now, req, peer) {
                Ok(id) => self.registrations[i].1.request_sent(id),
                Err(e) => tracing::warn!("REGISTER: {e}"),
            }
        }
        while let Some(event) = self.registrations[i].1.poll_event() {
            match event {
                RegistrationEvent::Registered(granted) => {
                    tracing::info!(
                        "registered at the PBX {} for {} s",
                        pbx.hostport,
                        granted.as_secs()
                    );
                    self.events.emit(json!({"event": "pbx.registered", "registrar": pbx.hostport, "expires": granted.as_secs()}));
                }
                RegistrationEvent::Failed(status, reason) => {
                    tracing::warn!("registration at the PBX {}: {reason}", pbx.hostport);
                    self.events.emit(json!({"event": "pbx.registration_failed", "registrar": pbx.hostport, "status": status, "reason": reason}));
                }
            }
        }
    }

    /// The PBX leg's INVITE: the business number at the PBX, from the WhatsApp caller.
    pub(super) fn pbx_call(&self, pbx: &PbxTarget, caller: &str, number: &str) -> OutboundCall {
        OutboundCall {
            from_number: caller.to_string(),
            hostname: self.cfg.hostname.clone(),
            to_user: number.to_string(),
            domain: pbx.hostport.clone(),
            transport: transport_param(pbx.transport).into(),
            password: pbx.password.clone(),
            username: pbx.username.clone(),
            asserted_identity: pbx.asserted_identity,
        }
    }

    /// The PBX leg asks for its local description (the plain side of the call's media, bound
    /// now so that the offer can name it); its other intents are the bridge's.
    pub(super) fn pbx_media(&mut self, key: CallKey, leg: LegId, intent: MediaIntent) {
        let MediaIntent::Prepare { .. } = intent else {
            return;
        };
        if leg == LegId::Transfer {
            self.transfer_media(key);
            return;
        }
        let trunk = self.calls.get(key).map_or(0, |e| e.pbx);
        let bound = self.bind_plain_side(trunk);
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        match bound {
            Ok(PlainSide {
                local,
                addr,
                socket,
            }) => {
                entry.local_rtp = Some(addr);
                entry.plain_socket = Some(socket);
                entry.leg.leg_mut(LegId::Pbx).media_ready(local);
            }
            Err(e) => {
                tracing::warn!("call {}: {e}", entry.id);
                entry
                    .leg
                    .leg_mut(LegId::Pbx)
                    .media_failed(watrunk_call::MediaFailure {
                        fault: watrunk_call::Fault::Local,
                        detail: e,
                    });
            }
        }
        self.pump(key);
    }

    /// Binds a call's local RTP port toward the PBX (the WhatsApp leg's media uses it as its
    /// plain side), and the PBX leg's local description announcing it.
    fn bind_plain_side(&mut self, trunk: usize) -> Result<PlainSide, String> {
        let (Some(media), Some(pbx)) = (self.media.as_ref(), self.cfg.calls.pbxs.get(trunk)) else {
            return Err("no media address (--media-ip) or PBX".into());
        };
        let caps = Capabilities::pbx(pbx.security, pbx.codecs.clone());
        let (addr, socket) = std::net::UdpSocket::bind(SocketAddr::new(media.ip, 0))
            .and_then(|s| Ok((s.local_addr()?, s)))
            .map_err(|e| format!("no local RTP port for the PBX: {e}"))?;
        let announced = SocketAddr::new(media.public_ip.unwrap_or(addr.ip()), addr.port());
        let local = LocalMedia::for_capabilities(&caps, &mut self.rng).with_candidates([announced]);
        Ok(PlainSide {
            local,
            addr,
            socket: Arc::new(socket),
        })
    }

    /// What the PBX leg does, as events of the call.
    pub(super) fn pbx_event(&mut self, key: CallKey, ev: CallEvent) {
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        match ev {
            CallEvent::Ringing => self
                .events
                .emit(json!({"event": "pbx.ringing", "call": entry.id})),
            CallEvent::Answered => self
                .events
                .emit(json!({"event": "pbx.answered", "call": entry.id})),
            CallEvent::Dtmf(key) => self.events.emit(
                json!({"event": "pbx.dtmf", "call": entry.id, "key": key.to_string(), "by": "info"}),
            ),
            CallEvent::Ended(ending) => {
                self.events.emit(json!({
                    "event": "pbx.ended", "call": entry.id, "by": ending.by.name(),
                    "status": ending.status, "reason": ending.reason, "sip_reason": ending.sip_reason,
                }));
                self.finish(key);
            }
            _ => {}
        }
    }
}

impl Core {
    /// A new INVITE from the PBX's address over the PBX's transport, to someone other than our
    /// business numbers (the PBX calls a WhatsApp user), or with Replaces (it takes over its
    /// own leg of a call). The source address is how the PBX authenticates to us; any other
    /// INVITE to a business number is Meta's, whatever its source.
    /// The trunk of the PBX it came from.
    pub(super) fn pbx_of(&self, req: &Request, from: &Peer) -> Option<usize> {
        if req.method != watrunk_sip::Method::INVITE {
            return None;
        }
        let called = req.uri.as_sip().and_then(|u| u.user_base()).unwrap_or("");
        let ours = self.cfg.calls.numbers.contains_key(called);
        if ours && req.headers.get("Replaces").is_none() {
            return None;
        }
        self.cfg.calls.pbxs.iter().position(|pbx| {
            from.transport == pbx.transport && pbx.sources.contains(&from.addr.ip().to_canonical())
        })
    }

    /// The PBX's INVITE with Replaces (RFC 3891): a phone at the PBX takes over the PBX leg of
    /// one of our calls (an attended transfer completed at the PBX). It is answered at once, the
    /// call's media moves to it and the replaced leg gets a BYE; Meta hears nothing. A dialog we
    /// do not have, or not up on both legs, is 481; `early-only` against an answered call 486.
    fn pbx_replaces(
        &mut self,
        id: TransactionId,
        req: &Request,
        to_tag: &str,
        replaces: &str,
        trunk: usize,
    ) -> Option<Response> {
        let pbx = self.cfg.calls.pbxs.get(trunk)?.clone();
        let Some((dialog, early_only)) = replaces_dialog(replaces) else {
            return Some(reply(
                req,
                400,
                "Bad Request (Replaces names no dialog: call-id;to-tag=..;from-tag=..)",
                to_tag,
            ));
        };
        let key = self
            .calls
            .leg_of_call_id(&dialog.call_id)
            .map(|(key, _)| key)
            .filter(|&key| {
                self.calls.get(key).is_some_and(|e| {
                    e.pbx == trunk
                        && matches!(&e.leg, Session::Bridged(bridge) if bridge.replaceable(&dialog))
                })
            });
        let Some(key) = key else {
            return Some(reply(
                req,
                481,
                "Call/Transaction Does Not Exist (Replaces names no call of ours up on both legs)",
                to_tag,
            ));
        };
        if early_only {
            return Some(reply(
                req,
                486,
                "Busy Here (early-only, and the call is answered)",
                to_tag,
            ));
        }
        let number = self.calls.get(key).map(|e| e.number.clone())?;
        let leg = match Leg::incoming(
            Instant::now(),
            req.clone(),
            id,
            self.pbx_setup(&pbx, &number),
            &mut self.rng,
        ) {
            Ok(leg) => leg,
            Err(refusal) => return Some(refusal),
        };
        let entry = self.calls.get_mut(key)?;
        let Session::Bridged(bridge) = &mut entry.leg else {
            return Some(reply(req, 481, "Call/Transaction Does Not Exist", to_tag));
        };
        bridge.replace_pbx_side(leg);
        let name = entry.id.clone();
        self.calls
            .index_call_id(req.call_id().unwrap_or_default(), key, LegId::Transfer);
        self.calls.index_leg_transaction(id, key, LegId::Transfer);
        tracing::info!("call {name}: the PBX replaces its leg ({})", dialog.call_id);
        self.events.emit(json!({
            "event": "pbx.replaced", "call": name, "replaced": dialog.call_id,
        }));
        self.pump(key);
        None
    }

    /// The PBX calls the WhatsApp user in the Request-URI: a business-initiated call from the
    /// business number in From (else the first configured one), bridged to the PBX's dialog. The
    /// answer for the layer, or None when a call took the INVITE.
    pub(super) fn pbx_invite(
        &mut self,
        id: TransactionId,
        req: &Request,
        to_tag: &str,
        trunk: usize,
    ) -> Option<Response> {
        let Some(pbx) = self.cfg.calls.pbxs.get(trunk).cloned() else {
            return Some(reply(req, 403, "Forbidden", to_tag));
        };
        if let Some(refusal) = self.cannot_take(req, to_tag) {
            return Some(refusal);
        }
        if let Some(replaces) = req.headers.get("Replaces").map(str::to_string) {
            return self.pbx_replaces(id, req, to_tag, &replaces, trunk);
        }
        let user = req.uri.as_sip().and_then(|u| u.user_base()).unwrap_or("");
        let Some(to) = whatsapp_user(user) else {
            return Some(reply(
                req,
                404,
                &format!("Not Found ({user:?} is not a WhatsApp user's number)"),
                to_tag,
            ));
        };
        let caller = req
            .from()
            .and_then(|f| f.uri.user_base().map(str::to_string))
            .unwrap_or_default();
        let number = match self
            .cfg
            .calls
            .numbers
            .get(&caller)
            .or_else(|| self.cfg.calls.numbers.values().next())
        {
            Some(n) => n.clone(),
            None => {
                return Some(reply(
                    req,
                    503,
                    "Service Unavailable (no business number configured: --number)",
                    to_tag,
                ))
            }
        };
        let pbx_leg = match Leg::incoming(
            Instant::now(),
            req.clone(),
            id,
            self.pbx_setup(&pbx, &number.number),
            &mut self.rng,
        ) {
            Ok(leg) => leg,
            Err(refusal) => return Some(refusal),
        };
        // Without an offer, the PBX's media is known at its ACK (our offer goes in the 200).
        let offered_rtp = pbx_leg.offered_plan().and_then(|p| p.remote_rtp);
        let PlainSide {
            local,
            addr,
            socket,
        } = match self.bind_plain_side(trunk) {
            Ok(bound) => bound,
            Err(e) => {
                tracing::warn!("a call from the PBX: {e}");
                return Some(reply(
                    req,
                    500,
                    "Server Internal Error (no local RTP port)",
                    to_tag,
                ));
            }
        };
        let call = OutboundCall {
            from_number: number.number.clone(),
            hostname: self.cfg.hostname.clone(),
            to_user: to.clone(),
            domain: self.cfg.calls.meta_domain.clone(),
            transport: "tls".into(),
            password: number.password.clone(),
            username: None,
            asserted_identity: false,
        };
        let setup = self.leg_setup(&number.number, number.srtp);
        let bridge = match Bridge::outbound(pbx_leg, local, call, setup, &mut self.rng) {
            Ok(bridge) if pbx.ringback.is_some() => bridge.with_local_ringback(),
            Ok(bridge) => bridge,
            Err(e) => {
                tracing::warn!("a call from the PBX: the WhatsApp leg cannot start: {e}");
                return Some(reply(
                    req,
                    500,
                    "Server Internal Error (the WhatsApp leg cannot start)",
                    to_tag,
                ));
            }
        };
        let key = self.calls.new_key();
        let name = format!(
            "c{key}-{}",
            &watrunk_sip::dialog::new_tag(&mut self.rng)[..6]
        );
        let whatsapp_call_id = bridge.leg(LegId::WhatsApp).call_id().to_string();
        let mut entry = Entry::new(
            Session::Bridged(Box::new(bridge)),
            name.clone(),
            Parties {
                number: number.number.clone(),
                remote: to.clone(),
                sink: offered_rtp.unwrap_or(number.sink),
                sink_audio: number.sink_audio,
                meta: MetaHeaders::default(),
                origin: None,
            },
        );
        entry.local_rtp = Some(addr);
        entry.plain_socket = Some(socket);
        entry.pbx = trunk;
        self.calls.insert(key, &whatsapp_call_id, entry);
        self.calls
            .index_call_id(req.call_id().unwrap_or_default(), key, LegId::Pbx);
        self.calls.index_leg_transaction(id, key, LegId::Pbx);
        self.events.emit(json!({
            "event": "call.outgoing", "call": name, "direction": "outbound",
            "from": number.number, "to": to, "via": "pbx", "pbx_caller": caller,
        }));
        self.pump(key);
        None
    }
}

/// A Replaces header (RFC 3891 §6.1): the dialog it names as we know it (its to-tag is ours, its
/// from-tag the sender's), and whether only an early dialog may be replaced.
fn replaces_dialog(value: &str) -> Option<(watrunk_sip::dialog::DialogId, bool)> {
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
    let (mut local_tag, mut remote_tag, mut early_only) = (None, None, false);
    for part in parts {
        match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some((k, v)) if k.eq_ignore_ascii_case("to-tag") => local_tag = Some(v.to_string()),
            Some((k, v)) if k.eq_ignore_ascii_case("from-tag") => remote_tag = Some(v.to_string()),
            None if part.eq_ignore_ascii_case("early-only") => early_only = true,
            _ => {}
        }
    }
    let dialog = watrunk_sip::dialog::DialogId {
        call_id,
        local_tag: local_tag?,
        remote_tag: remote_tag?,
    };
    Some((dialog, early_only))
}

/// A header embedded in a SIP URI (`sip:202@pbx?Replaces=...`, RFC 3261 §19.1.1), unescaped.
fn uri_header(uri: &watrunk_sip::uri::SipUri, name: &str) -> Option<String> {
    uri.headers.as_deref()?.split('&').find_map(|h| {
        let (k, v) = h.split_once('=')?;
        k.eq_ignore_ascii_case(name)
            .then(|| String::from_utf8_lossy(&watrunk_sip::uri::unescape(v)).into_owned())
    })
}

/// The `transport` URI parameter of a transport.
fn transport_param(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

/// A call's local RTP port toward the PBX, and the PBX leg's local description naming it.
struct PlainSide {
    local: LocalMedia,
    addr: SocketAddr,
    socket: Arc<std::net::UdpSocket>,
}

/// A WhatsApp user's number as the PBX dials it: digits, optionally after `+` (E.164).
fn whatsapp_user(user: &str) -> Option<String> {
    let digits = user.strip_prefix('+').unwrap_or(user);
    (!digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| user.to_string())
}

impl Core {
    /// A transfer's leg asks for its local description: the call's plain side as it is (the
    /// WhatsApp leg's media keeps its port; only the PBX's end of it moves).
    fn transfer_media(&mut self, key: CallKey) {
        let trunk = self.calls.get(key).map_or(0, |e| e.pbx);
        let (Some(media), Some(pbx)) = (self.media.as_ref(), self.cfg.calls.pbxs.get(trunk)) else {
            return;
        };
        let caps = Capabilities::pbx(pbx.security, pbx.codecs.clone());
        let public_ip = media.public_ip;
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let Some(addr) = entry.local_rtp else {
            return;
        };
        let announced = SocketAddr::new(public_ip.unwrap_or(addr.ip()), addr.port());
        let local = LocalMedia::for_capabilities(&caps, &mut self.rng).with_candidates([announced]);
        entry.leg.leg_mut(LegId::Transfer).media_ready(local);
        self.pump(key);
    }

    /// The PBX's REFER asks for `target`: a new PBX leg toward it, from the WhatsApp party, if
    /// `target` is the PBX (a REFER elsewhere is refused: no toll fraud through us).
    pub(super) fn transfer(&mut self, key: CallKey, target: &watrunk_sip::Uri) {
        let trunk = self.calls.get(key).map_or(0, |e| e.pbx);
        let Some(pbx) = self.cfg.calls.pbxs.get(trunk).cloned() else {
            return;
        };
        let sip = target.as_sip();
        let host = sip.map(|u| u.host.to_string()).unwrap_or_default();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let at_the_pbx = host == pbx.host
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| pbx.sources.contains(&ip.to_canonical()));
        let user = sip
            .and_then(|u| u.user_base())
            .unwrap_or_default()
            .to_string();
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let Session::Bridged(bridge) = &mut entry.leg else {
            return;
        };
        if !at_the_pbx || user.is_empty() {
            tracing::info!(
                "call {}: a transfer to {target} refused: not the PBX",
                entry.id
            );
            bridge.refuse_transfer(403, "Forbidden (transfers go to the PBX only)");
            self.pump(key);
            return;
        }
        let port = sip.and_then(|u| u.port).unwrap_or(5060);
        let call = OutboundCall {
            from_number: entry.remote.clone(),
            hostname: self.cfg.hostname.clone(),
            to_user: user,
            domain: format!(
                "{}:{port}",
                sip.map(|u| u.host.to_string()).unwrap_or_default()
            ),
            transport: transport_param(pbx.transport).into(),
            password: pbx.password.clone(),
            username: pbx.username.clone(),
            asserted_identity: pbx.asserted_identity,
        };
        let number = entry.number.clone();
        let setup = self.pbx_setup(&pbx, &number);
        let leg = match Leg::outgoing(call, setup, &mut self.rng) {
            Ok(mut leg) => {
                // An attended transfer: the new call replaces the PBX's call to the target.
                if let Some(replaces) = sip.and_then(|u| uri_header(u, "Replaces")) {
                    leg.add_invite_header("Replaces", replaces);
                }
                leg
            }
            Err(e) => {
                tracing::warn!("a transfer to {target}: {e}");
                if let Some(Session::Bridged(bridge)) = self.calls.get_mut(key).map(|e| &mut e.leg)
                {
                    bridge.refuse_transfer(500, "Server Internal Error");
                }
                self.pump(key);
                return;
            }
        };
        let call_id = leg.call_id().to_string();
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        if let Session::Bridged(bridge) = &mut entry.leg {
            bridge.start_transfer(leg);
        }
        let id = entry.id.clone();
        self.calls.index_call_id(&call_id, key, LegId::Transfer);
        self.events
            .emit(json!({"event": "pbx.transfer", "call": id, "target": target.to_string()}));
        self.pump(key);
    }
}
