//! Combining a room's recent messages in memory with its rows in Postgres.
//!
//! The room owner keeps its in-memory history as a cache of the room's
//! newest messages; Postgres holds every message once it is flushed. A read
//! asks both and merges: a message accepted but not yet flushed is only in
//! memory, one evicted from memory only in Postgres, most are in both. Both
//! lists are sorted by id, so the merge is one pass that keeps one copy of
//! each id, then the same selection the in-memory store makes (the newest
//! or the oldest `limit`). Taking the top `limit` of each side first and then
//! of the union gives the top `limit` of the union, so each side is asked
//! for at most `limit` rows.

use ulid::Ulid;

use crate::history::StoredMessage;

/// Which end of a range a read keeps when more than `limit` match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The newest (pages without `after`, `since` recovery).
    Newest,
    /// The oldest (pages with `after`).
    Oldest,
}

impl Pick {
    /// The selection a history page makes: with `after`, the oldest after
    /// it; otherwise the newest.
    pub fn for_page(after: Option<Ulid>) -> Pick {
        if after.is_some() {
            Pick::Oldest
        } else {
            Pick::Newest
        }
    }
}

/// Merges two id-sorted lists, one copy per id (the `memory` one when both
/// have it: same bytes, already shared), then keeps `limit` by `pick`.
pub fn merge(
    stored: Vec<StoredMessage>,
    memory: Vec<StoredMessage>,
    limit: usize,
    pick: Pick,
) -> Vec<StoredMessage> {
    let mut out = Vec::with_capacity(stored.len() + memory.len());
    let mut a = stored.into_iter().peekable();
    let mut b = memory.into_iter().peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (Some(x), Some(y)) => {
                if x.id < y.id {
                    a.next()
                } else {
                    if x.id == y.id {
                        a.next();
                    }
                    b.next()
                }
            }
        };
        out.extend(next);
    }
    match pick {
        Pick::Newest => {
            let extra = out.len().saturating_sub(limit);
            out.drain(..extra);
        }
        Pick::Oldest => out.truncate(limit),
    }
    out
}

/// Whether the in-memory answer is already the whole answer, so no
/// Postgres read is needed.
///
/// Memory holds a contiguous run of the room's newest messages starting at
/// `first` (evictions take the oldest). So the answer is complete when the
/// read's lower bound (`after` or `since`) is at or past `first`, or, for a
/// newest-first read, when memory alone filled the `limit`: anything only in
/// Postgres is older than everything in memory.
pub fn memory_covers(
    first: Option<Ulid>,
    lower: Option<Ulid>,
    got: usize,
    limit: usize,
    pick: Pick,
) -> bool {
    if pick == Pick::Newest && got >= limit {
        return true;
    }
    matches!((first, lower), (Some(first), Some(lower)) if first <= lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Ulid {
        Ulid::from_parts(n, 0)
    }

    fn m(n: u64, tag: &str) -> StoredMessage {
        StoredMessage {
            id: id(n),
            json: bytes::Bytes::from(format!("{n}{tag}")),
        }
    }

    fn list(ns: &[u64], tag: &str) -> Vec<StoredMessage> {
        ns.iter().map(|&n| m(n, tag)).collect()
    }

    fn ids(v: &[StoredMessage]) -> Vec<u64> {
        v.iter().map(|m| m.id.timestamp_ms()).collect()
    }

    #[test]
    fn union_without_duplicates_in_order() {
        let out = merge(
            list(&[1, 2, 3, 4], "p"),
            list(&[3, 4, 5, 6], "m"),
            100,
            Pick::Newest,
        );
        assert_eq!(ids(&out), vec![1, 2, 3, 4, 5, 6]);
        // Shared ids take the memory copy.
        assert_eq!(out[2].json, bytes::Bytes::from("3m"));
        assert_eq!(out[0].json, bytes::Bytes::from("1p"));
    }

    #[test]
    fn newest_keeps_the_tail_oldest_the_head() {
        let stored = list(&[1, 2, 3, 4], "p");
        let memory = list(&[4, 5, 6], "m");
        assert_eq!(
            ids(&merge(stored.clone(), memory.clone(), 3, Pick::Newest)),
            vec![4, 5, 6]
        );
        assert_eq!(ids(&merge(stored, memory, 3, Pick::Oldest)), vec![1, 2, 3]);
    }

    #[test]
    fn either_side_may_be_empty() {
        assert_eq!(
            ids(&merge(list(&[1, 2], "p"), vec![], 5, Pick::Newest)),
            vec![1, 2]
        );
        assert_eq!(
            ids(&merge(vec![], list(&[7], "m"), 5, Pick::Oldest)),
            vec![7]
        );
        assert!(merge(vec![], vec![], 5, Pick::Newest).is_empty());
        assert!(merge(list(&[1], "p"), list(&[2], "m"), 0, Pick::Newest).is_empty());
    }

    #[test]
    fn interleaved_unflushed_messages_are_kept() {
        // Postgres lags: 5 and 7 are accepted but not flushed yet.
        let out = merge(
            list(&[2, 4, 6], "p"),
            list(&[4, 5, 6, 7], "m"),
            10,
            Pick::Newest,
        );
        assert_eq!(ids(&out), vec![2, 4, 5, 6, 7]);
    }

    #[test]
    fn coverage_of_memory() {
        // Memory holds 10.. ; a since/after at or past 10 needs nothing older.
        assert!(memory_covers(
            Some(id(10)),
            Some(id(10)),
            0,
            50,
            Pick::Newest
        ));
        assert!(memory_covers(
            Some(id(10)),
            Some(id(12)),
            3,
            50,
            Pick::Oldest
        ));
        assert!(!memory_covers(
            Some(id(10)),
            Some(id(9)),
            5,
            50,
            Pick::Oldest
        ));
        // A full newest page from memory is complete whatever is older.
        assert!(memory_covers(Some(id(10)), None, 50, 50, Pick::Newest));
        assert!(!memory_covers(Some(id(10)), None, 49, 50, Pick::Newest));
        // An oldest-first page is not complete just because it is full.
        assert!(!memory_covers(
            Some(id(10)),
            Some(id(3)),
            50,
            50,
            Pick::Oldest
        ));
        // Nothing in memory (after a restart): ask Postgres.
        assert!(!memory_covers(None, Some(id(1)), 0, 50, Pick::Newest));
        assert!(!memory_covers(None, None, 0, 50, Pick::Newest));
    }
}
