//! `loadgen`: a load generator for WebSocket chat servers that speak the chat wire
//! contract (`shared/PROTOCOL.md`): `GET /ws?token=<jwt>&roomId=<room>`, `room_joined`
//! first, JSON `message` frames delivered to every member of a room, the sender included.
//!
//! # Process model
//!
//! One process cannot hold more sockets than `RLIMIT_NOFILE` allows, so the parent
//! re-executes itself (`std::env::current_exe()`, hidden `worker` subcommand) once per
//! `--per-process` connections (18,000 by default). The parent hands each worker a JSON
//! job on stdin and steps all of them through the phases together (connect, go, cutoffs);
//! workers report progress and results as JSON lines on stdout. Each worker runs a
//! single-threaded tokio runtime with one task per connection (plus one writer task per
//! sender) and small tungstenite buffers, a few KiB per connection. Workers exit when
//! their stdin closes (parent gone), on the parent-death signal, or at the hard deadline.
//! Client sockets are bound to source addresses 127.0.0.2 and up so ephemeral ports
//! never run out (see `srcaddr`).
//!
//! # Measurements
//!
//! - Handshake latency: TCP connect start to the `room_joined` frame.
//! - Delivery latency: every message's content carries its sender, a per-sender sequence
//!   number and its send time in `CLOCK_MONOTONIC` nanoseconds, a clock shared by every
//!   process on the machine, so a receiver in any worker computes the latency on arrival.
//!   Rate-driven senders that fall behind schedule stamp the *due* time of each message
//!   (no coordinated omission); on schedule they stamp the actual write time.
//!   Only messages sent in the measured interval (after `--warmup`) are counted.
//! - Loss, reordering, duplicates: per (receiver, sender) sequence tracking; a message
//!   counts as lost only if it was sent before the end minus `--grace` and had not
//!   arrived `--grace` after the end.
//! - Histograms are HdrHistograms (µs, 3 significant digits) merged exactly across
//!   workers via the V2 serialization; `--hgrm` and `--svg` save the distribution.
//! - With `--server-pid`: the server's CPU time (`/proc/PID/stat`) and RSS
//!   (`/proc/PID/status`) at the phase boundaries, beside loadgen's own CPU time, since
//!   both share the machine.
//! - Once a second for the whole run (the report's `timeline`): the server's RSS, its
//!   own gauge of open connections (`--metrics-path`), loadgen's open connections and
//!   running totals; the RSS trend over the measured interval says whether memory
//!   stayed flat after the warm-up (`--timeline-svg` plots it).
//! - `floor`: the CPU cost of one plain `send()` of a frame on loopback, the lower bound
//!   for a server's CPU per delivered frame.
//!
//! Every run is bounded: connection counts, rates and durations have maxima, only
//! loopback targets are accepted, and a hard deadline (planned run length + 30 s) ends
//! the run whatever happens.

mod auth;
mod cli;
mod clock;
mod conn;
mod content;
mod floor;
mod frame;
mod hgrm;
mod inflate;
mod job;
mod procstat;
mod report;
mod scenario;
mod seqtrack;
mod session;
mod srcaddr;
mod stats;
mod supervisor;
mod svg;
mod target;
mod timeline;
mod worker;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    if let Err(e) = run() {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Worker => worker::main(),
        Command::Floor(args) => {
            let report = floor::run(args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                floor::print_human(&report);
            }
            Ok(())
        }
        command => {
            let plan = scenario::plan(command)?.context("not a network scenario")?;
            let outcome = supervisor::run(&plan)?;
            let report = report::build(&plan, &outcome);
            // Connect has no deliveries: its distribution is the handshake latency.
            let (hist, what) = if plan.traffic.is_some() {
                (&outcome.latency, "delivery latency")
            } else {
                (&outcome.handshake, "handshake latency")
            };
            if let Some(path) = &plan.common.hgrm {
                std::fs::write(path, hgrm::percentile_distribution(hist))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = &plan.common.svg {
                let title = format!("loadgen {}: {what} by percentile", plan.scenario);
                std::fs::write(path, svg::render(hist, &title))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = &plan.common.timeline_svg {
                let title = format!(
                    "loadgen {}: server RSS and open connections over time",
                    plan.scenario
                );
                std::fs::write(path, svg::render_timeline(&outcome.timeline, &title))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if plan.common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report::human(&report));
            }
            Ok(())
        }
    }
}
