//! The hub's use of the Postgres backend (only when DATABASE_URL is set).
//!
//! - **Admission**: a message is refused with `unavailable` before it is
//!   stamped while the write buffer is full (checked on the connection's
//!   core and again by the room owner).
//! - **Writes**: the room owner hands each accepted message and each audit
//!   record to the writer; the in-memory history stays the room's recent
//!   cache.
//! - **Reads**: a history page or a `since` recovery that memory cannot
//!   answer alone becomes a Postgres read; when its rows arrive the owner
//!   merges them with its memory as it is *then* (so a message accepted
//!   meanwhile is neither missed nor repeated) and answers. A deferred join
//!   counts the member only at that moment, so the replay and the live
//!   stream meet without a gap or a duplicate, exactly as with the
//!   in-memory store. A failed read is answered from memory. With Redis
//!   too, the join first waits for the cluster-wide count (the room's
//!   subscription is in place by then), then reads Postgres, then counts
//!   and answers: the same recovery as with Postgres alone, with the
//!   cluster's `memberCount`.
//! - **Whole answers or errors** (contract section 4): a history page that
//!   needs Postgres and cannot have it (reads shed at [`MAX_PG_READS`],
//!   the read could not be sent, or it failed) is answered `unavailable`
//!   (a `history` frame) or 503 (the HTTP route), never with the part
//!   memory has. A join with `since` in the same case still joins: the
//!   join itself is served in full, and its replay is memory's part with
//!   `recovered:false`, which tells the client that the replay is not the
//!   whole gap (its `history` pages then get `unavailable` until Postgres
//!   answers again). Refusing the join would cost the client its live
//!   stream for a backlog it can page later.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Hub, MAX_REPLAY};
use crate::metrics::Outcome;
use crate::moderation::AuditRecord;
use crate::pg::link::Durable;
use crate::pg::merge::{self, Pick};
use crate::pg::{MessageRow, ReadResult, ReadSpec, WriteItem};
use crate::protocol::{ChatMessage, ErrorCode, MessageId};
use crate::shard::{Answer, ConnId, JoinAnswer, Query, Replay, ShardMsg};

/// Postgres reads one core keeps in flight; beyond it reads are shed
/// (counted in `chat_pg_reads_total{outcome="shed"}`): a page is answered
/// `unavailable`, a join gets memory's replay with `recovered:false`. So
/// the wait table stays bounded.
pub const MAX_PG_READS: usize = 1024;

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
    /// The asking core.
    pub core: usize,
    /// Its request id.
    pub req: u64,
}

/// A Postgres read this core sent, and what its rows complete.
#[derive(Debug)]
pub(super) enum PgWait {
    /// A history page for `origin`.
    Page {
        /// Who asked.
        origin: Origin,
        /// Room.
        room: Arc<str>,
        /// Exclusive upper bound.
        before: Option<MessageId>,
        /// Exclusive lower bound.
        after: Option<MessageId>,
        /// Most messages.
        limit: usize,
    },
    /// A join with `since`, answered once the older rows are in.
    Join {
        /// The member's core.
        core: usize,
        /// The joining connection.
        conn: ConnId,
        /// The joining user.
        user: Arc<str>,
        /// Room.
        room: Arc<str>,
        /// Recovery point.
        since: MessageId,
        /// False for a repeated join (answered, not counted).
        count: bool,
        /// Distinct users of the room cluster-wide, read from Redis before
        /// the read was sent (None: no Redis, or it could not answer); the
        /// answer's `memberCount` is at least this.
        cluster: Option<usize>,
    },
}

impl Hub {
    /// Connects this hub to the Postgres backend.
    pub fn attach_durable(&mut self, durable: Durable) {
        self.durable = Some(durable);
    }

    /// True while the Postgres write buffer is full: new messages are
    /// refused with `unavailable`.
    pub fn durable_full(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| !d.handle.admit())
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
            self.published(user, cmid, None, now);
        }
    }

    /// Room owner: queues an accepted message for Postgres.
    pub(super) fn store_message(&self, message: &ChatMessage, payload: &Bytes) {
        if let Some(d) = &self.durable {
            d.handle.write(WriteItem::Message(MessageRow {
                room_id: message.room_id.clone(),
                id: message.id,
                user_id: message.user_id.clone(),
                sent_at_ms: message.timestamp_ms,
                payload: payload.clone(),
            }));
        }
    }

    /// Room owner: queues an audit record for Postgres.
    pub(super) fn store_audit(&self, record: &AuditRecord) {
        if let Some(d) = &self.durable {
            d.handle.write(WriteItem::Audit(record.clone()));
        }
    }

    /// Whether history queries go through Postgres.
    pub(super) fn has_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Answers `query` asked by core `from` as request `req`: now, or, for
    /// a history page with Postgres, once its rows arrive.
    pub(super) fn answer_query(&mut self, from: usize, req: u64, query: Query, now: Instant) {
        let origin = Origin { core: from, req };
        match query {
            Query::History {
                room,
                before,
                after,
                limit,
            } if self.durable.is_some() => {
                let pick = Pick::for_page(after);
                let memory = self.history.page(&room, before, after, limit);
                let first = self.history.first_id(&room);
                if !merge::memory_covers(first, after, memory.len(), limit, pick) {
                    let spec = ReadSpec {
                        room: room.clone(),
                        after,
                        before,
                        limit,
                        pick,
                    };
                    let wait = PgWait::Page {
                        origin,
                        room,
                        before,
                        after,
                        limit,
                    };
                    if self.start_read(wait, spec) {
                        return;
                    }
                    // Memory has only part of the page: not an answer.
                    return self.deliver_answer(origin, Answer::Unavailable, now);
                }
                let answer = Answer::Messages(memory.into_iter().map(|m| m.json).collect());
                self.deliver_answer(origin, answer, now);
            }
            query => {
                let answer = self.answer(query);
                self.deliver_answer(origin, answer, now);
            }
        }
    }

    /// Room owner: sends a join with `since` to Postgres when memory cannot
    /// answer its recovery alone. True when deferred (answered later by
    /// [`Hub::on_pg_rows`]); false when the caller answers now from memory
    /// (whose `recovered` is then false unless memory covers `since`).
    /// `cluster` is the room's cluster-wide count when Redis gave one (the
    /// join asks Redis first, then Postgres).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn defer_join(
        &mut self,
        core: usize,
        conn: ConnId,
        user: &Arc<str>,
        room: &Arc<str>,
        since: MessageId,
        count: bool,
        cluster: Option<usize>,
    ) -> bool {
        if self.durable.is_none() {
            return false;
        }
        // One more than the replay holds: more than MAX_REPLAY missed is
        // `recovered:false` without asking Postgres.
        let want = MAX_REPLAY + 1;
        let got = self.history.since(room, since, want).len();
        let first = self.history.first_id(room);
        if merge::memory_covers(first, Some(since), got, want, Pick::Newest) {
            return false;
        }
        let spec = ReadSpec {
            room: room.clone(),
            after: Some(since),
            before: None,
            limit: want,
            pick: Pick::Newest,
        };
        let wait = PgWait::Join {
            core,
            conn,
            user: user.clone(),
            room: room.clone(),
            since,
            count,
            cluster,
        };
        self.start_read(wait, spec)
    }

    /// Sends a read and records what it completes; false when it could not
    /// be sent.
    fn start_read(&mut self, wait: PgWait, spec: ReadSpec) -> bool {
        let Some(durable) = &self.durable else {
            return false;
        };
        if self.pg_waits.len() >= MAX_PG_READS {
            durable.handle.read_shed();
            return false;
        }
        let Some(reply) = durable.read(spec) else {
            return false;
        };
        self.next_req += 1;
        let req = self.next_req;
        self.outbox.pg_reads.push((req, reply));
        self.pg_waits.insert(req, wait);
        true
    }

    /// A deferred answer to its asker.
    fn deliver_answer(&mut self, origin: Origin, answer: Answer, now: Instant) {
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

    /// The rows of read `req` (or its failure): completes the page or join
    /// waiting for them, merged with memory as it is now.
    pub fn on_pg_rows(&mut self, req: u64, rows: ReadResult, now: Instant) {
        let Some(wait) = self.pg_waits.remove(&req) else {
            return;
        };
        match wait {
            PgWait::Page {
                origin,
                room,
                before,
                after,
                limit,
            } => {
                let answer = match rows {
                    Ok(rows) => {
                        let memory = self.history.page(&room, before, after, limit);
                        let page = merge::merge(rows, memory, limit, Pick::for_page(after));
                        Answer::Messages(page.into_iter().map(|m| m.json).collect())
                    }
                    // Memory alone did not cover the page (that is why it
                    // was read): its part is not an answer.
                    Err(_) => Answer::Unavailable,
                };
                self.deliver_answer(origin, answer, now);
            }
            PgWait::Join {
                core,
                conn,
                user,
                room,
                since,
                count,
                cluster,
            } => {
                // Count the member and take the replay in one step, as a
                // synchronous join does: later messages reach it live.
                let (local_count, _) = self.join_owner(&room, user.clone(), core, None, count);
                let member_count = cluster.map_or(local_count, |c| c.max(local_count));
                let replay = match rows {
                    Ok(rows) => {
                        // Postgres holds every flushed message, so the merge
                        // reaches back to `since`: recovered unless more
                        // than the replay holds were missed.
                        let memory = self.history.since(&room, since, MAX_REPLAY + 1);
                        let mut messages = merge::merge(rows, memory, MAX_REPLAY + 1, Pick::Newest);
                        let recovered = messages.len() <= MAX_REPLAY;
                        if !recovered {
                            messages.remove(0);
                        }
                        Replay {
                            messages: messages.into_iter().map(|m| m.json).collect(),
                            recovered: Some(recovered),
                        }
                    }
                    // Memory's part, marked incomplete (module doc).
                    Err(_) => self.memory_replay(&room, since),
                };
                let answer = JoinAnswer {
                    room,
                    user,
                    conn,
                    member_count,
                    replay,
                    counted: count,
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
