//! The end-of-run report: one JSON object with stable field names (documented in
//! README.md), or the same figures as a table for people.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::Plan;
use crate::stats::{ConnTally, LatencySummary};
use crate::supervisor::Outcome;
use crate::timeline::Timeline;

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// loadgen's version.
    pub loadgen_version: &'static str,
    /// Scenario name.
    pub scenario: String,
    /// Server URL.
    pub url: String,
    /// Scenario parameters.
    pub config: serde_json::Value,
    /// Worker processes used.
    pub processes: u32,
    /// Connections per source address.
    pub per_source: u32,
    /// The long-lived connections.
    pub connections: ConnReport,
    /// Message delivery (scenarios that send).
    pub delivery: Option<DeliveryReport>,
    /// Short-lived connections (`churn`).
    pub churn: Option<ChurnReport>,
    /// Frames other than `message` received, by type.
    pub frames: BTreeMap<String, u64>,
    /// `error` frames received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Frames that were not JSON text with a `type`.
    pub bad_frames: u64,
    /// Server resource use (with `--server-pid`).
    pub server: Option<ServerReport>,
    /// loadgen's own CPU use.
    pub loadgen: LoadgenReport,
    /// Once-a-second samples of the run, and the RSS trend over the measured interval.
    pub timeline: Timeline,
}

/// Outcome counts of a set of connections.
#[derive(Clone, Debug, Serialize)]
pub struct ConnCounts {
    /// Attempts started.
    pub attempted: u64,
    /// Attempts that got `room_joined`.
    pub established: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Established connections closed by the server or the network before loadgen closed them.
    pub dropped: u64,
    /// Connections loadgen closed itself.
    pub closed: u64,
}

impl From<&ConnTally> for ConnCounts {
    fn from(t: &ConnTally) -> ConnCounts {
        ConnCounts {
            attempted: t.attempted,
            established: t.established,
            failed: t.failed,
            failures: t.failures.clone(),
            dropped: t.dropped,
            closed: t.closed,
        }
    }
}

/// Long-lived connections.
#[derive(Clone, Debug, Serialize)]
pub struct ConnReport {
    /// Connections planned.
    pub planned: u32,
    /// Rooms they are spread over.
    pub rooms: u32,
    /// How the connections went (fields inlined in the JSON).
    #[serde(flatten)]
    pub counts: ConnCounts,
    /// Established connections per second, first attempt to last `room_joined`.
    pub rate_per_s: f64,
    /// Connect phase length (schedule start to the last settled connection), seconds.
    pub connect_phase_s: f64,
    /// TCP connect to `room_joined`, ms.
    pub handshake_ms: LatencySummary,
}

/// Message delivery.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryReport {
    /// Measured interval, seconds.
    pub measured_s: f64,
    /// Messages sent, warm-up included.
    pub sent: u64,
    /// Messages sent in the measured interval.
    pub sent_measured: u64,
    /// `sent_measured` per second.
    pub send_rate_per_s: f64,
    /// Scheduled messages the senders could not send before the end.
    pub unsent: u64,
    /// Deliveries, warm-up and grace included.
    pub delivered: u64,
    /// Deliveries of messages sent in the measured interval.
    pub delivered_measured: u64,
    /// `delivered_measured` per second of measured interval.
    pub deliveries_per_s: f64,
    /// `sent_measured` times the room size: deliveries a perfect server would make.
    pub expected_measured: u64,
    /// Messages sent in the judged window that a connected receiver never got.
    pub lost: u64,
    /// Measured deliveries that arrived after a later message of the same sender.
    pub reordered: u64,
    /// Measured deliveries of messages the receiver already had.
    pub duplicates: u64,
    /// `message` frames that were not this run's.
    pub foreign: u64,
    /// Senders whose windows were judged for loss.
    pub senders_judged: usize,
    /// Send time to receipt, ms, over measured deliveries.
    pub latency_ms: LatencySummary,
}

/// Short-lived connections.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// Planned connections per second.
    pub rate_planned: f64,
    /// How the connections went; `dropped` are those closed by the server
    /// before their hold time ended (fields inlined in the JSON).
    #[serde(flatten)]
    pub counts: ConnCounts,
    /// Handshake latency of those started in the measured interval, ms.
    pub handshake_ms: LatencySummary,
}

/// Server resource use, from `/proc/PID`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    /// The server's PID.
    pub pid: u32,
    /// Server CPU during the connect phase, µs.
    pub cpu_us_connect: u64,
    /// `cpu_us_connect` per established connection.
    pub cpu_us_per_connection: f64,
    /// Server CPU during the measured interval, µs.
    pub cpu_us_measured: u64,
    /// `cpu_us_measured` / measured interval: cores kept busy.
    pub cpu_cores_measured: f64,
    /// `cpu_us_measured` per measured delivery (null without deliveries).
    pub cpu_us_per_delivery: Option<f64>,
    /// RSS before connecting, bytes.
    pub rss_before_bytes: u64,
    /// RSS with every connection open, bytes.
    pub rss_connected_bytes: u64,
    /// RSS at the end of the measured interval, bytes.
    pub rss_end_bytes: u64,
    /// (`rss_connected_bytes` - `rss_before_bytes`) / established connections.
    pub rss_bytes_per_connection: f64,
}

/// loadgen's own CPU use (it shares the machine with the server).
#[derive(Clone, Debug, Serialize)]
pub struct LoadgenReport {
    /// All loadgen processes during the measured interval, µs.
    pub cpu_us_measured: u64,
    /// `cpu_us_measured` / measured interval: cores kept busy.
    pub cpu_cores_measured: f64,
    /// `cpu_us_measured` per measured delivery (null without deliveries).
    pub cpu_us_per_delivery: Option<f64>,
    /// All loadgen processes over the whole run (parent and workers), µs.
    pub cpu_us_total: u64,
}

fn conn_rate(c: &ConnTally) -> f64 {
    if c.established == 0 || c.last_established_ns <= c.first_attempt_ns {
        return 0.0;
    }
    c.established as f64 / ((c.last_established_ns - c.first_attempt_ns) as f64 / 1e9)
}

fn per(value: u64, count: u64) -> Option<f64> {
    (count > 0).then(|| value as f64 / count as f64)
}

/// Builds the report of a finished run.
pub fn build(plan: &Plan, out: &Outcome) -> Report {
    let t = &out.tally;
    let measured_s = out.measured_ns as f64 / 1e9;
    let per_second = |v: u64| {
        if measured_s > 0.0 {
            v as f64 / measured_s
        } else {
            0.0
        }
    };
    let cores = |us: u64| {
        if out.measured_ns > 0 {
            us as f64 * 1e3 / out.measured_ns as f64
        } else {
            0.0
        }
    };
    let delivery = plan.traffic.as_ref().map(|_| DeliveryReport {
        measured_s,
        sent: t.sent,
        sent_measured: t.sent_measured,
        send_rate_per_s: per_second(t.sent_measured),
        unsent: t.unsent,
        delivered: t.delivered,
        delivered_measured: t.delivered_measured,
        deliveries_per_s: per_second(t.delivered_measured),
        expected_measured: t.sent_measured * u64::from(plan.layout.room_size),
        lost: t.lost,
        reordered: t.reordered,
        duplicates: t.duplicates,
        foreign: t.foreign,
        senders_judged: out.senders_judged,
        latency_ms: LatencySummary::of(&out.latency),
    });
    let churn = plan.churn.as_ref().map(|c| ChurnReport {
        rate_planned: c.rate,
        counts: ConnCounts::from(&t.churn),
        handshake_ms: LatencySummary::of(&out.churn_handshake),
    });
    let server = match (plan.common.server_pid, out.server) {
        (Some(pid), Some(s)) => {
            let connect = s
                .after_connect
                .cpu_us
                .saturating_sub(s.before_connect.cpu_us);
            let measured = s.measure_end.cpu_us.saturating_sub(s.measure_start.cpu_us);
            let rss_growth = s.after_connect.rss_bytes as f64 - s.before_connect.rss_bytes as f64;
            Some(ServerReport {
                pid,
                cpu_us_connect: connect,
                cpu_us_per_connection: per(connect, t.conns.established).unwrap_or(0.0),
                cpu_us_measured: measured,
                cpu_cores_measured: cores(measured),
                cpu_us_per_delivery: per(measured, t.delivered_measured),
                rss_before_bytes: s.before_connect.rss_bytes,
                rss_connected_bytes: s.after_connect.rss_bytes,
                rss_end_bytes: s.measure_end.rss_bytes,
                rss_bytes_per_connection: if t.conns.established > 0 {
                    rss_growth / t.conns.established as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    Report {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        scenario: plan.scenario.into(),
        url: plan.common.url.clone(),
        config: plan.settings.clone(),
        processes: out.processes,
        per_source: out.per_source,
        connections: ConnReport {
            planned: plan.layout.connections,
            rooms: plan.layout.rooms(),
            counts: ConnCounts::from(&t.conns),
            rate_per_s: conn_rate(&t.conns),
            connect_phase_s: out.connect_phase_ns as f64 / 1e9,
            handshake_ms: LatencySummary::of(&out.handshake),
        },
        delivery,
        churn,
        frames: t.frames.clone(),
        errors: t.errors.clone(),
        bad_frames: t.bad_frames,
        server,
        loadgen: LoadgenReport {
            cpu_us_measured: out.loadgen_cpu_measured_us,
            cpu_cores_measured: cores(out.loadgen_cpu_measured_us),
            cpu_us_per_delivery: per(out.loadgen_cpu_measured_us, t.delivered_measured),
            cpu_us_total: out.loadgen_cpu_total_us,
        },
        timeline: out.timeline.clone(),
    }
}

fn latency_row(label: &str, l: &LatencySummary) -> String {
    format!(
        "  {label:<22} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  ({} samples, mean {:.3})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count, l.mean_ms
    )
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as a table for people.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "loadgen {} — {} against {} ({} process{}, {} connections per source address)",
        r.loadgen_version,
        r.scenario,
        r.url,
        r.processes,
        if r.processes == 1 { "" } else { "es" },
        r.per_source
    ));
    line(format!("  config                 {}", r.config));
    let c = &r.connections;
    line(String::new());
    line("connections".into());
    line(format!(
        "  established            {} of {} planned in {} room{} ({} failed, {} dropped later)",
        c.counts.established,
        c.planned,
        c.rooms,
        if c.rooms == 1 { "" } else { "s" },
        c.counts.failed,
        c.counts.dropped
    ));
    line(format!(
        "  failures               {}",
        map_text(&c.counts.failures)
    ));
    line(format!(
        "  rate achieved          {:.1}/s (connect phase {:.2} s)",
        c.rate_per_s, c.connect_phase_s
    ));
    line(latency_row("handshake", &c.handshake_ms));
    if let Some(d) = &r.delivery {
        line(String::new());
        line(format!("delivery (measured {:.2} s)", d.measured_s));
        line(format!(
            "  sent                   {} in window ({:.1}/s), {} in all, {} behind schedule",
            d.sent_measured, d.send_rate_per_s, d.sent, d.unsent
        ));
        line(format!(
            "  delivered              {} in window ({:.1}/s) of {} expected",
            d.delivered_measured, d.deliveries_per_s, d.expected_measured
        ));
        line(format!(
            "  lost / reordered / dup {} / {} / {}  ({} senders judged, {} foreign frames)",
            d.lost, d.reordered, d.duplicates, d.senders_judged, d.foreign
        ));
        line(latency_row("latency", &d.latency_ms));
    }
    if let Some(ch) = &r.churn {
        line(String::new());
        line(format!("churn ({:.1}/s planned)", ch.rate_planned));
        line(format!(
            "  established            {} of {} attempted ({} failed, {} dropped, {} closed)",
            ch.counts.established,
            ch.counts.attempted,
            ch.counts.failed,
            ch.counts.dropped,
            ch.counts.closed
        ));
        line(format!(
            "  failures               {}",
            map_text(&ch.counts.failures)
        ));
        line(latency_row("handshake", &ch.handshake_ms));
    }
    line(String::new());
    line("frames".into());
    line(format!("  error frames           {}", map_text(&r.errors)));
    if r.errors.contains_key("rate_limited") {
        line(
            "  note                   the server rate-limited messages (they count as lost); \
             chatd: raise RATE_LIMIT_MAX_MESSAGES"
                .into(),
        );
    }
    line(format!("  other frames           {}", map_text(&r.frames)));
    line(format!("  malformed frames       {}", r.bad_frames));
    line(String::new());
    line("cpu (2 shared cores: read both lines together)".into());
    if let Some(sv) = &r.server {
        let per_delivery = sv
            .cpu_us_per_delivery
            .map_or("-".into(), |v| format!("{v:.3} µs/delivery"));
        line(format!(
            "  server pid {:<11} {:.1} ms measured ({:.2} cores), {per_delivery}; connect {:.1} ms ({:.1} µs/connection)",
            sv.pid,
            sv.cpu_us_measured as f64 / 1e3,
            sv.cpu_cores_measured,
            sv.cpu_us_connect as f64 / 1e3,
            sv.cpu_us_per_connection
        ));
        line(format!(
            "  server rss             {:.1} MiB before, {:.1} MiB connected, {:.1} MiB at end: {:.0} bytes/connection",
            sv.rss_before_bytes as f64 / 1048576.0,
            sv.rss_connected_bytes as f64 / 1048576.0,
            sv.rss_end_bytes as f64 / 1048576.0,
            sv.rss_bytes_per_connection
        ));
    }
    let l = &r.loadgen;
    let per_delivery = l
        .cpu_us_per_delivery
        .map_or("-".into(), |v| format!("{v:.3} µs/delivery"));
    line(format!(
        "  loadgen                {:.1} ms measured ({:.2} cores), {per_delivery}; {:.1} ms in all",
        l.cpu_us_measured as f64 / 1e3,
        l.cpu_cores_measured,
        l.cpu_us_total as f64 / 1e3
    ));
    let tl = &r.timeline;
    line(String::new());
    line(format!(
        "timeline ({} points every {:.0} s, {} dropped)",
        tl.points.len(),
        tl.interval_s,
        tl.points_dropped
    ));
    if let Some(tr) = &tl.rss_trend {
        line(format!(
            "  server rss trend       {:.1} MiB after warm-up, {:.1} MiB at the end: {:+.2}% (peak {:+.2}%, {:+.0} KiB/min)",
            tr.start_bytes as f64 / 1048576.0,
            tr.end_bytes as f64 / 1048576.0,
            tr.growth_pct,
            tr.peak_growth_pct,
            tr.slope_bytes_per_min / 1024.0
        ));
    }
    if let Some(max) = tl.points.iter().filter_map(|p| p.server_connections).max() {
        line(format!(
            "  server connections     at most {max} ({} failed scrapes)",
            tl.scrape_failures
        ));
    } else if let Some(e) = &tl.last_scrape_error {
        line(format!(
            "  server connections     unknown: {} failed scrapes, last: {e}",
            tl.scrape_failures
        ));
    }
    s
}
