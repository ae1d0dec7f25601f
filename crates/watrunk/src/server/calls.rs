//! The core's calls: what moves between each call's [`Leg`] (the invite session: dialog,
//! offer/answer, media intents), the transaction layer, its media task and the events. An INVITE
//! to a business number becomes a leg, whose offer is agreed before any port or task is taken (a
//! refused offer gets its 488 and no call); the leg's outputs are carried out in `pump`. The
//! registry is `registry.rs`, media tasks `media_task.rs`, next hops `hops.rs`, the API's
//! commands `commands.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use watrunk_call::{
    Bridge, BridgeOutput, CallDirection, CallEvent, CallOutput, Leg, LegId, LegPolicy, LegSetup,
    Local, MediaIntent, MetaHeaders,
};
use watrunk_media::{IceConnected, MediaError, MediaEvent};
use watrunk_sdp::{Capabilities, Security};
use watrunk_sip::transaction::{Peer, TransactionId};
use watrunk_sip::{Message, Method, Request, Response, Uri};

use super::commands::Command;
use super::media_task::{media_failure, MediaCmd, Ready};
use super::registry::{CallKey, Entry, Parties, Session};
use super::{reply, Core, SERVER};
use crate::config::{NumberConfig, Srtp};

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
        leg: LegId,
        message: Message,
        to: Result<SocketAddr, String>,
        server_name: String,
    },
    Command(Command),
}

pub(super) fn ms(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| {
        json!((d.as_secs_f64() * 10_000.0).round() / 10.0)
    })
}

fn user_of(uri: &Uri) -> Option<String> {
    uri.user_base().map(str::to_string)
}

impl Core {
    /// The WhatsApp leg's configuration for one of our numbers.
    pub(super) fn leg_setup(&self, number: &str, srtp: Srtp) -> LegSetup {
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

    /// Why a new INVITE cannot become a call whatever it asks (no media address; a Call-ID we
    /// have already: a loop), as its final response.
    pub(super) fn cannot_take(&self, req: &Request, to_tag: &str) -> Option<Response> {
        if self.media.is_none() {
            return Some(reply(
                req,
                503,
                "Service Unavailable (no media address: --media-ip)",
                to_tag,
            ));
        }
        let call_id = req.call_id().unwrap_or_default();
        self.calls.by_sip_call_id(call_id).map(|_| {
            reply(
                req,
                482,
                "Loop Detected (a call with this Call-ID exists)",
                to_tag,
            )
        })
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
        if let Some(refusal) = self.cannot_take(req, to_tag) {
            return Some(refusal);
        }
        // The offer is agreed before any port or task is taken; a refusal makes no call.
        let setup = self.leg_setup(&number.number, number.srtp);
        let leg = match Leg::incoming(Instant::now(), req.clone(), id, setup, &mut self.rng) {
            Ok(leg) => leg,
            Err(refusal) => return Some(refusal),
        };
        let remote = req.from().and_then(|f| user_of(&f.uri)).unwrap_or_default();
        let trunk = self.pbx_for(&number.number);
        let session = match trunk.and_then(|t| self.cfg.calls.pbxs.get(t).cloned()) {
            None => Session::Single(leg),
            Some(pbx) => {
                let call = self.pbx_call(&pbx, &remote, &number.number);
                let setup = self.pbx_setup(&pbx, &number.number);
                match Bridge::inbound(leg, call, setup, &mut self.rng) {
                    Ok(mut bridge) => {
                        bridge.ring_until(Instant::now() + pbx.ring_timeout);
                        Session::Bridged(Box::new(bridge))
                    }
                    Err(e) => {
                        tracing::warn!("the PBX leg cannot start: {e}");
                        return Some(reply(
                            req,
                            500,
                            "Server Internal Error (the PBX target is unusable)",
                            to_tag,
                        ));
                    }
                }
            }
        };
        let key = self.calls.new_key();
        let name = format!(
            "c{key}-{}",
            &watrunk_sip::dialog::new_tag(&mut self.rng)[..6]
        );
        let meta = MetaHeaders::of(req);
        let pbx_call_id = match &session {
            Session::Bridged(b) => Some(b.leg(LegId::Pbx).call_id().to_string()),
            Session::Single(_) => None,
        };
        let mut entry = Entry::new(
            session,
            name.clone(),
            Parties {
                number: number.number.clone(),
                remote: remote.clone(),
                sink: number.sink,
                sink_audio: number.sink_audio,
                meta: meta.clone(),
                origin: Some(from.clone()),
            },
        );
        entry.pbx = trunk.unwrap_or(0);
        self.calls
            .insert(key, req.call_id().unwrap_or_default(), entry);
        self.calls.index_transaction(id, key);
        if let Some(pbx_call_id) = &pbx_call_id {
            self.calls.index_call_id(pbx_call_id, key, LegId::Pbx);
        }
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
        // Otherwise the API answers; media is prepared then, for the sink it may choose. A
        // bridged call is answered when the PBX answers.
        if self.cfg.calls.auto_answer && pbx_call_id.is_none() {
            if let Some(e) = self.calls.get_mut(key) {
                let _ = e.leg.whatsapp().answer();
            }
        }
        self.pump(key);
        None
    }

    pub(super) fn on_call_input(&mut self, input: CallInput) {
        match input {
            CallInput::MediaReady { key, result } => self.media_ready(key, result),
            CallInput::Media { key, event } => self.media_event(key, event),
            CallInput::MediaStopped { key } => {
                if let Some(e) = self.calls.get_mut(key) {
                    e.media = None;
                }
                self.finish(key);
            }
            CallInput::Resolved {
                key,
                leg,
                message,
                to,
                server_name,
            } => match to {
                Ok(addr) => self.send_to_hop(key, leg, message, addr, server_name),
                Err(reason) => {
                    tracing::warn!("call {key}: {reason}");
                    if let (Some(e), Message::Request(r)) = (self.calls.get_mut(key), &message) {
                        e.leg.leg_mut(leg).handle_send_failure(&r.method, &reason);
                    }
                    self.pump(key);
                }
            },
            CallInput::Command(c) => self.command(c),
        }
    }

    fn media_ready(&mut self, key: CallKey, result: Result<Ready, MediaError>) {
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        entry.timings.media_ready = entry.timings.start.map(|s| s.elapsed());
        match result {
            Err(e) => {
                tracing::warn!("call {}: media: {e}", entry.id);
                entry.leg.whatsapp().media_failed(media_failure(&e));
            }
            Ok(ready) => {
                entry.local_rtp = Some(ready.app_addr);
                entry.ssrc = ready.local.ssrc;
                entry.leg.whatsapp().media_ready(ready.local);
            }
        }
        self.pump(key);
    }

    fn media_event(&mut self, key: CallKey, event: MediaEvent) {
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let _span = entry.span.clone().entered();
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
                    "sink": entry.sink.addr.to_string(), "sink_codec": sink_codec_name(entry.sink.audio),
                    "sink_srtp": entry.sink.keys.map(|k| k.suite.name()), "ssrc": entry.ssrc, "srtp": profile, "ms": ms(Some(elapsed)),
                }));
            }
            MediaEvent::FirstRtpOut { elapsed } => entry.timings.first_rtp_out = Some(elapsed),
            MediaEvent::FirstRtpIn { elapsed } => entry.timings.first_rtp_in = Some(elapsed),
            MediaEvent::Stats(s) => entry.stats = Some(*s),
            MediaEvent::SinkQuiet(quiet) => {
                if let Session::Bridged(bridge) = &mut entry.leg {
                    if bridge.pbx_media_timeout(quiet) {
                        tracing::info!(
                            "call {}: the PBX sent no RTP for {} s: ending the call",
                            entry.id,
                            quiet.as_secs()
                        );
                        self.pump(key);
                    }
                }
            }
            MediaEvent::DtmfReceived {
                key: digit,
                duration,
            } => {
                self.events.emit(json!({
                    "event": "dtmf.received", "call": entry.id, "digit": digit.to_string(),
                    "duration_ms": duration.as_millis() as u64,
                }));
            }
            MediaEvent::SinkLatched { announced, source } => {
                tracing::info!(
                    "call {}: the sink's RTP comes from {source}, not {announced}: sent there",
                    entry.id
                );
                self.events.emit(json!({
                    "event": "media.latched", "call": entry.id,
                    "announced": announced.to_string(), "source": source.to_string(),
                }));
            }
            MediaEvent::Failed(e) => {
                tracing::info!("call {}: media failed: {e}", entry.id);
                entry.leg.whatsapp().media_failed(media_failure(&e));
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
        let (key, leg) = self.calls.leg_of_call_id(req.call_id()?)?;
        let entry = self.calls.get_mut(key)?;
        entry.leg.leg_mut(leg).handle_request(id, req);
        self.pump_later.push(key);
        Some(None)
    }

    pub(super) fn on_ack(&mut self, req: &Request) {
        let Some((key, leg)) = req.call_id().and_then(|c| self.calls.leg_of_call_id(c)) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(key) {
            e.leg.leg_mut(leg).handle_ack(Instant::now(), req);
        }
        self.pump(key);
    }

    pub(super) fn on_cancelled(&mut self, req: &Request) {
        let Some((key, leg)) = req.call_id().and_then(|c| self.calls.leg_of_call_id(c)) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(key) {
            e.leg.leg_mut(leg).handle_cancel(req);
        }
        self.pump(key);
    }

    pub(super) fn on_response(&mut self, id: TransactionId, resp: &Response) {
        let Some((key, leg)) = self.calls.leg_of_transaction(id) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(key) {
            let leg = e.leg.leg_mut(leg);
            let calling = leg.is_calling();
            leg.handle_response(Instant::now(), id, resp);
            if resp.status >= 200
                && e.timings.final_response.is_none()
                && calling
                && !matches!(e.leg, Session::Bridged(_))
            {
                e.timings.final_response = e.timings.start.map(|s| s.elapsed());
            }
        }
        self.pump(key);
    }

    /// A transaction of a call timed out: a missing ACK (server INVITE) or no answer (client).
    pub(super) fn on_timeout(&mut self, id: TransactionId, no_ack: bool) {
        let Some((key, leg)) = self.calls.leg_of_transaction(id) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(key) {
            let leg = e.leg.leg_mut(leg);
            if no_ack {
                leg.handle_ack_timeout();
            } else {
                leg.handle_request_timeout(id);
            }
        }
        self.pump(key);
    }

    /// A request of a call could not be sent at all (its connection failed): the leg hears why.
    pub(super) fn on_send_failure(&mut self, id: TransactionId, method: &Method, reason: &str) {
        let Some((key, leg)) = self.calls.leg_of_transaction(id) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(key) {
            e.leg.leg_mut(leg).handle_send_failure(method, reason);
        }
        self.pump(key);
    }

    pub(super) fn pump_pending(&mut self) {
        for key in std::mem::take(&mut self.pump_later) {
            self.pump(key);
        }
    }

    /// Bridged calls whose timer is due.
    pub(super) fn call_timeouts(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.call_timers.first() {
            if at > now {
                break;
            }
            self.call_timers.remove(&(at, key));
            if let Some(e) = self.calls.get_mut(key) {
                e.timer = None;
                e.leg.handle_timeout(now);
            }
            self.pump(key);
        }
    }

    /// Keeps the core's timer for `key` where the call's session wants it.
    fn reschedule(&mut self, key: CallKey) {
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let wanted = entry.leg.poll_timeout();
        if wanted == entry.timer {
            return;
        }
        if let Some(old) = entry.timer.take() {
            self.call_timers.remove(&(old, key));
        }
        if let Some(at) = wanted {
            entry.timer = Some(at);
            self.call_timers.insert((at, key));
        }
    }

    /// Carries out what a call's leg asked for.
    pub(super) fn pump(&mut self, key: CallKey) {
        let now = Instant::now();
        let _span = self.calls.get(key).map(|e| e.span.clone().entered());
        loop {
            let Some(entry) = self.calls.get_mut(key) else {
                return;
            };
            let Some(out) = entry.leg.poll_output() else {
                break;
            };
            let (leg, out) = match out {
                BridgeOutput::Leg(leg, out) => (leg, out),
                BridgeOutput::Connect(plan) => {
                    super::pbx::connect_to_pbx(entry, &plan);
                    continue;
                }
                BridgeOutput::Transfer(target) => {
                    self.transfer(key, &target);
                    continue;
                }
                BridgeOutput::Ringback(plan) => {
                    super::pbx::play_ringback(entry, &plan, &self.cfg.calls.pbxs, &mut self.rng);
                    continue;
                }
                BridgeOutput::Promoted(call_id) => {
                    self.calls.promote(&call_id, key);
                    continue;
                }
            };
            match out {
                CallOutput::Respond {
                    transaction,
                    response,
                } => {
                    if response.status == 200
                        && leg == LegId::WhatsApp
                        && entry.timings.final_response.is_none()
                    {
                        entry.timings.final_response = entry.timings.start.map(|s| s.elapsed());
                    }
                    if let Err(e) = self.layer.respond(now, transaction, response) {
                        tracing::debug!("call {key}: respond: {e}");
                    }
                }
                CallOutput::Send(request) => self.route(key, leg, Message::Request(request)),
                CallOutput::Ack(ack) => self.route(key, leg, Message::Request(ack)),
                CallOutput::Cancel { invite } => match self.layer.cancel(now, invite) {
                    Ok(id) => {
                        self.calls.index_leg_transaction(id, key, leg);
                    }
                    Err(e) => tracing::debug!("call {key}: cancel: {e}"),
                },
                CallOutput::Media(intent) if leg != LegId::WhatsApp => {
                    self.pbx_media(key, leg, intent)
                }
                CallOutput::Media(intent) => self.media_intent(key, intent),
                CallOutput::Event(ev) if leg != LegId::WhatsApp => self.pbx_event(key, ev),
                CallOutput::Event(ev) => self.call_event(key, ev),
            }
        }
        self.reschedule(key);
    }

    fn media_intent(&mut self, key: CallKey, intent: MediaIntent) {
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        let command = match intent {
            MediaIntent::Prepare { security, ice_role } => {
                self.start_media(key, ice_role, security);
                return;
            }
            MediaIntent::Start { plan, ssrc } => {
                // The call's own audio takes over from our ring tone.
                entry.ringback = None;
                MediaCmd::Start { plan, ssrc }
            }
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
        let Some(entry) = self.calls.get_mut(key) else {
            return;
        };
        match ev {
            CallEvent::Ringing => self
                .events
                .emit(json!({"event": "call.ringing", "call": entry.id})),
            CallEvent::Answered => {
                entry.answered = true;
                self.events.emit(json!({
                "event": "call.answered", "call": entry.id, "direction": direction_name(entry.leg.leg(LegId::WhatsApp).direction()),
                "local_rtp": entry.local_rtp.map(|a| a.to_string()), "sink": entry.sink.addr.to_string(),
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
            // The WhatsApp leg takes no INFO or REFER.
            CallEvent::Dtmf(_) | CallEvent::Refer(_) => {}
            CallEvent::Ended(ending) => {
                entry.ended = Some(ending);
                if entry.media.is_none() {
                    self.finish(key);
                }
            }
        }
    }

    /// Reports `call.ended` and forgets the call once its signalling (both legs, when bridged)
    /// and its media are done.
    pub(super) fn finish(&mut self, key: CallKey) {
        let done = self
            .calls
            .get(key)
            .is_some_and(|e| e.ended.is_some() && e.media.is_none() && e.leg.is_ended());
        if !done {
            return;
        }
        let Some(entry) = self.calls.remove(key) else {
            return;
        };
        let Some(ending) = entry.ended.clone() else {
            return;
        };
        let direction = entry.leg.leg(LegId::WhatsApp).direction();
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
                "reordered": s.reordered, "reorder_max_us": s.reorder_max_us, "reorder_late": s.reorder_late,
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
            "q850_cause": ending.q850_cause,
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
                "calls": self.calls.len(),
                "media_routes": self.media.as_ref().map(|m| m.socket.usage().0),
                "media_conns": self.media.as_ref().map(|m| m.socket.usage().1),
            },
        }));
        if let Some(done) = self.call_done.take_if(|(name, _)| *name == entry.id) {
            let _ = done.1.send(());
        }
    }
}

pub(super) fn direction_name(d: CallDirection) -> &'static str {
    match d {
        CallDirection::Inbound => "inbound",
        CallDirection::Outbound => "outbound",
    }
}

/// The sink's codec as `--sink-codec` names it.
fn sink_codec_name(audio: watrunk_media::SinkAudio) -> &'static str {
    match audio {
        watrunk_media::SinkAudio::Opus => "opus",
        watrunk_media::SinkAudio::G711(watrunk_media::Law::Mu) => "pcmu",
        watrunk_media::SinkAudio::G711(watrunk_media::Law::A) => "pcma",
        watrunk_media::SinkAudio::G722 => "g722",
    }
}
