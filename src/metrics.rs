//! Per-core metrics, merged only when `/metrics` is scraped.
//!
//! Each core counts into its own plain integers and its own HdrHistogram: no
//! atomics, no shared cache lines on the hot path. A scrape asks every core
//! for a [`CoreSnapshot`] over the mesh, merges them, and renders the
//! Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::moderation::AuditAction;
use crate::protocol::ErrorCode;

/// How a received chat message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Stored and broadcast.
    Accepted,
    /// A repeated `clientMsgId`: acked with the original id, not stored again.
    Duplicate,
    /// Over the user's rate limit.
    RateLimited,
    /// Refused by moderation.
    Blocked,
    /// Refused before routing: not in room, too long, malformed.
    Invalid,
    /// A backend could not take it.
    Unavailable,
}

impl Outcome {
    /// Every outcome, in rendering order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::RateLimited,
        Outcome::Blocked,
        Outcome::Invalid,
        Outcome::Unavailable,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::RateLimited => "rate_limited",
            Outcome::Blocked => "blocked",
            Outcome::Invalid => "invalid",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed or the socket failed.
    Client,
    /// Outbound queue overflowed or stalled.
    SlowConsumer,
    /// No traffic (not even pongs) within the idle timeout.
    Idle,
    /// A WebSocket protocol violation or an oversized frame.
    Protocol,
    /// Server shutdown.
    Shutdown,
    /// The user already had MAX_CONNECTIONS_PER_USER connections open.
    TooManyConnections,
    /// The token's `exp` plus TOKEN_EXPIRY_GRACE_MS passed without a `refresh` (close 4001).
    TokenExpired,
    /// An operator disconnected the user (close code 4002).
    Disconnected,
    /// An operator banned the user (close code 4003).
    Banned,
}

impl CloseReason {
    /// Every reason, in rendering order.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::SlowConsumer,
        CloseReason::Idle,
        CloseReason::Protocol,
        CloseReason::Shutdown,
        CloseReason::TooManyConnections,
        CloseReason::TokenExpired,
        CloseReason::Disconnected,
        CloseReason::Banned,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Idle => "idle",
            CloseReason::Protocol => "protocol",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Disconnected => "operator_disconnect",
            CloseReason::Banned => "banned",
        }
    }
}

/// Rooms whose message counts are exported by name; the rest are summed
/// under `room="_other"`, so a million rooms cannot blow up a scrape.
pub const TOP_ROOMS: usize = 20;

/// Rooms a core keeps a message counter for. Rooms first seen after the map
/// is full are counted in `room_messages_overflow` (rendered in `_other`),
/// so the counters' memory stays bounded however many rooms come and go.
pub const ROOM_COUNTERS: usize = 10_000;

/// How long a merged scrape stays fresh: `/metrics` answers from a snapshot at most this old,
/// so a scraper hammering the route costs every core one snapshot per second, not one per scrape.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// The last merged snapshot of every core, kept by the core that answered the scrape.
#[derive(Debug, Default)]
pub struct MetricsCache {
    /// The merged snapshot and when it was taken; None before the first scrape.
    merged: Option<(Instant, CoreSnapshot)>,
}

impl MetricsCache {
    /// The cached snapshot, if it was taken less than [`SNAPSHOT_MAX_AGE`] before `now`.
    pub fn fresh(&self, now: Instant) -> Option<&CoreSnapshot> {
        match &self.merged {
            Some((at, snapshot)) if now.saturating_duration_since(*at) < SNAPSHOT_MAX_AGE => {
                Some(snapshot)
            }
            _ => None,
        }
    }

    /// Keeps `snapshot`, taken at `taken`, for the next scrapes, unless a
    /// newer one is already kept: two scrapes merging at once on different
    /// cores must not leave the older one behind, or the next scrape's
    /// counters would go backwards (a reset to Prometheus).
    pub fn store(&mut self, taken: Instant, snapshot: CoreSnapshot) {
        if self.merged.as_ref().is_some_and(|(at, _)| *at > taken) {
            return;
        }
        self.merged = Some((taken, snapshot));
    }
}

/// Latency histogram range: 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Counters kept by the runtime's transport (the mesh and the batched
/// sender), which the hub cannot see: read into a core's snapshot only when
/// `/metrics` asks for it, never on the per-frame path.
pub trait TransportCounters {
    /// Writes `mesh_staged`, `mesh_shed`, `send_batches` and `send_batched`.
    fn fill(&self, snapshot: &mut CoreSnapshot);
}

/// Cross-core messages the mesh did not stage, by class (the
/// `chat_mesh_shed_total` series; the rules are in `runtime/mesh.rs`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MeshShed {
    /// Typing and presence frames shed past the staging soft limit: lost
    /// advisory frames, never a chat message.
    pub advisory: u64,
    /// Other messages dropped past the hard limit: non-zero means chat
    /// traffic was lost under overload.
    pub internal: u64,
}

/// One core's counters. Owned by that core; never shared.
#[derive(Debug, Clone)]
pub struct CoreSnapshot {
    /// Open WebSocket connections on this core.
    pub connections: u64,
    /// WebSocket handshakes completed.
    pub connections_opened: u64,
    /// Connections closed, by reason.
    pub connections_closed: HashMap<CloseReason, u64>,
    /// `/ws` requests refused before the upgrade, by HTTP status.
    pub upgrades_refused: HashMap<u16, u64>,
    /// Chat messages received, by outcome.
    pub messages: HashMap<Outcome, u64>,
    /// Frames handed to members' outbound queues.
    pub delivered: u64,
    /// Typing indicators dropped for slow consumers.
    pub typing_dropped: u64,
    /// permessage-deflate: broadcast frames compressed (once per message,
    /// at the room's owner core, whatever the number of recipients).
    pub compressed_frames: u64,
    /// Deliveries of a compressed copy (counted in `delivered` as well).
    pub compressed_deliveries: u64,
    /// Bytes those deliveries saved against the plain copy.
    pub compression_saved_bytes: u64,
    /// Typing frames dropped by their budgets (per connection, or per user
    /// and room at the room's owner).
    pub typing_throttled: u64,
    /// Presence changes broadcast (online, offline).
    pub presence_online: u64,
    /// See `presence_online`.
    pub presence_offline: u64,
    /// Rate-limit logs lent by this core (as users' owner) to the core
    /// holding all of a user's connections (`crate::lease`).
    pub leases_granted: u64,
    /// Messages this core sent to their user's owner to be counted (it
    /// did not hold the user's log): the cross-core hop the lease saves.
    pub publish_forwarded: u64,
    /// Error frames sent, by code.
    pub errors: HashMap<ErrorCode, u64>,
    /// Messages accepted per room owned by this core (at most
    /// [`ROOM_COUNTERS`] rooms).
    pub room_messages: HashMap<Arc<str>, u64>,
    /// Messages accepted in rooms that found the counter map full.
    pub room_messages_overflow: u64,
    /// Messages staged because a cross-core channel was full.
    pub mesh_staged: u64,
    /// Cross-core messages shed or dropped at the staging limits
    /// (`runtime/mesh.rs`): non-zero means traffic was lost under overload.
    pub mesh_shed: MeshShed,
    /// Submissions of the batched writer (one per pass of up to 256 sockets).
    pub send_batches: u64,
    /// Socket writes made by the batched writer.
    pub send_batched: u64,
    /// Audit records written for masked messages.
    pub audit_masked: u64,
    /// Audit records written for blocked messages.
    pub audit_blocked: u64,
    /// Audit records of operator actions, in [`AuditAction::OPERATOR`] order.
    pub audit_operator: [u64; 5],
    /// Microseconds from a message's receipt to its hand-off to the members'
    /// outbound queues, per delivering core.
    pub delivery_latency_us: Histogram<u64>,
}

impl Default for CoreSnapshot {
    fn default() -> Self {
        CoreSnapshot {
            connections: 0,
            connections_opened: 0,
            connections_closed: HashMap::new(),
            upgrades_refused: HashMap::new(),
            messages: HashMap::new(),
            delivered: 0,
            typing_dropped: 0,
            compressed_frames: 0,
            compressed_deliveries: 0,
            compression_saved_bytes: 0,
            typing_throttled: 0,
            presence_online: 0,
            presence_offline: 0,
            leases_granted: 0,
            publish_forwarded: 0,
            errors: HashMap::new(),
            room_messages: HashMap::new(),
            room_messages_overflow: 0,
            mesh_staged: 0,
            mesh_shed: MeshShed::default(),
            send_batches: 0,
            send_batched: 0,
            audit_masked: 0,
            audit_blocked: 0,
            audit_operator: [0; 5],
            delivery_latency_us: new_histogram(),
        }
    }
}

impl CoreSnapshot {
    /// Counts a message outcome.
    pub fn message(&mut self, outcome: Outcome) {
        *self.messages.entry(outcome).or_insert(0) += 1;
    }

    /// Counts an accepted message of `room` (bounded: see [`ROOM_COUNTERS`]).
    pub fn room_message(&mut self, room: &Arc<str>) {
        if let Some(n) = self.room_messages.get_mut(room) {
            *n += 1;
        } else if self.room_messages.len() < ROOM_COUNTERS {
            self.room_messages.insert(room.clone(), 1);
        } else {
            self.room_messages_overflow += 1;
        }
    }

    /// Counts an error frame.
    pub fn error(&mut self, code: ErrorCode) {
        *self.errors.entry(code).or_insert(0) += 1;
    }

    /// Counts a closed connection.
    pub fn closed(&mut self, reason: CloseReason) {
        *self.connections_closed.entry(reason).or_insert(0) += 1;
    }

    /// Records one delivery latency sample.
    pub fn latency(&mut self, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, 60_000_000);
        // Within bounds by construction; a failure would only lose a sample.
        let _ = self.delivery_latency_us.record(us);
    }

    /// Adds another core's snapshot into this one.
    pub fn merge(&mut self, other: &CoreSnapshot) {
        self.connections += other.connections;
        self.connections_opened += other.connections_opened;
        for (k, v) in &other.connections_closed {
            *self.connections_closed.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.upgrades_refused {
            *self.upgrades_refused.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.messages {
            *self.messages.entry(*k).or_insert(0) += v;
        }
        self.delivered += other.delivered;
        self.typing_dropped += other.typing_dropped;
        self.compressed_frames += other.compressed_frames;
        self.compressed_deliveries += other.compressed_deliveries;
        self.compression_saved_bytes += other.compression_saved_bytes;
        self.typing_throttled += other.typing_throttled;
        self.presence_online += other.presence_online;
        self.presence_offline += other.presence_offline;
        self.leases_granted += other.leases_granted;
        self.publish_forwarded += other.publish_forwarded;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.room_messages {
            *self.room_messages.entry(k.clone()).or_insert(0) += v;
        }
        self.room_messages_overflow += other.room_messages_overflow;
        self.mesh_staged += other.mesh_staged;
        self.mesh_shed.advisory += other.mesh_shed.advisory;
        self.mesh_shed.internal += other.mesh_shed.internal;
        self.send_batches += other.send_batches;
        self.send_batched += other.send_batched;
        self.audit_masked += other.audit_masked;
        self.audit_blocked += other.audit_blocked;
        for (mine, theirs) in self.audit_operator.iter_mut().zip(other.audit_operator) {
            *mine += theirs;
        }
        // Same bounds on every core, so adding cannot fail.
        let _ = self.delivery_latency_us.add(&other.delivery_latency_us);
    }

    /// Renders the merged snapshot in the Prometheus text format.
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(4096);
        gauge(
            &mut out,
            "chat_connections",
            "Open WebSocket connections.",
            self.connections,
        );
        counter(
            &mut out,
            "chat_connections_opened_total",
            "WebSocket handshakes completed.",
            self.connections_opened,
        );
        header(
            &mut out,
            "chat_connections_closed_total",
            "Connections closed, by reason.",
            "counter",
        );
        for reason in CloseReason::ALL {
            let v = self.connections_closed.get(&reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "chat_connections_closed_total{{reason=\"{}\"}} {v}",
                reason.as_str()
            );
        }
        header(
            &mut out,
            "chat_upgrades_refused_total",
            "WebSocket upgrade requests refused before the handshake, by HTTP status.",
            "counter",
        );
        let mut statuses: Vec<_> = self.upgrades_refused.iter().collect();
        statuses.sort();
        for (status, v) in statuses {
            let _ = writeln!(
                out,
                "chat_upgrades_refused_total{{status=\"{status}\"}} {v}"
            );
        }
        header(
            &mut out,
            "chat_messages_received_total",
            "Chat messages received, by outcome.",
            "counter",
        );
        for outcome in Outcome::ALL {
            let v = self.messages.get(&outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "chat_messages_received_total{{outcome=\"{}\"}} {v}",
                outcome.as_str()
            );
        }
        header(
            &mut out,
            "chat_messages_delivered_total",
            "Frames handed to recipients' outbound queues, by outcome.",
            "counter",
        );
        let _ = writeln!(
            out,
            "chat_messages_delivered_total{{outcome=\"queued\"}} {}",
            self.delivered
        );
        let _ = writeln!(
            out,
            "chat_messages_delivered_total{{outcome=\"typing_dropped\"}} {}",
            self.typing_dropped
        );
        for (name, help, value) in [
            (
                "chat_ws_compressed_frames_total",
                "Broadcast frames compressed with permessage-deflate (once per message for all recipients).",
                self.compressed_frames,
            ),
            (
                "chat_ws_compressed_deliveries_total",
                "Deliveries of a compressed broadcast frame (also counted in chat_messages_delivered_total).",
                self.compressed_deliveries,
            ),
            (
                "chat_ws_compression_saved_bytes_total",
                "Bytes the compressed deliveries saved against the uncompressed frame.",
                self.compression_saved_bytes,
            ),
        ] {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "chat_typing_throttled_total",
            "Typing frames dropped by the typing budget (TYPING_FRAMES_PER_SEC).",
            "counter",
        );
        let _ = writeln!(out, "chat_typing_throttled_total {}", self.typing_throttled);
        header(
            &mut out,
            "chat_presence_updates_total",
            "Presence changes broadcast, by status.",
            "counter",
        );
        let _ = writeln!(
            out,
            "chat_presence_updates_total{{status=\"online\"}} {}",
            self.presence_online
        );
        let _ = writeln!(
            out,
            "chat_presence_updates_total{{status=\"offline\"}} {}",
            self.presence_offline
        );
        header(
            &mut out,
            "chat_rate_limit_leases_total",
            "Rate-limit logs lent to the core holding all of a user's connections.",
            "counter",
        );
        let _ = writeln!(out, "chat_rate_limit_leases_total {}", self.leases_granted);
        header(
            &mut out,
            "chat_publish_forwarded_total",
            "Messages sent to their user's owner core to be counted (no lease held).",
            "counter",
        );
        let _ = writeln!(
            out,
            "chat_publish_forwarded_total {}",
            self.publish_forwarded
        );
        header(
            &mut out,
            "chat_errors_total",
            "Error frames sent, by code.",
            "counter",
        );
        for code in ErrorCode::ALL {
            let v = self.errors.get(&code).copied().unwrap_or(0);
            let _ = writeln!(out, "chat_errors_total{{code=\"{}\"}} {v}", code.as_str());
        }
        header(
            &mut out,
            "chat_room_messages_total",
            "Messages accepted per room: the busiest rooms by name, the rest as _other.",
            "counter",
        );
        let mut rooms: Vec<_> = self.room_messages.iter().collect();
        rooms.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let other: u64 = rooms.iter().skip(TOP_ROOMS).map(|(_, v)| **v).sum::<u64>()
            + self.room_messages_overflow;
        for (room, v) in rooms.iter().take(TOP_ROOMS) {
            let _ = writeln!(
                out,
                "chat_room_messages_total{{room=\"{}\"}} {v}",
                escape_label(room)
            );
        }
        if rooms.len() > TOP_ROOMS || self.room_messages_overflow > 0 {
            let _ = writeln!(out, "chat_room_messages_total{{room=\"_other\"}} {other}");
        }
        counter(
            &mut out,
            "chat_mesh_staged_total",
            "Cross-core messages that waited because a core's channel was full.",
            self.mesh_staged,
        );
        header(
            &mut out,
            "chat_mesh_shed_total",
            "Cross-core messages not staged behind a full channel: advisory (typing, presence) past the soft limit, internal past the hard limit.",
            "counter",
        );
        let _ = writeln!(
            out,
            "chat_mesh_shed_total{{class=\"advisory\"}} {}",
            self.mesh_shed.advisory
        );
        let _ = writeln!(
            out,
            "chat_mesh_shed_total{{class=\"internal\"}} {}",
            self.mesh_shed.internal
        );
        counter(
            &mut out,
            "chat_send_batches_total",
            "Submissions of the batched writer: one io_uring_enter for a pass's sockets.",
            self.send_batches,
        );
        counter(
            &mut out,
            "chat_send_batched_total",
            "Socket writes made by the batched writer (divide by the batches for the batch size).",
            self.send_batched,
        );
        header(
            &mut out,
            "chat_audit_records_total",
            "Audit records written (moderation and operator actions), by action.",
            "counter",
        );
        let _ = writeln!(
            out,
            "chat_audit_records_total{{action=\"masked\"}} {}",
            self.audit_masked
        );
        let _ = writeln!(
            out,
            "chat_audit_records_total{{action=\"blocked\"}} {}",
            self.audit_blocked
        );
        for (action, n) in AuditAction::OPERATOR.iter().zip(self.audit_operator) {
            let _ = writeln!(
                out,
                "chat_audit_records_total{{action=\"{}\"}} {n}",
                action.as_str()
            );
        }
        self.render_latency(&mut out);
        out.push_str(extra);
        out
    }

    fn render_latency(&self, out: &mut String) {
        const BUCKETS_US: [u64; 14] = [
            50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
            1_000_000, 5_000_000,
        ];
        let name = "chat_delivery_latency_seconds";
        header(
            out,
            name,
            "Time from a message's receipt to its hand-off to recipients' outbound queues.",
            "histogram",
        );
        let h = &self.delivery_latency_us;
        for bound in BUCKETS_US {
            let count = h.count_between(0, bound);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {count}",
                bound as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
        let sum_us: f64 = h
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
        let _ = writeln!(out, "{name}_count {}", h.len());
    }
}

/// Escapes a label value (room ids are restricted, but be safe).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_merge_never_replaces_a_newer_one() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut cache = MetricsCache::default();
        let at = |n| CoreSnapshot {
            connections: n,
            ..Default::default()
        };
        cache.store(t0 + ms(20), at(2));
        // A merge that began earlier finishes later: it is not kept.
        cache.store(t0 + ms(10), at(1));
        assert_eq!(cache.fresh(t0 + ms(30)).map(|s| s.connections), Some(2));
        cache.store(t0 + ms(40), at(3));
        assert_eq!(cache.fresh(t0 + ms(50)).map(|s| s.connections), Some(3));
    }

    #[test]
    fn the_merged_snapshot_is_reused_for_one_second() {
        let t0 = Instant::now();
        let mut cache = MetricsCache::default();
        assert!(
            cache.fresh(t0).is_none(),
            "nothing cached before the first scrape"
        );
        let snapshot = CoreSnapshot {
            connections: 7,
            ..Default::default()
        };
        cache.store(t0, snapshot);
        let ms = Duration::from_millis;
        assert_eq!(cache.fresh(t0 + ms(999)).map(|s| s.connections), Some(7));
        assert!(
            cache.fresh(t0 + ms(1_000)).is_none(),
            "1 s old: ask the cores again"
        );
        cache.store(
            t0 + ms(1_000),
            CoreSnapshot {
                connections: 9,
                ..Default::default()
            },
        );
        assert_eq!(cache.fresh(t0 + ms(1_500)).map(|s| s.connections), Some(9));
    }

    #[test]
    fn mesh_shedding_is_merged_and_rendered_by_class() {
        let mut a = CoreSnapshot {
            mesh_shed: MeshShed {
                advisory: 3,
                internal: 0,
            },
            ..Default::default()
        };
        let b = CoreSnapshot {
            mesh_shed: MeshShed {
                advisory: 2,
                internal: 1,
            },
            ..Default::default()
        };
        a.merge(&b);
        let text = a.render("");
        assert!(
            text.contains("chat_mesh_shed_total{class=\"advisory\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("chat_mesh_shed_total{class=\"internal\"} 1\n"));
        assert!(text.contains("# TYPE chat_mesh_shed_total counter\n"));
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = CoreSnapshot {
            connections: 3,
            ..Default::default()
        };
        a.message(Outcome::Accepted);
        a.latency(Duration::from_micros(100));
        let mut b = CoreSnapshot {
            connections: 4,
            ..Default::default()
        };
        b.message(Outcome::Accepted);
        b.message(Outcome::RateLimited);
        b.latency(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.connections, 7);
        assert_eq!(a.messages[&Outcome::Accepted], 2);
        assert_eq!(a.messages[&Outcome::RateLimited], 1);
        assert_eq!(a.delivery_latency_us.len(), 2);
        let text = a.render("");
        assert!(text.contains("chat_connections 7\n"), "{text}");
        assert!(text.contains("chat_messages_received_total{outcome=\"accepted\"} 2\n"));
        assert!(
            text.contains("chat_delivery_latency_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("chat_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("chat_delivery_latency_seconds_count 2\n"));
    }

    #[test]
    fn room_counters_are_bounded() {
        let mut s = CoreSnapshot::default();
        for i in 0..ROOM_COUNTERS + 3 {
            s.room_message(&Arc::from(format!("r{i}")));
        }
        s.room_message(&Arc::from("r0"));
        assert_eq!(s.room_messages.len(), ROOM_COUNTERS);
        assert_eq!(s.room_messages[&Arc::from("r0")], 2);
        assert_eq!(s.room_messages_overflow, 3);
        let text = s.render("");
        // 10,000 rooms with one message each: 20 named, 9,980 + 3 in _other.
        assert!(
            text.contains("chat_room_messages_total{room=\"_other\"} 9983\n"),
            "{text}"
        );
    }

    #[test]
    fn room_series_are_bounded() {
        let mut s = CoreSnapshot::default();
        for i in 0..(TOP_ROOMS as u64 + 5) {
            s.room_messages.insert(Arc::from(format!("r{i}")), i + 1);
        }
        let text = s.render("");
        let lines = text
            .lines()
            .filter(|l| l.starts_with("chat_room_messages_total{"))
            .count();
        assert_eq!(lines, TOP_ROOMS + 1);
        // The five quietest rooms (1..=5 messages) are summed into _other.
        assert!(
            text.contains("chat_room_messages_total{room=\"_other\"} 15\n"),
            "{text}"
        );
        assert!(text.contains("chat_room_messages_total{room=\"r24\"} 25\n"));
    }
}
