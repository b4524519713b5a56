//! User owner (`shard_for(user)`): the user's dedupe window and rate
//! limit (every message passes here before its room's owner), and the
//! user's live connection count (online on the first, offline after the
//! last, over MAX_CONNECTIONS_PER_USER closed).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::{Hub, TOO_MANY_CONNECTIONS_CLOSE};
use crate::broker::OfflineCheck;
use crate::dedupe::Begin;
use crate::metrics::{CloseReason, Outcome};
use crate::protocol::{self, ErrorCode, MessageId};
use crate::ratelimit::Decision;
use crate::shard::{ConnId, FrameKind, Publish, ShardMsg};
use crate::ws;

impl Hub {
    /// A checked message from a local client: to the user's owner.
    pub fn publish(&mut self, p: Box<Publish>, now: Instant, wall: SystemTime) {
        let owner = self.owner(&p.user.user_id);
        if owner == self.core {
            self.publish_user_owner(p, now, wall);
        } else {
            self.outbox.send(owner, ShardMsg::Publish(p));
        }
    }

    /// User owner: dedupe and rate limit, then to the room's owner.
    pub(super) fn publish_user_owner(&mut self, p: Box<Publish>, now: Instant, wall: SystemTime) {
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

    /// Tells the user's owner how a publish with a `clientMsgId` ended.
    pub(super) fn published(
        &mut self,
        user: Arc<str>,
        client_msg_id: Box<str>,
        outcome: Option<(MessageId, Arc<str>)>,
        now: Instant,
    ) {
        let owner = self.owner(&user);
        if owner != self.core {
            let msg = ShardMsg::Published {
                user,
                client_msg_id,
                outcome,
            };
            return self.outbox.send(owner, msg);
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

    pub(super) fn user_online(
        &mut self,
        user: Arc<str>,
        room: Arc<str>,
        conn: ConnId,
        now: Instant,
    ) {
        let owner = self.owner(&user);
        if owner != self.core {
            let msg = ShardMsg::UserOnline { user, room, conn };
            return self.outbox.send(owner, msg);
        }
        let first = self.presence.set_online(&user);
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

    pub(super) fn user_offline(&mut self, user: Arc<str>, rooms: Vec<Arc<str>>, now: Instant) {
        let owner = self.owner(&user);
        if owner != self.core {
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
