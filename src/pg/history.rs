//! [`PgHistory`]: the room owner's [`History`] with DATABASE_URL set.
//!
//! - **Admission**: a message is refused with `unavailable` before it is
//!   stamped while the write buffer is full ([`History::admit`], checked on
//!   the connection's core and again by the room owner).
//! - **Writes**: every message this instance accepted is handed to the
//!   writer on this core's lane; the in-memory history stays the room's
//!   recent cache.
//! - **Reads**: a page or a `since` recovery that memory cannot answer
//!   alone becomes a Postgres read, sent with this core's event queue as
//!   its reply address ([`super::ReadReply`]); the hub keeps what the read
//!   completes and, when its rows arrive as an event, this store merges
//!   them with its memory as it is *then* (so a message accepted meanwhile
//!   is neither missed nor repeated).
//! - **Bounded**: at most [`MAX_PG_READS`] reads in flight per core; beyond
//!   it reads are shed (counted in `chat_pg_reads_total{outcome="shed"}`),
//!   which also keeps their replies within the place reserved for them on
//!   the core's event queue (`crate::events`).
//! - **Whole answers or errors** (contract section 4): a page that needs
//!   Postgres and cannot have it (shed, not sent, failed) is
//!   [`Page::Unavailable`], never the part memory has; a replay in the same
//!   case is memory's part with `recovered:false` (see `hub/reads.rs`).

use std::sync::Arc;

use ulid::Ulid;

use std::collections::{HashSet, VecDeque};

use super::merge::{self, Pick};
use super::{DeleteRow, MessageRow, PgHandle, ReadFailed, ReadResult, ReadSpec, WriteItem};
use crate::events::EventSender;
use crate::history::StoredMessage;
use crate::history::{
    memory_replay, Deletion, History, HistoryStore, MemoryHistory, Page, Replaying,
};
use crate::hub::MAX_REPLAY;
use crate::protocol::ChatMessage;
use crate::shard::Replay;

/// Postgres reads one core keeps in flight; beyond it reads are shed: a
/// page is answered `unavailable`, a join gets memory's replay with
/// `recovered:false`. So the hub's wait table stays bounded, and so do the
/// replies on the core's event queue.
pub const MAX_PG_READS: usize = 1024;

/// Deleted message ids a core remembers, so rows read from Postgres before the delete reached
/// it (a read in flight, a batch not yet flushed) are not merged back into an answer. Deletes
/// are operator actions, rare; the oldest is forgotten beyond this, long after its delete was
/// written.
pub const DELETED_MEMORY: usize = 4096;

/// One core's history with Postgres behind its memory (module doc).
pub struct PgHistory {
    /// The recent messages of the rooms this core owns: answers what it
    /// covers, and is merged with the rows of what it does not.
    cache: MemoryHistory,
    /// The backend, shared by every core.
    handle: Arc<PgHandle>,
    /// This core's index: its lane on the backend's queues.
    lane: usize,
    /// Where the replies of this core's reads go.
    events: EventSender,
    /// Reads sent and not yet answered; at most [`MAX_PG_READS`].
    in_flight: usize,
    /// Ids deleted lately, filtered out of every read's rows; at most [`DELETED_MEMORY`].
    deleted: HashSet<Ulid>,
    /// The same ids, oldest first, to forget the oldest at the bound.
    deleted_order: VecDeque<Ulid>,
}

impl PgHistory {
    /// Core `lane`'s history: `cache` in front of `handle`, replies to
    /// `events`.
    pub fn new(
        cache: MemoryHistory,
        handle: Arc<PgHandle>,
        lane: usize,
        events: EventSender,
    ) -> PgHistory {
        PgHistory {
            cache,
            handle,
            lane,
            events,
            in_flight: 0,
            deleted: HashSet::new(),
            deleted_order: VecDeque::new(),
        }
    }

    /// Drops the rows of deleted messages from a read's result.
    fn without_deleted(&self, rows: ReadResult) -> ReadResult {
        let mut rows = rows?;
        if !self.deleted.is_empty() {
            rows.retain(|m| !self.deleted.contains(&m.id));
        }
        Ok(rows)
    }

    /// Deletes message `id` of `room` from Postgres (after any insert of it from this
    /// core's lane) and remembers it so later reads never return it.
    fn forget(&mut self, room: &Arc<str>, id: Ulid) {
        self.handle.write(
            self.lane,
            WriteItem::Delete(DeleteRow {
                room_id: room.clone(),
                id,
            }),
        );
        if self.deleted.insert(id) {
            self.deleted_order.push_back(id);
            if self.deleted_order.len() > DELETED_MEMORY {
                if let Some(old) = self.deleted_order.pop_front() {
                    self.deleted.remove(&old);
                }
            }
        }
    }

    /// Sends a read named `read`; false when it could not be sent (too many
    /// in flight, Postgres down, lane full): the caller answers now.
    fn start_read(&mut self, read: u64, spec: ReadSpec) -> bool {
        if self.in_flight >= MAX_PG_READS {
            self.handle.read_shed();
            return false;
        }
        if !self.handle.read(self.lane, spec, &self.events, read) {
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// A read's reply arrived (every read sent gets exactly one).
    fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

impl HistoryStore for PgHistory {
    fn append(&mut self, room: &Arc<str>, msg: StoredMessage) {
        self.cache.append(room, msg);
    }

    fn page(
        &self,
        room: &str,
        before: Option<Ulid>,
        after: Option<Ulid>,
        limit: usize,
    ) -> Vec<StoredMessage> {
        self.cache.page(room, before, after, limit)
    }

    fn since(&self, room: &str, since: Ulid, max: usize) -> Vec<StoredMessage> {
        self.cache.since(room, since, max)
    }

    fn first_id(&self, room: &str) -> Option<Ulid> {
        self.cache.first_id(room)
    }
}

impl History for PgHistory {
    fn store(&mut self, message: &ChatMessage, stored: StoredMessage, own: bool) {
        if own {
            self.handle.write(
                self.lane,
                WriteItem::Message(MessageRow {
                    room_id: message.room_id.clone(),
                    id: message.id,
                    user_id: message.user_id.clone(),
                    sent_at_ms: message.timestamp_ms,
                    payload: stored.json.clone(),
                }),
            );
        }
        self.cache.append(&message.room_id, stored);
    }

    fn admit(&self) -> bool {
        self.handle.admit(self.lane)
    }

    fn read_page(
        &mut self,
        read: u64,
        room: &Arc<str>,
        before: Option<Ulid>,
        after: Option<Ulid>,
        limit: usize,
    ) -> Page {
        let pick = Pick::for_page(after);
        let memory = self.cache.page(room, before, after, limit);
        let first = self.cache.first_id(room);
        if merge::memory_covers(first, after, memory.len(), limit, pick) {
            return Page::Now(memory);
        }
        let spec = ReadSpec {
            room: room.clone(),
            after,
            before,
            limit,
            pick,
        };
        if self.start_read(read, spec) {
            Page::Pending
        } else {
            // Memory has only part of the page: not an answer.
            Page::Unavailable
        }
    }

    fn page_rows(
        &mut self,
        rows: ReadResult,
        room: &str,
        before: Option<Ulid>,
        after: Option<Ulid>,
        limit: usize,
    ) -> Option<Vec<StoredMessage>> {
        self.answered();
        // Memory alone did not cover the page (that is why it was read):
        // without the rows its part is not an answer.
        let rows = self.without_deleted(rows).ok()?;
        let memory = self.cache.page(room, before, after, limit);
        Some(merge::merge(rows, memory, limit, Pick::for_page(after)))
    }

    fn read_replay(&mut self, read: u64, room: &Arc<str>, since: Ulid) -> Replaying {
        // One more than the replay holds: more than MAX_REPLAY missed is
        // `recovered:false` without asking Postgres.
        let want = MAX_REPLAY + 1;
        let got = self.cache.since(room, since, want).len();
        let first = self.cache.first_id(room);
        if !merge::memory_covers(first, Some(since), got, want, Pick::Newest) {
            let spec = ReadSpec {
                room: room.clone(),
                after: Some(since),
                before: None,
                limit: want,
                pick: Pick::Newest,
            };
            if self.start_read(read, spec) {
                return Replaying::Pending;
            }
        }
        // Covered, or memory's part marked incomplete (module doc).
        Replaying::Now(memory_replay(&self.cache, room, since))
    }

    fn replay_rows(&mut self, rows: ReadResult, room: &str, since: Ulid) -> Replay {
        self.answered();
        let Ok(rows) = self.without_deleted(rows) else {
            // Memory's part, marked incomplete (module doc).
            return memory_replay(&self.cache, room, since);
        };
        // Postgres holds every flushed message, so the merge reaches back
        // to `since`: recovered unless more than the replay holds were
        // missed.
        let memory = self.cache.since(room, since, MAX_REPLAY + 1);
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

    fn delete(&mut self, read: u64, room: &Arc<str>, id: Ulid) -> Deletion {
        if let Some(removed) = self.cache.remove(room, id) {
            self.forget(room, id);
            return Deletion::Now(Some(removed));
        }
        if self.deleted.contains(&id) {
            return Deletion::Now(None);
        }
        // Memory holds every message of the room from its first one on: an id at or past it
        // that memory lacks does not exist.
        if self.cache.first_id(room).is_some_and(|first| first <= id) {
            return Deletion::Now(None);
        }
        let spec = ReadSpec {
            room: room.clone(),
            after: Some(Ulid(id.0.saturating_sub(1))),
            before: Some(Ulid(id.0.saturating_add(1))),
            limit: 1,
            pick: Pick::Oldest,
        };
        if self.start_read(read, spec) {
            Deletion::Pending
        } else {
            Deletion::Unavailable
        }
    }

    fn delete_rows(
        &mut self,
        rows: ReadResult,
        room: &Arc<str>,
        id: Ulid,
    ) -> Result<Option<StoredMessage>, ReadFailed> {
        self.answered();
        let rows = self.without_deleted(rows)?;
        // Stored meanwhile (a copy from another instance) or found in Postgres.
        let found = self
            .cache
            .remove(room, id)
            .or_else(|| rows.into_iter().find(|m| m.id == id));
        if found.is_some() {
            self.forget(room, id);
        }
        Ok(found)
    }
}
