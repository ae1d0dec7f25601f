//! Prometheus metrics, served as text on the control API's `GET /metrics`. Call, media and
//! authentication figures are read off the events as they are emitted (`observe`), so that a
//! metric and the event a user sees can never disagree; SIP responses and connections are counted
//! where the core sends, receives and opens them. Every handle is an atomic: updating one takes no
//! lock and the scrape never waits for the core.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    direction: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    direction: String,
    outcome: String,
    by: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: String,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Gauge>,
    calls_ended: Family<EndLabels, Counter>,
    setup: Family<PhaseLabels, Histogram>,
    packets: Family<FlowLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    lost: Counter,
    jitter: Histogram,
    srtp_rejected: Counter,
    auth_failures: Counter,
    auth_bans: Counter,
    dtmf: Family<FlowLabels, Counter>,
    sip_sent: Family<CodeLabels, Counter>,
    sip_received: Family<CodeLabels, Counter>,
    connections: Family<TransportLabels, Gauge>,
    connections_total: Family<TransportLabels, Counter>,
    events_dropped: Counter,
    pub webhook_delivered: Counter,
    pub webhook_failed: Counter,
    pub webhook_dropped: Counter,
}

/// Set-up phases last milliseconds to seconds: 1 ms to ~16 s.
fn phase_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("watrunk");
        let calls = Family::<CallLabels, Gauge>::default();
        registry.register(
            "calls",
            "Calls now, by direction and state (setting_up, answered)",
            calls.clone(),
        );
        let calls_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "calls_ended",
            "Calls ended, by direction, outcome (answered, unanswered), who ended them and the INVITE's final status",
            calls_ended.clone(),
        );
        let setup = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(phase_buckets())
        });
        registry.register(
            "call_setup_seconds",
            "Time from the call's start to each set-up phase (media_prepare, final_response, ice, secure, first_rtp_out, first_rtp_in)",
            setup.clone(),
        );
        let packets = Family::<FlowLabels, Counter>::default();
        registry.register(
            "media_packets",
            "RTP packets of ended calls toward (out) and from (in) the far side",
            packets.clone(),
        );
        let bytes = Family::<FlowLabels, Counter>::default();
        registry.register(
            "media_bytes",
            "RTP bytes of ended calls toward (out) and from (in) the far side",
            bytes.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "media_lost_packets",
            "Packets of the far side's streams that never arrived (RFC 3550), ended calls",
            lost.clone(),
        );
        let jitter = Histogram::new(phase_buckets());
        registry.register(
            "media_jitter_seconds",
            "Interarrival jitter of the far side's stream at each call's end",
            jitter.clone(),
        );
        let srtp_rejected = Counter::default();
        registry.register(
            "srtp_rejected_packets",
            "SRTP packets that failed authentication or replay checks, ended calls",
            srtp_rejected.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "digest_failures",
            "Failed digest answers",
            auth_failures.clone(),
        );
        let auth_bans = Counter::default();
        registry.register(
            "digest_bans",
            "Sources banned for failed digest answers",
            auth_bans.clone(),
        );
        let dtmf = Family::<FlowLabels, Counter>::default();
        registry.register(
            "dtmf_keys",
            "DTMF keys received from (in) and sent to (out) the far side",
            dtmf.clone(),
        );
        let sip_sent = Family::<CodeLabels, Counter>::default();
        registry.register(
            "sip_responses_sent",
            "SIP responses sent, by status code",
            sip_sent.clone(),
        );
        let sip_received = Family::<CodeLabels, Counter>::default();
        registry.register(
            "sip_responses_received",
            "SIP responses received, by status code",
            sip_received.clone(),
        );
        let connections = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open SIP connections, by transport",
            connections.clone(),
        );
        let connections_total = Family::<TransportLabels, Counter>::default();
        registry.register(
            "connections_opened",
            "SIP connections opened (accepted or by us), by transport",
            connections_total.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Event lines the --events writer could not take in time",
            events_dropped.clone(),
        );
        let webhook_delivered = Counter::default();
        registry.register(
            "webhook_delivered",
            "Events delivered to a webhook (a 2xx answer)",
            webhook_delivered.clone(),
        );
        let webhook_failed = Counter::default();
        registry.register(
            "webhook_attempts_failed",
            "Webhook attempts that failed (retried with backoff)",
            webhook_failed.clone(),
        );
        let webhook_dropped = Counter::default();
        registry.register(
            "webhook_dropped",
            "Events a webhook lost: its queue was full or every retry failed",
            webhook_dropped.clone(),
        );
        Metrics {
            registry,
            calls,
            calls_ended,
            setup,
            packets,
            bytes,
            lost,
            jitter,
            srtp_rejected,
            auth_failures,
            auth_bans,
            dtmf,
            sip_sent,
            sip_received,
            connections,
            connections_total,
            events_dropped,
            webhook_delivered,
            webhook_failed,
            webhook_dropped,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A SIP message we sent (counted when it is a response).
    pub fn sent(&self, bytes: &[u8]) {
        if let Some(code) = response_code(bytes) {
            self.sip_sent
                .get_or_create(&CodeLabels { code: code.into() })
                .inc();
        }
    }

    pub fn received_response(&self, code: u16) {
        self.sip_received
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn connection_opened(&self, transport: &str) {
        let labels = TransportLabels {
            transport: transport.into(),
        };
        self.connections.get_or_create(&labels).inc();
        self.connections_total.get_or_create(&labels).inc();
    }

    pub fn connection_closed(&self, transport: &str) {
        self.connections
            .get_or_create(&TransportLabels {
                transport: transport.into(),
            })
            .dec();
    }

    pub fn events_dropped(&self) {
        self.events_dropped.inc();
    }
}

/// The status code of a response's first line.
fn response_code(bytes: &[u8]) -> Option<&str> {
    let rest = bytes.strip_prefix(b"SIP/2.0 ")?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?;
    code.bytes().all(|b| b.is_ascii_digit()).then_some(code)
}

/// Reads the calls' states and figures off the events (owned by `Events`, on the core's task).
#[derive(Default)]
pub struct CallStates {
    /// The live calls: their direction and whether they were answered.
    live: HashMap<String, (String, bool)>,
}

impl CallStates {
    pub fn observe(&mut self, metrics: &Metrics, event: &Value) {
        let call = || event["call"].as_str().map(str::to_string);
        let gauge = |direction: &str, answered: bool| {
            metrics.calls.get_or_create(&CallLabels {
                direction: direction.into(),
                state: if answered { "answered" } else { "setting_up" }.into(),
            })
        };
        match event["event"].as_str().unwrap_or_default() {
            "call.incoming" | "call.outgoing" => {
                let Some(call) = call() else { return };
                let direction = event["direction"].as_str().unwrap_or("inbound").to_string();
                gauge(&direction, false).inc();
                self.live.insert(call, (direction, false));
            }
            "call.answered" => {
                if let Some((direction, answered)) = call().and_then(|c| self.live.get_mut(&c)) {
                    if !*answered {
                        *answered = true;
                        gauge(direction, false).dec();
                        gauge(direction, true).inc();
                    }
                }
            }
            "call.ended" => {
                let (direction, answered) = match call().and_then(|c| self.live.remove(&c)) {
                    Some((direction, answered)) => {
                        gauge(&direction, answered).dec();
                        (direction, answered)
                    }
                    None => (
                        event["direction"].as_str().unwrap_or("inbound").to_string(),
                        false,
                    ),
                };
                metrics
                    .calls_ended
                    .get_or_create(&EndLabels {
                        direction,
                        outcome: if answered { "answered" } else { "unanswered" }.into(),
                        by: event["by"].as_str().unwrap_or("unknown").into(),
                        // The INVITE's final status: 200 for an answered call.
                        status: if answered {
                            "200".into()
                        } else {
                            event["status"]
                                .as_u64()
                                .map_or_else(|| "none".into(), |s| s.to_string())
                        },
                    })
                    .inc();
                if let Some(timings) = event["timings_ms"].as_object() {
                    for (phase, ms) in timings {
                        if let Some(ms) = ms.as_f64() {
                            metrics
                                .setup
                                .get_or_create(&PhaseLabels {
                                    phase: phase.clone(),
                                })
                                .observe(ms / 1000.0);
                        }
                    }
                }
                let stats = &event["stats"];
                let count = |key: &str| stats[key].as_u64().unwrap_or(0);
                let flow = |direction: &str| FlowLabels {
                    direction: direction.into(),
                };
                if stats.is_object() {
                    metrics
                        .packets
                        .get_or_create(&flow("in"))
                        .inc_by(count("packets_in"));
                    metrics
                        .packets
                        .get_or_create(&flow("out"))
                        .inc_by(count("packets_out"));
                    metrics
                        .bytes
                        .get_or_create(&flow("in"))
                        .inc_by(count("bytes_in"));
                    metrics
                        .bytes
                        .get_or_create(&flow("out"))
                        .inc_by(count("bytes_out"));
                    metrics
                        .lost
                        .inc_by(stats["lost"].as_i64().unwrap_or(0).max(0) as u64);
                    metrics.srtp_rejected.inc_by(count("srtp_rejected"));
                    if let Some(us) = stats["jitter_us"].as_u64() {
                        metrics.jitter.observe(us as f64 / 1e6);
                    }
                }
            }
            "dtmf.received" => {
                metrics
                    .dtmf
                    .get_or_create(&FlowLabels {
                        direction: "in".into(),
                    })
                    .inc();
            }
            "dtmf.sent" => {
                metrics
                    .dtmf
                    .get_or_create(&FlowLabels {
                        direction: "out".into(),
                    })
                    .inc();
            }
            "auth.failed" => {
                metrics.auth_failures.inc();
            }
            "auth.banned" => {
                metrics.auth_bans.inc();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    }

    #[test]
    fn a_calls_events_make_its_metrics() {
        let metrics = Metrics::new();
        let mut states = CallStates::default();
        states.observe(
            &metrics,
            &json!({"event": "call.incoming", "call": "c1", "direction": "inbound"}),
        );
        let text = metrics.render();
        assert_eq!(
            value(
                &text,
                "watrunk_calls{direction=\"inbound\",state=\"setting_up\"}"
            ),
            1.0
        );
        states.observe(&metrics, &json!({"event": "call.answered", "call": "c1"}));
        states.observe(
            &metrics,
            &json!({"event": "dtmf.received", "call": "c1", "key": "5"}),
        );
        states.observe(&metrics, &json!({
            "event": "call.ended", "call": "c1", "direction": "inbound", "by": "remote", "status": 200,
            "timings_ms": {"ice": 4.0, "secure": 12.5, "first_rtp_in": null},
            "stats": {"packets_in": 500, "packets_out": 498, "bytes_in": 40000, "bytes_out": 39840,
                      "lost": 2, "srtp_rejected": 1, "jitter_us": 1500},
        }));
        metrics.sent(b"SIP/2.0 407 Proxy Authentication Required\r\n");
        metrics.sent(b"INVITE sip:x SIP/2.0\r\n");
        metrics.received_response(200);
        let text = metrics.render();
        for (line, want) in [
            (
                "watrunk_calls{direction=\"inbound\",state=\"setting_up\"}",
                0.0,
            ),
            ("watrunk_calls{direction=\"inbound\",state=\"answered\"}", 0.0),
            ("watrunk_calls_ended_total{direction=\"inbound\",outcome=\"answered\",by=\"remote\",status=\"200\"}", 1.0),
            ("watrunk_media_packets_total{direction=\"in\"}", 500.0),
            ("watrunk_media_packets_total{direction=\"out\"}", 498.0),
            ("watrunk_media_bytes_total{direction=\"in\"}", 40000.0),
            ("watrunk_media_lost_packets_total", 2.0),
            ("watrunk_srtp_rejected_packets_total", 1.0),
            ("watrunk_dtmf_keys_total{direction=\"in\"}", 1.0),
            ("watrunk_sip_responses_sent_total{code=\"407\"}", 1.0),
            ("watrunk_sip_responses_received_total{code=\"200\"}", 1.0),
            ("watrunk_call_setup_seconds_count{phase=\"secure\"}", 1.0),
            ("watrunk_call_setup_seconds_sum{phase=\"secure\"}", 0.0125),
            ("watrunk_media_jitter_seconds_count", 1.0),
        ] {
            assert_eq!(value(&text, line), want, "{line}");
        }
        assert!(!text.contains("phase=\"first_rtp_in\""), "{text}");
    }
}
