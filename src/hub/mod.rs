//! The room fan-out: one core's rooms, members and users, and what the core
//! does with every piece of cross-core work.
//!
//! A core plays three roles, each for the keys it owns (see `shard.rs`):
//!
//! - **Room owner** (`shard_for(room)`): orders the room's messages, stamps
//!   ids (monotonic per core, so per room), moderates, stores history,
//!   encodes each message once as a complete WebSocket frame, delivers it to
//!   local members and sends one copy to each other core with members.
//!   Counts the room's users across cores for `memberCount` and presence.
//! - **User owner** (`shard_for(user)`): the user's rate limit, dedupe
//!   window and live connection count (online on the first, offline after
//!   the last).
//! - **Member core**: where a connection runs. Keeps the local member list of
//!   every room it has members in and hands frames to their outbound queues.
//!
//! With REDIS_URL (`scaleout.rs`), the room owner hands each moderated
//! message to Redis for its id and takes it back, like every other
//! instance, from its subscription; joins wait for the cluster-wide count;
//! typing and presence frames also go to the other instances.
//!
//! When an owner is the local core the work is a function call; otherwise
//! it is a [`ShardMsg`] through the [`Router`]. The hub lives in a `RefCell`
//! on its core and is never borrowed across an await.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::auth::Identity;
use crate::client::{Client, Membership};
use crate::config::Settings;
use crate::dedupe::{Begin, Dedupe, DEDUPE_WINDOW};
use crate::history::{HistoryStore, MemoryHistory, StoredMessage};
use crate::metrics::{CloseReason, CoreSnapshot, Outcome};
use crate::moderation::{AuditAction, AuditRecord, AuditSink, MemoryAudit, Moderator, Verdict};
use crate::outbound::{Outbound, Push};
use crate::presence::{MemoryPresence, PresenceStore, Status};
use crate::protocol::{self, ChatMessage, ErrorCode, MessageId};
use crate::ratelimit::{
    BudgetRates, Decision, KeyedThrottle, LogSampler, RateLimiter, LOG_SAMPLER_USERS,
};
use crate::redis::link::{self, Inflight, PendingJoin, ScaleOut};
use crate::redis::stats::RedisMetrics;
use crate::redis::worker::{Event, Sequenced};
use crate::runtime::mesh::Router;
use crate::shard::{Answer, ConnId, FrameKind, JoinAnswer, Publish, Query, Replay, ShardMsg};
use crate::ws;

mod durable;
#[cfg(test)]
mod scaleout_tests;

pub use durable::UNAVAILABLE_TEXT;

/// Most messages replayed by `join_room` with `since` (contract section 3).
pub const MAX_REPLAY: usize = 1000;
/// Dedupe entries a core keeps; beyond it the oldest are forgotten early.
pub const DEDUPE_CAPACITY: usize = 1_000_000;
/// Audit records kept in memory per core (they are also logged).
pub const AUDIT_MEMORY: usize = 10_000;
/// Close code for a connection idle past the timeout.
pub const IDLE_CLOSE: u16 = 1001;
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
    /// The room's last accepted id, kept only with Redis: the floor of the
    /// next id, whether Redis or this core (during an outage) assigns it.
    last_id: Option<MessageId>,
    /// The last cluster-wide member count Redis gave for the room (0
    /// without Redis): repeated joins are answered from it, never asked again.
    cluster_count: usize,
}

/// Where an accepted message came from, when it was this instance: who
/// gets the `ack`.
pub struct Origin {
    /// The sending connection.
    pub conn: ConnId,
    /// The sender's idempotency key.
    pub client_msg_id: Option<Box<str>>,
}

/// Who is waiting for the answer to a query this core asked.
enum Waiter {
    /// An HTTP request task.
    Http(LocalSender<Answer>),
    /// A client's `history` frame.
    ClientHistory {
        /// The asking connection.
        conn: ConnId,
        /// The room asked about.
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
    /// Await the receiver.
    Later(LocalReceiver<Answer>),
}

/// One core's state.
pub struct Hub {
    /// Cross-core sending.
    router: Rc<Router>,
    /// This core's index (cached from the router).
    core: usize,
    /// Number of cores.
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
    /// Per-user message limit for users this core owns.
    limiter: RateLimiter,
    /// `clientMsgId` window for users this core owns; waiters are connections
    /// that sent a duplicate while the first send was in flight.
    dedupe: Dedupe<ConnId>,
    /// Message ids: monotonic on this core, hence per room.
    ids: ulid::Generator,
    /// Messages of the rooms this core owns.
    history: Box<dyn HistoryStore>,
    /// Content rules; None when moderation is off.
    moderator: Option<Moderator>,
    /// Where masked/blocked messages are recorded.
    audit: MemoryAudit,
    /// The Postgres backend, when DATABASE_URL is set (see `hub/durable.rs`).
    durable: Option<crate::pg::link::Durable>,
    /// Postgres reads in flight, by request id; at most
    /// `durable::MAX_PG_READS`, every one answered (a lost reply reads as a
    /// failure).
    pg_waits: HashMap<u64, durable::PgWait>,
    /// Queries asked by this core, by request id. Bounded by the requests
    /// in flight: every query is answered by its owner core (the mesh never
    /// drops), and an HTTP asker that timed out leaves a waiter whose answer
    /// is discarded on arrival.
    pending: HashMap<u64, Waiter>,
    /// Next query id.
    next_req: u64,
    /// Next connection counter.
    next_conn: u64,
    /// This core's metrics (plain integers; merged on scrape).
    pub metrics: CoreSnapshot,
    /// Redis scale-out (REDIS_URL set); None: single node.
    scaleout: Option<ScaleOut>,
    /// This core's batched writer (`BATCHED_SENDS`); None: each driver sends.
    writer: Option<Rc<crate::runtime::sender::Writer>>,
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
}

impl Hub {
    /// An empty hub for the router's core.
    pub fn new(router: Rc<Router>, settings: &Settings, moderator: Option<Moderator>) -> Hub {
        let cores = router.cores();
        Hub {
            core: router.core(),
            cores,
            router,
            limits: Limits::from_settings(settings),
            owned: HashMap::new(),
            local: HashMap::new(),
            clients: HashMap::new(),
            presence: Box::new(MemoryPresence::default()),
            limiter: RateLimiter::new(
                settings.rate_limit_max_messages as u32,
                settings.rate_limit_window(),
            ),
            dedupe: Dedupe::new(DEDUPE_WINDOW, DEDUPE_CAPACITY / cores),
            ids: ulid::Generator::new(),
            history: Box::new(MemoryHistory::new(
                settings.history_per_room as usize,
                (settings.history_total as usize / cores).max(settings.history_per_room as usize),
            )),
            moderator,
            audit: MemoryAudit::new(AUDIT_MEMORY),
            durable: None,
            pg_waits: HashMap::new(),
            pending: HashMap::new(),
            next_req: 0,
            next_conn: 0,
            metrics: CoreSnapshot::default(),
            scaleout: None,
            writer: None,
            room_counts: HashMap::new(),
            typing: KeyedThrottle::new(settings.typing_frames_per_sec as u32, TYPING_KEYS_PER_CORE),
            rate_log: LogSampler::new(
                settings.rate_limit_window(),
                RATE_LIMIT_LOG_PER_SEC,
                LOG_SAMPLER_USERS,
                Instant::now(),
            ),
        }
    }

    /// Sends the fan-outs of this core's connections through `writer`.
    pub fn set_writer(&mut self, writer: Rc<crate::runtime::sender::Writer>) {
        self.writer = Some(writer);
    }

    /// Turns on Redis scale-out for this core.
    pub fn set_scaleout(&mut self, scaleout: ScaleOut) {
        self.scaleout = Some(scaleout);
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

    /// The in-memory audit trail of this core.
    pub fn audit(&self) -> &MemoryAudit {
        &self.audit
    }

    fn owner(&self, key: &str) -> usize {
        self.router.owner(key)
    }

    // ---- connections --------------------------------------------------

    /// Creates the session of a new connection whose initial room this core
    /// owns, sends `room_joined` (its first frame) and any recovered
    /// messages, and announces the user online.
    pub fn open(
        &mut self,
        identity: Identity,
        room: Arc<str>,
        since: Option<MessageId>,
        now: Instant,
    ) -> Rc<Client> {
        self.next_conn += 1;
        let id = ConnId::new(self.core, self.next_conn);
        let outbound = Outbound::new(self.limits.outbound_bytes, self.limits.stall_timeout);
        let client = Client::new(
            id,
            identity,
            room.clone(),
            outbound,
            now,
            self.writer.clone(),
        );
        client.set_budgets(self.limits.budgets, now);
        self.clients.insert(id, client.clone());
        self.metrics.connections_opened += 1;
        self.join(&client, room.clone(), since, now);
        self.user_online(client.identity.user_id.clone(), room, id);
        client
    }

    /// Removes a closed connection: leaves its rooms and, if it was the
    /// user's last, announces the user offline there.
    pub fn closed(&mut self, client: &Rc<Client>, reason: CloseReason) {
        if self.clients.remove(&client.id).is_none() {
            return;
        }
        self.metrics.closed(reason);
        let user = client.identity.user_id.clone();
        let mut joined = Vec::new();
        for (room, membership) in client.take_rooms() {
            // A pending join is undone when its answer finds the client gone.
            if membership == Membership::Joined {
                self.remove_local_member(&room, client.id);
                self.leave_owner(room.clone(), user.clone(), self.core);
                joined.push(room);
            }
        }
        self.user_offline(user, joined);
    }

    /// Joins `client` to `room`, or answers a repeated join again.
    pub fn join(
        &mut self,
        client: &Rc<Client>,
        room: Arc<str>,
        since: Option<MessageId>,
        now: Instant,
    ) {
        let membership = client.membership(&room);
        if membership == Some(Membership::Pending) {
            return; // the owner's answer is on its way
        }
        if membership == Some(Membership::Joined) && since.is_none() {
            // A repeat: answered here from what this core knows, with no
            // hop to the owner and no backend round trip (a flood of them
            // must not reach Redis; the join budget bounds the answers).
            let count = self.known_member_count(&room);
            client.push_own(&protocol::encode_room_joined(&room, count, None), now);
            return;
        }
        let count = membership.is_none();
        let owner = self.owner(&room);
        if owner == self.core && self.scaleout.is_some() {
            // The answer waits for the cluster-wide count: pending until then.
            if count {
                client.set_membership(&room, Membership::Pending);
            }
            let join = PendingJoin {
                room,
                user: client.identity.user_id.clone(),
                conn: client.id,
                from: self.core,
                since,
                count,
            };
            self.join_at_owner(join, now);
        } else if owner == self.core {
            let user = client.identity.user_id.clone();
            if since.is_some_and(|s| {
                self.defer_join(self.core, client.id, &user, &room, s, count, None)
            }) {
                if count {
                    client.set_membership(&room, Membership::Pending);
                }
                return;
            }
            let (member_count, replay) = self.join_owner(&room, user, self.core, since, count);
            if count {
                client.set_membership(&room, Membership::Joined);
                self.local
                    .entry(room.clone())
                    .or_default()
                    .push(client.clone());
            }
            self.answer_join(client, &room, member_count, replay, now);
        } else {
            if count {
                client.set_membership(&room, Membership::Pending);
            }
            let msg = ShardMsg::Join {
                room,
                user: client.identity.user_id.clone(),
                conn: client.id,
                since,
                count,
            };
            self.router.send(owner, msg);
        }
    }

    /// Leaves `room` (the caller answers `room_left`).
    pub fn leave(&mut self, client: &Rc<Client>, room: &Arc<str>) {
        if client.remove_membership(room) == Some(Membership::Joined) {
            self.remove_local_member(room, client.id);
            self.leave_owner(room.clone(), client.identity.user_id.clone(), self.core);
        }
    }

    /// The member count a repeated join is answered with: the owner's own
    /// view when this core owns the room (with Redis, at least the last
    /// cluster-wide count), else the last count this core sent for it.
    fn known_member_count(&self, room: &str) -> usize {
        let owned = self
            .owned
            .get(room)
            .map(|r| r.users.len().max(r.cluster_count));
        owned
            .or_else(|| self.room_counts.get(room).copied())
            .unwrap_or(1)
    }

    /// Sends `room_joined` and queues the replay behind it. The replay is
    /// paced by the client's reading (`outbound.rs`), never cut by the
    /// outbound budget; only a connection whose replay backlog is already
    /// full (several joins with `since` at once) gets the newest part of
    /// this one, with `recovered:false` so it pages the rest.
    fn answer_join(
        &mut self,
        client: &Client,
        room: &str,
        member_count: usize,
        replay: Replay,
        now: Instant,
    ) {
        if let Some(known) = self.room_counts.get_mut(room) {
            *known = member_count;
        } else if self.local.contains_key(room) {
            self.room_counts.insert(Arc::from(room), member_count);
        }
        let Replay {
            mut messages,
            mut recovered,
        } = replay;
        let room_left = client.replay_room();
        if messages.len() > room_left {
            messages.drain(..messages.len() - room_left);
            recovered = Some(false);
        }
        let joined = protocol::encode_room_joined(room, member_count, recovered);
        client.push_own(&joined, now);
        if !messages.is_empty() {
            client.push_replay(messages, now);
        }
    }

    fn remove_local_member(&mut self, room: &str, id: ConnId) {
        if let Some(members) = self.local.get_mut(room) {
            if let Some(pos) = members.iter().position(|c| c.id == id) {
                members.swap_remove(pos);
            }
            if members.is_empty() {
                self.local.remove(room);
                self.room_counts.remove(room);
            }
        }
    }

    /// Owner side of a join with Redis: asks for the cluster-wide count
    /// first (answered by `on_broker_event`), or answers with the local
    /// count when Redis is down or its queue is full.
    fn join_at_owner(&mut self, join: PendingJoin, now: Instant) {
        if !join.count {
            // A repeat with `since` asks for a replay only: answered from
            // the owner's memory, never with a Redis count.
            return self.finish_join(join, None, now);
        }
        let join = match self.scaleout.as_mut() {
            Some(so) if so.up() => match so.join(join) {
                Ok(()) => return,
                Err(back) => back,
            },
            _ => join,
        };
        self.finish_join(join, None, now);
    }

    /// Registers a join at its owner and answers it (`cluster`: the count
    /// from Redis). A `since` that memory cannot answer alone goes to
    /// Postgres first (`defer_join`), carrying the cluster count, so the
    /// member is counted when the rows arrive, with the replay taken in the
    /// same step, exactly as without Redis.
    fn finish_join(&mut self, join: PendingJoin, cluster: Option<usize>, now: Instant) {
        let PendingJoin {
            room,
            user,
            conn,
            from,
            since,
            count,
        } = join;
        if since.is_some_and(|s| self.defer_join(from, conn, &user, &room, s, count, cluster)) {
            return;
        }
        let (local_count, replay) = self.join_owner(&room, user.clone(), from, since, count);
        let known = match (self.owned.get_mut(&room), cluster) {
            (Some(r), Some(c)) => {
                r.cluster_count = c;
                c
            }
            (Some(r), None) => r.cluster_count,
            (None, c) => c.unwrap_or(0),
        };
        let answer = JoinAnswer {
            room,
            user,
            conn,
            member_count: known.max(local_count),
            replay,
            counted: count,
        };
        if from == self.core {
            self.joined(answer, now);
        } else {
            self.router.send(from, ShardMsg::Joined(Box::new(answer)));
        }
    }

    /// Owner side of a join: counts the member and collects the replay.
    fn join_owner(
        &mut self,
        room: &Arc<str>,
        user: Arc<str>,
        core: usize,
        since: Option<MessageId>,
        count: bool,
    ) -> (usize, Replay) {
        let cores = self.cores;
        let entry = self.owned.entry(room.clone()).or_insert_with(|| OwnedRoom {
            users: HashMap::new(),
            member_cores: vec![0; cores],
            last_id: None,
            cluster_count: 0,
        });
        if count {
            let n = entry.users.entry(user.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                if let Some(so) = &self.scaleout {
                    so.room_add(room.clone(), user);
                }
            }
            entry.member_cores[core] += 1;
        }
        let member_count = entry.users.len();
        let replay = match since {
            Some(since) => self.memory_replay(room, since),
            None => Replay::default(),
        };
        (member_count, replay)
    }

    /// The replay of a join with `since` from memory alone: the newest
    /// [`MAX_REPLAY`] messages after `since`, recovered when that is all of
    /// them and memory still holds `since` itself or something older (so
    /// nothing between was evicted). Asking for one more than the cap tells
    /// "exactly the cap" from "more than the cap".
    fn memory_replay(&self, room: &str, since: MessageId) -> Replay {
        let mut messages = self.history.since(room, since, MAX_REPLAY + 1);
        let reaches_back = self.history.first_id(room).is_some_and(|f| f <= since);
        let recovered = messages.len() <= MAX_REPLAY && reaches_back;
        if messages.len() > MAX_REPLAY {
            messages.remove(0);
        }
        Replay {
            messages: messages.into_iter().map(|m| m.json).collect(),
            recovered: Some(recovered),
        }
    }

    /// Owner side of a leave (or routes it to the owner).
    fn leave_owner(&mut self, room: Arc<str>, user: Arc<str>, core: usize) {
        let owner = self.owner(&room);
        if owner != self.core {
            return self.router.send(owner, ShardMsg::Leave { room, user });
        }
        let Some(entry) = self.owned.get_mut(&room) else {
            return;
        };
        if let Some(n) = entry.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                entry.users.remove(&user);
                if let Some(so) = &self.scaleout {
                    so.room_remove(room.clone(), user);
                }
            }
        }
        entry.member_cores[core] = entry.member_cores[core].saturating_sub(1);
        if entry.users.is_empty() {
            self.owned.remove(&room);
        }
    }

    /// Member side of a remote owner's join answer.
    fn joined(&mut self, answer: JoinAnswer, now: Instant) {
        let JoinAnswer {
            room,
            user,
            conn,
            member_count,
            replay,
            counted,
        } = answer;
        let client = self.clients.get(&conn).cloned();
        let Some(client) = client else {
            if counted {
                self.leave_owner(room, user, self.core);
            }
            return;
        };
        if counted {
            if client.membership(&room) != Some(Membership::Pending) {
                // Left (or re-answered) while the join was in flight: undo.
                return self.leave_owner(room, user, self.core);
            }
            client.set_membership(&room, Membership::Joined);
            self.local
                .entry(room.clone())
                .or_default()
                .push(client.clone());
        }
        self.answer_join(&client, &room, member_count, replay, now);
    }

    // ---- messages ------------------------------------------------------

    /// A checked message from a local client: to the user's owner.
    pub fn publish(&mut self, p: Box<Publish>, now: Instant) {
        let owner = self.owner(&p.user.user_id);
        if owner == self.core {
            self.publish_user_owner(p, now);
        } else {
            self.router.send(owner, ShardMsg::Publish(p));
        }
    }

    /// User owner: dedupe and rate limit, then to the room's owner.
    fn publish_user_owner(&mut self, p: Box<Publish>, now: Instant) {
        let user = p.user.user_id.clone();
        if let Some(cmid) = &p.client_msg_id {
            match self.dedupe.begin(&user, cmid, p.conn, now) {
                Begin::New => {}
                Begin::Duplicate {
                    message_id,
                    room_id,
                } => {
                    self.metrics.message(Outcome::Duplicate);
                    let ack = protocol::encode_ack(cmid, message_id, &room_id);
                    return self.send_to_conn(p.conn, Bytes::from(ws::encode_text(&ack)), now);
                }
                Begin::Waiting => {
                    self.metrics.message(Outcome::Duplicate);
                    return;
                }
            }
        }
        if let Decision::Limited { retry_after } = self.limiter.check_and_record(&user, now) {
            self.metrics.message(Outcome::RateLimited);
            let ms = retry_after.as_millis() as u64;
            if let Some(suppressed) = self.rate_log.admit(&user, now) {
                // The original service's line; sampled (one per user per
                // window, a few per second) so a flood cannot flood the log.
                let window = self.limiter.window();
                tracing::warn!(
                    userId = %user,
                    messageCount = self.limiter.max(),
                    timeWindow = %format!("{}ms", window.as_millis()),
                    retryAfterMs = ms,
                    suppressed,
                    "Rate limit exceeded"
                );
            }
            let text = format!("rate limit exceeded; retry in {ms} ms");
            let mut targets = vec![p.conn];
            if let Some(cmid) = &p.client_msg_id {
                targets.extend(self.dedupe.abort(&user, cmid));
            }
            for conn in targets {
                self.error_to(conn, ErrorCode::RateLimited, &text, Some(ms), now);
            }
            return;
        }
        let owner = self.owner(&p.room);
        if owner == self.core {
            self.sequence(*p, now);
        } else {
            self.router.send(owner, ShardMsg::Sequence(p));
        }
    }

    /// Room owner: moderate, stamp, store, fan out, ack.
    fn sequence(&mut self, p: Publish, now: Instant) {
        let Publish {
            room,
            user,
            content,
            client_msg_id,
            conn,
            received_at,
        } = p;
        if self.durable_full() {
            return self.refuse_unavailable(user.user_id, conn, client_msg_id, now);
        }
        let wall = SystemTime::now();
        let id = self
            .ids
            .generate_from_datetime(wall)
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(wall));
        let timestamp_ms = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut masked = false;
        let content = match self.moderator.as_ref().map(|m| m.moderate(&content)) {
            None | Some(Verdict::Clean) => content,
            Some(Verdict::Masked(text)) => {
                masked = true;
                text
            }
            Some(Verdict::Blocked(reason)) => {
                let reason = reason.to_string();
                self.record_audit(
                    id,
                    &user,
                    &room,
                    AuditAction::Blocked,
                    Some(reason.clone()),
                    timestamp_ms,
                );
                self.metrics.message(Outcome::Blocked);
                let text = format!("message refused by moderation: {reason}");
                self.error_to(conn, ErrorCode::MessageBlocked, &text, None, now);
                if let Some(cmid) = client_msg_id {
                    self.published(user.user_id, cmid, None, now);
                }
                return;
            }
        };
        let msg = Inflight {
            room,
            user,
            content,
            masked,
            client_msg_id,
            conn,
            received_at,
            sent_at: now,
        };
        if self.scaleout.is_some() {
            return self.sequence_scaled(msg, id, now);
        }
        self.accept_local(msg, id, timestamp_ms, now);
    }

    /// Accepts a moderated message with a locally assigned id.
    fn accept_local(&mut self, msg: Inflight, id: MessageId, timestamp_ms: u64, now: Instant) {
        let Inflight {
            room,
            user,
            content,
            masked,
            client_msg_id,
            conn,
            received_at,
            ..
        } = msg;
        if masked {
            self.record_audit(id, &user, &room, AuditAction::Masked, None, timestamp_ms);
        }
        let message = ChatMessage {
            id,
            room_id: room,
            user_id: user.user_id,
            username: user.username,
            content,
            timestamp_ms,
        };
        let origin = Origin {
            conn,
            client_msg_id,
        };
        self.accept_sequenced(message, Some(origin), received_at, now);
    }

    /// Room owner with Redis: hands the message to Redis for the
    /// cluster-wide order, or (Redis down) sequences it here above the
    /// room's last id. A full command queue refuses it with `unavailable`.
    fn sequence_scaled(&mut self, msg: Inflight, local: MessageId, now: Instant) {
        let Some(so) = self.scaleout.as_mut() else {
            return;
        };
        let floor = self.owned.get(&msg.room).and_then(|r| r.last_id);
        if !so.up() {
            RedisMetrics::inc(&so.metrics().local_fallback);
            let id = link::local_id(local, floor);
            let timestamp_ms = id.timestamp_ms();
            return self.accept_local(msg, id, timestamp_ms, now);
        }
        let Err(msg) = so.publish(msg, floor) else {
            return;
        };
        let msg = *msg;
        self.metrics.message(Outcome::Unavailable);
        let text = "the message could not be accepted: the Redis queue is full; retry later";
        self.error_to(msg.conn, ErrorCode::Unavailable, text, None, now);
        if let Some(cmid) = msg.client_msg_id {
            self.published(msg.user.user_id, cmid, None, now);
        }
    }

    /// A sequenced message accepted at its room's owner: stored in history,
    /// encoded once, fanned out, and acknowledged when `origin` (this
    /// instance took it from a client) is given. Every accepted message
    /// passes here exactly once per instance that delivers it: the
    /// single-node path, Redis's copies (this instance's and others'), the
    /// local fallback during an outage, and an own message settled with the
    /// script's id when its copy did not come back (`settle_overdue`; the
    /// copy, should it still come, is dropped). A durable history store writes
    /// only messages with an `origin`, so a message is stored once in the
    /// cluster; the in-memory store keeps every message this instance
    /// delivers.
    pub fn accept_sequenced(
        &mut self,
        message: ChatMessage,
        origin: Option<Origin>,
        received_at: Instant,
        now: Instant,
    ) {
        let id = message.id;
        let room = message.room_id.clone();
        let json = protocol::encode_message(&message);
        let header = ws::text_header_len(json.len());
        let mut buf = Vec::with_capacity(header + json.len());
        ws::encode_text_into(&json, &mut buf);
        let frame = Bytes::from(buf);
        let json = frame.slice(header..);
        if origin.is_some() {
            self.store_message(&message, &json);
        }
        self.history.append(&room, StoredMessage { id, json });
        if self.scaleout.is_some() {
            if let Some(r) = self.owned.get_mut(&room) {
                r.last_id = r.last_id.max(Some(id));
            }
        }
        if origin.is_some() {
            self.metrics.message(Outcome::Accepted);
            self.metrics.room_message(&room);
        }
        self.fan_out(&room, frame, FrameKind::Message, None, received_at, now);
        if let Some(Origin {
            conn,
            client_msg_id: Some(cmid),
        }) = origin
        {
            let ack = protocol::encode_ack(&cmid, id, &room);
            self.send_to_conn(conn, Bytes::from(ws::encode_text(&ack)), now);
            self.published(message.user_id, cmid, Some((id, room)), now);
        }
    }

    fn record_audit(
        &mut self,
        message_id: MessageId,
        user: &Identity,
        room: &Arc<str>,
        action: AuditAction,
        reason: Option<String>,
        at_ms: u64,
    ) {
        match action {
            AuditAction::Masked => self.metrics.audit_masked += 1,
            AuditAction::Blocked => self.metrics.audit_blocked += 1,
        }
        let record = AuditRecord {
            message_id,
            user_id: user.user_id.clone(),
            room_id: room.clone(),
            action,
            reason,
            at_ms,
        };
        self.store_audit(&record);
        self.audit.record(record);
    }

    /// Tells the user's owner how a publish with a `clientMsgId` ended.
    fn published(
        &mut self,
        user: Arc<str>,
        client_msg_id: Box<str>,
        outcome: Option<(MessageId, Arc<str>)>,
        now: Instant,
    ) {
        let owner = self.owner(&user);
        if owner != self.core {
            let msg = ShardMsg::Published {
                user,
                client_msg_id,
                outcome,
            };
            return self.router.send(owner, msg);
        }
        match outcome {
            Some((message_id, room)) => {
                let waiters =
                    self.dedupe
                        .complete(&user, &client_msg_id, message_id, room.clone(), now);
                if !waiters.is_empty() {
                    let ack = Bytes::from(ws::encode_text(&protocol::encode_ack(
                        &client_msg_id,
                        message_id,
                        &room,
                    )));
                    for conn in waiters {
                        self.send_to_conn(conn, ack.clone(), now);
                    }
                }
            }
            None => {
                // The waiters' copies were refused with the first one; they
                // may retry.
                for conn in self.dedupe.abort(&user, &client_msg_id) {
                    let text = "the original message with this clientMsgId was refused";
                    self.error_to(conn, ErrorCode::MessageBlocked, text, None, now);
                }
            }
        }
    }

    /// Relays a frame to a room through its owner (typing, presence).
    pub fn relay(
        &mut self,
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        now: Instant,
    ) {
        let owner = self.owner(&room);
        if owner == self.core {
            self.relay_owner(room, frame, kind, exclude, now);
        } else {
            let msg = ShardMsg::Relay {
                room,
                frame,
                kind,
                exclude,
            };
            self.router.send(owner, msg);
        }
    }

    /// A typing frame of a local connection (its own budget already
    /// charged), to the room's owner for the per-(user, room) budget.
    pub fn typing(
        &mut self,
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
        exclude: ConnId,
        now: Instant,
    ) {
        let owner = self.owner(&room);
        if owner == self.core {
            self.typing_owner(room, user, frame, exclude, now);
        } else {
            let msg = ShardMsg::Typing {
                room,
                user,
                frame,
                exclude,
            };
            self.router.send(owner, msg);
        }
    }

    /// Room owner: the typing budget per (user, room), across the user's
    /// connections on every core; over it the indicator is dropped silently
    /// (it is advisory, and the next one carries the same state).
    fn typing_owner(
        &mut self,
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
        exclude: ConnId,
        now: Instant,
    ) {
        if !self.typing.allow((room.clone(), user), now) {
            self.metrics.typing_throttled += 1;
            return;
        }
        self.relay_owner(room, frame, FrameKind::Typing, Some(exclude), now);
    }

    /// Room owner: a typing or presence frame from this instance, to its
    /// members here and (with Redis) on the other instances.
    fn relay_owner(
        &mut self,
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        now: Instant,
    ) {
        if let Some(so) = &self.scaleout {
            so.relay(&room, kind, &frame);
        }
        self.fan_out(&room, frame, kind, exclude, now, now);
    }

    /// Room owner: local delivery plus one copy per other core with members.
    fn fan_out(
        &mut self,
        room: &Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        received_at: Instant,
        now: Instant,
    ) {
        if let Some(entry) = self.owned.get(room) {
            for (core, members) in entry.member_cores.iter().enumerate() {
                if core != self.core && *members > 0 {
                    // A private copy per core: recipients there clone a
                    // reference count that never leaves that core's cache.
                    let msg = ShardMsg::Deliver {
                        room: room.clone(),
                        frame: Bytes::copy_from_slice(&frame),
                        kind,
                        exclude,
                        received_at,
                    };
                    self.router.send(core, msg);
                }
            }
        }
        self.deliver_local(room, frame, kind, exclude, received_at, now);
    }

    /// Member core: hands the frame to every local member's queue.
    fn deliver_local(
        &mut self,
        room: &str,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        received_at: Instant,
        now: Instant,
    ) {
        let Some(members) = self.local.get(room) else {
            return;
        };
        let mut delivered = 0;
        let mut dropped = 0;
        for client in members {
            if Some(client.id) == exclude {
                continue;
            }
            match client.push(frame.clone(), kind, now) {
                Push::Queued { .. } => delivered += 1,
                Push::DroppedTyping => dropped += 1,
                Push::Overflow | Push::Closed => {}
            }
        }
        self.metrics.delivered += delivered;
        self.metrics.typing_dropped += dropped;
        if kind == FrameKind::Message && delivered > 0 {
            self.metrics
                .latency(now.saturating_duration_since(received_at));
        }
    }

    /// A frame for one connection, wherever it runs.
    fn send_to_conn(&mut self, conn: ConnId, frame: Bytes, now: Instant) {
        if conn.core() == self.core {
            if let Some(client) = self.clients.get(&conn) {
                client.push(frame, FrameKind::Message, now);
            }
        } else {
            self.router
                .send(conn.core(), ShardMsg::ToConn { conn, frame });
        }
    }

    /// An error frame for a local client.
    pub fn send_error(
        &mut self,
        client: &Client,
        code: ErrorCode,
        text: &str,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.metrics.error(code);
        client.push_own(&protocol::encode_error(code, text, retry_after_ms), now);
    }

    /// An error frame for a connection anywhere.
    fn error_to(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        text: &str,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.metrics.error(code);
        let frame = Bytes::from(ws::encode_text(&protocol::encode_error(
            code,
            text,
            retry_after_ms,
        )));
        self.send_to_conn(conn, frame, now);
    }

    // ---- presence ------------------------------------------------------

    fn user_online(&mut self, user: Arc<str>, room: Arc<str>, conn: ConnId) {
        let owner = self.owner(&user);
        if owner != self.core {
            let msg = ShardMsg::UserOnline { user, room, conn };
            return self.router.send(owner, msg);
        }
        let first = self.presence.set_online(&user);
        if self.presence.connections(&user) > self.limits.max_connections_per_user {
            // Counted like any other, so its close undoes the count; closed
            // at once with a policy code the client can show.
            self.close_conn(
                conn,
                TOO_MANY_CONNECTIONS_CLOSE,
                CloseReason::TooManyConnections,
            );
        }
        if first {
            self.metrics.presence_online += 1;
            if let Some(so) = &self.scaleout {
                so.online(user.clone());
            }
            let frame = Bytes::from(ws::encode_text(&protocol::encode_presence(
                &user, true, &room,
            )));
            self.relay(room, frame, FrameKind::Presence, None, Instant::now());
        }
    }

    /// Asks connection `conn`, on whichever core it runs, to close.
    fn close_conn(&mut self, conn: ConnId, code: u16, reason: CloseReason) {
        if conn.core() != self.core {
            let msg = ShardMsg::CloseConn { conn, code, reason };
            return self.router.send(conn.core(), msg);
        }
        if let Some(client) = self.clients.get(&conn) {
            client.request_close(code, reason);
        }
    }

    fn user_offline(&mut self, user: Arc<str>, rooms: Vec<Arc<str>>) {
        let owner = self.owner(&user);
        if owner != self.core {
            return self
                .router
                .send(owner, ShardMsg::UserOffline { user, rooms });
        }
        if !self.presence.set_offline(&user) {
            return;
        }
        self.metrics.presence_offline += 1;
        let rooms = match &self.scaleout {
            // The answer says whether the user is still online elsewhere.
            Some(so) => match so.offline(user.clone(), rooms) {
                Ok(()) => return,
                Err(rooms) => rooms,
            },
            None => rooms,
        };
        self.announce_offline(user, rooms);
    }

    /// Sends `offline` presence frames for `user` to `rooms`.
    fn announce_offline(&mut self, user: Arc<str>, rooms: Vec<Arc<str>>) {
        let now = Instant::now();
        for room in rooms {
            let frame = Bytes::from(ws::encode_text(&protocol::encode_presence(
                &user, false, &room,
            )));
            self.relay(room, frame, FrameKind::Presence, None, now);
        }
    }

    // ---- queries -------------------------------------------------------

    /// Asks core `target` a question (answered in place when local).
    pub fn ask(&mut self, target: usize, query: Query) -> Asked {
        let deferred = self.has_durable() && matches!(query, Query::History { .. });
        if target == self.core && !deferred {
            return Asked::Ready(self.answer(query));
        }
        let (tx, rx) = local_channel::new_bounded(1);
        let req = self.register(Waiter::Http(tx));
        if target == self.core {
            self.answer_query(target, req, query, Instant::now());
        } else {
            self.router.send(target, ShardMsg::Query { req, query });
        }
        Asked::Later(rx)
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
                snapshot.mesh_staged = self.router.staged_total();
                snapshot.mesh_shed = self.router.shed();
                if let Some(writer) = &self.writer {
                    snapshot.send_batches = writer.batches();
                    snapshot.send_batched = writer.sends();
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
                let page = self.history.page(&room, before, after, limit);
                Answer::Messages(page.into_iter().map(|m| m.json).collect())
            }
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
        if owner == self.core && !self.has_durable() {
            let answer = self.answer(query);
            self.answer_history(client, &room, answer, keep_newest, now);
        } else {
            let req = self.register(Waiter::ClientHistory {
                conn: client.id,
                room,
                keep_newest,
            });
            if owner == self.core {
                self.answer_query(owner, req, query, now);
            } else {
                self.router.send(owner, ShardMsg::Query { req, query });
            }
        }
    }

    fn on_answer(&mut self, req: u64, answer: Answer, now: Instant) {
        match self.pending.remove(&req) {
            Some(Waiter::Http(tx)) => {
                // The asker may have timed out and gone; nothing to do then.
                let _ = tx.try_send(answer);
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
                let text = durable::HISTORY_UNAVAILABLE_TEXT;
                self.send_error(client, ErrorCode::Unavailable, text, None, now);
            }
        }
    }

    // ---- cross-core dispatch ------------------------------------------

    /// Handles one message from core `from` (adoption and shutdown are
    /// handled by the server before this).
    pub fn on_shard_msg(&mut self, from: usize, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Join {
                room,
                user,
                conn,
                since,
                count,
            } => {
                let join = PendingJoin {
                    room,
                    user,
                    conn,
                    from,
                    since,
                    count,
                };
                // With Redis the cluster-wide count comes first; either way
                // `finish_join` reads Postgres when memory cannot answer
                // `since` alone.
                if self.scaleout.is_some() {
                    self.join_at_owner(join, now);
                } else {
                    self.finish_join(join, None, now);
                }
            }
            ShardMsg::Joined(answer) => self.joined(*answer, now),
            ShardMsg::Leave { room, user } => self.leave_owner(room, user, from),
            ShardMsg::Publish(p) => self.publish_user_owner(p, now),
            ShardMsg::Sequence(p) => self.sequence(*p, now),
            ShardMsg::Published {
                user,
                client_msg_id,
                outcome,
            } => self.published(user, client_msg_id, outcome, now),
            ShardMsg::Relay {
                room,
                frame,
                kind,
                exclude,
            } => self.relay_owner(room, frame, kind, exclude, now),
            ShardMsg::Deliver {
                room,
                frame,
                kind,
                exclude,
                received_at,
            } => self.deliver_local(&room, frame, kind, exclude, received_at, now),
            ShardMsg::ToConn { conn, frame } => self.send_to_conn(conn, frame, now),
            ShardMsg::UserOnline { user, room, conn } => self.user_online(user, room, conn),
            ShardMsg::CloseConn { conn, code, reason } => self.close_conn(conn, code, reason),
            ShardMsg::Typing {
                room,
                user,
                frame,
                exclude,
            } => self.typing_owner(room, user, frame, exclude, now),
            ShardMsg::UserOffline { user, rooms } => self.user_offline(user, rooms),
            ShardMsg::Query { req, query } => self.answer_query(from, req, query, now),
            ShardMsg::Answer { req, answer } => self.on_answer(req, answer, now),
            ShardMsg::Adopt(_) | ShardMsg::Shutdown => {
                debug_assert!(false, "handled by the server loop");
            }
        }
    }

    // ---- housekeeping --------------------------------------------------

    /// Periodic work: pings quiet connections, closes idle and stalled ones,
    /// and forgets expired limiter and dedupe state.
    pub fn sweep(&mut self, now: Instant) {
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
        if let Some(so) = self.scaleout.as_mut() {
            let overdue = so.sweep(now);
            for o in overdue {
                self.settle_overdue(o, now);
            }
        }
    }

    /// An own message whose copy did not come back from the subscription in
    /// time. With the script's id it is accepted here as its copy would have
    /// been: stored, fanned out on this instance, acknowledged, its
    /// clientMsgId completed (the other instances delivered the same id
    /// from their subscriptions). Without one it is refused with
    /// `unavailable` and its clientMsgId released, so a retry is sequenced
    /// anew instead of waiting on it.
    fn settle_overdue(&mut self, overdue: link::Overdue, now: Instant) {
        match overdue {
            link::Overdue::Accept { msg, id } => {
                if let Some(r) = self.owned.get_mut(&msg.room) {
                    r.last_id = r.last_id.max(Some(id));
                }
                self.accept_local(msg, id, id.timestamp_ms(), now);
            }
            link::Overdue::Refuse(msg) => {
                self.metrics.message(Outcome::Unavailable);
                let text = "the message could not be confirmed by Redis in time and was not accepted; retry";
                self.error_to(msg.conn, ErrorCode::Unavailable, text, None, now);
                if let Some(cmid) = msg.client_msg_id {
                    self.published(msg.user.user_id, cmid, None, now);
                }
            }
        }
    }

    // ---- Redis ---------------------------------------------------------

    /// Handles what the Redis thread sends this core.
    pub fn on_broker_event(&mut self, event: Event, now: Instant) {
        let Some(so) = self.scaleout.as_mut() else {
            return;
        };
        match event {
            Event::Message(sequenced) => {
                let Sequenced {
                    room,
                    id,
                    own_token,
                    user_id,
                    username,
                    content,
                    arrived,
                } = *sequenced;
                // This instance's own message, settled without this copy
                // (accepted or refused when the copy was overdue, or
                // sequenced locally after a failed publish): already
                // delivered, stored and answered here, or refused; drop it.
                if own_token.is_some_and(|t| so.is_settled(t)) {
                    return;
                }
                let mut origin = None;
                let mut received_at = arrived;
                if let Some(msg) = own_token.and_then(|t| so.take_inflight(t)) {
                    if msg.masked {
                        let at = id.timestamp_ms();
                        self.record_audit(id, &msg.user, &room, AuditAction::Masked, None, at);
                    }
                    received_at = msg.received_at;
                    origin = Some(Origin {
                        conn: msg.conn,
                        client_msg_id: msg.client_msg_id,
                    });
                }
                let message = ChatMessage {
                    id,
                    room_id: room,
                    user_id,
                    username,
                    content,
                    timestamp_ms: id.timestamp_ms(),
                };
                self.accept_sequenced(message, origin, received_at, now);
            }
            Event::Relay { room, kind, frame } => {
                self.fan_out(&room, frame, kind, None, now, now);
            }
            Event::Replied { token, id } => so.replied(token, id),
            Event::EchoesLost => {
                for o in so.echoes_lost(now) {
                    self.settle_overdue(o, now);
                }
            }
            Event::PublishFailed(token) => {
                // Sequenced here instead: stored, acknowledged and delivered
                // on this instance like any accepted message, and its
                // clientMsgId completed. Should Redis have run the script
                // all the same (its reply was lost), the copy it published
                // is dropped here (the token is settled).
                let Some(msg) = so.take_failed(token, now) else {
                    return;
                };
                RedisMetrics::inc(&so.metrics().local_fallback);
                let floor = self.owned.get(&msg.room).and_then(|r| r.last_id);
                let wall = SystemTime::now();
                let generated = self
                    .ids
                    .generate_from_datetime(wall)
                    .unwrap_or_else(|_| ulid::Ulid::from_datetime(wall));
                let id = link::local_id(generated, floor);
                self.accept_local(msg, id, id.timestamp_ms(), now);
            }
            Event::JoinCounted { token, count } => {
                if let Some(join) = so.take_join(token) {
                    self.finish_join(join, count, now);
                }
            }
            Event::OfflineChecked {
                user,
                rooms,
                elsewhere,
            } => {
                // Reconnected here meanwhile, or still online elsewhere: the
                // users' last state is online, so no offline frame.
                if !elsewhere && self.presence.user_status(&user) == Status::Offline {
                    self.announce_offline(user, rooms);
                }
            }
            Event::Resync => {
                let rooms = self
                    .owned
                    .iter()
                    .map(|(room, r)| (room.clone(), r.users.keys().cloned().collect()))
                    .collect();
                so.snapshot(self.presence.online_users(), rooms);
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
