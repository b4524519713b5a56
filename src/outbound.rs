//! The bounded outbound queue of one connection, and its slow-consumer policy.
//!
//! Fan-out never waits for a socket: it appends an already-encoded frame here
//! and moves on. The connection's driver drains the queue with one gathered
//! write per wake-up. A client that stops reading cannot grow the queue
//! without bound or hold anyone else up:
//!
//! 1. Above [`TYPING_DROP_FRACTION`] of the byte budget, typing indicators
//!    are dropped (they are stale a second later anyway).
//! 2. A frame that does not fit in the byte budget, or a queue that has made
//!    no progress for the stall timeout, marks the connection as a slow
//!    consumer: the queue is discarded and the connection is closed with
//!    close code [`SLOW_CONSUMER_CLOSE`] (1013, "try again later"). The client
//!    reconnects and recovers what it missed with `join_room` + `since`.
//!
//! Pure logic: time is passed in, so the policy is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::shard::FrameKind;

/// Close code for a client whose queue overflowed or stalled.
pub const SLOW_CONSUMER_CLOSE: u16 = 1013;

/// Typing indicators are dropped once the queue holds more than this share
/// of its byte budget.
pub const TYPING_DROP_FRACTION: usize = 4; // i.e. a quarter

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

/// The queue of frames waiting for one connection's socket.
#[derive(Debug)]
pub struct Outbound {
    /// Frames in send order; each is a complete WebSocket frame, shared with
    /// every other recipient of the same broadcast.
    frames: VecDeque<Bytes>,
    /// Bytes of `frames` plus the unsent part of the frame being written.
    bytes: usize,
    /// Byte budget: beyond it the client is a slow consumer.
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
            bytes: 0,
            max_bytes,
            stall_timeout,
            waiting_since: None,
            front_started: false,
            closed: false,
        }
    }

    /// Appends a frame, applying the slow-consumer policy.
    pub fn push(&mut self, frame: Bytes, kind: FrameKind, now: Instant) -> Push {
        if self.closed {
            return Push::Closed;
        }
        if kind == FrameKind::Typing && self.bytes > self.max_bytes / TYPING_DROP_FRACTION {
            return Push::DroppedTyping;
        }
        if self.bytes + frame.len() > self.max_bytes {
            self.close();
            return Push::Overflow;
        }
        let was_empty = self.frames.is_empty();
        if was_empty && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Push::Queued { was_empty }
    }

    /// Frames waiting, oldest first, for a gathered write.
    pub fn frames(&self) -> &VecDeque<Bytes> {
        &self.frames
    }

    /// Records that `written` bytes from the front of the queue reached the
    /// socket. Fully written frames are removed; a partially written frame is
    /// replaced by its unsent tail.
    pub fn consume(&mut self, mut written: usize, now: Instant) {
        if written > 0 {
            self.waiting_since = Some(now);
        }
        self.bytes -= written.min(self.bytes);
        while written > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.frames.pop_front();
                self.front_started = false;
            } else {
                let _ = front.split_to(written);
                self.front_started = true;
                written = 0;
            }
        }
        if self.frames.is_empty() {
            self.waiting_since = None;
        }
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes waiting.
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
        self.bytes = 0;
        self.waiting_since = None;
        if let Some(tail) = tail {
            self.bytes = tail.len();
            self.frames.push_back(tail);
        }
    }

    /// Keeps what is queued but refuses further frames (a graceful close:
    /// queued frames still go out before the close frame).
    pub fn close_after_queued(&mut self) {
        self.closed = true;
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
}
