//! The server's life after start. SIGTERM or SIGINT drains it: new calls get 503 with
//! Retry-After (OPTIONS too, so that a load balancer probing it takes it out of rotation), live
//! calls run on until `--drain-timeout-secs`, then each gets a BYE saying the
//! server is shutting down; once every call has ended (its `call.ended` emitted) or a short grace
//! for the BYEs' answers has passed, the server returns and the process exits 0. A second signal
//! ends the calls at once. SIGHUP reloads the configuration: numbers, passwords, sinks, digest
//! and ban settings, the RTP timeout and the TLS certificate; live calls and connections are not
//! touched, and what needs a restart (listeners, media address, PBX trunks, connection limits)
//! is named in the log when it changed.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};
use watrunk_sip::io::tls::CertSource;
use watrunk_sip::{Request, Response};

use super::{reply, Core};
use crate::config::ServeConfig;

/// How long calls get to answer our BYEs before the server stops all the same.
const BYE_GRACE: Duration = Duration::from_secs(5);
/// The Retry-After of a 503 while draining, seconds: a restart is usually quick.
const DRAIN_RETRY_AFTER: &str = "30";

/// The signals the server acts on.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// What a signal asks for.
pub enum Asked {
    Drain(&'static str),
    Reload,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Drain("SIGTERM"),
            _ = self.int.recv() => Asked::Drain("SIGINT"),
            _ = self.hup.recv() => Asked::Reload,
        }
    }
}

/// A drain under way: when live calls are ended, and when that was done.
pub struct Drain {
    deadline: Instant,
    hung_up: Option<Instant>,
}

impl Core {
    pub(super) fn on_signal(&mut self, asked: Asked, now: Instant) {
        match asked {
            Asked::Drain(name) => self.begin_drain(name, now),
            Asked::Reload => self.reload(),
        }
    }

    fn begin_drain(&mut self, signal: &str, now: Instant) {
        match &mut self.draining {
            None => {
                let timeout = self.cfg.drain_timeout;
                tracing::info!(
                    "{signal}: draining: new calls get 503, {} live calls end within {} s",
                    self.calls.len(),
                    timeout.as_secs()
                );
                self.events.emit(json!({
                    "event": "server.draining", "signal": signal, "calls": self.calls.len(),
                    "drain_timeout_secs": timeout.as_secs(),
                }));
                self.draining = Some(Drain {
                    deadline: now + timeout,
                    hung_up: None,
                });
            }
            Some(drain) => {
                tracing::info!("{signal} again: ending the live calls now");
                drain.deadline = drain.deadline.min(now);
            }
        }
    }

    /// When the drain next needs the core: the deadline, then the end of the BYEs' grace.
    pub(super) fn drain_timeout(&self) -> Option<Instant> {
        let drain = self.draining.as_ref()?;
        Some(match drain.hung_up {
            None => drain.deadline,
            Some(at) => at + BYE_GRACE,
        })
    }

    pub(super) fn drain_timers(&mut self, now: Instant) {
        let Some(drain) = self.draining.as_mut() else {
            return;
        };
        if drain.hung_up.is_some() || now < drain.deadline {
            return;
        }
        drain.hung_up = Some(now);
        let keys = self.calls.keys();
        tracing::info!(
            "drain timeout: ending {} calls with a BYE saying so",
            keys.len()
        );
        for key in keys {
            if let Some(entry) = self.calls.get_mut(key) {
                entry.leg.hang_up("the server is shutting down", 41);
            }
            self.pump(key);
        }
    }

    /// Whether a drain is done: no call left, or the BYEs' grace is over (the calls still
    /// waiting for an answer to their BYE are reported ended then).
    pub(super) fn drained(&mut self, now: Instant) -> bool {
        let Some(drain) = &self.draining else {
            return false;
        };
        if self.calls.is_empty() {
            return true;
        }
        if drain.hung_up.is_none_or(|at| now < at + BYE_GRACE) {
            return false;
        }
        for entry in self.calls.iter() {
            self.events.emit(json!({
                "event": "call.ended", "call": entry.id, "by": "local",
                "reason": "the server stopped before the call's BYE was answered",
            }));
        }
        true
    }

    /// While draining, the answer to a new INVITE or an OPTIONS: 503 with Retry-After.
    pub(super) fn drain_refusal(&self, req: &Request) -> Option<Response> {
        self.draining.as_ref()?;
        let mut r = reply(
            req,
            503,
            "Service Unavailable (shutting down)",
            &super::local_tag(req),
        );
        r.headers.push("Retry-After", DRAIN_RETRY_AFTER);
        Some(r)
    }

    /// SIGHUP: the configuration read again from the same flags and file. A configuration that
    /// does not load leaves the running one as it is.
    fn reload(&mut self) {
        let Some(args) = self.reload_args.clone() else {
            tracing::info!("SIGHUP: nothing to reload");
            return;
        };
        let fresh = match ServeConfig::resolve(args) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "SIGHUP: the configuration does not load, keeping the running one: {e:#}"
                );
                return;
            }
        };
        let restart = match &self.loaded {
            Some(loaded) => needs_restart(loaded, &fresh),
            None => Vec::new(),
        };
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed and take effect at the next restart",
                restart.join(", ")
            );
        }
        let certificate = match &self.certificate {
            None => "none".to_string(),
            Some(cert) => {
                match cert.reload(&CertSource {
                    cert: fresh.cert.clone(),
                    key: fresh.key.clone(),
                    hostname: fresh.hostname.clone(),
                    state_dir: fresh.state_dir.clone(),
                }) {
                    Ok(origin) => super::cert_origin_name(&origin),
                    Err(e) => {
                        tracing::warn!("SIGHUP: the TLS certificate does not load, keeping the one in use: {e}");
                        "kept".to_string()
                    }
                }
            }
        };
        self.admission.reconfigure(
            fresh.digest.clone(),
            fresh.calls.numbers.clone(),
            fresh.auth.clone(),
            fresh.bans,
        );
        if let (Some(media), Some(settings)) = (self.media.as_mut(), &fresh.calls.media) {
            media.rtp_timeout = settings.rtp_timeout;
        }
        self.cfg.calls.numbers = fresh.calls.numbers.clone();
        self.cfg.auth = fresh.auth.clone();
        self.cfg.digest = fresh.digest.clone();
        self.cfg.bans = fresh.bans;
        self.cfg.drain_timeout = fresh.drain_timeout;
        self.loaded = Some(Box::new(fresh.clone()));
        tracing::info!(
            "SIGHUP: reloaded {} numbers, passwords and sinks; certificate {certificate}; live calls untouched",
            self.cfg.calls.numbers.len()
        );
        self.events.emit(json!({
            "event": "server.reloaded", "numbers": self.cfg.calls.numbers.len(),
            "certificate": certificate, "needs_restart": restart,
        }));
    }
}

/// What changed between two configurations that only a restart applies.
fn needs_restart(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if (old.tls, old.tcp, old.udp) != (new.tls, new.tcp, new.udp) {
        changed.push("listeners");
    }
    let media = |c: &ServeConfig| c.calls.media.as_ref().map(|m| (m.ip, m.ip6, m.port));
    if media(old) != media(new) {
        changed.push("the media address");
    }
    if old.calls.pbxs != new.calls.pbxs {
        changed.push("PBX trunks");
    }
    if (
        old.max_connections,
        old.max_connections_per_source,
        old.max_message,
    ) != (
        new.max_connections,
        new.max_connections_per_source,
        new.max_message,
    ) {
        changed.push("connection limits");
    }
    if old.calls.api != new.calls.api || old.calls.events != new.calls.events {
        changed.push("the control API and events");
    }
    if old.hostname != new.hostname {
        changed.push("the hostname");
    }
    changed
}
