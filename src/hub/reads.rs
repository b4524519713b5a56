//! Reads answered later: history pages and joins with `since` whose answer
//! waits for the history's durable store (`pg::history`), and the admission
//! check in front of the message path.
//!
//! - **Admission**: a message is refused with `unavailable` before it is
//!   stamped while the history does not admit it (its write buffer is full;
//!   checked on the connection's core and again by the room owner).
//! - **Reads**: the history answers a page or a replay now, or starts a
//!   read named by an id of this core ([`Hub::next_id`]); the hub keeps
//!   what that read completes ([`Wait`]) and, when its rows arrive as a
//!   backend event ([`Hub::on_pg_rows`]), hands them to the history to be
//!   merged with memory as it is *then* (so a message accepted meanwhile is
//!   neither missed nor repeated) and answers. A deferred join counts the
//!   member only at that moment, so the replay and the live stream meet
//!   without a gap or a duplicate, exactly as with the in-memory store.
//!   With Redis too, the join first waits for the cluster-wide count (the
//!   room's subscription is in place by then), then reads, then counts and
//!   answers, with the cluster's `memberCount`.
//! - **Whole answers or errors** (contract section 4): a history page that
//!   needs the durable store and cannot have it is answered `unavailable`
//!   (a `history` frame) or 503 (the HTTP route), never with the part
//!   memory has. A join with `since` in the same case still joins: the
//!   join itself is served in full, and its replay is memory's part with
//!   `recovered:false`, which tells the client that the replay is not the
//!   whole gap (its `history` pages then get `unavailable` until Postgres
//!   answers again). Refusing the join would cost the client its live
//!   stream for a backlog it can page later.
//!
//! The wait table is bounded by the reads in flight, which the history
//! bounds (`pg::history::MAX_PG_READS`); every read gets exactly one reply
//! (a lost one reads as a failure), so every wait is removed.

use std::sync::Arc;
use std::time::Instant;

use super::Hub;
use crate::history::{Page, Replaying};
use crate::metrics::Outcome;
use crate::pg::ReadResult;
use crate::protocol::{ErrorCode, MessageId};
use crate::shard::{Answer, ConnId, JoinAnswer, JoinTicket, Query, ShardMsg};

/// Text of the `unavailable` error frame.
pub const UNAVAILABLE_TEXT: &str =
    "history storage is unavailable and its buffer is full; the message was not accepted, retry later";

/// Text of the `unavailable` error frame answering a `history` frame the
/// store could not answer in full.
pub const HISTORY_UNAVAILABLE_TEXT: &str =
    "history storage is unavailable: the page could not be read in full; retry later";

/// Who receives a deferred answer: request `req` of core `core`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    /// Core that asked: the answer is sent there (a call when it is this core).
    pub core: usize,
    /// The asker's request id, echoed in [`ShardMsg::Answer`] to find its waiter.
    pub req: u64,
}

/// A read this core's history sent, and what its rows complete.
#[derive(Debug)]
pub(super) enum Wait {
    /// A history page for `origin`.
    Page {
        /// Who gets the page once the rows are merged with memory.
        origin: Origin,
        /// Room id: memory is read again for it when the rows arrive.
        room: Arc<str>,
        /// Exclusive upper bound, as asked (None: up to the newest).
        before: Option<MessageId>,
        /// Exclusive lower bound, as asked: with it the page keeps the oldest after it, without
        /// it the newest.
        after: Option<MessageId>,
        /// The page's limit, applied again to the merge of rows and memory.
        limit: usize,
    },
    /// An operator's delete of a message older than memory: the rows say
    /// whether it exists.
    Delete {
        /// Who gets the outcome (204 or 404).
        origin: Origin,
        /// Room id of the message.
        room: Arc<str>,
        /// The message to delete.
        id: MessageId,
        /// The admin, for the audit record.
        actor: Arc<str>,
        /// When the admin acted, ms since the Unix epoch.
        at_ms: u64,
    },
    /// Another instance's delete of a message older than memory: removed
    /// here if the rows hold it; nobody waits for the outcome.
    Forget {
        /// Room id of the message.
        room: Arc<str>,
        /// The deleted message.
        id: MessageId,
    },
    /// A join with `since`, answered once the older rows are in.
    Join {
        /// The member's core.
        core: usize,
        /// The joining connection, named in the answer so its core finds it.
        conn: ConnId,
        /// The joining user: counted in the room when the rows arrive.
        user: Arc<str>,
        /// Room id joined (owned by this core).
        room: Arc<str>,
        /// The client's `since`: the replay is the messages after it.
        since: MessageId,
        /// False for a repeated join (answered, not counted).
        count: bool,
        /// The member core's number for the join, echoed in the answer.
        ticket: JoinTicket,
        /// The connection negotiated permessage-deflate (counted with it).
        deflate: bool,
        /// Distinct users of the room cluster-wide, from the broker before
        /// the read was sent (None: counted here, or unknown); the answer's
        /// `memberCount` is at least this.
        cluster: Option<usize>,
    },
}

impl Hub {
    /// True while the history refuses new messages (its durable write
    /// buffer is full): they are refused with `unavailable`.
    pub fn durable_full(&self) -> bool {
        !self.history.admit()
    }

    /// A fresh id of this core (queries and reads share the counter).
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Room owner: refuses a message because the write buffer is full.
    pub(super) fn refuse_unavailable(
        &mut self,
        user: Arc<str>,
        conn: ConnId,
        client_msg_id: Option<Box<str>>,
        now: Instant,
    ) {
        self.metrics.message(Outcome::Unavailable);
        self.error_to(conn, ErrorCode::Unavailable, UNAVAILABLE_TEXT, None, now);
        if let Some(cmid) = client_msg_id {
            self.published(user, cmid, None, conn, now);
        }
    }

    /// Answers `query` asked by core `from` as request `req`: now, or, for
    /// a history page the history has to read, once its rows arrive.
    pub(super) fn answer_query(&mut self, from: usize, req: u64, query: Query, now: Instant) {
        let origin = Origin { core: from, req };
        match query {
            Query::History {
                room,
                before,
                after,
                limit,
            } => {
                let read = self.next_id();
                let answer = match self.history.read_page(read, &room, before, after, limit) {
                    Page::Now(page) => Answer::Messages(page.into_iter().map(|m| m.json).collect()),
                    Page::Unavailable => Answer::Unavailable,
                    Page::Pending => {
                        let wait = Wait::Page {
                            origin,
                            room,
                            before,
                            after,
                            limit,
                        };
                        self.reads.insert(read, wait);
                        return;
                    }
                };
                self.deliver_answer(origin, answer, now);
            }
            Query::Delete {
                room,
                id,
                actor,
                at_ms,
            } => self.delete_at_owner(origin, room, id, actor, at_ms, now),
            Query::Ban(change) => self.ban_at_owner(origin, *change, now),
            query => {
                let answer = self.answer(query);
                self.deliver_answer(origin, answer, now);
            }
        }
    }

    /// Room owner: asks the history for the replay of a join with `since`.
    /// Some(replay) when it answers now; None when it started a read (the
    /// join is answered by [`Hub::on_pg_rows`], counted then). `cluster`
    /// is the room's cluster-wide count when the broker gave one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replay_or_defer(
        &mut self,
        core: usize,
        conn: ConnId,
        user: &Arc<str>,
        room: &Arc<str>,
        since: MessageId,
        count: bool,
        ticket: JoinTicket,
        deflate: bool,
        cluster: Option<usize>,
    ) -> Option<crate::shard::Replay> {
        let read = self.next_id();
        match self.history.read_replay(read, room, since) {
            Replaying::Now(replay) => Some(replay),
            Replaying::Pending => {
                let wait = Wait::Join {
                    core,
                    conn,
                    user: user.clone(),
                    room: room.clone(),
                    since,
                    count,
                    ticket,
                    deflate,
                    cluster,
                };
                self.reads.insert(read, wait);
                None
            }
        }
    }

    /// A deferred answer to its asker.
    pub(super) fn deliver_answer(&mut self, origin: Origin, answer: Answer, now: Instant) {
        if origin.core == self.core {
            self.on_answer(origin.req, answer, now);
        } else {
            let msg = ShardMsg::Answer {
                req: origin.req,
                answer,
            };
            self.outbox.send(origin.core, msg);
        }
    }

    /// The rows of read `read` (or its failure): completes the page or
    /// join waiting for them, merged with memory as it is now.
    pub fn on_pg_rows(&mut self, read: u64, rows: ReadResult, now: Instant) {
        let Some(wait) = self.reads.remove(&read) else {
            return;
        };
        match wait {
            Wait::Page {
                origin,
                room,
                before,
                after,
                limit,
            } => {
                let answer = match self.history.page_rows(rows, &room, before, after, limit) {
                    Some(page) => Answer::Messages(page.into_iter().map(|m| m.json).collect()),
                    None => Answer::Unavailable,
                };
                self.deliver_answer(origin, answer, now);
            }
            Wait::Delete {
                origin,
                room,
                id,
                actor,
                at_ms,
            } => self.delete_rows(origin, rows, room, id, actor, at_ms, now),
            Wait::Forget { room, id } => {
                let _ = self.history.delete_rows(rows, &room, id);
            }
            Wait::Join {
                core,
                conn,
                user,
                room,
                since,
                count,
                ticket,
                deflate,
                cluster,
            } => {
                // Count the member and take the replay in one step, as a
                // synchronous join does: later messages reach it live.
                let local_count = self.join_owner(&room, user.clone(), core, count, deflate);
                let member_count = cluster.map_or(local_count, |c| c.max(local_count));
                let replay = self.history.replay_rows(rows, &room, since);
                let answer = JoinAnswer {
                    room,
                    user,
                    conn,
                    member_count,
                    replay,
                    ticket,
                    counted: count,
                    deflate,
                };
                if core == self.core {
                    self.joined(answer, now);
                } else {
                    self.outbox.send(core, ShardMsg::Joined(Box::new(answer)));
                }
            }
        }
    }
}
