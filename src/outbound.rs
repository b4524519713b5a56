//! The bounded outbound queue of one connection, and its slow-consumer policy.
//!
//! Fan-out never waits for a socket: it appends an already-encoded frame here
//! and moves on. The connection's driver drains the queue with one gathered
//! write per wake-up. A client that stops reading cannot grow the queue
//! without bound or hold anyone else up:
//!
//! 1. Above [`TYPING_DROP_FRACTION`] of the byte budget, typing indicators
//!    are dropped (they are stale a second later anyway).
//! 2. A live frame that does not fit in the byte budget, or a queue that has
//!    made no progress for the stall timeout, marks the connection as a slow
//!    consumer: the queue is discarded and the connection is closed with
//!    close code [`SLOW_CONSUMER_CLOSE`] (1013, "try again later"). The client
//!    reconnects and recovers what it missed with `join_room` + `since`.
//! 3. **A lone frame is always admitted**: a live frame arriving while no
//!    live bytes are queued is taken whatever its size, so one frame larger
//!    than the budget (with OUTBOUND_QUEUE_BYTES at its 65552 minimum, a
//!    full 64 KiB client frame comes back a few hundred bytes bigger, with
//!    ids, names and a timestamp added) never closes the connection by
//!    itself. Memory stays bounded: live bytes are at most the budget or
//!    one frame, whichever is larger.
//!
//! **Recovery replays are paced, not budgeted.** A `since` replay (up to
//! 1,000 messages of any size) is kept as a backlog of message payloads that
//! are encoded and moved into the send queue only while the send queue holds
//! less than [`REPLAY_LOW_WATER_FRACTION`] of the budget (or is empty): each
//! write the client takes tops the queue up again (`consume`). Replay bytes
//! do not count against the live budget, so a replay is never dropped and
//! never closes the connection; the client's own reading paces it.
//!
//! Ordering: once a backlog exists, every later live frame is appended to
//! the backlog behind it (still counted against the live budget), so the
//! replay reaches the client before anything that arrived after it, and a
//! truly slow consumer still overflows its live budget and is closed.
//!
//! Pure logic: time is passed in, so the policy is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::shard::FrameKind;
use crate::ws;

/// Close code for a client whose queue overflowed or stalled.
pub const SLOW_CONSUMER_CLOSE: u16 = 1013;

/// Typing indicators are dropped once the queue holds more than this share
/// of its byte budget.
pub const TYPING_DROP_FRACTION: usize = 4; // i.e. a quarter

/// Replay frames are moved into the send queue while it holds less than this
/// share of the byte budget: enough to keep the socket busy between two
/// writes, small enough that live frames queued behind a replay still have
/// most of the budget.
pub const REPLAY_LOW_WATER_FRACTION: usize = 4; // i.e. a quarter

/// Most replay messages one connection's backlog holds (four full 1,000
/// message replays: joins of several rooms with `since` at once). A replay
/// that would go beyond it is cut to its newest messages by the caller
/// (`recovered:false`, the client pages the rest), so repeated joins cannot
/// grow a connection's memory without bound.
pub const MAX_REPLAY_QUEUED: usize = 4_000;

/// What [`Outbound::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the driver must be woken if the queue was empty.
    Queued { was_empty: bool },
    /// A typing indicator dropped because the queue is filling up.
    DroppedTyping,
    /// The queue is over budget: the connection must close as a slow consumer.
    Overflow,
    /// The connection is already closing; the frame was discarded.
    Closed,
}

/// A frame waiting behind a replay, not yet in the send queue.
#[derive(Debug)]
enum Waiting {
    /// A replayed message's JSON payload, framed when it is moved to the
    /// send queue (shared with the history until then).
    Replay(Bytes),
    /// A complete live frame (counted in the live budget already).
    Live(Bytes),
}

/// The queue of frames waiting for one connection's socket.
#[derive(Debug)]
pub struct Outbound {
    /// Frames in send order; each is a complete WebSocket frame, shared with
    /// every other recipient of the same broadcast.
    frames: VecDeque<Bytes>,
    /// Frames removed from the front of `frames` so far: with it a frame's
    /// position in `frames` is a number that does not change as the front
    /// moves.
    popped: u64,
    /// Positions (see `popped`) of the replay frames in `frames` (not
    /// counted in `live_bytes`), oldest first. Kept apart from `frames`, and
    /// empty outside a replay, so queueing a live frame writes one buffer:
    /// at chat rates each push touches a queue no other push touched
    /// recently, and a second buffer was a second cache miss per delivery
    /// (`perf` on `loadgen fanout --rooms 100 --members 50`, BENCHMARKS.md).
    replay_at: VecDeque<u64>,
    /// Bytes of `frames` plus the unsent part of the frame being written.
    bytes: usize,
    /// Live (non-replay) bytes waiting, in `frames` and in `backlog`: what
    /// the byte budget limits.
    live_bytes: usize,
    /// Frames behind a replay, in send order: replay payloads and the live
    /// frames that arrived after them. Bounded by [`MAX_REPLAY_QUEUED`]
    /// replay entries and by the live budget for the rest.
    backlog: VecDeque<Waiting>,
    /// Replay entries in `backlog`.
    backlog_replay: usize,
    /// Byte budget of live frames: beyond it the client is a slow consumer.
    max_bytes: usize,
    /// How long the queue may stay non-empty without any byte written.
    stall_timeout: Duration,
    /// When the driver last wrote anything, or when the queue became
    /// non-empty, whichever is later; `None` while empty.
    waiting_since: Option<Instant>,
    /// True when the front frame was partly written: it must be finished
    /// before anything else (a close frame) goes out, or the client's
    /// parser would see a torn frame.
    front_started: bool,
    /// Set once the queue overflowed or the connection started closing.
    closed: bool,
}

impl Outbound {
    /// An empty queue. Allocates nothing until the first frame.
    pub fn new(max_bytes: usize, stall_timeout: Duration) -> Outbound {
        Outbound {
            frames: VecDeque::new(),
            popped: 0,
            replay_at: VecDeque::new(),
            bytes: 0,
            live_bytes: 0,
            backlog: VecDeque::new(),
            backlog_replay: 0,
            max_bytes,
            stall_timeout,
            waiting_since: None,
            front_started: false,
            closed: false,
        }
    }

    /// Appends a live frame, applying the slow-consumer policy.
    pub fn push(&mut self, frame: Bytes, kind: FrameKind, now: Instant) -> Push {
        if self.closed {
            return Push::Closed;
        }
        if kind == FrameKind::Typing && self.live_bytes > self.max_bytes / TYPING_DROP_FRACTION {
            return Push::DroppedTyping;
        }
        // A lone frame is admitted whatever its size (module doc, rule 3).
        if self.live_bytes > 0 && self.live_bytes + frame.len() > self.max_bytes {
            self.close();
            return Push::Overflow;
        }
        self.live_bytes += frame.len();
        if !self.backlog.is_empty() {
            // Behind the replay; the send queue is not empty (a backlog is
            // only kept behind queued frames), so nobody needs waking.
            self.backlog.push_back(Waiting::Live(frame));
            return Push::Queued { was_empty: false };
        }
        let was_empty = self.frames.is_empty();
        self.enqueue(frame, false, now);
        Push::Queued { was_empty }
    }

    /// Appends a replay (JSON payloads of `message` frames, oldest first)
    /// behind everything queued so far. It is framed and sent as the client
    /// reads; the caller keeps it within [`Outbound::replay_room`].
    pub fn push_replay(&mut self, payloads: Vec<Bytes>, now: Instant) -> Push {
        if self.closed {
            return Push::Closed;
        }
        let was_empty = self.frames.is_empty();
        self.backlog_replay += payloads.len();
        self.backlog
            .extend(payloads.into_iter().map(Waiting::Replay));
        self.top_up(now);
        Push::Queued { was_empty }
    }

    /// How many more replay messages the backlog takes.
    pub fn replay_room(&self) -> usize {
        MAX_REPLAY_QUEUED.saturating_sub(self.backlog_replay)
    }

    /// Replay messages not yet moved into the send queue.
    pub fn replay_waiting(&self) -> usize {
        self.backlog_replay
    }

    /// Bytes a new live frame may have without overflowing the budget (an
    /// answer is cut to fit it); the whole budget while nothing live waits.
    pub fn live_room(&self) -> usize {
        self.max_bytes.saturating_sub(self.live_bytes)
    }

    /// Live bytes waiting (what the budget counts).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Appends a frame to the send queue.
    fn enqueue(&mut self, frame: Bytes, replay: bool, now: Instant) {
        if self.frames.is_empty() && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.bytes += frame.len();
        if replay {
            self.replay_at
                .push_back(self.popped + self.frames.len() as u64);
        }
        self.frames.push_back(frame);
    }

    /// Moves frames from the backlog into the send queue while it is below
    /// the low-water mark (or empty, so a replay frame bigger than the mark
    /// still goes out).
    fn top_up(&mut self, now: Instant) {
        let low_water = self.max_bytes / REPLAY_LOW_WATER_FRACTION;
        while !self.closed && (self.frames.is_empty() || self.bytes < low_water) {
            match self.backlog.pop_front() {
                Some(Waiting::Replay(payload)) => {
                    self.backlog_replay -= 1;
                    self.enqueue(Bytes::from(ws::encode_text(&payload)), true, now);
                }
                Some(Waiting::Live(frame)) => self.enqueue(frame, false, now),
                None => break,
            }
        }
    }

    /// Frames waiting, oldest first, for a gathered write.
    pub fn frames(&self) -> &VecDeque<Bytes> {
        &self.frames
    }

    /// Records that `written` bytes from the front of the queue reached the
    /// socket. Fully written frames are removed; a partially written frame is
    /// replaced by its unsent tail. Then tops the queue up from the backlog.
    pub fn consume(&mut self, mut written: usize, now: Instant) {
        if written > 0 {
            self.waiting_since = Some(now);
        }
        self.bytes -= written.min(self.bytes);
        while written > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            let n = written.min(front.len());
            let replay = self.replay_at.front() == Some(&self.popped);
            if !replay {
                self.live_bytes -= n.min(self.live_bytes);
            }
            if n == front.len() {
                self.frames.pop_front();
                self.popped += 1;
                if replay {
                    self.replay_at.pop_front();
                }
                self.front_started = false;
            } else {
                let _ = front.split_to(n);
                self.front_started = true;
            }
            written -= n;
        }
        self.top_up(now);
        if self.frames.is_empty() {
            self.waiting_since = None;
        }
    }

    /// True when nothing is waiting (a backlog is only kept behind queued
    /// frames, so an empty send queue means an empty backlog).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes in the send queue.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when frames have waited longer than the stall timeout without a
    /// byte written: the client is not reading.
    pub fn stalled(&self, now: Instant) -> bool {
        match self.waiting_since {
            Some(since) => now.saturating_duration_since(since) > self.stall_timeout,
            None => false,
        }
    }

    /// Discards everything but the unsent tail of a partly written frame,
    /// and refuses further frames.
    pub fn close(&mut self) {
        self.closed = true;
        let tail = if self.front_started {
            self.frames.pop_front()
        } else {
            None
        };
        self.frames = VecDeque::new();
        self.replay_at = VecDeque::new();
        self.drop_backlog();
        self.bytes = 0;
        self.live_bytes = 0;
        self.waiting_since = None;
        if let Some(tail) = tail {
            self.bytes = tail.len();
            self.frames.push_back(tail);
        }
    }

    /// Keeps what is in the send queue but refuses further frames (a
    /// graceful close: queued frames still go out before the close frame).
    /// The backlog is dropped: it would have to follow the close frame.
    pub fn close_after_queued(&mut self) {
        self.closed = true;
        self.drop_backlog();
    }

    fn drop_backlog(&mut self) {
        self.backlog = VecDeque::new();
        self.backlog_replay = 0;
    }

    /// Appends the connection's last frame (the close frame), even when
    /// closed.
    pub fn push_final(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    #[test]
    fn queues_until_budget_then_overflows() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        assert_eq!(
            q.push(frame(400), FrameKind::Message, now),
            Push::Queued { was_empty: true }
        );
        assert_eq!(
            q.push(frame(400), FrameKind::Message, now),
            Push::Queued { was_empty: false }
        );
        assert_eq!(q.bytes(), 800);
        assert_eq!(q.push(frame(201), FrameKind::Message, now), Push::Overflow);
        assert!(q.is_closed());
        assert!(
            q.is_empty(),
            "nothing was partly written, so nothing is kept"
        );
        assert_eq!(q.push(frame(1), FrameKind::Message, now), Push::Closed);
    }

    #[test]
    fn exactly_the_budget_fits() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        assert_eq!(
            q.push(frame(1000), FrameKind::Presence, now),
            Push::Queued { was_empty: true }
        );
        assert_eq!(q.bytes(), 1000);
    }

    #[test]
    fn typing_dropped_above_a_quarter() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        assert_eq!(
            q.push(frame(250), FrameKind::Message, now),
            Push::Queued { was_empty: true }
        );
        // At exactly a quarter typing still goes through.
        assert_eq!(
            q.push(frame(10), FrameKind::Typing, now),
            Push::Queued { was_empty: false }
        );
        // Now above a quarter: typing dropped, messages still queued.
        assert_eq!(
            q.push(frame(10), FrameKind::Typing, now),
            Push::DroppedTyping
        );
        assert_eq!(
            q.push(frame(10), FrameKind::Message, now),
            Push::Queued { was_empty: false }
        );
        assert_eq!(q.frames().len(), 3);
    }

    #[test]
    fn consume_handles_partial_writes() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push(Bytes::from_static(b"abcdef"), FrameKind::Message, now);
        q.push(Bytes::from_static(b"ghij"), FrameKind::Message, now);
        q.consume(4, now);
        assert_eq!(q.frames()[0], Bytes::from_static(b"ef"));
        assert_eq!(q.bytes(), 6);
        q.consume(3, now);
        assert_eq!(q.frames().len(), 1);
        assert_eq!(q.frames()[0], Bytes::from_static(b"hij"));
        q.consume(3, now);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn close_keeps_the_tail_of_a_partly_written_frame() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push(Bytes::from_static(b"abcdef"), FrameKind::Message, now);
        q.push(Bytes::from_static(b"ghij"), FrameKind::Message, now);
        q.consume(2, now);
        q.close();
        assert_eq!(q.frames().len(), 1);
        assert_eq!(q.frames()[0], Bytes::from_static(b"cdef"));
        assert_eq!(q.bytes(), 4);
        q.push_final(Bytes::from_static(b"CLOSE"));
        assert_eq!(q.frames().len(), 2);
        assert_eq!(q.push(frame(1), FrameKind::Message, now), Push::Closed);
    }

    #[test]
    fn stall_detected_only_without_progress() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(10);
        let mut q = Outbound::new(1000, stall);
        assert!(
            !q.stalled(t0 + Duration::from_secs(100)),
            "empty queue never stalls"
        );
        q.push(frame(10), FrameKind::Message, t0);
        assert!(!q.stalled(t0 + Duration::from_secs(10)));
        assert!(q.stalled(t0 + Duration::from_secs(11)));
        // Progress resets the clock.
        q.push(frame(10), FrameKind::Message, t0);
        q.consume(10, t0 + Duration::from_secs(9));
        assert!(!q.stalled(t0 + Duration::from_secs(18)));
        assert!(q.stalled(t0 + Duration::from_secs(20)));
        q.consume(10, t0 + Duration::from_secs(20));
        assert!(!q.stalled(t0 + Duration::from_secs(60)));
    }

    /// The JSON payload of a replayed message, `len` bytes, tagged `tag`.
    fn payload(tag: u8, len: usize) -> Bytes {
        let mut v = vec![b'p'; len];
        v[0] = tag;
        Bytes::from(v)
    }

    /// Drains the queue as a client reading `chunk` bytes per write would,
    /// returning the frames in the order they left (decoded back to their
    /// payloads' first byte for replay frames, whole for live ones).
    fn drain(q: &mut Outbound, chunk: usize, now: Instant) -> Vec<Vec<u8>> {
        let mut wire = Vec::new();
        let mut guard = 0;
        while !q.is_empty() {
            let front = q.frames()[0].clone();
            let n = chunk.min(front.len());
            wire.extend_from_slice(&front[..n]);
            q.consume(n, now);
            guard += 1;
            assert!(guard < 1_000_000, "queue never drained");
        }
        split_frames(&wire)
    }

    /// Splits unmasked server frames (as `ws::encode_text` makes them, or
    /// raw test frames starting with `x`/`L`) back into payloads.
    fn split_frames(mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            if wire[0] != 0x81 {
                // A raw test frame: up to the next frame start or the end.
                let end = wire[1..]
                    .iter()
                    .position(|&b| b == 0x81)
                    .map_or(wire.len(), |p| p + 1);
                out.push(wire[..end].to_vec());
                wire = &wire[end..];
                continue;
            }
            let (len, header) = match wire[1] & 0x7f {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push(wire[header..header + len].to_vec());
            wire = &wire[header + len..];
        }
        out
    }

    #[test]
    fn replay_is_moved_in_below_the_low_water_mark_as_the_client_reads() {
        let now = Instant::now();
        // Low water: 250 bytes. Each replay frame is 304 bytes.
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        let payloads: Vec<Bytes> = (0..10).map(|i| payload(b'a' + i, 300)).collect();
        assert_eq!(
            q.push_replay(payloads, now),
            Push::Queued { was_empty: true }
        );
        assert_eq!(q.frames().len(), 1, "one frame reaches the mark");
        assert_eq!(q.replay_waiting(), 9);
        assert_eq!(q.live_bytes(), 0, "replay bytes are not budgeted");
        assert_eq!(q.replay_room(), MAX_REPLAY_QUEUED - 9);
        // A partial write keeps the queue above the mark: nothing moves.
        q.consume(10, now);
        assert_eq!(q.replay_waiting(), 9);
        // The rest of the frame: the next one moves in.
        q.consume(294, now);
        assert_eq!(q.frames().len(), 1);
        assert_eq!(q.replay_waiting(), 8);
        let got = drain(&mut q, 7, now);
        let tags: Vec<u8> = got.iter().map(|p| p[0]).collect();
        assert_eq!(tags, (b'b'..=b'j').collect::<Vec<u8>>());
        assert!(got.iter().all(|p| p.len() == 300));
        assert_eq!(q.replay_waiting(), 0);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_replay_far_larger_than_the_budget_completes() {
        let now = Instant::now();
        // 1,000 frames of 6 KB against a 64 KiB budget: 90x the budget.
        let mut q = Outbound::new(64 * 1024, Duration::from_secs(10));
        let payloads: Vec<Bytes> = (0..1000).map(|i| payload((i % 200) as u8, 6000)).collect();
        q.push_replay(payloads, now);
        assert!(
            q.bytes() < 64 * 1024 / 4 + 6010,
            "only about the mark is framed"
        );
        let got = drain(&mut q, 100_000, now);
        assert_eq!(got.len(), 1000);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p[0], (i % 200) as u8);
        }
        assert!(!q.is_closed());
    }

    #[test]
    fn a_replay_frame_bigger_than_the_budget_goes_out_alone() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push_replay(vec![payload(b'A', 5000), payload(b'B', 10)], now);
        assert_eq!(q.frames().len(), 1);
        assert_eq!(q.bytes(), 5004);
        // Live frames still have the whole budget behind it.
        assert_eq!(q.live_room(), 1000);
        assert_eq!(
            q.push(frame(900), FrameKind::Message, now),
            Push::Queued { was_empty: false }
        );
        let got = drain(&mut q, 4096, now);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0][0], got[0].len()), (b'A', 5000));
        assert_eq!((got[1][0], got[1].len()), (b'B', 10));
        assert_eq!(got[2], vec![b'x'; 900]);
    }

    #[test]
    fn a_lone_live_frame_bigger_than_the_budget_is_admitted() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        assert_eq!(
            q.push(frame(3000), FrameKind::Message, now),
            Push::Queued { was_empty: true }
        );
        // Not alone any more: the budget applies.
        assert_eq!(q.push(frame(1), FrameKind::Message, now), Push::Overflow);
    }

    #[test]
    fn live_frames_wait_behind_the_replay_in_order() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        // Queued before the replay: goes first.
        q.push(Bytes::from(ws::encode_text(b"L0")), FrameKind::Message, now);
        q.push_replay((0..5).map(|i| payload(b'0' + i, 300)).collect(), now);
        // Arrive during the replay: go after all of it, even though the send
        // queue has room for them right now.
        for live in [&b"L1"[..], b"L2"] {
            assert_eq!(
                q.push(Bytes::from(ws::encode_text(live)), FrameKind::Message, now),
                Push::Queued { was_empty: false }
            );
        }
        assert_eq!(q.live_bytes(), 12, "three 4-byte live frames");
        let got = drain(&mut q, 50, now);
        let heads: Vec<Vec<u8>> = got
            .iter()
            .map(|p| if p[0] == b'L' { p.clone() } else { vec![p[0]] })
            .collect();
        assert_eq!(
            heads,
            vec![
                b"L0".to_vec(),
                b"0".to_vec(),
                b"1".to_vec(),
                b"2".to_vec(),
                b"3".to_vec(),
                b"4".to_vec(),
                b"L1".to_vec(),
                b"L2".to_vec()
            ]
        );
        assert_eq!(q.live_bytes(), 0);
    }

    #[test]
    fn live_frames_behind_a_replay_still_overflow_a_slow_consumer() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push_replay((0..50).map(|i| payload(i, 300)).collect(), now);
        for _ in 0..2 {
            assert!(matches!(
                q.push(frame(400), FrameKind::Message, now),
                Push::Queued { .. }
            ));
        }
        assert_eq!(q.live_room(), 200);
        assert_eq!(q.push(frame(201), FrameKind::Message, now), Push::Overflow);
        assert!(q.is_closed());
        assert_eq!(q.replay_waiting(), 0, "the backlog went with the queue");
        assert_eq!(q.push_replay(vec![payload(1, 1)], now), Push::Closed);
    }

    #[test]
    fn a_graceful_close_drops_the_backlog_but_keeps_the_send_queue() {
        let now = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push_replay((0..5).map(|i| payload(b'0' + i, 300)).collect(), now);
        q.close_after_queued();
        q.push_final(Bytes::from_static(b"CLOSE"));
        let got = drain(&mut q, 1000, now);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][0], b'0');
        assert_eq!(got[1], b"CLOSE".to_vec());
    }

    #[test]
    fn a_replay_that_waits_unread_stalls() {
        let t0 = Instant::now();
        let mut q = Outbound::new(1000, Duration::from_secs(10));
        q.push_replay((0..5).map(|i| payload(i, 300)).collect(), t0);
        assert!(!q.stalled(t0 + Duration::from_secs(10)));
        assert!(q.stalled(t0 + Duration::from_secs(11)));
        // Reading resets the clock, and the topped-up frame waits from then.
        q.consume(304, t0 + Duration::from_secs(11));
        assert!(!q.stalled(t0 + Duration::from_secs(21)));
        assert!(q.stalled(t0 + Duration::from_secs(22)));
    }
}
