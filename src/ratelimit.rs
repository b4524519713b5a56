//! Per-user message rate limit, per-connection frame budgets, the per-(user, room) typing
//! throttle, and the sampler that bounds the connection and rate-limit log lines.
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
//! [`ConnBudgets`] holds one [`TokenBucket`] per frame class of a connection (`join_room` and
//! `leave_room` share one, `history` has one, `typing` one, `refresh` one), so a single
//! connection cannot turn a flood of cheap frames into owner-core, backend or JWT work. [`KeyedThrottle`] is the bounded map of
//! buckets the room owner keeps per (user, room) for typing, across the user's connections.
//! [`LogSampler`] decides which connection / rate-limit events get a log line: at most one per
//! user per window, at most a configured number per second, in bounded memory.
//!
//! Every type is pure: the caller passes the current time, nothing here reads a clock, and the
//! state is owned by one executor core, so there is no locking.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
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

    /// Removes `user`'s log and returns its times, oldest first: the log
    /// moves to another core's limiter (`crate::lease`), never copied, so
    /// the user's limit stays exact.
    pub fn take_log(&mut self, user: &str) -> Vec<Instant> {
        self.logs.remove(user).map(Vec::from).unwrap_or_default()
    }

    /// Installs a log taken from another core's limiter with
    /// [`RateLimiter::take_log`], replacing any log `user` had here.
    pub fn put_log(&mut self, user: &str, log: Vec<Instant>) {
        if log.is_empty() {
            self.logs.remove(user);
            return;
        }
        let mut log = VecDeque::from(log);
        while log.len() > self.max as usize {
            log.pop_front();
        }
        self.logs.insert(user.into(), log);
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

/// Token bucket: up to `burst` events at once, then one per `interval`. Used for every
/// per-connection frame budget and the per-(user, room) typing throttle.
///
/// Kept as GCRA: `tat` is the time at which the bucket would be full again. An event is allowed if
/// charging it (`max(tat, now) + interval`) stays within `burst * interval` of `now`. It is `Copy`
/// and costs three words, so every connection can hold several.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Theoretical arrival time: when the bucket is full again given the events allowed so far.
    tat: Instant,
    /// Cost of one event, i.e. the refill period of one token.
    interval: Duration,
    /// `burst * interval`: how far ahead of `now` the charged time may run.
    tolerance: Duration,
}

/// The typing throttle is a plain token bucket (the name it had before the other budgets).
pub type TypingThrottle = TokenBucket;

impl TokenBucket {
    /// A full bucket at `now`. A `burst` of 0 is treated as 1 so at least one event per interval
    /// gets through.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> Self {
        Self {
            tat: now,
            interval,
            tolerance: interval.saturating_mul(burst.max(1)),
        }
    }

    /// A full bucket allowing `per_sec` events per second with a burst of twice that (the burst
    /// every budget setting documents). `per_sec` 0 is treated as 1.
    pub fn per_second(per_sec: u32, now: Instant) -> Self {
        let per_sec = per_sec.max(1);
        Self::new(per_sec.saturating_mul(2), rate_interval(per_sec), now)
    }

    /// Whether an event at `now` may be relayed; if so it consumes a token.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.check(now).is_ok()
    }

    /// Like [`TokenBucket::allow`], but a refusal says how long until a token is back, rounded
    /// up to whole milliseconds (the wire's `retryAfterMs`), so a client that waits exactly that
    /// long is allowed. A refused event does not consume anything.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let charged = self.tat.max(now) + self.interval;
        let ahead = charged.saturating_duration_since(now);
        if ahead <= self.tolerance {
            self.tat = charged;
            Ok(())
        } else {
            Err(round_up_to_ms(ahead - self.tolerance))
        }
    }

    /// Whether the bucket is full again at `now`: it then behaves exactly like a new one, so a
    /// map of buckets may forget it.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

/// Per-second rates of the per-connection budgets (settings `ROOM_FRAMES_PER_SEC`,
/// `HISTORY_FRAMES_PER_SEC`, `TYPING_FRAMES_PER_SEC`); each bucket's burst is twice its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRates {
    /// `join_room` and `leave_room` frames per second per connection.
    pub rooms: u32,
    /// `history` frames per second per connection.
    pub history: u32,
    /// `typing` frames per second per connection, and per (user, room) at the room owner.
    pub typing: u32,
}

/// A frame class with its own per-connection budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// `join_room` and `leave_room`.
    Rooms,
    /// `history`.
    History,
    /// `typing`.
    Typing,
    /// `refresh`: a JWT verification each ([`REFRESH_BURST`], then one per
    /// [`REFRESH_INTERVAL`]).
    Refresh,
}

/// `refresh` frames a connection may send at once. A token is refreshed
/// once per lifetime; a few spare cover a client retrying after a refusal.
pub const REFRESH_BURST: u32 = 3;

/// One more `refresh` per this long once the burst is spent: verifying a
/// token costs CPU (microseconds for HS256, tens of them for RS256), so a
/// connection cannot turn a frame flood into signature checks.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// One connection's budgets, one bucket per frame class.
#[derive(Debug, Clone, Copy)]
pub struct ConnBudgets {
    /// `join_room` / `leave_room`.
    rooms: TokenBucket,
    /// `history`.
    history: TokenBucket,
    /// `typing`.
    typing: TokenBucket,
    /// `refresh` (a fixed budget, not a setting).
    refresh: TokenBucket,
}

impl ConnBudgets {
    /// Full buckets at `now`.
    pub fn new(rates: BudgetRates, now: Instant) -> Self {
        Self {
            rooms: TokenBucket::per_second(rates.rooms, now),
            history: TokenBucket::per_second(rates.history, now),
            typing: TokenBucket::per_second(rates.typing, now),
            refresh: TokenBucket::new(REFRESH_BURST, REFRESH_INTERVAL, now),
        }
    }

    /// Charges one frame of `class` at `now`; Err carries the time until one is allowed again.
    pub fn check(&mut self, class: FrameClass, now: Instant) -> Result<(), Duration> {
        match class {
            FrameClass::Rooms => self.rooms.check(now),
            FrameClass::History => self.history.check(now),
            FrameClass::Typing => self.typing.check(now),
            FrameClass::Refresh => self.refresh.check(now),
        }
    }
}

/// Token buckets per key (the room owner's typing throttle keyed by (room, user)), bounded.
///
/// Bounds: at most `capacity` keys. A bucket that is full again is forgotten by
/// [`KeyedThrottle::sweep`] (it behaves like a new one). When the map is full and a sweep frees
/// nothing, an event for a new key is refused (`allow` false): for typing that means the
/// indicator is dropped, which the contract allows for an advisory frame.
#[derive(Debug)]
pub struct KeyedThrottle<K> {
    /// Events per second per key (the burst is twice that).
    per_sec: u32,
    /// Most keys held (at least 1); when full of busy keys a new key is refused, not added.
    capacity: usize,
    /// The buckets of keys with a recent event.
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq> KeyedThrottle<K> {
    /// An empty throttle of `per_sec` events per key (burst twice that), holding at most
    /// `capacity` keys (at least 1).
    pub fn new(per_sec: u32, capacity: usize) -> Self {
        Self {
            per_sec,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Whether an event for `key` at `now` is allowed; if so it consumes a token.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.allow(now);
        }
        if self.buckets.len() >= self.capacity && self.sweep(now) == 0 {
            return false; // full of busy keys: refuse rather than grow
        }
        let mut bucket = TokenBucket::per_second(self.per_sec, now);
        let ok = bucket.allow(now);
        self.buckets.insert(key, bucket);
        ok
    }

    /// Forgets keys whose bucket is full again; returns how many were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, b| !b.is_full(now));
        before - self.buckets.len()
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Users a [`LogSampler`] remembers at most; past it (and after a sweep) lines for new users are
/// suppressed and counted, so memory stays bounded whatever the connection rate.
pub const LOG_SAMPLER_USERS: usize = 10_000;

/// Decides which events of a kind (a connection opened, a user was rate limited) get a log line:
/// at most one line per user per `window`, and at most `per_sec` lines per second overall (burst
/// `per_sec`). Suppressed events are counted and the count is reported with the next line, so the
/// log says how much it left out.
///
/// Bounds: at most [`LOG_SAMPLER_USERS`] users remembered (see there for the outcome when full);
/// [`LogSampler::sweep`] forgets users whose window has passed.
#[derive(Debug)]
pub struct LogSampler {
    /// A user gets at most one line per window.
    window: Duration,
    /// Lines per second overall; None: the log is off.
    global: Option<TokenBucket>,
    /// Most users remembered (at least 1); when full of recent users a new user's line is
    /// suppressed.
    capacity: usize,
    /// When each remembered user last got a line.
    last: HashMap<Arc<str>, Instant>,
    /// Events suppressed since the last line.
    suppressed: u64,
}

impl LogSampler {
    /// A sampler allowing one line per user per `window` and `per_sec` lines per second; a
    /// `per_sec` of 0 turns the line off.
    pub fn new(window: Duration, per_sec: u32, capacity: usize, now: Instant) -> Self {
        Self {
            window,
            global: (per_sec > 0).then(|| TokenBucket::new(per_sec, rate_interval(per_sec), now)),
            capacity: capacity.max(1),
            last: HashMap::new(),
            suppressed: 0,
        }
    }

    /// Whether an event of `user` at `now` gets a line. `Some(n)`: log it, and say that `n`
    /// events were suppressed since the previous line; None: suppressed (and counted).
    pub fn admit(&mut self, user: &Arc<str>, now: Instant) -> Option<u64> {
        let Some(global) = self.global.as_mut() else {
            return None; // off: nothing to count either
        };
        let recent = self
            .last
            .get(user)
            .is_some_and(|&t| now.saturating_duration_since(t) < self.window);
        if recent {
            self.suppressed += 1;
            return None;
        }
        if !self.last.contains_key(user) && self.last.len() >= self.capacity {
            let window = self.window;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < window);
            if self.last.len() >= self.capacity {
                self.suppressed += 1;
                return None;
            }
        }
        if !global.allow(now) {
            self.suppressed += 1;
            return None;
        }
        self.last.insert(user.clone(), now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Forgets users whose window has passed; returns how many were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let window = self.window;
        let before = self.last.len();
        self.last
            .retain(|_, t| now.saturating_duration_since(*t) < window);
        before - self.last.len()
    }

    /// Users remembered now.
    pub fn tracked_users(&self) -> usize {
        self.last.len()
    }
}

/// The interval between two events at `per_sec` per second (`per_sec` at least 1).
fn rate_interval(per_sec: u32) -> Duration {
    Duration::from_nanos(1_000_000_000 / u64::from(per_sec.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_moved_log_keeps_counting_where_it_left_off() {
        let t0 = Instant::now();
        let mut owner = RateLimiter::new(3, WINDOW);
        let mut member = RateLimiter::new(3, WINDOW);
        owner.check_and_record("ann", t0);
        owner.check_and_record("ann", t0 + ms(10));
        member.put_log("ann", owner.take_log("ann"));
        assert_eq!(owner.tracked_users(), 0, "moved, not copied");
        assert_eq!(
            member.check_and_record("ann", t0 + ms(20)),
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(
            member.check_and_record("ann", t0 + ms(30)),
            Decision::Limited {
                retry_after: WINDOW - ms(30)
            }
        );
        owner.put_log("ann", member.take_log("ann"));
        assert!(!owner.is_allowed("ann", t0 + ms(40)));
        assert!(owner.is_allowed("ann", t0 + WINDOW));
        // An empty log installs nothing.
        owner.put_log("bob", Vec::new());
        assert_eq!(owner.tracked_users(), 1);
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

    #[test]
    fn bucket_refusal_says_when_the_next_token_is_back() {
        let t0 = Instant::now();
        // 10 per second, burst 20.
        let mut b = TokenBucket::per_second(10, t0);
        for _ in 0..20 {
            assert_eq!(b.check(t0), Ok(()));
        }
        assert_eq!(b.check(t0), Err(ms(100)));
        assert_eq!(
            b.check(t0 + ms(40)),
            Err(ms(60)),
            "a refusal consumes nothing"
        );
        assert_eq!(b.check(t0 + ms(100)), Ok(()));
        assert_eq!(b.check(t0 + ms(100)), Err(ms(100)));
        assert!(!b.is_full(t0 + ms(1_999)));
        assert!(b.is_full(t0 + ms(2_100)));
    }

    #[test]
    fn connection_budgets_are_per_class() {
        let t0 = Instant::now();
        let rates = BudgetRates {
            rooms: 2,
            history: 1,
            typing: 5,
        };
        let mut c = ConnBudgets::new(rates, t0);
        for _ in 0..4 {
            assert!(c.check(FrameClass::Rooms, t0).is_ok());
        }
        assert_eq!(c.check(FrameClass::Rooms, t0), Err(ms(500)));
        // Other classes are untouched by the exhausted one.
        assert!(c.check(FrameClass::History, t0).is_ok());
        assert!(c.check(FrameClass::History, t0).is_ok());
        assert_eq!(c.check(FrameClass::History, t0), Err(ms(1_000)));
        for _ in 0..10 {
            assert!(c.check(FrameClass::Typing, t0).is_ok());
        }
        assert_eq!(c.check(FrameClass::Typing, t0), Err(ms(200)));
        assert!(c.check(FrameClass::Rooms, t0 + ms(500)).is_ok());
        // `refresh`: 3 at once, then one per 10 s.
        for _ in 0..REFRESH_BURST {
            assert!(c.check(FrameClass::Refresh, t0).is_ok());
        }
        assert_eq!(c.check(FrameClass::Refresh, t0), Err(ms(10_000)));
        assert_eq!(c.check(FrameClass::Refresh, t0 + ms(9_000)), Err(ms(1_000)));
        assert!(c.check(FrameClass::Refresh, t0 + ms(10_000)).is_ok());
        assert!(c.check(FrameClass::Refresh, t0 + ms(10_000)).is_err());
    }

    #[test]
    fn keyed_throttle_is_per_key_bounded_and_swept() {
        let t0 = Instant::now();
        // 1 per second, burst 2, at most 2 keys.
        let mut k: KeyedThrottle<(&str, &str)> = KeyedThrottle::new(1, 2);
        assert!(k.allow(("r", "ann"), t0));
        assert!(k.allow(("r", "ann"), t0));
        assert!(!k.allow(("r", "ann"), t0), "ann's budget in r is spent");
        assert!(k.allow(("r", "bob"), t0), "bob has his own");
        // Full of busy keys: a third key is refused rather than stored.
        assert!(!k.allow(("r", "cat"), t0 + ms(10)));
        assert_eq!(k.len(), 2);
        // Once ann's bucket is full again a sweep frees her slot, and cat gets it.
        assert_eq!(
            k.sweep(t0 + ms(1_500)),
            1,
            "bob's bucket (one event) refilled"
        );
        assert!(k.allow(("r", "cat"), t0 + ms(2_000)));
        assert_eq!(k.sweep(t0 + ms(10_000)), 2);
        assert!(k.is_empty());
    }

    #[test]
    fn sampler_logs_once_per_user_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let ann: Arc<str> = Arc::from("ann");
        let bob: Arc<str> = Arc::from("bob");
        let mut s = LogSampler::new(ms(60_000), 100, 10, t0);
        assert_eq!(s.admit(&ann, t0), Some(0));
        for i in 1..=5 {
            assert_eq!(s.admit(&ann, t0 + ms(i)), None);
        }
        // The next line reports what was left out.
        assert_eq!(s.admit(&bob, t0 + ms(10)), Some(5));
        assert_eq!(s.admit(&ann, t0 + ms(59_999)), None);
        assert_eq!(s.admit(&ann, t0 + ms(60_000)), Some(1));
    }

    #[test]
    fn sampler_rate_caps_lines_and_zero_turns_it_off() {
        let t0 = Instant::now();
        let mut s = LogSampler::new(ms(60_000), 3, 1_000, t0);
        let users: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("u{i}"))).collect();
        let logged = users.iter().filter(|u| s.admit(u, t0).is_some()).count();
        assert_eq!(
            logged, 3,
            "burst of 3 lines, then one per third of a second"
        );
        assert_eq!(s.admit(&users[9], t0 + ms(333)), None);
        assert_eq!(s.admit(&users[9], t0 + ms(334)), Some(8));
        let mut off = LogSampler::new(ms(60_000), 0, 1_000, t0);
        assert_eq!(off.admit(&users[0], t0), None);
        assert_eq!(off.tracked_users(), 0);
    }

    #[test]
    fn sampler_memory_is_bounded_and_swept() {
        let t0 = Instant::now();
        let mut s = LogSampler::new(ms(1_000), 1_000, 2, t0);
        let u = |i: u32| -> Arc<str> { Arc::from(format!("u{i}")) };
        assert!(s.admit(&u(1), t0).is_some());
        assert!(s.admit(&u(2), t0).is_some());
        // Full and nobody's window has passed: a new user is suppressed, not stored.
        assert_eq!(s.admit(&u(3), t0 + ms(500)), None);
        assert_eq!(s.tracked_users(), 2);
        // Once the windows pass, room is made on demand.
        assert_eq!(s.admit(&u(3), t0 + ms(1_000)), Some(1));
        assert_eq!(s.tracked_users(), 1);
        assert_eq!(s.sweep(t0 + ms(2_000)), 1);
        assert_eq!(s.tracked_users(), 0);
    }
}
