//! The rate-limit lease: where a user's message log is counted.
//!
//! The contract's limit is per user across all of the user's connections
//! (PROTOCOL.md section 5), so exactly one core may count a user's
//! messages at a time. That core is the user's owner (`shard_for(user)`)
//! unless the owner has *leased* the user's log to the one core that holds
//! all of the user's connections. A message then passes the limit on the
//! core that read it and goes straight to its room's owner: for a
//! connection in its initial room that is the same core, and the whole
//! publish runs without a cross-core hop. Without the lease, half of all
//! messages on two cores (more on more cores) crossed to the user's owner
//! and back.
//!
//! The user's `clientMsgId` window (`crate::dedupe`) travels with the log:
//! a retry is caught wherever the user's messages are counted. The log
//! moves, it is never copied, so the limit stays exact. The protocol
//! relies on the mesh being FIFO per pair of cores:
//!
//! 1. A member core C that does not hold a user's log and opens a
//!    connection of that user sends `UserOnline` (as it always did) and
//!    from then on *holds back* the user's messages ([`LocalLease::route`]
//!    → [`Route::Held`]) until the owner answers.
//! 2. The owner answers every `UserOnline` from a core that neither holds
//!    the log nor has it on the way: a grant with the log when this is the
//!    user's only connection and the owner has the log
//!    ([`answer_at_home`]), a denial otherwise ([`Placement::online`]). Any message C forwarded before its
//!    `UserOnline` reached the owner first (FIFO) and was counted there.
//! 3. Granted: C counts the held-back messages and every later one itself.
//!    Denied: C forwards the held-back messages to the owner, in order.
//! 4. A connection of the user opening on another core (or on the owner)
//!    makes the owner revoke the lease; C sends the log back and forwards
//!    from then on. Messages that reach the owner while its log is away
//!    wait in [`Placement`]'s queue until it returns.
//! 5. C's last connection of the user closing sends the log back before
//!    the `UserOffline`, so the owner has it for the user's next
//!    connection (a reconnect must not reset the window).
//!
//! Both queues are bounded by [`MAX_HELD`] per user: they only fill during
//! one cross-core round trip, so reaching the bound means a client that
//! floods faster than the mesh answers; the message over it is refused
//! with `rate_limited` (the caller's [`Route::Full`] / [`Admit::Full`]).
//!
//! Everything here is plain data: the hub moves the logs and sends the
//! messages.

use std::collections::VecDeque;

/// Messages held back per user while a lease is being answered or
/// returned (steps 1 and 4); over it a message is refused. Set well above
/// what a client can send in one mesh round trip (tens of microseconds):
/// `loadgen fanout` never came near it.
pub const MAX_HELD: usize = 256;

/// Where a user's log is while it is away from its owner (at home there
/// is no [`Placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Granted to this core (possibly still on its way there).
    Out(usize),
    /// Revoked from this core; the owner waits for it to come back.
    Returning(usize),
}

/// The owner's answer to a `UserOnline`, if one is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send the log to the connection's core (taken from the limiter).
    Grant,
    /// Tell the connection's core to forward to the owner.
    Deny,
}

/// What the owner does after a connection opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Online {
    /// The answer for the connection's core (None: none is due).
    pub answer: Option<Answer>,
    /// Ask this core to send the log back.
    pub revoke: Option<usize>,
}

/// What the owner does with a message of a user whose log is away.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// The message waits for the log.
    Queued,
    /// The log is away and [`MAX_HELD`] messages already wait.
    Full(T),
}

/// What the owner answers a `UserOnline` from `core` when the user's log is
/// at home (no [`Placement`] record): a grant when this connection is the
/// user's only one on the instance (`connections`, counted after it), a
/// denial otherwise. None for a connection on the owner itself. A denial
/// is always safe (the owner keeps counting); it only keeps the hop.
pub fn answer_at_home(connections: u32, core: usize, owner: usize) -> Option<Answer> {
    if core == owner {
        return None;
    }
    Some(if connections == 1 {
        Answer::Grant
    } else {
        Answer::Deny
    })
}

/// The owner's record of one user whose log is away (lent, or on its way
/// back). Absent means: the log is at home. Kept only while the log is
/// away, so users whose log never leaves cost the owner nothing.
#[derive(Debug)]
pub struct Placement<T> {
    /// Where the log is.
    holder: Holder,
    /// Messages that arrived while the log was away, oldest first; counted
    /// when it returns. At most [`MAX_HELD`].
    queued: VecDeque<T>,
}

impl<T> Placement<T> {
    /// The log was just lent to `core`.
    pub fn lent(core: usize) -> Self {
        Self {
            holder: Holder::Out(core),
            queued: VecDeque::new(),
        }
    }

    /// Where the log is.
    pub fn holder(&self) -> Holder {
        self.holder
    }

    /// A connection of the user opened on `core` while the log is away;
    /// `owner` is this core.
    pub fn online(&mut self, core: usize, owner: usize) -> Online {
        let mut out = Online::default();
        match self.holder {
            Holder::Out(c) | Holder::Returning(c) if c == core => return out,
            Holder::Out(c) => {
                self.holder = Holder::Returning(c);
                out.revoke = Some(c);
            }
            Holder::Returning(_) => {}
        }
        if core != owner {
            out.answer = Some(Answer::Deny);
        }
        out
    }

    /// The log came back from the core it was lent to. Returns the
    /// messages that waited for it, oldest first; the record is then done.
    pub fn returned(self) -> VecDeque<T> {
        self.queued
    }

    /// A message of the user reached the owner while the log is away.
    pub fn admit(&mut self, msg: T) -> Admit<T> {
        if self.queued.len() >= MAX_HELD {
            return Admit::Full(msg);
        }
        self.queued.push_back(msg);
        Admit::Queued
    }
}

/// A member core's state of one user it has connections of and does not
/// own.
#[derive(Debug)]
enum State<T> {
    /// The owner counts: forward every message.
    Forward,
    /// Waiting for the owner's answer; these messages wait for it, oldest
    /// first, at most [`MAX_HELD`].
    Awaiting(VecDeque<T>),
    /// The log is in this core's limiter: count here.
    Held,
}

/// What a member core does with a message of the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<T> {
    /// Count it here.
    Local(T),
    /// Send it to the owner.
    Forward(T),
    /// It waits for the owner's answer.
    Held,
    /// [`MAX_HELD`] messages already wait: refuse it.
    Full(T),
}

/// After a grant or a denial: what to do with the messages that waited.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<T> {
    /// Count these here, oldest first.
    Local(VecDeque<T>),
    /// Forward these to the owner, oldest first.
    Forward(VecDeque<T>),
    /// The grant found no connection left: send the log straight back,
    /// then forward these after it (the owner counts them once the log is
    /// home again).
    GiveBack(VecDeque<T>),
}

/// A member core's record of one user it has connections of (or waits for
/// an answer about) and does not own.
#[derive(Debug)]
pub struct LocalLease<T> {
    /// The user's live connections on this core.
    conns: u32,
    /// Forwarding, awaiting an answer, or holding the log.
    state: State<T>,
}

impl<T> Default for LocalLease<T> {
    fn default() -> Self {
        Self {
            conns: 0,
            state: State::Forward,
        }
    }
}

impl<T> LocalLease<T> {
    /// A connection of the user opened here (the caller sends `UserOnline`
    /// either way). Awaits the owner's answer unless it already holds the
    /// log or awaits one.
    pub fn open(&mut self) {
        self.conns += 1;
        if matches!(self.state, State::Forward) {
            self.state = State::Awaiting(VecDeque::new());
        }
    }

    /// A connection of the user closed here. True when the log must go
    /// back to the owner now (before the `UserOffline`).
    pub fn close(&mut self) -> bool {
        self.conns = self.conns.saturating_sub(1);
        if self.conns == 0 && matches!(self.state, State::Held) {
            self.state = State::Forward;
            return true;
        }
        false
    }

    /// Where a message of the user goes.
    pub fn route(&mut self, msg: T) -> Route<T> {
        match &mut self.state {
            State::Forward => Route::Forward(msg),
            State::Held => Route::Local(msg),
            State::Awaiting(q) if q.len() >= MAX_HELD => Route::Full(msg),
            State::Awaiting(q) => {
                q.push_back(msg);
                Route::Held
            }
        }
    }

    /// The owner granted the log (the caller puts it in the limiter, or
    /// sends it back on [`Settled::GiveBack`]).
    pub fn granted(&mut self) -> Settled<T> {
        let waiting = self.take_waiting();
        if self.conns == 0 {
            self.state = State::Forward;
            return Settled::GiveBack(waiting);
        }
        self.state = State::Held;
        Settled::Local(waiting)
    }

    /// The owner denied the lease: forward from now on.
    pub fn denied(&mut self) -> Settled<T> {
        let waiting = self.take_waiting();
        self.state = State::Forward;
        Settled::Forward(waiting)
    }

    /// The owner wants the log back. True when this core holds it (the
    /// caller sends it); false when it was already sent back.
    pub fn revoked(&mut self) -> bool {
        if matches!(self.state, State::Held) {
            self.state = State::Forward;
            return true;
        }
        false
    }

    /// No connections and nothing pending: the record can be dropped.
    pub fn is_idle(&self) -> bool {
        self.conns == 0 && matches!(self.state, State::Forward)
    }

    /// True while this core holds the user's log (and dedupe window).
    pub fn holds(&self) -> bool {
        matches!(self.state, State::Held)
    }

    fn take_waiting(&mut self) -> VecDeque<T> {
        match std::mem::replace(&mut self.state, State::Forward) {
            State::Awaiting(q) => q,
            other => {
                self.state = other;
                VecDeque::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: usize = 0;

    #[test]
    fn the_only_connection_gets_the_log_any_other_a_denial() {
        assert_eq!(answer_at_home(1, 1, OWNER), Some(Answer::Grant));
        assert_eq!(answer_at_home(2, 1, OWNER), Some(Answer::Deny));
        assert_eq!(
            answer_at_home(1, OWNER, OWNER),
            None,
            "the owner counts itself"
        );
    }

    #[test]
    fn a_second_connection_on_the_holder_needs_no_answer() {
        let mut p: Placement<u32> = Placement::lent(1);
        assert_eq!(p.online(1, OWNER), Online::default());
        assert_eq!(p.holder(), Holder::Out(1));
    }

    #[test]
    fn a_second_core_revokes_and_is_denied() {
        let mut p: Placement<u32> = Placement::lent(1);
        let on = p.online(2, OWNER);
        assert_eq!(on.revoke, Some(1));
        assert_eq!(on.answer, Some(Answer::Deny));
        assert_eq!(p.holder(), Holder::Returning(1));
        // A third core while it returns: denied, no second revoke.
        assert_eq!(
            p.online(3, OWNER),
            Online {
                answer: Some(Answer::Deny),
                revoke: None
            }
        );
        // Forwarded messages wait for the log.
        assert_eq!(p.admit(7), Admit::Queued);
        assert_eq!(p.admit(8), Admit::Queued);
        assert_eq!(p.returned(), VecDeque::from([7, 8]));
    }

    #[test]
    fn a_connection_on_the_owner_revokes_without_an_answer() {
        let mut p: Placement<u32> = Placement::lent(1);
        let on = p.online(OWNER, OWNER);
        assert_eq!(on.revoke, Some(1));
        assert_eq!(on.answer, None);
    }

    #[test]
    fn the_owner_queue_is_bounded() {
        let mut p: Placement<usize> = Placement::lent(1);
        for i in 0..MAX_HELD {
            assert_eq!(p.admit(i), Admit::Queued);
        }
        assert_eq!(p.admit(MAX_HELD), Admit::Full(MAX_HELD));
        assert_eq!(p.returned().len(), MAX_HELD);
    }

    #[test]
    fn member_holds_back_until_answered_then_counts_here() {
        let mut l: LocalLease<u32> = LocalLease::default();
        l.open();
        assert_eq!(l.route(1), Route::Held);
        assert_eq!(l.route(2), Route::Held);
        assert_eq!(l.granted(), Settled::Local(VecDeque::from([1, 2])));
        assert_eq!(l.route(3), Route::Local(3));
        // A second connection keeps the lease.
        l.open();
        assert_eq!(l.route(4), Route::Local(4));
    }

    #[test]
    fn member_forwards_after_a_denial() {
        let mut l: LocalLease<u32> = LocalLease::default();
        l.open();
        assert_eq!(l.route(1), Route::Held);
        assert_eq!(l.denied(), Settled::Forward(VecDeque::from([1])));
        assert_eq!(l.route(2), Route::Forward(2));
    }

    #[test]
    fn member_gives_the_log_back_on_revoke_and_on_last_close() {
        let mut l: LocalLease<u32> = LocalLease::default();
        l.open();
        l.granted();
        assert!(l.revoked());
        assert!(!l.revoked(), "sent back once");
        assert_eq!(l.route(1), Route::Forward(1));

        let mut l: LocalLease<u32> = LocalLease::default();
        l.open();
        l.open();
        l.granted();
        assert!(!l.close());
        assert!(l.close(), "the last close sends the log back");
        assert!(l.is_idle());
        assert!(!l.revoked(), "a revoke crossing the return is ignored");
    }

    #[test]
    fn a_grant_after_the_last_close_goes_straight_back() {
        let mut l: LocalLease<u32> = LocalLease::default();
        l.open();
        assert_eq!(l.route(5), Route::Held);
        assert!(!l.close());
        assert!(!l.is_idle(), "still awaiting the answer");
        assert_eq!(l.granted(), Settled::GiveBack(VecDeque::from([5])));
        assert!(l.is_idle());
    }

    #[test]
    fn member_queue_is_bounded() {
        let mut l: LocalLease<usize> = LocalLease::default();
        l.open();
        for i in 0..MAX_HELD {
            assert_eq!(l.route(i), Route::Held);
        }
        assert_eq!(l.route(MAX_HELD), Route::Full(MAX_HELD));
    }
}
