//! Room owner (`shard_for(room)`): orders the room's messages, stamps ids
//! (monotonic per core, so per room), moderates, stores history, encodes
//! each message once as a complete WebSocket frame, fans it out to local
//! members and one copy per other core with members, counts the room's
//! users across cores for `memberCount`, and answers joins with their
//! replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{AckTo, Hub, OwnedRoom};
use crate::auth::Identity;
use crate::broker::{Counting, Inflight, Overdue, PendingJoin, Sequencing};
use crate::history::StoredMessage;
use crate::metrics::Outcome;
use crate::moderation::{AuditAction, AuditRecord, Verdict};
use crate::protocol::{self, ChatMessage, ErrorCode, MessageId};
use crate::shard::{ConnId, FrameKind, JoinAnswer, Publish, Replay, ShardMsg};
use crate::ws;

impl Hub {
    /// Owner side of a join: the broker counts it now (this instance's
    /// members) or cluster-wide (answered by `on_broker_event`).
    pub(super) fn join_at_owner(&mut self, join: PendingJoin, now: Instant) {
        if !join.count {
            // A repeat with `since` asks for a replay only: answered from
            // the owner's memory, never with a cluster count.
            return self.finish_join(join, None, now);
        }
        if let Counting::Now(join) = self.broker.count_join(join) {
            self.finish_join(join, None, now);
        }
    }

    /// Registers a join at its owner and answers it (`cluster`: the
    /// broker's cluster-wide count). A `since` the history cannot answer now
    /// becomes a read first (`replay_or_defer`), carrying the cluster count,
    /// so the member is counted when the rows arrive, with the replay taken
    /// in the same step.
    pub(super) fn finish_join(&mut self, join: PendingJoin, cluster: Option<usize>, now: Instant) {
        let PendingJoin {
            room,
            user,
            conn,
            from,
            since,
            count,
            ticket,
            deflate,
        } = join;
        let replay = match since {
            Some(since) => {
                match self.replay_or_defer(
                    from, conn, &user, &room, since, count, ticket, deflate, cluster,
                ) {
                    Some(replay) => replay,
                    None => return,
                }
            }
            None => Replay::default(),
        };
        let local_count = self.join_owner(&room, user.clone(), from, count, deflate);
        let known = match (self.owned.get_mut(&room), cluster) {
            (Some(r), Some(c)) => {
                r.cluster_count = c;
                c
            }
            (Some(r), None) => r.cluster_count,
            (None, c) => c.unwrap_or(0),
        };
        let answer = JoinAnswer {
            room,
            user,
            conn,
            member_count: known.max(local_count),
            replay,
            ticket,
            counted: count,
            deflate,
        };
        if from == self.core {
            self.joined(answer, now);
        } else {
            self.outbox.send(from, ShardMsg::Joined(Box::new(answer)));
        }
    }

    /// Owner side of a join: counts the member (when `count`), among the
    /// compressed members too when it negotiated permessage-deflate;
    /// returns the room's distinct users here.
    pub(super) fn join_owner(
        &mut self,
        room: &Arc<str>,
        user: Arc<str>,
        core: usize,
        count: bool,
        deflate: bool,
    ) -> usize {
        let cores = self.cores;
        let entry = self.owned.entry(room.clone()).or_insert_with(|| OwnedRoom {
            users: HashMap::new(),
            member_cores: vec![0; cores],
            deflate_members: 0,
            last_id: None,
            cluster_count: 0,
        });
        if count {
            let n = entry.users.entry(user.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.broker.room_add(room.clone(), user);
            }
            entry.member_cores[core] += 1;
            entry.deflate_members += u32::from(deflate);
        }
        entry.users.len()
    }

    /// Owner side of a leave (or routes it to the owner); `deflate`: the
    /// leaving connection had negotiated permessage-deflate.
    pub(super) fn leave_owner(
        &mut self,
        room: Arc<str>,
        user: Arc<str>,
        core: usize,
        deflate: bool,
    ) {
        let owner = self.owner(&room);
        if owner != self.core {
            let msg = ShardMsg::Leave {
                room,
                user,
                deflate,
            };
            return self.outbox.send(owner, msg);
        }
        let Some(entry) = self.owned.get_mut(&room) else {
            return;
        };
        if let Some(n) = entry.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                entry.users.remove(&user);
                self.broker.room_remove(room.clone(), user);
            }
        }
        entry.member_cores[core] = entry.member_cores[core].saturating_sub(1);
        entry.deflate_members = entry.deflate_members.saturating_sub(u32::from(deflate));
        if entry.users.is_empty() {
            self.owned.remove(&room);
        }
    }

    /// Room owner: moderate, stamp, store, fan out, ack.
    pub(super) fn accept_at_owner(&mut self, p: Publish, now: Instant, wall: SystemTime) {
        let Publish {
            room,
            user,
            content,
            client_msg_id,
            conn,
            received_at,
        } = p;
        if self.durable_full() {
            return self.refuse_unavailable(user.user_id, conn, client_msg_id, now);
        }
        let id = self
            .ids
            .generate_from_datetime(wall)
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(wall));
        let timestamp_ms = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut masked = false;
        let content = match self.moderator.as_ref().map(|m| m.moderate(&content)) {
            None | Some(Verdict::Clean) => content,
            Some(Verdict::Masked(text)) => {
                masked = true;
                text
            }
            Some(Verdict::Blocked(reason)) => {
                let reason = reason.to_string();
                self.record_audit(
                    id,
                    &user,
                    &room,
                    AuditAction::Blocked,
                    Some(reason.clone()),
                    timestamp_ms,
                );
                self.metrics.message(Outcome::Blocked);
                let text = format!("message refused by moderation: {reason}");
                self.error_to(conn, ErrorCode::MessageBlocked, &text, None, now);
                if let Some(cmid) = client_msg_id {
                    self.published(user.user_id, cmid, None, conn, now);
                }
                return;
            }
        };
        let msg = Inflight {
            room,
            user,
            content,
            masked,
            client_msg_id,
            conn,
            received_at,
            sent_at: now,
        };
        self.sequence(msg, id, timestamp_ms, now);
    }

    /// Accepts a moderated message with a locally assigned id.
    pub(super) fn accept_local(
        &mut self,
        msg: Inflight,
        id: MessageId,
        timestamp_ms: u64,
        now: Instant,
    ) {
        let Inflight {
            room,
            user,
            content,
            masked,
            client_msg_id,
            conn,
            received_at,
            ..
        } = msg;
        if masked {
            self.record_audit(id, &user, &room, AuditAction::Masked, None, timestamp_ms);
        }
        let message = ChatMessage {
            id,
            room_id: room,
            user_id: user.user_id,
            username: user.username,
            content,
            timestamp_ms,
        };
        let ack_to = AckTo {
            conn,
            client_msg_id,
        };
        self.accept_sequenced(message, Some(ack_to), received_at, now);
    }

    /// Room owner: the broker gives the message its id now (accepted
    /// here) or later (an event), or refuses it when its queue is full.
    fn sequence(&mut self, msg: Inflight, local: MessageId, timestamp_ms: u64, now: Instant) {
        let floor = self.owned.get(&msg.room).and_then(|r| r.last_id);
        match self.broker.sequence(msg, local, timestamp_ms, floor) {
            Sequencing::Now {
                msg,
                id,
                timestamp_ms,
            } => self.accept_local(msg, id, timestamp_ms, now),
            Sequencing::Pending => {}
            Sequencing::Refused(msg) => {
                self.metrics.message(Outcome::Unavailable);
                let text =
                    "the message could not be accepted: the Redis queue is full; retry later";
                self.error_to(msg.conn, ErrorCode::Unavailable, text, None, now);
                if let Some(cmid) = msg.client_msg_id {
                    self.published(msg.user.user_id, cmid, None, msg.conn, now);
                }
            }
        }
    }

    /// A sequenced message accepted at its room's owner: stored in history,
    /// encoded once, fanned out, and acknowledged when `ack_to` (this
    /// instance took it from a client) is given. Every accepted message
    /// passes here exactly once per instance that delivers it: the
    /// single-node path, Redis's copies (this instance's and others'), the
    /// local fallback during an outage, and an own message settled with the
    /// script's id when its copy did not come back (`settle_overdue`; the
    /// copy, should it still come, is dropped). A durable history store writes
    /// only messages with an `ack_to`, so a message is stored once in the
    /// cluster; the in-memory store keeps every message this instance
    /// delivers.
    pub fn accept_sequenced(
        &mut self,
        message: ChatMessage,
        ack_to: Option<AckTo>,
        received_at: Instant,
        now: Instant,
    ) {
        let id = message.id;
        let room = message.room_id.clone();
        let json = protocol::encode_message(&message);
        let header = ws::text_header_len(json.len());
        let mut buf = Vec::with_capacity(header + json.len());
        ws::encode_text_into(&json, &mut buf);
        // With WS_COMPRESSION, the compressed copy follows the plain frame
        // in the same buffer: compressed once here for every member on
        // every core (server_no_context_takeover makes one copy fit all).
        let plain_len = buf.len();
        // Only for rooms with a member that negotiated it, anywhere.
        let mut deflated = 0;
        let wanted =
            self.deflater.is_some() && self.owned.get(&room).is_some_and(|r| r.deflate_members > 0);
        if let (true, Some(deflater)) = (wanted, self.deflater.as_mut()) {
            if deflater.text_frame_into(&json, &mut buf) {
                deflated = plain_len as u32;
                self.metrics.compressed_frames += 1;
            }
        }
        let frame = Bytes::from(buf);
        let json = frame.slice(header..plain_len);
        self.history
            .store(&message, StoredMessage { id, json }, ack_to.is_some());
        if let Some(r) = self.owned.get_mut(&room) {
            r.last_id = r.last_id.max(Some(id));
        }
        if ack_to.is_some() {
            self.metrics.message(Outcome::Accepted);
            self.metrics.room_message(&room);
        }
        if let Some(waiter) = ack_to.as_ref().map(|a| a.conn).filter(|c| c.is_waiter()) {
            // An operator's publish: the request gets the message frame.
            self.send_to_conn(waiter, frame.clone(), now);
        }
        self.fan_out(
            &room,
            frame,
            deflated,
            FrameKind::Message,
            None,
            received_at,
            now,
        );
        if let Some(AckTo {
            conn,
            client_msg_id: Some(cmid),
        }) = ack_to
        {
            let ack = protocol::encode_ack(&cmid, id, &room);
            self.send_to_conn(conn, Bytes::from(ws::encode_text(&ack)), now);
            self.published(message.user_id, cmid, Some((id, room)), conn, now);
        }
    }

    pub(super) fn record_audit(
        &mut self,
        message_id: MessageId,
        user: &Identity,
        room: &Arc<str>,
        action: AuditAction,
        reason: Option<String>,
        at_ms: u64,
    ) {
        match action {
            AuditAction::Masked => self.metrics.audit_masked += 1,
            AuditAction::Blocked => self.metrics.audit_blocked += 1,
            // Operator actions are recorded by `record_operator`.
            _ => {}
        }
        let record = AuditRecord {
            message_id,
            user_id: user.user_id.clone(),
            room_id: room.clone(),
            action,
            reason,
            at_ms,
            actor: None,
            until_ms: None,
        };
        self.audit.record(record);
    }

    /// Relays a frame to a room through its owner (typing, presence).
    pub fn relay(
        &mut self,
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        now: Instant,
    ) {
        let owner = self.owner(&room);
        if owner == self.core {
            self.relay_owner(room, frame, kind, exclude, now);
        } else {
            let msg = ShardMsg::Relay {
                room,
                frame,
                kind,
                exclude,
            };
            self.outbox.send(owner, msg);
        }
    }

    /// A typing frame of a local connection (its own budget already
    /// charged), to the room's owner for the per-(user, room) budget.
    pub fn typing(
        &mut self,
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
        exclude: ConnId,
        now: Instant,
    ) {
        let owner = self.owner(&room);
        if owner == self.core {
            self.typing_owner(room, user, frame, exclude, now);
        } else {
            let msg = ShardMsg::Typing {
                room,
                user,
                frame,
                exclude,
            };
            self.outbox.send(owner, msg);
        }
    }

    /// Room owner: the typing budget per (user, room), across the user's
    /// connections on every core; over it the indicator is dropped silently
    /// (it is advisory, and the next one carries the same state).
    pub(super) fn typing_owner(
        &mut self,
        room: Arc<str>,
        user: Arc<str>,
        frame: Bytes,
        exclude: ConnId,
        now: Instant,
    ) {
        if !self.typing.allow((room.clone(), user), now) {
            self.metrics.typing_throttled += 1;
            return;
        }
        self.relay_owner(room, frame, FrameKind::Typing, Some(exclude), now);
    }

    /// Room owner: a typing or presence frame from this instance, to its
    /// members here and (with Redis) on the other instances.
    pub(super) fn relay_owner(
        &mut self,
        room: Arc<str>,
        frame: Bytes,
        kind: FrameKind,
        exclude: Option<ConnId>,
        now: Instant,
    ) {
        self.broker.relay(&room, kind, &frame);
        self.fan_out(&room, frame, 0, kind, exclude, now, now);
    }

    /// Room owner: local delivery plus one copy per other core with members.
    /// `deflated`: 0, or where the compressed copy starts in `frame`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fan_out(
        &mut self,
        room: &Arc<str>,
        frame: Bytes,
        deflated: u32,
        kind: FrameKind,
        exclude: Option<ConnId>,
        received_at: Instant,
        now: Instant,
    ) {
        if let Some(entry) = self.owned.get(room) {
            for (core, members) in entry.member_cores.iter().enumerate() {
                if core != self.core && *members > 0 {
                    // A private copy per core: recipients there clone a
                    // reference count that never leaves that core's cache.
                    let msg = ShardMsg::Deliver {
                        room: room.clone(),
                        frame: Bytes::copy_from_slice(&frame),
                        deflated,
                        kind,
                        exclude,
                        received_at,
                    };
                    self.outbox.send(core, msg);
                }
            }
        }
        self.deliver_local(room, frame, deflated, kind, exclude, received_at, now);
    }

    /// An own message whose copy did not come back from the subscription in
    /// time. With the script's id it is accepted here as its copy would have
    /// been: stored, fanned out on this instance, acknowledged, its
    /// clientMsgId completed (the other instances delivered the same id
    /// from their subscriptions). Without one it is refused with
    /// `unavailable` and its clientMsgId released, so a retry is sequenced
    /// anew instead of waiting on it.
    pub(super) fn settle_overdue(&mut self, overdue: Overdue, now: Instant) {
        match overdue {
            Overdue::Accept { msg, id } => {
                if let Some(r) = self.owned.get_mut(&msg.room) {
                    r.last_id = r.last_id.max(Some(id));
                }
                self.accept_local(msg, id, id.timestamp_ms(), now);
            }
            Overdue::Refuse(msg) => {
                self.metrics.message(Outcome::Unavailable);
                let text = "the message could not be confirmed by Redis in time and was not accepted; retry";
                self.error_to(msg.conn, ErrorCode::Unavailable, text, None, now);
                if let Some(cmid) = msg.client_msg_id {
                    self.published(msg.user.user_id, cmid, None, msg.conn, now);
                }
            }
        }
    }
}
