//! Counters of the Postgres side thread, read at scrape time.
//!
//! The side thread is one thread, so its counters are plain relaxed atomics
//! written there and read by whichever core renders `/metrics`; cores only
//! touch `rows_lost` (never in normal operation).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket histogram of atomics, rendered in the Prometheus format.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds of the buckets, ascending.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observed values.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [u64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Renders `name_bucket`, `name_sum` and `name_count`; values are
    /// divided by `scale` (1e6 turns microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Rows per flushed batch.
const SIZE_BOUNDS: &[u64] = &[1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];
/// Flush durations, in microseconds.
const DURATION_BOUNDS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// Everything the Postgres backend counts.
#[derive(Debug)]
pub struct PgStats {
    /// Rows per successful batch INSERT.
    pub flush_rows: AtomicHistogram,
    /// Duration of successful batch INSERTs, microseconds.
    pub flush_us: AtomicHistogram,
    /// Message rows written (a retried row counts once it succeeds).
    pub messages_written: AtomicU64,
    /// Moderation audit rows written to `chat_audit` (a retried row counts once it succeeds).
    pub audit_written: AtomicU64,
    /// Operator changes applied: message deletes and ban changes (`chat_bans`).
    pub operator_written: AtomicU64,
    /// Batch writes that failed (each is retried after a backoff).
    pub write_errors: AtomicU64,
    /// Batch writes that were retries of a failed one.
    pub write_retries: AtomicU64,
    /// Rows Postgres refused as data errors and that were dropped (logged
    /// with their id); a retry could never succeed.
    pub rows_rejected: AtomicU64,
    /// Rows that could not even be queued (the side thread was gone).
    pub rows_lost: AtomicU64,
    /// History reads answered by Postgres.
    pub reads_ok: AtomicU64,
    /// History reads that failed or timed out (answered from memory).
    pub reads_failed: AtomicU64,
    /// History reads not sent because too many were in flight or Postgres
    /// was down (answered from memory).
    pub reads_shed: AtomicU64,
    /// Successful connections (the first one and every reconnect).
    pub connects: AtomicU64,
    /// Failed connection or migration attempts.
    pub connect_errors: AtomicU64,
}

impl Default for PgStats {
    fn default() -> Self {
        PgStats {
            flush_rows: AtomicHistogram::new(SIZE_BOUNDS),
            flush_us: AtomicHistogram::new(DURATION_BOUNDS_US),
            messages_written: AtomicU64::new(0),
            audit_written: AtomicU64::new(0),
            operator_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            rows_rejected: AtomicU64::new(0),
            rows_lost: AtomicU64::new(0),
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            reads_shed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
        }
    }
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl PgStats {
    /// Records a successful batch of `rows` that took `took`.
    pub fn flushed(&self, rows: usize, took: Duration) {
        self.flush_rows.observe(rows as u64);
        self.flush_us.observe(took.as_micros() as u64);
    }

    /// Appends the Prometheus text of these counters plus the buffer gauges.
    pub fn render(&self, out: &mut String, buffered: usize, capacity: usize, up: bool) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            out,
            "chat_pg_up",
            "1 while the Postgres backend is connected and writing.",
            up as u64,
        );
        gauge(
            out,
            "chat_pg_buffered_rows",
            "Rows (messages, audit records) accepted and not yet written to Postgres.",
            buffered as u64,
        );
        gauge(
            out,
            "chat_pg_buffer_capacity_rows",
            "PG_BUFFER_MESSAGES: beyond it new messages are refused with unavailable.",
            capacity as u64,
        );
        self.flush_rows.render(
            out,
            "chat_pg_flush_rows",
            "Rows per batch written to Postgres.",
            1.0,
        );
        self.flush_us.render(
            out,
            "chat_pg_flush_duration_seconds",
            "Duration of one batch INSERT into Postgres.",
            1e6,
        );
        let _ = writeln!(
            out,
            "# HELP chat_pg_rows_written_total Rows written to Postgres, by table.\n# TYPE chat_pg_rows_written_total counter\nchat_pg_rows_written_total{{table=\"messages\"}} {}\nchat_pg_rows_written_total{{table=\"audit\"}} {}\nchat_pg_rows_written_total{{table=\"operator\"}} {}",
            get(&self.messages_written),
            get(&self.audit_written),
            get(&self.operator_written)
        );
        counter(
            out,
            "chat_pg_write_errors_total",
            "Batch writes to Postgres that failed (retried with backoff).",
            get(&self.write_errors),
        );
        counter(
            out,
            "chat_pg_write_retries_total",
            "Batch writes that retried a failed one.",
            get(&self.write_retries),
        );
        counter(
            out,
            "chat_pg_rows_rejected_total",
            "Rows Postgres refused as invalid data, dropped and logged.",
            get(&self.rows_rejected),
        );
        counter(
            out,
            "chat_pg_rows_lost_total",
            "Rows that could not be queued for Postgres (its thread had stopped), logged.",
            get(&self.rows_lost),
        );
        let _ = writeln!(
            out,
            "# HELP chat_pg_reads_total History reads sent to Postgres, by outcome (failed and shed ones are answered from memory).\n# TYPE chat_pg_reads_total counter\nchat_pg_reads_total{{outcome=\"ok\"}} {}\nchat_pg_reads_total{{outcome=\"failed\"}} {}\nchat_pg_reads_total{{outcome=\"shed\"}} {}",
            get(&self.reads_ok),
            get(&self.reads_failed),
            get(&self.reads_shed)
        );
        counter(
            out,
            "chat_pg_connects_total",
            "Successful Postgres connections (first and reconnects).",
            get(&self.connects),
        );
        counter(
            out,
            "chat_pg_connect_errors_total",
            "Failed Postgres connection or migration attempts.",
            get(&self.connect_errors),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = AtomicHistogram::new(&[10, 100]);
        h.observe(1);
        h.observe(10);
        h.observe(50);
        h.observe(1000);
        assert_eq!(h.count(), 4);
        let mut out = String::new();
        h.render(&mut out, "x", "help", 1.0);
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"100\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 1061\nx_count 4\n"), "{out}");
    }

    #[test]
    fn render_names_every_series() {
        let s = PgStats::default();
        s.flushed(120, Duration::from_millis(3));
        bump(&s.write_errors);
        let mut out = String::new();
        s.render(&mut out, 7, 100, true);
        for line in [
            "chat_pg_up 1",
            "chat_pg_buffered_rows 7",
            "chat_pg_buffer_capacity_rows 100",
            "chat_pg_flush_rows_bucket{le=\"250\"} 1",
            "chat_pg_flush_rows_count 1",
            "chat_pg_flush_duration_seconds_bucket{le=\"0.005\"} 1",
            "chat_pg_flush_duration_seconds_bucket{le=\"0.0025\"} 0",
            "chat_pg_write_errors_total 1",
            "chat_pg_rows_written_total{table=\"audit\"} 0",
            "chat_pg_reads_total{outcome=\"shed\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
