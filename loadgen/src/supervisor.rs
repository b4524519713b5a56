//! The parent process: starts the workers, steps them through the phases of the run,
//! samples the server, prints progress, and merges the workers' results.
//!
//! Phases, all workers in lockstep:
//! 1. spawn workers (`loadgen worker`), send each its `Job`, wait for `prepared`;
//! 2. `connect`: every worker opens its share on one global schedule (connection `id`
//!    due at `t0 + id / rate`); wait until every worker reports `connected`;
//! 3. `go`: traffic starts at the same instant everywhere; warm-up, measured interval;
//! 4. at the end each worker reports its senders' judged windows (`sent`); the parent
//!    sends all of them to every worker (`cutoffs`), since a room's receivers may live in
//!    other processes than its senders;
//! 5. after the grace period workers close their connections and report `done`.
//!
//! The server is sampled before connecting, after connecting, and at both ends of the
//! measured interval; besides, once a second for the whole run, the server's RSS, its
//! count of open connections (`--metrics-path`) and loadgen's counts go into the
//! timeline (see `timeline`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use crate::auth::read_tokens_file;
use crate::cli::DEADLINE_SLACK_S;
use crate::clock::mono_ns;
use crate::job::{
    ids_of_worker, ConnectPlan, Control, Event, Job, JobAuth, Snapshot, WorkerResult,
};
use crate::procstat::{self, ProcSample};
use crate::scenario::Plan;
use crate::seqtrack::SenderWindow;
use crate::srcaddr::default_per_source;
use crate::stats::{merge_encoded, new_hist, LatencySummary, Tally};
use crate::timeline::{self, Point, Timeline};

/// Time workers get to start and read their job.
const PREPARE_TIMEOUT_NS: u64 = 30_000_000_000;
/// Lead time between announcing a phase start and the start itself, so every worker
/// has received the announcement in time.
const LEAD_NS: u64 = 200_000_000;

/// Server resource samples at the phase boundaries.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSamples {
    /// Before the first connection.
    pub before_connect: ProcSample,
    /// After every connection was attempted and settled.
    pub after_connect: ProcSample,
    /// Start of the measured interval.
    pub measure_start: ProcSample,
    /// End of the measured interval.
    pub measure_end: ProcSample,
}

/// Everything a run produced, merged over workers.
pub struct Outcome {
    /// Worker processes used.
    pub processes: u32,
    /// Merged counters.
    pub tally: Tally,
    /// Handshake latency of long-lived connections, µs.
    pub handshake: Histogram<u64>,
    /// Delivery latency of measured messages, µs.
    pub latency: Histogram<u64>,
    /// Handshake latency of churn connections, µs.
    pub churn_handshake: Histogram<u64>,
    /// From the connect schedule's origin to the last worker's `connected`, ns.
    pub connect_phase_ns: u64,
    /// Length of the measured interval, ns.
    pub measured_ns: u64,
    /// Server samples, with `--server-pid`.
    pub server: Option<ServerSamples>,
    /// CPU of all loadgen processes during the measured interval, µs.
    pub loadgen_cpu_measured_us: u64,
    /// CPU of all loadgen processes over the whole run, µs.
    pub loadgen_cpu_total_us: u64,
    /// Senders whose windows were judged for loss.
    pub senders_judged: usize,
    /// Connections per source address used.
    pub per_source: u32,
    /// Once-a-second samples of the whole run.
    pub timeline: Timeline,
}

/// A message from a worker's stdout reader thread.
enum Msg {
    /// A parsed event line of worker `.0`.
    Event(usize, Box<Event>),
    /// Worker `.0` closed its stdout (exited).
    Eof(usize),
}

/// One worker process.
struct WorkerProc {
    /// The child (killed on drop unless it was waited for).
    child: Child,
    /// Its stdin: control lines; kept open until it exits, since EOF tells it to exit.
    stdin: Option<ChildStdin>,
    /// Whether `child.wait()` returned.
    reaped: bool,
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Per-worker state as the parent sees it.
#[derive(Default)]
struct Seen {
    /// `prepared` received.
    prepared: bool,
    /// `connected` received.
    connected: bool,
    /// `sent` windows received.
    sent: Option<Vec<SenderWindow>>,
    /// `done` result received.
    done: Option<Box<WorkerResult>>,
    /// Last snapshot, for progress lines.
    last: Option<Snapshot>,
}

/// The running parent.
struct Run<'a> {
    /// The plan.
    plan: &'a Plan,
    /// Worker processes.
    workers: Vec<WorkerProc>,
    /// What each worker reported.
    seen: Vec<Seen>,
    /// Events from the reader threads.
    rx: mpsc::Receiver<Msg>,
    /// Hard deadline, `CLOCK_MONOTONIC` ns.
    deadline: u64,
    /// Start of the run, for progress timestamps.
    started: u64,
    /// Progress label.
    phase: &'static str,
    /// Next progress line due, ns.
    next_progress: u64,
    /// Deliveries and sends at the previous progress line, for rates.
    last_counts: (u64, u64, u64),
    /// The once-a-second series (bounded: `timeline::MAX_POINTS`).
    timeline: Timeline,
}

/// Runs `plan` to completion.
pub fn run(plan: &Plan) -> Result<Outcome> {
    procstat::raise_fd_limit();
    let common = &plan.common;
    if let Some(pid) = common.server_pid {
        // Fail before starting anything if the PID is wrong.
        procstat::sample(pid)?;
    }
    let sockets = u64::from(plan.layout.connections) + u64::from(plan.extra_sockets);
    let needed = sockets.div_ceil(u64::from(common.per_process)) as u32;
    let processes = common.processes.max(needed);
    if processes > 64 {
        bail!(
            "{sockets} sockets at --per-process {} need {processes} processes; the limit is 64",
            common.per_process
        );
    }
    let per_source = common.per_source.unwrap_or_else(default_per_source);
    let connect_s = f64::from(plan.layout.connections) / plan.connect_rate + common.connect_timeout;
    let t = plan.timeline;
    let run_ns = (connect_s + DEADLINE_SLACK_S) * 1e9
        + (t.warmup_ns + t.duration_ns + 2 * t.grace_ns) as f64
        + PREPARE_TIMEOUT_NS as f64;
    let started = mono_ns();
    let deadline = started + run_ns as u64;
    let run_id: u32 = (started as u32) ^ std::process::id().rotate_left(16);

    let jobs = make_jobs(plan, processes, per_source, run_id, deadline)?;
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        workers.push(spawn_worker(i, job, tx.clone())?);
    }
    drop(tx);
    let mut run = Run {
        plan,
        seen: (0..workers.len()).map(|_| Seen::default()).collect(),
        workers,
        rx,
        deadline,
        started,
        phase: "starting",
        next_progress: started + 1_000_000_000,
        last_counts: (0, 0, 0),
        timeline: Timeline {
            interval_s: 1.0,
            ..Timeline::default()
        },
    };
    run.execute(processes, per_source)
}

/// One job per worker: the plan plus the worker's index and its share of tokens.
fn make_jobs(
    plan: &Plan,
    processes: u32,
    per_source: u32,
    run_id: u32,
    deadline: u64,
) -> Result<Vec<Job>> {
    let common = &plan.common;
    let tokens = match &common.tokens_file {
        Some(path) => Some(read_tokens_file(path)?),
        None => None,
    };
    let n = plan.layout.connections as usize;
    if let Some(tokens) = &tokens {
        if tokens.len() < n {
            bail!(
                "--tokens-file has {} tokens; {n} connections need one each",
                tokens.len()
            );
        }
        if plan.churn.is_some() && tokens.len() < n + processes as usize {
            bail!(
                "--tokens-file needs at least {} more tokens (after the first {n}) for churn connections",
                processes
            );
        }
    }
    let mut jobs = Vec::new();
    for w in 0..processes {
        let auth = match &tokens {
            Some(tokens) => JobAuth::Tokens {
                conns: ids_of_worker(plan.layout.connections, w, processes)
                    .map(|id| tokens[id as usize].clone())
                    .collect(),
                churn: tokens[n..]
                    .iter()
                    .skip(w as usize)
                    .step_by(processes as usize)
                    .cloned()
                    .collect(),
            },
            None => JobAuth::Secret {
                secret: common.secret.clone().context("no secret")?,
                user_prefix: common.user_prefix.clone(),
            },
        };
        jobs.push(Job {
            scenario: plan.scenario.into(),
            run_id,
            worker: w,
            workers: processes,
            target: plan.target.clone(),
            auth,
            room_prefix: common.room_prefix.clone(),
            layout: plan.layout.clone(),
            connect: ConnectPlan {
                rate: plan.connect_rate,
                timeout_ns: (common.connect_timeout * 1e9) as u64,
                per_source,
                deflate: common.deflate,
            },
            traffic: plan.traffic.clone(),
            churn: plan.churn.clone(),
            timeline: plan.timeline,
            deadline_ns: deadline,
        });
    }
    Ok(jobs)
}

/// Starts `loadgen worker`, hands it `job`, and forwards its events to `tx`.
fn spawn_worker(index: usize, job: &Job, tx: mpsc::Sender<Msg>) -> Result<WorkerProc> {
    let exe = std::env::current_exe().context("locating the loadgen executable")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a worker process")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    serde_json::to_writer(&mut stdin, job)?;
    stdin.write_all(b"\n")?;
    stdin.flush()?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => {
                    if tx.send(Msg::Event(index, Box::new(ev))).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("loadgen: worker {index} sent a bad line: {e}"),
            }
        }
        let _ = tx.send(Msg::Eof(index));
    });
    Ok(WorkerProc {
        child,
        stdin: Some(stdin),
        reaped: false,
    })
}

impl Run<'_> {
    fn execute(&mut self, processes: u32, per_source: u32) -> Result<Outcome> {
        let pid = self.plan.common.server_pid;
        let sample = || pid.map(procstat::sample).transpose();

        let prepare_by = mono_ns() + PREPARE_TIMEOUT_NS;
        self.wait(Some(prepare_by), |r| r.seen.iter().all(|s| s.prepared))?;
        if !self.seen.iter().all(|s| s.prepared) {
            bail!("workers did not start in time");
        }

        let before_connect = sample()?;
        // The first point: the server before any connection.
        self.sample_timeline(mono_ns());
        let t0 = mono_ns() + LEAD_NS;
        self.broadcast(&Control::Connect { t0_ns: t0 })?;
        self.phase = "connecting";
        self.wait(None, |r| r.seen.iter().all(|s| s.connected))?;
        let connect_phase_ns = mono_ns().saturating_sub(t0);
        let after_connect = sample()?;

        let start = mono_ns() + LEAD_NS;
        let phases = self.plan.timeline.at(start);
        self.broadcast(&Control::Go { start_ns: start })?;
        self.phase = if self.plan.timeline.warmup_ns > 0 {
            "warmup"
        } else {
            "running"
        };
        self.wait(Some(phases.measure), |_| false)?;
        let measure_start = sample()?;
        let parent_cpu_start = procstat::self_cpu_us();
        self.phase = if self.plan.traffic.is_some() {
            "measuring"
        } else {
            "holding"
        };
        self.wait(Some(phases.end), |_| false)?;
        let measure_end = sample()?;
        let parent_cpu_measured = procstat::self_cpu_us() - parent_cpu_start;

        self.phase = "draining";
        self.wait(None, |r| r.seen.iter().all(|s| s.sent.is_some()))?;
        let windows: Vec<SenderWindow> = self
            .seen
            .iter_mut()
            .flat_map(|s| s.sent.take().unwrap_or_default())
            .collect();
        let senders_judged = windows.len();
        self.broadcast(&Control::Cutoffs { windows })?;
        self.phase = "grace";
        self.wait(Some(phases.stop), |r| {
            r.seen.iter().all(|s| s.done.is_some())
        })?;
        self.phase = "closing";
        self.wait(None, |r| r.seen.iter().all(|s| s.done.is_some()))?;

        for w in &mut self.workers {
            let _ = w.child.wait();
            w.reaped = true;
            w.stdin = None;
        }
        // The last point: every connection closed.
        self.phase = "closed";
        self.sample_timeline(mono_ns());
        let rel = |ns: u64| ns.saturating_sub(self.started) as f64 / 1e9;
        self.timeline.measure_start_s = Some(rel(phases.measure));
        self.timeline.measure_end_s = Some(rel(phases.end));
        self.timeline.finish();
        let loadgen_cpu_total_us = procstat::children_cpu_us() + procstat::self_cpu_us();

        let mut tally = Tally::default();
        let mut handshake = new_hist();
        let mut latency = new_hist();
        let mut churn_handshake = new_hist();
        let mut workers_cpu = 0;
        for s in &self.seen {
            let r = s.done.as_ref().context("missing worker result")?;
            tally.merge(&r.snap.tally);
            merge_encoded(&mut handshake, &r.snap.handshake)?;
            merge_encoded(&mut latency, &r.snap.latency)?;
            merge_encoded(&mut churn_handshake, &r.churn_handshake)?;
            workers_cpu += r.cpu_measured_us;
        }
        let server = match (before_connect, after_connect, measure_start, measure_end) {
            (Some(a), Some(b), Some(c), Some(d)) => Some(ServerSamples {
                before_connect: a,
                after_connect: b,
                measure_start: c,
                measure_end: d,
            }),
            _ => None,
        };
        Ok(Outcome {
            processes,
            tally,
            handshake,
            latency,
            churn_handshake,
            connect_phase_ns,
            measured_ns: phases.end - phases.measure,
            server,
            loadgen_cpu_measured_us: workers_cpu + parent_cpu_measured,
            loadgen_cpu_total_us,
            senders_judged,
            per_source,
            timeline: std::mem::take(&mut self.timeline),
        })
    }

    /// Sends `cmd` to every worker.
    fn broadcast(&mut self, cmd: &Control) -> Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        for (i, w) in self.workers.iter_mut().enumerate() {
            let stdin = w.stdin.as_mut().context("worker stdin closed")?;
            stdin
                .write_all(&line)
                .and_then(|_| stdin.flush())
                .with_context(|| format!("worker {i} is gone"))?;
        }
        Ok(())
    }

    /// Handles worker events until `done(self)` holds or `until` (ns) passes; prints
    /// progress once a second; fails at the hard deadline or if a worker dies.
    fn wait(&mut self, until: Option<u64>, done: impl Fn(&Self) -> bool) -> Result<()> {
        loop {
            if done(self) {
                return Ok(());
            }
            let now = mono_ns();
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            if now >= self.deadline {
                bail!("hard deadline passed; stopping the run");
            }
            if now >= self.next_progress {
                self.sample_timeline(now);
                self.progress(now);
                self.next_progress += 1_000_000_000;
                continue;
            }
            let wake = until
                .unwrap_or(u64::MAX)
                .min(self.next_progress)
                .min(self.deadline);
            match self
                .rx
                .recv_timeout(Duration::from_nanos(wake.saturating_sub(now)))
            {
                Ok(msg) => self.handle(msg)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every worker exited"),
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Eof(i) => {
                if self.seen[i].done.is_none() {
                    bail!("worker {i} exited before finishing (see its messages above)");
                }
            }
            Msg::Event(i, ev) => {
                let s = &mut self.seen[i];
                match *ev {
                    Event::Prepared => s.prepared = true,
                    Event::Progress { snap } => s.last = Some(snap),
                    Event::Connected { snap } => {
                        s.connected = true;
                        s.last = Some(snap);
                    }
                    Event::Sent { windows } => s.sent = Some(windows),
                    Event::Done { result } => {
                        s.last = Some(result.snap.clone());
                        s.done = Some(result);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds one point to the timeline: the server's RSS and CPU (with `--server-pid`),
    /// its connection gauge (with `--metrics-path`), and the workers' latest counts.
    fn sample_timeline(&mut self, now: u64) {
        let common = &self.plan.common;
        let proc = common.server_pid.and_then(|pid| procstat::sample(pid).ok());
        let server_connections = common.metrics_path.as_ref().and_then(|path| {
            let t = &self.plan.target;
            match timeline::scrape(t.addr, &t.authority, path)
                .and_then(|page| timeline::gauge_value(&page, &common.metrics_gauge))
            {
                Ok(v) => Some(v),
                Err(e) => {
                    self.timeline.scrape_failures += 1;
                    self.timeline.last_scrape_error = Some(e.to_string());
                    None
                }
            }
        });
        let mut tally = Tally::default();
        for snap in self.seen.iter().filter_map(|s| s.last.as_ref()) {
            tally.merge(&snap.tally);
        }
        let open = |c: &crate::stats::ConnTally| c.established.saturating_sub(c.dropped + c.closed);
        self.timeline.push(Point {
            t_s: now.saturating_sub(self.started) as f64 / 1e9,
            phase: self.phase,
            server_rss_bytes: proc.map(|p| p.rss_bytes),
            server_cpu_us: proc.map(|p| p.cpu_us),
            server_connections,
            open_connections: open(&tally.conns) + open(&tally.churn),
            sent: tally.sent,
            delivered: tally.delivered,
            failed: tally.conns.failed + tally.churn.failed,
            dropped: tally.conns.dropped + tally.churn.dropped,
            error_frames: tally.error_frames(),
        });
    }

    /// One progress line on stderr from the workers' latest snapshots.
    fn progress(&mut self, now: u64) {
        if self.plan.common.quiet {
            return;
        }
        let mut tally = Tally::default();
        let mut hist = new_hist();
        let connecting = self.phase == "connecting" || self.plan.traffic.is_none();
        for snap in self.seen.iter().filter_map(|s| s.last.as_ref()) {
            tally.merge(&snap.tally);
            let h = if connecting {
                &snap.handshake
            } else {
                &snap.latency
            };
            let _ = merge_encoded(&mut hist, h);
        }
        let (d0, s0, c0) = self.last_counts;
        let c = tally.conns.established + tally.churn.established;
        let deliveries = tally.delivered.saturating_sub(d0);
        let sends = tally.sent.saturating_sub(s0);
        self.last_counts = (tally.delivered, tally.sent, c);
        let p99 = LatencySummary::of(&hist).p99_ms;
        let elapsed = (now - self.started) as f64 / 1e9;
        let mut line = format!(
            "[{elapsed:6.1}s] {:<10} conns {}/{} up, {} failed, {} dropped",
            self.phase,
            tally.conns.established,
            self.plan.layout.connections,
            tally.conns.failed,
            tally.conns.dropped,
        );
        if connecting {
            line += &format!(" | +{}/s | handshake p99 {p99:.2} ms", c.saturating_sub(c0));
        } else {
            line += &format!(
                " | sent {sends}/s | delivered {deliveries}/s | p99 {p99:.2} ms | lost {}",
                tally.lost
            );
        }
        if self.plan.churn.is_some() {
            line += &format!(
                " | churn {} up {} failed",
                tally.churn.established, tally.churn.failed
            );
        }
        let errors = tally.error_frames();
        if errors > 0 {
            line += &format!(" | errors {errors} {:?}", tally.errors);
        }
        eprintln!("{line}");
    }
}
