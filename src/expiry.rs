//! Token expiry deadlines of one core's connections (contract section 8): a
//! coarse timing wheel, so that 100,000 connections with tokens cost no
//! task and no timer each, only an entry here and a look at the due buckets
//! on every sweep.
//!
//! Deadlines are kept exactly (one `Instant` per connection) and filed in
//! buckets of [`EXPIRY_TICK`] by the tick they fall in. Moving or removing a
//! deadline is O(1): the connection's old bucket entry stays behind and is
//! recognised as stale (its tick no longer matches the connection's
//! deadline) and dropped when its bucket comes due. Stale entries are
//! counted; once they outnumber the live ones (and a floor) the buckets are
//! rebuilt from the deadlines, so memory stays proportional to the live
//! deadlines however often a connection refreshes.
//!
//! Plain code: the caller passes `now`, nothing here reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::shard::ConnId;

/// Width of a bucket. Only the filing is this coarse: a due bucket's
/// entries are compared with their exact deadline, so nobody expires early.
pub const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Stale entries tolerated before a rebuild, whatever the live count (a
/// rebuild of a handful of deadlines is not worth doing often).
const STALE_FLOOR: usize = 1024;

/// Deadlines by connection, filed in buckets of [`EXPIRY_TICK`].
#[derive(Debug)]
pub struct ExpiryWheel {
    /// Tick 0 starts here: a deadline's bucket is its whole ticks since.
    origin: Instant,
    /// Connections by the tick of their deadline, plus stale entries left
    /// by moves and removals (dropped when their bucket comes due).
    buckets: BTreeMap<u64, Vec<ConnId>>,
    /// Each connection's live deadline: the authority a bucket entry is
    /// checked against.
    deadlines: HashMap<ConnId, Instant>,
    /// Bucket entries that no longer match `deadlines`; a rebuild resets it.
    stale: usize,
}

impl ExpiryWheel {
    /// An empty wheel whose tick 0 starts at `origin`.
    pub fn new(origin: Instant) -> ExpiryWheel {
        ExpiryWheel {
            origin,
            buckets: BTreeMap::new(),
            deadlines: HashMap::new(),
            stale: 0,
        }
    }

    /// The bucket `at` falls in (deadlines before the origin in bucket 0).
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / EXPIRY_TICK.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sets `conn`'s deadline, replacing any earlier one (a refresh).
    pub fn insert(&mut self, conn: ConnId, deadline: Instant) {
        let tick = self.tick_of(deadline);
        match self.deadlines.insert(conn, deadline) {
            // Same bucket: its entry still matches.
            Some(old) if self.tick_of(old) == tick => return,
            Some(_) => self.stale += 1,
            None => {}
        }
        self.buckets.entry(tick).or_default().push(conn);
        self.compact();
    }

    /// Removes `conn`'s deadline (closed, or a token without `exp`);
    /// returns it.
    pub fn remove(&mut self, conn: ConnId) -> Option<Instant> {
        let old = self.deadlines.remove(&conn)?;
        self.stale += 1;
        self.compact();
        Some(old)
    }

    /// `conn`'s deadline, if it has one.
    pub fn deadline(&self, conn: ConnId) -> Option<Instant> {
        self.deadlines.get(&conn).copied()
    }

    /// Connections with a deadline.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// True when no connection has a deadline.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Bucket entries held, stale ones included (what the memory costs).
    pub fn entries(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    /// Takes out every connection whose deadline is at or before `now`, by
    /// deadline bucket, oldest first; they no longer have a deadline.
    pub fn expired(&mut self, now: Instant) -> Vec<ConnId> {
        let current = self.tick_of(now);
        let mut out = Vec::new();
        let later = match current.checked_add(1) {
            Some(next) => self.buckets.split_off(&next),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.buckets, later);
        for (tick, conns) in due {
            let mut keep = Vec::new();
            for conn in conns {
                match self.deadlines.get(&conn) {
                    Some(&d) if self.tick_of(d) == tick => {
                        if d <= now {
                            self.deadlines.remove(&conn);
                            out.push(conn);
                        } else {
                            // Later within the current tick.
                            keep.push(conn);
                        }
                    }
                    _ => self.stale = self.stale.saturating_sub(1),
                }
            }
            if !keep.is_empty() {
                self.buckets.insert(tick, keep);
            }
        }
        out
    }

    /// Rebuilds the buckets from the live deadlines once stale entries
    /// outnumber them: amortised O(1) per move or removal.
    fn compact(&mut self) {
        if self.stale <= STALE_FLOOR || self.stale <= self.deadlines.len() {
            return;
        }
        let mut buckets: BTreeMap<u64, Vec<ConnId>> = BTreeMap::new();
        for (&conn, &deadline) in &self.deadlines {
            buckets
                .entry(self.tick_of(deadline))
                .or_default()
                .push(conn);
        }
        self.buckets = buckets;
        self.stale = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> ConnId {
        ConnId::new(0, n)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_deadline_expires_at_its_instant_and_not_before() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        let deadline = t0 + Duration::from_millis(2_500);
        w.insert(conn(1), deadline);
        assert_eq!(w.deadline(conn(1)), Some(deadline));
        assert!(w.expired(t0 + secs(2)).is_empty());
        // Same bucket as the deadline, a moment before it.
        assert!(w.expired(deadline - Duration::from_millis(1)).is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(w.expired(deadline), vec![conn(1)]);
        assert!(w.is_empty());
        assert_eq!(w.deadline(conn(1)), None);
        assert!(w.expired(t0 + secs(60)).is_empty(), "taken out once");
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn a_refresh_moves_the_deadline() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(1), t0 + secs(5));
        w.insert(conn(1), t0 + secs(30));
        assert!(w.expired(t0 + secs(10)).is_empty(), "old deadline moved");
        assert_eq!(w.deadline(conn(1)), Some(t0 + secs(30)));
        assert_eq!(w.expired(t0 + secs(30)), vec![conn(1)]);
        // Moved earlier works too.
        w.insert(conn(2), t0 + secs(100));
        w.insert(conn(2), t0 + secs(40));
        assert_eq!(w.expired(t0 + secs(41)), vec![conn(2)]);
        assert!(w.expired(t0 + secs(200)).is_empty());
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn moving_within_a_bucket_keeps_one_entry() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(1), t0 + Duration::from_millis(5_100));
        w.insert(conn(1), t0 + Duration::from_millis(5_900));
        assert_eq!(w.entries(), 1);
        assert!(w.expired(t0 + Duration::from_millis(5_500)).is_empty());
        assert_eq!(w.expired(t0 + Duration::from_millis(5_900)), vec![conn(1)]);
    }

    #[test]
    fn a_moved_back_deadline_expires_once() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(1), t0 + secs(5));
        w.insert(conn(1), t0 + secs(9));
        w.insert(conn(1), t0 + secs(5));
        assert_eq!(w.expired(t0 + secs(20)), vec![conn(1)]);
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn removal_on_close() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(1), t0 + secs(5));
        w.insert(conn(2), t0 + secs(5));
        assert_eq!(w.remove(conn(1)), Some(t0 + secs(5)));
        assert_eq!(w.remove(conn(1)), None);
        assert_eq!(w.remove(conn(3)), None, "never had one");
        assert_eq!(w.expired(t0 + secs(5)), vec![conn(2)]);
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn many_connections_in_one_bucket() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        for n in 0..10_000 {
            // All within the same second, in order.
            w.insert(conn(n), t0 + secs(7) + Duration::from_micros(n * 10));
        }
        for n in (0..10_000).step_by(2) {
            w.remove(conn(n));
        }
        let half = t0 + secs(7) + Duration::from_micros(50_000);
        let first = w.expired(half);
        let odd_up_to_5000: Vec<ConnId> = (1..=5_000).step_by(2).map(conn).collect();
        assert_eq!(first, odd_up_to_5000);
        let rest = w.expired(t0 + secs(8));
        assert_eq!(rest.len(), 2_500);
        assert!(w.is_empty());
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn deadlines_far_out() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        let year = secs(365 * 24 * 3600);
        w.insert(conn(1), t0 + year);
        w.insert(conn(2), t0 + year * 50);
        assert!(w.expired(t0 + year - secs(1)).is_empty());
        assert_eq!(w.expired(t0 + year), vec![conn(1)]);
        assert_eq!(w.expired(t0 + year * 50), vec![conn(2)]);
    }

    #[test]
    fn a_deadline_already_passed_expires_at_the_next_look() {
        let t0 = Instant::now() + secs(100);
        let mut w = ExpiryWheel::new(t0);
        // Before the wheel's origin, and past at the time of insertion.
        w.insert(conn(1), t0 - secs(50));
        w.insert(conn(2), t0 + secs(3));
        assert_eq!(w.expired(t0 + secs(4)), vec![conn(1), conn(2)]);
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(3), t0);
        assert_eq!(w.expired(t0), vec![conn(3)]);
    }

    #[test]
    fn expired_comes_oldest_bucket_first() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(3), t0 + secs(9));
        w.insert(conn(1), t0 + secs(2));
        w.insert(conn(2), t0 + secs(5));
        assert_eq!(w.expired(t0 + secs(10)), vec![conn(1), conn(2), conn(3)]);
    }

    #[test]
    fn refreshes_do_not_pile_up_entries() {
        let t0 = Instant::now();
        let mut w = ExpiryWheel::new(t0);
        w.insert(conn(1), t0 + secs(1));
        // A connection refreshing a long way out, over and over.
        for n in 0..100_000u64 {
            w.insert(conn(1), t0 + secs(1_000 + n));
        }
        assert!(w.entries() <= STALE_FLOOR + 2, "{}", w.entries());
        assert_eq!(w.deadline(conn(1)), Some(t0 + secs(100_999)));
        assert!(w.expired(t0 + secs(100_998)).is_empty());
        assert_eq!(w.expired(t0 + secs(100_999)), vec![conn(1)]);
        // Open and close churn is bounded the same way.
        for n in 0..10_000u64 {
            w.insert(conn(n), t0 + secs(200_000 + n));
            w.remove(conn(n));
        }
        assert!(w.entries() <= STALE_FLOOR + 1, "{}", w.entries());
        assert!(w.is_empty());
    }
}
