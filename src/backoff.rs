//! Retry timing for a backend that stopped answering: exponential backoff
//! with a ceiling, reset by a success. Time is passed in, so the policy is
//! tested without sleeping.

use std::time::{Duration, Instant};

/// First retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between retries: an outage is noticed to be over within it.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// When to try a failing backend again.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    min: Duration,
    /// Delay ceiling.
    max: Duration,
    /// Failures in a row since the last success.
    failures: u32,
    /// Earliest time of the next attempt; None while healthy.
    next: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
    }
}

impl Backoff {
    /// A healthy policy with the given bounds.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            next: None,
        }
    }

    /// Records a failed attempt at `now`; returns the delay until the next one
    /// (`min`, doubling per failure, at most `max`).
    pub fn failed(&mut self, now: Instant) -> Duration {
        let shift = self.failures.min(16);
        let delay = self.min.saturating_mul(1 << shift).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.next = Some(now + delay);
        delay
    }

    /// Records a success: the next failure starts from `min` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next = None;
    }

    /// Whether an attempt is due at `now` (always, while healthy).
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// When the next attempt is due; None while healthy.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert!(b.due(t0));
        let delays: Vec<u128> = (0..6).map(|_| b.failed(t0).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        assert!(!b.due(t0 + Duration::from_millis(999)));
        assert!(b.due(t0 + Duration::from_millis(1000)));
        b.succeeded();
        assert!(b.due(t0));
        assert_eq!(b.next_attempt(), None);
        assert_eq!(b.failed(t0), Duration::from_millis(100));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..100 {
            b.failed(t0);
        }
        assert_eq!(b.failed(t0), BACKOFF_MAX);
    }
}
