//! The Postgres writer's policy: when a batch is flushed, how long to wait
//! after a failed write, and whether the write buffer can take another
//! message. Deterministic and I/O-free: the writer passes the time in, so
//! every rule is unit-tested without sleeping.

use std::time::{Duration, Instant};

/// First wait after a failed write or connection attempt.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest wait between retries: a Postgres that comes back is written to
/// within this long.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// When to flush: a batch is written once it holds `batch_size` rows or its
/// oldest row has waited `interval`, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Most rows per INSERT (PG_BATCH_SIZE); reaching it flushes at once.
    pub batch_size: usize,
    /// Longest a row waits for its batch (PG_FLUSH_INTERVAL_MS).
    pub interval: Duration,
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write a batch now.
    Flush,
    /// Nothing is due before this instant (or an earlier wake-up: more rows,
    /// a reconnect, shutdown).
    WaitUntil(Instant),
    /// Nothing pending: wait for the next row.
    Idle,
}

impl FlushPolicy {
    /// The next step for `pending` rows whose oldest arrived at `oldest`.
    /// `retry_at` is the end of the current backoff, if a write failed;
    /// `draining` (shutdown) flushes whatever is pending without waiting for
    /// the interval.
    pub fn next(
        &self,
        pending: usize,
        oldest: Option<Instant>,
        retry_at: Option<Instant>,
        draining: bool,
        now: Instant,
    ) -> Next {
        if pending == 0 {
            return Next::Idle;
        }
        if let Some(at) = retry_at {
            if now < at {
                return Next::WaitUntil(at);
            }
        }
        if draining || pending >= self.batch_size {
            return Next::Flush;
        }
        let due = oldest.map_or(now, |t| t + self.interval);
        if now >= due {
            Next::Flush
        } else {
            Next::WaitUntil(due)
        }
    }
}

/// Exponential backoff between retries of a failed write or connection:
/// `RETRY_BASE`, twice that, ... up to `RETRY_MAX`, reset by a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    base: Duration,
    /// Cap on the delay.
    max: Duration,
    /// Failures since the last success.
    failures: u32,
    /// No retry before this instant; None when not backing off.
    retry_at: Option<Instant>,
}

impl Backoff {
    /// A backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
            retry_at: None,
        }
    }

    /// Records a failure at `now`; returns the wait before the next try.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        let delay = self.base.saturating_mul(1 << shift).min(self.max);
        self.retry_at = Some(now + delay);
        delay
    }

    /// Records a success: the next failure waits `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Ends the current wait early (the connection came back), keeping the
    /// failure count so a flapping server still backs off.
    pub fn retry_now(&mut self) {
        self.retry_at = None;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// End of the current wait, if any.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

/// Whether a new message may be accepted while `buffered` rows wait to be
/// written and the buffer holds `capacity` (PG_BUFFER_MESSAGES). Refused
/// messages get the contract's `unavailable` error and are not accepted,
/// so nothing accepted is ever dropped for lack of room.
///
/// Cores check this with one relaxed load before stamping a message and
/// count its rows (the message and possibly an audit record) only after, so
/// cores racing on the last free slot can overshoot `capacity` by at most
/// two rows per core; the writer's channel leaves that much room on top.
pub fn admit(buffered: usize, capacity: usize) -> bool {
    buffered < capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const POLICY: FlushPolicy = FlushPolicy {
        batch_size: 100,
        interval: Duration::from_millis(50),
    };

    #[test]
    fn nothing_pending_is_idle() {
        let t0 = Instant::now();
        assert_eq!(POLICY.next(0, None, None, false, t0), Next::Idle);
        assert_eq!(POLICY.next(0, None, None, true, t0), Next::Idle);
    }

    #[test]
    fn flushes_on_size_before_the_interval() {
        let t0 = Instant::now();
        assert_eq!(
            POLICY.next(99, Some(t0), None, false, t0),
            Next::WaitUntil(t0 + ms(50))
        );
        assert_eq!(POLICY.next(100, Some(t0), None, false, t0), Next::Flush);
        assert_eq!(
            POLICY.next(250, Some(t0), None, false, t0 + ms(1)),
            Next::Flush
        );
    }

    #[test]
    fn flushes_on_interval_below_size() {
        let t0 = Instant::now();
        assert_eq!(
            POLICY.next(1, Some(t0), None, false, t0 + ms(49)),
            Next::WaitUntil(t0 + ms(50))
        );
        assert_eq!(
            POLICY.next(1, Some(t0), None, false, t0 + ms(50)),
            Next::Flush
        );
        assert_eq!(
            POLICY.next(1, Some(t0), None, false, t0 + ms(900)),
            Next::Flush
        );
    }

    #[test]
    fn draining_flushes_at_once_unless_backing_off() {
        let t0 = Instant::now();
        assert_eq!(POLICY.next(1, Some(t0), None, true, t0), Next::Flush);
        let retry = t0 + ms(200);
        assert_eq!(
            POLICY.next(1, Some(t0), Some(retry), true, t0),
            Next::WaitUntil(retry)
        );
        assert_eq!(
            POLICY.next(1, Some(t0), Some(retry), true, retry),
            Next::Flush
        );
    }

    #[test]
    fn backoff_holds_a_full_batch_until_the_retry() {
        let t0 = Instant::now();
        let retry = t0 + ms(400);
        assert_eq!(
            POLICY.next(5000, Some(t0), Some(retry), false, t0 + ms(10)),
            Next::WaitUntil(retry)
        );
        assert_eq!(
            POLICY.next(5000, Some(t0), Some(retry), false, retry),
            Next::Flush
        );
    }

    #[test]
    fn backoff_schedule_doubles_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(RETRY_BASE, RETRY_MAX);
        let delays: Vec<u64> = (0..8).map(|_| b.failed(t0).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.failures(), 8);
        assert_eq!(b.retry_at(), Some(t0 + ms(2000)));
        b.retry_now();
        assert_eq!(b.retry_at(), None);
        assert_eq!(b.failed(t0).as_millis(), 2000, "retry_now keeps the count");
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.retry_at(), None);
        assert_eq!(b.failed(t0 + ms(5)), ms(100));
        assert_eq!(b.retry_at(), Some(t0 + ms(105)));
    }

    #[test]
    fn backoff_never_overflows() {
        let t0 = Instant::now();
        let mut b = Backoff::new(RETRY_BASE, RETRY_MAX);
        for _ in 0..1000 {
            assert!(b.failed(t0) <= RETRY_MAX);
        }
    }

    #[test]
    fn buffer_full_refuses_new_messages() {
        assert!(admit(0, 1));
        assert!(admit(9, 10));
        assert!(!admit(10, 10));
        assert!(
            !admit(12, 10),
            "an overshoot from racing cores still refuses"
        );
        assert!(admit(99_999, 100_000));
    }
}
