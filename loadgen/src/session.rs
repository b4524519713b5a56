//! The life of one connection inside a worker: connect, read every frame, send if it is
//! a sender, judge losses, close.
//!
//! Every connection is one task on the worker's single-threaded runtime, reading its socket
//! continuously so the kernel buffers never fill up on our side. A sender gets a second
//! task for writing: a server that stops reading while it writes to us must not make us
//! stop reading too, or both sides would wait for each other.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::mono_ns;
use crate::conn::{self, Ws};
use crate::content::{self, Stamp};
use crate::frame::{self, MessageFrames};
use crate::job::{room_name, schedule_offset_ns, Phases, SendMode};
use crate::seqtrack::{Arrival, SenderWindow, SeqTrack};
use crate::srcaddr::source_for;
use crate::stats::{bump, record_ns};
use crate::worker::{Ctx, Phase};

/// How long closing a connection may take before it is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most frames a sender writes before flushing (and yielding to other tasks).
const MAX_BATCH: u32 = 256;
/// How early a rate-driven sender may send a message: one tick of the runtime's timer.
const EARLY_NS: u64 = 1_000_000;
/// How late a rate-driven sender may be and still count as on schedule.
const ON_SCHEDULE_NS: u64 = 2_000_000;

/// What a received frame meant to the connection that read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The echo of one of this connection's own messages.
    OwnEcho,
    /// An `error` frame (it answers one of our messages, e.g. `rate_limited`).
    Error,
    /// Anything else.
    Other,
}

/// Receive-side state of one connection: one sequence tracker per sender heard from.
struct Receiver {
    /// This connection's id.
    id: u32,
    /// Trackers by sender id; a room has few senders, so a vector beats a map.
    tracks: Vec<(u32, SeqTrack)>,
}

impl Receiver {
    fn new(id: u32) -> Self {
        Receiver {
            id,
            tracks: Vec::new(),
        }
    }

    fn track(&mut self, sender: u32) -> &mut SeqTrack {
        let idx = match self.tracks.iter().position(|(s, _)| *s == sender) {
            Some(i) => i,
            None => {
                self.tracks.push((sender, SeqTrack::default()));
                self.tracks.len() - 1
            }
        };
        &mut self.tracks[idx].1
    }

    /// Accounts for one text frame received at `now_ns`.
    fn on_text(&mut self, ctx: &Ctx, text: &str, now_ns: u64) -> Seen {
        let mut tally = ctx.tally.borrow_mut();
        let Some(f) = frame::parse(text) else {
            tally.bad_frames += 1;
            return Seen::Other;
        };
        match f.kind.as_ref() {
            "message" => {
                let stamp = f.content.as_deref().and_then(content::decode);
                let Some(stamp) = stamp.filter(|s| s.run == ctx.job.run_id) else {
                    tally.foreign += 1;
                    return Seen::Other;
                };
                let arrival = self.track(stamp.sender).on_seq(stamp.seq);
                let measured = ctx
                    .phases
                    .get()
                    .is_some_and(|p| stamp.sent_ns >= p.measure && stamp.sent_ns < p.end);
                if arrival == Arrival::Duplicate {
                    // Not a delivery: the receiver already had this message.
                    tally.duplicates += u64::from(measured);
                } else {
                    tally.delivered += 1;
                    if measured {
                        tally.delivered_measured += 1;
                        tally.reordered += u64::from(arrival == Arrival::Reordered);
                        record_ns(
                            &mut ctx.latency.borrow_mut(),
                            now_ns.saturating_sub(stamp.sent_ns),
                        );
                    }
                }
                if stamp.sender == self.id {
                    Seen::OwnEcho
                } else {
                    Seen::Other
                }
            }
            "error" => {
                bump(&mut tally.errors, f.code.as_deref().unwrap_or("(no code)"));
                Seen::Error
            }
            kind => {
                bump(&mut tally.frames, kind);
                Seen::Other
            }
        }
    }

    /// Adds this receiver's losses: every sender of its room that reported a judged
    /// window, including senders it never heard from at all.
    fn account_losses(&mut self, ctx: &Ctx, room: u32) {
        let cutoffs = ctx.cutoffs.borrow();
        let mut lost = 0;
        for sender in ctx.job.layout.senders_of_room(room) {
            if let Some(window) = cutoffs.get(&sender) {
                lost += self.track(sender).lost(window);
            }
        }
        ctx.tally.borrow_mut().lost += lost;
    }
}

/// How a read loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The worker is stopping (or the churn hold time is over): close politely.
    Stop,
    /// The server or the network closed the connection.
    Dropped,
}

/// Connects long-lived connection `id` (the `index`-th of this worker) and runs it to
/// the end of the run.
pub async fn member(ctx: Rc<Ctx>, id: u32, index: usize) {
    let job = &ctx.job;
    let room = job.layout.room_of(id);
    let room_id = room_name(&job.room_prefix, &job.layout.room_tag, room);
    let sender = job.traffic.is_some() && job.layout.is_sender(id);
    let opened = {
        let token = ctx.member_token(id, index);
        let url = job.target.connect_url(&token, &room_id);
        let src = source_for(job.target.addr.ip(), u64::from(id), job.connect.per_source);
        let started = mono_ns();
        {
            let mut t = ctx.tally.borrow_mut();
            t.conns.attempted += 1;
            if t.conns.first_attempt_ns == 0 || started < t.conns.first_attempt_ns {
                t.conns.first_attempt_ns = started;
            }
        }
        let timeout = Duration::from_nanos(job.connect.timeout_ns);
        let deflate = job.connect.deflate;
        conn::open(
            job.target.addr,
            src,
            &url,
            conn::ws_config(sender),
            timeout,
            deflate,
        )
        .await
    };
    let opened = match opened {
        Ok(o) => {
            let mut t = ctx.tally.borrow_mut();
            t.conns.established += 1;
            t.conns.last_established_ns = t.conns.last_established_ns.max(mono_ns());
            record_ns(&mut ctx.handshake.borrow_mut(), o.handshake_ns);
            bump(&mut t.frames, "room_joined");
            if o.early_frames > 0 {
                *t.frames.entry("before_room_joined".into()).or_insert(0) +=
                    u64::from(o.early_frames);
            }
            drop(t);
            ctx.settle();
            o
        }
        Err(kind) => {
            ctx.tally.borrow_mut().conns.fail(&kind);
            ctx.settle();
            return;
        }
    };
    let mut rx = Receiver::new(id);
    let (sink, mut stream) = opened.ws.split();
    let send_state = Rc::new(SendState::default());
    // A sender's sink moves to its write task; a receiver's stays parked here.
    let mut parked = Some(sink);
    let writer = if sender {
        let frames = MessageFrames::new(&room_id);
        parked.take().map(|sink| {
            ctx.writers.set(ctx.writers.get() + 1);
            let task = write_loop(ctx.clone(), sink, id, frames, send_state.clone());
            tokio::task::spawn_local(task)
        })
    } else {
        None
    };
    let end = read_loop(&ctx, &mut rx, &mut stream, &send_state, None).await;
    send_state.closed.set(true);
    send_state.wake.notify_one();
    if end == ReadEnd::Dropped {
        ctx.tally.borrow_mut().conns.dropped += 1;
        return;
    }
    rx.account_losses(&ctx, room);
    let sink = match writer {
        Some(handle) => handle.await.ok().flatten(),
        None => parked,
    };
    if let Some(ws) = sink.and_then(|sink| stream.reunite(sink).ok()) {
        close(ws).await;
    }
    ctx.tally.borrow_mut().conns.closed += 1;
}

/// Opens churn connection number `k` (id `id`), keeps it for the churn hold time and
/// closes it.
pub async fn churner(ctx: Rc<Ctx>, k: u64, id: u32) {
    let job = &ctx.job;
    let Some(churn) = job.churn.as_ref() else {
        return;
    };
    let Some(phases) = ctx.phases.get() else {
        return;
    };
    let room_id = room_name(&job.room_prefix, "x", (k % u64::from(churn.rooms)) as u32);
    let token = ctx.churn_token(id, k);
    let url = job.target.connect_url(&token, &room_id);
    let src = source_for(job.target.addr.ip(), u64::from(id), job.connect.per_source);
    let started = mono_ns();
    ctx.tally.borrow_mut().churn.attempted += 1;
    let timeout = Duration::from_nanos(job.connect.timeout_ns);
    let deflate = job.connect.deflate;
    let opened = conn::open(
        job.target.addr,
        src,
        &url,
        conn::ws_config(false),
        timeout,
        deflate,
    )
    .await;
    let opened = match opened {
        Ok(o) => o,
        Err(kind) => {
            ctx.tally.borrow_mut().churn.fail(&kind);
            return;
        }
    };
    {
        let mut t = ctx.tally.borrow_mut();
        t.churn.established += 1;
        bump(&mut t.frames, "room_joined");
    }
    if started >= phases.measure && started < phases.end {
        record_ns(&mut ctx.churn_handshake.borrow_mut(), opened.handshake_ns);
    }
    let mut rx = Receiver::new(id);
    let (sink, mut stream) = opened.ws.split();
    let state = Rc::new(SendState::default());
    let until = (mono_ns() + churn.hold_ns).min(phases.stop);
    let end = read_loop(&ctx, &mut rx, &mut stream, &state, Some(until)).await;
    if end == ReadEnd::Dropped {
        ctx.tally.borrow_mut().churn.dropped += 1;
        return;
    }
    if let Ok(ws) = stream.reunite(sink) {
        close(ws).await;
    }
    ctx.tally.borrow_mut().churn.closed += 1;
}

/// Sender-side state shared by a connection's read and write tasks.
#[derive(Default)]
struct SendState {
    /// Messages written but not yet echoed back (or refused with an `error`).
    inflight: Cell<u64>,
    /// Wakes the writer when `inflight` drops or the connection closes.
    wake: Notify,
    /// Set when the read side ended: the writer must stop.
    closed: Cell<bool>,
}

/// Reads frames until the worker stops (or `until`, CLOCK_MONOTONIC ns), or the
/// connection drops.
async fn read_loop(
    ctx: &Ctx,
    rx: &mut Receiver,
    stream: &mut SplitStream<Ws>,
    send: &SendState,
    until: Option<u64>,
) -> ReadEnd {
    let mut phase = ctx.phase.subscribe();
    // Both futures live across iterations: re-creating them per frame would register
    // and unregister a waiter (and a timer) for every message received.
    let stop = phase.wait_for(|p| *p == Phase::Stopping);
    tokio::pin!(stop);
    let deadline =
        tokio::time::sleep_until(ctx.anchor.instant(until.unwrap_or(ctx.job.deadline_ns)));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => {
                let seen = match msg {
                    Some(Ok(Message::Text(text))) => rx.on_text(ctx, &text, mono_ns()),
                    Some(Ok(Message::Binary(_))) => {
                        ctx.tally.borrow_mut().bad_frames += 1;
                        Seen::Other
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return ReadEnd::Dropped,
                    // Pings are answered by tungstenite itself.
                    Some(Ok(_)) => Seen::Other,
                };
                if matches!(seen, Seen::OwnEcho | Seen::Error) && send.inflight.get() > 0 {
                    send.inflight.set(send.inflight.get() - 1);
                    send.wake.notify_one();
                }
            }
            _ = &mut stop => return ReadEnd::Stop,
            _ = &mut deadline, if until.is_some() => return ReadEnd::Stop,
        }
    }
}

/// Writes this sender's messages from the start of traffic to the end of the measurement,
/// then records its judged window. Returns the sink for closing, unless it broke.
async fn write_loop(
    ctx: Rc<Ctx>,
    mut sink: SplitSink<Ws, Message>,
    id: u32,
    frames: MessageFrames,
    state: Rc<SendState>,
) -> Option<SplitSink<Ws, Message>> {
    let mut phase = ctx.phase.subscribe();
    if phase.wait_for(|p| *p != Phase::Connecting).await.is_err() {
        return None;
    }
    let p = ctx.phases.get()?;
    let traffic = ctx.job.traffic.as_ref()?;
    let mut acct = SendAccount::new(id, p);
    let ok = match traffic.mode {
        SendMode::Rate { per_sender_hz } => {
            rate_loop(&ctx, &mut sink, &frames, &state, &mut acct, per_sender_hz).await
        }
        SendMode::Window { window } => {
            window_loop(&ctx, &mut sink, &frames, &state, &mut acct, window).await
        }
    };
    acct.finish(&ctx);
    ok.then_some(sink)
}

/// A sender's counts, turned into tally entries and its `SenderWindow` at the end.
struct SendAccount {
    /// Sender id.
    id: u32,
    /// Phases of the run.
    p: Phases,
    /// Next sequence number.
    seq: u64,
    /// First sequence number stamped at or after the start of the measurement.
    first: Option<u64>,
    /// Number of messages stamped before the cutoff.
    before_cutoff: u64,
    /// Scheduled messages that could not be sent before the end.
    unsent: u64,
    /// Reused content buffer.
    content: String,
}

impl SendAccount {
    fn new(id: u32, p: Phases) -> Self {
        SendAccount {
            id,
            p,
            seq: 0,
            first: None,
            before_cutoff: 0,
            unsent: 0,
            content: String::new(),
        }
    }

    /// Builds the frame of the next message, stamped `sent_ns`.
    fn frame(&mut self, ctx: &Ctx, frames: &MessageFrames, sent_ns: u64) -> Message {
        let stamp = Stamp {
            run: ctx.job.run_id,
            sender: self.id,
            seq: self.seq,
            sent_ns,
        };
        let (size, words) = ctx
            .job
            .traffic
            .as_ref()
            .map_or((0, false), |t| (t.size, t.words));
        content::encode(&stamp, size, words, &mut self.content);
        Message::text(frames.build(&self.content))
    }

    /// Counts the message built last as sent; called only once the sink took it, so a
    /// write cut short at the end of the measurement is never counted.
    fn sent(&mut self, ctx: &Ctx, sent_ns: u64) {
        // Counted live (not at the end) so progress lines show the send rate.
        let mut tally = ctx.tally.borrow_mut();
        tally.sent += 1;
        if sent_ns >= self.p.measure {
            self.first.get_or_insert(self.seq);
            if sent_ns < self.p.end {
                tally.sent_measured += 1;
            }
        }
        if sent_ns < self.p.cutoff {
            self.before_cutoff += 1;
        }
        self.seq += 1;
    }

    /// Publishes the sender's judged window and its unsent count.
    fn finish(&self, ctx: &Ctx) {
        let first = self.first.unwrap_or(self.seq);
        ctx.windows.borrow_mut().push(SenderWindow {
            sender: self.id,
            first,
            cutoff: self.before_cutoff.max(first),
        });
        ctx.tally.borrow_mut().unsent += self.unsent;
    }
}

/// Open-loop pacing: message `seq` is due at `start + offset + seq / rate`.
///
/// The runtime's timer ticks in milliseconds, so the sender wakes up to `EARLY_NS` before
/// a message is due and sends everything due by then. A message carries its actual write
/// time while the sender is on schedule (within `ON_SCHEDULE_NS` of the due time), so the
/// timer's granularity does not inflate sub-millisecond latencies; once the sender falls
/// further behind (the server stopped taking data), it carries its due time, so the time
/// it waited is part of its latency, as in wrk2 (no coordinated omission). A sender that
/// fell behind catches up in batches.
async fn rate_loop(
    ctx: &Ctx,
    sink: &mut SplitSink<Ws, Message>,
    frames: &MessageFrames,
    state: &SendState,
    acct: &mut SendAccount,
    hz: f64,
) -> bool {
    let p = acct.p;
    let end = ctx.anchor.instant(p.end);
    // Spread senders evenly over one interval so they do not all fire at once.
    let interval = 1e9 / hz;
    let offset = (spread(acct.id) * interval) as u64;
    let due = |seq: u64| p.start + offset + schedule_offset_ns(seq, hz);
    let scheduled = if p.end > p.start + offset {
        ((p.end - p.start - offset) as f64 / interval).ceil() as u64
    } else {
        0
    };
    while acct.seq < scheduled && !state.closed.get() {
        let wake = ctx.anchor.instant(due(acct.seq).saturating_sub(EARLY_NS));
        if tokio::time::timeout_at(end, tokio::time::sleep_until(wake))
            .await
            .is_err()
        {
            break;
        }
        let horizon = mono_ns() + EARLY_NS;
        let mut batch = 0;
        while acct.seq < scheduled && due(acct.seq) <= horizon && batch < MAX_BATCH {
            let (d, now) = (due(acct.seq), mono_ns());
            let stamp = if now <= d + ON_SCHEDULE_NS { now } else { d };
            let msg = acct.frame(ctx, frames, stamp);
            match tokio::time::timeout_at(end, sink.feed(msg)).await {
                Ok(Ok(())) => acct.sent(ctx, stamp),
                Ok(Err(_)) => return false,
                Err(_) => break,
            }
            batch += 1;
        }
        match tokio::time::timeout_at(end, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => break,
        }
    }
    acct.unsent = scheduled.saturating_sub(acct.seq);
    true
}

/// Closed-loop pacing: keep up to `window` messages in flight, each stamped with the
/// time it was written.
async fn window_loop(
    ctx: &Ctx,
    sink: &mut SplitSink<Ws, Message>,
    frames: &MessageFrames,
    state: &SendState,
    acct: &mut SendAccount,
    window: u32,
) -> bool {
    let p = acct.p;
    let end = ctx.anchor.instant(p.end);
    loop {
        let now = mono_ns();
        if now >= p.end || state.closed.get() {
            return true;
        }
        let mut batch = 0;
        while state.inflight.get() < u64::from(window) && batch < MAX_BATCH {
            let stamp = mono_ns();
            let msg = acct.frame(ctx, frames, stamp);
            match tokio::time::timeout_at(end, sink.feed(msg)).await {
                Ok(Ok(())) => acct.sent(ctx, stamp),
                Ok(Err(_)) => return false,
                Err(_) => return true,
            }
            state.inflight.set(state.inflight.get() + 1);
            batch += 1;
        }
        if batch > 0 {
            match tokio::time::timeout_at(end, sink.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return false,
                Err(_) => return true,
            }
        }
        if state.inflight.get() >= u64::from(window) {
            if tokio::time::timeout_at(end, state.wake.notified())
                .await
                .is_err()
            {
                return true;
            }
        } else {
            // A full batch went out: let the read side (and other connections) run.
            tokio::task::yield_now().await;
        }
    }
}

/// A fraction in [0, 1) that differs between neighbouring ids (Fibonacci hashing).
fn spread(id: u32) -> f64 {
    let h = u64::from(id)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Closes politely (close frame, wait for the server's), bounded by `CLOSE_TIMEOUT`.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_is_a_fraction_and_varies() {
        let a = spread(0);
        let b = spread(1);
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
        assert!((a - b).abs() > 0.01);
    }
}
