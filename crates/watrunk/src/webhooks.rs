//! Webhooks: each event POSTed as JSON to the configured URLs, signed with HMAC-SHA256. Every URL
//! has a thread of its own and a bounded queue; the core only ever offers an event (a full queue
//! drops it and counts it), so a slow or dead receiver never holds up a call. A failed delivery is
//! retried with backoff, in order, the same event (same delivery id) until it is taken or its
//! retries run out.
//!
//! What a receiver checks: `X-Watrunk-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is
//! HMAC-SHA256 under the shared secret of `"<t>.<body>"`; a `t` far from its own clock is a
//! replay. `X-Watrunk-Delivery` is the same on each retry of one event (for de-duplication).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::metrics::Metrics;

/// Events waiting per URL: at 7 events a call, a few hundred calls' worth.
pub const QUEUE: usize = 2048;
/// The first retry's delay, doubled each time up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Attempts per event before it is dropped: 0.25 s doubling to 30 s, about 2.5 minutes in all.
const ATTEMPTS: u32 = 12;
/// One attempt's limit.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    /// The HMAC key; no signature header without one.
    pub secret: Option<Vec<u8>>,
}

pub struct Webhooks {
    targets: Vec<Target>,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

struct Target {
    url: String,
    queue: SyncSender<Delivery>,
    thread: JoinHandle<()>,
}

struct Delivery {
    id: String,
    event: String,
    body: String,
}

impl Webhooks {
    pub fn start(config: &WebhookConfig, metrics: Arc<Metrics>) -> anyhow::Result<Webhooks> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut targets = Vec::new();
        for url in &config.urls {
            let (queue, rx) = sync_channel(QUEUE);
            let worker = Worker {
                url: url.clone(),
                secret: config.secret.clone(),
                agent: ureq::AgentBuilder::new().timeout(TIMEOUT).build(),
                metrics: metrics.clone(),
                stopping: stopping.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("webhook".into())
                .spawn(move || worker.run(rx))?;
            targets.push(Target {
                url: url.clone(),
                queue,
                thread,
            });
        }
        Ok(Webhooks {
            targets,
            metrics,
            stopping,
        })
    }

    /// Queues `body` (an event of kind `event`) for every URL; never waits.
    pub fn offer(&self, event: &str, body: &str) {
        let id = delivery_id();
        for target in &self.targets {
            let delivery = Delivery {
                id: id.clone(),
                event: event.to_string(),
                body: body.to_string(),
            };
            match target.queue.try_send(delivery) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics.webhook_dropped.inc();
                    let dropped = self.metrics.webhook_dropped.get();
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            "webhook {}: its queue is full, {dropped} events dropped so far",
                            target.url
                        );
                    }
                }
            }
        }
    }

    /// Waits up to `limit` for what is queued to be delivered (at exit); the rest is dropped.
    pub fn close(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let threads: Vec<_> = self
            .targets
            .into_iter()
            .map(|t| {
                drop(t.queue);
                t.thread
            })
            .collect();
        while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Retries stop; deliveries under way end within their timeout, on their own thread.
        self.stopping.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    url: String,
    secret: Option<Vec<u8>>,
    agent: ureq::Agent,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, queue: Receiver<Delivery>) {
        let mut failing = false;
        while let Ok(delivery) = queue.recv() {
            let mut delay = FIRST_DELAY;
            let mut delivered = false;
            for attempt in 1..=ATTEMPTS {
                match self.post(&delivery) {
                    Ok(()) => {
                        delivered = true;
                        if failing {
                            tracing::info!("webhook {}: delivering again", self.url);
                            failing = false;
                        }
                        break;
                    }
                    Err(e) => {
                        self.metrics.webhook_failed.inc();
                        if !failing {
                            tracing::warn!(
                                "webhook {}: {e} (retrying with backoff; queued events wait)",
                                self.url
                            );
                            failing = true;
                        }
                    }
                }
                if attempt == ATTEMPTS || self.stopping.load(Ordering::Relaxed) {
                    break;
                }
                self.pause(delay);
                delay = (delay * 2).min(MAX_DELAY);
            }
            if delivered {
                self.metrics.webhook_delivered.inc();
            } else {
                self.metrics.webhook_dropped.inc();
                tracing::warn!(
                    "webhook {}: {} event {} dropped after {ATTEMPTS} attempts",
                    self.url,
                    delivery.event,
                    delivery.id
                );
            }
        }
    }

    /// Sleeps `delay`, or less when the server stops.
    fn pause(&self, delay: Duration) {
        let end = Instant::now() + delay;
        while !self.stopping.load(Ordering::Relaxed) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn post(&self, delivery: &Delivery) -> Result<(), String> {
        let mut request = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("User-Agent", concat!("watrunk/", env!("CARGO_PKG_VERSION")))
            .set("X-Watrunk-Event", &delivery.event)
            .set("X-Watrunk-Delivery", &delivery.id);
        if let Some(secret) = &self.secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            request = request.set(
                "X-Watrunk-Signature",
                &signature(secret, now, &delivery.body),
            );
        }
        match request.send_string(&delivery.body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, _)) => Err(format!("the receiver answered {code}")),
            Err(e) => Err(format!("cannot deliver: {e}")),
        }
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], unix: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex = watrunk_sip::digest::hex(&mac.finalize().into_bytes());
    format!("t={unix},v1={hex}")
}

fn delivery_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed text is "<t>.<body>"; the expected value is OpenSSL's
    /// (`printf '1700000000.{}' | openssl dgst -sha256 -hmac Jefe`).
    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        assert_eq!(
            signature(b"Jefe", 1_700_000_000, "{}"),
            "t=1700000000,v1=d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
    }
}
