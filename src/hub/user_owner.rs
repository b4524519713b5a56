//! User owner (`shard_for(user)`): the user's rate limit (counted here, or
//! on the one core that holds all of the user's connections under a lease:
//! `crate::lease`), and the user's live connection count (online on the
//! first, offline after the last, over MAX_CONNECTIONS_PER_USER closed).
//! The user's `clientMsgId` window lives with the log; a room owner tells it
//! how each publish ended (`published`).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::{Hub, TOO_MANY_CONNECTIONS_CLOSE};
use crate::broker::OfflineCheck;
use crate::dedupe::{Begin, UserWindow};
use crate::lease::{
    answer_at_home, Admit, Answer as LeaseAnswer, Holder, Online, Placement, Route, Settled,
};
use crate::metrics::{CloseReason, Outcome};
use crate::protocol::{self, ErrorCode, MessageId};
use crate::ratelimit::Decision;
use crate::shard::{ConnId, FrameKind, Publish, ShardMsg};
use crate::ws;

/// `retryAfterMs` of a message refused while the user's rate-limit log
/// moves between cores (a mesh round trip, microseconds).
const HELD_RETRY_MS: u64 = 10;

impl Hub {
    /// A checked message from a local client: deduped and counted against
    /// the user's rate limit where the user's log is (here, when this core
    /// owns the user or holds its lease; `crate::lease`), then to the
    /// room's owner.
    pub fn publish(&mut self, p: Box<Publish>, now: Instant, wall: SystemTime) {
        let owner = self.owner(&p.user.user_id);
        if owner == self.core {
            return self.publish_user_owner(p, now, wall);
        }
        let Some(lease) = self.leases.get_mut(&p.user.user_id) else {
            // No connection of the user here any more: the owner counts.
            self.metrics.publish_forwarded += 1;
            return self.outbox.send(owner, ShardMsg::Publish(p));
        };
        match lease.route(p) {
            Route::Local(p) => self.count_and_sequence(p, now, wall),
            Route::Forward(p) => {
                self.metrics.publish_forwarded += 1;
                self.outbox.send(owner, ShardMsg::Publish(p));
            }
            Route::Held => {}
            Route::Full(p) => self.refuse_held(p.conn, now),
        }
    }

    /// User owner: dedupes and counts the message now, or keeps it until
    /// the user's log comes back from the core it was lent to.
    pub(super) fn publish_user_owner(&mut self, p: Box<Publish>, now: Instant, wall: SystemTime) {
        let Some(placement) = self.placements.get_mut(&p.user.user_id) else {
            return self.count_and_sequence(p, now, wall);
        };
        match placement.admit(p) {
            Admit::Queued => {}
            Admit::Full(p) => self.refuse_held(p.conn, now),
        }
    }

    /// Where the user's log is: dedupe and the rate limit, then to the
    /// room's owner.
    fn count_and_sequence(&mut self, p: Box<Publish>, now: Instant, wall: SystemTime) {
        let user = p.user.user_id.clone();
        if let Some(cmid) = &p.client_msg_id {
            match self.dedupe.begin(&user, cmid, p.conn, now) {
                Begin::New => {}
                Begin::Duplicate {
                    message_id,
                    room_id,
                } => {
                    self.metrics.message(Outcome::Duplicate);
                    let ack = protocol::encode_ack(cmid, message_id, &room_id);
                    return self.send_to_conn(p.conn, Bytes::from(ws::encode_text(&ack)), now);
                }
                Begin::Waiting => {
                    self.metrics.message(Outcome::Duplicate);
                    return;
                }
            }
        }
        if let Decision::Limited { retry_after } = self.limiter.check_and_record(&user, now) {
            self.metrics.message(Outcome::RateLimited);
            let ms = retry_after.as_millis() as u64;
            if let Some(suppressed) = self.rate_log.admit(&user, now) {
                // The original service's line; sampled (one per user per
                // window, a few per second) so a flood cannot flood the log.
                let window = self.limiter.window();
                tracing::warn!(
                    userId = %user,
                    messageCount = self.limiter.max(),
                    timeWindow = %format!("{}ms", window.as_millis()),
                    retryAfterMs = ms,
                    suppressed,
                    "Rate limit exceeded"
                );
            }
            let text = format!("rate limit exceeded; retry in {ms} ms");
            let mut targets = vec![p.conn];
            if let Some(cmid) = &p.client_msg_id {
                targets.extend(self.dedupe.abort(&user, cmid));
            }
            for conn in targets {
                self.error_to(conn, ErrorCode::RateLimited, &text, Some(ms), now);
            }
            return;
        }
        let owner = self.owner(&p.room);
        if owner == self.core {
            self.accept_at_owner(*p, now, wall);
        } else {
            self.outbox.send(owner, ShardMsg::Sequence(p));
        }
    }

    /// A message over [`crate::lease::MAX_HELD`] while the user's log is
    /// on its way: refused like one over the limit, to be retried shortly.
    fn refuse_held(&mut self, conn: ConnId, now: Instant) {
        self.metrics.message(Outcome::RateLimited);
        let text = "too many messages while the rate limit moves between cores; retry";
        self.error_to(conn, ErrorCode::RateLimited, text, Some(HELD_RETRY_MS), now);
    }

    /// Room owner: tells the core holding the user's `clientMsgId` window
    /// how a publish with one ended. Tried on the sending connection's core
    /// first: under a lease (the common case) that is where the window is,
    /// often this very core.
    pub(super) fn published(
        &mut self,
        user: Arc<str>,
        client_msg_id: Box<str>,
        outcome: Option<(MessageId, Arc<str>)>,
        conn: ConnId,
        now: Instant,
    ) {
        let target = conn.core();
        if target == self.core {
            return self.on_published(user, client_msg_id, outcome, now);
        }
        let msg = ShardMsg::Published {
            user,
            client_msg_id,
            outcome,
        };
        self.outbox.send(target, msg);
    }

    /// A publish's outcome for the user's `clientMsgId` window: completed
    /// here when this core holds the window, else passed on towards the
    /// holder (the owner, or from the owner to the core it lent the log
    /// to). Each pass follows the window's own moves on FIFO pairs, so it
    /// ends where the window is.
    pub(super) fn on_published(
        &mut self,
        user: Arc<str>,
        client_msg_id: Box<str>,
        outcome: Option<(MessageId, Arc<str>)>,
        now: Instant,
    ) {
        let owner = self.owner(&user);
        let away = if owner == self.core {
            match self.placements.get(&user).map(|p| p.holder()) {
                Some(Holder::Out(c)) | Some(Holder::Returning(c)) => Some(c),
                _ => None,
            }
        } else if self.leases.get(&user).is_some_and(|l| l.holds()) {
            None
        } else {
            Some(owner)
        };
        if let Some(next) = away {
            let msg = ShardMsg::Published {
                user,
                client_msg_id,
                outcome,
            };
            return self.outbox.send(next, msg);
        }
        match outcome {
            Some((message_id, room)) => {
                let waiters =
                    self.dedupe
                        .complete(&user, &client_msg_id, message_id, room.clone(), now);
                if !waiters.is_empty() {
                    let ack = Bytes::from(ws::encode_text(&protocol::encode_ack(
                        &client_msg_id,
                        message_id,
                        &room,
                    )));
                    for conn in waiters {
                        self.send_to_conn(conn, ack.clone(), now);
                    }
                }
            }
            None => {
                // The waiters' copies were refused with the first one; they
                // may retry.
                for conn in self.dedupe.abort(&user, &client_msg_id) {
                    let text = "the original message with this clientMsgId was refused";
                    self.error_to(conn, ErrorCode::MessageBlocked, text, None, now);
                }
            }
        }
    }

    // ---- the rate-limit lease (crate::lease) ---------------------------

    /// User owner: a connection of `user` opened on `core` (the user now
    /// has `connections` here): grant, deny or revoke the lease of the
    /// user's log.
    fn place_online(&mut self, user: &Arc<str>, core: usize, connections: u32) {
        let online = match self.placements.get_mut(user) {
            Some(placement) => placement.online(core, self.core),
            None => Online {
                answer: answer_at_home(connections, core, self.core),
                revoke: None,
            },
        };
        if let Some(holder) = online.revoke {
            self.outbox
                .send(holder, ShardMsg::LeaseRevoke { user: user.clone() });
        }
        match online.answer {
            Some(LeaseAnswer::Grant) => {
                let log = self.limiter.take_log(user);
                let window = self.dedupe.take_user(user);
                self.placements.insert(user.clone(), Placement::lent(core));
                self.metrics.leases_granted += 1;
                let msg = ShardMsg::LeaseGrant {
                    user: user.clone(),
                    log,
                    window,
                };
                self.outbox.send(core, msg);
            }
            Some(LeaseAnswer::Deny) => {
                let msg = ShardMsg::LeaseDenied { user: user.clone() };
                self.outbox.send(core, msg);
            }
            None => {}
        }
    }

    /// User owner: the user's log came back; the messages that waited for
    /// it are counted now, in order.
    pub(super) fn lease_returned(
        &mut self,
        user: Arc<str>,
        log: Vec<Instant>,
        window: UserWindow<ConnId>,
        now: Instant,
        wall: SystemTime,
    ) {
        self.limiter.put_log(&user, log);
        self.dedupe.put_user(window);
        let Some(placement) = self.placements.remove(&user) else {
            return;
        };
        for p in placement.returned() {
            self.count_and_sequence(p, now, wall);
        }
    }

    /// Member core: the owner lent this core the user's log.
    pub(super) fn lease_granted(
        &mut self,
        user: Arc<str>,
        log: Vec<Instant>,
        window: UserWindow<ConnId>,
        now: Instant,
        wall: SystemTime,
    ) {
        let owner = self.owner(&user);
        let Some(lease) = self.leases.get_mut(&user) else {
            // Cannot happen (the record stays until answered); give it back.
            let msg = ShardMsg::LeaseReturn { user, log, window };
            return self.outbox.send(owner, msg);
        };
        match lease.granted() {
            Settled::Local(waiting) => {
                self.limiter.put_log(&user, log);
                self.dedupe.put_user(window);
                for p in waiting {
                    self.count_and_sequence(p, now, wall);
                }
            }
            Settled::GiveBack(waiting) => {
                self.leases.remove(&user);
                self.outbox.send(
                    owner,
                    ShardMsg::LeaseReturn {
                        user: user.clone(),
                        log,
                        window,
                    },
                );
                for p in waiting {
                    self.outbox.send(owner, ShardMsg::Publish(p));
                }
            }
            Settled::Forward(_) => unreachable!("granted() never forwards"),
        }
    }

    /// Member core: the owner keeps counting; what waited goes to it.
    pub(super) fn lease_denied(&mut self, user: Arc<str>) {
        let owner = self.owner(&user);
        let Some(lease) = self.leases.get_mut(&user) else {
            return;
        };
        let Settled::Forward(waiting) = lease.denied() else {
            unreachable!("denied() always forwards");
        };
        if lease.is_idle() {
            self.leases.remove(&user);
        }
        for p in waiting {
            self.outbox.send(owner, ShardMsg::Publish(p));
        }
    }

    /// Member core: the owner wants the user's log back (another core has
    /// a connection of the user now).
    pub(super) fn lease_revoked(&mut self, user: Arc<str>) {
        let Some(lease) = self.leases.get_mut(&user) else {
            return; // Already sent back with the last connection's close.
        };
        if lease.revoked() {
            let log = self.limiter.take_log(&user);
            let window = self.dedupe.take_user(&user);
            let owner = self.owner(&user);
            let msg = ShardMsg::LeaseReturn { user, log, window };
            self.outbox.send(owner, msg);
        }
    }

    /// A connection `conn` of `user` opened in `room`.
    pub(super) fn user_online(
        &mut self,
        user: Arc<str>,
        room: Arc<str>,
        conn: ConnId,
        now: Instant,
    ) {
        let owner = self.owner(&user);
        if owner != self.core {
            if conn.core() == self.core {
                // Held back until the owner answers (crate::lease).
                self.leases.entry(user.clone()).or_default().open();
            }
            let msg = ShardMsg::UserOnline { user, room, conn };
            return self.outbox.send(owner, msg);
        }
        let first = self.presence.set_online(&user);
        let connections = self.presence.connections(&user);
        self.place_online(&user, conn.core(), connections);
        if self.presence.connections(&user) > self.limits.max_connections_per_user {
            // Counted like any other, so its close undoes the count; closed
            // at once with a policy code the client can show.
            self.close_conn(
                conn,
                TOO_MANY_CONNECTIONS_CLOSE,
                CloseReason::TooManyConnections,
            );
        }
        if first {
            self.metrics.presence_online += 1;
            self.broker.online(user.clone());
            let frame = Bytes::from(ws::encode_text(&protocol::encode_presence(
                &user, true, &room,
            )));
            self.relay(room, frame, FrameKind::Presence, None, now);
        }
    }

    /// A connection of `user` closed; it was in `rooms`.
    pub(super) fn user_offline(&mut self, user: Arc<str>, rooms: Vec<Arc<str>>, now: Instant) {
        let owner = self.owner(&user);
        if owner != self.core {
            if let Some(lease) = self.leases.get_mut(&user) {
                if lease.close() {
                    // The log goes home before the close is counted there.
                    let log = self.limiter.take_log(&user);
                    let window = self.dedupe.take_user(&user);
                    let msg = ShardMsg::LeaseReturn {
                        user: user.clone(),
                        log,
                        window,
                    };
                    self.outbox.send(owner, msg);
                }
                if lease.is_idle() {
                    self.leases.remove(&user);
                }
            }
            return self
                .outbox
                .send(owner, ShardMsg::UserOffline { user, rooms });
        }
        if !self.presence.set_offline(&user) {
            return;
        }
        self.metrics.presence_offline += 1;
        // Offline here; the broker may first ask whether the user is still
        // online elsewhere (then `on_broker_event` announces it).
        if let OfflineCheck::Now(rooms) = self.broker.offline(user.clone(), rooms) {
            self.announce_offline(user, rooms, now);
        }
    }

    /// Sends `offline` presence frames for `user` to `rooms`.
    pub(super) fn announce_offline(&mut self, user: Arc<str>, rooms: Vec<Arc<str>>, now: Instant) {
        for room in rooms {
            let frame = Bytes::from(ws::encode_text(&protocol::encode_presence(
                &user, false, &room,
            )));
            self.relay(room, frame, FrameKind::Presence, None, now);
        }
    }
}
