//! Per-user message rate limit and per-connection typing throttle.
//!
//! The contract (PROTOCOL.md section 5) allows `RATE_LIMIT_MAX_MESSAGES` messages per user in any
//! `RATE_LIMIT_WINDOW_MS` window, counted across all of that user's connections on the instance.
//! [`RateLimiter`] implements that as an exact *sliding-window log*: for each user it remembers the
//! times of the messages that still count, so "30 per minute" means 30 in *any* 60 s span, not 30
//! per calendar minute (a fixed window would let a client send 60 messages across a minute
//! boundary). The log never needs more than `max` entries per user, because once `max` messages
//! are inside the window nothing older can change a decision.
//!
//! [`TypingThrottle`] bounds `typing` events, which the contract says are not rate limited as
//! messages but whose flood must still be bounded. It is a token bucket kept as a single
//! "theoretical arrival time" (the GCRA formulation), so it is `Copy` and costs a few words per
//! connection.
//!
//! Both types are pure: the caller passes the current time, nothing here reads a clock, and the
//! state is owned by one executor core, so there is no locking.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Outcome of [`RateLimiter::check_and_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The message counts against the quota; `remaining` more are allowed in the current window.
    Allowed {
        /// Messages the user may still send before being limited (after this one).
        remaining: u32,
    },
    /// The message was not counted; the user may send again after `retry_after`.
    Limited {
        /// Time until the oldest counted message leaves the window, rounded up to whole
        /// milliseconds so a client that waits exactly this long is allowed.
        retry_after: Duration,
    },
}

/// Exact sliding-window log of message times per user.
///
/// Bounds: each tracked user holds at most `max` timestamps. The number of tracked users is the
/// number of users who sent a message within the last window, provided [`RateLimiter::sweep`] is
/// called periodically (users are never dropped while they still have messages in their window,
/// because forgetting them early would let them exceed the limit).
#[derive(Debug)]
pub struct RateLimiter {
    /// Messages allowed per window; at least 1.
    max: u32,
    /// Length of the sliding window.
    window: Duration,
    /// Per user, the times of the most recent (at most `max`) recorded messages, oldest first.
    /// Entries that have left the window are pruned lazily on the next write for that user, or by
    /// `sweep`.
    logs: HashMap<Box<str>, VecDeque<Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `max` messages in any span of `window`. A `max` of 0 is treated as 1:
    /// a limiter that refuses everything is better expressed by not accepting messages at all.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            logs: HashMap::new(),
        }
    }

    /// The configured maximum per window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The configured window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether `user` may send a message at `now` (without recording it).
    pub fn is_allowed(&self, user: &str, now: Instant) -> bool {
        self.counted(user, now) < self.max as usize
    }

    /// Records a message from `user` at `now`, whether or not it was allowed.
    ///
    /// Times are expected to be non-decreasing per user (they come from a monotonic clock on one
    /// core); an earlier `now` is recorded as the latest time already seen so the log stays sorted.
    pub fn record_message(&mut self, user: &str, now: Instant) {
        let (max, window) = (self.max as usize, self.window);
        let log = self.log_mut(user);
        prune(log, window, now);
        let at = log.back().map_or(now, |&last| last.max(now));
        if log.len() == max {
            // Only the newest `max` times can ever matter (see the module doc).
            log.pop_front();
        }
        log.push_back(at);
    }

    /// How many more messages `user` may send at `now`.
    pub fn remaining_quota(&self, user: &str, now: Instant) -> u32 {
        // `counted` is at most `max` because a log never holds more than `max` entries.
        self.max - self.counted(user, now) as u32
    }

    /// Checks the limit and, when allowed, records the message: the usual entry point for a send.
    ///
    /// A limited message is not recorded, so a client hammering a full window does not push its
    /// own retry time further out.
    pub fn check_and_record(&mut self, user: &str, now: Instant) -> Decision {
        let (max, window) = (self.max as usize, self.window);
        let log = self.log_mut(user);
        prune(log, window, now);
        if log.len() >= max {
            // The window holds `max` messages; the oldest leaves it at `oldest + window`.
            let oldest = log[0];
            let wait = (oldest + window).saturating_duration_since(now);
            return Decision::Limited {
                retry_after: round_up_to_ms(wait),
            };
        }
        let at = log.back().map_or(now, |&last| last.max(now));
        log.push_back(at);
        Decision::Allowed {
            remaining: (max - log.len()) as u32,
        }
    }

    /// Forgets users with nothing left in their window and returns how many were dropped. Call it
    /// periodically (say once per window) to keep the map to the recently active users.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let window = self.window;
        let before = self.logs.len();
        // The newest entry is the last to expire: if it is out of the window, all are.
        self.logs
            .retain(|_, log| log.back().is_some_and(|&t| in_window(t, window, now)));
        before - self.logs.len()
    }

    /// Number of users currently holding a log.
    pub fn tracked_users(&self) -> usize {
        self.logs.len()
    }

    /// Number of `user`'s recorded messages still inside the window at `now`.
    fn counted(&self, user: &str, now: Instant) -> usize {
        let Some(log) = self.logs.get(user) else {
            return 0;
        };
        // The log is sorted, so the expired entries form a prefix.
        let expired = log.partition_point(|&t| !in_window(t, self.window, now));
        log.len() - expired
    }

    /// The user's log, created empty on first use. Allocates the key only for a new user.
    fn log_mut(&mut self, user: &str) -> &mut VecDeque<Instant> {
        if !self.logs.contains_key(user) {
            self.logs.insert(user.into(), VecDeque::new());
        }
        self.logs.get_mut(user).expect("inserted above")
    }
}

/// Whether a message recorded at `t` still counts at `now`: it leaves the window exactly at
/// `t + window`, so a client that waits the advertised `retry_after` is allowed.
fn in_window(t: Instant, window: Duration, now: Instant) -> bool {
    now.saturating_duration_since(t) < window
}

/// Drops the entries of a sorted log that have left the window.
fn prune(log: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while log.front().is_some_and(|&t| !in_window(t, window, now)) {
        log.pop_front();
    }
}

/// Rounds up to a whole number of milliseconds (the wire carries `retryAfterMs`); rounding down
/// would tell the client to retry a moment too early and be refused again.
fn round_up_to_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Token bucket for `typing` events on one connection: up to `burst` events at once, then one per
/// `interval`. Excess events are meant to be dropped silently (a typing indicator is advisory).
///
/// Kept as GCRA: `tat` is the time at which the bucket would be full again. An event is allowed if
/// charging it (`max(tat, now) + interval`) stays within `burst * interval` of `now`.
#[derive(Debug, Clone, Copy)]
pub struct TypingThrottle {
    /// Theoretical arrival time: when the bucket is full again given the events allowed so far.
    tat: Instant,
    /// Cost of one event, i.e. the refill period of one token.
    interval: Duration,
    /// `burst * interval`: how far ahead of `now` the charged time may run.
    tolerance: Duration,
}

impl TypingThrottle {
    /// A full bucket at `now`. A `burst` of 0 is treated as 1 so at least one event per interval
    /// gets through.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> Self {
        Self {
            tat: now,
            interval,
            tolerance: interval.saturating_mul(burst.max(1)),
        }
    }

    /// Whether an event at `now` may be relayed; if so it consumes a token.
    pub fn allow(&mut self, now: Instant) -> bool {
        let charged = self.tat.max(now) + self.interval;
        if charged.saturating_duration_since(now) <= self.tolerance {
            self.tat = charged;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn thirty_allowed_then_limited_until_first_leaves() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(30, WINDOW);
        for i in 0..30u64 {
            // One message every 100 ms, the first at t0.
            let d = rl.check_and_record("alice", t0 + ms(i * 100));
            assert_eq!(
                d,
                Decision::Allowed {
                    remaining: 29 - i as u32
                }
            );
        }
        let now = t0 + ms(5_000);
        assert!(!rl.is_allowed("alice", now));
        assert_eq!(
            rl.check_and_record("alice", now),
            Decision::Limited {
                retry_after: WINDOW - ms(5_000)
            }
        );
        // One millisecond before the first message leaves the window: still limited.
        assert_eq!(
            rl.check_and_record("alice", t0 + WINDOW - ms(1)),
            Decision::Limited { retry_after: ms(1) }
        );
        // Exactly at the boundary the first message no longer counts.
        assert!(rl.is_allowed("alice", t0 + WINDOW));
        assert_eq!(
            rl.check_and_record("alice", t0 + WINDOW),
            Decision::Allowed { remaining: 0 }
        );
        // The second message (t0 + 100 ms) is now the oldest counted one.
        assert_eq!(
            rl.check_and_record("alice", t0 + WINDOW + ms(10)),
            Decision::Limited {
                retry_after: ms(90)
            }
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_ms() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, ms(1_000));
        rl.record_message("u", t0);
        let now = t0 + Duration::from_micros(400_500);
        assert_eq!(
            rl.check_and_record("u", now),
            Decision::Limited {
                retry_after: ms(600)
            }
        );
    }

    #[test]
    fn window_slides_rather_than_resetting() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(3, ms(1_000));
        // Two early, one late in the first second.
        rl.record_message("u", t0);
        rl.record_message("u", t0 + ms(100));
        rl.record_message("u", t0 + ms(900));
        // A fixed window would reset at t0 + 1000 and allow 3 more; a sliding one frees only the
        // first two slots by t0 + 1100, and the third stays counted until t0 + 1900.
        assert_eq!(rl.remaining_quota("u", t0 + ms(1_000)), 1);
        assert_eq!(rl.remaining_quota("u", t0 + ms(1_100)), 2);
        assert!(matches!(
            rl.check_and_record("u", t0 + ms(1_100)),
            Decision::Allowed { remaining: 1 }
        ));
        assert!(matches!(
            rl.check_and_record("u", t0 + ms(1_100)),
            Decision::Allowed { remaining: 0 }
        ));
        assert_eq!(
            rl.check_and_record("u", t0 + ms(1_200)),
            Decision::Limited {
                retry_after: ms(700)
            }
        );
        assert!(rl.is_allowed("u", t0 + ms(1_900)));
    }

    #[test]
    fn users_are_independent() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(2, WINDOW);
        assert!(matches!(
            rl.check_and_record("a", t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check_and_record("a", t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check_and_record("a", t0),
            Decision::Limited { .. }
        ));
        assert!(rl.is_allowed("b", t0));
        assert_eq!(
            rl.check_and_record("b", t0),
            Decision::Allowed { remaining: 1 }
        );
        assert_eq!(rl.tracked_users(), 2);
    }

    #[test]
    fn remaining_quota_counts_down_and_never_underflows() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(3, WINDOW);
        assert_eq!(rl.remaining_quota("u", t0), 3);
        rl.record_message("u", t0);
        assert_eq!(rl.remaining_quota("u", t0), 2);
        rl.record_message("u", t0 + ms(1));
        rl.record_message("u", t0 + ms(2));
        assert_eq!(rl.remaining_quota("u", t0 + ms(3)), 0);
        assert!(!rl.is_allowed("u", t0 + ms(3)));
        // Recording past the limit keeps at most `max` entries and still reports 0.
        rl.record_message("u", t0 + ms(4));
        assert_eq!(rl.remaining_quota("u", t0 + ms(5)), 0);
        assert_eq!(rl.logs["u"].len(), 3);
        // The entries kept are the newest three (1, 2, 4 ms), so the slot frees at 1 ms + window.
        assert_eq!(rl.remaining_quota("u", t0 + WINDOW + ms(1)), 1);
    }

    #[test]
    fn limited_attempts_are_not_recorded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, ms(1_000));
        rl.check_and_record("u", t0);
        for i in 1..10 {
            assert!(matches!(
                rl.check_and_record("u", t0 + ms(i * 50)),
                Decision::Limited { .. }
            ));
        }
        assert!(rl.is_allowed("u", t0 + ms(1_000)));
    }

    #[test]
    fn sweep_drops_idle_users_and_keeps_active_ones() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(5, ms(1_000));
        rl.record_message("idle", t0);
        rl.record_message("busy", t0);
        rl.record_message("busy", t0 + ms(600));
        assert_eq!(rl.sweep(t0 + ms(999)), 0);
        assert_eq!(rl.sweep(t0 + ms(1_000)), 1);
        assert_eq!(rl.tracked_users(), 1);
        assert_eq!(rl.remaining_quota("busy", t0 + ms(1_000)), 4);
        assert_eq!(rl.sweep(t0 + ms(1_600)), 1);
        assert_eq!(rl.tracked_users(), 0);
    }

    #[test]
    fn zero_max_is_treated_as_one() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(0, WINDOW);
        assert_eq!(
            rl.check_and_record("u", t0),
            Decision::Allowed { remaining: 0 }
        );
        assert!(!rl.is_allowed("u", t0));
    }

    #[test]
    fn typing_burst_then_refill() {
        let t0 = Instant::now();
        let mut th = TypingThrottle::new(3, ms(1_000), t0);
        assert!(th.allow(t0));
        assert!(th.allow(t0));
        assert!(th.allow(t0 + ms(10)));
        assert!(!th.allow(t0 + ms(20)));
        assert!(!th.allow(t0 + ms(900)));
        // One token back after one interval, and only one.
        assert!(th.allow(t0 + ms(1_000)));
        assert!(!th.allow(t0 + ms(1_001)));
        // A long pause refills to the burst, not beyond it.
        let later = t0 + ms(60_000);
        assert!(th.allow(later));
        assert!(th.allow(later));
        assert!(th.allow(later));
        assert!(!th.allow(later));
    }

    #[test]
    fn typing_zero_burst_allows_one_per_interval() {
        let t0 = Instant::now();
        let mut th = TypingThrottle::new(0, ms(500), t0);
        assert!(th.allow(t0));
        assert!(!th.allow(t0 + ms(499)));
        assert!(th.allow(t0 + ms(500)));
    }
}
