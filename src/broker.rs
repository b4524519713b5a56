//! The hub's cross-instance boundary: [`Broker`], what a room owner asks of
//! "the other instances" (sequencing, cluster-wide join counts, relaying
//! typing and presence, offline checks), with two implementations:
//!
//! - [`MemoryBroker`] (this file): a single node. This instance is the
//!   whole cluster, so it assigns every id itself, its own count is the
//!   count, there is nobody to relay to and nobody else a user could be
//!   online with. Every answer is `Now`; it never produces an event.
//! - [`crate::redis::link::ScaleOut`] (REDIS_URL set): the Redis
//!   scale-out. Ids come from Redis's sequencing script and join counts
//!   from its presence sets; both come back later as events of the Redis
//!   thread, which the hub hands to [`Broker::on_event`] and acts on what it
//!   returns ([`Arrival`]). While Redis is down it answers `Now` like the
//!   memory broker (ids above the room's last one, see [`local_id`]).
//!
//! **Presence mirroring is part of the broker, not of a Presence trait.**
//! The connection counts stay in [`crate::presence::PresenceStore`]
//! (memory, on the user's owner core, for both deployments); what Redis
//! adds is mirroring the transitions ([`Broker::online`],
//! [`Broker::offline`], [`Broker::room_add`], [`Broker::room_remove`],
//! [`Broker::snapshot`]). Those commands share the Redis thread's command
//! lane with the joins and publishes and must stay ordered with them (a
//! join's cluster-wide count includes the `room_add` sent before it), the
//! offline check is answered by a broker event, and a resync snapshot
//! combines the presence counts with the room memberships the hub holds,
//! so splitting them into a second Redis-backed object would split one
//! ordered command stream in two.
//!
//! The hub holds a `Box<dyn Broker>` chosen at start-up by the runtime and
//! branches only on what the broker answers, never on which one it is.

use std::sync::Arc;
use std::time::Instant;

use ulid::Ulid;

use crate::auth::Identity;
use crate::protocol::{ChatMessage, MessageId};
use crate::redis::worker::Event;
use crate::shard::{ConnId, FrameKind, JoinTicket};

/// A moderated message handed to the broker for its id.
#[derive(Debug)]
pub struct Inflight {
    /// Room id; its owner core (this one) gives the message its id.
    pub room: Arc<str>,
    /// The sender's verified identity: user id and display name go into the message.
    pub user: Identity,
    /// Content after moderation (needed again if Redis fails).
    pub content: String,
    /// Moderation masked it (the audit record is written with the final id).
    pub masked: bool,
    /// The sender's `clientMsgId` (None: none sent): echoed in the ack, released if refused.
    pub client_msg_id: Option<Box<str>>,
    /// The sending connection (ack, errors).
    pub conn: ConnId,
    /// When the sending core received it (delivery latency).
    pub received_at: Instant,
    /// When it was handed to the broker (the overdue timeouts count from it).
    pub sent_at: Instant,
}

/// What to do with an in-flight message whose own copy is overdue.
#[derive(Debug)]
pub enum Overdue {
    /// The script's reply gave its id: accept it (store, ack, deliver here).
    Accept {
        /// The message to accept with `id`.
        msg: Inflight,
        /// The id Redis assigned (the one other instances delivered).
        id: Ulid,
    },
    /// Neither the copy nor the reply came: refuse it with `unavailable`
    /// and release its `clientMsgId`.
    Refuse(Inflight),
}

/// A join at its room's owner, waiting for its count.
#[derive(Debug)]
pub struct PendingJoin {
    /// Room id being joined (owned by this core).
    pub room: Arc<str>,
    /// The joining user: counted among the room's distinct users.
    pub user: Arc<str>,
    /// The joining connection, named in the answer so its core finds it.
    pub conn: ConnId,
    /// The core the connection runs on.
    pub from: usize,
    /// The client's `since` (None: no replay): the replay is the messages after it.
    pub since: Option<MessageId>,
    /// False for a repeated join (answered, not counted).
    pub count: bool,
    /// The member core's number for this join (0 for one not counted).
    pub ticket: JoinTicket,
    /// The connection negotiated permessage-deflate: the owner counts it
    /// among the room's compressed members (a compressed copy is made only
    /// for rooms that have one).
    pub deflate: bool,
}

/// How a moderated message gets its id.
#[derive(Debug)]
pub enum Sequencing {
    /// This instance assigns it: accept the message now with `id`.
    Now {
        /// The message, given back.
        msg: Inflight,
        /// The id this core's generator assigned (monotonic, hence per room).
        id: MessageId,
        /// Its acceptance time, ms since the Unix epoch.
        timestamp_ms: u64,
    },
    /// Handed to the cluster: the id comes back as an event
    /// ([`Arrival::Message`], [`Arrival::Settle`] or [`Arrival::Fallback`]).
    Pending,
    /// It could not be handed over (the command queue is full): refuse it
    /// with `unavailable`.
    Refused(Inflight),
}

/// How a join is counted.
#[derive(Debug)]
pub enum Counting {
    /// From this instance's members alone: finish the join now.
    Now(PendingJoin),
    /// Cluster-wide: the count comes back as [`Arrival::Counted`].
    Pending,
}

/// Whether a user whose last connection here closed is offline.
#[derive(Debug, PartialEq, Eq)]
pub enum OfflineCheck {
    /// Yes: announce `offline` in these rooms now.
    Now(Vec<Arc<str>>),
    /// Maybe online elsewhere: answered by [`Arrival::OfflineChecked`].
    Pending,
}

/// What a broker event asks of the hub.
#[derive(Debug)]
pub enum Arrival {
    /// A sequenced message of a room this core owns, to accept and deliver;
    /// `own` is this instance's in-flight message when it sent it (ack it).
    Message {
        /// The message with its cluster-wide id.
        message: ChatMessage,
        /// This instance's message, when it is one.
        own: Option<Inflight>,
        /// When the subscription delivered it.
        arrived: Instant,
    },
    /// Another instance's typing or presence frame, for the local members.
    Relay {
        /// Room id (from the channel name) whose local members get the frame.
        room: Arc<str>,
        /// Typing or presence.
        kind: FrameKind,
        /// The WebSocket frame.
        frame: bytes::Bytes,
    },
    /// Own messages whose copies will not come: settle them.
    Settle(Vec<Overdue>),
    /// An own message the cluster could not sequence: sequence it here
    /// (above the room's last id, [`local_id`]).
    Fallback(Inflight),
    /// The cluster-wide count of a pending join (None: unknown).
    Counted(PendingJoin, Option<usize>),
    /// The answer to [`OfflineCheck::Pending`].
    OfflineChecked {
        /// The user whose last connection here closed.
        user: Arc<str>,
        /// Rooms for the presence frames.
        rooms: Vec<Arc<str>>,
        /// Still online on another instance: no `offline` frame.
        elsewhere: bool,
    },
    /// Send this core's whole presence state ([`Broker::snapshot`]).
    Resync,
    /// Another instance's operator action, to carry out here too.
    Operator(crate::redis::envelope::Operator),
}

/// Cross-instance fan-out and sequencing, one per core (module doc).
pub trait Broker {
    /// Gives a moderated message its id: `local` (this core's generator,
    /// stamped at `timestamp_ms`) or the cluster's; `floor` is the room's
    /// last accepted id, which a cluster id must exceed.
    fn sequence(
        &mut self,
        msg: Inflight,
        local: MessageId,
        timestamp_ms: u64,
        floor: Option<MessageId>,
    ) -> Sequencing;
    /// Counts a first join at its room's owner.
    fn count_join(&mut self, join: PendingJoin) -> Counting;
    /// A typing or presence frame delivered here, for the other instances.
    fn relay(&self, room: &Arc<str>, kind: FrameKind, frame: &[u8]);
    /// An operator deleted message `id` of `room` here: the other instances
    /// remove it too and tell their members. Nobody else to tell by default.
    fn delete(&self, _room: &Arc<str>, _id: MessageId) {}
    /// An operator banned `user` until `until_ms` (None: lifted the ban) at
    /// `at_ms`: the other instances apply it too, and it is kept for
    /// instances that start later. Nobody else to tell by default.
    fn ban(&self, _user: &Arc<str>, _until_ms: Option<u64>, _at_ms: u64) {}
    /// An operator disconnected `user`: the other instances close the
    /// user's connections too. Nobody else to tell by default.
    fn disconnect(&self, _user: &Arc<str>) {}
    /// Own messages whose copies are overdue at `now`.
    fn sweep(&mut self, now: Instant) -> Vec<Overdue>;
    /// What one event of the broker's thread asks of the hub (None: only
    /// the broker's own bookkeeping).
    fn on_event(&mut self, event: Event, now: Instant) -> Option<Arrival>;
    /// `user`'s first connection on this instance opened.
    fn online(&self, user: Arc<str>);
    /// `user`'s last connection on this instance closed, with these rooms.
    fn offline(&self, user: Arc<str>, rooms: Vec<Arc<str>>) -> OfflineCheck;
    /// `user` is now in `room` on this instance.
    fn room_add(&self, room: Arc<str>, user: Arc<str>);
    /// `user` is no longer in `room` on this instance.
    fn room_remove(&self, room: Arc<str>, user: Arc<str>);
    /// This core's whole presence state (answer to [`Arrival::Resync`]).
    fn snapshot(&self, online: Vec<Arc<str>>, rooms: Vec<(Arc<str>, Vec<Arc<str>>)>);
}

/// The single-node broker: this instance is the cluster (module doc).
#[derive(Debug, Default)]
pub struct MemoryBroker;

impl Broker for MemoryBroker {
    fn sequence(
        &mut self,
        msg: Inflight,
        local: MessageId,
        timestamp_ms: u64,
        _floor: Option<MessageId>,
    ) -> Sequencing {
        // The core's generator is monotonic, hence so is each room it owns.
        Sequencing::Now {
            msg,
            id: local,
            timestamp_ms,
        }
    }

    fn count_join(&mut self, join: PendingJoin) -> Counting {
        Counting::Now(join)
    }

    fn relay(&self, _room: &Arc<str>, _kind: FrameKind, _frame: &[u8]) {}

    fn sweep(&mut self, _now: Instant) -> Vec<Overdue> {
        Vec::new()
    }

    fn on_event(&mut self, _event: Event, _now: Instant) -> Option<Arrival> {
        None // there is no broker thread to send one
    }

    fn online(&self, _user: Arc<str>) {}

    fn offline(&self, _user: Arc<str>, rooms: Vec<Arc<str>>) -> OfflineCheck {
        OfflineCheck::Now(rooms)
    }

    fn room_add(&self, _room: Arc<str>, _user: Arc<str>) {}

    fn room_remove(&self, _room: Arc<str>, _user: Arc<str>) {}

    fn snapshot(&self, _online: Vec<Arc<str>>, _rooms: Vec<(Arc<str>, Vec<Arc<str>>)>) {}
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

/// A plain message of ann's in room `r`, handed over at `now` (tests of the
/// brokers).
#[cfg(test)]
pub(crate) fn test_inflight(now: Instant) -> Inflight {
    Inflight {
        room: Arc::from("r"),
        user: Identity {
            user_id: Arc::from("ann"),
            username: Arc::from("Ann"),
            admin: false,
        },
        content: "hi".into(),
        masked: false,
        client_msg_id: None,
        conn: ConnId::new(0, 1),
        received_at: now,
        sent_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflight() -> Inflight {
        test_inflight(Instant::now())
    }

    #[test]
    fn the_memory_broker_answers_everything_now() {
        let mut broker = MemoryBroker;
        let local = Ulid::from_parts(1_000, 1);
        // The floor is ignored: this core's own id is the room's next one.
        let floor = Some(Ulid::from_parts(5_000, 1));
        match broker.sequence(inflight(), local, 1_000, floor) {
            Sequencing::Now {
                msg,
                id,
                timestamp_ms,
            } => assert_eq!(
                (msg.content.as_str(), id, timestamp_ms),
                ("hi", local, 1_000)
            ),
            other => panic!("expected Now, got {other:?}"),
        }
        let join = PendingJoin {
            room: Arc::from("r"),
            user: Arc::from("ann"),
            conn: ConnId::new(0, 1),
            from: 0,
            since: None,
            count: true,
            ticket: 1,
            deflate: false,
        };
        assert!(matches!(broker.count_join(join), Counting::Now(j) if &*j.user == "ann"));
        let rooms = vec![Arc::from("r"), Arc::from("s")];
        assert_eq!(
            broker.offline(Arc::from("ann"), rooms.clone()),
            OfflineCheck::Now(rooms)
        );
        assert!(broker.sweep(Instant::now()).is_empty());
        assert!(broker.on_event(Event::Resync, Instant::now()).is_none());
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
