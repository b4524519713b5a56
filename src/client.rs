//! One client connection's state: who it is, which rooms it is in, its
//! outbound queue, and how a queue that became non-empty reaches the socket.
//!
//! The connection driver (`runtime/connection.rs`) moves bytes; what each
//! frame asks of the hub is decided in `hub/session.rs`. Nothing here knows
//! the runtime: the batched sender is reached through [`Flush`].

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::Identity;
use crate::metrics::CloseReason;
use crate::outbound::{Outbound, Push, SLOW_CONSUMER_CLOSE};
use crate::ratelimit::{BudgetRates, ConnBudgets, FrameClass};
use crate::shard::{ConnId, FrameKind, JoinTicket};
use crate::ws;

/// Budgets a session starts with until the hub sets the configured ones
/// (the settings' defaults: ROOM_FRAMES_PER_SEC 10, HISTORY_FRAMES_PER_SEC 5,
/// TYPING_FRAMES_PER_SEC 5).
pub const DEFAULT_BUDGETS: BudgetRates = BudgetRates {
    rooms: 10,
    history: 5,
    typing: 5,
};

/// The core's batched sender, as a connection sees it (the runtime's
/// `BatchSender` implements it).
pub trait Flush {
    /// `client`'s queue just became non-empty while its driver's loop runs
    /// (a socket is attached): send it with the rest of this pass. Called
    /// once until the sender calls [`Client::left_batch`].
    fn queued(&self, client: Weak<Client>);
}

/// Where a connection stands with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The owner core registered the join; messages are delivered.
    Joined,
    /// Asked the owner core; `room_joined` not sent yet. The ticket names
    /// the join whose answer completes it.
    Pending(JoinTicket),
}

/// Shared state of one connection, owned by the core it runs on.
pub struct Client {
    /// Unique across cores and never reused.
    pub id: ConnId,
    /// From the verified token.
    pub identity: Identity,
    /// The room named at connect time; the default for frames without `roomId`.
    pub home_room: Arc<str>,
    /// Rooms joined or being joined; a few per connection, so a Vec beats a map.
    rooms: RefCell<Vec<(Arc<str>, Membership)>>,
    /// Frames waiting for the socket.
    out: RefCell<Outbound>,
    /// The driver task, woken when the queue becomes non-empty or a close is requested.
    waker: Cell<Option<Waker>>,
    /// A close the driver must perform: code and why.
    close: Cell<Option<(u16, CloseReason)>>,
    /// Last time any frame arrived from the client (idle timeout).
    last_seen: Cell<Instant>,
    /// Last time the server sent a WebSocket ping.
    last_ping: Cell<Instant>,
    /// Per-connection budgets of `join_room`/`leave_room`, `history` and
    /// `typing` frames (one token bucket each).
    budgets: Cell<ConnBudgets>,
    /// This core's batched sender; `None` (tests, BATCHED_SENDS=false)
    /// sends from the driver only.
    flush: Option<Rc<dyn Flush>>,
    /// This client, for registering with the writer from `&self`.
    me: Weak<Client>,
    /// The socket while the driver runs its read/write loop, -1 before and
    /// once it starts closing: the writer never touches a socket the driver
    /// is closing, or a descriptor number reused after the close.
    socket: Cell<RawFd>,
    /// Registered with the writer and not yet sent by it (registered once).
    in_batch: Cell<bool>,
    /// The last [`JoinTicket`] handed out (see [`Client::begin_join`]).
    tickets: Cell<JoinTicket>,
    /// The upgrade negotiated permessage-deflate: broadcast frames that
    /// have a compressed copy are sent compressed (`hub/member.rs`).
    deflate: Cell<bool>,
}

impl Client {
    /// A new session with an empty queue whose frames go out through
    /// `flush` when there is one, else through its driver alone.
    pub fn new(
        id: ConnId,
        identity: Identity,
        home_room: Arc<str>,
        outbound: Outbound,
        now: Instant,
        flush: Option<Rc<dyn Flush>>,
    ) -> Rc<Client> {
        Rc::new_cyclic(|me| Client {
            id,
            identity,
            home_room,
            rooms: RefCell::new(Vec::new()),
            out: RefCell::new(outbound),
            waker: Cell::new(None),
            close: Cell::new(None),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            budgets: Cell::new(ConnBudgets::new(DEFAULT_BUDGETS, now)),
            flush,
            me: me.clone(),
            tickets: Cell::new(0),
            socket: Cell::new(-1),
            in_batch: Cell::new(false),
            deflate: Cell::new(false),
        })
    }

    /// Records that this connection negotiated permessage-deflate (set
    /// when the session opens, before its first join: the room owners
    /// count it among their compressed members).
    pub fn set_deflate(&self, on: bool) {
        self.deflate.set(on);
    }

    /// Whether this connection takes compressed frames.
    pub fn deflate(&self) -> bool {
        self.deflate.get()
    }

    /// Queues a frame, applying the slow-consumer policy, and hands the
    /// connection to the writer (or wakes the driver).
    pub fn push(&self, frame: Bytes, kind: FrameKind, now: Instant) -> Push {
        let result = self.out.borrow_mut().push(frame, kind, now);
        match result {
            Push::Queued { was_empty: true } => self.ready(),
            Push::Overflow => self.request_close(SLOW_CONSUMER_CLOSE, CloseReason::SlowConsumer),
            _ => {}
        }
        result
    }

    /// Asks the processor to load the parts of this connection a delivery
    /// touches (the outbound queue's state and the flags beside it), so a
    /// fan-out that issues it a few members ahead finds them in cache. At
    /// chat rates each delivery touches a connection no other recently
    /// did, and these loads were the largest user-space cost of a fan-out
    /// (`perf` on `loadgen fanout --rooms 100 --members 50`, BENCHMARKS.md).
    #[inline]
    pub fn prefetch(&self) {
        let out = std::ptr::from_ref(&self.out).cast::<u8>();
        prefetch(out);
        prefetch(out.wrapping_add(64));
        prefetch(std::ptr::from_ref(&self.deflate).cast::<u8>());
    }

    /// Queues a `since` replay (message payloads, oldest first) behind
    /// everything queued so far; it goes out as the client reads.
    pub fn push_replay(&self, payloads: Vec<Bytes>, now: Instant) {
        let result = self.out.borrow_mut().push_replay(payloads, now);
        if result == (Push::Queued { was_empty: true }) && !self.out.borrow().is_empty() {
            self.ready();
        }
    }

    /// How many more replay messages this connection's backlog takes.
    pub fn replay_room(&self) -> usize {
        self.out.borrow().replay_room()
    }

    /// Bytes one more answer frame may have without overflowing the live
    /// budget.
    pub fn live_room(&self) -> usize {
        self.out.borrow().live_room()
    }

    /// Queues a frame of this connection's own (answers, errors).
    pub fn push_own(&self, payload: &[u8], now: Instant) {
        self.push(
            Bytes::from(ws::encode_text(payload)),
            FrameKind::Message,
            now,
        );
    }

    /// Asks the driver to close the connection with `code`. The first request wins.
    pub fn request_close(&self, code: u16, reason: CloseReason) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
            self.wake();
        }
    }

    /// The pending close request, if any.
    pub fn close_request(&self) -> Option<(u16, CloseReason)> {
        self.close.get()
    }

    /// Registers the driver's waker.
    pub fn set_waker(&self, waker: &Waker) {
        self.waker.set(Some(waker.clone()));
    }

    /// The queue just became non-empty: the writer sends it with the rest
    /// of the fan-out when the driver's loop is running, else the driver.
    fn ready(&self) {
        match &self.flush {
            Some(flush) if self.socket.get() >= 0 => {
                if !self.in_batch.replace(true) {
                    flush.queued(self.me.clone());
                }
            }
            _ => self.wake(),
        }
    }

    /// Wakes the driver (the writer hands back what it could not finish).
    pub fn wake_driver(&self) {
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The driver's read/write loop runs on `fd`: the writer may send on it.
    pub fn attach_socket(&self, fd: RawFd) {
        self.socket.set(fd);
    }

    /// The driver is closing: from now on only it writes.
    pub fn detach_socket(&self) {
        self.socket.set(-1);
    }

    /// The socket the writer may send on, or -1.
    pub fn socket(&self) -> RawFd {
        self.socket.get()
    }

    /// The writer took this connection off its list.
    pub fn left_batch(&self) {
        self.in_batch.set(false);
    }

    /// The outbound queue, for the driver.
    pub fn outbound(&self) -> &RefCell<Outbound> {
        &self.out
    }

    /// Notes client activity (any frame).
    pub fn touch(&self, now: Instant) {
        self.last_seen.set(now);
    }

    /// When the client was last heard from.
    pub fn last_seen(&self) -> Instant {
        self.last_seen.get()
    }

    /// When the server last pinged.
    pub fn last_ping(&self) -> Instant {
        self.last_ping.get()
    }

    /// Records a ping sent now.
    pub fn pinged(&self, now: Instant) {
        self.last_ping.set(now);
    }

    /// This connection's standing in `room`.
    pub fn membership(&self, room: &str) -> Option<Membership> {
        self.rooms
            .borrow()
            .iter()
            .find(|(r, _)| &**r == room)
            .map(|(_, m)| *m)
    }

    /// The joined room a `message` or `typing` frame is for: its `roomId`,
    /// else the initial room. Returns the stored id, so the hot path does
    /// not allocate one per frame.
    pub fn joined_room(&self, room_id: Option<&str>) -> Option<Arc<str>> {
        let wanted = room_id.unwrap_or(&self.home_room);
        self.rooms
            .borrow()
            .iter()
            .find(|(r, m)| &**r == wanted && *m == Membership::Joined)
            .map(|(r, _)| r.clone())
    }

    /// Sets the standing in `room` (adding it if new).
    pub fn set_membership(&self, room: &Arc<str>, m: Membership) {
        let mut rooms = self.rooms.borrow_mut();
        match rooms.iter_mut().find(|(r, _)| r == room) {
            Some(entry) => entry.1 = m,
            None => rooms.push((room.clone(), m)),
        }
    }

    /// Marks `room` pending under a new ticket, which the join carries to
    /// the owner and back.
    pub fn begin_join(&self, room: &Arc<str>) -> JoinTicket {
        let ticket = self.tickets.get().wrapping_add(1).max(1);
        self.tickets.set(ticket);
        self.set_membership(room, Membership::Pending(ticket));
        ticket
    }

    /// Forgets `room`; returns the standing it had.
    pub fn remove_membership(&self, room: &str) -> Option<Membership> {
        let mut rooms = self.rooms.borrow_mut();
        let pos = rooms.iter().position(|(r, _)| &**r == room)?;
        Some(rooms.swap_remove(pos).1)
    }

    /// Every room with its standing (for cleanup on close).
    pub fn take_rooms(&self) -> Vec<(Arc<str>, Membership)> {
        std::mem::take(&mut *self.rooms.borrow_mut())
    }

    /// Number of rooms joined or pending.
    pub fn room_count(&self) -> usize {
        self.rooms.borrow().len()
    }

    /// Replaces the budgets with full buckets of the configured rates.
    pub fn set_budgets(&self, rates: BudgetRates, now: Instant) {
        self.budgets.set(ConnBudgets::new(rates, now));
    }

    /// Charges one frame of `class` to this connection's budget; Err: the
    /// time until one is allowed again.
    pub fn charge(&self, class: FrameClass, now: Instant) -> Result<(), Duration> {
        let mut b = self.budgets.get();
        let result = b.check(class, now);
        self.budgets.set(b);
        result
    }
}

/// A hint to load the cache line holding `p`; never faults, whatever `p`.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing architecturally and
    // cannot fault, and SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
