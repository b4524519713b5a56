//! What the parent tells a worker process, and what workers report back.
//!
//! The parent writes a `Job` as the first JSON line of the worker's stdin, then `Control`
//! lines; the worker writes `Event` lines on stdout. Every connection of the run has a
//! global id; the layout (room, sender or not) and the source address are pure functions
//! of that id, so each worker derives its share from `(worker, workers)` alone and any
//! receiver knows which senders its room has, in whatever process they live.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::seqtrack::SenderWindow;
use crate::stats::Tally;
use crate::target::Target;

/// How connections are grouped into rooms and which of them send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Number of long-lived connections, ids `0..connections`.
    pub connections: u32,
    /// Connections per room: connection `id` is in room `id / room_size`.
    pub room_size: u32,
    /// The first `senders_per_room` members of each room send.
    pub senders_per_room: u32,
    /// Tag in room names (`<prefix><tag><n>`), one per scenario, so scenarios run against
    /// the same server do not share rooms.
    pub room_tag: String,
}

impl Layout {
    /// Room of connection `id`.
    pub fn room_of(&self, id: u32) -> u32 {
        id / self.room_size
    }

    /// Whether connection `id` sends.
    pub fn is_sender(&self, id: u32) -> bool {
        id < self.connections && id % self.room_size < self.senders_per_room
    }

    /// Connection ids of the senders of `room`.
    pub fn senders_of_room(&self, room: u32) -> Range<u32> {
        let start = room * self.room_size;
        start..(start + self.senders_per_room.min(self.room_size)).min(self.connections)
    }

    /// Number of rooms (the last one may be partial).
    pub fn rooms(&self) -> u32 {
        self.connections.div_ceil(self.room_size)
    }
}

/// Name of room number `n`.
pub fn room_name(prefix: &str, tag: &str, n: u32) -> String {
    format!("{prefix}{tag}{n}")
}

/// Ids of worker `worker` of `workers` among `0..total`: round-robin, so every worker gets
/// the same share of senders and of the connect schedule.
pub fn ids_of_worker(total: u32, worker: u32, workers: u32) -> impl Iterator<Item = u32> {
    (worker..total).step_by(workers as usize)
}

/// Offset in ns of event number `index` of a schedule running at `rate` per second.
pub fn schedule_offset_ns(index: u64, rate: f64) -> u64 {
    (index as f64 * 1e9 / rate) as u64
}

/// How a sender paces its messages.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SendMode {
    /// Open loop at a fixed rate per sender. A sender that falls behind schedule stamps
    /// messages with their due time, so a server that makes senders wait shows up in the
    /// latency (no coordinated omission); see `session::rate_loop`.
    Rate {
        /// Messages per second per sender.
        per_sender_hz: f64,
    },
    /// As fast as the server takes them, with at most `window` messages not yet echoed
    /// back to the sender; each message carries its actual send time.
    Window {
        /// Most messages in flight.
        window: u32,
    },
}

/// The message traffic of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficPlan {
    /// Pacing of each sender.
    pub mode: SendMode,
    /// Content size in bytes.
    pub size: usize,
    /// Pad content with words instead of dots (`--text-padding`).
    #[serde(default)]
    pub words: bool,
}

/// Short-lived connections opened and closed while traffic runs (`churn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnPlan {
    /// New connections per second, all workers together.
    pub rate: f64,
    /// How long each stays open after `room_joined`, ns.
    pub hold_ns: u64,
    /// Number of rooms they spread over (never the traffic rooms).
    pub rooms: u32,
    /// Id of churn connection 0; ids continue the layout's, so user ids never clash.
    pub first_id: u32,
}

/// Lengths of the phases after all connections are up, ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Traffic that runs but is not measured.
    pub warmup_ns: u64,
    /// The measured interval.
    pub duration_ns: u64,
    /// Time in-flight messages get: receivers read this long after the end, and messages
    /// sent in the last `grace` of the measurement are not judged lost.
    pub grace_ns: u64,
}

/// Absolute `CLOCK_MONOTONIC` times of the phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// Senders start (warm-up begins).
    pub start: u64,
    /// Measurement begins.
    pub measure: u64,
    /// Measurement ends; senders stop.
    pub end: u64,
    /// Messages sent from here on are not judged lost.
    pub cutoff: u64,
    /// Receivers stop reading and connections are closed.
    pub stop: u64,
}

impl Timeline {
    /// The phases of a run whose traffic starts at `start`.
    pub fn at(&self, start: u64) -> Phases {
        let measure = start + self.warmup_ns;
        let end = measure + self.duration_ns;
        Phases {
            start,
            measure,
            end,
            cutoff: end.saturating_sub(self.grace_ns).max(measure),
            stop: end + self.grace_ns,
        }
    }
}

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobAuth {
    /// Mint HS256 tokens for user `<user_prefix><id>`.
    Secret {
        /// HS256 secret (travels on stdin, never on the command line).
        secret: String,
        /// Prefix of user ids.
        user_prefix: String,
    },
    /// Tokens from `--tokens-file`.
    Tokens {
        /// Token of this worker's `i`-th connection (connection id `worker + i * workers`).
        conns: Vec<String>,
        /// Tokens this worker's churn connections cycle through.
        churn: Vec<String>,
    },
}

/// Connection parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectPlan {
    /// New connections per second, all workers together.
    pub rate: f64,
    /// Limit for TCP connect + upgrade + `room_joined`, ns.
    pub timeout_ns: u64,
    /// Connections per source address (see `srcaddr`).
    pub per_source: u32,
    /// Offer permessage-deflate and inflate compressed server frames (`inflate.rs`).
    #[serde(default)]
    pub deflate: bool,
}

/// Everything a worker needs to play its part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Scenario name, for messages.
    pub scenario: String,
    /// Random id of this run, carried in content.
    pub run_id: u32,
    /// Index of this worker.
    pub worker: u32,
    /// Number of workers.
    pub workers: u32,
    /// The server.
    pub target: Target,
    /// Credentials.
    pub auth: JobAuth,
    /// Prefix of room names.
    pub room_prefix: String,
    /// Rooms and roles.
    pub layout: Layout,
    /// Connection parameters.
    pub connect: ConnectPlan,
    /// Message traffic, if the scenario sends.
    pub traffic: Option<TrafficPlan>,
    /// Churn connections, if any.
    pub churn: Option<ChurnPlan>,
    /// Phase lengths.
    pub timeline: Timeline,
    /// `CLOCK_MONOTONIC` ns at which the worker exits whatever happens.
    pub deadline_ns: u64,
}

/// Parent to worker, one JSON line each, after the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Control {
    /// Start connecting; connection `id` is due at `t0_ns + id / rate`.
    Connect {
        /// Schedule origin, `CLOCK_MONOTONIC` ns.
        t0_ns: u64,
    },
    /// Start traffic at `start_ns` (all workers at once).
    Go {
        /// `CLOCK_MONOTONIC` ns.
        start_ns: u64,
    },
    /// The judged window of every sender of the run.
    Cutoffs {
        /// One per sender that sent.
        windows: Vec<SenderWindow>,
    },
}

/// A worker's counters and histograms so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Counters.
    pub tally: Tally,
    /// Handshake latency of the long-lived connections (µs histogram, V2 base64).
    pub handshake: String,
    /// Delivery latency of measured messages (µs histogram, V2 base64).
    pub latency: String,
}

/// A worker's final report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Final counters and histograms.
    pub snap: Snapshot,
    /// Handshake latency of churn connections started in the measured interval.
    pub churn_handshake: String,
    /// The worker's CPU time during the measured interval, µs.
    pub cpu_measured_us: u64,
}

/// Worker to parent, one JSON line each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The job was read; waiting for `Connect`.
    Prepared,
    /// Once a second.
    Progress {
        /// Counters so far.
        snap: Snapshot,
    },
    /// Every connection of the worker was attempted and settled.
    Connected {
        /// Counters so far.
        snap: Snapshot,
    },
    /// Senders stopped; their judged windows.
    Sent {
        /// One per sender of this worker that sent.
        windows: Vec<SenderWindow>,
    },
    /// Final report; the worker exits next.
    Done {
        /// The report.
        result: Box<WorkerResult>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(connections: u32, room_size: u32, senders: u32) -> Layout {
        Layout {
            connections,
            room_size,
            senders_per_room: senders,
            room_tag: "r".into(),
        }
    }

    #[test]
    fn layout_maps_ids_to_rooms_and_roles() {
        let l = layout(250, 100, 2);
        assert_eq!(l.rooms(), 3);
        assert_eq!(l.room_of(0), 0);
        assert_eq!(l.room_of(199), 1);
        assert!(l.is_sender(0) && l.is_sender(1) && !l.is_sender(2));
        assert!(l.is_sender(201) && !l.is_sender(250));
        assert_eq!(l.senders_of_room(2), 200..202);
        assert_eq!(room_name("lg-", "r", 2), "lg-r2");
    }

    #[test]
    fn workers_share_ids_round_robin() {
        let w0: Vec<u32> = ids_of_worker(7, 0, 3).collect();
        let w1: Vec<u32> = ids_of_worker(7, 1, 3).collect();
        let w2: Vec<u32> = ids_of_worker(7, 2, 3).collect();
        assert_eq!(w0, vec![0, 3, 6]);
        assert_eq!(w1, vec![1, 4]);
        assert_eq!(w2, vec![2, 5]);
    }

    #[test]
    fn phases_follow_the_timeline() {
        let t = Timeline {
            warmup_ns: 2,
            duration_ns: 10,
            grace_ns: 3,
        };
        let p = t.at(100);
        assert_eq!(
            (p.start, p.measure, p.end, p.cutoff, p.stop),
            (100, 102, 112, 109, 115)
        );
        // A grace longer than the measurement never moves the cutoff before it.
        let t = Timeline { grace_ns: 50, ..t };
        assert_eq!(t.at(100).cutoff, 102);
        assert_eq!(schedule_offset_ns(3, 2.0), 1_500_000_000);
    }

    #[test]
    fn pipe_messages_round_trip() {
        let c = Control::Go { start_ns: 42 };
        let line = serde_json::to_string(&c).unwrap();
        assert_eq!(line, r#"{"cmd":"go","start_ns":42}"#);
        assert_eq!(serde_json::from_str::<Control>(&line).unwrap(), c);
        let e = Event::Sent {
            windows: vec![SenderWindow {
                sender: 3,
                first: 10,
                cutoff: 90,
            }],
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with(r#"{"ev":"sent""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
