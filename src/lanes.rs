//! Bounded lock-free queues from the executor cores to a side thread (the
//! Redis thread, the Postgres thread): one lane per core, each a
//! `crossbeam::queue::ArrayQueue`, plus one `tokio::sync::Notify` that a
//! push signals so the side thread's tokio loop can await work.
//!
//! - **Per core**: every send names its lane, the sending core's index
//!   (each core's backend handle is given it at construction; a sender
//!   that is no core, like the shutdown path, uses lane 0 once the cores
//!   have stopped). One busy core fills only its own lane; the others keep
//!   theirs.
//! - **Order**: each lane is FIFO, so everything one core sends arrives in
//!   the order it was sent. Lanes are not ordered against each other.
//! - **Full**: `try_send` never waits; it gives the item back when the
//!   sender's lane is full (or the receiver is gone). What that means is the
//!   caller's decision, written next to each queue.
//! - **Fairness**: the receiver takes one item from each non-empty lane in
//!   turn (round robin), and the next drain starts after the lane it last
//!   took from, so a core with a deep lane cannot starve the others.
//! - **End**: the receiver sees the end once every sender is dropped and
//!   every lane is empty, like a closed channel; a send after the receiver
//!   is dropped fails.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use tokio::sync::Notify;

/// The state shared by the senders and the receiver.
struct Shared<T> {
    /// One bounded queue per core; see the module doc for a full one.
    lanes: Box<[ArrayQueue<T>]>,
    /// Signalled after every push and when the last sender goes, so the
    /// side thread can sleep while every lane is empty.
    wake: Notify,
    /// Live senders; at zero (and empty lanes) the receiver sees the end.
    senders: AtomicUsize,
    /// The receiver is gone: sends fail like on a closed channel.
    closed: AtomicBool,
}

impl<T> Shared<T> {
    /// Lane `lane`; an index past the last lane wraps (so a sender given
    /// a core index is never out of range).
    fn lane(&self, lane: usize) -> &ArrayQueue<T> {
        &self.lanes[lane % self.lanes.len()]
    }
}

/// Creates `lanes` lanes of `per_lane` items each (both at least 1).
pub fn lanes<T>(lanes: usize, per_lane: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        lanes: (0..lanes.max(1))
            .map(|_| ArrayQueue::new(per_lane.max(1)))
            .collect(),
        wake: Notify::new(),
        senders: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, turn: 0 },
    )
}

/// The cores' end: cheap to clone, one per holder.
pub struct Sender<T> {
    /// The lanes and the side thread's wake-up.
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The receiver may be asleep on empty lanes: let it see the end.
            self.shared.wake.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` on lane `lane` (the sending core's) and wakes the
    /// receiver; never waits. Gives the item back when that lane is full or
    /// the receiver is gone.
    pub fn try_send(&self, lane: usize, item: T) -> Result<(), T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.shared.lane(lane).push(item)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Items waiting in every lane.
    pub fn queued(&self) -> usize {
        self.shared.lanes.iter().map(ArrayQueue::len).sum()
    }

    /// Whether lane `lane` has room for `n` more items.
    pub fn has_room(&self, lane: usize, n: usize) -> bool {
        let lane = self.shared.lane(lane);
        lane.capacity() - lane.len() >= n
    }

    /// Items one lane holds.
    pub fn lane_capacity(&self) -> usize {
        self.shared.lanes[0].capacity()
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> usize {
        self.shared.lanes.len()
    }
}

/// The side thread's end (one).
pub struct Receiver<T> {
    /// The lanes and the wake-up.
    shared: Arc<Shared<T>>,
    /// The lane the next drain starts at (round robin across drains).
    turn: usize,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Nothing is queued right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every lane is empty")]
pub struct Empty;

impl<T> Receiver<T> {
    /// Moves up to `max` items into `out`, one from each non-empty lane in
    /// turn; returns how many. Never waits.
    pub fn drain(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let lanes = &self.shared.lanes;
        let n = lanes.len();
        let mut taken = 0;
        let mut turn = self.turn;
        while taken < max {
            let start = turn;
            let mut round = 0;
            for step in 0..n {
                if taken == max {
                    break;
                }
                let lane = (start + step) % n;
                if let Some(item) = lanes[lane].pop() {
                    out.push(item);
                    taken += 1;
                    round += 1;
                    // The next pass starts after the last lane served.
                    turn = (lane + 1) % n;
                }
            }
            if round == 0 {
                break;
            }
        }
        self.turn = turn;
        taken
    }

    /// One item, taken round robin; [`Empty`] when every lane is empty.
    pub fn try_recv(&mut self) -> Result<T, Empty> {
        let n = self.shared.lanes.len();
        for step in 0..n {
            let lane = (self.turn + step) % n;
            if let Some(item) = self.shared.lanes[lane].pop() {
                self.turn = (lane + 1) % n;
                return Ok(item);
            }
        }
        Err(Empty)
    }

    /// Whether every sender is gone (what is queued can still be taken).
    pub fn senders_gone(&self) -> bool {
        self.shared.senders.load(Ordering::Acquire) == 0
    }

    /// Waits for work and moves up to `max` items into `out` (see
    /// [`Receiver::drain`]); 0 once every sender is gone and every lane is
    /// empty.
    pub async fn recv_many(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        loop {
            // A push between the drain and the wait leaves a permit, so
            // this wait then returns at once: no wake-up is lost.
            let n = self.drain(out, max);
            if n > 0 {
                return n;
            }
            if self.senders_gone() {
                // A sender may have pushed just before it dropped.
                return self.drain(out, max);
            }
            self.shared.wake.notified().await;
        }
    }

    /// Waits for one item; None once every sender is gone and every lane is
    /// empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Ok(item) = self.try_recv() {
                return Some(item);
            }
            if self.senders_gone() {
                return self.try_recv().ok();
            }
            self.shared.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_lane_gives_the_item_back_and_leaves_other_lanes_free() {
        let (tx, mut rx) = lanes::<u32>(2, 2);
        // Core 0 fills its lane; its third item comes back.
        let sent: Vec<_> = [1, 2, 3].into_iter().map(|i| tx.try_send(0, i)).collect();
        assert_eq!(sent, vec![Ok(()), Ok(()), Err(3)]);
        assert!(!tx.has_room(0, 1));
        // Core 1 has a lane of its own with room.
        assert!(tx.has_room(1, 2));
        assert_eq!(tx.try_send(1, 10), Ok(()));
        assert_eq!(tx.try_send(1, 11), Ok(()));
        assert_eq!(tx.queued(), 4);
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 10), 4);
        // Round robin, FIFO within a lane.
        assert_eq!(out, vec![1, 10, 2, 11]);
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[test]
    fn a_lane_is_the_one_named_whichever_thread_sends() {
        let (tx, mut rx) = lanes::<u32>(3, 8);
        // Two threads sending for core 2 share its lane, in order.
        tx.try_send(2, 0).unwrap();
        let other = tx.clone();
        std::thread::spawn(move || other.try_send(2, 1).unwrap())
            .join()
            .unwrap();
        tx.try_send(2, 2).unwrap();
        assert!(tx.has_room(2, 5));
        assert!(!tx.has_room(2, 6));
        assert!(tx.has_room(0, 8), "the other lanes are untouched");
        // An index past the last lane wraps instead of panicking.
        tx.try_send(5, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 100), 4);
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn many_lane_sets_on_one_thread_keep_their_own_order() {
        // More sets than any per-thread memory of lanes could hold: each
        // send names its lane, so nothing is reordered.
        let sets: Vec<_> = (0..20).map(|_| lanes::<u32>(2, 4)).collect();
        for (tx, _) in &sets {
            for i in 0..3 {
                tx.try_send(1, i).unwrap();
            }
        }
        for (_, rx) in sets {
            let mut rx = rx;
            let mut out = Vec::new();
            rx.drain(&mut out, 10);
            assert_eq!(out, vec![0, 1, 2]);
        }
    }

    #[test]
    fn a_drain_cut_short_resumes_at_the_next_lane() {
        let (tx, mut rx) = lanes::<u32>(3, 8);
        for (lane, items) in [(0, [1, 2, 3]), (1, [10, 20, 30]), (2, [100, 200, 300])] {
            for i in items {
                tx.try_send(lane, i).unwrap();
            }
        }
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 2), 2);
        assert_eq!(out, vec![1, 10]);
        out.clear();
        assert_eq!(rx.drain(&mut out, 4), 4);
        assert_eq!(out, vec![100, 2, 20, 200]);
        out.clear();
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.drain(&mut out, 10), 2);
        assert_eq!(out, vec![30, 300]);
    }

    #[test]
    fn the_end_comes_after_the_last_item_once_every_sender_is_gone() {
        let (tx, mut rx) = lanes::<u32>(2, 4);
        let other = tx.clone();
        tx.try_send(0, 7).unwrap();
        drop(tx);
        assert!(!rx.senders_gone());
        drop(other);
        assert!(rx.senders_gone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            assert_eq!(rx.recv_many(&mut out, 8).await, 1);
            assert_eq!(out, vec![7]);
            assert_eq!(rx.recv_many(&mut out, 8).await, 0);
            assert_eq!(rx.recv().await, None);
        });
    }

    #[test]
    fn a_send_after_the_receiver_is_gone_gives_the_item_back() {
        let (tx, rx) = lanes::<u32>(1, 4);
        drop(rx);
        assert_eq!(tx.try_send(0, 1), Err(1));
    }

    #[test]
    fn a_waiting_receiver_wakes_for_a_send_from_another_thread() {
        let (tx, mut rx) = lanes::<u32>(2, 4);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sender = std::thread::spawn(move || {
            tx.try_send(1, 5).unwrap();
            tx
        });
        let got = runtime.block_on(rx.recv());
        assert_eq!(got, Some(5));
        drop(sender.join().unwrap());
        assert_eq!(runtime.block_on(rx.recv()), None);
    }
}
