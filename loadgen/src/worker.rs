//! A worker process: holds up to `--per-process` connections and plays its share of the
//! scenario on a single-threaded tokio runtime.
//!
//! The parent starts it as `loadgen worker`, writes the `Job` as the first line on its
//! stdin and then drives it through the phases with `Control` lines; the worker answers
//! with `Event` lines on stdout (stderr is shared with the parent for diagnostics). A
//! worker never outlives its purpose: it exits when its stdin reaches EOF (the parent is
//! gone), when the kernel delivers the parent-death signal, or at the job's hard deadline.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::auth::{user_id, Minter};
use crate::clock::MonoAnchor;
use crate::job::{
    ids_of_worker, schedule_offset_ns, Control, Event, Job, JobAuth, Phases, Snapshot, WorkerResult,
};
use crate::procstat;
use crate::seqtrack::SenderWindow;
use crate::session;
use crate::stats::{encode_hist, new_hist, Tally};

/// Exit status when the parent went away.
const EXIT_ORPHANED: i32 = 3;
/// Exit status when the hard deadline passed.
const EXIT_DEADLINE: i32 = 4;
/// How long connections get to close at the end before the worker reports anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where the run is; connection tasks watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connections are being opened; nobody sends.
    Connecting,
    /// Traffic runs (`Ctx::phases` is set).
    Running,
    /// Close every connection.
    Stopping,
}

/// State shared by every task of the worker (single thread: `Rc` and `RefCell`).
pub struct Ctx {
    /// The job from the parent.
    pub job: Job,
    /// Maps `CLOCK_MONOTONIC` times to tokio instants.
    pub anchor: MonoAnchor,
    /// Token minter when the job carries a secret.
    minter: Option<Minter>,
    /// Counters.
    pub tally: RefCell<Tally>,
    /// Handshake latency of long-lived connections, µs.
    pub handshake: RefCell<Histogram<u64>>,
    /// Delivery latency of measured messages, µs.
    pub latency: RefCell<Histogram<u64>>,
    /// Handshake latency of churn connections started in the measured interval, µs.
    pub churn_handshake: RefCell<Histogram<u64>>,
    /// Current phase, broadcast to connection tasks.
    pub phase: watch::Sender<Phase>,
    /// Absolute phase times, known from `Go` on.
    pub phases: Cell<Option<Phases>>,
    /// Write tasks started (one per established sender); each adds one window.
    pub writers: Cell<usize>,
    /// Judged windows of this worker's senders, filled as they stop.
    pub windows: RefCell<Vec<SenderWindow>>,
    /// Judged windows of every sender of the run, by sender id.
    pub cutoffs: RefCell<HashMap<u32, SenderWindow>>,
    /// Long-lived connections of this worker that are established or failed.
    settled: Cell<usize>,
    /// Signalled on each settled connection.
    settled_wake: Notify,
}

impl Ctx {
    fn new(job: Job) -> Self {
        let minter = match &job.auth {
            JobAuth::Secret { secret, .. } => Some(Minter::new(secret)),
            JobAuth::Tokens { .. } => None,
        };
        Ctx {
            job,
            anchor: MonoAnchor::now(),
            minter,
            tally: RefCell::default(),
            handshake: RefCell::new(new_hist()),
            latency: RefCell::new(new_hist()),
            churn_handshake: RefCell::new(new_hist()),
            phase: watch::channel(Phase::Connecting).0,
            phases: Cell::new(None),
            writers: Cell::new(0),
            windows: RefCell::default(),
            cutoffs: RefCell::default(),
            settled: Cell::new(0),
            settled_wake: Notify::new(),
        }
    }

    /// Token of long-lived connection `id`, the `index`-th of this worker.
    pub fn member_token(&self, id: u32, index: usize) -> String {
        match (&self.job.auth, &self.minter) {
            (JobAuth::Secret { user_prefix, .. }, Some(m)) => {
                m.token(&user_id(user_prefix, u64::from(id)))
            }
            (JobAuth::Tokens { conns, .. }, _) => conns[index % conns.len()].clone(),
            _ => unreachable!("a secret job always has a minter"),
        }
    }

    /// Token of churn connection number `k` (id `id`).
    pub fn churn_token(&self, id: u32, k: u64) -> String {
        match (&self.job.auth, &self.minter) {
            (JobAuth::Secret { user_prefix, .. }, Some(m)) => {
                m.token(&user_id(user_prefix, u64::from(id)))
            }
            (JobAuth::Tokens { churn, .. }, _) => {
                let i = (k / u64::from(self.job.workers)) as usize;
                churn[i % churn.len()].clone()
            }
            _ => unreachable!("a secret job always has a minter"),
        }
    }

    /// Marks one long-lived connection as established or failed.
    pub fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        self.settled_wake.notify_one();
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            tally: self.tally.borrow().clone(),
            handshake: encode_hist(&self.handshake.borrow()),
            latency: encode_hist(&self.latency.borrow()),
        }
    }
}

/// Entry point of `loadgen worker`.
pub fn main() -> Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    procstat::raise_fd_limit();
    // Stdin's buffer is process-wide, so the control thread below continues exactly
    // where this read stopped.
    let mut first = String::new();
    std::io::stdin()
        .read_line(&mut first)
        .context("reading the job")?;
    let job: Job = serde_json::from_str(&first).context("parsing the job")?;

    let deadline = job.deadline_ns;
    std::thread::spawn(move || {
        crate::clock::sleep_until_ns(deadline);
        eprintln!("loadgen worker: hard deadline passed, exiting");
        std::process::exit(EXIT_DEADLINE);
    });
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Control>(&line) {
                Ok(cmd) => {
                    if tx.send(cmd).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("loadgen worker: bad control line: {e}"),
            }
        }
        // EOF: the parent is gone (it keeps our stdin open until we exit).
        std::process::exit(EXIT_ORPHANED);
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(job, rx))
}

/// Writes one event line to the parent; a closed pipe means the parent is gone.
fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let ok = serde_json::to_writer(&mut out, event).is_ok()
        && out.write_all(b"\n").is_ok()
        && out.flush().is_ok();
    if !ok {
        std::process::exit(EXIT_ORPHANED);
    }
}

async fn next_control(rx: &mut mpsc::UnboundedReceiver<Control>) -> Result<Control> {
    rx.recv().await.context("control channel closed")
}

async fn run(job: Job, mut control: mpsc::UnboundedReceiver<Control>) -> Result<()> {
    let ctx = Rc::new(Ctx::new(job));
    emit(&Event::Prepared);

    let t0 = match next_control(&mut control).await? {
        Control::Connect { t0_ns } => t0_ns,
        other => bail!("expected connect, got {other:?}"),
    };
    let progress = tokio::task::spawn_local(progress_loop(ctx.clone()));

    // Connect phase: our share of the global schedule.
    let job = &ctx.job;
    let mine = ids_of_worker(job.layout.connections, job.worker, job.workers).count();
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(mine);
    for (index, id) in ids_of_worker(job.layout.connections, job.worker, job.workers).enumerate() {
        let due = t0 + schedule_offset_ns(u64::from(id), job.connect.rate);
        tokio::time::sleep_until(ctx.anchor.instant(due)).await;
        tasks.push(tokio::task::spawn_local(session::member(
            ctx.clone(),
            id,
            index,
        )));
    }
    while ctx.settled.get() < mine {
        ctx.settled_wake.notified().await;
    }
    emit(&Event::Connected {
        snap: ctx.snapshot(),
    });

    let start = match next_control(&mut control).await? {
        Control::Go { start_ns } => start_ns,
        other => bail!("expected go, got {other:?}"),
    };
    let p = job.timeline.at(start);
    ctx.phases.set(Some(p));
    ctx.phase.send_replace(Phase::Running);
    let churn = job
        .churn
        .is_some()
        .then(|| tokio::task::spawn_local(churn_loop(ctx.clone(), p)));

    tokio::time::sleep_until(ctx.anchor.instant(p.measure)).await;
    let cpu_start = procstat::self_cpu_us();
    tokio::time::sleep_until(ctx.anchor.instant(p.end)).await;
    let cpu_measured_us = procstat::self_cpu_us() - cpu_start;

    // Writers stop at `end` on their own (every write is bounded by it); give them a
    // moment to record their windows.
    let settle_by = ctx.anchor.instant(p.end + 1_000_000_000);
    while ctx.windows.borrow().len() < ctx.writers.get() && tokio::time::Instant::now() < settle_by
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emit(&Event::Sent {
        windows: ctx.windows.borrow().clone(),
    });
    match next_control(&mut control).await? {
        Control::Cutoffs { windows } => {
            *ctx.cutoffs.borrow_mut() = windows.into_iter().map(|w| (w.sender, w)).collect();
        }
        other => bail!("expected cutoffs, got {other:?}"),
    }

    tokio::time::sleep_until(ctx.anchor.instant(p.stop)).await;
    ctx.phase.send_replace(Phase::Stopping);
    let closing = async {
        if let Some(churn) = churn {
            let _ = churn.await;
        }
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
        eprintln!(
            "loadgen worker {}: some connections did not close in time",
            job.worker
        );
    }
    progress.abort();
    emit(&Event::Done {
        result: Box::new(WorkerResult {
            snap: ctx.snapshot(),
            churn_handshake: encode_hist(&ctx.churn_handshake.borrow()),
            cpu_measured_us,
        }),
    });
    Ok(())
}

/// Sends a progress snapshot once a second.
async fn progress_loop(ctx: Rc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tick.tick().await;
        emit(&Event::Progress {
            snap: ctx.snapshot(),
        });
    }
}

/// Opens this worker's share of churn connections on the global churn schedule, from the
/// start of traffic to the end of the measurement; returns when they have all finished.
async fn churn_loop(ctx: Rc<Ctx>, p: Phases) {
    let Some(churn) = ctx.job.churn.clone() else {
        return;
    };
    let mut handles = Vec::new();
    let mut k = u64::from(ctx.job.worker);
    loop {
        let due = p.start + schedule_offset_ns(k, churn.rate);
        if due >= p.end {
            break;
        }
        tokio::time::sleep_until(ctx.anchor.instant(due)).await;
        let id = churn.first_id + k as u32;
        handles.push(tokio::task::spawn_local(session::churner(
            ctx.clone(),
            k,
            id,
        )));
        // Forget finished ones so a long run does not accumulate handles.
        if handles.len() >= 1024 {
            handles.retain(|h| !h.is_finished());
        }
        k += u64::from(ctx.job.workers);
    }
    for h in handles {
        let _ = h.await;
    }
}
