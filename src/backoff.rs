//! Retry timing for a backend that stopped answering: exponential backoff
//! with a ceiling, reset by a success. The one policy for both side threads:
//! Redis reconnections (`redis/worker.rs`) and Postgres connections and
//! failed batch writes (`pg/worker.rs`, bounds in `pg/batch.rs`). Time is
//! passed in, so the policy is tested without sleeping.

use std::time::{Duration, Instant};

/// First retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between retries: an outage is noticed to be over within it.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// When to try a failing backend again.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay after the first failure; doubled per further failure.
    min: Duration,
    /// Longest delay between attempts, however many failures.
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

    /// Ends the current wait early (the connection came back), keeping the
    /// failure count so a flapping backend still backs off.
    pub fn retry_now(&mut self) {
        self.next = None;
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
    fn retry_now_ends_the_wait_but_keeps_the_count() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(2000));
        let delays: Vec<u64> = (0..8).map(|_| b.failed(t0).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.failures(), 8);
        assert_eq!(b.next_attempt(), Some(t0 + ms(2000)));
        b.retry_now();
        assert_eq!(b.next_attempt(), None);
        assert!(b.due(t0));
        assert_eq!(b.failed(t0), ms(2000), "retry_now keeps the count");
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_attempt(), None);
        assert_eq!(b.failed(t0 + ms(5)), ms(100));
        assert_eq!(b.next_attempt(), Some(t0 + ms(105)));
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
