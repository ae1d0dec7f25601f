//! The process's log: which lines are written (`WATRUNK_LOG`, else `RUST_LOG`, else `DEFAULT`), in
//! what form (`--log-format text|json`, colours only on a terminal), and the warnings of the ICE,
//! DTLS and TLS crates that every normal call produces, which are dropped so that a WARN in the
//! log means something. Any other warning of theirs is kept.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, and the call's span).
    Json,
}

/// Warnings seen on every normal call: (target prefix, message fragment, why it is expected).
const EXPECTED_WARNINGS: &[(&str, &str, &str)] = &[
    (
        "webrtc_ice",
        "pingAllCandidates called with no candidate pairs",
        "the first check tick runs before the far side's candidate is in",
    ),
    (
        "webrtc_ice",
        "Failed to close candidate",
        "candidates are closed after the agent that owns them",
    ),
    (
        "webrtc_ice",
        "no such remote",
        "a late check answer after the call's ICE agent closed",
    ),
    (
        "dtls",
        "Unsupported Extension Type",
        "Chrome, Meta and OpenSSL offer TLS extensions DTLS 1.2 does not use",
    ),
    (
        "rustls",
        "ignoring IP address presented as hostname",
        "a client that connects by address sends it as its SNI",
    ),
];

/// Our own lines at info; the ICE and DTLS crates' per-call state changes only when asked for.
const DEFAULT: &str = "info,webrtc_ice=warn,dtls=warn,webrtc_srtp=warn";

/// Starts the log on stderr. The filter: `WATRUNK_LOG`, else `RUST_LOG`, else `DEFAULT`.
pub fn init(format: LogFormat) {
    let filter = ["WATRUNK_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        })
        .and_then(|(var, directives)| match EnvFilter::try_new(&directives) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "watrunk: {var}={directives:?} is not a log filter ({e}): using {DEFAULT:?}"
                );
                None
            }
        })
        .unwrap_or_else(|| EnvFilter::new(DEFAULT));
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(ExpectedNoise);
    let done = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if let Err(e) = done {
        eprintln!("watrunk: cannot start the log: {e}");
    }
}

/// Drops the `EXPECTED_WARNINGS`.
struct ExpectedNoise;

impl<S: Subscriber> Layer<S> for ExpectedNoise {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        // Lines of the `log` crate (webrtc's, rustls's) carry their own target inside.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() != Level::WARN {
            return true;
        }
        let target = meta.target();
        let candidates: Vec<&str> = EXPECTED_WARNINGS
            .iter()
            .filter(|(prefix, _, _)| target.starts_with(prefix))
            .map(|(_, fragment, _)| *fragment)
            .collect();
        if candidates.is_empty() {
            return true;
        }
        let mut message = MessageText(String::new());
        event.record(&mut message);
        !candidates.iter().any(|f| message.0.contains(f))
    }
}

struct MessageText(String);

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what passed the noise filter.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut message = MessageText(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }

    #[test]
    fn the_expected_warnings_are_dropped_and_others_kept() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(ExpectedNoise)
            .with(seen.clone());
        // webrtc's and rustls's lines come through the `log` crate.
        let _ = tracing_log::LogTracer::init();
        tracing::subscriber::with_default(subscriber, || {
            tracing_log::log::warn!(target: "webrtc_ice::agent::agent_internal",
                "[controlling]: pingAllCandidates called with no candidate pairs. Connection is not possible yet.");
            tracing_log::log::warn!(target: "webrtc_ice::agent::agent_internal", "[controlling]: checks failed (via log)");
            tracing::warn!(target: "dtls::handshake::handshake_message_client_hello",
                "Unsupported Extension Type 0 16");
            tracing::warn!(target: "rustls::msgs::handshake",
                "Illegal SNI extension: ignoring IP address presented as hostname (\"127.0.0.1\")");
            tracing::warn!(target: "webrtc_ice::agent::agent_internal", "[controlling]: checks failed");
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: duplicate host_name received");
            tracing::info!(target: "dtls::conn", "Unsupported Extension Type at info is not filtered");
            tracing::warn!(target: "watrunk::server", "pingAllCandidates called with no candidate pairs");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "[controlling]: checks failed (via log)",
                "[controlling]: checks failed",
                "Illegal SNI extension: duplicate host_name received",
                "Unsupported Extension Type at info is not filtered",
                "pingAllCandidates called with no candidate pairs",
            ]
        );
    }
}
