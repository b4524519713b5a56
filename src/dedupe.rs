//! Idempotent sends keyed by `(userId, clientMsgId)`.
//!
//! PROTOCOL.md section 3: a repeat of the same `(userId, clientMsgId)` within 5 minutes is not
//! stored or broadcast again, and the sender gets the original `messageId` in an `ack`. Clients
//! retry after a reconnect without knowing whether the first attempt landed, so this is what
//! makes "send until acknowledged" safe.
//!
//! A first send is *pending* from [`Dedupe::begin`] until the room's owner core has assigned its
//! id ([`Dedupe::complete`]) or refused it ([`Dedupe::abort`]). A duplicate arriving meanwhile
//! cannot be answered yet, so its caller hands in a waiter value (for example a reply channel)
//! that is handed back on completion or abort. The 5 minute window runs from completion, i.e.
//! from when the first send was accepted.
//!
//! Bounds: at most `capacity` entries. At the bound the oldest entry is forgotten early and
//! counted ([`Dedupe::forgotten_early`]); a retry of a forgotten send is then treated as new,
//! which is the one way a duplicate can get through, and only under more distinct sends per
//! window than the store was sized for. Entries are ordered in a FIFO by the time their window
//! starts, so [`Dedupe::sweep`] and eviction take the oldest first in O(1) amortised.
//!
//! A user's entries can move to another core's store with the user's rate-limit log
//! (`crate::lease`): [`Dedupe::take_user`] removes them (an index by user finds them without a
//! scan) and [`Dedupe::put_user`] adds them with their window starts unchanged. Moved-in entries
//! join the back of the FIFO although they may be older than entries ahead of them; a lookup
//! checks each entry's own window, so this only delays their reclaim by the sweep, by at most one
//! window.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulid::Ulid;

/// How long a completed send is remembered (PROTOCOL.md: 5 minutes).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(300);

/// Stale FIFO entries tolerated on top of twice the live count before compacting.
const COMPACT_SLACK: usize = 64;

/// Outcome of [`Dedupe::begin`].
///
/// (Not generic over the waiter type: no variant carries a waiter.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First sight of this key (or its previous entry expired): process the send, then call
    /// `complete` or `abort`. The waiter was dropped.
    New,
    /// Already accepted within the window: answer with this id and do not store or broadcast.
    /// The waiter was dropped.
    Duplicate {
        /// Id assigned to the original send.
        message_id: Ulid,
        /// Room the original send went to.
        room_id: Arc<str>,
    },
    /// The original send is still being processed; the waiter was stored and comes back from
    /// `complete` or `abort`.
    Waiting,
}

/// State of one key.
#[derive(Debug)]
enum State<W> {
    /// The first send is in flight; duplicates wait here.
    Pending {
        /// Waiters of duplicates that arrived meanwhile, in arrival order.
        waiters: Vec<W>,
    },
    /// The first send was accepted.
    Done {
        /// Its assigned id.
        message_id: Ulid,
        /// Its room.
        room_id: Arc<str>,
    },
}

/// One remembered send.
#[derive(Debug)]
struct Entry<W> {
    /// Pending or done.
    state: State<W>,
    /// Start of this entry's window: `begin` time while pending, `complete` time once done.
    since: Instant,
    /// Sequence number of this entry's live FIFO position; older FIFO entries for the same key
    /// carry smaller numbers and are stale.
    seq: u64,
}

/// The `(user, clientMsgId)` memory (see the module doc).
#[derive(Debug)]
pub struct Dedupe<W> {
    /// How long a completed send is remembered.
    window: Duration,
    /// Maximum number of entries; at least 1.
    capacity: usize,
    /// Entries by encoded key (see [`encode_key`]).
    entries: HashMap<Arc<str>, Entry<W>>,
    /// Keys in order of their window start, oldest first, with the sequence number they were
    /// queued under. An entry whose `seq` differs (re-queued on completion) or whose key is gone
    /// (aborted, expired) is stale and skipped. Compacted when it exceeds twice the live count.
    fifo: VecDeque<(Arc<str>, u64)>,
    /// Next sequence number to hand out.
    next_seq: u64,
    /// The keys of each user's live entries: what [`Dedupe::take_user`] moves without scanning
    /// every entry. Kept in step with `entries` (a key is listed once while it is live).
    by_user: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Scratch buffer for encoding lookup keys, reused so lookups do not allocate.
    key_buf: String,
    /// Entries dropped at the capacity bound before their window ended.
    forgotten_early: u64,
}

impl<W> Dedupe<W> {
    /// Remembers completed sends for `window`, holding at most `capacity` entries (0 is treated
    /// as 1).
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            fifo: VecDeque::new(),
            by_user: HashMap::new(),
            next_seq: 0,
            key_buf: String::new(),
            forgotten_early: 0,
        }
    }

    /// Registers a send. `New`: recorded as pending. `Duplicate`: a completed entry still in its
    /// window. `Waiting`: the entry is pending and `waiter` was stored; it comes back from
    /// `complete` or `abort`. `New` and `Duplicate` drop the waiter.
    pub fn begin(&mut self, user: &str, client_msg_id: &str, waiter: W, now: Instant) -> Begin {
        encode_key(&mut self.key_buf, user, client_msg_id);
        if let Some(entry) = self.entries.get_mut(self.key_buf.as_str()) {
            match &mut entry.state {
                State::Pending { waiters } => {
                    waiters.push(waiter);
                    return Begin::Waiting;
                }
                State::Done {
                    message_id,
                    room_id,
                } if !expired(entry.since, self.window, now) => {
                    return Begin::Duplicate {
                        message_id: *message_id,
                        room_id: Arc::clone(room_id),
                    };
                }
                State::Done { .. } => {
                    // Expired but not yet swept: start over as a new send, reusing the key.
                    let key = self.take_current_key();
                    self.insert(
                        key,
                        State::Pending {
                            waiters: Vec::new(),
                        },
                        now,
                        false,
                    );
                    return Begin::New;
                }
            }
        }
        let key: Arc<str> = Arc::from(self.key_buf.as_str());
        self.insert(
            key,
            State::Pending {
                waiters: Vec::new(),
            },
            now,
            true,
        );
        Begin::New
    }

    /// Records that the send was accepted with `message_id` in `room_id`; its window starts now.
    /// Returns the waiters of duplicates that arrived while it was pending.
    ///
    /// Completing a key that is not pending (forgotten early, or never begun) records it anyway so
    /// later duplicates are caught; completing an already completed key keeps the original id.
    pub fn complete(
        &mut self,
        user: &str,
        client_msg_id: &str,
        message_id: Ulid,
        room_id: Arc<str>,
        now: Instant,
    ) -> Vec<W> {
        encode_key(&mut self.key_buf, user, client_msg_id);
        let done = State::Done {
            message_id,
            room_id,
        };
        match self.entries.get(self.key_buf.as_str()) {
            Some(Entry {
                state: State::Done { .. },
                ..
            }) => Vec::new(),
            Some(Entry {
                state: State::Pending { .. },
                ..
            }) => {
                let (key, entry) = self
                    .entries
                    .remove_entry(self.key_buf.as_str())
                    .expect("matched above");
                let State::Pending { waiters } = entry.state else {
                    unreachable!("matched pending above");
                };
                // Re-queued under the completion time: the window runs from acceptance.
                self.insert(key, done, now, false);
                waiters
            }
            None => {
                let key: Arc<str> = Arc::from(self.key_buf.as_str());
                self.insert(key, done, now, true);
                Vec::new()
            }
        }
    }

    /// The first send was refused (rate limit, moderation, backend down): forgets it so a retry
    /// is treated as new, and returns the waiters. A completed entry is kept (its message was
    /// accepted; an abort after that is a caller mistake) and nothing is returned.
    pub fn abort(&mut self, user: &str, client_msg_id: &str) -> Vec<W> {
        encode_key(&mut self.key_buf, user, client_msg_id);
        if !matches!(
            self.entries.get(self.key_buf.as_str()),
            Some(Entry {
                state: State::Pending { .. },
                ..
            })
        ) {
            return Vec::new();
        }
        // Its FIFO entry becomes stale and is skipped later.
        match self.entries.remove_entry(self.key_buf.as_str()) {
            Some((
                key,
                Entry {
                    state: State::Pending { waiters },
                    ..
                },
            )) => {
                self.unindex(&key);
                waiters
            }
            _ => Vec::new(),
        }
    }

    /// Drops entries whose window has ended and returns how many. A pending entry older than the
    /// window is dropped too (its send never finished, which is a bug elsewhere); its waiters are
    /// dropped with it, which a channel-type waiter observes as closed.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((key, seq)) = self.fifo.front() {
            match self.entries.get(key) {
                Some(entry) if entry.seq == *seq => {
                    if !expired(entry.since, self.window, now) {
                        // The FIFO is in window-start order: everything behind is younger.
                        break;
                    }
                    let key = Arc::clone(key);
                    self.entries.remove(&key);
                    self.unindex(&key);
                    dropped += 1;
                }
                _ => {} // stale
            }
            self.fifo.pop_front();
        }
        dropped
    }

    /// Number of remembered sends (pending and completed).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped at the capacity bound before their window ended.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early
    }

    /// Removes the entry for the key in `key_buf` and returns its shared key, so the caller can
    /// re-insert under a fresh FIFO position without allocating a new key. The old FIFO position
    /// becomes stale.
    fn take_current_key(&mut self) -> Arc<str> {
        let (key, _) = self
            .entries
            .remove_entry(self.key_buf.as_str())
            .expect("caller checked the key is present");
        key
    }

    /// Removes every entry of `user` (pending ones with their waiters) for
    /// [`Dedupe::put_user`] on another core's store.
    pub fn take_user(&mut self, user: &str) -> UserWindow<W> {
        let keys = self.by_user.remove(user).unwrap_or_default();
        let mut moved = Vec::with_capacity(keys.len());
        for key in keys {
            // Its FIFO entry becomes stale and is skipped later.
            if let Some(entry) = self.entries.remove(&key) {
                moved.push((key, entry.state, entry.since));
            }
        }
        UserWindow(moved)
    }

    /// Adds a user's entries taken from another store, each with its own window start. A key
    /// already here (it cannot be: one store holds a user at a time) keeps its entry.
    pub fn put_user(&mut self, window: UserWindow<W>) {
        for (key, state, since) in window.0 {
            if self.entries.contains_key(&key) {
                continue;
            }
            self.insert(key, state, since, true);
        }
    }

    /// Inserts (or replaces) `key` with a fresh FIFO position stamped `now`, evicting the oldest
    /// entry first if a new key would exceed the capacity. `fresh`: the key is not in the user
    /// index yet (a re-insert of a key just removed from `entries` keeps its index entry).
    fn insert(&mut self, key: Arc<str>, state: State<W>, now: Instant, fresh: bool) {
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                if !self.evict_oldest() {
                    break;
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if fresh {
            let user: Arc<str> = Arc::from(user_of(&key));
            self.by_user.entry(user).or_default().push(Arc::clone(&key));
        }
        self.fifo.push_back((Arc::clone(&key), seq));
        self.entries.insert(
            key,
            Entry {
                state,
                since: now,
                seq,
            },
        );
        if self.fifo.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.fifo
                .retain(|(key, seq)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Drops `key` from its user's index (the entry itself is already gone).
    fn unindex(&mut self, key: &Arc<str>) {
        let user = user_of(key);
        if let Some(keys) = self.by_user.get_mut(user) {
            if let Some(i) = keys.iter().position(|k| k == key) {
                keys.swap_remove(i);
            }
            if keys.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Forgets the oldest live entry (skipping stale FIFO entries); false if there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.fifo.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&key);
                self.unindex(&key);
                self.forgotten_early += 1;
                return true;
            }
        }
        false
    }
}

/// One user's entries on their way between two stores (see the module doc).
#[derive(Debug)]
pub struct UserWindow<W>(Vec<(Arc<str>, State<W>, Instant)>);

impl<W> UserWindow<W> {
    /// How many entries move.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the user had no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The user part of a key made by [`encode_key`].
fn user_of(key: &str) -> &str {
    let (len, rest) = key
        .split_once(':')
        .expect("encoded keys have a length prefix");
    let len: usize = len
        .parse()
        .expect("encoded keys have a numeric length prefix");
    &rest[..len]
}

/// Whether a window that started at `since` has ended at `now`.
fn expired(since: Instant, window: Duration, now: Instant) -> bool {
    now.saturating_duration_since(since) >= window
}

/// Encodes `(user, client_msg_id)` into one string key: the user's byte length, a `:`, then both
/// parts. The length prefix keeps the encoding unambiguous whatever characters either part holds
/// (a plain separator could occur inside a user id).
fn encode_key(buf: &mut String, user: &str, client_msg_id: &str) {
    buf.clear();
    // Writing to a String cannot fail.
    let _ = write!(buf, "{}:", user.len());
    buf.push_str(user);
    buf.push_str(client_msg_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn room(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_users_window_moves_whole_and_keeps_its_window_starts() {
        let t0 = Instant::now();
        let mut a: Dedupe<u32> = Dedupe::new(DEDUPE_WINDOW, 100);
        let mut b: Dedupe<u32> = Dedupe::new(DEDUPE_WINDOW, 100);
        let id = Ulid::from_parts(7, 0);
        a.begin("ann", "done", 1, t0);
        a.complete("ann", "done", id, room("r"), t0);
        a.begin("ann", "pending", 1, t0 + secs(1));
        assert_eq!(a.begin("ann", "pending", 2, t0 + secs(1)), Begin::Waiting);
        a.begin("bob", "his", 3, t0);
        let moved = a.take_user("ann");
        assert_eq!(moved.len(), 2);
        assert_eq!(a.len(), 1, "bob's entry stays");
        assert_eq!(
            a.begin("ann", "done", 4, t0 + secs(2)),
            Begin::New,
            "gone here"
        );
        b.put_user(moved);
        assert_eq!(
            b.begin("ann", "done", 5, t0 + secs(2)),
            Begin::Duplicate {
                message_id: id,
                room_id: room("r")
            }
        );
        // The pending entry kept its waiter.
        assert_eq!(
            b.complete("ann", "pending", id, room("r"), t0 + secs(3)),
            vec![2]
        );
        // The window still runs from the original completion at t0.
        assert_eq!(b.begin("ann", "done", 6, t0 + DEDUPE_WINDOW), Begin::New);
        assert!(b.take_user("nobody").is_empty());
        // The index follows aborts and sweeps: nothing stale moves.
        b.abort("ann", "done");
        b.sweep(t0 + secs(3) + DEDUPE_WINDOW);
        assert!(b.take_user("ann").is_empty());
    }

    #[test]
    fn duplicate_after_completion_returns_original_id() {
        let t0 = Instant::now();
        let mut d: Dedupe<u32> = Dedupe::new(DEDUPE_WINDOW, 100);
        let id = Ulid::from_parts(1, 7);
        assert_eq!(d.begin("alice", "c-1", 0, t0), Begin::New);
        assert!(d
            .complete("alice", "c-1", id, room("general"), t0)
            .is_empty());
        assert_eq!(
            d.begin("alice", "c-1", 0, t0 + secs(10)),
            Begin::Duplicate {
                message_id: id,
                room_id: room("general")
            }
        );
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn window_runs_from_completion() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(secs(300), 100);
        let id = Ulid::from_parts(1, 1);
        assert_eq!(d.begin("u", "c", (), t0), Begin::New);
        // Accepted 2 s after the first attempt.
        d.complete("u", "c", id, room("r"), t0 + secs(2));
        assert!(matches!(
            d.begin("u", "c", (), t0 + secs(301)),
            Begin::Duplicate { .. }
        ));
        // At completion + window it is new again.
        assert_eq!(d.begin("u", "c", (), t0 + secs(302)), Begin::New);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn users_are_independent() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(DEDUPE_WINDOW, 100);
        assert_eq!(d.begin("alice", "c-1", (), t0), Begin::New);
        d.complete("alice", "c-1", Ulid::from_parts(1, 1), room("r"), t0);
        assert_eq!(d.begin("bob", "c-1", (), t0), Begin::New);
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        assert_eq!(d.begin("ab", "c", (), t0), Begin::New);
        assert_eq!(d.begin("a", "bc", (), t0), Begin::New);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn waiters_come_back_on_completion() {
        let t0 = Instant::now();
        let mut d: Dedupe<&str> = Dedupe::new(DEDUPE_WINDOW, 100);
        assert_eq!(d.begin("u", "c", "first", t0), Begin::New);
        assert_eq!(d.begin("u", "c", "retry-1", t0), Begin::Waiting);
        assert_eq!(d.begin("u", "c", "retry-2", t0), Begin::Waiting);
        let id = Ulid::from_parts(5, 5);
        assert_eq!(
            d.complete("u", "c", id, room("r"), t0),
            vec!["retry-1", "retry-2"]
        );
        assert_eq!(
            d.begin("u", "c", "late", t0),
            Begin::Duplicate {
                message_id: id,
                room_id: room("r")
            }
        );
    }

    #[test]
    fn abort_forgets_and_returns_waiters() {
        let t0 = Instant::now();
        let mut d: Dedupe<u8> = Dedupe::new(DEDUPE_WINDOW, 100);
        assert_eq!(d.begin("u", "c", 1, t0), Begin::New);
        assert_eq!(d.begin("u", "c", 2, t0), Begin::Waiting);
        assert_eq!(d.abort("u", "c"), vec![2]);
        assert!(d.is_empty());
        // A retry is a new send.
        assert_eq!(d.begin("u", "c", 3, t0), Begin::New);
        // Abort after completion keeps the accepted entry.
        d.complete("u", "c", Ulid::from_parts(1, 1), room("r"), t0);
        assert!(d.abort("u", "c").is_empty());
        assert!(matches!(d.begin("u", "c", 4, t0), Begin::Duplicate { .. }));
        // Abort of an unknown key is harmless.
        assert!(d.abort("nobody", "x").is_empty());
    }

    #[test]
    fn complete_twice_keeps_first_id() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(DEDUPE_WINDOW, 100);
        let first = Ulid::from_parts(1, 1);
        d.begin("u", "c", (), t0);
        d.complete("u", "c", first, room("r"), t0);
        d.complete("u", "c", Ulid::from_parts(2, 2), room("r"), t0);
        assert!(matches!(
            d.begin("u", "c", (), t0),
            Begin::Duplicate { message_id, .. } if message_id == first
        ));
    }

    #[test]
    fn capacity_bound_forgets_oldest() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(DEDUPE_WINDOW, 2);
        for (i, c) in ["a", "b", "c"].into_iter().enumerate() {
            let now = t0 + secs(i as u64);
            assert_eq!(d.begin("u", c, (), now), Begin::New);
            d.complete("u", c, Ulid::from_parts(i as u64, 0), room("r"), now);
        }
        assert_eq!(d.len(), 2);
        assert_eq!(d.forgotten_early(), 1);
        assert!(matches!(
            d.begin("u", "b", (), t0 + secs(3)),
            Begin::Duplicate { .. }
        ));
        assert!(matches!(
            d.begin("u", "c", (), t0 + secs(3)),
            Begin::Duplicate { .. }
        ));
        // "a" was forgotten early, so its retry is new (and pushes out "b", now the oldest).
        assert_eq!(d.begin("u", "a", (), t0 + secs(3)), Begin::New);
        assert_eq!(d.forgotten_early(), 2);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn eviction_order_follows_completion_time() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(DEDUPE_WINDOW, 2);
        d.begin("u", "slow", (), t0);
        d.begin("u", "fast", (), t0 + secs(1));
        d.complete("u", "fast", Ulid::from_parts(1, 0), room("r"), t0 + secs(1));
        d.complete("u", "slow", Ulid::from_parts(2, 0), room("r"), t0 + secs(2));
        // "fast" started its window first, so it is the one forgotten.
        d.begin("u", "new", (), t0 + secs(3));
        assert_eq!(d.begin("u", "fast", (), t0 + secs(3)), Begin::New);
        assert_eq!(d.forgotten_early(), 2); // "fast", then "slow" for the retry of "fast"
    }

    #[test]
    fn sweep_drops_expired_entries_only() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(secs(60), 100);
        d.begin("u", "old", (), t0);
        d.complete("u", "old", Ulid::from_parts(1, 0), room("r"), t0);
        d.begin("u", "young", (), t0 + secs(30));
        d.complete(
            "u",
            "young",
            Ulid::from_parts(2, 0),
            room("r"),
            t0 + secs(30),
        );
        assert_eq!(d.sweep(t0 + secs(59)), 0);
        assert_eq!(d.sweep(t0 + secs(60)), 1);
        assert_eq!(d.len(), 1);
        assert!(matches!(
            d.begin("u", "young", (), t0 + secs(60)),
            Begin::Duplicate { .. }
        ));
        assert_eq!(d.sweep(t0 + secs(90)), 1);
        assert!(d.is_empty());
        assert!(d.fifo.is_empty());
    }

    #[test]
    fn sweep_drops_stuck_pending_entries() {
        let t0 = Instant::now();
        let mut d: Dedupe<u8> = Dedupe::new(secs(60), 100);
        d.begin("u", "stuck", 1, t0);
        d.begin("u", "stuck", 2, t0);
        assert_eq!(d.sweep(t0 + secs(60)), 1);
        assert_eq!(d.begin("u", "stuck", 3, t0 + secs(61)), Begin::New);
    }

    #[test]
    fn fifo_stays_bounded_under_churn() {
        let t0 = Instant::now();
        let mut d: Dedupe<()> = Dedupe::new(DEDUPE_WINDOW, 10_000);
        for i in 0..5_000u64 {
            let c = i.to_string();
            d.begin("u", &c, (), t0);
            d.abort("u", &c);
        }
        d.begin("u", "kept", (), t0);
        assert_eq!(d.len(), 1);
        assert!(d.fifo.len() <= 2 * d.len() + COMPACT_SLACK);
    }
}
