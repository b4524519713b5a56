//! Loss, reordering and duplicate accounting for one (receiver, sender) pair.
//!
//! Each sender numbers its messages 0, 1, 2, ... A receiver keeps the next sequence number
//! it expects from that sender plus the ranges it skipped over. A later arrival inside a
//! skipped range is a reordered message (and is no longer missing); an arrival below
//! `expected` outside every range is a duplicate. What is still missing at the end is lost,
//! but only within the window of sequence numbers the sender reports as "sent during the
//! measurement and early enough to have arrived" (see `SenderWindow`): that way messages
//! still in flight at the end, or sent during warm-up, never count as lost.

use serde::{Deserialize, Serialize};

/// At most this many skipped ranges are remembered per pair, bounding memory when a server
/// drops every other message; older ranges are then counted as lost outright.
const MAX_GAPS: usize = 1024;

/// What one arrival meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Exactly the expected sequence number.
    InOrder,
    /// Ahead of the expected number: this many messages were skipped (maybe only delayed).
    Skipped(u64),
    /// Filled a previously skipped number: delivered, but out of order.
    Reordered,
    /// A number already received.
    Duplicate,
}

/// The sequence numbers of one sender that count for loss: `[first, cutoff)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderWindow {
    /// Connection id of the sender.
    pub sender: u32,
    /// First sequence number sent at or after the start of the measurement.
    pub first: u64,
    /// One past the last sequence number sent before the end of the measurement minus the
    /// grace period; messages from `cutoff` on had too little time to arrive to be judged.
    pub cutoff: u64,
}

/// Sequence state of one sender as seen by one receiver.
#[derive(Clone, Debug, Default)]
pub struct SeqTrack {
    /// Next sequence number expected in order.
    expected: u64,
    /// Skipped ranges `[start, end)` not seen yet, ascending and disjoint.
    gaps: Vec<(u64, u64)>,
    /// Numbers in ranges forgotten because of `MAX_GAPS`; counted as lost.
    forgotten: u64,
}

impl SeqTrack {
    /// Accounts for the arrival of `seq`.
    pub fn on_seq(&mut self, seq: u64) -> Arrival {
        if seq == self.expected {
            self.expected += 1;
            return Arrival::InOrder;
        }
        if seq > self.expected {
            let skipped = seq - self.expected;
            self.gaps.push((self.expected, seq));
            if self.gaps.len() > MAX_GAPS {
                let (a, b) = self.gaps.remove(0);
                self.forgotten += b - a;
            }
            self.expected = seq + 1;
            return Arrival::Skipped(skipped);
        }
        // Below `expected`: either it fills a gap (reordered) or it is a duplicate.
        let idx = self.gaps.partition_point(|&(_, end)| end <= seq);
        match self.gaps.get(idx).copied() {
            Some((start, end)) if start <= seq => {
                // Split the range around `seq`.
                match (start == seq, end == seq + 1) {
                    (true, true) => {
                        self.gaps.remove(idx);
                    }
                    (true, false) => self.gaps[idx].0 = seq + 1,
                    (false, true) => self.gaps[idx].1 = seq,
                    (false, false) => {
                        self.gaps[idx].1 = seq;
                        self.gaps.insert(idx + 1, (seq + 1, end));
                    }
                }
                Arrival::Reordered
            }
            _ => Arrival::Duplicate,
        }
    }

    /// Messages in `window` this receiver never got: skipped ranges inside the window plus
    /// the tail from `expected` up to the cutoff.
    pub fn lost(&self, window: &SenderWindow) -> u64 {
        let (lo, hi) = (window.first, window.cutoff);
        let overlap = |a: u64, b: u64| b.min(hi).saturating_sub(a.max(lo));
        let in_gaps: u64 = self.gaps.iter().map(|&(a, b)| overlap(a, b)).sum();
        in_gaps + overlap(self.expected, u64::MAX) + self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(first: u64, cutoff: u64) -> SenderWindow {
        SenderWindow {
            sender: 0,
            first,
            cutoff,
        }
    }

    #[test]
    fn in_order_stream_loses_nothing() {
        let mut t = SeqTrack::default();
        for s in 0..10 {
            assert_eq!(t.on_seq(s), Arrival::InOrder);
        }
        assert_eq!(t.lost(&window(0, 10)), 0);
        // Cutoff beyond what arrived: the tail is lost.
        assert_eq!(t.lost(&window(0, 13)), 3);
    }

    #[test]
    fn gap_then_late_arrival_is_reordered_not_lost() {
        let mut t = SeqTrack::default();
        assert_eq!(t.on_seq(0), Arrival::InOrder);
        assert_eq!(t.on_seq(4), Arrival::Skipped(3)); // 1, 2, 3 missing
        assert_eq!(t.lost(&window(0, 5)), 3);
        assert_eq!(t.on_seq(2), Arrival::Reordered); // splits [1,4) into [1,2) and [3,4)
        assert_eq!(t.on_seq(2), Arrival::Duplicate);
        assert_eq!(t.on_seq(1), Arrival::Reordered);
        assert_eq!(t.on_seq(0), Arrival::Duplicate);
        assert_eq!(t.lost(&window(0, 5)), 1); // only 3 is still missing
        assert_eq!(t.on_seq(3), Arrival::Reordered);
        assert_eq!(t.lost(&window(0, 5)), 0);
        assert_eq!(t.on_seq(5), Arrival::InOrder);
    }

    #[test]
    fn loss_counts_only_inside_the_window() {
        let mut t = SeqTrack::default();
        t.on_seq(0);
        t.on_seq(10); // 1..10 missing
        t.on_seq(11);
        // Warm-up covered 0..5: only 5..10 count.
        assert_eq!(t.lost(&window(5, 12)), 5);
        // Cutoff at 7: messages from 7 on are not judged.
        assert_eq!(t.lost(&window(5, 7)), 2);
        // Tail: 12..20 were sent in the window but never arrived.
        assert_eq!(t.lost(&window(0, 20)), 9 + 8);
    }

    #[test]
    fn receiver_that_saw_nothing_lost_the_whole_window() {
        let t = SeqTrack::default();
        assert_eq!(t.lost(&window(3, 9)), 6);
        assert_eq!(t.lost(&window(4, 4)), 0);
    }

    #[test]
    fn too_many_gaps_are_forgotten_as_lost() {
        let mut t = SeqTrack::default();
        // Every other message dropped: one gap per received message.
        for i in 0..(MAX_GAPS as u64 + 10) {
            t.on_seq(2 * i + 1);
        }
        assert_eq!(t.gaps.len(), MAX_GAPS);
        assert_eq!(
            t.lost(&window(0, 2 * (MAX_GAPS as u64 + 10))),
            MAX_GAPS as u64 + 10
        );
    }
}
