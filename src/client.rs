//! One client connection's session: who it is, which rooms it is in, its
//! outbound queue, and what each of its frames asks of the hub.
//!
//! The connection driver (`connection.rs`) moves bytes; this module decides.
//! Everything here is synchronous: a frame is checked, turned into hub work
//! (local, or a message to the owner core) and answered within one call.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::Identity;
use crate::hub::Hub;
use crate::metrics::{CloseReason, Outcome};
use crate::outbound::{Outbound, Push, SLOW_CONSUMER_CLOSE};
use crate::protocol::{self, ClientFrame, ErrorCode};
use crate::ratelimit::{BudgetRates, ConnBudgets, FrameClass};
use crate::runtime::sender::Writer;
use crate::shard::{ConnId, FrameKind, Publish};
use crate::ws;

/// Budgets a session starts with until the hub sets the configured ones
/// (the settings' defaults: ROOM_FRAMES_PER_SEC 10, HISTORY_FRAMES_PER_SEC 5,
/// TYPING_FRAMES_PER_SEC 5).
pub const DEFAULT_BUDGETS: BudgetRates = BudgetRates {
    rooms: 10,
    history: 5,
    typing: 5,
};

/// Where a connection stands with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The owner core registered the join; messages are delivered.
    Joined,
    /// Asked the owner core; `room_joined` not sent yet.
    Pending,
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
    /// This core's batched writer; `None` sends from the driver only.
    writer: Option<Rc<Writer>>,
    /// This client, for registering with the writer from `&self`.
    me: Weak<Client>,
    /// The socket while the driver runs its read/write loop, -1 before and
    /// once it starts closing: the writer never touches a socket the driver
    /// is closing, or a descriptor number reused after the close.
    socket: Cell<RawFd>,
    /// Registered with the writer and not yet sent by it (registered once).
    in_batch: Cell<bool>,
}

impl Client {
    /// A new session with an empty queue whose frames go out through
    /// `writer` when there is one, else through its driver alone.
    pub fn new(
        id: ConnId,
        identity: Identity,
        home_room: Arc<str>,
        outbound: Outbound,
        now: Instant,
        writer: Option<Rc<Writer>>,
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
            writer,
            me: me.clone(),
            socket: Cell::new(-1),
            in_batch: Cell::new(false),
        })
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
        match &self.writer {
            Some(writer) if self.socket.get() >= 0 => {
                if !self.in_batch.replace(true) {
                    writer.enqueue(self.me.clone());
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
    fn charge(&self, class: FrameClass, now: Instant) -> Result<(), Duration> {
        let mut b = self.budgets.get();
        let result = b.check(class, now);
        self.budgets.set(b);
        result
    }
}

/// Handles one complete text frame from `client`.
pub fn on_text(hub: &mut Hub, client: &Rc<Client>, payload: &mut [u8], now: Instant) {
    client.touch(now);
    let frame = match protocol::parse_client_frame(payload) {
        Ok(frame) => frame,
        Err(e) => return hub.send_error(client, ErrorCode::InvalidMessage, &e.0, None, now),
    };
    match frame {
        ClientFrame::Message {
            room_id,
            content,
            client_msg_id,
        } => {
            let Some(room) = client.joined_room(room_id.as_deref()) else {
                hub.metrics.message(Outcome::Invalid);
                let text = format!(
                    "not in room {}",
                    room_id.as_deref().unwrap_or(&client.home_room)
                );
                return hub.send_error(client, ErrorCode::NotInRoom, &text, None, now);
            };
            let max = hub.max_message_chars();
            if content.chars().count() > max {
                hub.metrics.message(Outcome::Invalid);
                let text = format!("message longer than {max} characters");
                return hub.send_error(client, ErrorCode::MessageTooLong, &text, None, now);
            }
            if hub.durable_full() {
                // Postgres is down and its buffer full: refuse before the
                // message is counted, stamped or broadcast.
                hub.metrics.message(Outcome::Unavailable);
                let text = crate::hub::UNAVAILABLE_TEXT;
                return hub.send_error(client, ErrorCode::Unavailable, text, None, now);
            }
            hub.publish(
                Box::new(Publish {
                    room,
                    user: client.identity.clone(),
                    content: content.into_owned(),
                    client_msg_id: client_msg_id.map(|c| c.into()),
                    conn: client.id,
                    received_at: now,
                }),
                now,
            );
        }
        ClientFrame::JoinRoom { room_id, since } => {
            if let Err(wait) = client.charge(FrameClass::Rooms, now) {
                return rate_limited(hub, client, "join_room and leave_room", wait, now);
            }
            let room: Arc<str> = Arc::from(&*room_id);
            if client.membership(&room).is_none() && client.room_count() >= hub.max_rooms() {
                let text = format!("a connection may be in at most {} rooms", hub.max_rooms());
                return hub.send_error(client, ErrorCode::RoomLimit, &text, None, now);
            }
            hub.join(client, room, since, now);
        }
        ClientFrame::LeaveRoom { room_id } => {
            if let Err(wait) = client.charge(FrameClass::Rooms, now) {
                return rate_limited(hub, client, "join_room and leave_room", wait, now);
            }
            if client.membership(&room_id).is_none() {
                let text = format!("not in room {room_id}");
                return hub.send_error(client, ErrorCode::NotInRoom, &text, None, now);
            }
            let room: Arc<str> = Arc::from(&*room_id);
            hub.leave(client, &room);
            client.push_own(&protocol::encode_room_left(&room), now);
        }
        ClientFrame::Typing { room_id, is_typing } => {
            let Some(room) = client.joined_room(room_id.as_deref()) else {
                let text = format!(
                    "not in room {}",
                    room_id.as_deref().unwrap_or(&client.home_room)
                );
                return hub.send_error(client, ErrorCode::NotInRoom, &text, None, now);
            };
            // Over the budget the indicator is dropped silently: it is
            // advisory and the next one carries the same state.
            if client.charge(FrameClass::Typing, now).is_err() {
                hub.metrics.typing_throttled += 1;
                return;
            }
            let id = &client.identity;
            let json = protocol::encode_typing(&id.user_id, &id.username, &room, is_typing);
            let frame = Bytes::from(ws::encode_text(&json));
            hub.typing(room, id.user_id.clone(), frame, client.id, now);
        }
        ClientFrame::History {
            room_id,
            before,
            after,
            limit,
        } => {
            if let Err(wait) = client.charge(FrameClass::History, now) {
                return rate_limited(hub, client, "history", wait, now);
            }
            hub.history_for_client(client, Arc::from(&*room_id), before, after, limit, now);
        }
        ClientFrame::Ping => client.push_own(&protocol::encode_pong(), now),
    }
}

/// Answers a frame over its connection budget: `rate_limited` with the
/// wait, connection kept, nothing else done for the frame.
fn rate_limited(hub: &mut Hub, client: &Client, what: &str, wait: Duration, now: Instant) {
    let ms = wait.as_millis() as u64;
    let text = format!("too many {what} frames on this connection; retry in {ms} ms");
    hub.send_error(client, ErrorCode::RateLimited, &text, Some(ms), now);
}

/// Handles a binary frame: refused, connection kept.
pub fn on_binary(hub: &mut Hub, client: &Rc<Client>, now: Instant) {
    client.touch(now);
    hub.send_error(
        client,
        ErrorCode::InvalidMessage,
        "binary frames are not supported; send JSON text frames",
        None,
        now,
    );
}
