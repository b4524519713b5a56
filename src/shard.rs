//! Shard routing: which core owns a room or a user, the messages cores send
//! each other, and the bounded queues that carry them.
//!
//! Every piece of shared state has exactly one owner core: a room belongs to
//! `shard_for(room_id)`, a user's presence count, rate limit and dedupe window
//! to `shard_for(user_id)`. Work for state owned elsewhere becomes a
//! [`ShardMsg`] on the glommio channel mesh (lock-free single-producer rings,
//! one per ordered pair of cores). When the owner is the local core the
//! message is never built: the caller does the work in place.
//!
//! Each pair of cores has one FIFO channel, and every message from core A to
//! core B goes through it. That is what makes the ordering guarantees cheap:
//! a `Joined` answer reaches a member core before any message the owner
//! published after the join, so a joining connection sees neither a gap nor
//! a duplicate.
//!
//! # Bounds
//! The mesh channel holds [`MESH_CAPACITY`] messages per direction. A message
//! that does not fit waits in this core's staging queue for that peer, drained
//! in order by a forwarder task. Internal traffic (deliveries, answers) is
//! never dropped; instead, connection readers stop reading from their sockets
//! while any staging queue holds more than [`STAGING_SOFT_LIMIT`] messages, so
//! the pressure lands on the clients that produce it (TCP backpressure). The
//! overshoot past the soft limit is bounded by what one socket read can carry
//! times the fan-out of one message.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use crate::auth::Identity;
use crate::metrics::{CloseReason, CoreSnapshot};
use crate::protocol::MessageId;

/// Messages one mesh channel holds before senders stage locally. Sized so a
/// burst to a 5,000-member room spread over both cores never stages:
/// `chat_mesh_staged_total` stayed 0 through `loadgen burst --members 5000
/// --window 64 --duration 5` (1.4 M deliveries/s, 2026-11-24).
pub const MESH_CAPACITY: usize = 4096;

/// Staged messages per peer above which connection readers pause: twice the
/// channel, so readers pause only once the peer is a full channel behind. No
/// measured run reached it (staging itself stayed at 0 in the burst above).
pub const STAGING_SOFT_LIMIT: usize = 8192;

/// Identifies a connection across cores: the core it runs on in the top 16
/// bits, a per-core counter below (never reused, unlike a slab key, so a late
/// answer for a closed connection can never reach a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Builds the id of the `n`th connection of `core`.
    pub fn new(core: usize, n: u64) -> ConnId {
        ConnId(((core as u64) << 48) | (n & ((1 << 48) - 1)))
    }

    /// The core the connection runs on.
    pub fn core(self) -> usize {
        (self.0 >> 48) as usize
    }
}

/// The core that owns `key` (a room id or a user id) among `cores` cores.
///
/// FNV-1a: stable across processes and versions (several instances and the
/// load generator agree on it) and fast for short keys.
pub fn shard_for(key: &str, cores: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % cores as u64) as usize
}

/// What a delivered frame is, which decides what a full outbound queue does
/// with it (typing indicators are dropped first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A chat message: never dropped; a queue that cannot take it closes.
    Message,
    /// A typing indicator: dropped when the queue is filling up.
    Typing,
    /// A presence change: treated like a message.
    Presence,
}

/// A message that passed the connection's checks, on its way to the user's
/// owner core (rate limit, dedupe) and then to the room's owner core (order,
/// id, storage, fan-out).
#[derive(Debug)]
pub struct Publish {
    /// Room the message is for.
    pub room: Arc<str>,
    /// Sender's identity, stamped into the message.
    pub user: Identity,
    /// Content after moderation masking.
    pub content: String,
    /// The client's idempotency key, if it sent one.
    pub client_msg_id: Option<Box<str>>,
    /// The sending connection, for the ack and for error frames.
    pub conn: ConnId,
    /// When the sending core received the frame; delivery latency starts here.
    pub received_at: Instant,
}

/// A room owner's answer to a join.
#[derive(Debug)]
pub struct JoinAnswer {
    /// The room joined.
    pub room: Arc<str>,
    /// The joining user (to undo the join if the connection is gone).
    pub user: Arc<str>,
    /// The joining connection.
    pub conn: ConnId,
    /// Distinct users in the room right after the join.
    pub member_count: usize,
    /// Recovered messages to send before live ones, and whether they are
    /// all that was missed.
    pub replay: Replay,
    /// False for a repeated join that was answered but not counted.
    pub counted: bool,
}

/// The recovery part of a join answer.
#[derive(Debug, Default)]
pub struct Replay {
    /// JSON payloads of the `message` frames newer than `since`, oldest
    /// first, at most `hub::MAX_REPLAY` (shared with the owner's history;
    /// framed on the member core as its client reads, see `outbound.rs`).
    pub messages: Vec<Bytes>,
    /// `None` for a join without `since`; else whether `messages` holds
    /// every message after `since` (`room_joined`'s `recovered`).
    pub recovered: Option<bool>,
}

/// A socket whose `/ws` request was verified on the accepting core, handed to
/// the core that owns its initial room. Owns the descriptor: dropping an
/// `Adoption` that was never taken closes it.
#[derive(Debug)]
pub struct Adoption {
    /// The socket, duplicated from the accepting core's handle.
    fd: RawFd,
    /// Who the token says is connecting.
    pub identity: Identity,
    /// The initial room (already validated).
    pub room: Arc<str>,
    /// `since` from the query string, for recovery of the initial room.
    pub since: Option<MessageId>,
    /// The client's `Sec-WebSocket-Key`, answered by the adopting core.
    pub ws_key: Box<str>,
    /// Bytes the client sent after the request head (early frames).
    pub early: Vec<u8>,
}

impl Adoption {
    /// Wraps a descriptor this process owns.
    pub fn new(
        fd: RawFd,
        identity: Identity,
        room: Arc<str>,
        since: Option<MessageId>,
        ws_key: Box<str>,
        early: Vec<u8>,
    ) -> Adoption {
        Adoption {
            fd,
            identity,
            room,
            since,
            ws_key,
            early,
        }
    }

    /// Takes the descriptor out; the caller now owns it.
    pub fn take_fd(&mut self) -> RawFd {
        std::mem::replace(&mut self.fd, -1)
    }
}

impl Drop for Adoption {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: the descriptor was dup'ed for this adoption and nobody
            // else holds it.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// Everything one core asks of another.
#[derive(Debug)]
pub enum ShardMsg {
    /// Run this verified socket here (its initial room is owned here).
    Adopt(Box<Adoption>),
    /// To a room's owner: a connection on the sending core wants to join.
    /// `count` is false for a repeated join of a room the connection is
    /// already in (answered, but not counted twice).
    Join {
        room: Arc<str>,
        user: Arc<str>,
        conn: ConnId,
        since: Option<MessageId>,
        count: bool,
    },
    /// From a room's owner: the join is registered.
    Joined(Box<JoinAnswer>),
    /// To a room's owner: a member on the sending core left (or closed).
    Leave { room: Arc<str>, user: Arc<str> },
    /// To the user's owner: rate limit and dedupe a message.
    Publish(Box<Publish>),
    /// To the room's owner: moderate, order, store and fan out a message.
    Sequence(Box<Publish>),
    /// From the room's owner to the user's owner: the outcome of a publish
    /// that carried a `clientMsgId` (None: refused, forget it).
    Published {
        user: Arc<str>,
        client_msg_id: Box<str>,
        outcome: Option<(MessageId, Arc<str>)>,
    },
    /// To a room's owner: relay a frame (typing, presence) to the room.
    Relay {
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
    },
    /// From a room's owner: deliver a frame to this core's members.
    Deliver {
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        received_at: Instant,
    },
    /// A frame for one connection (acks, errors, answers).
    ToConn { conn: ConnId, frame: Bytes },
    /// To the user's owner: connection `conn` of this user opened in `room`.
    UserOnline {
        user: Arc<str>,
        room: Arc<str>,
        conn: ConnId,
    },
    /// To a connection's core: close it (the user's owner found the user
    /// over MAX_CONNECTIONS_PER_USER).
    CloseConn {
        conn: ConnId,
        code: u16,
        reason: CloseReason,
    },
    /// To a room's owner: a typing frame of `user`, throttled there per
    /// (user, room) across the user's connections, then relayed.
    Typing {
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
        exclude: ConnId,
    },
    /// To the user's owner: a connection of this user closed; it was in
    /// `rooms`.
    UserOffline {
        user: Arc<str>,
        rooms: Vec<Arc<str>>,
    },
    /// A question for another core; answered with `Answer` and the same `req`.
    Query { req: u64, query: Query },
    /// The answer to a `Query`.
    Answer { req: u64, answer: Answer },
    /// Start draining: stop accepting, close connections with 1001.
    Shutdown,
}

/// Questions cores ask each other (for HTTP routes, scrapes and history).
#[derive(Debug)]
pub enum Query {
    /// This core's metrics.
    Metrics,
    /// Users online in a room (asked of the room's owner).
    RoomOnline(Arc<str>),
    /// Whether a user is online (asked of the user's owner).
    UserOnline(Arc<str>),
    /// A page of a room's history (asked of the room's owner).
    History {
        room: Arc<str>,
        before: Option<MessageId>,
        after: Option<MessageId>,
        limit: usize,
    },
}

/// Answers to [`Query`].
#[derive(Debug)]
pub enum Answer {
    /// A core's metrics.
    Metrics(Box<CoreSnapshot>),
    /// User ids (online users; for `UserOnline`, the user or nothing).
    Users(Vec<Arc<str>>),
    /// Encoded `message` payloads, oldest first.
    Messages(Vec<Bytes>),
    /// The store could not answer in full (a Postgres read shed or
    /// failed): the asker answers `unavailable`, never a partial page.
    Unavailable,
}

/// This core's side of the mesh: sends to a peer's channel or, when it is
/// full, stages in order behind it.
pub struct Router {
    /// This core's index.
    core: usize,
    /// Number of cores.
    cores: usize,
    /// The mesh senders, indexed by peer core.
    senders: Senders<ShardMsg>,
    /// Messages waiting for room in each peer's channel, oldest first.
    staging: Vec<RefCell<VecDeque<ShardMsg>>>,
    /// Wakes the forwarder of each peer when its staging queue fills.
    forwarder_wakers: Vec<Cell<Option<Waker>>>,
    /// Connection readers paused because staging passed its soft limit.
    paused_readers: PausedReaders,
    /// Messages ever staged (a metric: non-zero means the mesh was full).
    staged_total: Cell<u64>,
}

impl Router {
    /// Wraps this core's mesh senders.
    pub fn new(senders: Senders<ShardMsg>, cores: usize) -> Router {
        let core = senders.peer_id();
        Router {
            core,
            cores,
            senders,
            staging: (0..cores).map(|_| RefCell::new(VecDeque::new())).collect(),
            forwarder_wakers: (0..cores).map(|_| Cell::new(None)).collect(),
            paused_readers: PausedReaders::default(),
            staged_total: Cell::new(0),
        }
    }

    /// This core's index.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The owner core of a room or user id.
    pub fn owner(&self, key: &str) -> usize {
        shard_for(key, self.cores)
    }

    /// Sends `msg` to core `to` (never the local core). Never blocks and never
    /// drops: see the module documentation for the bound.
    pub fn send(&self, to: usize, msg: ShardMsg) {
        debug_assert_ne!(to, self.core, "local work must not go through the mesh");
        let mut staging = self.staging[to].borrow_mut();
        if staging.is_empty() {
            match self.senders.try_send_to(to, msg) {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(back))) => {
                    staging.push_back(back)
                }
                // The peer closed its side: the process is stopping.
                Err(_) => return,
            }
        } else {
            staging.push_back(msg);
        }
        self.staged_total.set(self.staged_total.get() + 1);
        if let Some(waker) = self.forwarder_wakers[to].take() {
            waker.wake();
        }
    }

    /// True while connection readers should pause.
    pub fn congested(&self) -> bool {
        self.staging
            .iter()
            .any(|q| q.borrow().len() > STAGING_SOFT_LIMIT)
    }

    /// Registers a paused reader, woken when staging drains below the limit.
    /// `registered` is the reader's own record of its registration (see
    /// [`PausedReaders::pause`]).
    pub fn pause_reader(&self, waker: &Waker, registered: &mut Option<u64>) {
        self.paused_readers.pause(waker, registered);
    }

    /// Messages ever staged because a mesh channel was full.
    pub fn staged_total(&self) -> u64 {
        self.staged_total.get()
    }

    /// Moves staged messages for `peer` into its channel, in order, until the
    /// staging queue is empty. Runs as one task per peer for the life of the
    /// core.
    pub async fn forward(self: Rc<Self>, peer: usize) {
        loop {
            let next = self.staging[peer].borrow_mut().pop_front();
            match next {
                Some(msg) => {
                    if self.senders.send_to(peer, msg).await.is_err() {
                        return; // peer gone: the process is stopping
                    }
                    if !self.congested() {
                        self.paused_readers.wake_all();
                    }
                }
                None => {
                    std::future::poll_fn(|cx| {
                        if self.staging[peer].borrow().is_empty() {
                            self.forwarder_wakers[peer].set(Some(cx.waker().clone()));
                            std::task::Poll::Pending
                        } else {
                            std::task::Poll::Ready(())
                        }
                    })
                    .await
                }
            }
        }
    }
}

/// Connection readers waiting for the mesh to drain, each at most once.
///
/// A paused reader's task is polled again whenever something else wakes it
/// (a frame for its client, a close request); each poll finds the mesh still
/// congested and pauses again. Registering every time would grow the list by
/// one waker per such wake-up for as long as the congestion lasts. Instead
/// each reader remembers the round it registered in, and registers again only
/// after [`PausedReaders::wake_all`] has started a new round: the list holds
/// at most one waker per connection that paused in the current round (a
/// connection that closes meanwhile leaves its waker until the round ends).
#[derive(Default)]
pub struct PausedReaders {
    /// Incremented by every `wake_all`; a registration is valid for one round.
    round: Cell<u64>,
    /// The wakers of this round's paused readers.
    wakers: RefCell<Vec<Waker>>,
}

impl PausedReaders {
    /// Registers `waker` unless `registered` says this reader is already
    /// registered in the current round; records the round in `registered`.
    pub fn pause(&self, waker: &Waker, registered: &mut Option<u64>) {
        let round = self.round.get();
        if *registered != Some(round) {
            self.wakers.borrow_mut().push(waker.clone());
            *registered = Some(round);
        }
    }

    /// Wakes every paused reader and starts a new round.
    pub fn wake_all(&self) {
        self.round.set(self.round.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Readers registered in the current round.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.wakers.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_reader_polled_again_while_paused_is_registered_once() {
        let paused = PausedReaders::default();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut ra, mut rb) = (None, None);
        for _ in 0..100 {
            paused.pause(&wa, &mut ra);
        }
        paused.pause(&wb, &mut rb);
        assert_eq!(paused.len(), 2);
        paused.wake_all();
        assert_eq!(paused.len(), 0);
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        // Woken, polled, still congested: registers again in the new round.
        paused.pause(&wa, &mut ra);
        paused.pause(&wa, &mut ra);
        assert_eq!(paused.len(), 1);
        paused.wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn shard_for_is_stable_and_spreads() {
        // Fixed values: instances and tools must agree on the owner forever.
        assert_eq!(shard_for("lobby", 2), shard_for("lobby", 2));
        assert_eq!(shard_for("", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as usize);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("room-{i}"), 4)] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn shard_for_known_values() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            shard_for("a", 1 << 20),
            (0xaf63_dc4c_8601_ec8cu64 % (1 << 20)) as usize
        );
        assert_eq!(shard_for("anything", 1), 0);
    }

    #[test]
    fn conn_id_keeps_core_and_counter() {
        let id = ConnId::new(3, 42);
        assert_eq!(id.core(), 3);
        assert_eq!(id.0 & 0xffff_ffff_ffff, 42);
        assert_ne!(ConnId::new(1, 42), ConnId::new(2, 42));
    }
}
