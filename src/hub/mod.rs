//! The room fan-out: one core's rooms, members and users, and what the core
//! does with every piece of cross-core work.
//!
//! A core plays three roles, each for the keys it owns (see `shard.rs`),
//! each in a file of its own (`room_owner.rs`, `user_owner.rs`,
//! `member.rs`; a connection's frames are `session.rs`, reads answered
//! later `reads.rs`); this file holds the state, the constructor and the
//! dispatch of mesh messages, backend events and the periodic sweep:
//!
//! - **Room owner** (`shard_for(room)`): orders the room's messages, has
//!   the broker give them ids, moderates, stores history, encodes each
//!   message once as a complete WebSocket frame, delivers it to local
//!   members and sends one copy to each other core with members. Counts
//!   the room's users across cores for `memberCount` and presence.
//! - **User owner** (`shard_for(user)`): the user's rate limit (lent to
//!   the one core holding all of the user's connections when there is one:
//!   `crate::lease`) and live connection count (online on the first,
//!   offline after the last). The user's `clientMsgId` window moves with
//!   the log.
//! - **Member core**: where a connection runs. Keeps the local member list of
//!   every room it has members in and hands frames to their outbound queues.
//!
//! # Backends
//!
//! The hub reaches everything outside this instance through small traits,
//! each chosen once by the runtime from the settings; the hub branches only
//! on what they answer, never on which implementation it holds:
//!
//! | trait | without the backend | with it |
//! |---|---|---|
//! | [`crate::broker::Broker`]: ids, cluster-wide join counts, relays to other instances, offline checks, presence mirroring | [`crate::broker::MemoryBroker`] (this instance is the cluster: every answer `Now`) | `redis::link::ScaleOut` (REDIS_URL: `Pending`, answered by Redis events) |
//! | [`crate::history::History`]: the owned rooms' messages, admission | [`MemoryHistory`] (every read `Now`) | `pg::history::PgHistory` (DATABASE_URL: memory cache + Postgres, reads may be `Pending`) |
//! | [`crate::moderation::AuditSink`]: the audit trail | [`MemoryAudit`] | `pg::audit::PgAudit` (memory + Postgres) |
//! | [`crate::presence::PresenceStore`]: connection counts | [`crate::presence::MemoryPresence`] | the same; mirroring to Redis is the broker's |
//!
//! A `Pending` answer comes back as a [`BackendEvent`] on the core's one
//! bounded backend event queue (`crate::events`: Redis events and Postgres
//! rows alike), which the runtime drains into [`Hub::on_backend_event`].
//!
//! When an owner is the local core the work is a function call; otherwise
//! it is a [`ShardMsg`] written to the hub's [`Outbox`], which the runtime
//! drains into the cross-core mesh right after every hub call, in order.
//! The hub is plain code: it reads no clock (every entry point takes `now`,
//! and `wall` where a message is stamped), spawns and awaits nothing, and
//! knows no executor, so a test drives it by calling its entry points and
//! moving outbox messages between hubs by hand.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::auth::Verifier;
use crate::broker::{self, Arrival, Broker, MemoryBroker, PendingJoin};
use crate::client::{Client, Flush};
use crate::config::Settings;
use crate::dedupe::{Dedupe, DEDUPE_WINDOW};
use crate::deflate::Deflater;
use crate::events::BackendEvent;
use crate::expiry::ExpiryWheel;
use crate::history::{History, MemoryHistory};
use crate::lease::{LocalLease, Placement};
use crate::metrics::{CloseReason, CoreSnapshot, TransportCounters};
use crate::moderation::{AuditAction, AuditSink, MemoryAudit, Moderator};
use crate::presence::{MemoryPresence, PresenceStore, Status};
use crate::protocol::{self, ErrorCode, MessageId};
use crate::ratelimit::{BudgetRates, KeyedThrottle, LogSampler, RateLimiter, LOG_SAMPLER_USERS};
use crate::redis::worker::Event;
use crate::shard::{shard_for, Answer, ConnId, FrameKind, Publish, Query, ShardMsg};
use crate::ws;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod expiry_tests;
mod member;
#[cfg(test)]
mod mesh_tests;
mod operator;
#[cfg(test)]
mod operator_tests;
mod reads;
mod room_owner;
#[cfg(test)]
mod scaleout_tests;
mod session;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
mod user_owner;

pub use crate::pg::history::MAX_PG_READS;
pub use operator::{wall_ms, Bans, BANNED_CLOSE, DISCONNECTED_CLOSE, MAX_BANS};
pub use reads::UNAVAILABLE_TEXT;

/// Most messages replayed by `join_room` with `since` (contract section 3).
pub const MAX_REPLAY: usize = 1000;
/// Dedupe entries a core keeps; beyond it the oldest are forgotten early.
pub const DEDUPE_CAPACITY: usize = 1_000_000;
/// Audit records kept in memory per core (they are also logged).
pub const AUDIT_MEMORY: usize = 10_000;
/// Close code for a connection idle past the timeout.
pub const IDLE_CLOSE: u16 = 1001;
/// Close code for a connection whose token expired (contract section 8).
pub const TOKEN_EXPIRED_CLOSE: u16 = 4001;
/// Close code for a connection over MAX_CONNECTIONS_PER_USER (policy violation).
pub const TOO_MANY_CONNECTIONS_CLOSE: u16 = 1008;
/// (user, room) typing buckets a room-owner core keeps; when full of busy
/// keys, typing for a new pair is dropped (advisory frames, see ratelimit.rs).
pub const TYPING_KEYS_PER_CORE: usize = 100_000;
/// "Rate limit exceeded" lines per second per core, on top of the one line
/// per user per rate-limit window.
pub const RATE_LIMIT_LOG_PER_SEC: u32 = 10;

/// Per-connection limits, from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// MAX_MESSAGE_LENGTH, in characters.
    pub max_message_chars: usize,
    /// MAX_ROOMS_PER_CONNECTION.
    pub max_rooms: usize,
    /// OUTBOUND_QUEUE_BYTES.
    pub outbound_bytes: usize,
    /// WRITE_STALL_TIMEOUT_MS.
    pub stall_timeout: Duration,
    /// PING_INTERVAL_MS.
    pub ping_interval: Duration,
    /// IDLE_TIMEOUT_MS.
    pub idle_timeout: Duration,
    /// ROOM_FRAMES_PER_SEC, HISTORY_FRAMES_PER_SEC, TYPING_FRAMES_PER_SEC.
    pub budgets: BudgetRates,
    /// MAX_CONNECTIONS_PER_USER.
    pub max_connections_per_user: u32,
    /// TOKEN_EXPIRY_GRACE_MS: how long after its token's `exp` a connection
    /// is closed with 4001.
    pub token_expiry_grace: Duration,
}

impl Limits {
    /// Limits from the settings.
    pub fn from_settings(s: &Settings) -> Limits {
        Limits {
            max_message_chars: s.max_message_length as usize,
            max_rooms: s.max_rooms_per_connection as usize,
            outbound_bytes: s.outbound_queue_bytes as usize,
            stall_timeout: s.write_stall_timeout(),
            ping_interval: s.ping_interval(),
            idle_timeout: s.idle_timeout(),
            budgets: s.budget_rates(),
            max_connections_per_user: s.max_connections_per_user as u32,
            token_expiry_grace: s.token_expiry_grace(),
        }
    }
}

/// A room owned by this core.
#[derive(Debug, Default)]
struct OwnedRoom {
    /// Connections per user in the room, across all cores; its size is `memberCount`.
    users: HashMap<Arc<str>, u32>,
    /// Member connections per core: which cores get a copy of each message.
    member_cores: Vec<u32>,
    /// Member connections that negotiated permessage-deflate, across all
    /// cores: the room's messages get a compressed copy while it is not 0.
    deflate_members: u32,
    /// The room's last accepted id: the floor the broker's next id must
    /// exceed (Redis's script, or this core's fallback during an outage;
    /// the memory broker's ids exceed it by construction).
    last_id: Option<MessageId>,
    /// The last cluster-wide member count the broker gave for the room (0
    /// when it counts here): repeated joins are answered from it, never
    /// asked again.
    cluster_count: usize,
}

/// Who gets the `ack` of an accepted message: its sender, when this
/// instance took it from a client (None for other instances' messages).
pub struct AckTo {
    /// The sending connection (on this instance): gets the `ack` once the message is accepted.
    pub conn: ConnId,
    /// The sender's idempotency key.
    pub client_msg_id: Option<Box<str>>,
}

/// Who is waiting for the answer to a query this core asked.
enum Waiter {
    /// An HTTP request task (gone when it timed out; the answer is then
    /// dropped).
    Http(oneshot::Sender<Answer>),
    /// A client's `history` frame.
    ClientHistory {
        /// The asking connection: gets the `history` answer, if it is still open.
        conn: ConnId,
        /// Room id asked about: the answer's `history` frame names it.
        room: Arc<str>,
        /// True for a page without `after` (cut from its old end when it
        /// does not fit the connection's budget).
        keep_newest: bool,
    },
}

/// A query's answer: right away (local owner) or later (remote owner).
pub enum Asked {
    /// The owner is this core.
    Ready(Answer),
    /// Await the receiver (the runtime bounds the wait); a dropped sender
    /// means the hub is gone.
    Later(oneshot::Receiver<Answer>),
}

/// What one core's hub asks of the runtime, written during a call and
/// drained by the runtime right after it (the hub never sends, spawns or
/// awaits itself).
///
/// It holds at most what one call produced: the runtime empties it after
/// every call, so it is bounded by the work of one event (one frame, one
/// mesh message, one sweep), not by time. (Backend replies do not pass
/// here: the backends send them to the core's event queue themselves.)
#[derive(Default)]
pub struct Outbox {
    /// Messages for other cores, oldest first. Sent in exactly this order
    /// (FIFO per peer): the ordering guarantees in `shard.rs` (a `Joined`
    /// before any later `Deliver`) depend on it.
    mesh: Vec<(usize, ShardMsg)>,
}

impl Outbox {
    /// Queues `msg` for core `to` (never this core).
    fn send(&mut self, to: usize, msg: ShardMsg) {
        self.mesh.push((to, msg));
    }

    /// The mesh messages queued so far, oldest first, removed.
    pub fn take_mesh(&mut self) -> Vec<(usize, ShardMsg)> {
        std::mem::take(&mut self.mesh)
    }

    /// The mesh messages queued so far, oldest first, removed as iterated
    /// (keeps the buffer for the next call).
    pub fn drain_mesh(&mut self) -> std::vec::Drain<'_, (usize, ShardMsg)> {
        self.mesh.drain(..)
    }

    /// True when there is nothing for the runtime.
    pub fn is_empty(&self) -> bool {
        self.mesh.is_empty()
    }
}

/// One core's state.
pub struct Hub {
    /// What this core asks of the runtime: messages for other cores,
    /// drained after every call.
    outbox: Outbox,
    /// This core's index: local work is a call, other cores' a message.
    core: usize,
    /// Number of executor cores: the modulus of [`shard_for`] that picks each key's owner.
    cores: usize,
    /// Per-connection limits.
    limits: Limits,
    /// Rooms this core owns.
    owned: HashMap<Arc<str>, OwnedRoom>,
    /// Local members of every room with members here, owned here or not.
    local: HashMap<Arc<str>, Vec<Rc<Client>>>,
    /// Connections running on this core.
    clients: HashMap<ConnId, Rc<Client>>,
    /// Presence of the users this core owns.
    presence: Box<dyn PresenceStore>,
    /// Per-user message logs: of the users this core owns whose log is at
    /// home, and of the users whose log this core holds under a lease.
    limiter: RateLimiter,
    /// User owner: where the log of each owned user whose log is away is
    /// (lent, or on its way back), and the messages waiting for it to come
    /// home. Bounded by the owned users with connections; removed when the
    /// log returns (absent: at home).
    placements: HashMap<Arc<str>, Placement<Box<Publish>>>,
    /// Member core: the lease state of each user with connections here
    /// whom another core owns (forwarding, awaiting an answer, holding
    /// the log). Removed with the user's last connection here.
    leases: HashMap<Arc<str>, LocalLease<Box<Publish>>>,
    /// `clientMsgId` window of the users whose log this core holds (owned
    /// and at home, or leased here): it moves with the log. Waiters are
    /// connections that sent a duplicate while the first send was in
    /// flight.
    dedupe: Dedupe<ConnId>,
    /// Message ids: monotonic on this core, hence per room.
    ids: ulid::Generator,
    /// Messages of the rooms this core owns: memory alone
    /// ([`MemoryHistory`]) or memory in front of Postgres (`PgHistory`),
    /// chosen by the runtime; reads answer now or later (`hub/reads.rs`).
    history: Box<dyn History>,
    /// Content rules; None when moderation is off.
    moderator: Option<Moderator>,
    /// Where masked/blocked messages are recorded: [`MemoryAudit`], or
    /// `PgAudit` (the same plus Postgres) with DATABASE_URL.
    audit: Box<dyn AuditSink>,
    /// What the history's reads in flight complete, by read id; bounded by
    /// the history ([`MAX_PG_READS`]), every one answered once (a lost
    /// reply reads as a failure).
    reads: HashMap<u64, reads::Wait>,
    /// Queries asked by this core, by request id. Bounded by the requests
    /// in flight: every query is answered by its owner core (the mesh never
    /// drops), and an HTTP asker that timed out leaves a waiter whose answer
    /// is discarded on arrival.
    pending: HashMap<u64, Waiter>,
    /// Last request id given out (ids start at 1); the key of `pending`.
    next_req: u64,
    /// Last connection number given on this core; [`ConnId::new`] puts the core in the high bits.
    next_conn: u64,
    /// This core's metrics (plain integers; merged on scrape).
    pub metrics: CoreSnapshot,
    /// Sequencing, cluster-wide counts and relays: this instance alone
    /// ([`MemoryBroker`]) or the Redis scale-out (`ScaleOut`), chosen by
    /// the runtime; the hub acts on its answers only.
    broker: Box<dyn Broker>,
    /// This core's batched sender (`BATCHED_SENDS`), handed to every new
    /// connection; None: each driver sends its own queue.
    flush: Option<Rc<dyn Flush>>,
    /// The runtime's mesh and sender counters, read when a metrics query
    /// is answered; None (tests): they stay 0.
    transport: Option<Rc<dyn TransportCounters>>,
    /// The last `memberCount` this core sent for each room with local
    /// members (repeated joins are answered from it); bounded like `local`,
    /// removed with the room's last local member.
    room_counts: HashMap<Arc<str>, usize>,
    /// Typing budget per (room, user) for rooms this core owns, across the
    /// user's connections; bounded by [`TYPING_KEYS_PER_CORE`].
    typing: KeyedThrottle<(Arc<str>, Arc<str>)>,
    /// Which rate-limited sends of users this core owns get a "Rate limit
    /// exceeded" line (one per user per rate-limit window).
    rate_log: LogSampler,
    /// When each local connection's token expires (`exp` plus the grace);
    /// the sweep closes the due ones with 4001. One entry per connection
    /// whose token has `exp`, removed on close.
    expiry: ExpiryWheel,
    /// Checks the tokens of `refresh` frames (the runtime sets the one the
    /// upgrades use); None: every refresh is refused with `invalid_token`.
    verifier: Option<Verifier>,
    /// This core's copy of the ban list (`operator.rs`): read by upgrades
    /// accepted here and by the message frames of this core's connections,
    /// written only by the users' owner cores. At most [`MAX_BANS`].
    bans: Bans,
    /// Ban changes this core (their user's owner) sent to the other cores,
    /// by ack id, until every core has applied them; bounded by the
    /// operator requests in flight (every core answers each once).
    ban_acks: HashMap<u64, operator::BanWait>,
    /// The compressor of broadcast frames when WS_COMPRESSION is on: each
    /// message of the rooms this core owns is compressed here once, for
    /// every member that negotiated permessage-deflate.
    deflater: Option<Deflater>,
}

impl Hub {
    /// An empty hub for core `core` of `cores`, created at `now`.
    pub fn new(
        core: usize,
        cores: usize,
        settings: &Settings,
        moderator: Option<Moderator>,
        now: Instant,
    ) -> Hub {
        Hub {
            core,
            cores,
            outbox: Outbox::default(),
            limits: Limits::from_settings(settings),
            owned: HashMap::new(),
            local: HashMap::new(),
            clients: HashMap::new(),
            presence: Box::new(MemoryPresence::default()),
            limiter: RateLimiter::new(
                settings.rate_limit_max_messages as u32,
                settings.rate_limit_window(),
            ),
            placements: HashMap::new(),
            leases: HashMap::new(),
            dedupe: Dedupe::new(DEDUPE_WINDOW, DEDUPE_CAPACITY / cores),
            ids: ulid::Generator::new(),
            history: Box::new(Hub::memory_history(settings, cores)),
            moderator,
            audit: Box::new(MemoryAudit::new(AUDIT_MEMORY)),
            reads: HashMap::new(),
            pending: HashMap::new(),
            next_req: 0,
            next_conn: 0,
            metrics: CoreSnapshot::default(),
            broker: Box::new(MemoryBroker),
            flush: None,
            transport: None,
            room_counts: HashMap::new(),
            typing: KeyedThrottle::new(settings.typing_frames_per_sec as u32, TYPING_KEYS_PER_CORE),
            rate_log: LogSampler::new(
                settings.rate_limit_window(),
                RATE_LIMIT_LOG_PER_SEC,
                LOG_SAMPLER_USERS,
                now,
            ),
            expiry: ExpiryWheel::new(now),
            verifier: None,
            bans: Bans::default(),
            ban_acks: HashMap::new(),
            deflater: settings
                .ws_compression
                .then(|| Deflater::new(settings.ws_compression_min_bytes as usize)),
        }
    }

    /// Sets the verifier of `refresh` frames (the one `/ws` upgrades use).
    pub fn set_verifier(&mut self, verifier: Verifier) {
        self.verifier = Some(verifier);
    }

    /// Sends the fan-outs of connections opened from now on through
    /// `flush` (the runtime's batched sender).
    pub fn set_flush(&mut self, flush: Rc<dyn Flush>) {
        self.flush = Some(flush);
    }

    /// Reads the runtime's transport counters into each metrics answer.
    pub fn set_transport(&mut self, transport: Rc<dyn TransportCounters>) {
        self.transport = Some(transport);
    }

    /// What this core's last calls asked of the runtime; drain it after
    /// every call.
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Replaces this core's broker (the runtime sets the Redis one when
    /// REDIS_URL is set; the default is [`MemoryBroker`]).
    pub fn set_broker(&mut self, broker: Box<dyn Broker>) {
        self.broker = broker;
    }

    /// MAX_MESSAGE_LENGTH.
    pub fn max_message_chars(&self) -> usize {
        self.limits.max_message_chars
    }

    /// MAX_ROOMS_PER_CONNECTION.
    pub fn max_rooms(&self) -> usize {
        self.limits.max_rooms
    }

    /// Connections on this core.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The memory history one of `cores` cores keeps (alone, or as the
    /// cache in front of Postgres).
    pub fn memory_history(settings: &Settings, cores: usize) -> MemoryHistory {
        MemoryHistory::new(
            settings.history_per_room as usize,
            (settings.history_total as usize / cores).max(settings.history_per_room as usize),
        )
    }

    /// Replaces this core's history (the runtime sets the Postgres one when
    /// DATABASE_URL is set; the default is [`MemoryHistory`]).
    pub fn set_history(&mut self, history: Box<dyn History>) {
        self.history = history;
    }

    /// Replaces this core's audit sink (default: [`MemoryAudit`]).
    pub fn set_audit(&mut self, audit: Box<dyn AuditSink>) {
        self.audit = audit;
    }

    fn owner(&self, key: &str) -> usize {
        shard_for(key, self.cores)
    }

    // ---- queries -------------------------------------------------------

    /// Asks core `target` a question (answered in place when local).
    pub fn ask(&mut self, target: usize, query: Query, now: Instant) -> Asked {
        let (tx, mut rx) = oneshot::channel();
        let req = self.register(Waiter::Http(tx));
        if target != self.core {
            self.outbox.send(target, ShardMsg::Query { req, query });
            return Asked::Later(rx);
        }
        // Answered in place unless the history has to read first.
        self.answer_query(target, req, query, now);
        match rx.try_recv() {
            Ok(Some(answer)) => Asked::Ready(answer),
            _ => Asked::Later(rx),
        }
    }

    /// The owner core of a room or user id.
    pub fn owner_of(&self, key: &str) -> usize {
        self.owner(key)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    fn register(&mut self, waiter: Waiter) -> u64 {
        self.next_req += 1;
        self.pending.insert(self.next_req, waiter);
        self.next_req
    }

    fn answer(&mut self, query: Query) -> Answer {
        match query {
            Query::Metrics => {
                let mut snapshot = self.metrics.clone();
                snapshot.connections = self.clients.len() as u64;
                if let Some(transport) = &self.transport {
                    transport.fill(&mut snapshot);
                }
                Answer::Metrics(Box::new(snapshot))
            }
            Query::RoomOnline(room) => {
                let mut users: Vec<Arc<str>> = self
                    .owned
                    .get(&room)
                    .map(|r| r.users.keys().cloned().collect())
                    .unwrap_or_default();
                users.sort();
                Answer::Users(users)
            }
            Query::UserOnline(user) => {
                let online = self.presence.user_status(&user) == Status::Online;
                Answer::Users(if online { vec![user] } else { Vec::new() })
            }
            Query::History {
                room,
                before,
                after,
                limit,
            } => {
                // Memory's view; the owner's answer goes through
                // `answer_query`, which may read the durable store.
                let page = self.history.page(&room, before, after, limit);
                Answer::Messages(page.into_iter().map(|m| m.json).collect())
            }
            // Answered by `answer_query` (they change state at the owner).
            Query::Delete { .. } | Query::Ban(_) => Answer::Unavailable,
        }
    }

    /// A client's `history` frame: answered by the room's owner.
    pub fn history_for_client(
        &mut self,
        client: &Client,
        room: Arc<str>,
        before: Option<MessageId>,
        after: Option<MessageId>,
        limit: usize,
        now: Instant,
    ) {
        let owner = self.owner(&room);
        let query = Query::History {
            room: room.clone(),
            before,
            after,
            limit,
        };
        let keep_newest = after.is_none();
        let req = self.register(Waiter::ClientHistory {
            conn: client.id,
            room,
            keep_newest,
        });
        if owner == self.core {
            // Answered in place unless the history has to read first.
            self.answer_query(owner, req, query, now);
        } else {
            self.outbox.send(owner, ShardMsg::Query { req, query });
        }
    }

    fn on_answer(&mut self, req: u64, answer: Answer, now: Instant) {
        match self.pending.remove(&req) {
            Some(Waiter::Http(tx)) => {
                // The asker may have timed out and gone; nothing to do then.
                let _ = tx.send(answer);
            }
            Some(Waiter::ClientHistory {
                conn,
                room,
                keep_newest,
            }) => {
                if let Some(client) = self.clients.get(&conn).cloned() {
                    self.answer_history(&client, &room, answer, keep_newest, now);
                }
            }
            None => {}
        }
    }

    /// Answers a client's `history` frame: the page cut to what the
    /// connection's outbound budget has room for (`"more":true` when cut,
    /// so the client asks for the rest), or `unavailable` when the store
    /// could not answer in full (contract section 4: never a partial page
    /// presented as whole).
    fn answer_history(
        &mut self,
        client: &Client,
        room: &str,
        answer: Answer,
        keep_newest: bool,
        now: Instant,
    ) {
        match answer {
            Answer::Messages(messages) => {
                let room_left = client.live_room();
                let (body, _) =
                    protocol::encode_history_frame(room, &messages, keep_newest, room_left);
                client.push_own(&body, now);
            }
            _ => {
                let text = reads::HISTORY_UNAVAILABLE_TEXT;
                self.send_error(client, ErrorCode::Unavailable, text, None, now);
            }
        }
    }

    // ---- cross-core dispatch ------------------------------------------

    /// Handles one message from core `from` (adoption and shutdown are
    /// handled by the server before this).
    pub fn on_shard_msg(&mut self, from: usize, msg: ShardMsg, now: Instant, wall: SystemTime) {
        match msg {
            ShardMsg::Join {
                room,
                user,
                conn,
                since,
                count,
                ticket,
                deflate,
            } => {
                let join = PendingJoin {
                    room,
                    user,
                    conn,
                    from,
                    since,
                    count,
                    ticket,
                    deflate,
                };
                // The broker's count comes first (now, or from the cluster);
                // `finish_join` then reads Postgres when memory cannot
                // answer `since` alone.
                self.join_at_owner(join, now);
            }
            ShardMsg::Joined(answer) => self.joined(*answer, now),
            ShardMsg::Leave {
                room,
                user,
                deflate,
            } => self.leave_owner(room, user, from, deflate),
            ShardMsg::Publish(p) => self.publish_user_owner(p, now, wall),
            ShardMsg::Sequence(p) => self.accept_at_owner(*p, now, wall),
            ShardMsg::LeaseGrant { user, log, window } => {
                self.lease_granted(user, log, window, now, wall)
            }
            ShardMsg::LeaseDenied { user } => self.lease_denied(user),
            ShardMsg::LeaseRevoke { user } => self.lease_revoked(user),
            ShardMsg::LeaseReturn { user, log, window } => {
                self.lease_returned(user, log, window, now, wall)
            }
            ShardMsg::Published {
                user,
                client_msg_id,
                outcome,
            } => self.on_published(user, client_msg_id, outcome, now),
            ShardMsg::Relay {
                room,
                frame,
                kind,
                exclude,
            } => self.relay_owner(room, frame, kind, exclude, now),
            ShardMsg::Deliver {
                room,
                frame,
                deflated,
                kind,
                exclude,
                received_at,
            } => self.deliver_local(&room, frame, deflated, kind, exclude, received_at, now),
            ShardMsg::ToConn { conn, frame } => self.send_to_conn(conn, frame, now),
            ShardMsg::UserOnline { user, room, conn } => self.user_online(user, room, conn, now),
            ShardMsg::CloseConn { conn, code, reason } => self.close_conn(conn, code, reason),
            ShardMsg::Typing {
                room,
                user,
                frame,
                exclude,
            } => self.typing_owner(room, user, frame, exclude, now),
            ShardMsg::UserOffline { user, rooms } => self.user_offline(user, rooms, now),
            ShardMsg::CloseUser { user, code, reason } => {
                self.close_user_local(&user, code, reason)
            }
            ShardMsg::BanReplica {
                user,
                until_ms,
                ack,
            } => {
                self.apply_ban(user, until_ms, operator::wall_ms(wall));
                if let Some(ack) = ack {
                    self.outbox.send(from, ShardMsg::BanApplied { ack });
                }
            }
            ShardMsg::BanFromCluster { user, until_ms } => {
                self.ban_from_cluster(user, until_ms, now, wall)
            }
            ShardMsg::BanApplied { ack } => self.ban_applied(ack, now),
            ShardMsg::DeleteFromCluster { room, id } => self.delete_from_cluster(room, id, now),
            ShardMsg::Query { req, query } => self.answer_query(from, req, query, now),
            ShardMsg::Answer { req, answer } => self.on_answer(req, answer, now),
            ShardMsg::Adopt(_) | ShardMsg::Shutdown => {
                debug_assert!(false, "handled by the server loop");
            }
        }
    }

    // ---- housekeeping --------------------------------------------------

    /// Closes, with 4001, every connection whose token expired (its `exp`
    /// plus TOKEN_EXPIRY_GRACE_MS) by `now`. Part of [`Hub::sweep`]; cheap
    /// enough (the due buckets only) for the runtime to call more often.
    pub fn expire_tokens(&mut self, now: Instant) {
        for conn in self.expiry.expired(now) {
            if let Some(client) = self.clients.get(&conn) {
                client.request_close(TOKEN_EXPIRED_CLOSE, CloseReason::TokenExpired);
            }
        }
    }

    /// Periodic work: pings quiet connections, closes idle and stalled ones
    /// and those whose token expired, and forgets expired limiter and
    /// dedupe state.
    pub fn sweep(&mut self, now: Instant) {
        self.expire_tokens(now);
        let ping = Bytes::from(ws::encode_ping(b""));
        for client in self.clients.values() {
            if client.close_request().is_some() {
                continue;
            }
            if client.outbound().borrow().stalled(now) {
                client.request_close(
                    crate::outbound::SLOW_CONSUMER_CLOSE,
                    CloseReason::SlowConsumer,
                );
                continue;
            }
            let quiet = now.saturating_duration_since(client.last_seen());
            if quiet > self.limits.idle_timeout {
                client.request_close(IDLE_CLOSE, CloseReason::Idle);
            } else if quiet >= self.limits.ping_interval
                && now.saturating_duration_since(client.last_ping()) >= self.limits.ping_interval
            {
                client.push(ping.clone(), FrameKind::Message, now);
                client.pinged(now);
            }
        }
        self.limiter.sweep(now);
        self.dedupe.sweep(now);
        self.typing.sweep(now);
        self.rate_log.sweep(now);
        for overdue in self.broker.sweep(now) {
            self.settle_overdue(overdue, now);
        }
    }

    // ---- backends ------------------------------------------------------

    /// One event from this core's backend queue (`crate::events`): a
    /// Redis event or the rows of a Postgres read.
    pub fn on_backend_event(&mut self, event: BackendEvent, now: Instant, wall: SystemTime) {
        match event {
            BackendEvent::Broker(event) => self.on_broker_event(event, now, wall),
            BackendEvent::Rows { read, rows } => self.on_pg_rows(read, rows, now),
        }
    }

    /// Handles what the broker's thread sends this core: the broker keeps
    /// its own books and says what the hub has to do.
    pub fn on_broker_event(&mut self, event: Event, now: Instant, wall: SystemTime) {
        let Some(arrival) = self.broker.on_event(event, now) else {
            return;
        };
        match arrival {
            Arrival::Message {
                message,
                own,
                arrived,
            } => {
                let mut ack_to = None;
                let mut received_at = arrived;
                if let Some(msg) = own {
                    if msg.masked {
                        let at = message.id.timestamp_ms();
                        let room = message.room_id.clone();
                        self.record_audit(
                            message.id,
                            &msg.user,
                            &room,
                            AuditAction::Masked,
                            None,
                            at,
                        );
                    }
                    received_at = msg.received_at;
                    ack_to = Some(AckTo {
                        conn: msg.conn,
                        client_msg_id: msg.client_msg_id,
                    });
                }
                self.accept_sequenced(message, ack_to, received_at, now);
            }
            Arrival::Relay { room, kind, frame } => {
                self.fan_out(&room, frame, 0, kind, None, now, now);
            }
            Arrival::Settle(overdue) => {
                for o in overdue {
                    self.settle_overdue(o, now);
                }
            }
            Arrival::Fallback(msg) => {
                // Sequenced here instead: stored, acknowledged and delivered
                // on this instance like any accepted message, and its
                // clientMsgId completed.
                let floor = self.owned.get(&msg.room).and_then(|r| r.last_id);
                let generated = self
                    .ids
                    .generate_from_datetime(wall)
                    .unwrap_or_else(|_| ulid::Ulid::from_datetime(wall));
                let id = broker::local_id(generated, floor);
                self.accept_local(msg, id, id.timestamp_ms(), now);
            }
            Arrival::Counted(join, count) => self.finish_join(join, count, now),
            Arrival::OfflineChecked {
                user,
                rooms,
                elsewhere,
            } => {
                // Reconnected here meanwhile, or still online elsewhere: the
                // users' last state is online, so no offline frame.
                if !elsewhere && self.presence.user_status(&user) == Status::Offline {
                    self.announce_offline(user, rooms, now);
                }
            }
            Arrival::Operator(action) => self.operator_from_cluster(action, now, wall),
            Arrival::Resync => {
                let rooms = self
                    .owned
                    .iter()
                    .map(|(room, r)| (room.clone(), r.users.keys().cloned().collect()))
                    .collect();
                self.broker.snapshot(self.presence.online_users(), rooms);
            }
        }
    }

    /// Asks every connection on this core to close with `code`.
    pub fn close_all(&mut self, code: u16, reason: CloseReason) {
        for client in self.clients.values() {
            client.request_close(code, reason);
        }
    }
}
