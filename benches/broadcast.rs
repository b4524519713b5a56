//! Cross-core broadcast: one room split over two glommio executors, the fan-out path of
//! `hub.rs` with the server's own types.
//!
//! Core 0 owns the room. For each message it builds a fresh frame, sends one private copy to
//! core 1 as a `ShardMsg::Deliver` through `shard::Router` (the channel mesh of
//! `MESH_CAPACITY` per direction, staging behind it when full, as the server does), then pushes
//! the frame into each local member's queue. Core 1 receives the copy on its mesh stream and
//! pushes it into each of its members' queues. Members are real `client::Client`s, so a push is
//! `Client::push` into the connection's `outbound::Outbound` exactly as `Hub::deliver_local` does
//! it; every `--drain-every` messages each core empties all its members' queues with
//! `Outbound::consume`, as the connection driver does after a gathered write (the write itself is
//! not part of this benchmark), and the owner yields to its executor as a connection task does
//! between socket reads.
//!
//! Not measured here: JSON encoding of the message (see the `protocol` benchmark), socket writes,
//! and waking driver tasks (no driver is registered, so a push that would wake one does not).
//!
//! The clock starts on core 0 once both cores joined the mesh and built their members, and stops
//! when both cores have delivered every message and drained their queues. Each size runs
//! `--reps` times after one warm-up run; the table shows the median run, and one JSON line per run
//! follows it.
//!
//! Run with `cargo bench --bench broadcast` (options after `--`: `--messages N`,
//! `--members 50,5000`, `--reps N`, `--drain-every N`). Without `--bench` (as under
//! `cargo test --benches`) it only checks the path with 200 messages per size.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatd::auth::Identity;
use chatd::client::Client;
use chatd::outbound::{Outbound, Push};
use chatd::protocol::{self, ChatMessage};
use chatd::runtime::mesh::{Router, MESH_CAPACITY};
use chatd::shard::{ConnId, FrameKind, ShardMsg};
use chatd::ws;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

/// Locked memory per executor: two must fit in the machine's 8 MiB RLIMIT_MEMLOCK.
const IO_MEMORY: usize = 512 * 1024;
/// Per-connection outbound budget: the server's default `OUTBOUND_QUEUE_BYTES`.
const OUTBOUND_BYTES: usize = 1 << 20;
/// The server's default `WRITE_STALL_TIMEOUT_MS`.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
const CORES: usize = 2;

struct Options {
    messages: usize,
    members: Vec<usize>,
    reps: usize,
    drain_every: usize,
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
    /// Frames accepted by this core's members' queues.
    delivered: u64,
    /// CPU time of the core's thread during the run.
    cpu: Duration,
    /// Messages the owner had to stage because the mesh channel was full.
    staged: u64,
}

/// One run's figures.
struct RunResult {
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

/// A typical broadcast frame: a 100-byte message encoded as the owner core encodes it.
fn template_frame() -> Vec<u8> {
    let message = ChatMessage {
        id: protocol::parse_message_id("01HQZX3Y7K8M9N0P1Q2R3S4T5V").expect("a valid id"),
        room_id: Arc::from("general"),
        user_id: Arc::from("user-456"),
        username: Arc::from("john_doe"),
        content: "The quick brown fox jumps over the lazy dog while the team ships the release. The quick brown fo"
            .to_owned(),
        timestamp_ms: 1_704_110_400_123,
    };
    let json = protocol::encode_message(&message);
    let mut frame = Vec::with_capacity(ws::text_header_len(json.len()) + json.len());
    ws::encode_text_into(&json, &mut frame);
    frame
}

/// `Hub::deliver_local` for a message: the frame into every member's queue.
fn deliver(members: &[Rc<Client>], frame: &Bytes, now: Instant) -> u64 {
    let mut delivered = 0;
    for client in members {
        if let Push::Queued { .. } = client.push(frame.clone(), FrameKind::Message, now) {
            delivered += 1;
        }
    }
    delivered
}

/// The drivers' side: every queue fully written.
fn drain(members: &[Rc<Client>], now: Instant) {
    for client in members {
        let mut out = client.outbound().borrow_mut();
        let written = out.bytes();
        out.consume(written, now);
    }
}

/// The members of the room that live on `core`; the owner core takes the odd one.
fn make_members(core: usize, room_size: usize, room: &Arc<str>) -> Vec<Rc<Client>> {
    let local = if core == 0 {
        room_size.div_ceil(2)
    } else {
        room_size / 2
    };
    let now = Instant::now();
    (0..local)
        .map(|i| {
            let user_id: Arc<str> = Arc::from(format!("user-{core}-{i}"));
            let identity = Identity {
                username: user_id.clone(),
                user_id,
            };
            Client::new(
                ConnId::new(core, i as u64),
                identity,
                room.clone(),
                Outbound::new(OUTBOUND_BYTES, STALL_TIMEOUT),
                now,
                None,
            )
        })
        .collect()
}

async fn owner_core(
    router: Rc<Router>,
    members: Vec<Rc<Client>>,
    from_member: glommio::channels::shared_channel::ConnectedReceiver<ShardMsg>,
    room: Arc<str>,
    template: Arc<Vec<u8>>,
    messages: usize,
    drain_every: usize,
) -> CoreReport {
    glommio::spawn_local(router.clone().forward(1)).detach();
    let cpu_start = thread_cpu_time();
    let start = Instant::now();
    let mut delivered = 0;
    for i in 1..=messages {
        let now = Instant::now();
        // The owner's freshly encoded frame (encoding itself is measured elsewhere).
        let frame = Bytes::copy_from_slice(&template);
        // `Hub::fan_out`: a private copy for the other core first, then the local members.
        router.send(
            1,
            ShardMsg::Deliver {
                room: room.clone(),
                frame: Bytes::copy_from_slice(&frame),
                kind: FrameKind::Message,
                exclude: None,
                received_at: now,
            },
        );
        delivered += deliver(&members, &frame, now);
        if i % drain_every == 0 {
            drain(&members, now);
            futures_lite::future::yield_now().await;
        }
    }
    drain(&members, Instant::now());
    let end = Instant::now();
    let cpu = thread_cpu_time() - cpu_start;
    // Core 1 says when it has everything; the staging forwarder keeps running until then.
    match from_member.recv().await {
        Some(ShardMsg::Shutdown) => {}
        other => panic!("core 0 expected the end of the run, got {other:?}"),
    }
    CoreReport {
        core: 0,
        start: Some(start),
        end,
        delivered,
        cpu,
        staged: router.staged_total(),
    }
}

async fn member_core(
    router: Rc<Router>,
    members: Vec<Rc<Client>>,
    from_owner: glommio::channels::shared_channel::ConnectedReceiver<ShardMsg>,
    messages: usize,
    drain_every: usize,
) -> CoreReport {
    let cpu_start = thread_cpu_time();
    let mut delivered = 0;
    let mut received = 0;
    while received < messages {
        // `Hub::on_shard_msg` for a `Deliver`.
        match from_owner.recv().await {
            Some(ShardMsg::Deliver { frame, kind, .. }) => {
                assert_eq!(kind, FrameKind::Message);
                let now = Instant::now();
                delivered += deliver(&members, &frame, now);
                received += 1;
                if received % drain_every == 0 {
                    drain(&members, now);
                }
            }
            other => panic!("core 1 expected a delivery, got {other:?}"),
        }
    }
    drain(&members, Instant::now());
    let end = Instant::now();
    let cpu = thread_cpu_time() - cpu_start;
    router.send(0, ShardMsg::Shutdown);
    CoreReport {
        core: 1,
        start: None,
        end,
        delivered,
        cpu,
        staged: router.staged_total(),
    }
}

fn run(room_size: usize, messages: usize, drain_every: usize) -> RunResult {
    let mesh: MeshBuilder<ShardMsg, Full> = MeshBuilder::full(CORES, MESH_CAPACITY);
    let template = Arc::new(template_frame());
    let placement = match std::thread::available_parallelism() {
        Ok(n) if n.get() >= CORES => PoolPlacement::MaxSpread(CORES, None),
        _ => PoolPlacement::Unbound(CORES),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(IO_MEMORY)
        .name("bench-core")
        .on_all_shards(move || {
            let mesh = mesh.clone();
            let template = template.clone();
            async move {
                let (senders, mut receivers) = mesh.join().await.expect("mesh join");
                let router = Rc::new(Router::new(senders, CORES));
                let core = router.core();
                let room: Arc<str> = Arc::from("general");
                let members = make_members(core, room_size, &room);
                let (_, rx) = receivers
                    .streams()
                    .pop()
                    .expect("one stream from the other core");
                if core == 0 {
                    owner_core(router, members, rx, room, template, messages, drain_every).await
                } else {
                    member_core(router, members, rx, messages, drain_every).await
                }
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
        for &size in &options.members {
            let r = run(size, options.messages, options.drain_every);
            println!(
                "Testing broadcast/{size}_members: {} deliveries in {:?}",
                r.deliveries(),
                r.elapsed
            );
        }
        println!("Success");
        return;
    }
    println!(
        "broadcast over {CORES} glommio executors: mesh capacity {MESH_CAPACITY}, {} messages per run, queues drained every {} messages, median of {} runs",
        options.messages, options.drain_every, options.reps
    );
    // Warm-up: page in the allocator, the executors' memory and the code.
    let _ = run(
        options.members[0],
        options.messages.min(2_000),
        options.drain_every,
    );

    let mut medians = Vec::new();
    let mut all = Vec::new();
    for &size in &options.members {
        let mut runs: Vec<RunResult> = (0..options.reps)
            .map(|_| run(size, options.messages, options.drain_every))
            .collect();
        runs.sort_by_key(|r| r.elapsed);
        let median = runs.len() / 2;
        medians.push(runs.swap_remove(median));
        all.extend(runs);
    }

    println!();
    println!(
        "{:>8} {:>9} {:>11} {:>13} {:>15} {:>12} {:>16} {:>7}",
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
            "{:>8} {:>9} {:>11.1} {:>13.0} {:>15.0} {:>12.2} {:>16.2} {:>7}",
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
