//! Cross-core broadcast through the real hub: one room split over two glommio executors, each
//! running a `chatd::hub::Hub` wired to the other by the server's own mesh (`runtime::mesh::Router`
//! over a glommio channel mesh of `MESH_CAPACITY` per direction, staging behind it when full).
//!
//! Setup: core 0 owns the room. Each core opens its half of the members with `Hub::open` (the
//! members on core 1 join through the mesh, as on the server), and core 1 says when every one of
//! its members is joined. Then core 0's hub takes each message in one of two ways:
//!
//! - `accept`: `Hub::accept_sequenced`, what every message accepted at its room's owner goes
//!   through: encoded once (JSON and WebSocket frame), appended to the in-memory history, pushed
//!   into each local member's outbound queue, and one copy sent to core 1 as a `ShardMsg::Deliver`;
//! - `fanout`: `Hub::relay` of an already-encoded frame: the same fan-out without the encoding
//!   and the history (what the previous version of this benchmark re-implemented by hand).
//!
//! Core 1's hub takes each copy in `Hub::on_shard_msg` and pushes it into each of its members'
//! queues. Members are real sessions (`client::Client` with its `outbound::Outbound`); every
//! `--drain-every` messages each core empties all its members' queues with `Outbound::consume`,
//! as the connection driver does after a gathered write (the write itself is not part of this
//! benchmark), and the owner yields to its executor as a connection task does between socket
//! reads.
//!
//! Not measured here: socket writes, and waking driver tasks (no driver is registered, so a push
//! that would wake one does not). The members are 50 users with many connections each (so the
//! setup's presence frames stay few); the fan-out does not depend on who the members are.
//!
//! The clock starts on core 0 once core 1 reported its members joined, and stops when both cores
//! have delivered every message and drained their queues. Each (path, size) runs `--reps` times
//! after one warm-up run; the table shows the median run, and one JSON line per run follows it.
//!
//! Run with `cargo bench --bench broadcast` (options after `--`: `--messages N`,
//! `--members 50,5000`, `--reps N`, `--drain-every N`, `--path accept,fanout`). Without `--bench`
//! (as under `cargo test --benches`) it only checks the path with 200 messages per size.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chatd::auth::Identity;
use chatd::client::{Client, Membership};
use chatd::config::Settings;
use chatd::hub::Hub;
use chatd::protocol::{self, ChatMessage};
use chatd::runtime::mesh::{Router, MESH_CAPACITY};
use chatd::shard::{shard_for, FrameKind, ShardMsg};
use chatd::ws;
use clap::Parser as _;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

/// Locked memory per executor: two must fit in the machine's 8 MiB RLIMIT_MEMLOCK.
const IO_MEMORY: usize = 512 * 1024;
const CORES: usize = 2;
/// Distinct users among the members (each with many connections).
const USERS: usize = 50;

/// What core 0's hub does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `Hub::accept_sequenced`: encode, history, fan-out.
    Accept,
    /// `Hub::relay` of a pre-encoded frame: fan-out only.
    Fanout,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Accept => "accept",
            Path::Fanout => "fanout",
        }
    }
}

struct Options {
    messages: usize,
    members: Vec<usize>,
    reps: usize,
    drain_every: usize,
    paths: Vec<Path>,
    /// Run once with few messages, only to check the path works (as criterion does when
    /// `cargo test --benches` runs a benchmark without `--bench`).
    test: bool,
}

impl Options {
    /// Reads the options after `--`; anything else (such as the `--bench` flag cargo passes) is
    /// ignored.
    fn from_args() -> Options {
        let mut options = Options {
            messages: 20_000,
            members: vec![50, 5_000],
            reps: 3,
            drain_every: 32,
            paths: vec![Path::Accept, Path::Fanout],
            test: false,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let flag = |name: &str| args.iter().any(|a| a == name);
        options.test = !flag("--bench") || flag("--test");
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1);
            let number = || -> usize {
                value
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| panic!("{} needs a positive number", args[i]))
            };
            match args[i].as_str() {
                "--messages" => options.messages = number(),
                "--reps" => options.reps = number(),
                "--drain-every" => options.drain_every = number(),
                "--members" => {
                    options.members = value
                        .map(|v| v.split(',').map(|n| n.trim().parse().ok()).collect())
                        .and_then(|v: Option<Vec<usize>>| v)
                        .filter(|v| !v.is_empty() && v.iter().all(|&n| n >= 2))
                        .expect("--members needs a comma-separated list of sizes of at least 2")
                }
                "--path" => {
                    options.paths = value
                        .map(|v| {
                            v.split(',')
                                .map(|p| match p.trim() {
                                    "accept" => Path::Accept,
                                    "fanout" => Path::Fanout,
                                    other => panic!("--path: accept or fanout, not {other}"),
                                })
                                .collect()
                        })
                        .expect("--path needs accept, fanout or both")
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        if options.test {
            options.messages = options.messages.min(200);
            options.reps = 1;
        }
        options
    }
}

/// What one core reports after a run.
struct CoreReport {
    core: usize,
    /// When core 0 started sending (core 0 only).
    start: Option<Instant>,
    /// When this core had delivered every message and drained its queues.
    end: Instant,
    /// Message frames this core's hub handed to its members' queues during the run.
    delivered: u64,
    /// CPU time of the core's thread during the run.
    cpu: Duration,
    /// Messages the core had to stage because the mesh channel was full.
    staged: u64,
}

/// One run's figures.
struct RunResult {
    path: Path,
    members: usize,
    messages: usize,
    elapsed: Duration,
    cpu: Duration,
    staged: u64,
}

impl RunResult {
    fn deliveries(&self) -> u64 {
        (self.members * self.messages) as u64
    }

    fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn ns_per_delivery(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.deliveries() as f64
    }

    fn cpu_ns_per_delivery(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.deliveries() as f64
    }
}

/// CPU time consumed so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The content of every message: 100 characters, as in the previous version's frame.
const CONTENT: &str = "The quick brown fox jumps over the lazy dog while the team ships the release. The quick brown fo";

/// The `n`th message of the run, with an id above the previous one (history keeps ids in order).
fn message(room: &Arc<str>, n: usize) -> ChatMessage {
    let timestamp_ms = 1_704_110_400_123 + n as u64;
    ChatMessage {
        id: ulid::Ulid::from_parts(timestamp_ms, n as u128),
        room_id: room.clone(),
        user_id: Arc::from("user-456"),
        username: Arc::from("john_doe"),
        content: CONTENT.to_owned(),
        timestamp_ms,
    }
}

/// The `fanout` path's frame: a message encoded as the owner core encodes it.
fn template_frame(room: &Arc<str>) -> Vec<u8> {
    let json = protocol::encode_message(&message(room, 0));
    let mut frame = Vec::with_capacity(ws::text_header_len(json.len()) + json.len());
    ws::encode_text_into(&json, &mut frame);
    frame
}

/// The server's settings with every connection allowed (members share [`USERS`] users).
fn settings() -> Settings {
    chatd::config::Cli::try_parse_from(["chatd", "--max-connections-per-user", "1000000"])
        .expect("settings")
        .settings
}

/// The room: a name core 0 owns.
fn room() -> Arc<str> {
    (0..)
        .map(|i| format!("general-{i}"))
        .find(|r| shard_for(r, CORES) == 0)
        .expect("a room of core 0")
        .into()
}

/// The drivers' side: every queue fully written.
fn drain(members: &[Rc<Client>], now: Instant) {
    for client in members {
        let mut out = client.outbound().borrow_mut();
        let written = out.bytes();
        out.consume(written, now);
    }
}

/// One core: its hub, its side of the mesh, and its members.
struct Core {
    /// The hub, borrowed only inside a call (never across an await).
    hub: RefCell<Hub>,
    /// This core's mesh side.
    router: Rc<Router>,
    /// The members running here.
    members: RefCell<Vec<Rc<Client>>>,
    /// `ShardMsg::Shutdown`s received: the bench's own signals between the cores.
    signals: Cell<u32>,
    /// Message `Deliver`s received from the owner (core 1).
    delivers: Cell<usize>,
    /// Core 1: the hub's delivered counter before the first message `Deliver`.
    delivered_before: Cell<u64>,
    /// Core 1: when the last message was delivered and drained, and the CPU time then.
    finished: Cell<Option<(Instant, Duration)>>,
}

impl Core {
    /// Runs `f` on the hub and sends what it put in the outbox, in order.
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        let mut hub = self.hub.borrow_mut();
        let r = f(&mut hub);
        for (to, msg) in hub.outbox_mut().drain_mesh() {
            self.router.send(to, msg);
        }
        r
    }
}

/// The core's mesh reader: the bench's signals are counted, everything else goes to the hub.
/// Core 1 also counts the message copies and drains its members every `drain_every`.
async fn read_mesh(
    core: Rc<Core>,
    from: ConnectedReceiver<ShardMsg>,
    messages: usize,
    drain_every: usize,
) {
    let peer = 1 - core.router.core();
    while let Some(msg) = from.recv().await {
        let is_message = matches!(
            msg,
            ShardMsg::Deliver {
                kind: FrameKind::Message,
                ..
            }
        );
        if let ShardMsg::Shutdown = msg {
            core.signals.set(core.signals.get() + 1);
            continue;
        }
        let now = Instant::now();
        if is_message && core.delivers.get() == 0 {
            core.delivered_before
                .set(core.hub.borrow().metrics.delivered);
        }
        core.with_hub(|hub| hub.on_shard_msg(peer, msg, now, SystemTime::now()));
        if is_message {
            let n = core.delivers.get() + 1;
            core.delivers.set(n);
            if n.is_multiple_of(drain_every) || n == messages {
                drain(&core.members.borrow(), now);
            }
            if n == messages {
                core.finished.set(Some((Instant::now(), thread_cpu_time())));
                core.router.send(peer, ShardMsg::Shutdown);
            }
        }
    }
}

/// Waits until `done` holds; during the setup (`drain`) the members' queues are emptied
/// meanwhile, during a run the reader's own drains are left alone.
async fn wait_for(core: &Core, drain_members: bool, done: impl Fn(&Core) -> bool) {
    while !done(core) {
        glommio::timer::sleep(Duration::from_micros(200)).await;
        if drain_members {
            drain(&core.members.borrow(), Instant::now());
        }
    }
}

async fn run_core(
    router: Rc<Router>,
    from: ConnectedReceiver<ShardMsg>,
    room_size: usize,
    path: Path,
    messages: usize,
    drain_every: usize,
) -> CoreReport {
    let me = router.core();
    let peer = 1 - me;
    let settings = settings();
    let core = Rc::new(Core {
        hub: RefCell::new(Hub::new(me, CORES, &settings, None, Instant::now())),
        router: router.clone(),
        members: RefCell::new(Vec::new()),
        signals: Cell::new(0),
        delivers: Cell::new(0),
        delivered_before: Cell::new(0),
        finished: Cell::new(None),
    });
    glommio::spawn_local(router.clone().forward(peer)).detach();
    glommio::spawn_local(read_mesh(core.clone(), from, messages, drain_every)).detach();
    let room = room();
    // The owner core takes the odd member.
    let local = if me == 0 {
        room_size.div_ceil(2)
    } else {
        room_size / 2
    };
    for i in 0..local {
        let user: Arc<str> = Arc::from(format!("user-{}", (2 * i + me) % USERS));
        let identity = Identity {
            username: user.clone(),
            user_id: user,
            admin: false,
        };
        let now = Instant::now();
        let client = core.with_hub(|hub| hub.open(identity, room.clone(), None, now));
        core.members.borrow_mut().push(client);
        if i % 256 == 255 {
            drain(&core.members.borrow(), now);
            futures_lite::future::yield_now().await;
        }
    }
    if me == 1 {
        let joined = |c: &Core| {
            c.members
                .borrow()
                .iter()
                .all(|m| m.membership(&room) == Some(Membership::Joined))
        };
        wait_for(&core, true, joined).await;
        let cpu_start = thread_cpu_time();
        router.send(0, ShardMsg::Shutdown);
        wait_for(&core, false, |c| c.finished.get().is_some()).await;
        let (end, cpu_end) = core.finished.get().expect("finished");
        let delivered = core.hub.borrow().metrics.delivered - core.delivered_before.get();
        return CoreReport {
            core: 1,
            start: None,
            end,
            delivered,
            cpu: cpu_end - cpu_start,
            staged: router.staged_total(),
        };
    }
    wait_for(&core, true, |c| c.signals.get() >= 1).await;
    drain(&core.members.borrow(), Instant::now());
    let template = template_frame(&room);
    let delivered_before = core.hub.borrow().metrics.delivered;
    let cpu_start = thread_cpu_time();
    let start = Instant::now();
    for i in 1..=messages {
        let now = Instant::now();
        match path {
            Path::Accept => {
                let msg = message(&room, i);
                core.with_hub(|hub| hub.accept_sequenced(msg, None, now, now));
            }
            Path::Fanout => {
                // The owner's freshly encoded frame (encoding itself is the other path).
                let frame = Bytes::copy_from_slice(&template);
                core.with_hub(|hub| hub.relay(room.clone(), frame, FrameKind::Message, None, now));
            }
        }
        if i % drain_every == 0 {
            drain(&core.members.borrow(), now);
            futures_lite::future::yield_now().await;
        }
    }
    drain(&core.members.borrow(), Instant::now());
    let end = Instant::now();
    let cpu = thread_cpu_time() - cpu_start;
    let delivered = core.hub.borrow().metrics.delivered - delivered_before;
    // Core 1 says when it has everything; the staging forwarder keeps running until then.
    wait_for(&core, false, |c| c.signals.get() >= 2).await;
    CoreReport {
        core: 0,
        start: Some(start),
        end,
        delivered,
        cpu,
        staged: router.staged_total(),
    }
}

fn run(path: Path, room_size: usize, messages: usize, drain_every: usize) -> RunResult {
    let mesh: MeshBuilder<ShardMsg, Full> = MeshBuilder::full(CORES, MESH_CAPACITY);
    let placement = match std::thread::available_parallelism() {
        Ok(n) if n.get() >= CORES => PoolPlacement::MaxSpread(CORES, None),
        _ => PoolPlacement::Unbound(CORES),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(IO_MEMORY)
        .name("bench-core")
        .on_all_shards(move || {
            let mesh = mesh.clone();
            async move {
                let (senders, mut receivers) = mesh.join().await.expect("mesh join");
                let router = Rc::new(Router::new(senders, CORES));
                let (_, rx) = receivers
                    .streams()
                    .pop()
                    .expect("one stream from the other core");
                run_core(router, rx, room_size, path, messages, drain_every).await
            }
        })
        .expect("start two executors (is RLIMIT_MEMLOCK at least 1 MiB?)");
    let mut reports: Vec<CoreReport> = handles
        .join_all()
        .into_iter()
        .map(|r| r.expect("executor failed"))
        .collect();
    reports.sort_by_key(|r| r.core);
    let start = reports[0].start.expect("core 0 records the start");
    let end = reports.iter().map(|r| r.end).max().expect("two reports");
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    assert_eq!(
        delivered,
        (room_size * messages) as u64,
        "every member must get every message"
    );
    RunResult {
        path,
        members: room_size,
        messages,
        elapsed: end - start,
        cpu: reports.iter().map(|r| r.cpu).sum(),
        staged: reports.iter().map(|r| r.staged).sum(),
    }
}

fn main() {
    let options = Options::from_args();
    if options.test {
        for &path in &options.paths {
            for &size in &options.members {
                let r = run(path, size, options.messages, options.drain_every);
                println!(
                    "Testing broadcast/{}/{size}_members: {} deliveries in {:?}",
                    path.name(),
                    r.deliveries(),
                    r.elapsed
                );
            }
        }
        println!("Success");
        return;
    }
    println!(
        "broadcast through two hubs on {CORES} glommio executors: mesh capacity {MESH_CAPACITY}, {} messages per run, queues drained every {} messages, median of {} runs",
        options.messages, options.drain_every, options.reps
    );
    // Warm-up: page in the allocator, the executors' memory and the code.
    let _ = run(
        options.paths[0],
        options.members[0],
        options.messages.min(2_000),
        options.drain_every,
    );

    let mut medians = Vec::new();
    let mut all = Vec::new();
    for &path in &options.paths {
        for &size in &options.members {
            let mut runs: Vec<RunResult> = (0..options.reps)
                .map(|_| run(path, size, options.messages, options.drain_every))
                .collect();
            runs.sort_by_key(|r| r.elapsed);
            let median = runs.len() / 2;
            medians.push(runs.swap_remove(median));
            all.extend(runs);
        }
    }

    println!();
    println!(
        "{:>7} {:>8} {:>9} {:>11} {:>13} {:>15} {:>12} {:>16} {:>7}",
        "path",
        "members",
        "messages",
        "elapsed ms",
        "messages/s",
        "deliveries/s",
        "ns/delivery",
        "cpu ns/delivery",
        "staged"
    );
    for r in &medians {
        println!(
            "{:>7} {:>8} {:>9} {:>11.1} {:>13.0} {:>15.0} {:>12.2} {:>16.2} {:>7}",
            r.path.name(),
            r.members,
            r.messages,
            r.elapsed.as_secs_f64() * 1e3,
            r.messages_per_sec(),
            r.deliveries() as f64 / r.elapsed.as_secs_f64(),
            r.ns_per_delivery(),
            r.cpu_ns_per_delivery(),
            r.staged
        );
    }
    println!();
    println!("accept: Hub::accept_sequenced (encode, history, fan-out); fanout: Hub::relay of an encoded frame.");
    println!("ns/delivery: wall time / (messages x members), both cores working at once;");
    println!("cpu ns/delivery: CPU time of both executor threads / (messages x members).");
    println!();
    for (r, median) in medians
        .iter()
        .map(|r| (r, true))
        .chain(all.iter().map(|r| (r, false)))
    {
        println!(
            "{}",
            serde_json::json!({
                "bench": "broadcast",
                "path": r.path.name(),
                "cores": CORES,
                "members": r.members,
                "messages": r.messages,
                "drain_every": options.drain_every,
                "median": median,
                "elapsed_ns": r.elapsed.as_nanos() as u64,
                "messages_per_sec": r.messages_per_sec().round(),
                "ns_per_delivery": (r.ns_per_delivery() * 100.0).round() / 100.0,
                "cpu_ns_per_delivery": (r.cpu_ns_per_delivery() * 100.0).round() / 100.0,
                "staged": r.staged,
            })
        );
    }
}
