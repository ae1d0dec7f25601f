//! Log volume under attack: at most so many lines per window for one kind of news; what is held
//! back is counted and said with the next line let through.

use std::time::{Duration, Instant};

pub struct LogThrottle {
    window: Duration,
    per_window: u32,
    start: Instant,
    used: u32,
    held_back: u64,
}

impl LogThrottle {
    pub fn new(window: Duration, per_window: u32) -> LogThrottle {
        LogThrottle {
            window,
            per_window,
            start: Instant::now(),
            used: 0,
            held_back: 0,
        }
    }

    /// `Some(n)`: log this one now, saying that `n` lines were held back before it; `None`: hold
    /// it back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.start) >= self.window {
            self.start = now;
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.held_back))
        } else {
            self.held_back += 1;
            None
        }
    }

    /// The line to log for `what`, if this one is let through: with how many `held` (a plural
    /// noun: "refusals") were held back before it.
    pub fn line(
        &mut self,
        now: Instant,
        what: std::fmt::Arguments<'_>,
        held: &str,
    ) -> Option<String> {
        match self.allow(now)? {
            0 => Some(what.to_string()),
            n => Some(format!("{what} ({n} more {held} not logged)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_through_so_many_a_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = LogThrottle::new(Duration::from_secs(10), 2);
        t.start = t0;
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(12)), None);
        assert_eq!(
            t.line(t0 + Duration::from_secs(20), format_args!("x"), "refusals"),
            Some("x (1 more refusals not logged)".into())
        );
    }
}
