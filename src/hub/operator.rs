//! The operator API's side of the hub (contract section 8): publishing as an
//! operator, deleting a message, banning and disconnecting a user. The HTTP
//! routes (`runtime/routes.rs`) check the admin token and the body, then
//! call in here; every action writes an audit record naming the admin.
//!
//! - **Publish**: goes straight to the room's owner as a member's message
//!   would after its user's owner (no rate limit or dedupe: the admin is
//!   trusted), so it is moderated, ordered, stored and fanned out like any
//!   other. The request waits under a [`ConnId::waiter`]: the frames the
//!   message path would send the sending connection (the accepted
//!   `message`, an `error`) answer it instead.
//! - **Delete**: at the room's owner, which removes the message from the
//!   history (memory, and Postgres behind it) and sends `message_deleted`
//!   to the room like a message (never shed). With Redis the other
//!   instances do the same on their side.
//! - **Bans**: one owner per ban, the user's owner core, which orders the
//!   changes of a user; every core keeps a read-mostly copy of the ban list
//!   ([`Bans`]), updated by [`ShardMsg::BanReplica`] from the owner (one
//!   FIFO channel per pair of cores, so every copy sees the owner's order),
//!   because every core must refuse upgrades at once, on the accepting core,
//!   without a round trip on the connection path. The HTTP request is
//!   answered once every core has applied the change, so an upgrade or a
//!   frame after the `204` is refused wherever it lands. A ban closes the
//!   user's connections with 4003; their `message` frames (one in flight)
//!   get `forbidden`. Bans end at their end time (wall clock, passed in).
//! - **Disconnect**: no state: every core closes the user's connections
//!   with 4002.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::reads::{Origin, Wait};
use super::{Asked, Hub, Waiter};
use crate::auth::Identity;
use crate::history::{Deletion, StoredMessage};
use crate::metrics::CloseReason;
use crate::moderation::{AuditAction, AuditRecord};
use crate::protocol::{self, MessageId};
use crate::shard::{Answer, BanChange, ConnId, FrameKind, Publish, ShardMsg};
use crate::ws;

/// Close code for a connection an operator disconnected.
pub const DISCONNECTED_CLOSE: u16 = 4002;
/// Close code for a connection of a banned user.
pub const BANNED_CLOSE: u16 = 4003;
/// Bans in force at once. Beyond it a new ban is refused (503) until some
/// end or are lifted: the list is copied on every core.
pub const MAX_BANS: usize = 100_000;

/// Milliseconds since the Unix epoch of a wall-clock reading (0 before it).
pub fn wall_ms(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One core's copy of the ban list: user id to the end of the ban (ms since
/// the Unix epoch). Written only by [`ShardMsg::BanReplica`] from the
/// user's owner core (and by the owner itself); at most [`MAX_BANS`].
#[derive(Debug, Default)]
pub struct Bans {
    /// End of each user's ban; an entry past its end is a lifted ban,
    /// removed when the list is next pruned.
    until: HashMap<Arc<str>, u64>,
}

impl Bans {
    /// When `user`'s ban ends, if it is in force at `now_ms`.
    pub fn until(&self, user: &str, now_ms: u64) -> Option<u64> {
        if self.until.is_empty() {
            // The common case, checked on every message frame and upgrade:
            // no hashing.
            return None;
        }
        self.until.get(user).copied().filter(|&end| end > now_ms)
    }

    /// Whether a ban of `user` can be taken at `now_ms`: the user is banned
    /// already (a change), or the list has room once ended bans are pruned.
    pub fn has_room(&mut self, user: &str, now_ms: u64) -> bool {
        if self.until.contains_key(user) || self.until.len() < MAX_BANS {
            return true;
        }
        self.prune(now_ms);
        self.until.len() < MAX_BANS
    }

    /// Bans `user` until `until_ms`, or lifts the ban (None).
    pub fn set(&mut self, user: Arc<str>, until_ms: Option<u64>, now_ms: u64) {
        match until_ms {
            Some(end) if end > now_ms => {
                if self.until.len() >= MAX_BANS {
                    self.prune(now_ms);
                }
                self.until.insert(user, end);
            }
            _ => {
                self.until.remove(&user);
            }
        }
    }

    /// Forgets the bans that ended by `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.until.retain(|_, end| *end > now_ms);
    }

    /// Entries held (ended ones included until pruned).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no ban is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// A ban change the owner has sent to the other cores, waiting for each to
/// apply it before the HTTP request is answered.
#[derive(Debug)]
pub(super) struct BanWait {
    /// Cores that have not answered yet.
    left: usize,
    /// The request to answer then.
    origin: Origin,
}

impl Hub {
    /// When `user`'s ban ends, if it is in force at `wall` (the accepting
    /// core refuses the user's upgrades with 403 meanwhile).
    pub fn banned_until(&self, user: &str, wall: SystemTime) -> Option<u64> {
        self.bans.until(user, wall_ms(wall))
    }

    /// Takes the bans in force when the server started (Postgres, Redis).
    pub fn seed_bans(&mut self, bans: &[(String, u64)], wall: SystemTime) {
        let now_ms = wall_ms(wall);
        for (user, until) in bans {
            if self.bans.has_room(user, now_ms) {
                self.bans
                    .set(Arc::from(user.as_str()), Some(*until), now_ms);
            }
        }
    }

    /// The operator API's publish: `content` (already checked: not blank,
    /// not too long) into `room` as `user`. The answer is the `message`
    /// frame once accepted, or the `error` frame that refused it.
    pub fn publish_as_operator(
        &mut self,
        room: Arc<str>,
        user: Identity,
        content: String,
        now: Instant,
        wall: SystemTime,
    ) -> Asked {
        let (tx, mut rx) = futures_channel::oneshot::channel();
        let req = self.register(Waiter::Http(tx));
        let publish = Publish {
            room: room.clone(),
            user,
            content,
            client_msg_id: None,
            conn: ConnId::waiter(self.core, req),
            received_at: now,
        };
        let owner = self.owner(&room);
        if owner == self.core {
            self.accept_at_owner(publish, now, wall);
        } else {
            self.outbox
                .send(owner, ShardMsg::Sequence(Box::new(publish)));
        }
        match rx.try_recv() {
            Ok(Some(answer)) => Asked::Ready(answer),
            _ => Asked::Later(rx),
        }
    }

    /// A frame for a [`ConnId::waiter`] of this core: answers its request.
    pub(super) fn answer_waiter(&mut self, conn: ConnId, frame: Bytes, now: Instant) {
        let payload = crate::redis::link::ws_payload(&frame);
        let answer = Answer::Frame(frame.slice_ref(payload));
        self.on_answer(conn.waiter_req(), answer, now);
    }

    /// Writes the audit record of an operator action.
    #[allow(clippy::too_many_arguments)]
    pub fn record_operator(
        &mut self,
        action: AuditAction,
        message_id: Option<MessageId>,
        user: Arc<str>,
        room: Arc<str>,
        actor: Arc<str>,
        reason: Option<String>,
        until_ms: Option<u64>,
        at_ms: u64,
    ) {
        if let Some(i) = AuditAction::OPERATOR.iter().position(|a| *a == action) {
            self.metrics.audit_operator[i] += 1;
        }
        let message_id = message_id.unwrap_or_else(|| {
            self.ids
                .generate_from_datetime(UNIX_EPOCH + std::time::Duration::from_millis(at_ms))
                .unwrap_or_else(|_| ulid::Ulid::from_parts(at_ms, 0))
        });
        self.audit.record(AuditRecord {
            message_id,
            user_id: user,
            room_id: room,
            action,
            reason,
            at_ms,
            actor: Some(actor),
            until_ms,
        });
    }

    // ---- disconnect ----------------------------------------------------

    /// The operator API's disconnect: every connection of `user` on every
    /// core closes with 4002 (and, with Redis, on every instance).
    pub fn disconnect_user(&mut self, user: Arc<str>, actor: Arc<str>, wall: SystemTime) {
        self.record_operator(
            AuditAction::Disconnected,
            None,
            user.clone(),
            Arc::from(""),
            actor,
            None,
            None,
            wall_ms(wall),
        );
        self.broker.disconnect(&user);
        self.close_user_everywhere(user, DISCONNECTED_CLOSE, CloseReason::Disconnected);
    }

    /// Closes `user`'s connections on every core of this instance.
    pub fn close_user_everywhere(&mut self, user: Arc<str>, code: u16, reason: CloseReason) {
        for core in (0..self.cores).filter(|c| *c != self.core) {
            let msg = ShardMsg::CloseUser {
                user: user.clone(),
                code,
                reason,
            };
            self.outbox.send(core, msg);
        }
        self.close_user_local(&user, code, reason);
    }

    /// Closes `user`'s connections on this core.
    pub(super) fn close_user_local(&mut self, user: &str, code: u16, reason: CloseReason) {
        for client in self.clients.values() {
            if &*client.identity.user_id == user {
                client.request_close(code, reason);
            }
        }
    }

    // ---- bans ------------------------------------------------------------

    /// User owner: a ban or unban from the operator API, asked as `origin`.
    pub(super) fn ban_at_owner(&mut self, origin: Origin, change: BanChange, now: Instant) {
        let BanChange {
            user,
            until_ms,
            reason,
            actor,
            at_ms,
        } = change;
        if until_ms.is_some() && !self.bans.has_room(&user, at_ms) {
            let text = format!("too many bans in force (at most {MAX_BANS})");
            return self.deliver_answer(origin, Answer::Refused(text), now);
        }
        let action = match until_ms {
            Some(_) => AuditAction::Banned,
            None => AuditAction::Unbanned,
        };
        self.record_operator(
            action,
            None,
            user.clone(),
            Arc::from(""),
            actor,
            reason,
            until_ms,
            at_ms,
        );
        self.broker.ban(&user, until_ms, at_ms);
        self.replicate_ban(user, until_ms, at_ms, Some(origin), now);
    }

    /// User owner: a ban change from another instance.
    pub(super) fn ban_from_cluster(
        &mut self,
        user: Arc<str>,
        until_ms: Option<u64>,
        now: Instant,
        wall: SystemTime,
    ) {
        let owner = self.owner(&user);
        if owner != self.core {
            return self
                .outbox
                .send(owner, ShardMsg::BanFromCluster { user, until_ms });
        }
        let now_ms = wall_ms(wall);
        if until_ms.is_some() && !self.bans.has_room(&user, now_ms) {
            tracing::warn!(%user, "ban from another instance not applied: the ban list is full");
            return;
        }
        self.replicate_ban(user, until_ms, now_ms, None, now);
    }

    /// User owner: applies a ban change here and sends it to every other
    /// core; `origin` is answered once all of them have applied it.
    fn replicate_ban(
        &mut self,
        user: Arc<str>,
        until_ms: Option<u64>,
        now_ms: u64,
        origin: Option<Origin>,
        now: Instant,
    ) {
        self.apply_ban(user.clone(), until_ms, now_ms);
        let others = self.cores - 1;
        let ack = match origin {
            Some(origin) if others > 0 => {
                let ack = self.next_id();
                self.ban_acks.insert(
                    ack,
                    BanWait {
                        left: others,
                        origin,
                    },
                );
                Some(ack)
            }
            Some(origin) => {
                self.deliver_answer(origin, Answer::Done, now);
                None
            }
            None => None,
        };
        for core in (0..self.cores).filter(|c| *c != self.core) {
            let msg = ShardMsg::BanReplica {
                user: user.clone(),
                until_ms,
                ack,
            };
            self.outbox.send(core, msg);
        }
    }

    /// Any core: updates this core's copy of the ban list; a ban closes
    /// the user's connections here with 4003.
    pub(super) fn apply_ban(&mut self, user: Arc<str>, until_ms: Option<u64>, now_ms: u64) {
        let banned = until_ms.is_some_and(|end| end > now_ms);
        if banned {
            self.close_user_local(&user, BANNED_CLOSE, CloseReason::Banned);
        }
        self.bans.set(user, until_ms, now_ms);
    }

    /// User owner: core applied the change numbered `ack`.
    pub(super) fn ban_applied(&mut self, ack: u64, now: Instant) {
        let Some(wait) = self.ban_acks.get_mut(&ack) else {
            return;
        };
        wait.left -= 1;
        if wait.left == 0 {
            let origin = wait.origin;
            self.ban_acks.remove(&ack);
            self.deliver_answer(origin, Answer::Done, now);
        }
    }

    // ---- delete ----------------------------------------------------------

    /// Room owner: the operator API's delete of message `id`.
    pub(super) fn delete_at_owner(
        &mut self,
        origin: Origin,
        room: Arc<str>,
        id: MessageId,
        actor: Arc<str>,
        at_ms: u64,
        now: Instant,
    ) {
        let read = self.next_id();
        let answer = match self.history.delete(read, &room, id) {
            Deletion::Now(Some(removed)) => {
                self.deleted(&room, id, &removed, actor, at_ms, now);
                Answer::Done
            }
            Deletion::Now(None) => Answer::NotFound,
            Deletion::Unavailable => Answer::Unavailable,
            Deletion::Pending => {
                let wait = Wait::Delete {
                    origin,
                    room,
                    id,
                    actor,
                    at_ms,
                };
                self.reads.insert(read, wait);
                return;
            }
        };
        self.deliver_answer(origin, answer, now);
    }

    /// Room owner: a delete's read came back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn delete_rows(
        &mut self,
        origin: Origin,
        rows: crate::pg::ReadResult,
        room: Arc<str>,
        id: MessageId,
        actor: Arc<str>,
        at_ms: u64,
        now: Instant,
    ) {
        let answer = match self.history.delete_rows(rows, &room, id) {
            Ok(Some(removed)) => {
                self.deleted(&room, id, &removed, actor, at_ms, now);
                Answer::Done
            }
            Ok(None) => Answer::NotFound,
            Err(_) => Answer::Unavailable,
        };
        self.deliver_answer(origin, answer, now);
    }

    /// Room owner: message `id` is gone from the history; the audit record,
    /// the other instances and the room's members are told.
    fn deleted(
        &mut self,
        room: &Arc<str>,
        id: MessageId,
        removed: &StoredMessage,
        actor: Arc<str>,
        at_ms: u64,
        now: Instant,
    ) {
        let author = serde_json::from_slice::<serde_json::Value>(&removed.json)
            .ok()
            .and_then(|v| v["userId"].as_str().map(Arc::from))
            .unwrap_or_else(|| Arc::from(""));
        self.record_operator(
            AuditAction::Deleted,
            Some(id),
            author,
            room.clone(),
            actor,
            None,
            None,
            at_ms,
        );
        self.broker.delete(room, id);
        self.announce_deleted(room, id, now);
    }

    /// Room owner: `message_deleted` to the room's members on this
    /// instance, as a message (never shed).
    pub(super) fn announce_deleted(&mut self, room: &Arc<str>, id: MessageId, now: Instant) {
        let json = protocol::encode_message_deleted(room, id);
        let frame = Bytes::from(ws::encode_text(&json));
        self.fan_out(room, frame, 0, FrameKind::Message, None, now, now);
    }

    /// Another instance's operator action (Redis), carried out here too:
    /// its origin answered the request and wrote the audit record.
    pub(super) fn operator_from_cluster(
        &mut self,
        action: crate::redis::envelope::Operator,
        now: Instant,
        wall: SystemTime,
    ) {
        use crate::redis::envelope::Operator;
        match action {
            Operator::Delete { r, i } => {
                let id = protocol::parse_message_id(&i);
                match id.filter(|_| protocol::valid_room_id(&r)) {
                    Some(id) => self.delete_from_cluster(Arc::from(r), id, now),
                    None => {
                        tracing::warn!(room = %r, id = %i, "ignoring a malformed delete from another instance")
                    }
                }
            }
            Operator::Ban { u, t } => self.ban_from_cluster(Arc::from(u), t, now, wall),
            Operator::Disconnect { u } => self.close_user_everywhere(
                Arc::from(u),
                DISCONNECTED_CLOSE,
                CloseReason::Disconnected,
            ),
        }
    }

    /// Room owner: another instance deleted message `id` of `room`: it
    /// goes from this instance's history too (a pending insert of it is
    /// dropped), and the members here are told.
    pub(super) fn delete_from_cluster(&mut self, room: Arc<str>, id: MessageId, now: Instant) {
        let owner = self.owner(&room);
        if owner != self.core {
            return self
                .outbox
                .send(owner, ShardMsg::DeleteFromCluster { room, id });
        }
        let read = self.next_id();
        // Memory and this instance's writer only: the deleting instance
        // answered the request and wrote the audit record.
        match self.history.delete(read, &room, id) {
            Deletion::Pending => {
                self.reads.insert(
                    read,
                    Wait::Forget {
                        room: room.clone(),
                        id,
                    },
                );
            }
            Deletion::Now(_) | Deletion::Unavailable => {}
        }
        self.announce_deleted(&room, id, now);
    }
}
