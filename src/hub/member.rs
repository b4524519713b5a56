//! Member core (where a connection runs): opens and closes sessions, keeps
//! the local member list of every room with members here, answers joins to
//! the connection (`room_joined` and its replay), and hands frames to the
//! members' outbound queues.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::Hub;
use crate::auth::Identity;
use crate::broker::PendingJoin;
use crate::client::{Client, Membership};
use crate::metrics::CloseReason;
use crate::outbound::{Outbound, Push};
use crate::protocol::{self, ErrorCode, MessageId};
use crate::shard::{ConnId, FrameKind, JoinAnswer, Replay, ShardMsg};
use crate::ws;

/// How many members ahead a fan-out asks for a member's queue state to be
/// loaded ([`Client::prefetch`]): far enough for the load to finish before
/// the push reaches it (a push is a few hundred cycles), near enough that
/// the line is not evicted meanwhile.
const PREFETCH_AHEAD: usize = 4;

impl Hub {
    /// Creates the session of a new connection whose initial room this core
    /// owns, sends `room_joined` (its first frame) and any recovered
    /// messages, and announces the user online.
    pub fn open(
        &mut self,
        identity: Identity,
        room: Arc<str>,
        since: Option<MessageId>,
        now: Instant,
    ) -> Rc<Client> {
        self.open_with(identity, room, since, false, now)
    }

    /// [`Hub::open`] for a connection that negotiated permessage-deflate
    /// when `deflate` is set: it gets the compressed copy of broadcasts,
    /// and its rooms' owners make one while it is a member.
    pub fn open_with(
        &mut self,
        identity: Identity,
        room: Arc<str>,
        since: Option<MessageId>,
        deflate: bool,
        now: Instant,
    ) -> Rc<Client> {
        self.next_conn += 1;
        let id = ConnId::new(self.core, self.next_conn);
        let outbound = Outbound::new(self.limits.outbound_bytes, self.limits.stall_timeout);
        let client = Client::new(
            id,
            identity,
            room.clone(),
            outbound,
            now,
            self.flush.clone(),
        );
        client.set_budgets(self.limits.budgets, now);
        client.set_deflate(deflate);
        self.clients.insert(id, client.clone());
        self.metrics.connections_opened += 1;
        self.join(&client, room.clone(), since, now);
        self.user_online(client.identity.user_id.clone(), room, id, now);
        client
    }

    /// Sets when connection `conn` (on this core) expires, from its
    /// token's `exp`: none when the token has no `exp` (or one beyond any
    /// clock), else `exp` plus the grace, already due when that has passed;
    /// 4001 closes it then unless a `refresh` moves it. `wall` is the wall
    /// clock at `now` (the deadline is kept as an `Instant`). Called right
    /// after [`Hub::open_with`] for every upgrade.
    pub fn set_token_expiry(
        &mut self,
        conn: ConnId,
        exp: Option<u64>,
        now: Instant,
        wall: SystemTime,
    ) {
        match exp.and_then(|exp| token_deadline(exp, self.limits.token_expiry_grace, now, wall)) {
            Some(deadline) => self.expiry.insert(conn, deadline),
            None => {
                self.expiry.remove(conn);
            }
        }
    }

    /// When connection `conn`'s token expires (its `exp` plus the grace),
    /// if it does.
    pub fn token_deadline(&self, conn: ConnId) -> Option<Instant> {
        self.expiry.deadline(conn)
    }

    /// Removes a closed connection: leaves its rooms and, if it was the
    /// user's last, announces the user offline there.
    pub fn closed(&mut self, client: &Rc<Client>, reason: CloseReason, now: Instant) {
        if self.clients.remove(&client.id).is_none() {
            return;
        }
        self.expiry.remove(client.id);
        self.metrics.closed(reason);
        let user = client.identity.user_id.clone();
        let mut joined = Vec::new();
        for (room, membership) in client.take_rooms() {
            // A pending join is undone when its answer finds the client gone.
            if membership == Membership::Joined {
                self.remove_local_member(&room, client.id);
                self.leave_owner(room.clone(), user.clone(), self.core, client.deflate());
                joined.push(room);
            }
        }
        self.user_offline(user, joined, now);
    }

    /// Joins `client` to `room`, or answers a repeated join again.
    pub fn join(
        &mut self,
        client: &Rc<Client>,
        room: Arc<str>,
        since: Option<MessageId>,
        now: Instant,
    ) {
        let membership = client.membership(&room);
        if matches!(membership, Some(Membership::Pending(_))) {
            return; // the owner's answer is on its way
        }
        if membership == Some(Membership::Joined) && since.is_none() {
            // A repeat: answered here from what this core knows, with no
            // hop to the owner and no backend round trip (a flood of them
            // must not reach Redis; the join budget bounds the answers).
            let count = self.known_member_count(&room);
            client.push_own(&protocol::encode_room_joined(&room, count, None), now);
            return;
        }
        let count = membership.is_none();
        let owner = self.owner(&room);
        if owner == self.core {
            // Pending until answered: at once when the broker counts here
            // and memory holds the replay, else after the cluster's count
            // or the Postgres read (`joined` then completes it).
            let ticket = if count { client.begin_join(&room) } else { 0 };
            let join = PendingJoin {
                room,
                user: client.identity.user_id.clone(),
                conn: client.id,
                from: self.core,
                since,
                count,
                ticket,
                deflate: client.deflate(),
            };
            self.join_at_owner(join, now);
        } else {
            let ticket = if count { client.begin_join(&room) } else { 0 };
            let msg = ShardMsg::Join {
                room,
                user: client.identity.user_id.clone(),
                conn: client.id,
                since,
                count,
                ticket,
                deflate: client.deflate(),
            };
            self.outbox.send(owner, msg);
        }
    }

    /// Leaves `room` (the caller answers `room_left`).
    pub fn leave(&mut self, client: &Rc<Client>, room: &Arc<str>) {
        if client.remove_membership(room) == Some(Membership::Joined) {
            self.remove_local_member(room, client.id);
            let user = client.identity.user_id.clone();
            self.leave_owner(room.clone(), user, self.core, client.deflate());
        }
    }

    /// The member count a repeated join is answered with: the owner's own
    /// view when this core owns the room (with Redis, at least the last
    /// cluster-wide count), else the last count this core sent for it.
    pub(super) fn known_member_count(&self, room: &str) -> usize {
        let owned = self
            .owned
            .get(room)
            .map(|r| r.users.len().max(r.cluster_count));
        owned
            .or_else(|| self.room_counts.get(room).copied())
            .unwrap_or(1)
    }

    /// Sends `room_joined` and queues the replay behind it. The replay is
    /// paced by the client's reading (`outbound.rs`), never cut by the
    /// outbound budget; only a connection whose replay backlog is already
    /// full (several joins with `since` at once) gets the newest part of
    /// this one, with `recovered:false` so it pages the rest.
    pub(super) fn answer_join(
        &mut self,
        client: &Client,
        room: &str,
        member_count: usize,
        replay: Replay,
        now: Instant,
    ) {
        if let Some(known) = self.room_counts.get_mut(room) {
            *known = member_count;
        } else if self.local.contains_key(room) {
            self.room_counts.insert(Arc::from(room), member_count);
        }
        let Replay {
            mut messages,
            mut recovered,
        } = replay;
        let room_left = client.replay_room();
        if messages.len() > room_left {
            messages.drain(..messages.len() - room_left);
            recovered = Some(false);
        }
        let joined = protocol::encode_room_joined(room, member_count, recovered);
        client.push_own(&joined, now);
        if !messages.is_empty() {
            client.push_replay(messages, now);
        }
    }

    pub(super) fn remove_local_member(&mut self, room: &str, id: ConnId) {
        if let Some(members) = self.local.get_mut(room) {
            if let Some(pos) = members.iter().position(|c| c.id == id) {
                members.swap_remove(pos);
            }
            if members.is_empty() {
                self.local.remove(room);
                self.room_counts.remove(room);
            }
        }
    }

    /// Member side of a remote owner's join answer.
    pub(super) fn joined(&mut self, answer: JoinAnswer, now: Instant) {
        let JoinAnswer {
            room,
            user,
            conn,
            member_count,
            replay,
            ticket,
            counted,
            deflate,
        } = answer;
        let client = self.clients.get(&conn).cloned();
        let Some(client) = client else {
            if counted {
                self.leave_owner(room, user, self.core, deflate);
            }
            return;
        };
        if counted {
            if client.membership(&room) != Some(Membership::Pending(ticket)) {
                // Left while the join was in flight (and perhaps joined
                // again, under a newer ticket whose own answer follows):
                // undo this one's count and send nothing.
                return self.leave_owner(room, user, self.core, deflate);
            }
            client.set_membership(&room, Membership::Joined);
            self.local
                .entry(room.clone())
                .or_default()
                .push(client.clone());
        } else if client.membership(&room) != Some(Membership::Joined) {
            // A replay for a connection that has left the room since.
            return;
        }
        self.answer_join(&client, &room, member_count, replay, now);
    }

    /// Member core: hands the frame to every local member's queue. With a
    /// compressed copy (`deflated` > 0: where it starts in `frame`), the
    /// members that negotiated permessage-deflate get that copy and the
    /// others the plain frame; both are slices of the one shared buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_local(
        &mut self,
        room: &str,
        frame: Bytes,
        deflated: u32,
        kind: FrameKind,
        exclude: Option<ConnId>,
        received_at: Instant,
        now: Instant,
    ) {
        let Some(members) = self.local.get(room) else {
            return;
        };
        let (plain, packed) = match deflated as usize {
            0 => (frame, None),
            at => (frame.slice(..at), Some(frame.slice(at..))),
        };
        let mut delivered = 0;
        let mut dropped = 0;
        let mut compressed = 0;
        for (i, client) in members.iter().enumerate() {
            if let Some(ahead) = members.get(i + PREFETCH_AHEAD) {
                ahead.prefetch();
            }
            if Some(client.id) == exclude {
                continue;
            }
            let (copy, is_packed) = match &packed {
                Some(packed) if client.deflate() => (packed.clone(), true),
                _ => (plain.clone(), false),
            };
            match client.push(copy, kind, now) {
                Push::Queued { .. } => {
                    delivered += 1;
                    compressed += u64::from(is_packed);
                }
                Push::DroppedTyping => dropped += 1,
                Push::Overflow | Push::Closed => {}
            }
        }
        self.metrics.delivered += delivered;
        self.metrics.typing_dropped += dropped;
        if let Some(packed) = &packed {
            self.metrics.compressed_deliveries += compressed;
            self.metrics.compression_saved_bytes +=
                compressed * (plain.len() - packed.len()) as u64;
        }
        if kind == FrameKind::Message && delivered > 0 {
            self.metrics
                .latency(now.saturating_duration_since(received_at));
        }
    }

    /// A frame for one connection, wherever it runs.
    pub(super) fn send_to_conn(&mut self, conn: ConnId, frame: Bytes, now: Instant) {
        if conn.core() == self.core && conn.is_waiter() {
            self.answer_waiter(conn, frame, now);
        } else if conn.core() == self.core {
            if let Some(client) = self.clients.get(&conn) {
                client.push(frame, FrameKind::Message, now);
            }
        } else {
            self.outbox
                .send(conn.core(), ShardMsg::ToConn { conn, frame });
        }
    }

    /// An error frame for a local client.
    pub fn send_error(
        &mut self,
        client: &Client,
        code: ErrorCode,
        text: &str,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.metrics.error(code);
        client.push_own(&protocol::encode_error(code, text, retry_after_ms), now);
    }

    /// An error frame for a connection anywhere.
    pub(super) fn error_to(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        text: &str,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.metrics.error(code);
        let frame = Bytes::from(ws::encode_text(&protocol::encode_error(
            code,
            text,
            retry_after_ms,
        )));
        self.send_to_conn(conn, frame, now);
    }

    /// Asks connection `conn`, on whichever core it runs, to close.
    pub(super) fn close_conn(&mut self, conn: ConnId, code: u16, reason: CloseReason) {
        if conn.core() != self.core {
            let msg = ShardMsg::CloseConn { conn, code, reason };
            return self.outbox.send(conn.core(), msg);
        }
        if let Some(client) = self.clients.get(&conn) {
            client.request_close(code, reason);
        }
    }
}

/// The moment, on the clock of `now`, at which a token with `exp` (Unix
/// seconds) plus `grace` has passed, `wall` being the wall clock at `now`;
/// `now` itself when it already has. None when it lies beyond what the
/// clocks can hold (the token then never expires in practice).
pub(super) fn token_deadline(
    exp: u64,
    grace: Duration,
    now: Instant,
    wall: SystemTime,
) -> Option<Instant> {
    let end = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))?
        .checked_add(grace)?;
    match end.duration_since(wall) {
        Ok(left) => now.checked_add(left),
        Err(_) => Some(now),
    }
}
