//! The runtime: one glommio executor per core, each accepting on the same
//! port (SO_REUSEPORT), reading HTTP requests, answering plain routes, and
//! handing verified WebSocket upgrades to the core that owns the initial
//! room.
//!
//! glommio types stay in `src/runtime/`; rooms, protocol, policy and
//! backends never see them. The hub is called only through
//! [`CoreCtx::with_hub`], which carries out its outbox afterwards; the
//! caller reads the clocks and passes them in.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{Verified, Verifier};
use crate::config::Settings;
use crate::deflate;
use crate::events::{self, EventQueue, EventSender};
use crate::expiry::EXPIRY_TICK;
use crate::health::BackendHealth;
use crate::http::{self, Parsed, MAX_REQUEST_HEAD};
use crate::hub::{Hub, AUDIT_MEMORY};
use crate::metrics::{CoreSnapshot, TransportCounters};
use crate::moderation::{MemoryAudit, Moderator};
use crate::pg::audit::PgAudit;
use crate::pg::history::PgHistory;
use crate::protocol::{self, MessageId};
use crate::ratelimit::{LogSampler, LOG_SAMPLER_USERS};
use crate::redis::link::ScaleOut;
use crate::redis::worker;
use crate::runtime::connection;
use crate::runtime::mesh::{Router, MESH_CAPACITY};
use crate::runtime::routes;
use crate::runtime::sender::BatchSender;
use crate::runtime::shutdown::Shutdown;
use crate::shard::{shard_for, Adoption, ShardMsg};

/// io_uring registered-buffer memory per executor. Every executor's share is
/// locked memory, and `RLIMIT_MEMLOCK` is often 8 MiB: 512 KiB each leaves
/// room for 8 cores. Sockets do not use this memory (glommio reads them
/// with readiness polls into our own buffer).
pub const IO_MEMORY: usize = 512 * 1024;
/// io_uring submission queue depth per executor. Deep rings also size the
/// kernel's poll-cancel hash: at 256 entries, cancelling one of 19,000
/// pending socket polls scanned long hash chains (`io_poll_find` was 14% of
/// the server's CPU in `loadgen connect --connections 19000`).
pub const RING_DEPTH: usize = 4096;
/// Listen backlog per core; sized for `loadgen connect --rate 10000`.
pub const LISTEN_BACKLOG: i32 = 4096;
/// How long a core runs ready tasks before it reaps io_uring completions
/// and cross-core wake-ups again. glommio's default (100 ms) would let a
/// busy core sit that long on readable sockets and on messages from other
/// cores; 1 ms bounds that delay.
pub const PREEMPT_TIMER: Duration = Duration::from_millis(1);
/// Scratch read buffer per core, shared by all its connections.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Longest wait for another core's answer to a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a draining core waits for its connections to close.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (the operator API's POST routes; other
/// methods take none): larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// How long the exit waits for the Redis thread's goodbye.
pub const REDIS_SHUTDOWN: Duration = Duration::from_secs(3);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// The listen socket could not be created.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The executors could not start.
    #[error("cannot start executors: {0}")]
    Executors(String),
}

/// Read-only state shared by every core.
pub struct Shared {
    /// Configuration read once at start-up (limits, timeouts, backend URLs); never changes.
    pub settings: Settings,
    /// Checks the tokens of `/ws` and the HTTP routes (HS256 JWT_SECRET or JWT_PUBLIC_KEY).
    pub verifier: Verifier,
    /// Moderation word list (each core builds its own `Moderator`).
    pub moderation_words: Vec<String>,
    /// The address actually bound (PORT=0 picks a free port).
    pub addr: SocketAddr,
    /// Executor count, decided once at start-up: every core sizes its
    /// router and shard map from this, never from the thread it runs on.
    pub cores: usize,
    /// Backend states, written by the backends' side threads, read by `/healthz`.
    pub health: Arc<BackendHealth>,
    /// The Postgres backend, when DATABASE_URL is set.
    pub pg: Option<Arc<crate::pg::PgHandle>>,
    /// The Redis thread (REDIS_URL set); each core and route sends on its
    /// core's lane ([`worker::Link::for_core`]).
    pub redis: Option<worker::Link>,
    /// Each core's backend event queue, by core index: where the Postgres
    /// thread sends the replies of that core's reads.
    pub backend_events: Vec<EventSender>,
    /// The last merged `/metrics` snapshot (reused for up to 1 s). One for
    /// the process, not one per core: scrapes land on any core, and
    /// per-core copies of different ages would let a counter go backwards
    /// between two scrapes. Locked only on the scrape path, never across an
    /// await.
    pub metrics_cache: std::sync::Mutex<crate::metrics::MetricsCache>,
    /// The bans in force at start-up (Postgres's `chat_bans` and Redis's
    /// ban keys), as (user, end in ms since the Unix epoch): every core's
    /// copy of the ban list starts from them.
    pub bans_at_start: Vec<(String, u64)>,
}

/// One core's context, shared by its tasks through an `Rc`.
pub struct CoreCtx {
    /// Rooms, users, connections of this core.
    pub hub: RefCell<Hub>,
    /// Cross-core sending: where the hub's outbox goes after every call.
    pub router: Rc<Router>,
    /// This core's batched sender (BATCHED_SENDS), for its counters in
    /// `/metrics`; the hub reaches it as a `Flush`.
    pub writer: Option<Rc<BatchSender>>,
    /// This core's draining flag: once triggered, accepting stops, adopted sockets are
    /// closed and `/healthz` answers 503.
    pub shutdown: Shutdown,
    /// The process-wide read-only state (settings, verifier, backend handles).
    pub shared: Arc<Shared>,
    /// Read buffer shared by this core's connections (never held across an await).
    pub scratch: RefCell<Box<[u8]>>,
    /// Which new connections get a "WebSocket connection established" line
    /// (LOG_CONNECTIONS_PER_SEC, one per user per [`CONNECTION_LOG_WINDOW`]).
    pub connection_log: RefCell<LogSampler>,
}

/// A user gets at most one "WebSocket connection established" line per
/// this window on each core; more connections are counted in the next line.
pub const CONNECTION_LOG_WINDOW: Duration = Duration::from_secs(60);

impl CoreCtx {
    /// Runs one hub call, then carries out what it asked: its mesh messages
    /// are sent in order (FIFO per peer, as the hub wrote them). Every
    /// runtime call into the hub goes through here, so the outbox is empty
    /// between calls.
    pub fn with_hub<R>(self: &Rc<Self>, f: impl FnOnce(&mut Hub) -> R) -> R {
        let mut hub = self.hub.borrow_mut();
        let result = f(&mut hub);
        self.carry_out(hub);
        result
    }

    /// Empties the hub's outbox (see [`CoreCtx::with_hub`]).
    fn carry_out(self: &Rc<Self>, mut hub: std::cell::RefMut<'_, Hub>) {
        for (to, msg) in hub.outbox_mut().drain_mesh() {
            self.router.send(to, msg);
        }
    }

    /// Starts draining this core: stop accepting, 503 on /healthz, close
    /// every connection with 1001.
    pub fn begin_shutdown(self: &Rc<Self>) {
        if !self.shutdown.is_triggered() {
            self.shutdown.trigger();
            self.with_hub(|hub| hub.close_all(1001, crate::metrics::CloseReason::Shutdown));
        }
    }
}

/// The mesh and sender counters of one core, as `/metrics` reads them.
struct Transport {
    /// Staged and shed cross-core messages.
    router: Rc<Router>,
    /// Batches and sends of the batched sender; None with BATCHED_SENDS=false.
    writer: Option<Rc<BatchSender>>,
}

impl TransportCounters for Transport {
    fn fill(&self, snapshot: &mut CoreSnapshot) {
        snapshot.mesh_staged = self.router.staged_total();
        snapshot.mesh_shed = self.router.shed();
        if let Some(writer) = &self.writer {
            snapshot.send_batches = writer.batches();
            snapshot.send_batched = writer.sends();
        }
    }
}

/// Binds a listening socket with SO_REUSEPORT so that every core can bind
/// the same port.
fn listen_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Runs the server until SIGTERM/SIGINT and the drain complete.
/// `on_ready` is called with the bound address once every core listens.
pub fn run(
    mut settings: Settings,
    verifier: Verifier,
    on_ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), StartError> {
    settings.validate().map_err(StartError::Config)?;
    // Decided once, here: on a pinned executor thread the machine's
    // parallelism reads as 1, so asking again there would size the mesh
    // and the shard map for fewer cores than run.
    let cores = settings.core_count();
    settings.cores = Some(cores as u64);
    check_memlock(cores)?;
    let moderation_words = moderation_words(&settings)?;
    // Validate patterns once here so a bad one stops start-up with its name.
    Moderator::new(moderation_words.clone(), &settings.patterns())
        .map_err(|e| StartError::Config(format!("MODERATION_PATTERNS: {e}")))?;

    // The first socket fixes the port (PORT=0 picks one); each core then
    // binds its own socket to it.
    let wanted = SocketAddr::new(settings.host, settings.port);
    let first = listen_socket(wanted).map_err(|source| StartError::Listen {
        addr: wanted,
        source,
    })?;
    let addr = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| StartError::Config("cannot read the bound address".into()))?;
    let mut sockets = vec![first];
    for _ in 1..cores {
        sockets.push(listen_socket(addr).map_err(|source| StartError::Listen { addr, source })?);
    }
    let fds: Vec<i32> = sockets.into_iter().map(|s| s.into_raw_fd()).collect();

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| StartError::Executors(format!("cannot install signal handlers: {e}")))?;
    let signals = Arc::new(std::sync::Mutex::new(Some(signals)));
    // SAFETY: ignoring SIGPIPE process-wide is the standard server setup;
    // a write to a closed socket must return EPIPE, not kill the process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    let health = Arc::new(BackendHealth::default());
    // One bounded queue per core for both backends' events (bound and full:
    // `crate::events`); each core takes its end at start.
    let (backend_events, queues): (Vec<EventSender>, Vec<EventQueue>) =
        (0..cores).map(|_| events::queue()).unzip();
    let queues: BackendQueues = Arc::new(std::sync::Mutex::new(
        queues.into_iter().map(Some).collect(),
    ));
    let pg = match settings.database_url {
        Some(_) => Some(Arc::new(
            crate::pg::PgHandle::start(&settings, health.clone())
                .map_err(|e| StartError::Config(e.to_string()))?,
        )),
        None => None,
    };
    let redis = match settings.redis_url {
        Some(_) => Some(
            worker::start(&settings, backend_events.clone(), health.clone())
                .map_err(|e| StartError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let mut bans_at_start = Vec::new();
    if let Some(pg) = &pg {
        bans_at_start.extend(pg.bans_at_start.iter().cloned());
    }
    if let Some(redis) = &redis {
        bans_at_start.extend(redis.bans_at_start.iter().cloned());
    }
    let shared = Arc::new(Shared {
        bans_at_start,
        settings,
        verifier,
        moderation_words,
        addr,
        cores,
        health,
        pg: pg.clone(),
        redis: redis.as_ref().map(|r| r.link.clone()),
        backend_events,
        metrics_cache: std::sync::Mutex::default(),
    });
    let mesh: MeshBuilder<ShardMsg, Full> = MeshBuilder::full(cores, MESH_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let placement = match std::thread::available_parallelism() {
        Ok(n) if n.get() >= cores && shared.settings.pin_cores => {
            PoolPlacement::MaxSpread(cores, None)
        }
        _ => PoolPlacement::Unbound(cores),
    };
    let fds = Arc::new(std::sync::Mutex::new(fds));
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(IO_MEMORY)
        .ring_depth(RING_DEPTH)
        .preempt_timer(PREEMPT_TIMER)
        // One blocking thread waits for signals on core 0; the other serves
        // any other blocking call.
        .blocking_thread_pool_placement(PoolPlacement::Unbound(2))
        .name("chatd-core")
        .on_all_shards(move || {
            let shared = shared.clone();
            let mesh = mesh.clone();
            let fds = fds.clone();
            let signals = signals.clone();
            let ready = ready_tx.clone();
            let queues = queues.clone();
            async move { core_main(shared, mesh, fds, signals, ready, queues).await }
        })
        .map_err(|e| StartError::Executors(e.to_string()))?;
    let ready_thread = std::thread::spawn(move || {
        // Every core reports once it listens; then the server is ready.
        if (0..cores).all(|_| ready_rx.recv().is_ok()) {
            on_ready(addr);
        }
    });
    let joined: Result<Vec<()>, _> = handles.join_all().into_iter().collect();
    if let Some(redis) = redis {
        // After the drain: presence changes of the closed connections are
        // written and this instance leaves Redis.
        redis.shutdown(REDIS_SHUTDOWN);
    }
    // Every core has drained: nothing more can be accepted, so the final
    // flush writes everything that was.
    if let Some(pg) = pg {
        match pg.finish() {
            0 => tracing::info!("postgres: every accepted message and audit record is written"),
            left => tracing::error!(
                left,
                "postgres: rows not written before the shutdown wait (PG_SHUTDOWN_TIMEOUT_MS) ran out"
            ),
        }
    }
    joined.map_err(|e| StartError::Executors(e.to_string()))?;
    let _ = ready_thread.join();
    Ok(())
}

/// Refuses to start when the executors' locked memory cannot fit.
fn check_memlock(cores: usize) -> Result<(), StartError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(());
    }
    let needed = (cores * IO_MEMORY) as u64;
    if limit.rlim_cur != libc::RLIM_INFINITY && needed > limit.rlim_cur / 2 {
        return Err(StartError::Config(format!(
            "CORES: {cores} executors need {} KiB of locked memory, more than half of RLIMIT_MEMLOCK ({} KiB); lower CORES or raise the limit (ulimit -l, LimitMEMLOCK= in systemd)",
            needed / 1024,
            limit.rlim_cur / 1024
        )));
    }
    Ok(())
}

/// The block list from the settings: MODERATION_BLOCKLIST (or the built-in
/// list) plus MODERATION_BLOCKLIST_FILE.
fn moderation_words(settings: &Settings) -> Result<Vec<String>, StartError> {
    let mut words = match &settings.moderation_blocklist {
        Some(csv) => Moderator::parse_list(csv),
        None => Moderator::default_words(),
    };
    if let Some(path) = &settings.moderation_blocklist_file {
        let more = Moderator::read_list_file(path)
            .map_err(|e| StartError::Config(format!("MODERATION_BLOCKLIST_FILE: {e}")))?;
        words.extend(more);
    }
    Ok(words)
}

type SignalSlot = Arc<std::sync::Mutex<Option<signal_hook::iterator::Signals>>>;
/// Per-core backend event queues, taken once by each core at start.
type BackendQueues = Arc<std::sync::Mutex<Vec<Option<EventQueue>>>>;

/// One core's life: join the mesh, start the helper tasks, accept until
/// shutdown, drain.
async fn core_main(
    shared: Arc<Shared>,
    mesh: MeshBuilder<ShardMsg, Full>,
    fds: Arc<std::sync::Mutex<Vec<i32>>>,
    signals: SignalSlot,
    ready: std::sync::mpsc::Sender<()>,
    queues: BackendQueues,
) {
    let (senders, mut receivers) = mesh.join().await.expect("mesh join");
    let cores = shared.cores;
    let router = Rc::new(Router::new(senders, cores));
    let core = router.core();
    let moderator = shared.settings.enable_moderation.then(|| {
        Moderator::new(shared.moderation_words.clone(), &shared.settings.patterns())
            .expect("validated at start-up")
    });
    let mut hub = Hub::new(core, cores, &shared.settings, moderator, Instant::now());
    hub.set_verifier(shared.verifier.clone());
    // The backends, chosen once here; each is given this core's index,
    // the lane its commands, writes and reads go on.
    if let Some(link) = &shared.redis {
        hub.set_broker(Box::new(ScaleOut::new(link.clone(), core)));
    }
    if let Some(pg) = &shared.pg {
        let cache = Hub::memory_history(&shared.settings, cores);
        let events = shared.backend_events[core].clone();
        hub.set_history(Box::new(PgHistory::new(cache, pg.clone(), core, events)));
        let memory = MemoryAudit::new(AUDIT_MEMORY);
        hub.set_audit(Box::new(PgAudit::new(memory, pg.clone(), core)));
    }
    hub.seed_bans(&shared.bans_at_start, SystemTime::now());
    let writer = shared
        .settings
        .batched_sends
        .then(|| Rc::new(BatchSender::new()));
    if let Some(writer) = &writer {
        hub.set_flush(writer.clone());
        glommio::spawn_local(writer.clone().run()).detach();
    }
    hub.set_transport(Rc::new(Transport {
        router: router.clone(),
        writer: writer.clone(),
    }));
    let ctx = Rc::new(CoreCtx {
        hub: RefCell::new(hub),
        router: router.clone(),
        writer,
        shutdown: Shutdown::default(),
        shared: shared.clone(),
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
        connection_log: RefCell::new(connection_log(&shared.settings, cores)),
    });
    for (peer, rx) in receivers.streams() {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                on_shard_msg(&ctx, peer, msg);
            }
        })
        .detach();
    }
    for peer in (0..cores).filter(|p| *p != core) {
        glommio::spawn_local(router.clone().forward(peer)).detach();
    }
    glommio::spawn_local(sweeper(ctx.clone())).detach();
    let queue = queues
        .lock()
        .expect("backend event queues")
        .get_mut(core)
        .and_then(Option::take);
    if let Some(queue) = queue {
        // Redis events and Postgres replies alike, one at a time, oldest
        // first, each under a hub borrow of its own.
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            loop {
                let event = queue.recv().await;
                let (now, wall) = (Instant::now(), SystemTime::now());
                ctx.with_hub(|hub| hub.on_backend_event(event, now, wall));
            }
        })
        .detach();
    }
    if core == 0 {
        glommio::spawn_local(wait_for_signal(ctx.clone(), signals)).detach();
    }

    let fd = fds
        .lock()
        .expect("fd list")
        .pop()
        .expect("one socket per core");
    // SAFETY: the descriptor is a listening socket created for this core.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let _ = ready.send(());
    drop(ready);
    accept_loop(&ctx, &listener).await;
    drop(listener);
    drain(&ctx).await;
}

/// The connection log's sampler for one core: LOG_CONNECTIONS_PER_SEC is
/// for the instance, so each core gets its share (at least one a second
/// unless the setting is 0).
fn connection_log(settings: &Settings, cores: usize) -> LogSampler {
    let per_sec = settings.log_connections_per_sec;
    let share = if per_sec == 0 {
        0
    } else {
        per_sec.div_ceil(cores as u64).max(1)
    };
    LogSampler::new(
        CONNECTION_LOG_WINDOW,
        share as u32,
        LOG_SAMPLER_USERS,
        Instant::now(),
    )
}

/// Dispatches one mesh message.
fn on_shard_msg(ctx: &Rc<CoreCtx>, from: usize, msg: ShardMsg) {
    match msg {
        ShardMsg::Adopt(mut adoption) => {
            let fd = adoption.take_fd();
            // SAFETY: the accepting core dup'ed this socket for us.
            let stream = unsafe { TcpStream::from_raw_fd(fd) };
            if ctx.shutdown.is_triggered() {
                return; // dropping the stream closes it
            }
            let start = connection::Start {
                identity: adoption.identity.clone(),
                exp: adoption.exp,
                room: adoption.room.clone(),
                since: adoption.since,
                ws_key: std::mem::take(&mut adoption.ws_key),
                deflate: adoption.deflate,
                early: std::mem::take(&mut adoption.early),
            };
            drop(adoption);
            glommio::spawn_local(connection::serve(ctx.clone(), stream, start)).detach();
        }
        ShardMsg::Shutdown => ctx.begin_shutdown(),
        other => {
            let (now, wall) = (Instant::now(), SystemTime::now());
            ctx.with_hub(|hub| hub.on_shard_msg(from, other, now, wall));
        }
    }
}

/// Core 0 waits for SIGTERM/SIGINT on glommio's blocking pool, then tells
/// every core to drain.
async fn wait_for_signal(ctx: Rc<CoreCtx>, signals: SignalSlot) {
    let Some(mut signals) = signals.lock().expect("signal slot").take() else {
        return;
    };
    let signal = glommio::executor()
        .spawn_blocking(move || signals.forever().next())
        .await;
    tracing::info!(?signal, "shutdown signal received; draining");
    for peer in (0..ctx.router.cores()).filter(|p| *p != ctx.router.core()) {
        ctx.router.send(peer, ShardMsg::Shutdown);
    }
    ctx.begin_shutdown();
}

/// Pings, idle and stall checks, limiter and dedupe expiry, and token
/// expiry. The full sweep runs every quarter of the shortest timeout
/// (50 ms to 5 s); token expiry, which looks at the due buckets only, runs
/// at least every [`EXPIRY_TICK`] (1 s), so a connection is closed at most
/// a second after its token's `exp` plus the grace.
async fn sweeper(ctx: Rc<CoreCtx>) {
    let (tick, period) = sweep_periods(&ctx.shared.settings);
    let mut last_sweep = Instant::now();
    while !ctx.shutdown.is_triggered() {
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        if now.saturating_duration_since(last_sweep) + tick / 2 >= period {
            last_sweep = now;
            ctx.with_hub(|hub| hub.sweep(now));
            ctx.connection_log.borrow_mut().sweep(now);
        } else {
            ctx.with_hub(|hub| hub.expire_tokens(now));
        }
    }
}

/// How often the sweeper wakes (at most [`EXPIRY_TICK`], for token
/// expiry) and how often it runs the full sweep (a quarter of the shortest
/// of the ping interval and the write stall timeout, 50 ms to 5 s).
fn sweep_periods(settings: &Settings) -> (Duration, Duration) {
    let period = (settings.ping_interval().min(settings.write_stall_timeout()) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    (period.min(EXPIRY_TICK), period)
}

/// Accepts until shutdown.
async fn accept_loop(ctx: &Rc<CoreCtx>, listener: &TcpListener) {
    // Out of descriptors, accept fails until connections close: warn at
    // most once a second rather than on every retry.
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(handle_http(ctx.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                let now = Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accept failed (raise RLIMIT_NOFILE if this is EMFILE)");
                    last_warning = Some(now);
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Waits for this core's connections to close (bounded).
async fn drain(ctx: &Rc<CoreCtx>) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while ctx.hub.borrow().client_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP request with the fields routes need, owned (the head buffer is
/// reused for the next request).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Method, e.g. GET.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string after `?`, undecoded; routes decode the parameter they need
    /// (`token`, `limit`, ...).
    pub query: String,
    /// Authorization header value; None when absent. Its bearer token authenticates the
    /// HTTP routes, and `/ws` when the query has no `token`.
    pub authorization: Option<String>,
    /// Whether the client keeps the connection open.
    pub keep_alive: bool,
    /// Declared body length (only POST routes take a body).
    pub content_length: usize,
    /// The body, read in full before the route runs (POST routes only;
    /// at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
    /// `User-Agent`, logged with new WebSocket connections.
    pub user_agent: Option<String>,
    /// `Sec-WebSocket-Key`, when present.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Extensions` (repeated headers joined), when present.
    pub ws_extensions: Option<String>,
    /// The headers ask for a WebSocket upgrade.
    pub is_websocket_upgrade: bool,
    /// `Sec-WebSocket-Version` is 13.
    pub websocket_version_ok: bool,
}

impl From<&http::Request<'_>> for HttpRequest {
    fn from(r: &http::Request<'_>) -> HttpRequest {
        HttpRequest {
            method: r.method.to_string(),
            path: r.path.to_string(),
            query: r.query.to_string(),
            authorization: r.authorization.map(str::to_string),
            keep_alive: r.keep_alive,
            content_length: r.content_length,
            body: Vec::new(),
            user_agent: r.user_agent.map(str::to_string),
            ws_key: r.websocket_key.map(str::to_string),
            ws_extensions: r.websocket_extensions.as_deref().map(str::to_string),
            is_websocket_upgrade: r.is_websocket_upgrade,
            websocket_version_ok: r.websocket_version_ok,
        }
    }
}

/// Reads requests from a new connection: plain routes in a keep-alive loop,
/// or a WebSocket upgrade.
async fn handle_http(ctx: Rc<CoreCtx>, mut stream: TcpStream) {
    let timeout = ctx.shared.settings.handshake_timeout();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = glommio::timer::timeout(timeout, async {
            read_head(&mut stream, &mut buf)
                .await
                .map_err(glommio::GlommioError::IoError)
        })
        .await;
        let head_len = match head {
            Ok(Ok(n)) => n,
            Ok(Err(status)) => {
                let _ = stream
                    .write_all(&http::json_error(
                        status,
                        http::reason_phrase(status),
                        false,
                    ))
                    .await;
                return;
            }
            Err(_) => return, // slow or silent client (slowloris) or closed socket
        };
        let request = match http::parse_request(&buf[..head_len]) {
            Ok(Parsed::Complete { request, .. }) => HttpRequest::from(&request),
            _ => return,
        };
        if request.path == "/ws" {
            let early = buf[head_len..].to_vec();
            return upgrade(ctx, stream, request, early).await;
        }
        let mut request = request;
        let body_len = request.content_length;
        if body_len > 0 {
            // Only POST routes (the operator API) take a body; refuse any
            // other, or one too large, rather than read it.
            let refusal = if request.method != "POST" {
                Some("request bodies are accepted by POST routes only")
            } else if body_len > MAX_BODY {
                Some("request body larger than 64 KiB")
            } else {
                None
            };
            if let Some(text) = refusal {
                let _ = stream.write_all(&http::json_error(413, text, false)).await;
                return;
            }
            let read = glommio::timer::timeout(timeout, async {
                read_body(&mut stream, &mut buf, head_len + body_len)
                    .await
                    .map_err(glommio::GlommioError::IoError)
            })
            .await;
            if read.is_err() {
                return; // slow, silent or closed before the whole body
            }
            request.body = buf[head_len..head_len + body_len].to_vec();
        }
        let mut response = routes::handle(&ctx, &request).await;
        if request.method == "HEAD" {
            // Same head (with the GET's Content-Length), no body.
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                response.truncate(end + 4);
            }
        }
        if stream.write_all(&response).await.is_err() || !request.keep_alive {
            return;
        }
        buf.drain(..head_len + body_len);
    }
}

/// Reads until `buf` holds at least `len` bytes.
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    while buf.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Reads until `buf` holds a complete request head; returns its length, or
/// an HTTP status for a request that cannot be served.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<usize, u16>> {
    let mut chunk = [0u8; 2048];
    loop {
        if !buf.is_empty() {
            match http::parse_request(buf) {
                Ok(Parsed::Complete { head_len, .. }) => return Ok(Ok(head_len)),
                Ok(Parsed::Partial) => {}
                Err(e) => return Ok(Err(e.status())),
            }
            if buf.len() >= MAX_REQUEST_HEAD {
                return Ok(Err(431));
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Verifies a `/ws` request (token, room) and starts the connection on the
/// core that owns its room.
async fn upgrade(ctx: Rc<CoreCtx>, mut stream: TcpStream, request: HttpRequest, early: Vec<u8>) {
    let refusal = |ctx: &CoreCtx, status: u16| {
        *ctx.hub
            .borrow_mut()
            .metrics
            .upgrades_refused
            .entry(status)
            .or_insert(0) += 1;
    };
    let reply = match check_upgrade(&ctx, &request) {
        Ok(ok) => ok,
        Err((status, message, extra)) => {
            refusal(&ctx, status);
            let body = serde_json::json!({ "error": message }).to_string();
            let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let _ = stream
                .write_all(&http::response(
                    status,
                    "application/json",
                    body.as_bytes(),
                    false,
                    &headers,
                ))
                .await;
            return;
        }
    };
    let (verified, room, since, key) = reply;
    let Verified { identity, exp } = verified;
    // permessage-deflate when enabled and offered (src/deflate.rs).
    let deflate = match (&request.ws_extensions, ctx.shared.settings.ws_compression) {
        (Some(offers), true) => deflate::negotiate(offers),
        _ => None,
    };
    let sampled = ctx
        .connection_log
        .borrow_mut()
        .admit(&identity.user_id, Instant::now());
    if let Some(suppressed) = sampled {
        // The original service's line and fields; sampled so that a burst of
        // connections cannot flood the log (`suppressed`: lines left out
        // since the previous one on this core).
        tracing::info!(
            userId = %identity.user_id,
            roomId = %room,
            userAgent = request.user_agent.as_deref().unwrap_or(""),
            suppressed,
            "WebSocket connection established"
        );
    }
    let home = shard_for(&room, ctx.router.cores());
    if home == ctx.router.core() {
        // A task of its own, so this request's buffers are freed now rather
        // than kept for the life of the connection.
        let start = connection::Start {
            identity,
            exp,
            room,
            since,
            ws_key: key.into_boxed_str(),
            deflate,
            early,
        };
        glommio::spawn_local(connection::serve(ctx, stream, start)).detach();
        return;
    }
    // SAFETY: dup of a socket we own; the copy travels to the home core and
    // this core's handle is closed when `stream` drops.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        refusal(&ctx, 503);
        let _ = stream
            .write_all(&http::json_error(503, "out of file descriptors", false))
            .await;
        return;
    }
    let mut adoption = Adoption::new(fd, identity, exp, room, since, key.into_boxed_str(), early);
    adoption.deflate = deflate;
    ctx.router.send(home, ShardMsg::Adopt(Box::new(adoption)));
}

type Refusal = (u16, String, Vec<(&'static str, String)>);

/// The checks before an upgrade: 400/401/426/503 with a reason.
fn check_upgrade(
    ctx: &CoreCtx,
    request: &HttpRequest,
) -> Result<(Verified, Arc<str>, Option<MessageId>, String), Refusal> {
    let (upgrade_ok, version_ok) = (request.is_websocket_upgrade, request.websocket_version_ok);
    if ctx.shutdown.is_triggered() {
        return Err((503, "server is shutting down".into(), vec![]));
    }
    if request.method != "GET" {
        return Err((405, "WebSocket upgrades use GET".into(), vec![]));
    }
    // http.rs counts a wrong version as "not an upgrade", so a request that
    // carries a key but the wrong version gets 426, not 400.
    if !version_ok && request.ws_key.is_some() {
        return Err((
            426,
            "unsupported WebSocket version; use 13".into(),
            vec![("Sec-WebSocket-Version", "13".into())],
        ));
    }
    let Some(key) = request.ws_key.as_deref().filter(|_| upgrade_ok) else {
        return Err((400, "expected a WebSocket upgrade request".into(), vec![]));
    };
    let token = http::query_param(&request.query, "token")
        .map(|t| t.into_owned())
        .or_else(|| {
            request
                .authorization
                .as_deref()
                .and_then(http::bearer_token)
                .map(str::to_string)
        });
    let Some(token) = token else {
        return Err((
            401,
            "missing token: pass ?token= or an Authorization: Bearer header".into(),
            vec![],
        ));
    };
    let verified = ctx
        .shared
        .verifier
        .verify_at(&token, SystemTime::now())
        .map_err(|e| (401, format!("invalid token: {e}"), vec![]))?;
    let banned = ctx
        .hub
        .borrow()
        .banned_until(&verified.identity.user_id, SystemTime::now());
    if let Some(until) = banned {
        return Err((
            403,
            format!("user is banned until {}", protocol::format_timestamp(until)),
            vec![],
        ));
    }
    let room = http::query_param(&request.query, "roomId")
        .map(|r| r.into_owned())
        .unwrap_or_else(|| protocol::DEFAULT_ROOM.to_string());
    if !protocol::valid_room_id(&room) {
        return Err((
            400,
            "invalid roomId: 1 to 128 characters of letters, digits, _ - . :".into(),
            vec![],
        ));
    }
    let since = match http::query_param(&request.query, "since") {
        None => None,
        Some(s) => Some(protocol::parse_message_id(&s).ok_or((
            400,
            "invalid since: not a message id".to_string(),
            vec![],
        ))?),
    };
    Ok((verified, Arc::from(room), since, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn settings(flags: &[&str]) -> Settings {
        let args = std::iter::once("chatd").chain(flags.iter().copied());
        crate::config::Cli::try_parse_from(args).unwrap().settings
    }

    #[test]
    fn the_sweeper_looks_at_token_expiry_at_least_every_second() {
        let ms = Duration::from_millis;
        // Defaults: a full sweep every 5 s, token expiry every second.
        assert_eq!(sweep_periods(&settings(&[])), (ms(1_000), ms(5_000)));
        // Short timeouts: every wake is a full sweep.
        let fast = settings(&["--ping-interval-ms", "800", "--idle-timeout-ms", "2000"]);
        assert_eq!(sweep_periods(&fast), (ms(200), ms(200)));
        let fastest = settings(&["--ping-interval-ms", "10", "--idle-timeout-ms", "2000"]);
        assert_eq!(sweep_periods(&fastest), (ms(50), ms(50)));
    }
}
