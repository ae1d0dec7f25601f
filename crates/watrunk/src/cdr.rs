//! Call detail records: one JSON line per call when it ends (`--cdr FILE`), made from the call's
//! events: who called whom, Meta's call id (wacid), when it started, was answered and ended, how
//! long it rang and talked, who ended it and why (the SIP status, Reason and Q.850 cause), and
//! the media's quality (packets, loss, jitter, round trip, SRTP failures).

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The live calls' times and facts the final event does not carry.
#[derive(Default)]
pub struct CdrBook {
    live: HashMap<String, Open>,
}

struct Open {
    start: SystemTime,
    answer: Option<SystemTime>,
    srtp: Option<String>,
}

impl CdrBook {
    /// The call's record, when `event` is its `call.ended`.
    pub fn observe(&mut self, event: &Value) -> Option<Value> {
        self.observe_at(event, SystemTime::now())
    }

    fn observe_at(&mut self, event: &Value, now: SystemTime) -> Option<Value> {
        let call = event["call"].as_str()?;
        match event["event"].as_str()? {
            "call.incoming" | "call.outgoing" => {
                self.live.insert(
                    call.to_string(),
                    Open {
                        start: now,
                        answer: None,
                        srtp: None,
                    },
                );
                None
            }
            "call.answered" => {
                if let Some(open) = self.live.get_mut(call) {
                    open.answer.get_or_insert(now);
                }
                None
            }
            "media.up" => {
                if let Some(open) = self.live.get_mut(call) {
                    open.srtp = event["srtp"].as_str().map(str::to_string);
                }
                None
            }
            "call.ended" => {
                let open = self.live.remove(call).unwrap_or(Open {
                    start: now,
                    answer: None,
                    srtp: None,
                });
                Some(record(event, &open, now))
            }
            _ => None,
        }
    }
}

fn record(ended: &Value, open: &Open, end: SystemTime) -> Value {
    let secs = |from: SystemTime, to: SystemTime| {
        let d = to.duration_since(from).unwrap_or_default();
        d.as_millis() as f64 / 1000.0
    };
    let stats = &ended["stats"];
    let media = stats.is_object().then(|| {
        let packets_in = stats["packets_in"].as_u64().unwrap_or(0);
        let lost = stats["lost"].as_i64().unwrap_or(0).max(0) as u64;
        let expected = packets_in + lost;
        json!({
            "packets_in": packets_in,
            "packets_out": stats["packets_out"],
            "bytes_in": stats["bytes_in"],
            "bytes_out": stats["bytes_out"],
            "lost": lost,
            "loss_percent": if expected == 0 { 0.0 } else {
                (lost as f64 * 10000.0 / expected as f64).round() / 100.0
            },
            "jitter_ms": stats["jitter_us"].as_u64().map(|us| us as f64 / 1000.0),
            "rtt_ms": stats["rtt_us"].as_u64().filter(|&us| us > 0).map(|us| us as f64 / 1000.0),
            "srtp_rejected": stats["srtp_rejected"],
            "dtmf_out": stats["dtmf_out"],
        })
    });
    json!({
        "record": "cdr",
        "call": ended["call"],
        "wacid": ended["meta_call_id"],
        "direction": ended["direction"],
        "from": ended["from"],
        "to": ended["to"],
        "start": rfc3339(open.start),
        "answer": open.answer.map(rfc3339),
        "end": rfc3339(end),
        "ring_secs": secs(open.start, open.answer.unwrap_or(end)),
        "talk_secs": open.answer.map(|a| secs(a, end)).unwrap_or(0.0),
        "total_secs": secs(open.start, end),
        "ended_by": ended["by"],
        "reason": ended["reason"],
        "sip_status": ended["status"],
        "sip_reason": ended["sip_reason"],
        "q850_cause": ended["q850_cause"],
        "media_failure": ended["media_failure"],
        "meta_call_duration_secs": ended["meta_call_duration_secs"],
        "srtp": open.srtp,
        "media": media,
    })
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "invalid time".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_calls_record_sums_up_its_events() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_796_678_529_000 + ms);
        let mut book = CdrBook::default();
        let events = [
            (
                0,
                json!({"event": "call.incoming", "call": "c1", "direction": "inbound"}),
            ),
            (1500, json!({"event": "call.answered", "call": "c1"})),
            (
                1530,
                json!({"event": "media.up", "call": "c1", "srtp": "SRTP_AEAD_AES_128_GCM"}),
            ),
        ];
        for (ms, e) in events {
            assert_eq!(book.observe_at(&e, at(ms)), None);
        }
        let ended = json!({
            "event": "call.ended", "call": "c1", "direction": "inbound", "from": "+12195550714",
            "to": "+15550001111", "by": "remote", "status": 200, "reason": "hung up by the far side",
            "sip_reason": null, "q850_cause": null, "media_failure": null,
            "meta_call_id": "wacid.HBgL", "meta_call_duration_secs": 10,
            "stats": {"packets_in": 490, "packets_out": 500, "bytes_in": 39000, "bytes_out": 40000,
                      "lost": 10, "jitter_us": 2500, "rtt_us": 0, "srtp_rejected": 0, "dtmf_out": 0},
        });
        let cdr = book.observe_at(&ended, at(11_750)).unwrap();
        assert_eq!(cdr["wacid"], "wacid.HBgL");
        assert_eq!(cdr["start"], "2026-12-07T21:22:09Z");
        assert_eq!(cdr["answer"], "2026-12-07T21:22:10.5Z");
        assert_eq!(cdr["end"], "2026-12-07T21:22:20.75Z");
        assert_eq!(cdr["ring_secs"], 1.5);
        assert_eq!(cdr["talk_secs"], 10.25);
        assert_eq!(cdr["total_secs"], 11.75);
        assert_eq!(cdr["ended_by"], "remote");
        assert_eq!(cdr["sip_status"], 200);
        assert_eq!(cdr["srtp"], "SRTP_AEAD_AES_128_GCM");
        assert_eq!(cdr["media"]["loss_percent"], 2.0);
        assert_eq!(cdr["media"]["jitter_ms"], 2.5);
        assert_eq!(cdr["media"]["rtt_ms"], Value::Null);
        assert!(book.live.is_empty());
    }
}
