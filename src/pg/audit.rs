//! [`PgAudit`]: the moderation audit trail with DATABASE_URL set. Each
//! record goes to the writer (table `chat_audit`) and to the core's
//! in-memory ring, which also logs it, as without Postgres
//! ([`crate::moderation::MemoryAudit`]).

use std::sync::Arc;

use super::{PgHandle, WriteItem};
use crate::moderation::{AuditRecord, AuditSink, MemoryAudit};

/// One core's audit sink with Postgres behind its memory.
pub struct PgAudit {
    /// The newest records, logged as they come (the trail without Postgres).
    memory: MemoryAudit,
    /// The backend, shared by every core.
    handle: Arc<PgHandle>,
    /// This core's index: its lane on the writer's queue.
    lane: usize,
}

impl PgAudit {
    /// Core `lane`'s sink: `memory` plus `handle`.
    pub fn new(memory: MemoryAudit, handle: Arc<PgHandle>, lane: usize) -> PgAudit {
        PgAudit {
            memory,
            handle,
            lane,
        }
    }
}

impl AuditSink for PgAudit {
    fn record(&mut self, record: AuditRecord) {
        // Never blocks: a full lane is counted and logged by `write`.
        self.handle
            .write(self.lane, WriteItem::Audit(record.clone()));
        self.memory.record(record);
    }
}
