//! Bounded lock-free queues from the executor cores to a side thread (the
//! Redis thread, the Postgres thread): one lane per core, each a
//! `crossbeam::queue::ArrayQueue`, plus one `tokio::sync::Notify` that a
//! push signals so the side thread's tokio loop can await work.
//!
//! - **Per core**: a thread sends on the lane it was given on its first
//!   send (lanes are handed out in turn, so each of N executor threads gets
//!   its own lane of N). One busy core fills only its own lane; the others
//!   keep theirs.
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

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use tokio::sync::Notify;

/// Lanes a thread remembers its place in. A thread that sends on more
/// live lane sets than this (only tests do) gets a new lane for the
/// forgotten one, which may reorder what it had queued there.
const REMEMBERED: usize = 8;

/// Source of the ids that tell lane sets apart in [`LANE_OF`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's lane in each lane set it sent on: (set id, lane),
    /// most recent last, at most [`REMEMBERED`].
    static LANE_OF: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
}

/// The state shared by the senders and the receiver.
struct Shared<T> {
    /// One bounded queue per core; see the module doc for a full one.
    lanes: Box<[ArrayQueue<T>]>,
    /// Signalled after every push and when the last sender goes, so the
    /// side thread can sleep while every lane is empty.
    wake: Notify,
    /// The lane the next thread sending for the first time gets.
    next_lane: AtomicUsize,
    /// Tells this set apart in each thread's memory of its lane.
    id: u64,
    /// Live senders; at zero (and empty lanes) the receiver sees the end.
    senders: AtomicUsize,
    /// The receiver is gone: sends fail like on a closed channel.
    closed: AtomicBool,
}

impl<T> Shared<T> {
    /// The calling thread's lane, handed out on its first send.
    fn my_lane(&self) -> usize {
        LANE_OF.with(|cell| {
            let mut known = cell.borrow_mut();
            if let Some(&(_, lane)) = known.iter().find(|(id, _)| *id == self.id) {
                return lane;
            }
            let lane = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
            if known.len() == REMEMBERED {
                known.remove(0);
            }
            known.push((self.id, lane));
            lane
        })
    }
}

/// Creates `lanes` lanes of `per_lane` items each (both at least 1).
pub fn lanes<T>(lanes: usize, per_lane: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        lanes: (0..lanes.max(1))
            .map(|_| ArrayQueue::new(per_lane.max(1)))
            .collect(),
        wake: Notify::new(),
        next_lane: AtomicUsize::new(0),
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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
    /// Queues `item` on the calling thread's lane and wakes the receiver;
    /// never waits. Gives the item back when that lane is full or the
    /// receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        let lane = self.shared.my_lane();
        self.shared.lanes[lane].push(item)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Items waiting in every lane.
    pub fn queued(&self) -> usize {
        self.shared.lanes.iter().map(ArrayQueue::len).sum()
    }

    /// Whether the calling thread's lane has room for `n` more items.
    pub fn has_room(&self, n: usize) -> bool {
        let lane = &self.shared.lanes[self.shared.my_lane()];
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

    /// Sends `items` from a new thread (which gets the next lane).
    fn send_from_thread(tx: &Sender<u32>, items: Vec<u32>) -> Vec<Result<(), u32>> {
        let tx = tx.clone();
        std::thread::spawn(move || items.into_iter().map(|i| tx.try_send(i)).collect())
            .join()
            .expect("sender thread")
    }

    #[test]
    fn a_full_lane_gives_the_item_back_and_leaves_other_lanes_free() {
        let (tx, mut rx) = lanes::<u32>(2, 2);
        // The first thread fills its lane; its third item comes back.
        assert_eq!(
            send_from_thread(&tx, vec![1, 2, 3]),
            vec![Ok(()), Ok(()), Err(3)]
        );
        // Another thread has a lane of its own with room.
        assert_eq!(send_from_thread(&tx, vec![10, 11]), vec![Ok(()), Ok(())]);
        assert_eq!(tx.queued(), 4);
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 10), 4);
        // Round robin, FIFO within a lane.
        assert_eq!(out, vec![1, 10, 2, 11]);
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[test]
    fn the_same_thread_always_sends_on_the_same_lane() {
        let (tx, mut rx) = lanes::<u32>(3, 8);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert!(tx.has_room(3));
        assert!(!tx.has_room(4));
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 100), 5);
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_drain_cut_short_resumes_at_the_next_lane() {
        let (tx, mut rx) = lanes::<u32>(3, 8);
        send_from_thread(&tx, vec![1, 2, 3]);
        send_from_thread(&tx, vec![10, 20, 30]);
        send_from_thread(&tx, vec![100, 200, 300]);
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
        tx.try_send(7).unwrap();
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
        assert_eq!(tx.try_send(1), Err(1));
    }

    #[test]
    fn a_waiting_receiver_wakes_for_a_send_from_another_thread() {
        let (tx, mut rx) = lanes::<u32>(2, 4);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sender = std::thread::spawn(move || {
            tx.try_send(5).unwrap();
            tx
        });
        let got = runtime.block_on(rx.recv());
        assert_eq!(got, Some(5));
        drop(sender.join().unwrap());
        assert_eq!(runtime.block_on(rx.recv()), None);
    }
}
