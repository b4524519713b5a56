//! The Redis side thread: one OS thread with a single-threaded tokio
//! runtime, the only place the redis client runs (no tokio on executor
//! threads). It sequences and publishes room messages, relays typing and
//! presence frames between instances, keeps this instance's presence in
//! Redis, answers cluster-wide reads, and survives outages.
//!
//! # Channels
//! - Cores → thread: one bounded lock-free lane of [`Command`]s per core
//!   ([`crate::lanes`]), `REDIS_BUFFER` split evenly between the cores
//!   ([`lane_capacity`]), sent with `try_send`, so a core never waits and a
//!   busy core fills only its own lane. When a core's lane is full, a
//!   message is refused with `unavailable`, a join or offline check is
//!   answered locally, a read answers "unknown", and a presence change is
//!   counted as dropped and repaired by a resync (every core resends its
//!   state). The thread takes commands from the lanes in turn (round
//!   robin), each lane in the order its core sent them.
//! - Thread → each core: [`Event`]s on the core's backend event queue
//!   ([`crate::events`], shared with the Postgres thread's replies), at
//!   most [`crate::events::BROKER_EVENTS`] of them. When a core's share is
//!   full the thread waits for it, which stops it reading its
//!   subscription: backpressure lands on Redis's output buffer for this
//!   client, never on a core.
//! - Reads asked by HTTP routes get their answer on a oneshot channel that
//!   the asking task awaits (executor tasks can be woken from this thread).
//!
//! # Ordering
//! A message is sequenced by `sequence.lua` (EVALSHA), which assigns the
//! room's next id and PUBLISHes the message on the room's channel in one
//! atomic step. Every instance, the publisher included, delivers what its
//! subscription receives through the room owner core's normal fan-out, so a
//! room has exactly one order, Redis's, and ids sort in it. Messages waiting
//! in the lanes go out in one pipeline per wake-up, each core's in the order
//! it sent them (a room's messages all come from its owner core).
//!
//! # Outages
//! Any failed operation marks Redis down (`/healthz` 503 naming redis),
//! drops both connections and retries with backoff ([`Backoff`]). While down,
//! publishes are answered at once with [`Event::PublishFailed`] (the owner
//! core then sequences locally), reads with "unknown" (callers fall back to
//! the local answer), and presence changes only update the mirror. A
//! reconnection resubscribes every room with local members, reloads the
//! script, rewrites this instance's presence and refreshes its heartbeat,
//! and only then reports Redis up again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ulid::Ulid;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::events::EventSender;
use crate::health::{BackendHealth, State};
use crate::lanes;
use crate::redis::envelope::{self, Envelope, Operator};
use crate::redis::keys::{self, Keys};
use crate::redis::presence::{self, Mirror};
use crate::redis::stats::{Batch, RedisMetrics};
use crate::shard::{shard_for, FrameKind};
use crate::ws;

/// The sequencing script (see the file for its contract).
pub const SEQUENCE_SCRIPT: &str = include_str!("sequence.lua");
/// Commands taken from the lanes per wake-up (one pipeline).
pub const MAX_BATCH: usize = 1024;
/// Time allowed to connect, and for any reply, before Redis counts as down.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Start-up waits this long for the first connection before listening
/// anyway (with Redis down).
pub const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Expiry of a room's last-id key after its last message.
pub const LAST_ID_TTL: Duration = Duration::from_secs(86_400);
/// Subscriptions per SUBSCRIBE command when resubscribing.
const SUBSCRIBE_CHUNK: usize = 500;

/// A chat message for the sequencing script.
#[derive(Debug)]
pub struct PublishCmd {
    /// The room owner core that sent it (gets the failure, if any).
    pub core: usize,
    /// The owner's in-flight key, echoed back in the envelope.
    pub token: u64,
    /// Room id: names the last-id key and the channel the script publishes to.
    pub room: Arc<str>,
    /// Envelope head (`m` + instance).
    pub head: Vec<u8>,
    /// Envelope tail (token + JSON body).
    pub tail: Vec<u8>,
    /// The owner's last id of the room; the new id is greater.
    pub floor: Option<Ulid>,
}

/// Work for the Redis thread.
#[derive(Debug)]
pub enum Command {
    /// Sequence and publish a chat message.
    Publish(Box<PublishCmd>),
    /// Publish a typing or presence envelope to other instances.
    Relay {
        /// Room id: the envelope goes to this room's channel.
        room: Arc<str>,
        /// Typing or presence (for the metrics).
        kind: FrameKind,
        /// Encoded relay envelope (instance + frame JSON), published as is; other instances
        /// decode it, this one skips its own.
        payload: Vec<u8>,
    },
    /// A user has a connection on this instance.
    Online(Arc<str>),
    /// A user's last connection here closed; answered with
    /// [`Event::OfflineChecked`] to `core` once Redis says whether the user
    /// is still online on another instance.
    Offline {
        /// The user's owner core.
        core: usize,
        /// User whose last local connection closed: removed from this instance's online set.
        user: Arc<str>,
        /// Rooms the closed connection was in (for the presence frames).
        rooms: Vec<Arc<str>>,
    },
    /// A user is in a room on this instance.
    RoomAdd(Arc<str>, Arc<str>),
    /// A user left a room on this instance.
    RoomRemove(Arc<str>, Arc<str>),
    /// A join at a room owner: add the user, subscribe if needed, and answer
    /// the cluster-wide member count with [`Event::JoinCounted`].
    Join {
        /// Room owner core: gets the [`Event::JoinCounted`] answer.
        core: usize,
        /// The owner's pending-join key.
        token: u64,
        /// Room id: subscribed on first local member, and whose members are counted.
        room: Arc<str>,
        /// Added to the room's users on this instance before the count is read.
        user: Arc<str>,
    },
    /// One core's whole presence state (answer to [`Event::Resync`]).
    Snapshot {
        /// Core index: the snapshot replaces the presence of users whose owner is this core.
        core: usize,
        /// Users it owns that are online.
        online: Vec<Arc<str>>,
        /// Rooms it owns, with their users on this instance.
        rooms: Vec<(Arc<str>, Vec<Arc<str>>)>,
    },
    /// Users in a room, cluster-wide (None: Redis unavailable).
    RoomUsers(Arc<str>, oneshot::Sender<Option<Vec<String>>>),
    /// Whether a user is online anywhere (None: Redis unavailable).
    UserStatus(Arc<str>, oneshot::Sender<Option<bool>>),
    /// An operator API action for the other instances: published on the
    /// operator channel; a ban also sets (or, lifted, deletes) the user's
    /// ban key, which expires with the ban, for instances that start later.
    /// While Redis is down it is dropped (logged and counted as an error):
    /// the action holds on this instance only.
    Operator(Operator),
    /// Write what is pending, remove this instance from Redis, stop.
    Shutdown,
}

/// What the Redis thread tells a core.
#[derive(Debug)]
pub enum Event {
    /// A sequenced message of a room this core owns.
    Message(Box<Sequenced>),
    /// Another instance's typing or presence frame (a WebSocket frame).
    Relay {
        /// Room id (from the channel name): the core fans the frame out to its members.
        room: Arc<str>,
        /// Typing or presence: counted in the metrics, and the frame may be dropped when a
        /// connection's queue is full.
        kind: FrameKind,
        /// The frame, ready to queue.
        frame: Bytes,
    },
    /// A publish did not reach Redis: sequence it locally.
    PublishFailed(u64),
    /// The sequencing script's reply to this core's publish: the id Redis
    /// gave the message (used when its own copy does not come back).
    Replied {
        /// The owner's in-flight key.
        token: u64,
        /// The id the script assigned and published.
        id: Ulid,
    },
    /// Answer to [`Command::Join`] (None: Redis unavailable).
    JoinCounted {
        /// The pending-join key.
        token: u64,
        /// Distinct users in the room cluster-wide.
        count: Option<usize>,
    },
    /// Answer to [`Command::Offline`].
    OfflineChecked {
        /// User the check was for (owned by the receiving core).
        user: Arc<str>,
        /// Rooms for the presence frames.
        rooms: Vec<Arc<str>>,
        /// Still online on another live instance.
        elsewhere: bool,
    },
    /// Send a [`Command::Snapshot`] of this core's presence state.
    Resync,
    /// Another instance's operator action, sent to the owner core of its
    /// room or user.
    Operator(Operator),
    /// The subscription connection was lost: copies of this core's
    /// messages that did not come back yet never will (a new subscription
    /// does not replay). Sent to every core before any publish is answered
    /// with [`Event::PublishFailed`] after the loss.
    EchoesLost,
}

/// A message as sequenced by Redis.
#[derive(Debug)]
pub struct Sequenced {
    /// Room id, from the channel the message came on.
    pub room: Arc<str>,
    /// Id the script assigned (greater than the room's previous one): what clients see.
    pub id: Ulid,
    /// The in-flight key when this instance published it.
    pub own_token: Option<u64>,
    /// Author's user id, as the publishing instance verified it.
    pub user_id: Arc<str>,
    /// Author's display name.
    pub username: Arc<str>,
    /// Content after moderation.
    pub content: String,
    /// When the subscription delivered it (latency starts here for other
    /// instances' messages).
    pub arrived: Instant,
}

/// Each core's lane holds REDIS_BUFFER / cores commands (rounded up): the
/// total waiting stays what REDIS_BUFFER allowed for the one shared queue
/// before, and one busy core can no longer take the others' room. The
/// test that sets it small (`fifty_thousand_repeated_joins_do_not_starve_
/// other_users` in tests/redis.rs, REDIS_BUFFER=64) checks that a flood on
/// one core refuses nothing.
pub fn lane_capacity(redis_buffer: usize, cores: usize) -> usize {
    redis_buffer.div_ceil(cores.max(1)).max(1)
}

/// The Redis thread's end of the cores' command lanes.
pub type CommandReceiver = lanes::Receiver<Command>;

/// What cores and routes hold to talk to the Redis thread.
#[derive(Clone)]
pub struct Link {
    /// The command lanes (one per core; full: see the module doc).
    tx: lanes::Sender<Command>,
    /// The lane this holder sends on: its core's index ([`Link::for_core`]);
    /// 0 for the shutdown path, which sends once every core has stopped.
    lane: usize,
    /// Redis up or down.
    health: Arc<BackendHealth>,
    /// Redis counters, shared with the thread: bumped by cores (drops, lost echoes) and
    /// rendered by `/metrics`.
    pub metrics: Arc<RedisMetrics>,
    /// This instance's id, written into every envelope it publishes so it can tell its own.
    instance: Arc<str>,
}

impl Link {
    /// A link whose commands land in the returned receiver instead of a
    /// Redis thread (unit tests of the cores' side): one lane of
    /// `capacity` commands.
    pub fn detached(
        capacity: usize,
        instance: &str,
        health: Arc<BackendHealth>,
    ) -> (Link, CommandReceiver) {
        let (tx, rx) = lanes::lanes(1, capacity);
        let link = Link {
            tx,
            lane: 0,
            health,
            metrics: Arc::new(RedisMetrics::default()),
            instance: Arc::from(instance),
        };
        (link, rx)
    }

    /// This link for core `core`: its commands go on that core's lane.
    pub fn for_core(&self, core: usize) -> Link {
        Link {
            lane: core,
            ..self.clone()
        }
    }

    /// Whether Redis is up (messages are sequenced there).
    pub fn up(&self) -> bool {
        self.health.redis.get() == State::Up
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Queues a command on this link's core's lane without waiting; gives
    /// it back when that lane is full or the thread is gone.
    pub fn try_send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.try_send(self.lane, cmd)
    }

    /// Commands waiting in every core's lane.
    pub fn queued(&self) -> usize {
        self.tx.queued()
    }

    /// Users of `room` cluster-wide; None when Redis cannot answer. The
    /// question is queued now; the future only waits for the answer.
    pub fn room_users(
        &self,
        room: Arc<str>,
    ) -> impl std::future::Future<Output = Option<Vec<String>>> + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.try_send(Command::RoomUsers(room, tx)).is_ok();
        async move {
            if sent {
                rx.await.ok().flatten()
            } else {
                None
            }
        }
    }

    /// Whether `user` is online anywhere; None when Redis cannot answer.
    pub fn user_status(
        &self,
        user: Arc<str>,
    ) -> impl std::future::Future<Output = Option<bool>> + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.try_send(Command::UserStatus(user, tx)).is_ok();
        async move {
            if sent {
                rx.await.ok().flatten()
            } else {
                None
            }
        }
    }
}

/// Why the Redis thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// REDIS_URL did not parse.
    #[error("REDIS_URL: {0}")]
    Url(String),
    /// The thread or its runtime could not be created.
    #[error("cannot start the Redis thread: {0}")]
    Thread(std::io::Error),
    /// BACKEND_CA_FILE cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The Redis client for `url`: `rediss://` is TLS (rustls, ring), trusting
/// BACKEND_CA_FILE when set and otherwise the system's roots; the host name
/// is always verified. `redis://` is plain TCP.
fn client_for(url: &str, ca_file: Option<&std::path::Path>) -> Result<redis::Client, StartError> {
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()
        .map_err(|e| StartError::Url(e.to_string()))?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if tls {
        // The redis crate builds its rustls configuration from the process default provider.
        crate::tls::provider();
    }
    let trust = crate::tls::Trust::load(ca_file)?;
    match (tls, trust.ca_pem) {
        (true, Some(pem)) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        )
        .map_err(|e| StartError::Url(e.to_string())),
        _ => redis::Client::open(info).map_err(|e| StartError::Url(e.to_string())),
    }
}

/// A running Redis thread.
pub struct Started {
    /// For cores and routes (each takes [`Link::for_core`]).
    pub link: Link,
    /// The bans in force at start-up (the ban keys), as (user, end in ms
    /// since the Unix epoch); empty when Redis was not reachable then.
    pub bans_at_start: Vec<(String, u64)>,
    /// Joined by [`Started::shutdown`] (at most its limit), so pending writes are not cut off.
    thread: std::thread::JoinHandle<()>,
}

impl Started {
    /// Asks the thread to write what is pending and remove this instance
    /// from Redis, and waits for it at most `limit`.
    pub fn shutdown(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        // Every core has stopped, so the thread drains every lane after
        // this (see `RedisThread::run`). The link's lane (0) may be full for a
        // moment; retry until the deadline.
        let mut cmd = Command::Shutdown;
        loop {
            match self.link.try_send(cmd) {
                Ok(()) => break,
                Err(back) if Instant::now() < deadline => {
                    cmd = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

/// Starts the Redis thread for `cores` executor cores and waits (at most
/// [`FIRST_CONNECT_WAIT`]) for its first connection attempt, so an instance
/// whose Redis is reachable starts with Redis up. `events` holds each
/// core's backend event queue, by core index.
pub fn start(
    settings: &Settings,
    events: Vec<EventSender>,
    health: Arc<BackendHealth>,
) -> Result<Started, StartError> {
    let cores = events.len();
    let url = settings.redis_url.clone().unwrap_or_default();
    let client = client_for(&url, settings.backend_ca_file.as_deref())?;
    let instance = keys::instance_id();
    let keys = Keys::new(&settings.redis_prefix, &instance);
    let buffer = settings.redis_buffer as usize;
    // Bounded: REDIS_BUFFER split between the cores; full: see the module doc.
    let (tx, rx) = lanes::lanes(cores, lane_capacity(buffer, cores));
    let metrics = Arc::new(RedisMetrics::default());
    health.redis.set(State::Down);
    let link = Link {
        tx,
        // The shutdown path's lane; each core takes `for_core`.
        lane: 0,
        health: health.clone(),
        metrics: metrics.clone(),
        instance: Arc::from(instance.as_str()),
    };
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let broker = RedisThread {
        client,
        mirror: Mirror::new(keys.clone(), buffer),
        keys,
        ttl: settings.presence_ttl(),
        cores,
        rx,
        events,
        health,
        metrics,
        conn: None,
        backoff: Backoff::default(),
        script: redis::Script::new(SEQUENCE_SCRIPT),
        subscribed: HashSet::new(),
        next_heartbeat: Instant::now(),
        ever_connected: false,
        echoes_lost: false,
        last_connect_error: None,
    };
    let thread = std::thread::Builder::new()
        .name("chatd-redis".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the Redis thread's runtime");
                    return;
                }
            };
            runtime.block_on(broker.run(first_tx));
        })
        .map_err(StartError::Thread)?;
    let _ = first_rx.recv_timeout(FIRST_CONNECT_WAIT);
    tracing::info!(instance = %instance, up = link.up(), "Redis backend started");
    let bans_at_start = if link.up() {
        load_bans(&url, &Keys::new(&settings.redis_prefix, &instance))
    } else {
        tracing::warn!("Redis not reachable at start-up: bans kept there are not loaded");
        Vec::new()
    };
    Ok(Started {
        link,
        bans_at_start,
        thread,
    })
}

/// Most ban keys read at start-up (bans are few: an operator sets each).
const MAX_LOADED_BANS: usize = 100_000;

/// The bans in force: every ban key under the prefix, read once at start-up
/// with a blocking connection of its own (SCAN, then GET each); empty,
/// with a warning, when they cannot be read.
fn load_bans(url: &str, keys: &Keys) -> Vec<(String, u64)> {
    let read = || -> redis::RedisResult<Vec<(String, u64)>> {
        let client = redis::Client::open(url)?;
        let mut con = client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        let pattern = keys.ban_pattern();
        let names: Vec<String> = redis::Commands::scan_match::<_, String>(&mut con, &pattern)?
            .take(MAX_LOADED_BANS)
            .collect::<Result<_, _>>()?;
        let prefix = keys.ban("");
        let mut bans = Vec::with_capacity(names.len());
        for name in names {
            let until: Option<u64> = redis::Commands::get(&mut con, &name)?;
            if let (Some(user), Some(until)) = (name.strip_prefix(&prefix), until) {
                bans.push((user.to_string(), until));
            }
        }
        Ok(bans)
    };
    match read() {
        Ok(bans) => {
            if !bans.is_empty() {
                tracing::info!(bans = bans.len(), "bans loaded from Redis");
            }
            bans
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the bans from Redis");
            Vec::new()
        }
    }
}

/// A live connection to Redis.
struct Conn {
    /// Commands, scripts and pipelines.
    cmd: MultiplexedConnection,
    /// Subscribe and unsubscribe room channels (the stream itself is read by `pump`).
    sink: PubSubSink,
    /// Fires when the subscription stream ends (connection lost).
    lost: tokio::sync::oneshot::Receiver<()>,
    /// The task reading the subscription.
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Reads collected from one batch of commands, answered after the batch's
/// writes.
enum Read {
    /// A join waiting for the room's cluster-wide member count.
    Join {
        /// The room owner core that asked: the count goes back to it.
        core: usize,
        /// The owner's key for the pending join, echoed in the event.
        token: u64,
        /// Whose member set is counted.
        room: Arc<str>,
    },
    /// A user's last connection here closed: is the user still online on
    /// another instance?
    Offline {
        /// The user owner core that asked.
        core: usize,
        /// The user whose offline frame waits on the answer.
        user: Arc<str>,
        /// Rooms the offline frame goes to when the user is gone everywhere.
        rooms: Vec<Arc<str>>,
    },
    /// `GET /api/chats/rooms/{id}/presence`: the room's users cluster-wide
    /// (None: Redis could not answer; the route falls back to this instance).
    RoomUsers(Arc<str>, oneshot::Sender<Option<Vec<String>>>),
    /// `GET /api/chats/users/{id}/status`: online anywhere (None as above).
    UserStatus(Arc<str>, oneshot::Sender<Option<bool>>),
}

/// An entry of the publish pipeline.
enum Outgoing {
    /// A chat message: sequence.lua gives it its id and publishes it.
    Message(Box<PublishCmd>),
    /// A typing or presence frame: published as it is, with no id.
    Relay {
        /// The room's channel.
        room: Arc<str>,
        /// Typing or presence: counted apart in the relay counters.
        kind: FrameKind,
        /// The encoded envelope.
        payload: Vec<u8>,
    },
}

/// The Redis thread's state.
struct RedisThread {
    /// The client (connection parameters).
    client: redis::Client,
    /// Key and channel names under this instance's prefix.
    keys: Keys,
    /// PRESENCE_TTL_SECS.
    ttl: Duration,
    /// Executor cores (event routing).
    cores: usize,
    /// Commands from cores and routes, one lane per core.
    rx: CommandReceiver,
    /// Events to each core.
    events: Vec<EventSender>,
    /// Redis up or down.
    health: Arc<BackendHealth>,
    /// Redis counters, shared with every [`Link`]: written here, rendered by `/metrics`.
    metrics: Arc<RedisMetrics>,
    /// This instance's presence.
    mirror: Mirror,
    /// The connection, while up.
    conn: Option<Conn>,
    /// Delay before the next connection attempt while Redis is down (doubling to its ceiling).
    backoff: Backoff,
    /// The sequencing script; its hash is sent with EVALSHA and it is reloaded once on
    /// NOSCRIPT.
    script: redis::Script,
    /// Room channels subscribed on the current connection.
    subscribed: HashSet<Arc<str>>,
    /// When the next heartbeat is due.
    next_heartbeat: Instant,
    /// Whether a connection ever succeeded (reconnects are counted after it).
    ever_connected: bool,
    /// A connection was lost and the cores were not told yet
    /// ([`Event::EchoesLost`]).
    echoes_lost: bool,
    /// The last failed connection attempt's error, logged once until it
    /// changes or a connection succeeds.
    last_connect_error: Option<String>,
}

/// Sends an event to a core, waiting while its queue is full.
async fn deliver(tx: &EventSender, event: Event) {
    // Waits while the core's share is full; dropped when the core is gone
    // (the process is stopping).
    tx.broker(event).await;
}

/// Reads the subscription and hands what it receives to the room owner
/// cores; ends (firing `lost`) when the connection closes.
async fn pump(
    mut stream: PubSubStream,
    keys: Keys,
    events: Vec<EventSender>,
    metrics: Arc<RedisMetrics>,
    lost: tokio::sync::oneshot::Sender<()>,
) {
    use futures_lite::StreamExt as _;
    let cores = events.len();
    let operator_channel = keys.operator_channel();
    while let Some(msg) = stream.next().await {
        let arrived = Instant::now();
        let channel = msg.get_channel_name().to_string();
        if channel == operator_channel {
            match envelope::decode_operator(msg.get_payload_bytes()) {
                Ok((instance, _)) if instance == keys.instance() => {}
                Ok((_, action)) => {
                    let key = match &action {
                        Operator::Delete { r, .. } => r,
                        Operator::Ban { u, .. } | Operator::Disconnect { u } => u,
                    };
                    let core = shard_for(key, cores);
                    deliver(&events[core], Event::Operator(action)).await;
                }
                Err(e) => {
                    RedisMetrics::inc(&metrics.errors);
                    tracing::warn!(%channel, error = %e, "ignoring a malformed frame from Redis");
                }
            }
            continue;
        }
        let Some(room) = keys.room_of_channel(&channel) else {
            continue;
        };
        let event = match envelope::decode(msg.get_payload_bytes()) {
            Ok(Envelope::Message {
                instance,
                id,
                token,
                user_id,
                username,
                content,
            }) => {
                let own = instance == keys.instance();
                if !own {
                    metrics.received(FrameKind::Message);
                }
                Event::Message(Box::new(Sequenced {
                    room: Arc::from(room),
                    id,
                    own_token: own.then_some(token),
                    user_id: Arc::from(user_id),
                    username: Arc::from(username),
                    content,
                    arrived,
                }))
            }
            Ok(Envelope::Relay {
                instance,
                kind,
                json,
            }) => {
                if instance == keys.instance() {
                    continue; // delivered locally when it was sent
                }
                metrics.received(kind);
                Event::Relay {
                    room: Arc::from(room),
                    kind,
                    frame: Bytes::from(ws::encode_text(json)),
                }
            }
            Err(e) => {
                RedisMetrics::inc(&metrics.errors);
                tracing::warn!(%channel, error = %e, "ignoring a malformed frame from Redis");
                continue;
            }
        };
        let core = shard_for(room, cores);
        deliver(&events[core], event).await;
    }
    let _ = lost.send(());
}

impl RedisThread {
    /// The thread's loop: commands, connection upkeep, flushes, heartbeats.
    async fn run(mut self, first: std::sync::mpsc::Sender<()>) {
        self.connect().await;
        let _ = first.send(());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let wake = self.next_wake();
            let lost = async {
                match self.conn.as_mut() {
                    Some(c) => {
                        let _ = (&mut c.lost).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                n = self.rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return; // every sender is gone
                    }
                    if self.handle(&mut batch).await {
                        // The cores stopped before the shutdown was sent,
                        // but their lanes may still hold work that the
                        // round robin had not reached: do it all first.
                        while self.rx.drain(&mut batch, MAX_BATCH) > 0 {
                            self.handle(&mut batch).await;
                        }
                        self.goodbye().await;
                        return;
                    }
                }
                () = lost => self.lose("subscription connection closed"),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            self.upkeep().await;
        }
    }

    /// The earliest of: flush deadline, heartbeat, reconnection attempt.
    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        if self.conn.is_some() {
            let flush = if self.mirror.pending() {
                self.mirror.flush_deadline().unwrap_or_else(Instant::now)
            } else {
                far
            };
            flush.min(self.next_heartbeat)
        } else {
            self.backoff.next_attempt().unwrap_or_else(Instant::now)
        }
    }

    /// Tells every core, once per lost connection, that the copies it still
    /// waits for will not come (it then settles them with the script's ids).
    async fn report_lost_echoes(&mut self) {
        if !std::mem::take(&mut self.echoes_lost) {
            return;
        }
        for tx in self.events.iter() {
            deliver(tx, Event::EchoesLost).await;
        }
    }

    /// Reconnects when due, flushes presence when due, heartbeats, resyncs.
    async fn upkeep(&mut self) {
        self.report_lost_echoes().await;
        let now = Instant::now();
        if self.conn.is_none() && self.backoff.due(now) {
            self.connect().await;
        }
        if self.conn.is_some() && self.mirror.flush_due(now) {
            self.flush().await;
        }
        if self.conn.is_some() && Instant::now() >= self.next_heartbeat {
            self.heartbeat().await;
        }
        if self
            .metrics
            .resync
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            for tx in self.events.iter() {
                deliver(tx, Event::Resync).await;
            }
        }
        self.metrics.buffered.store(
            self.mirror.buffered() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Marks Redis down after a failure and schedules a reconnection.
    fn lose(&mut self, why: &str) {
        RedisMetrics::inc(&self.metrics.errors);
        if self.conn.take().is_some() {
            tracing::warn!(reason = why, "Redis connection lost; retrying with backoff");
            self.echoes_lost = true;
        }
        self.subscribed.clear();
        self.health.redis.set(State::Down);
        let delay = self.backoff.failed(Instant::now());
        tracing::debug!(?delay, reason = why, "next Redis attempt");
    }

    /// Connects, resubscribes, rewrites presence; Up only if all of it worked.
    async fn connect(&mut self) {
        match self.try_connect().await {
            Ok(()) => {
                self.backoff.succeeded();
                self.last_connect_error = None;
                self.health.redis.set(State::Up);
                if self.ever_connected {
                    RedisMetrics::inc(&self.metrics.reconnects);
                    tracing::info!("Redis is back");
                }
                self.ever_connected = true;
            }
            Err(e) => {
                self.conn = None;
                let text = e.to_string();
                // Once per distinct error (a wrong CA, a refused port), not per retry.
                if self.last_connect_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "Redis unavailable; retrying with backoff");
                    self.last_connect_error = Some(text.clone());
                }
                self.lose(&text);
            }
        }
    }

    async fn try_connect(&mut self) -> redis::RedisResult<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let mut cmd = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = tokio::time::timeout(IO_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error())??;
        let (mut sink, stream) = pubsub.split();
        self.script.load_async(&mut cmd).await?;
        tokio::time::timeout(IO_TIMEOUT, sink.subscribe(self.keys.operator_channel()))
            .await
            .map_err(|_| timeout_error())??;
        let rooms: Vec<Arc<str>> = self.mirror.rooms().cloned().collect();
        for chunk in rooms.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|r| self.keys.channel(r)).collect();
            tokio::time::timeout(IO_TIMEOUT, sink.subscribe(channels))
                .await
                .map_err(|_| timeout_error())??;
        }
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let pump = tokio::spawn(pump(
            stream,
            self.keys.clone(),
            self.events.clone(),
            self.metrics.clone(),
            lost_tx,
        ));
        self.subscribed = rooms.into_iter().collect();
        self.conn = Some(Conn {
            cmd,
            sink,
            lost,
            pump,
        });
        self.mirror.rewrite_all();
        self.write_presence().await?;
        self.beat().await?;
        Ok(())
    }

    /// Handles one batch of commands; true when it held the shutdown (the
    /// caller drains the rest and says goodbye).
    async fn handle(&mut self, batch: &mut Vec<Command>) -> bool {
        let now = Instant::now();
        let mut outgoing = Vec::new();
        let mut reads = Vec::new();
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut operator = Vec::new();
        let mut shutdown = false;
        for cmd in batch.drain(..) {
            match cmd {
                Command::Publish(p) => outgoing.push(Outgoing::Message(p)),
                Command::Relay {
                    room,
                    kind,
                    payload,
                } => outgoing.push(Outgoing::Relay {
                    room,
                    kind,
                    payload,
                }),
                Command::Online(user) => self.mirror.online(user, now),
                Command::Offline { core, user, rooms } => {
                    self.mirror.offline(user.clone(), now);
                    reads.push(Read::Offline { core, user, rooms });
                }
                Command::RoomAdd(room, user) => {
                    if self.mirror.room_add(room.clone(), user, now) {
                        touched.push(room);
                    }
                }
                Command::RoomRemove(room, user) => {
                    if self.mirror.room_remove(&room, &user, now) {
                        touched.push(room);
                    }
                }
                Command::Join {
                    core,
                    token,
                    room,
                    user,
                } => {
                    if self.mirror.room_add(room.clone(), user, now) {
                        touched.push(room.clone());
                    }
                    reads.push(Read::Join { core, token, room });
                }
                Command::Snapshot {
                    core,
                    online,
                    rooms,
                } => {
                    let cores = self.cores;
                    let (added, removed) =
                        self.mirror
                            .replace_core(|id| shard_for(id, cores) == core, online, rooms);
                    touched.extend(added);
                    touched.extend(removed);
                }
                Command::RoomUsers(room, reply) => reads.push(Read::RoomUsers(room, reply)),
                Command::UserStatus(user, reply) => reads.push(Read::UserStatus(user, reply)),
                Command::Operator(action) => operator.push(action),
                Command::Shutdown => shutdown = true,
            }
        }
        if !operator.is_empty() {
            self.operator(operator).await;
        }
        if !touched.is_empty() && self.conn.is_some() {
            if let Err(e) = self.reconcile_subscriptions(touched).await {
                self.lose(&e.to_string());
            }
        }
        if !outgoing.is_empty() {
            self.publish(outgoing).await;
        }
        if !reads.is_empty() {
            // Reads see this instance's own changes.
            if self.conn.is_some() && self.mirror.pending() {
                self.flush().await;
            }
            self.answer(reads).await;
        }
        shutdown
    }

    /// Subscribes rooms that got their first member, unsubscribes emptied ones.
    async fn reconcile_subscriptions(&mut self, touched: Vec<Arc<str>>) -> redis::RedisResult<()> {
        let live: HashSet<&Arc<str>> = self.mirror.rooms().collect();
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for room in touched {
            let wanted = live.contains(&room);
            if wanted && !self.subscribed.contains(&room) {
                subscribe.push(room);
            } else if !wanted && self.subscribed.contains(&room) {
                unsubscribe.push(room);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        for room in subscribe {
            tokio::time::timeout(IO_TIMEOUT, conn.sink.subscribe(self.keys.channel(&room)))
                .await
                .map_err(|_| timeout_error())??;
            self.subscribed.insert(room);
        }
        for room in unsubscribe {
            tokio::time::timeout(IO_TIMEOUT, conn.sink.unsubscribe(self.keys.channel(&room)))
                .await
                .map_err(|_| timeout_error())??;
            self.subscribed.remove(&room);
        }
        Ok(())
    }

    /// Publishes operator actions and writes ban keys, in one pipeline.
    async fn operator(&mut self, actions: Vec<Operator>) {
        let Some(conn) = self.conn.as_mut() else {
            RedisMetrics::inc(&self.metrics.errors);
            tracing::warn!(
                actions = actions.len(),
                "Redis is down: operator actions hold on this instance only"
            );
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        for action in &actions {
            match action {
                Operator::Ban { u, t: Some(until) } if *until > now_ms => {
                    pipe.cmd("SET")
                        .arg(self.keys.ban(u))
                        .arg(*until)
                        .arg("PX")
                        .arg(until - now_ms)
                        .ignore();
                }
                Operator::Ban { u, .. } => {
                    pipe.cmd("DEL").arg(self.keys.ban(u)).ignore();
                }
                Operator::Delete { .. } | Operator::Disconnect { .. } => {}
            }
            pipe.cmd("PUBLISH")
                .arg(self.keys.operator_channel())
                .arg(envelope::operator(self.keys.instance(), action))
                .ignore();
        }
        let sent = tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn.cmd)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.lose(&e.to_string()),
            Err(_) => self.lose("operator actions timed out"),
        }
    }

    /// Sends messages and relays in one pipeline, in queue order.
    async fn publish(&mut self, outgoing: Vec<Outgoing>) {
        let Some(conn) = self.conn.as_mut() else {
            return self.fail_publishes(outgoing).await;
        };
        let started = Instant::now();
        let ttl_ms = LAST_ID_TTL.as_millis() as u64;
        let mut pipe = redis::pipe();
        let mut messages = 0;
        for out in &outgoing {
            match out {
                Outgoing::Message(p) => {
                    messages += 1;
                    let floor = p.floor.map(|f| f.to_string()).unwrap_or_default();
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(2)
                        .arg(self.keys.last_id(&p.room))
                        .arg(self.keys.channel(&p.room))
                        .arg(&p.head[..])
                        .arg(&p.tail[..])
                        .arg(floor)
                        .arg(random_base32())
                        .arg(ttl_ms);
                }
                Outgoing::Relay { room, payload, .. } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.keys.channel(room))
                        .arg(&payload[..])
                        .ignore();
                }
            }
        }
        // One reply per message (the script's id, in queue order); the
        // relays' replies are ignored.
        let mut result = pipe.query_async::<Vec<String>>(&mut conn.cmd).await;
        if let Err(e) = &result {
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                // SCRIPT FLUSH under us: reload once and resend.
                result = match self.script.load_async(&mut conn.cmd).await {
                    Ok(_) => pipe.query_async::<Vec<String>>(&mut conn.cmd).await,
                    Err(e) => Err(e),
                };
            }
        }
        match result {
            Ok(ids) => {
                if messages > 0 {
                    self.metrics
                        .batch(Batch::Messages, messages, started.elapsed());
                }
                for out in &outgoing {
                    match out {
                        Outgoing::Message(_) => self.metrics.published(FrameKind::Message, 1),
                        Outgoing::Relay { kind, .. } => self.metrics.published(*kind, 1),
                    }
                }
                self.report_ids(outgoing, ids).await;
            }
            Err(e) => {
                self.lose(&e.to_string());
                self.fail_publishes(outgoing).await;
            }
        }
    }

    /// Gives each owner core the id the script assigned to its message, so
    /// that a message whose own copy never comes back can still be
    /// accepted with the id every other instance delivered. A reply that
    /// is not a ULID (never, with this script) is counted as an error and
    /// left out: the message is then refused if its copy does not come.
    async fn report_ids(&mut self, outgoing: Vec<Outgoing>, ids: Vec<String>) {
        let messages = outgoing.into_iter().filter_map(|out| match out {
            Outgoing::Message(p) => Some(p),
            Outgoing::Relay { .. } => None,
        });
        for (p, id) in messages.zip(ids) {
            match Ulid::from_string(&id) {
                Ok(id) => {
                    let event = Event::Replied { token: p.token, id };
                    deliver(&self.events[p.core], event).await;
                }
                Err(_) => {
                    RedisMetrics::inc(&self.metrics.errors);
                    tracing::warn!(reply = %id, "the sequencing script answered no id");
                }
            }
        }
    }

    /// Tells the owner cores that these messages were not published.
    async fn fail_publishes(&mut self, outgoing: Vec<Outgoing>) {
        // Settled first: the cores accept what Redis did sequence before
        // they sequence anything locally above it.
        self.report_lost_echoes().await;
        for out in outgoing {
            if let Outgoing::Message(p) = out {
                deliver(&self.events[p.core], Event::PublishFailed(p.token)).await;
            }
            // A relay (typing, presence) is best effort across instances:
            // it was already delivered within this one.
        }
    }

    /// Writes pending presence changes.
    async fn flush(&mut self) {
        if let Err(e) = self.write_presence().await {
            self.mirror.rewrite_all();
            self.lose(&e.to_string());
        }
    }

    async fn write_presence(&mut self) -> redis::RedisResult<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let plan = self.mirror.take_plan();
        if plan.replace.is_empty() && plan.add.is_empty() && plan.remove.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        presence::execute(&mut conn.cmd, &plan, self.ttl).await?;
        self.metrics
            .batch(Batch::Presence, plan.entries, started.elapsed());
        self.metrics.overflows.store(
            self.mirror.overflows(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// Refreshes this instance's expiry; a key found missing is rewritten.
    async fn heartbeat(&mut self) {
        if let Err(e) = self.beat().await {
            self.lose(&e.to_string());
        }
    }

    async fn beat(&mut self) -> redis::RedisResult<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let live = self.mirror.live_keys();
        let rooms = self.mirror.room_members();
        let intact =
            presence::heartbeat(&mut conn.cmd, &self.keys, &live, &rooms, self.ttl).await?;
        if !intact {
            tracing::warn!("Redis lost presence keys of this instance; rewriting them");
            self.mirror.rewrite_all();
        }
        self.next_heartbeat = Instant::now() + self.ttl / 3;
        Ok(())
    }

    /// Answers the reads of a batch (Redis down: the callers fall back).
    async fn answer(&mut self, reads: Vec<Read>) {
        for read in reads {
            match read {
                Read::Join { core, token, room } => {
                    let count = self.query_count(&room).await;
                    deliver(&self.events[core], Event::JoinCounted { token, count }).await;
                }
                Read::Offline { core, user, rooms } => {
                    let elsewhere = self.query_user(&user, true).await.unwrap_or(false);
                    let event = Event::OfflineChecked {
                        user,
                        rooms,
                        elsewhere,
                    };
                    deliver(&self.events[core], event).await;
                }
                Read::RoomUsers(room, reply) => {
                    let _ = reply.send(self.query_room(&room).await);
                }
                Read::UserStatus(user, reply) => {
                    let _ = reply.send(self.query_user(&user, false).await);
                }
            }
        }
    }

    /// The room's cluster-wide member count (O(1) in the room's size; the
    /// join answers with it).
    async fn query_count(&mut self, room: &str) -> Option<usize> {
        let conn = self.conn.as_mut()?;
        match presence::room_count(&mut conn.cmd, &self.keys, room).await {
            Ok(count) => Some(count),
            Err(e) => {
                self.lose(&e.to_string());
                None
            }
        }
    }

    async fn query_room(&mut self, room: &str) -> Option<Vec<String>> {
        let conn = self.conn.as_mut()?;
        match presence::room_users(&mut conn.cmd, &self.keys, room).await {
            Ok(users) => Some(users),
            Err(e) => {
                self.lose(&e.to_string());
                None
            }
        }
    }

    /// Whether the user is online on a live instance (`others_only`: on
    /// another one than this).
    async fn query_user(&mut self, user: &str, others_only: bool) -> Option<bool> {
        let conn = self.conn.as_mut()?;
        let except = others_only.then(|| self.keys.instance().to_string());
        match presence::user_online(&mut conn.cmd, &self.keys, user, except.as_deref()).await {
            Ok(online) => Some(online),
            Err(e) => {
                self.lose(&e.to_string());
                None
            }
        }
    }

    /// Clean shutdown: write what is pending, then remove this instance.
    async fn goodbye(&mut self) {
        if self.conn.is_some() && self.mirror.pending() {
            self.flush().await;
        }
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = presence::goodbye(&mut conn.cmd, &self.mirror).await {
                tracing::warn!(error = %e, "could not remove this instance from Redis");
            }
        }
    }
}

/// 16 random Crockford base32 characters: the random part of a ULID.
fn random_base32() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bits: u128 = rand::random::<u128>();
    let mut out = String::with_capacity(16);
    for _ in 0..16 {
        out.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    out
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_parts_are_base32_and_differ() {
        let (a, b) = (random_base32(), random_base32());
        assert_eq!(a.len(), 16);
        assert!(a
            .bytes()
            .all(|c| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&c)));
        assert_ne!(a, b);
        // A ULID's time part followed by it parses as a ULID.
        let id = format!("01JD000000{a}");
        assert!(Ulid::from_string(&id).is_ok());
    }

    #[test]
    fn redis_buffer_is_split_between_the_cores() {
        assert_eq!(lane_capacity(10_000, 2), 5_000);
        assert_eq!(lane_capacity(64, 3), 22);
        assert_eq!(lane_capacity(1, 4), 1);
        assert_eq!(lane_capacity(10, 0), 10);
    }

    #[test]
    fn one_cores_full_lane_refuses_only_that_cores_commands() {
        let (tx, mut rx) = lanes::lanes(2, 1);
        let link = Link {
            tx,
            lane: 0,
            health: Arc::new(BackendHealth::default()),
            metrics: Arc::new(RedisMetrics::default()),
            instance: Arc::from("0123456789abcdef"),
        };
        let busy = link.for_core(0);
        let refused = std::thread::spawn(move || {
            busy.try_send(Command::Online(Arc::from("a"))).unwrap();
            // Its lane is full: the command comes back (the caller's
            // `unavailable` or resync path).
            match busy.try_send(Command::Online(Arc::from("b"))) {
                Err(Command::Online(user)) => user,
                other => panic!("expected the command back, got {other:?}"),
            }
        })
        .join()
        .unwrap();
        assert_eq!(&*refused, "b");
        // Another core still has its own room, from whichever thread.
        let other = link.for_core(1);
        std::thread::spawn(move || other.try_send(Command::Online(Arc::from("c"))).unwrap())
            .join()
            .unwrap();
        assert_eq!(link.queued(), 2);
        let mut batch = Vec::new();
        assert_eq!(rx.drain(&mut batch, MAX_BATCH), 2);
        let users: Vec<String> = batch
            .iter()
            .map(|c| match c {
                Command::Online(u) => u.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(users, vec!["a", "c"]);
    }

    #[test]
    fn the_script_declares_its_keys() {
        assert!(SEQUENCE_SCRIPT.contains("KEYS[1]") && SEQUENCE_SCRIPT.contains("KEYS[2]"));
        assert!(SEQUENCE_SCRIPT.contains("redis.call('PUBLISH', KEYS[2]"));
    }
}
