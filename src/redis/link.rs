//! One core's side of the Redis scale-out: what it handed to the Redis
//! thread and is waiting for, and the commands it sends there. The hub
//! (`hub/mod.rs`) owns one of these per core when REDIS_URL is set and calls it
//! at its few hook points; without REDIS_URL there is none and the hub's
//! paths are the single-node ones.
//!
//! Waiting state is bounded:
//! - in-flight messages: each is answered by its own copy coming back on the
//!   subscription or by [`crate::redis::worker::Event::PublishFailed`]. The
//!   script's reply ([`crate::redis::worker::Event::Replied`]) records the id Redis
//!   gave it. One whose copy is overdue ([`ECHO_TIMEOUT`], counted in
//!   `chat_redis_echo_lost_total`: the subscription broke right after the
//!   publish) is settled by [`ScaleOut::sweep`]: accepted with the reply's
//!   id (stored, acknowledged, delivered on this instance) or, when no
//!   reply came within [`REPLY_TIMEOUT`] either, refused with
//!   `unavailable`. Either way its `clientMsgId` is released, and a copy
//!   that still comes back afterwards is recognised and dropped (see
//!   [`Settled`]), so nothing is delivered twice here;
//! - pending joins and offline checks: the Redis thread answers every one
//!   (at once while Redis is down, else within its I/O timeout).
//!
//! No I/O here: commands go through a non-blocking `try_send`, and the
//! decisions (ids during an outage, what a full queue means) are plain
//! functions tested without Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulid::Ulid;

use crate::broker::{Arrival, Broker, Counting, OfflineCheck, Sequencing};
pub use crate::broker::{Inflight, Overdue, PendingJoin};
use crate::protocol::ChatMessage;
use crate::protocol::MessageId;
use crate::redis::envelope::{self, Operator};
use crate::redis::stats::RedisMetrics;
use crate::redis::worker::{Command, Event, Link, PublishCmd, Sequenced};
use crate::shard::FrameKind;

/// How long a published message may wait for its own copy.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a published message whose copy is overdue may still wait for
/// the script's reply (the Redis thread answers every publish with the
/// reply or a failure, each within its 1 s I/O timeout once it takes the
/// command; this bounds a thread stuck behind a full event queue). Past
/// it the message is refused with `unavailable`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a settled token is remembered, so that its copy arriving late
/// is dropped instead of delivered again. A copy later than this (the
/// subscription stalled for minutes) would be delivered a second time on
/// this instance, without an ack and without being stored again.
pub const SETTLED_TTL: Duration = Duration::from_secs(300);
/// Most settled tokens remembered per core; when full the oldest is
/// forgotten first (its late copy, if one ever came, would be delivered
/// again on this instance as above).
pub const MAX_SETTLED: usize = 65_536;

/// A message handed to Redis and what is known of it so far.
#[derive(Debug)]
struct Waiting {
    /// What to accept when its copy comes, or to accept or refuse when the sweep finds it
    /// overdue (its `sent_at` starts the timeout).
    msg: Inflight,
    /// The id from the script's reply, once it came.
    id: Option<Ulid>,
}

/// Tokens of in-flight messages settled without their own copy (accepted
/// or refused at the timeout, or sequenced locally after a failed publish),
/// remembered for [`SETTLED_TTL`] so that a copy arriving late is dropped.
/// Bounded by [`MAX_SETTLED`]; when full the oldest is forgotten.
#[derive(Debug, Default)]
pub struct Settled {
    /// Tokens in the order they were settled, with when they may be
    /// forgotten.
    order: VecDeque<(u64, Instant)>,
    /// The same tokens, for lookup.
    tokens: HashSet<u64>,
}

impl Settled {
    /// Remembers `token` until `now + SETTLED_TTL`.
    pub fn insert(&mut self, token: u64, now: Instant) {
        if self.tokens.contains(&token) {
            return;
        }
        if self.order.len() >= MAX_SETTLED {
            if let Some((old, _)) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
        self.tokens.insert(token);
        self.order.push_back((token, now + SETTLED_TTL));
    }

    /// Whether `token` was settled (its copy must not be delivered).
    pub fn contains(&self, token: u64) -> bool {
        self.tokens.contains(&token)
    }

    /// Forgets tokens remembered long enough.
    pub fn sweep(&mut self, now: Instant) {
        while let Some(&(token, until)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            self.tokens.remove(&token);
        }
    }

    /// Tokens remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// One core's scale-out state.
pub struct ScaleOut {
    /// Command lane to the Redis thread (this core's), and the shared Redis counters.
    link: Link,
    /// This core's index: sent with publishes, joins and offlines so answers come back here.
    core: usize,
    /// Next token (in-flight messages and pending joins share the counter).
    next_token: u64,
    /// Messages waiting for their copy, by token. Bounded by the publish
    /// rate times [`REPLY_TIMEOUT`]: every one is settled by its copy, a
    /// failure, or the sweep.
    inflight: HashMap<u64, Waiting>,
    /// Tokens settled without their copy: a late copy is dropped.
    settled: Settled,
    /// Joins waiting for a count, by token.
    joins: HashMap<u64, PendingJoin>,
}

impl ScaleOut {
    /// The state of core `core` (its commands go on that core's lane).
    pub fn new(link: Link, core: usize) -> ScaleOut {
        ScaleOut {
            link: link.for_core(core),
            core,
            next_token: 0,
            inflight: HashMap::new(),
            settled: Settled::default(),
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
                self.inflight.insert(token, Waiting { msg, id: None });
                Ok(())
            }
            Err(_) => {
                RedisMetrics::inc(&self.link.metrics.dropped_messages);
                Err(Box::new(msg))
            }
        }
    }

    /// The in-flight message of `token` (its copy arrived).
    pub fn take_inflight(&mut self, token: u64) -> Option<Inflight> {
        self.inflight.remove(&token).map(|w| w.msg)
    }

    /// The in-flight message of `token` whose publish failed; the token is
    /// remembered as settled (the caller sequences it locally), so a copy
    /// that Redis published all the same is not delivered here again.
    pub fn take_failed(&mut self, token: u64, now: Instant) -> Option<Inflight> {
        let waiting = self.inflight.remove(&token)?;
        self.settled.insert(token, now);
        Some(waiting.msg)
    }

    /// The script's reply for `token`: the id Redis gave it. Kept only
    /// while the message still waits for its copy (the copy may come
    /// first; then there is nothing left to do).
    pub fn replied(&mut self, token: u64, id: Ulid) {
        if let Some(w) = self.inflight.get_mut(&token) {
            w.id = Some(id);
        }
    }

    /// Whether the copy of `token` (this instance's own message) comes
    /// after its message was settled without it: drop it.
    pub fn is_settled(&self, token: u64) -> bool {
        self.settled.contains(token)
    }

    /// Settles the in-flight messages whose copy is overdue at `now`:
    /// accepted with the reply's id once [`ECHO_TIMEOUT`] has passed,
    /// refused once [`REPLY_TIMEOUT`] has passed without a reply either.
    /// Each overdue copy is counted once in `chat_redis_echo_lost_total`.
    pub fn sweep(&mut self, now: Instant) -> Vec<Overdue> {
        self.settled.sweep(now);
        let due: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, w)| {
                let age = now.saturating_duration_since(w.msg.sent_at);
                match w.id {
                    Some(_) => age >= ECHO_TIMEOUT,
                    None => age >= REPLY_TIMEOUT,
                }
            })
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for token in due {
            let Some(w) = self.inflight.remove(&token) else {
                continue;
            };
            RedisMetrics::inc(&self.link.metrics.echo_lost);
            self.settled.insert(token, now);
            out.push(match w.id {
                Some(id) => Overdue::Accept { msg: w.msg, id },
                None => Overdue::Refuse(w.msg),
            });
        }
        // Accepted in the order Redis sequenced them.
        out.sort_by_key(|o| match o {
            Overdue::Accept { id, .. } => Some(*id),
            Overdue::Refuse(_) => None,
        });
        out
    }

    /// The subscription was lost: every in-flight message whose reply gave
    /// its id is settled now (accepted), as its copy will not come; those
    /// still without a reply keep waiting for it (or for its failure).
    pub fn echoes_lost(&mut self, now: Instant) -> Vec<Overdue> {
        let known: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, w)| w.id.is_some())
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::with_capacity(known.len());
        for token in known {
            if let Some(Waiting { msg, id: Some(id) }) = self.inflight.remove(&token) {
                RedisMetrics::inc(&self.link.metrics.echo_lost);
                self.settled.insert(token, now);
                out.push(Overdue::Accept { msg, id });
            }
        }
        // Accepted in the order Redis sequenced them.
        out.sort_by_key(|o| match o {
            Overdue::Accept { id, .. } => Some(*id),
            Overdue::Refuse(_) => None,
        });
        out
    }

    /// Settled tokens remembered (for tests and metrics).
    pub fn settled_len(&self) -> usize {
        self.settled.len()
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

    /// Queues an operator action for the other instances. A full lane
    /// drops it, counted as an error and logged: the action then holds on
    /// this instance only (the operator sees it in the log and may repeat
    /// it).
    fn operator(&self, action: Operator) {
        if let Err(Command::Operator(action)) = self.link.try_send(Command::Operator(action)) {
            RedisMetrics::inc(&self.link.metrics.errors);
            tracing::warn!(
                ?action,
                "the Redis queue is full: this operator action holds on this instance only"
            );
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

/// The Redis scale-out as the hub's broker (see `crate::broker`).
impl Broker for ScaleOut {
    fn sequence(
        &mut self,
        msg: Inflight,
        local: MessageId,
        _timestamp_ms: u64,
        floor: Option<MessageId>,
    ) -> Sequencing {
        if !self.up() {
            // Sequenced here above the room's last id, stamped with the id's
            // own time (which that may have raised).
            RedisMetrics::inc(&self.metrics().local_fallback);
            let id = crate::broker::local_id(local, floor);
            let timestamp_ms = id.timestamp_ms();
            return Sequencing::Now {
                msg,
                id,
                timestamp_ms,
            };
        }
        match self.publish(msg, floor) {
            Ok(()) => Sequencing::Pending,
            Err(msg) => Sequencing::Refused(*msg),
        }
    }

    fn count_join(&mut self, join: PendingJoin) -> Counting {
        if !self.up() {
            return Counting::Now(join);
        }
        match self.join(join) {
            Ok(()) => Counting::Pending,
            Err(join) => Counting::Now(join),
        }
    }

    fn relay(&self, room: &Arc<str>, kind: FrameKind, frame: &[u8]) {
        ScaleOut::relay(self, room, kind, frame);
    }

    fn delete(&self, room: &Arc<str>, id: MessageId) {
        self.operator(Operator::Delete {
            r: room.to_string(),
            i: id.to_string(),
        });
    }

    fn ban(&self, user: &Arc<str>, until_ms: Option<u64>, _at_ms: u64) {
        self.operator(Operator::Ban {
            u: user.to_string(),
            t: until_ms,
        });
    }

    fn disconnect(&self, user: &Arc<str>) {
        self.operator(Operator::Disconnect {
            u: user.to_string(),
        });
    }

    fn sweep(&mut self, now: Instant) -> Vec<Overdue> {
        ScaleOut::sweep(self, now)
    }

    fn on_event(&mut self, event: Event, now: Instant) -> Option<Arrival> {
        match event {
            Event::Message(sequenced) => {
                let Sequenced {
                    room,
                    id,
                    own_token,
                    user_id,
                    username,
                    content,
                    arrived,
                } = *sequenced;
                // This instance's own message, settled without this copy
                // (accepted or refused when the copy was overdue, or
                // sequenced locally after a failed publish): already
                // delivered, stored and answered here, or refused; drop it.
                if own_token.is_some_and(|t| self.is_settled(t)) {
                    return None;
                }
                let own = own_token.and_then(|t| self.take_inflight(t));
                let message = ChatMessage {
                    id,
                    room_id: room,
                    user_id,
                    username,
                    content,
                    timestamp_ms: id.timestamp_ms(),
                };
                Some(Arrival::Message {
                    message,
                    own,
                    arrived,
                })
            }
            Event::Relay { room, kind, frame } => Some(Arrival::Relay { room, kind, frame }),
            Event::Replied { token, id } => {
                self.replied(token, id);
                None
            }
            Event::EchoesLost => Some(Arrival::Settle(self.echoes_lost(now))),
            Event::PublishFailed(token) => {
                // Sequenced here instead. Should Redis have run the script
                // all the same (its reply was lost), the copy it published
                // is dropped (the token is settled).
                let msg = self.take_failed(token, now)?;
                RedisMetrics::inc(&self.metrics().local_fallback);
                Some(Arrival::Fallback(msg))
            }
            Event::JoinCounted { token, count } => {
                let join = self.take_join(token)?;
                Some(Arrival::Counted(join, count))
            }
            Event::OfflineChecked {
                user,
                rooms,
                elsewhere,
            } => Some(Arrival::OfflineChecked {
                user,
                rooms,
                elsewhere,
            }),
            Event::Resync => Some(Arrival::Resync),
            Event::Operator(action) => Some(Arrival::Operator(action)),
        }
    }

    fn online(&self, user: Arc<str>) {
        ScaleOut::online(self, user);
    }

    fn offline(&self, user: Arc<str>, rooms: Vec<Arc<str>>) -> OfflineCheck {
        // Queued: the answer says whether the user is still online
        // elsewhere. A full queue gives the rooms back: announce now.
        match ScaleOut::offline(self, user, rooms) {
            Ok(()) => OfflineCheck::Pending,
            Err(rooms) => OfflineCheck::Now(rooms),
        }
    }

    fn room_add(&self, room: Arc<str>, user: Arc<str>) {
        ScaleOut::room_add(self, room, user);
    }

    fn room_remove(&self, room: Arc<str>, user: Arc<str>) {
        ScaleOut::room_remove(self, room, user);
    }

    fn snapshot(&self, online: Vec<Arc<str>>, rooms: Vec<(Arc<str>, Vec<Arc<str>>)>) {
        ScaleOut::snapshot(self, online, rooms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{BackendHealth, State};
    use crate::shard::ConnId;

    fn inflight(now: Instant) -> Inflight {
        crate::broker::test_inflight(now)
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
            ticket: 1,
            deflate: false,
        };
        assert!(so.join(join).is_err());
        health.redis.set(State::Down);
        assert!(!so.up());
    }

    fn with_cmid(mut msg: Inflight, cmid: &str) -> Inflight {
        msg.client_msg_id = Some(cmid.into());
        msg
    }

    #[test]
    fn an_overdue_echo_is_accepted_with_the_replys_id_and_its_late_copy_dropped() {
        let health = Arc::new(BackendHealth::default());
        let (link, _rx) = Link::detached(8, "0123456789abcdef", health);
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        so.publish(with_cmid(inflight(t0), "c-1"), None).unwrap();
        so.publish(inflight(t0 + Duration::from_secs(5)), None)
            .unwrap();
        let id = Ulid::from_parts(1_000, 42);
        so.replied(1, id);
        so.replied(2, Ulid::from_parts(1_000, 43));
        assert!(so
            .sweep(t0 + ECHO_TIMEOUT - Duration::from_millis(1))
            .is_empty());
        let due = so.sweep(t0 + ECHO_TIMEOUT);
        assert_eq!(due.len(), 1);
        let Overdue::Accept { msg, id: got } = &due[0] else {
            panic!("expected an accept, got {:?}", due[0]);
        };
        assert_eq!((*got, msg.client_msg_id.as_deref()), (id, Some("c-1")));
        assert_eq!(metrics.echo_lost.load(Ordering::Relaxed), 1);
        // Its copy arriving now is recognised: not delivered a second time.
        assert!(so.is_settled(1));
        assert!(so.take_inflight(1).is_none());
        // The younger one is kept, and its copy is delivered as usual.
        assert!(!so.is_settled(2));
        assert!(so.take_inflight(2).is_some());
        // Settled tokens are forgotten after SETTLED_TTL.
        assert!(so.sweep(t0 + ECHO_TIMEOUT + SETTLED_TTL).is_empty());
        assert!(!so.is_settled(1));
        assert_eq!(so.settled_len(), 0);
    }

    #[test]
    fn an_overdue_echo_without_a_reply_is_refused_after_the_reply_timeout() {
        let health = Arc::new(BackendHealth::default());
        let (link, _rx) = Link::detached(8, "0123456789abcdef", health);
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        so.publish(with_cmid(inflight(t0), "c-9"), None).unwrap();
        // No reply yet: the Redis thread still owes one, so it waits on.
        assert!(so.sweep(t0 + ECHO_TIMEOUT).is_empty());
        assert!(so
            .sweep(t0 + REPLY_TIMEOUT - Duration::from_millis(1))
            .is_empty());
        let due = so.sweep(t0 + REPLY_TIMEOUT);
        assert_eq!(due.len(), 1);
        let Overdue::Refuse(msg) = &due[0] else {
            panic!("expected a refusal, got {:?}", due[0]);
        };
        assert_eq!(msg.client_msg_id.as_deref(), Some("c-9"));
        assert_eq!(metrics.echo_lost.load(Ordering::Relaxed), 1);
        // A reply or copy arriving after the refusal changes nothing.
        so.replied(1, Ulid::from_parts(1_000, 1));
        assert!(so.is_settled(1));
        assert!(so.take_inflight(1).is_none());
        assert!(so.sweep(t0 + 2 * REPLY_TIMEOUT).is_empty());
    }

    #[test]
    fn a_lost_subscription_settles_what_redis_sequenced_at_once_in_id_order() {
        let health = Arc::new(BackendHealth::default());
        let (link, _rx) = Link::detached(8, "0123456789abcdef", health);
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        for cmid in ["a", "b", "c"] {
            so.publish(with_cmid(inflight(t0), cmid), None).unwrap();
        }
        // Replies for a and b (b sequenced first), none yet for c.
        so.replied(1, Ulid::from_parts(1_000, 9));
        so.replied(2, Ulid::from_parts(1_000, 8));
        let settled = so.echoes_lost(t0);
        let got: Vec<(Option<&str>, Ulid)> = settled
            .iter()
            .map(|o| match o {
                Overdue::Accept { msg, id } => (msg.client_msg_id.as_deref(), *id),
                Overdue::Refuse(m) => panic!("refused {m:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some("b"), Ulid::from_parts(1_000, 8)),
                (Some("a"), Ulid::from_parts(1_000, 9))
            ]
        );
        assert_eq!(metrics.echo_lost.load(Ordering::Relaxed), 2);
        assert!(so.is_settled(1) && so.is_settled(2) && !so.is_settled(3));
        // c still waits: its reply or its failure is owed.
        so.replied(3, Ulid::from_parts(1_000, 10));
        assert_eq!(so.echoes_lost(t0).len(), 1);
    }

    #[test]
    fn a_failed_publish_is_settled_so_a_late_copy_is_dropped() {
        let health = Arc::new(BackendHealth::default());
        let (link, _rx) = Link::detached(8, "0123456789abcdef", health);
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        so.publish(inflight(t0), None).unwrap();
        assert!(so.take_failed(1, t0).is_some());
        assert!(so.is_settled(1));
        assert!(so.take_failed(1, t0).is_none(), "answered once");
        assert!(so.sweep(t0 + REPLY_TIMEOUT).is_empty());
    }

    #[test]
    fn as_a_broker_a_down_redis_answers_now_and_an_up_one_later() {
        let health = Arc::new(BackendHealth::default());
        let (link, mut rx) = Link::detached(8, "0123456789abcdef", health.clone());
        let metrics = link.metrics.clone();
        let mut so = ScaleOut::new(link, 0);
        let t0 = Instant::now();
        let local = Ulid::from_parts(1_000, 5);
        let floor = Some(Ulid::from_parts(2_000, 7));
        // Down: sequenced here above the room's last id, stamped with it.
        match Broker::sequence(&mut so, inflight(t0), local, 1_000, floor) {
            Sequencing::Now {
                id, timestamp_ms, ..
            } => assert_eq!((id, timestamp_ms), (Ulid::from_parts(2_000, 8), 2_000)),
            other => panic!("expected Now, got {other:?}"),
        }
        assert_eq!(metrics.local_fallback.load(Ordering::Relaxed), 1);
        let join = || PendingJoin {
            room: Arc::from("r"),
            user: Arc::from("ann"),
            conn: ConnId::new(0, 2),
            from: 0,
            since: None,
            count: true,
            ticket: 1,
            deflate: false,
        };
        assert!(matches!(so.count_join(join()), Counting::Now(_)));
        assert!(rx.try_recv().is_err(), "nothing sent while down");
        // Up: handed to Redis, answered by events.
        health.redis.set(State::Up);
        assert!(matches!(
            Broker::sequence(&mut so, inflight(t0), local, 1_000, floor),
            Sequencing::Pending
        ));
        assert!(matches!(so.count_join(join()), Counting::Pending));
        let Ok(Command::Publish(p)) = rx.try_recv() else {
            panic!("expected a publish");
        };
        assert_eq!(p.floor, floor);
        let Ok(Command::Join { token, .. }) = rx.try_recv() else {
            panic!("expected a join");
        };
        let counted = so.on_event(
            Event::JoinCounted {
                token,
                count: Some(3),
            },
            t0,
        );
        assert!(matches!(counted, Some(Arrival::Counted(j, Some(3))) if &*j.user == "ann"));
        // The script's reply is the broker's own bookkeeping.
        let replied = so.on_event(
            Event::Replied {
                token: p.token,
                id: local,
            },
            t0,
        );
        assert!(replied.is_none());
    }

    #[test]
    fn settled_tokens_are_bounded_oldest_first() {
        let mut settled = Settled::default();
        let t0 = Instant::now();
        for token in 0..MAX_SETTLED as u64 + 2 {
            settled.insert(token, t0);
        }
        assert_eq!(settled.len(), MAX_SETTLED);
        assert!(!settled.contains(0) && !settled.contains(1));
        assert!(settled.contains(2) && settled.contains(MAX_SETTLED as u64 + 1));
        settled.insert(5, t0);
        assert_eq!(settled.len(), MAX_SETTLED, "a repeat is not added twice");
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
}
