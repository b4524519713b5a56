//! Scenarios: each turns its command-line flags into a `Plan`, the scenario-independent
//! description the supervisor and the workers execute.
//!
//! All network scenarios share one engine: a set of long-lived connections laid out in
//! rooms (some of them senders), an optional message traffic, optional churn connections,
//! and a timeline (warm-up, measured interval, grace).

pub mod burst;
pub mod churn;
pub mod connect;
pub mod fanout;

use anyhow::{bail, ensure, Result};

use crate::cli::{Command, Common, Traffic};
use crate::job::{ChurnPlan, Layout, Timeline, TrafficPlan};
use crate::target::Target;

/// A scenario, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Scenario name (`connect`, `fanout`, `burst`, `churn`).
    pub scenario: &'static str,
    /// Shared flags.
    pub common: Common,
    /// Parsed and checked `--url`.
    pub target: Target,
    /// Long-lived connections, rooms and senders.
    pub layout: Layout,
    /// New connections per second during the connect phase.
    pub connect_rate: f64,
    /// Message traffic, if any.
    pub traffic: Option<TrafficPlan>,
    /// Churn connections, if any.
    pub churn: Option<ChurnPlan>,
    /// Phase lengths after the connect phase.
    pub timeline: Timeline,
    /// Scenario parameters, echoed in the report's `config`.
    pub settings: serde_json::Value,
    /// Sockets open at once beyond the layout's (churn), for sizing worker processes.
    pub extra_sockets: u32,
}

/// Builds the plan of a network scenario; `None` for `floor` and `worker`.
pub fn plan(command: &Command) -> Result<Option<Plan>> {
    Ok(Some(match command {
        Command::Connect(a) => connect::plan(a)?,
        Command::Fanout(a) => fanout::plan(a)?,
        Command::Burst(a) => burst::plan(a)?,
        Command::Churn(a) => churn::plan(a)?,
        Command::Floor(_) | Command::Worker => return Ok(None),
    }))
}

/// Checks the shared flags and parses the target.
fn check_common(common: &Common) -> Result<Target> {
    let target = Target::parse(&common.url)?;
    ensure!(
        common.secret.is_some() || common.tokens_file.is_some(),
        "give --secret (or JWT_SECRET) or --tokens-file"
    );
    // Room ids are 1..=128 of [A-Za-z0-9_.:-] (contract section 2); leave room for the
    // scenario tag and a number.
    let ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    };
    ensure!(
        ok(&common.room_prefix) && common.room_prefix.len() <= 100,
        "--room-prefix may only use letters, digits, _ - . : (at most 100)"
    );
    ensure!(
        !common.user_prefix.is_empty() && common.user_prefix.len() <= 100,
        "--user-prefix must be 1 to 100 characters"
    );
    Ok(target)
}

/// Seconds to nanoseconds.
fn ns(seconds: f64) -> u64 {
    (seconds * 1e9).round() as u64
}

/// The timeline of a traffic scenario.
fn traffic_timeline(t: &Traffic) -> Timeline {
    Timeline {
        warmup_ns: ns(t.warmup),
        duration_ns: ns(t.duration),
        grace_ns: ns(t.grace),
    }
}

/// Refuses layouts past the connection limit.
fn check_connections(n: u64) -> Result<u32> {
    if n > u64::from(crate::cli::MAX_CONNECTIONS) {
        bail!(
            "{n} connections requested; the limit is {}",
            crate::cli::MAX_CONNECTIONS
        );
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn plan_of(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(args).unwrap();
        Ok(plan(&cli.command)?.unwrap())
    }

    #[test]
    fn fanout_layout_and_rate() {
        let p = plan_of(&[
            "loadgen",
            "fanout",
            "--secret",
            "s",
            "--rooms",
            "4",
            "--members",
            "50",
            "--senders",
            "5",
            "--total-rate",
            "1000",
        ])
        .unwrap();
        assert_eq!(p.layout.connections, 200);
        assert_eq!(p.layout.room_size, 50);
        assert_eq!(p.layout.senders_per_room, 5);
        match p.traffic.unwrap().mode {
            crate::job::SendMode::Rate { per_sender_hz } => assert_eq!(per_sender_hz, 50.0),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn refuses_bad_plans() {
        // More senders than members.
        assert!(plan_of(&[
            "loadgen",
            "fanout",
            "--secret",
            "s",
            "--members",
            "3",
            "--senders",
            "4"
        ])
        .is_err());
        // Too many connections overall.
        assert!(plan_of(&[
            "loadgen",
            "fanout",
            "--secret",
            "s",
            "--rooms",
            "1000",
            "--members",
            "1000"
        ])
        .is_err());
        // Non-loopback target.
        assert!(plan_of(&[
            "loadgen",
            "connect",
            "--secret",
            "s",
            "--url",
            "ws://10.1.2.3/ws"
        ])
        .is_err());
        // Bad room prefix.
        assert!(plan_of(&[
            "loadgen",
            "connect",
            "--secret",
            "s",
            "--room-prefix",
            "a b"
        ])
        .is_err());
    }

    #[test]
    fn churn_ids_follow_the_layout() {
        let p = plan_of(&[
            "loadgen",
            "churn",
            "--secret",
            "s",
            "--rooms",
            "2",
            "--members",
            "10",
            "--churn-rate",
            "50",
            "--churn-hold",
            "2",
        ])
        .unwrap();
        let c = p.churn.unwrap();
        assert_eq!(c.first_id, 20);
        assert_eq!(c.hold_ns, 2_000_000_000);
        assert!(p.extra_sockets >= 100);
    }

    #[test]
    fn burst_is_one_room_with_one_windowed_sender() {
        let p = plan_of(&[
            "loadgen",
            "burst",
            "--secret",
            "s",
            "--members",
            "30",
            "--window",
            "8",
        ])
        .unwrap();
        assert_eq!(p.layout.rooms(), 1);
        assert_eq!(p.layout.senders_of_room(0), 0..1);
        assert_eq!(
            p.traffic.unwrap().mode,
            crate::job::SendMode::Window { window: 8 }
        );
    }
}
