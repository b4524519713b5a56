//! [`PgAudit`]: the audit trail with DATABASE_URL set. Each record goes to
//! the writer (table `chat_audit`) and to the core's in-memory ring, which
//! also logs it, as without Postgres ([`crate::moderation::MemoryAudit`]).
//! The record of a ban or an unban also changes `chat_bans`, from which the
//! bans are loaded at start-up, so a ban outlives a restart.

use std::sync::Arc;

use super::{BanRow, PgHandle, WriteItem};
use crate::moderation::{AuditAction, AuditRecord, AuditSink, MemoryAudit};

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
        let ban = match (record.action, record.until_ms) {
            (AuditAction::Banned, Some(until_ms)) => Some(BanRow::Set {
                user: record.user_id.clone(),
                until_ms,
                reason: record.reason.clone(),
                actor: record
                    .actor
                    .clone()
                    .unwrap_or_else(|| record.user_id.clone()),
                at_ms: record.at_ms,
            }),
            (AuditAction::Unbanned, _) => Some(BanRow::Lift {
                user: record.user_id.clone(),
            }),
            _ => None,
        };
        if let Some(ban) = ban {
            self.handle.write(self.lane, WriteItem::Ban(ban));
        }
        // Never blocks: a full lane is counted and logged by `write`.
        self.handle
            .write(self.lane, WriteItem::Audit(record.clone()));
        self.memory.record(record);
    }
}
