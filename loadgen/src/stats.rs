//! Counters and latency histograms, and how workers' copies merge into one.
//!
//! Each worker process keeps its own `Tally` and histograms; they cross the pipe to the
//! parent as JSON, histograms serialized with HdrHistogram's V2 format (base64), so the
//! merged histogram is exactly the histogram of all samples, not an average of
//! percentiles.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, µs (1 hour); larger values are clamped to it.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram (0.1% value resolution).
pub const HIST_DIGITS: u8 = 3;

/// An empty latency histogram in µs.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_DIGITS).expect("valid histogram bounds")
}

/// Records a duration given in nanoseconds, as µs (at least 1, at most `HIST_MAX_US`).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1_000).clamp(1, HIST_MAX_US));
}

/// V2-serializes `h` and base64-encodes it for a JSON line.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::with_capacity(256);
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing a histogram into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Inverse of `encode_hist`.
pub fn decode_hist(text: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("histogram base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .context("histogram V2 data")
}

/// Adds every sample of the histogram encoded in `text` into `into`.
pub fn merge_encoded(into: &mut Histogram<u64>, text: &str) -> Result<()> {
    let h = decode_hist(text)?;
    into.add(&h).context("merging histograms")?;
    Ok(())
}

/// Percentiles of a histogram in milliseconds, for reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample, ms.
    pub min_ms: f64,
    /// Arithmetic mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarizes a µs histogram; all zeros when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Connections of one kind (the main set, or churn) and how they ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnTally {
    /// Connection attempts started (TCP connect issued).
    pub attempted: u64,
    /// Attempts that got `room_joined`.
    pub established: u64,
    /// Attempts that did not; `failures` says why.
    pub failed: u64,
    /// Failed attempts by kind (`refused`, `timeout`, `http_401`, `closed`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Established connections closed by the server or the network before loadgen
    /// closed them.
    pub dropped: u64,
    /// Established connections loadgen closed itself (churn, or the end of the run).
    pub closed: u64,
    /// `CLOCK_MONOTONIC` ns of the first attempt (0: none); merged by minimum.
    pub first_attempt_ns: u64,
    /// `CLOCK_MONOTONIC` ns of the last `room_joined` (0: none); merged by maximum.
    pub last_established_ns: u64,
}

impl ConnTally {
    /// Counts a failed attempt of `kind`.
    pub fn fail(&mut self, kind: &str) {
        self.failed += 1;
        bump(&mut self.failures, kind);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ConnTally) {
        self.attempted += other.attempted;
        self.established += other.established;
        self.failed += other.failed;
        merge_map(&mut self.failures, &other.failures);
        self.dropped += other.dropped;
        self.closed += other.closed;
        self.first_attempt_ns = match (self.first_attempt_ns, other.first_attempt_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_established_ns = self.last_established_ns.max(other.last_established_ns);
    }
}

/// Everything a worker counts; the parent adds workers' tallies together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// The scenario's long-lived connections.
    pub conns: ConnTally,
    /// Short-lived connections of the `churn` scenario.
    pub churn: ConnTally,
    /// Messages written by senders, warm-up included.
    pub sent: u64,
    /// Messages whose send time falls in the measured interval.
    pub sent_measured: u64,
    /// Messages a rate-driven sender was scheduled to send but could not before the end
    /// (the server did not take them fast enough).
    pub unsent: u64,
    /// This run's messages received, by all receivers, warm-up included.
    pub delivered: u64,
    /// Deliveries of messages sent in the measured interval: the latency samples.
    pub delivered_measured: u64,
    /// Measured deliveries that arrived after a later message of the same sender.
    pub reordered: u64,
    /// Measured deliveries of a sequence number the receiver already had.
    pub duplicates: u64,
    /// Messages sent in the judged window that a connected receiver never got.
    pub lost: u64,
    /// `message` frames that were not this run's (other clients, other runs).
    pub foreign: u64,
    /// Frames other than `message`, by `type` (`room_joined`, `presence`, ...).
    pub frames: BTreeMap<String, u64>,
    /// `error` frames by `code` (`rate_limited`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Frames that were not JSON text with a `type` (binary, malformed).
    pub bad_frames: u64,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        self.conns.merge(&other.conns);
        self.churn.merge(&other.churn);
        self.sent += other.sent;
        self.sent_measured += other.sent_measured;
        self.unsent += other.unsent;
        self.delivered += other.delivered;
        self.delivered_measured += other.delivered_measured;
        self.reordered += other.reordered;
        self.duplicates += other.duplicates;
        self.lost += other.lost;
        self.foreign += other.foreign;
        merge_map(&mut self.frames, &other.frames);
        merge_map(&mut self.errors, &other.errors);
        self.bad_frames += other.bad_frames;
    }

    /// Total `error` frames.
    pub fn error_frames(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Increments `map[key]`, allocating the key only the first time.
pub fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_exactly_across_serialization() {
        // Two "workers" record disjoint halves of 1..=10_000 µs.
        let mut a = new_hist();
        let mut b = new_hist();
        let mut all = new_hist();
        for v in 1..=10_000u64 {
            let h = if v % 2 == 0 { &mut a } else { &mut b };
            h.record(v).unwrap();
            all.record(v).unwrap();
        }
        let mut merged = new_hist();
        merge_encoded(&mut merged, &encode_hist(&a)).unwrap();
        merge_encoded(&mut merged, &encode_hist(&b)).unwrap();
        assert_eq!(merged.len(), 10_000);
        assert_eq!(merged, all);
        assert_eq!(merged.value_at_quantile(0.99), all.value_at_quantile(0.99));
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.min(), 1);
    }

    #[test]
    fn record_ns_clamps_and_converts() {
        let mut h = new_hist();
        record_ns(&mut h, 10); // below 1 µs
        record_ns(&mut h, 2_500_000); // 2.5 ms
        record_ns(&mut h, u64::MAX); // absurd: clamped
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 1);
        assert!(h.equivalent(h.value_at_quantile(0.5), 2_500));
        assert!(h.max() >= HIST_MAX_US);
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..=1000 ms
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{}", s.p50_ms);
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{}", s.p99_ms);
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{}", s.max_ms);
        assert_eq!(LatencySummary::of(&new_hist()), LatencySummary::default());
    }

    #[test]
    fn tallies_add_up() {
        let mut a = Tally::default();
        a.conns.attempted = 3;
        a.conns.fail("refused");
        a.conns.first_attempt_ns = 500;
        bump(&mut a.errors, "rate_limited");
        let mut b = Tally::default();
        b.conns.attempted = 2;
        b.conns.fail("refused");
        b.conns.fail("http_401");
        b.conns.first_attempt_ns = 200;
        b.conns.last_established_ns = 900;
        bump(&mut b.errors, "rate_limited");
        b.delivered = 7;
        a.merge(&b);
        assert_eq!(a.conns.attempted, 5);
        assert_eq!(a.conns.failed, 3);
        assert_eq!(a.conns.failures["refused"], 2);
        assert_eq!(a.conns.failures["http_401"], 1);
        assert_eq!(a.conns.first_attempt_ns, 200);
        assert_eq!(a.conns.last_established_ns, 900);
        assert_eq!(a.errors["rate_limited"], 2);
        assert_eq!(a.error_frames(), 2);
        assert_eq!(a.delivered, 7);
    }
}
