//! The Postgres writer's policy: when a batch is flushed, the bounds of the
//! wait after a failed write (the timing itself is [`crate::backoff`]), and
//! whether the write buffer can take another
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
