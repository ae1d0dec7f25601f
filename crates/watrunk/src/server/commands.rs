//! The control API's commands: place a call, answer, hang up, send DTMF, list calls. Each is
//! carried out on the core task and answered through its oneshot reply.

use std::net::SocketAddr;

use serde_json::json;
use tokio::sync::oneshot;
use watrunk_call::{Leg, MetaHeaders, OutboundCall};

use super::calls::{direction_name, ms};
use super::registry::{Entry, Parties};
use super::Core;

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

impl Core {
    pub(super) fn command(&mut self, c: Command) {
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
                let found = self.calls.by_name(&call);
                let r = match found.and_then(|k| self.calls.get_mut(k)) {
                    None => Err(format!("no call {call}")),
                    Some(e) if !e.leg.leg(watrunk_call::LegId::WhatsApp).is_ringing() => {
                        Err(format!("{call} is not ringing"))
                    }
                    Some(e) if e.leg.leg(watrunk_call::LegId::WhatsApp).is_answering() => {
                        Err(format!("{call} is being answered already"))
                    }
                    Some(e) => {
                        if let Some(sink) = sink {
                            e.sink.addr = sink;
                        }
                        e.leg.whatsapp().answer().map_err(|e| e.to_string())
                    }
                };
                if let Some(key) = found {
                    self.pump(key);
                }
                let _ = reply.send(r);
            }
            Command::HangUp { call, reply } => {
                let r = match self.calls.by_name(&call) {
                    None => Err(format!("no call {call}")),
                    Some(key) => {
                        if let Some(e) = self.calls.get_mut(key) {
                            e.leg.whatsapp().hang_up("hung up by the application", 16);
                        }
                        self.pump(key);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::Dtmf { call, keys, reply } => {
                let found = self.calls.by_name(&call);
                let r = match found.and_then(|k| self.calls.get_mut(k)) {
                    None => Err(format!("no call {call}")),
                    Some(e)
                        if !e.leg.leg(watrunk_call::LegId::WhatsApp).is_answered()
                            || e.media.is_none() =>
                    {
                        Err(format!("{call} has no media up"))
                    }
                    Some(e) => e.leg.whatsapp().send_dtmf(&keys).map_err(|e| e.to_string()),
                };
                if let Some(key) = found {
                    self.pump(key);
                }
                let _ = reply.send(r);
            }
            Command::List { reply } => {
                let calls: Vec<serde_json::Value> = self
                    .calls
                    .iter()
                    .map(|e| {
                        json!({
                            "call": e.id, "direction": direction_name(e.leg.leg(watrunk_call::LegId::WhatsApp).direction()), "state": e.leg.leg(watrunk_call::LegId::WhatsApp).state_name(),
                            "number": e.number, "remote": e.remote, "sink": e.sink.addr.to_string(),
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
        if self.draining.is_some() {
            return Err("the server is shutting down: no new calls".into());
        }
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
                transport: "tls".into(),
                password: number.password.clone(),
                username: None,
                asserted_identity: false,
            },
            setup,
            &mut self.rng,
        )
        .map_err(|e| e.to_string())?;
        let key = self.calls.new_key();
        let name = format!(
            "c{key}-{}",
            &watrunk_sip::dialog::new_tag(&mut self.rng)[..6]
        );
        let sip_call_id = leg.call_id().to_string();
        self.calls.insert(
            key,
            &sip_call_id,
            Entry::new(
                super::registry::Session::Single(leg),
                name.clone(),
                Parties {
                    number: from.into(),
                    remote: to.into(),
                    sink: sink.unwrap_or(number.sink),
                    sink_audio: number.sink_audio,
                    meta: MetaHeaders::default(),
                    origin: None,
                },
            ),
        );
        self.events.emit(json!({
            "event": "call.outgoing", "call": name, "direction": "outbound", "from": from, "to": to,
        }));
        self.pump(key);
        Ok(name)
    }
}
