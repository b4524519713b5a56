//! Counters of the Redis backend, rendered into `/metrics`.
//!
//! Most are written by the Redis thread, a few by cores on rare paths
//! (refusals, fallbacks), so they are relaxed atomics shared through an
//! `Arc`, read at scrape time; none is touched per delivered frame.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::shard::FrameKind;

/// Upper bounds of the batch size buckets (entries or messages per batch).
const SIZE_BUCKETS: [u64; 9] = [1, 2, 5, 10, 50, 100, 500, 1000, 5000];
/// Upper bounds of the batch duration buckets, in microseconds.
const DURATION_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// A fixed-bucket histogram of relaxed atomics.
#[derive(Debug)]
struct Histogram {
    /// Bucket upper bounds (inclusive), in the recorded unit.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); one more for +Inf.
    buckets: Vec<AtomicU64>,
    /// Sum of the observations.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn record(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Renders the series `name{labels,le=...}`; `scale` divides bounds and
    /// the sum (1e6 turns microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *bound as f64 / scale
            );
        }
        cumulative += self.buckets[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum.load(Relaxed) as f64 / scale
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Frame kinds counted separately (message, typing, presence).
fn kind_index(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Message => 0,
        FrameKind::Typing => 1,
        FrameKind::Presence => 2,
    }
}

const KIND_NAMES: [&str; 3] = ["message", "typing", "presence"];

/// What a batch carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Presence writes.
    Presence,
    /// Messages sequenced and published.
    Messages,
}

/// The Redis backend's counters.
#[derive(Debug)]
pub struct RedisMetrics {
    /// Entries per presence flush.
    presence_size: Histogram,
    /// Duration of presence flushes (µs).
    presence_duration: Histogram,
    /// Messages per sequencing pipeline.
    message_size: Histogram,
    /// Duration of sequencing pipelines (µs).
    message_duration: Histogram,
    /// Frames published, by kind.
    published: [AtomicU64; 3],
    /// Frames received from other instances, by kind.
    received: [AtomicU64; 3],
    /// Failed Redis operations.
    pub errors: AtomicU64,
    /// Successful reconnections after an outage.
    pub reconnects: AtomicU64,
    /// Messages refused with `unavailable` because the command queue was full.
    pub dropped_messages: AtomicU64,
    /// Presence changes that did not fit the command queue (repaired by a
    /// resync of the cores' state).
    pub dropped_presence: AtomicU64,
    /// Presence changes waiting to be written (gauge, set by the thread).
    pub buffered: AtomicU64,
    /// Times the pending presence changes overflowed REDIS_BUFFER and were
    /// replaced by a full rewrite.
    pub overflows: AtomicU64,
    /// Messages sequenced locally because Redis was down.
    pub local_fallback: AtomicU64,
    /// Published messages whose copy never came back on the subscription.
    pub echo_lost: AtomicU64,
    /// Set by a core that could not queue a presence change: the Redis
    /// thread then asks every core for its state.
    pub resync: AtomicBool,
}

impl Default for RedisMetrics {
    fn default() -> Self {
        RedisMetrics {
            presence_size: Histogram::new(&SIZE_BUCKETS),
            presence_duration: Histogram::new(&DURATION_BUCKETS_US),
            message_size: Histogram::new(&SIZE_BUCKETS),
            message_duration: Histogram::new(&DURATION_BUCKETS_US),
            published: Default::default(),
            received: Default::default(),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            dropped_presence: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            local_fallback: AtomicU64::new(0),
            echo_lost: AtomicU64::new(0),
            resync: AtomicBool::new(false),
        }
    }
}

impl RedisMetrics {
    /// Records one batch written to Redis.
    pub fn batch(&self, batch: Batch, size: usize, took: Duration) {
        let (s, d) = match batch {
            Batch::Presence => (&self.presence_size, &self.presence_duration),
            Batch::Messages => (&self.message_size, &self.message_duration),
        };
        s.record(size as u64);
        d.record(took.as_micros() as u64);
    }

    /// Counts frames published.
    pub fn published(&self, kind: FrameKind, n: u64) {
        self.published[kind_index(kind)].fetch_add(n, Relaxed);
    }

    /// Counts a frame received from another instance.
    pub fn received(&self, kind: FrameKind) {
        self.received[kind_index(kind)].fetch_add(1, Relaxed);
    }

    /// Counts one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Frames published so far of `kind` (tests).
    pub fn published_count(&self, kind: FrameKind) -> u64 {
        self.published[kind_index(kind)].load(Relaxed)
    }

    /// Renders every series; `queued` is the command queue's length now.
    pub fn render(&self, queued: usize) -> String {
        let mut out = String::with_capacity(4096);
        let header = |out: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let name = "chat_redis_batch_size";
        header(
            &mut out,
            name,
            "Entries per Redis batch: presence changes per flush, messages per sequencing pipeline.",
            "histogram",
        );
        self.presence_size
            .render(&mut out, name, "kind=\"presence\"", 1.0);
        self.message_size
            .render(&mut out, name, "kind=\"messages\"", 1.0);
        let name = "chat_redis_batch_duration_seconds";
        header(
            &mut out,
            name,
            "Duration of Redis batches (presence flushes, sequencing pipelines).",
            "histogram",
        );
        self.presence_duration
            .render(&mut out, name, "kind=\"presence\"", 1e6);
        self.message_duration
            .render(&mut out, name, "kind=\"messages\"", 1e6);
        for (name, help, values) in [
            (
                "chat_redis_published_total",
                "Frames published on Redis room channels, by kind.",
                &self.published,
            ),
            (
                "chat_redis_received_total",
                "Frames received from other instances on Redis room channels, by kind.",
                &self.received,
            ),
        ] {
            header(&mut out, name, help, "counter");
            for (i, kind) in KIND_NAMES.iter().enumerate() {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", values[i].load(Relaxed));
            }
        }
        let name = "chat_redis_dropped_total";
        header(
            &mut out,
            name,
            "Work the Redis command queue could not take: messages (refused with unavailable) and presence changes (repaired by a resync).",
            "counter",
        );
        let _ = writeln!(
            out,
            "{name}{{kind=\"message\"}} {}",
            self.dropped_messages.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{kind=\"presence\"}} {}",
            self.dropped_presence.load(Relaxed)
        );
        for (name, help, kind, v) in [
            (
                "chat_redis_errors_total",
                "Failed Redis operations.",
                "counter",
                self.errors.load(Relaxed),
            ),
            (
                "chat_redis_reconnects_total",
                "Reconnections to Redis after an outage.",
                "counter",
                self.reconnects.load(Relaxed),
            ),
            (
                "chat_redis_buffered",
                "Presence changes waiting to be written to Redis.",
                "gauge",
                self.buffered.load(Relaxed),
            ),
            (
                "chat_redis_queued_commands",
                "Commands waiting for the Redis thread.",
                "gauge",
                queued as u64,
            ),
            (
                "chat_redis_buffer_overflows_total",
                "Times pending presence changes exceeded REDIS_BUFFER and were replaced by a full rewrite.",
                "counter",
                self.overflows.load(Relaxed),
            ),
            (
                "chat_redis_local_fallback_total",
                "Messages sequenced and delivered within this instance because Redis was down.",
                "counter",
                self.local_fallback.load(Relaxed),
            ),
            (
                "chat_redis_echo_lost_total",
                "Messages published to Redis whose copy never came back on the subscription.",
                "counter",
                self.echo_lost.load(Relaxed),
            ),
        ] {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = RedisMetrics::default();
        m.batch(Batch::Presence, 3, Duration::from_micros(300));
        m.batch(Batch::Presence, 7000, Duration::from_secs(2));
        m.published(FrameKind::Typing, 2);
        m.received(FrameKind::Message);
        RedisMetrics::inc(&m.dropped_messages);
        let text = m.render(4);
        for line in [
            "chat_redis_batch_size_bucket{kind=\"presence\",le=\"2\"} 0",
            "chat_redis_batch_size_bucket{kind=\"presence\",le=\"5\"} 1",
            "chat_redis_batch_size_bucket{kind=\"presence\",le=\"+Inf\"} 2",
            "chat_redis_batch_size_sum{kind=\"presence\"} 7003",
            "chat_redis_batch_size_count{kind=\"messages\"} 0",
            "chat_redis_batch_duration_seconds_bucket{kind=\"presence\",le=\"0.0005\"} 1",
            "chat_redis_batch_duration_seconds_sum{kind=\"presence\"} 2.0003",
            "chat_redis_published_total{kind=\"typing\"} 2",
            "chat_redis_received_total{kind=\"message\"} 1",
            "chat_redis_dropped_total{kind=\"message\"} 1",
            "chat_redis_queued_commands 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
