//! One bounded queue per core for everything the backends' side threads
//! send it: the Redis thread's events and the Postgres thread's read
//! replies arrive the same way, as [`BackendEvent`]s, and the runtime
//! drains them into `Hub::on_backend_event` one at a time.
//!
//! # Bound and full
//! The queue holds [`queue_capacity`] = [`BROKER_EVENTS`] +
//! [`MAX_PG_READS`] events, split by who may use what:
//!
//! - **Redis events** take at most [`BROKER_EVENTS`] places (a semaphore
//!   of that many permits, one returned per Redis event the core takes).
//!   When they are all taken the Redis thread *waits* for the core
//!   ([`EventSender::broker`]), which stops it reading its subscription:
//!   backpressure lands on Redis's output buffer for this client, never on
//!   a core and never on a Postgres reply.
//! - **Postgres replies** use the other [`MAX_PG_READS`] places, which are
//!   always free for them: a core keeps at most `MAX_PG_READS` reads in
//!   flight (`pg::history`, reads beyond it are shed before they are sent),
//!   and each read has exactly one reply, so its replies always fit on top
//!   of the Redis events and [`EventSender::rows`] never waits and never
//!   drops. A reply that is never sent (the read was dropped by a side
//!   thread that stopped) is sent as a failure by the reply's `Drop`
//!   (`pg::ReadReply`), so every read is answered, `unavailable` if need be.
//!
//! Each producer's events keep their order (one FIFO queue); the consumer
//! is woken by a `Notify` permit, so a push between its check and its wait
//! is never missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use tokio::sync::{Notify, Semaphore};

use crate::hub::MAX_PG_READS;
use crate::pg::ReadResult;
use crate::redis::worker::Event;

/// Redis events one core's queue holds before the Redis thread waits.
pub const BROKER_EVENTS: usize = 4096;

/// Places in one core's queue: the Redis events' share plus one place for
/// every Postgres read the core may have in flight (module doc).
pub const fn queue_capacity() -> usize {
    BROKER_EVENTS + MAX_PG_READS
}

/// What a backend's side thread tells a core.
#[derive(Debug)]
pub enum BackendEvent {
    /// From the Redis thread.
    Broker(Event),
    /// The rows of a Postgres read this core sent (or its failure).
    Rows {
        /// The read's id, as the core's history gave it.
        read: u64,
        /// Rows, oldest first, or the failure.
        rows: ReadResult,
    },
}

/// What the producers and the consumer of one core's queue share.
struct Shared {
    /// The events, oldest first; [`queue_capacity`] places (module doc).
    queue: ArrayQueue<BackendEvent>,
    /// Places Redis events may still take; closed when the core is gone
    /// so that a waiting Redis thread gives up instead of waiting forever.
    broker_room: Semaphore,
    /// Wakes the core's drain task after a push.
    ready: Notify,
    /// The core's end is gone: events are dropped (the process is stopping).
    closed: AtomicBool,
}

/// Creates one core's queue: the side threads' end and the core's end.
pub fn queue() -> (EventSender, EventQueue) {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(queue_capacity()),
        broker_room: Semaphore::new(BROKER_EVENTS),
        ready: Notify::new(),
        closed: AtomicBool::new(false),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventQueue { shared },
    )
}

/// The side threads' end of one core's queue (cheap to clone).
#[derive(Clone)]
pub struct EventSender {
    /// The queue shared with the core's end (a full queue: see the module doc).
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues a Redis event, waiting while the Redis share is full (module
    /// doc). Dropped when the core is gone.
    pub async fn broker(&self, event: Event) {
        match self.shared.broker_room.acquire().await {
            // Returned by the consumer when it takes a Redis event.
            Ok(permit) => permit.forget(),
            Err(_) => return, // closed: the core stopped
        }
        self.push(BackendEvent::Broker(event));
    }

    /// Queues the reply of read `read`; never waits (its place is reserved,
    /// module doc).
    pub fn rows(&self, read: u64, rows: ReadResult) {
        self.push(BackendEvent::Rows { read, rows });
    }

    fn push(&self, event: BackendEvent) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(event) = self.shared.queue.push(event) {
            // Impossible while the bounds above hold; said loudly if not.
            tracing::error!(
                ?event,
                "a core's backend event queue is full; event dropped"
            );
            return;
        }
        self.shared.ready.notify_one();
    }
}

/// The core's end of its queue (one).
pub struct EventQueue {
    /// The queue shared with every [`EventSender`]; drained only by this core.
    shared: Arc<Shared>,
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.broker_room.close();
    }
}

impl EventQueue {
    /// The oldest event, if any; never waits.
    pub fn try_recv(&self) -> Option<BackendEvent> {
        let event = self.shared.queue.pop()?;
        if matches!(event, BackendEvent::Broker(_)) {
            self.shared.broker_room.add_permits(1);
        }
        Some(event)
    }

    /// Waits for the oldest event.
    pub async fn recv(&self) -> BackendEvent {
        loop {
            // A push between the check and the wait leaves a permit, so the
            // wait then returns at once.
            if let Some(event) = self.try_recv() {
                return event;
            }
            self.shared.ready.notified().await;
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.shared.queue.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.shared.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::ReadFailed;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn postgres_replies_fit_on_top_of_a_full_redis_share() {
        let (tx, rx) = queue();
        let rt = runtime();
        rt.block_on(async {
            for _ in 0..BROKER_EVENTS {
                tx.broker(Event::Resync).await;
            }
        });
        // The Redis share is full: the next Redis event would wait...
        assert_eq!(tx.shared.broker_room.available_permits(), 0);
        // ...while every reply a core may have in flight still fits.
        for read in 0..MAX_PG_READS as u64 {
            tx.rows(read, Err(ReadFailed));
        }
        assert_eq!(rx.len(), queue_capacity());
        // FIFO: the Redis events first, then the replies in order.
        for _ in 0..BROKER_EVENTS {
            assert!(matches!(
                rx.try_recv(),
                Some(BackendEvent::Broker(Event::Resync))
            ));
        }
        assert_eq!(tx.shared.broker_room.available_permits(), BROKER_EVENTS);
        for want in 0..MAX_PG_READS as u64 {
            match rx.try_recv() {
                Some(BackendEvent::Rows { read, rows }) => {
                    assert_eq!((read, rows), (want, Err(ReadFailed)))
                }
                other => panic!("expected rows, got {other:?}"),
            }
        }
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn a_waiting_redis_event_goes_in_once_the_core_takes_one() {
        let (tx, rx) = queue();
        let rt = runtime();
        rt.block_on(async {
            for _ in 0..BROKER_EVENTS {
                tx.broker(Event::EchoesLost).await;
            }
        });
        use std::future::Future as _;
        // Polled by hand: the send must wait while the Redis share is full,
        // and finish once the core has taken one event.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut send = std::pin::pin!(tx.broker(Event::Resync));
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert_eq!(rx.len(), BROKER_EVENTS);
        assert!(matches!(
            rx.try_recv(),
            Some(BackendEvent::Broker(Event::EchoesLost))
        ));
        assert!(send.as_mut().poll(&mut cx).is_ready());
        assert_eq!(rx.len(), BROKER_EVENTS);
        let mut last = None;
        while let Some(event) = rx.try_recv() {
            last = Some(event);
        }
        assert!(matches!(last, Some(BackendEvent::Broker(Event::Resync))));
    }

    #[test]
    fn a_waiting_core_wakes_for_a_push_from_another_thread() {
        let (tx, rx) = queue();
        let pusher = std::thread::spawn(move || tx.rows(7, Ok(Vec::new())));
        let got = runtime().block_on(rx.recv());
        pusher.join().unwrap();
        assert!(matches!(got, BackendEvent::Rows { read: 7, rows: Ok(r) } if r.is_empty()));
    }

    #[test]
    fn a_gone_core_makes_a_waiting_redis_thread_give_up() {
        let (tx, rx) = queue();
        let rt = runtime();
        rt.block_on(async {
            for _ in 0..BROKER_EVENTS {
                tx.broker(Event::Resync).await;
            }
        });
        drop(rx);
        // Returns instead of waiting forever; the event is dropped.
        rt.block_on(tx.broker(Event::Resync));
        tx.rows(1, Err(ReadFailed));
        assert_eq!(tx.shared.queue.len(), BROKER_EVENTS);
    }
}
