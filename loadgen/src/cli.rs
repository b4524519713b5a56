//! Command-line interface: subcommands, flags, defaults and the hard limits that keep
//! every run bounded in size and time.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Most long-lived connections in one run.
pub const MAX_CONNECTIONS: u32 = 200_000;
/// Longest measured interval (or hold), seconds.
pub const MAX_DURATION_S: f64 = 3_600.0;
/// Longest warm-up, seconds.
pub const MAX_WARMUP_S: f64 = 600.0;
/// Longest grace period, seconds.
pub const MAX_GRACE_S: f64 = 60.0;
/// Highest connect rate, connections per second.
pub const MAX_CONNECT_RATE: f64 = 50_000.0;
/// Highest total message rate, messages per second.
pub const MAX_TOTAL_MSG_RATE: f64 = 2_000_000.0;
/// Largest message content, bytes (the contract caps frames at 64 KiB).
pub const MAX_SIZE: usize = 60_000;
/// Smallest message content, bytes (room for the send-time header).
pub const MIN_SIZE: usize = 64;
/// Most sockets one worker process may hold (`RLIMIT_NOFILE` is 20,000 here).
pub const MAX_PER_PROCESS: u32 = 19_000;
/// Seconds added to the planned run length for the hard deadline.
pub const DEADLINE_SLACK_S: f64 = 30.0;

/// Load generator for WebSocket chat servers speaking the chat wire contract.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about, long_about = None)]
pub struct Cli {
    /// Scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open N connections at a fixed rate, hold them, report handshake latency.
    Connect(ConnectArgs),
    /// K rooms x M members, S senders per room at a fixed rate: delivery latency and loss.
    Fanout(FanoutArgs),
    /// One room, one sender as fast as the server takes it (bounded window).
    Burst(BurstArgs),
    /// Fanout traffic while other connections connect and disconnect at a fixed rate.
    Churn(ChurnArgs),
    /// The measurement floor: CPU cost of a plain send() of one frame on loopback TCP.
    Floor(FloorArgs),
    /// Internal: a worker process (job on stdin, events on stdout).
    #[command(hide = true)]
    Worker,
}

/// Flags shared by every network scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket endpoint of the server (loopback only: 127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// HS256 secret to mint one token per connection (default: $JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// File with one token per line, used instead of --secret (connection i gets line i).
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Prefix of minted user ids (`sub` = PREFIX + connection id).
    #[arg(long, default_value = "u-")]
    pub user_prefix: String,
    /// Prefix of room ids.
    #[arg(long, default_value = "lg-")]
    pub room_prefix: String,
    /// Most sockets per worker process.
    #[arg(long, default_value_t = 18_000, value_parser = clap::value_parser!(u32).range(100..=MAX_PER_PROCESS as i64))]
    pub per_process: u32,
    /// Least number of worker processes (more are used when --per-process requires).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: u32,
    /// Connections per source address before moving to the next one
    /// [default: 1,000, or 90% of the ephemeral port range if smaller].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub per_source: Option<u32>,
    /// Seconds a connection may take from TCP connect to `room_joined`.
    #[arg(long, default_value_t = 10.0, value_parser = seconds(0.1, 120.0))]
    pub connect_timeout: f64,
    /// PID of the server: report its CPU time per delivery and RSS per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON object instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Save the latency histogram in HdrHistogram percentile-distribution format (ms).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Save an SVG plot of latency by percentile.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Path of the server's Prometheus page on the host and port of --url (e.g.
    /// `/metrics`): read once a second for the server's count of open connections.
    #[arg(long, value_parser = metrics_path)]
    pub metrics_path: Option<String>,
    /// Offer permessage-deflate (`client_no_context_takeover`) on every connection and
    /// inflate the server's compressed frames; what the load generator sends stays
    /// uncompressed. For the server's cost of compressing its broadcasts.
    #[arg(long)]
    pub deflate: bool,
    /// Gauge on that page that counts the server's open connections (summed over labels).
    #[arg(long, default_value = "chat_connections")]
    pub metrics_gauge: String,
    /// Save an SVG plot of server RSS and open connections over time (the report's
    /// `timeline`).
    #[arg(long, value_name = "FILE")]
    pub timeline_svg: Option<PathBuf>,
}

/// A parser for `--metrics-path`: an absolute path that fits in a request line.
fn metrics_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.len() <= 1_000 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: expected a path such as /metrics (starting with '/', no spaces)"
        ))
    }
}

/// Flags of scenarios that send messages.
#[derive(Args, Debug, Clone)]
pub struct Traffic {
    /// Measured interval, seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds(0.1, MAX_DURATION_S))]
    pub duration: f64,
    /// Traffic before the measured interval, seconds (not counted).
    #[arg(long, default_value_t = 2.0, value_parser = seconds(0.0, MAX_WARMUP_S))]
    pub warmup: f64,
    /// Seconds in-flight messages get: receivers read this long after the end, and
    /// messages sent in the last GRACE seconds are not judged lost.
    #[arg(long, default_value_t = 2.0, value_parser = seconds(0.0, MAX_GRACE_S))]
    pub grace: f64,
    /// Message content size, bytes.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(MIN_SIZE as i64..=MAX_SIZE as i64))]
    pub size: u32,
    /// Pad message content with English words instead of dots: content that compresses
    /// like chat text (for `--deflate` runs; dots compress far better than any chat).
    #[arg(long)]
    pub text_padding: bool,
}

/// `connect` flags.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub connections: u32,
    /// New connections per second.
    #[arg(long, default_value_t = 1_000.0, value_parser = seconds(1.0, MAX_CONNECT_RATE))]
    pub rate: f64,
    /// Seconds to hold every connection open once all are attempted.
    #[arg(long, default_value_t = 10.0, value_parser = seconds(0.0, MAX_DURATION_S))]
    pub hold: f64,
    /// Connections per room (rooms `<prefix>c0`, `<prefix>c1`, ...).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub room_size: u32,
}

/// `fanout` flags.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Traffic flags.
    #[command(flatten)]
    pub traffic: Traffic,
    /// Number of rooms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub rooms: u32,
    /// Members per room (senders included).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub members: u32,
    /// Senders per room.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub senders: u32,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0, value_parser = seconds(0.001, MAX_TOTAL_MSG_RATE))]
    pub msg_rate: f64,
    /// Messages per second of all senders together (overrides --msg-rate).
    #[arg(long, value_parser = seconds(0.001, MAX_TOTAL_MSG_RATE))]
    pub total_rate: Option<f64>,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 2_000.0, value_parser = seconds(1.0, MAX_CONNECT_RATE))]
    pub rate: f64,
}

/// `burst` flags.
#[derive(Args, Debug, Clone)]
pub struct BurstArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Traffic flags.
    #[command(flatten)]
    pub traffic: Traffic,
    /// Members of the room (the sender included).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub members: u32,
    /// Most messages sent but not yet echoed back to the sender.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub window: u32,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 2_000.0, value_parser = seconds(1.0, MAX_CONNECT_RATE))]
    pub rate: f64,
}

/// `churn` flags.
#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// The fanout traffic that runs meanwhile.
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// New short-lived connections per second.
    #[arg(long, default_value_t = 100.0, value_parser = seconds(0.1, 10_000.0))]
    pub churn_rate: f64,
    /// Seconds each short-lived connection stays after `room_joined`.
    #[arg(long, default_value_t = 1.0, value_parser = seconds(0.0, 600.0))]
    pub churn_hold: f64,
    /// Rooms the short-lived connections spread over (`<prefix>x0`, ...).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub churn_rooms: u32,
}

/// `floor` flags.
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback TCP sockets to send to (capped so 2 x N descriptors fit RLIMIT_NOFILE).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sockets: u32,
    /// Total sends.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub frames: u64,
    /// Bytes per send: one WebSocket text frame (header included).
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u32).range(8..=65_535))]
    pub size: u32,
    /// Sends per group: with `--group-rate`, each group goes to this many consecutive
    /// sockets back to back, as one chat message goes to the members of one room.
    #[arg(long, default_value_t = 50, requires = "group_rate", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub group: u32,
    /// Groups per second (paced, sleeping between groups); without it every send goes
    /// back to back. `--group 50 --group-rate 400` is the pattern of `fanout --rooms 100
    /// --members 50 --senders 1 --msg-rate 4`.
    #[arg(long, value_parser = seconds(0.1, 1_000_000.0))]
    pub group_rate: Option<f64>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// A parser for a number of seconds (or a rate) within `[min, max]`.
fn seconds(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |s: &str| {
        let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if v.is_finite() && (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is outside {min}..={max}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_fanout_command_line() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "fanout",
            "--secret",
            "s",
            "--rooms",
            "5",
            "--members",
            "20",
            "--senders",
            "2",
            "--msg-rate",
            "50",
            "--duration",
            "3",
            "--json",
        ])
        .unwrap();
        let Command::Fanout(f) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!((f.rooms, f.members, f.senders), (5, 20, 2));
        assert_eq!(f.msg_rate, 50.0);
        assert_eq!(f.traffic.duration, 3.0);
        assert_eq!(f.traffic.warmup, 2.0);
        assert!(f.common.json);
        assert_eq!(f.common.url, "ws://127.0.0.1:8000/ws");
    }

    #[test]
    fn refuses_values_past_the_limits() {
        for args in [
            &["loadgen", "connect", "--connections", "200001"][..],
            &["loadgen", "connect", "--hold", "3601"],
            &["loadgen", "fanout", "--duration", "0"],
            &["loadgen", "fanout", "--size", "10"],
            &["loadgen", "fanout", "--warmup", "nan"],
            &["loadgen", "burst", "--window", "0"],
            &["loadgen", "connect", "--per-process", "25000"],
            &["loadgen", "floor", "--group-rate", "0"],
            &["loadgen", "floor", "--group", "0", "--group-rate", "400"],
            // A group size alone would be ignored: it needs a rate.
            &["loadgen", "floor", "--group", "10"],
            &["loadgen", "churn", "--metrics-path", "metrics"],
            &["loadgen", "churn", "--metrics-path", "/a b"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn timeline_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "churn",
            "--metrics-path",
            "/metrics",
            "--timeline-svg",
            "t.svg",
        ])
        .unwrap();
        let Command::Churn(c) = cli.command else {
            panic!("not churn")
        };
        let common = &c.fanout.common;
        assert_eq!(common.metrics_path.as_deref(), Some("/metrics"));
        assert_eq!(common.metrics_gauge, "chat_connections");
        assert_eq!(common.timeline_svg, Some(PathBuf::from("t.svg")));
        let Command::Churn(c) = Cli::try_parse_from(["loadgen", "churn"]).unwrap().command else {
            panic!("not churn")
        };
        assert_eq!(c.fanout.common.metrics_path, None);
    }

    #[test]
    fn floor_is_back_to_back_unless_given_a_group_rate() {
        let floor = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Floor(f) => f,
            _ => panic!("not floor"),
        };
        let f = floor(&["loadgen", "floor"]);
        assert_eq!(
            (f.sockets, f.frames, f.group, f.group_rate),
            (1_000, 200_000, 50, None)
        );
        let f = floor(&["loadgen", "floor", "--group-rate", "400"]);
        assert_eq!((f.group, f.group_rate), (50, Some(400.0)));
        let f = floor(&["loadgen", "floor", "--group", "8", "--group-rate", "3200"]);
        assert_eq!((f.group, f.group_rate), (8, Some(3_200.0)));
    }
}
