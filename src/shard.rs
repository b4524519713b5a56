//! Shard routing: which core owns a room or a user, the messages cores send
//! each other. The queues that carry them are `runtime/mesh.rs`.
//!
//! Every piece of shared state has exactly one owner core: a room belongs to
//! `shard_for(room_id)`, a user's presence count, rate limit and dedupe window
//! to `shard_for(user_id)`. Work for state owned elsewhere becomes a
//! [`ShardMsg`] on the cross-core mesh (`runtime/mesh.rs`: lock-free
//! single-producer rings, one per ordered pair of cores). When the owner is the local core the
//! message is never built: the caller does the work in place.
//!
//! Each pair of cores has one FIFO channel, and every message from core A to
//! core B goes through it. That is what makes the ordering guarantees cheap:
//! a `Joined` answer reaches a member core before any message the owner
//! published after the join, so a joining connection sees neither a gap nor
//! a duplicate.
//!
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::Identity;
use crate::dedupe::UserWindow;
use crate::metrics::{CloseReason, CoreSnapshot};
use crate::protocol::MessageId;

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

    /// Stands for HTTP request `req` of `core` waiting for the outcome of a message it
    /// published (the operator API): the frames the message path sends "its connection" (the
    /// accepted `message`, an error) answer the request instead. Its counter has
    /// [`WAITER_BIT`] set, which no connection's counter ever reaches.
    pub fn waiter(core: usize, req: u64) -> ConnId {
        ConnId::new(core, WAITER_BIT | (req & (WAITER_BIT - 1)))
    }

    /// Whether this is a [`ConnId::waiter`], not a connection.
    pub fn is_waiter(self) -> bool {
        self.0 & WAITER_BIT != 0
    }

    /// The request id of a [`ConnId::waiter`].
    pub fn waiter_req(self) -> u64 {
        self.0 & (WAITER_BIT - 1)
    }
}

/// The counter bit that marks a [`ConnId::waiter`] (2^47 connections on one core never
/// happen; the request counter would need as many requests).
pub const WAITER_BIT: u64 = 1 << 47;

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

/// Numbers a connection's counted joins (per connection, from 1). A join
/// answered after the connection left the room and joined it again must not
/// be taken for the newer join's answer: the two differ in their `since`
/// (the newer one's replay would be lost) and the owner counted each.
pub type JoinTicket = u32;

/// A room owner's answer to a join.
#[derive(Debug)]
pub struct JoinAnswer {
    /// Room id joined: the member core adds the connection to its local members of it.
    pub room: Arc<str>,
    /// The joining user (to undo the join if the connection is gone).
    pub user: Arc<str>,
    /// The joining connection; if it closed meanwhile, the join is undone.
    pub conn: ConnId,
    /// Distinct users in the room right after the join.
    pub member_count: usize,
    /// Recovered messages to send before live ones, and whether they are
    /// all that was missed.
    pub replay: Replay,
    /// The join this answers, as the member core numbered it: an answer to
    /// an earlier join the connection has since left is undone, not sent.
    pub ticket: JoinTicket,
    /// False for a repeated join that was answered but not counted.
    pub counted: bool,
    /// The joining connection negotiated permessage-deflate (to undo the
    /// owner's count of compressed members with the join).
    pub deflate: bool,
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
    /// The token's `exp` (Unix seconds): when the connection expires.
    pub exp: Option<u64>,
    /// The initial room (already validated).
    pub room: Arc<str>,
    /// `since` from the query string, for recovery of the initial room.
    pub since: Option<MessageId>,
    /// The client's `Sec-WebSocket-Key`, answered by the adopting core.
    pub ws_key: Box<str>,
    /// permessage-deflate as agreed from the client's offers (None: off).
    pub deflate: Option<crate::deflate::Agreed>,
    /// Bytes the client sent after the request head (early frames).
    pub early: Vec<u8>,
}

impl Adoption {
    /// Wraps a descriptor this process owns.
    pub fn new(
        fd: RawFd,
        identity: Identity,
        exp: Option<u64>,
        room: Arc<str>,
        since: Option<MessageId>,
        ws_key: Box<str>,
        early: Vec<u8>,
    ) -> Adoption {
        Adoption {
            fd,
            identity,
            exp,
            room,
            since,
            ws_key,
            deflate: None,
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
        ticket: JoinTicket,
        deflate: bool,
    },
    /// From a room's owner: the join is registered.
    Joined(Box<JoinAnswer>),
    /// To a room's owner: a member on the sending core left (or closed);
    /// `deflate`: it had negotiated permessage-deflate.
    Leave {
        room: Arc<str>,
        user: Arc<str>,
        deflate: bool,
    },
    /// To the user's owner: count a message against the user's rate limit
    /// (the sending core does not hold the user's log).
    Publish(Box<Publish>),
    /// To the room's owner: dedupe, moderate, order, store and fan out a
    /// message.
    Sequence(Box<Publish>),
    /// From the user's owner: this core holds all of the user's
    /// connections; here is the user's rate-limit log (`crate::lease`).
    LeaseGrant {
        user: Arc<str>,
        log: Vec<Instant>,
        window: UserWindow<ConnId>,
    },
    /// From the user's owner: keep forwarding the user's messages to it.
    LeaseDenied { user: Arc<str> },
    /// From the user's owner: send the user's log back.
    LeaseRevoke { user: Arc<str> },
    /// To the user's owner: the user's log, back from its lease.
    LeaseReturn {
        user: Arc<str>,
        log: Vec<Instant>,
        window: UserWindow<ConnId>,
    },
    /// From a room's owner, to the core that holds the user's `clientMsgId`
    /// window (tried first on the sending connection's core, which holds
    /// it under a lease; otherwise passed on towards the holder): how a
    /// publish that carried a `clientMsgId` ended (None: refused, forget
    /// it).
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
    /// `deflated` is 0, or the offset in `frame` where a compressed copy
    /// of the same message starts (`frame[..deflated]` is the plain frame):
    /// one buffer carries both, so the cross-core copy stays one copy.
    Deliver {
        room: Arc<str>,
        frame: Bytes,
        deflated: u32,
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
    /// To every other core: close the local connections of `user` (the operator API's
    /// disconnect, 4002; a ban's closes go with [`ShardMsg::BanReplica`]).
    CloseUser {
        user: Arc<str>,
        code: u16,
        reason: CloseReason,
    },
    /// From a user's owner core to every other core: `user` is banned until `until_ms`
    /// (ms since the Unix epoch; None: the ban is lifted). Each core updates its copy of the
    /// ban list, closes the user's local connections with 4003 on a ban, and answers
    /// [`ShardMsg::BanApplied`] with `ack` when it is Some (the owner answers the HTTP
    /// request once every core has applied it).
    BanReplica {
        user: Arc<str>,
        until_ms: Option<u64>,
        ack: Option<u64>,
    },
    /// To a user's owner core: a ban change from another instance (Redis), to be applied and
    /// replicated to every core like a local one, without an audit record (its origin wrote
    /// it) or a further broadcast.
    BanFromCluster {
        user: Arc<str>,
        until_ms: Option<u64>,
    },
    /// To a room's owner core: another instance deleted message `id` of `room` (Redis): it
    /// goes from this instance's history too, and the members here get `message_deleted`.
    DeleteFromCluster { room: Arc<str>, id: MessageId },
    /// To a user's owner core: core `from` applied the [`ShardMsg::BanReplica`] numbered `ack`.
    BanApplied { ack: u64 },
    /// A question for another core; answered with `Answer` and the same `req`.
    Query { req: u64, query: Query },
    /// The answer to a `Query`.
    Answer { req: u64, answer: Answer },
    /// Start draining: stop accepting, close connections with 1001.
    Shutdown,
}

impl ShardMsg {
    /// Typing and presence frames: advisory, the first traffic shed when
    /// the mesh backs up (`runtime/mesh.rs`). A typing indicator expires on
    /// its own and a presence change is corrected by the next one.
    pub fn is_advisory(&self) -> bool {
        match self {
            ShardMsg::Typing { .. } => true,
            ShardMsg::Relay { kind, .. } | ShardMsg::Deliver { kind, .. } => {
                matches!(kind, FrameKind::Typing | FrameKind::Presence)
            }
            _ => false,
        }
    }

    /// Messages the mesh never drops, whatever its backlog: an adopted
    /// socket (dropping it would leak the connection), a close request,
    /// shutdown, and the operator API's closes and ban changes (a lost ban
    /// change would leave a core's copy of the ban list wrong, and a lost
    /// ack the request unanswered). At most one per connection or core, or
    /// per operator request and core, so they cannot grow a queue without
    /// bound.
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            ShardMsg::Adopt(_)
                | ShardMsg::CloseConn { .. }
                | ShardMsg::CloseUser { .. }
                | ShardMsg::BanReplica { .. }
                | ShardMsg::BanFromCluster { .. }
                | ShardMsg::BanApplied { .. }
                | ShardMsg::Shutdown
        )
    }
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
    /// The operator API's delete (asked of the room's owner): remove message `id` from the
    /// history and tell the room; `actor` is the admin, for the audit record.
    Delete {
        room: Arc<str>,
        id: MessageId,
        actor: Arc<str>,
        at_ms: u64,
    },
    /// The operator API's ban or unban (asked of the user's owner core).
    Ban(Box<BanChange>),
}

/// A ban or its lifting, as the operator API asks it of the user's owner core.
#[derive(Debug, Clone)]
pub struct BanChange {
    /// The user banned or unbanned.
    pub user: Arc<str>,
    /// When the ban ends, ms since the Unix epoch; None lifts the user's ban.
    pub until_ms: Option<u64>,
    /// The admin's reason, for the audit record.
    pub reason: Option<String>,
    /// The admin who acted, for the audit record.
    pub actor: Arc<str>,
    /// When the admin acted, ms since the Unix epoch (the audit record's time).
    pub at_ms: u64,
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
    /// The operator action was carried out (a ban: applied on every core).
    Done,
    /// A delete found no such message in the room.
    NotFound,
    /// The operator action was refused, with the reason (e.g. the ban list is full).
    Refused(String),
    /// The WebSocket frame the message path sent a [`ConnId::waiter`]: the accepted
    /// `message`, or an `error`.
    Frame(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn waiter_ids_are_not_connections() {
        let w = ConnId::waiter(3, 42);
        assert!(w.is_waiter());
        assert_eq!((w.core(), w.waiter_req()), (3, 42));
        assert!(!ConnId::new(3, 42).is_waiter());
        assert_ne!(w, ConnId::new(3, 42));
    }

    #[test]
    fn conn_id_keeps_core_and_counter() {
        let id = ConnId::new(3, 42);
        assert_eq!(id.core(), 3);
        assert_eq!(id.0 & 0xffff_ffff_ffff, 42);
        assert_ne!(ConnId::new(1, 42), ConnId::new(2, 42));
    }
}
