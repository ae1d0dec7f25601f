//! One sweep per media socket instead of a timer per call. While a call's sink speaks, the call's
//! task sleeps on its sink socket alone; every 10 ms the sweep looks at each call's clock and wakes
//! the calls whose sink went quiet (time for our silence frames), whose RTCP report is due, or that
//! were poked (a DTMF key, a new ICE pair). A quiet call then runs its own 20 ms timer until the sink
//! speaks again. Per relayed packet this costs one relaxed store.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

pub(crate) const SWEEP: Duration = Duration::from_millis(10);

/// One call's side of the sweep.
pub(crate) struct SinkClock {
    epoch: Instant,
    /// When the sink last sent (ms since `epoch`).
    last_ms: AtomicU64,
    /// When the call wants to be woken anyway (ms since `epoch`): its next RTCP report.
    due_ms: AtomicU64,
    quiet_after_ms: u64,
    /// The call sleeps on its sink and relies on the sweep.
    watched: AtomicBool,
    woken: AtomicBool,
    /// The call is to end (checked when the task wakes, never per packet).
    stopping: AtomicBool,
    waker: AtomicWaker,
}

impl SinkClock {
    pub fn ms(&self, at: Instant) -> u64 {
        millis(at.saturating_duration_since(self.epoch))
    }

    /// The sink sent at `at`.
    pub fn heard(&self, at: Instant) {
        self.last_ms.store(self.ms(at), Ordering::Relaxed);
    }

    /// From now the sweep wakes the call (at the latest at `due`).
    pub fn watch(&self, due: Instant) {
        self.due_ms.store(self.ms(due), Ordering::Relaxed);
        self.watched.store(true, Ordering::Release);
    }

    /// Wakes the call at once (a command for it).
    pub fn poke(&self) {
        self.watched.store(false, Ordering::Relaxed);
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the call to end; its task wakes and goes.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.poke();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once `stop` was called (for the set-up steps; the relay checks `is_stopping`).
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.is_stopping() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_stopping() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when the sweep or a poke wakes the call.
    pub fn woken(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// The clocks of one socket's calls.
pub(crate) struct QuietSinks {
    epoch: Instant,
    clocks: Mutex<Vec<Weak<SinkClock>>>,
}

impl QuietSinks {
    pub fn new() -> QuietSinks {
        QuietSinks {
            epoch: Instant::now(),
            clocks: Mutex::default(),
        }
    }

    /// A clock for a call whose sink counts as quiet after `quiet_after` without a packet.
    pub fn clock(&self, quiet_after: Duration) -> Arc<SinkClock> {
        let clock = Arc::new(SinkClock {
            epoch: self.epoch,
            last_ms: AtomicU64::new(0),
            due_ms: AtomicU64::new(u64::MAX),
            quiet_after_ms: quiet_after.as_millis() as u64,
            watched: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        if let Ok(mut clocks) = self.clocks.lock() {
            clocks.push(Arc::downgrade(&clock));
        }
        clock
    }

    /// One sweep: wakes the watched calls that are due; forgets ended ones.
    pub fn sweep(&self, now: Instant) {
        let now_ms = millis(now.saturating_duration_since(self.epoch));
        let Ok(mut clocks) = self.clocks.lock() else {
            return;
        };
        clocks.retain(|weak| {
            let Some(clock) = weak.upgrade() else {
                return false;
            };
            if clock.watched.load(Ordering::Acquire) {
                let quiet = now_ms.saturating_sub(clock.last_ms.load(Ordering::Relaxed))
                    >= clock.quiet_after_ms;
                if quiet || now_ms >= clock.due_ms.load(Ordering::Relaxed) {
                    clock.poke();
                }
            }
            true
        });
    }
}

/// Without `as_millis`'s u128 division: this runs per packet.
fn millis(d: Duration) -> u64 {
    d.as_secs() * 1000 + u64::from(d.subsec_millis())
}

pub(crate) async fn sweep_loop(sinks: Arc<QuietSinks>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sinks.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_a_watched_call_when_its_sink_goes_quiet_or_a_report_is_due() {
        let sinks = QuietSinks::new();
        let start = Instant::now();
        let clock = sinks.clock(Duration::from_millis(60));
        let at = |ms| start + Duration::from_millis(ms);
        clock.heard(at(100));
        clock.watch(at(5_000));
        sinks.sweep(at(150));
        assert!(
            !clock.woken.load(Ordering::Relaxed),
            "50 ms of quiet is not quiet"
        );
        sinks.sweep(at(161));
        assert!(clock.woken.swap(false, Ordering::Relaxed), "61 ms is");
        assert!(!clock.watched.load(Ordering::Relaxed));
        sinks.sweep(at(300));
        assert!(
            !clock.woken.load(Ordering::Relaxed),
            "not watched: its own timer runs"
        );

        clock.heard(at(4_990));
        clock.watch(at(5_000));
        sinks.sweep(at(5_001));
        assert!(
            clock.woken.swap(false, Ordering::Relaxed),
            "the report is due"
        );
        drop(clock);
        sinks.sweep(at(6_000));
        assert!(
            sinks.clocks.lock().unwrap().is_empty(),
            "an ended call is forgotten"
        );
    }
}
