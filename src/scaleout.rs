//! One core's side of the Redis scale-out: what it handed to the Redis
//! thread and is waiting for, and the commands it sends there. The hub
//! (`hub.rs`) owns one of these per core when REDIS_URL is set and calls it
//! at its few hook points; without REDIS_URL there is none and the hub's
//! paths are the single-node ones.
//!
//! Waiting state is bounded:
//! - in-flight messages: each is answered by its own copy coming back on the
//!   subscription or by [`crate::broker::Event::PublishFailed`]; one whose
//!   copy never comes (the subscription broke right after the publish) is
//!   forgotten after [`ECHO_TIMEOUT`] and counted in
//!   `chat_redis_echo_lost_total`;
//! - pending joins and offline checks: the Redis thread answers every one
//!   (at once while Redis is down, else within its I/O timeout).
//!
//! No I/O here: commands go through a non-blocking `try_send`, and the
//! decisions (ids during an outage, what a full queue means) are plain
//! functions tested without Redis.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulid::Ulid;

use crate::auth::Identity;
use crate::broker::{Command, Link, PublishCmd};
use crate::envelope;
use crate::protocol::MessageId;
use crate::redis_metrics::RedisMetrics;
use crate::shard::{ConnId, FrameKind};

/// How long a published message may wait for its own copy.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// A message handed to Redis, waiting for its copy from the subscription.
#[derive(Debug)]
pub struct Inflight {
    /// The room.
    pub room: Arc<str>,
    /// The sender.
    pub user: Identity,
    /// Content after moderation (needed again if Redis fails).
    pub content: String,
    /// Moderation masked it (the audit record is written with the final id).
    pub masked: bool,
    /// The sender's idempotency key.
    pub client_msg_id: Option<Box<str>>,
    /// The sending connection (ack, errors).
    pub conn: ConnId,
    /// When the sending core received it (delivery latency).
    pub received_at: Instant,
    /// When it was handed to the Redis thread.
    pub sent_at: Instant,
}

/// A join waiting for the cluster-wide member count.
#[derive(Debug)]
pub struct PendingJoin {
    /// The room.
    pub room: Arc<str>,
    /// The joining user.
    pub user: Arc<str>,
    /// The joining connection.
    pub conn: ConnId,
    /// The core the connection runs on.
    pub from: usize,
    /// Recovery point.
    pub since: Option<MessageId>,
    /// False for a repeated join (answered, not counted).
    pub count: bool,
}

/// One core's scale-out state.
pub struct ScaleOut {
    /// The Redis thread.
    link: Link,
    /// This core.
    core: usize,
    /// Next token (in-flight messages and pending joins share the counter).
    next_token: u64,
    /// Messages waiting for their copy, by token.
    inflight: HashMap<u64, Inflight>,
    /// Joins waiting for a count, by token.
    joins: HashMap<u64, PendingJoin>,
}

impl ScaleOut {
    /// The state of core `core`.
    pub fn new(link: Link, core: usize) -> ScaleOut {
        ScaleOut {
            link,
            core,
            next_token: 0,
            inflight: HashMap::new(),
            joins: HashMap::new(),
        }
    }

    /// Whether Redis is up: messages are sequenced there, joins counted there.
    pub fn up(&self) -> bool {
        self.link.up()
    }

    /// Counters shared with the Redis thread.
    pub fn metrics(&self) -> &RedisMetrics {
        &self.link.metrics
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Hands a moderated message to Redis for sequencing. Gives it back when
    /// the command queue is full (the caller refuses it with `unavailable`).
    pub fn publish(&mut self, msg: Inflight, floor: Option<Ulid>) -> Result<(), Box<Inflight>> {
        let token = self.token();
        let (head, tail) = envelope::message_parts(
            self.link.instance(),
            token,
            &msg.user.user_id,
            &msg.user.username,
            &msg.content,
        );
        let cmd = Command::Publish(Box::new(PublishCmd {
            core: self.core,
            token,
            room: msg.room.clone(),
            head,
            tail,
            floor,
        }));
        match self.link.try_send(cmd) {
            Ok(()) => {
                self.inflight.insert(token, msg);
                Ok(())
            }
            Err(_) => {
                RedisMetrics::inc(&self.link.metrics.dropped_messages);
                Err(Box::new(msg))
            }
        }
    }

    /// The in-flight message of `token` (its copy arrived, or it failed).
    pub fn take_inflight(&mut self, token: u64) -> Option<Inflight> {
        self.inflight.remove(&token)
    }

    /// Forgets in-flight messages whose copy is overdue; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.inflight.len();
        self.inflight
            .retain(|_, m| now.saturating_duration_since(m.sent_at) < ECHO_TIMEOUT);
        let lost = before - self.inflight.len();
        for _ in 0..lost {
            RedisMetrics::inc(&self.link.metrics.echo_lost);
        }
        lost
    }

    /// Publishes a typing or presence frame (a WebSocket frame already
    /// delivered on this instance) to the other instances. Best effort for
    /// typing; a presence frame that does not fit is counted as dropped.
    pub fn relay(&self, room: &Arc<str>, kind: FrameKind, frame: &[u8]) {
        if !self.up() {
            return; // nobody else is reachable; presence is rewritten on return
        }
        let payload = envelope::relay(self.link.instance(), kind, ws_payload(frame));
        let cmd = Command::Relay {
            room: room.clone(),
            kind,
            payload,
        };
        if self.link.try_send(cmd).is_err() && kind == FrameKind::Presence {
            RedisMetrics::inc(&self.link.metrics.dropped_presence);
        }
    }

    /// Queues a presence change; a full queue is counted and repaired by a
    /// resync of every core's state.
    fn presence(&self, cmd: Command) -> bool {
        if self.link.try_send(cmd).is_ok() {
            return true;
        }
        RedisMetrics::inc(&self.link.metrics.dropped_presence);
        self.link.metrics.resync.store(true, Ordering::Relaxed);
        false
    }

    /// The user came online on this instance.
    pub fn online(&self, user: Arc<str>) {
        self.presence(Command::Online(user));
    }

    /// The user's last connection here closed. Ok: the answer
    /// (`OfflineChecked`) decides about the offline frames; Err (the queue
    /// was full) gives the rooms back: announce offline now.
    pub fn offline(&self, user: Arc<str>, rooms: Vec<Arc<str>>) -> Result<(), Vec<Arc<str>>> {
        let cmd = Command::Offline {
            core: self.core,
            user,
            rooms,
        };
        match self.link.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(back) => {
                RedisMetrics::inc(&self.link.metrics.dropped_presence);
                self.link.metrics.resync.store(true, Ordering::Relaxed);
                match back {
                    Command::Offline { rooms, .. } => Err(rooms),
                    _ => Err(Vec::new()),
                }
            }
        }
    }

    /// The user is now in the room on this instance.
    pub fn room_add(&self, room: Arc<str>, user: Arc<str>) {
        self.presence(Command::RoomAdd(room, user));
    }

    /// The user is no longer in the room on this instance.
    pub fn room_remove(&self, room: Arc<str>, user: Arc<str>) {
        self.presence(Command::RoomRemove(room, user));
    }

    /// Asks for the cluster-wide member count of a join. Gives the join back
    /// when the queue is full (answer it with the local count).
    pub fn join(&mut self, join: PendingJoin) -> Result<(), PendingJoin> {
        let token = self.token();
        let cmd = Command::Join {
            core: self.core,
            token,
            room: join.room.clone(),
            user: join.user.clone(),
        };
        match self.link.try_send(cmd) {
            Ok(()) => {
                self.joins.insert(token, join);
                Ok(())
            }
            Err(_) => Err(join),
        }
    }

    /// The pending join of `token`.
    pub fn take_join(&mut self, token: u64) -> Option<PendingJoin> {
        self.joins.remove(&token)
    }

    /// Sends this core's whole presence state (after a resync request).
    pub fn snapshot(&self, online: Vec<Arc<str>>, rooms: Vec<(Arc<str>, Vec<Arc<str>>)>) {
        self.presence(Command::Snapshot {
            core: self.core,
            online,
            rooms,
        });
    }
}

/// The payload of a server WebSocket text frame (unmasked, so the header is
/// 2, 4 or 10 bytes by its length byte).
pub fn ws_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

/// The id of a message sequenced locally while Redis is down: the core's
/// generator's id, but always above the room's last id (which may come from
/// Redis, whose clock may be ahead), so the room's ids keep increasing.
pub fn local_id(generated: Ulid, last: Option<Ulid>) -> Ulid {
    match last {
        Some(last) if generated <= last => last.increment().unwrap_or(generated),
        _ => generated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{BackendHealth, State};

    fn inflight(now: Instant) -> Inflight {
        Inflight {
            room: Arc::from("r"),
            user: Identity {
                user_id: Arc::from("ann"),
                username: Arc::from("Ann"),
            },
            content: "hi".into(),
            masked: false,
            client_msg_id: None,
            conn: ConnId::new(0, 1),
            received_at: now,
            sent_at: now,
        }
    }

    #[test]
    fn a_full_queue_gives_work_back_and_counts_it() {
        let health = Arc::new(BackendHealth::default());
        health.redis.set(State::Up);
        let (link, mut rx) = Link::detached(1, "0123456789abcdef", health.clone());
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        assert!(so.up());
        let t0 = Instant::now();
        assert!(so.publish(inflight(t0), None).is_ok());
        let back = so.publish(inflight(t0), None).unwrap_err();
        assert_eq!(back.content, "hi");
        assert_eq!(metrics.dropped_messages.load(Ordering::Relaxed), 1);
        // The queued command carries the envelope and the token.
        let Ok(Command::Publish(p)) = rx.try_recv() else {
            panic!("expected a publish");
        };
        assert_eq!(p.token, 1);
        assert_eq!(&p.head[..], b"m0123456789abcdef");
        assert!(so.take_inflight(p.token).is_some());
        assert!(so.take_inflight(p.token).is_none());
        // Presence that does not fit: counted, resync asked, rooms given back.
        assert!(so.offline(Arc::from("ann"), vec![]).is_ok());
        let rooms = so.offline(Arc::from("bob"), vec![Arc::from("r")]);
        assert_eq!(rooms, Err(vec![Arc::from("r")]));
        assert_eq!(metrics.dropped_presence.load(Ordering::Relaxed), 1);
        assert!(metrics.resync.load(Ordering::Relaxed));
        // A join that does not fit is answered locally by the caller.
        let join = PendingJoin {
            room: Arc::from("r"),
            user: Arc::from("cat"),
            conn: ConnId::new(0, 2),
            from: 0,
            since: None,
            count: true,
        };
        assert!(so.join(join).is_err());
        health.redis.set(State::Down);
        assert!(!so.up());
    }

    #[test]
    fn overdue_messages_are_forgotten_and_counted() {
        let health = Arc::new(BackendHealth::default());
        let (link, _rx) = Link::detached(8, "0123456789abcdef", health);
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        so.publish(inflight(t0), None).unwrap();
        so.publish(inflight(t0 + Duration::from_secs(5)), None)
            .unwrap();
        assert_eq!(so.sweep(t0 + ECHO_TIMEOUT - Duration::from_millis(1)), 0);
        assert_eq!(so.sweep(t0 + ECHO_TIMEOUT), 1);
        assert_eq!(metrics.echo_lost.load(Ordering::Relaxed), 1);
        assert!(so.take_inflight(2).is_some(), "the younger one is kept");
    }

    #[test]
    fn payload_of_every_header_size() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let frame = crate::ws::encode_text(&payload);
            assert_eq!(ws_payload(&frame), &payload[..], "length {len}");
        }
        assert_eq!(ws_payload(&[]), b"");
    }

    #[test]
    fn local_ids_stay_above_the_rooms_last_id() {
        let early = Ulid::from_parts(1_000, 5);
        let late = Ulid::from_parts(2_000, 7);
        assert_eq!(local_id(late, None), late);
        assert_eq!(local_id(late, Some(early)), late);
        // Redis's clock was ahead: the next local id is the last one plus one.
        let next = local_id(early, Some(late));
        assert!(next > late);
        assert_eq!(next, Ulid::from_parts(2_000, 8));
        assert!(local_id(late, Some(late)) > late);
    }
}
