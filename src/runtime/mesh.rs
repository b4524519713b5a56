//! The cross-core mesh: this core's senders to every peer, the staging
//! queue behind a full channel, and the readers paused while it drains.
//!
//! # Bounds
//! The mesh channel holds [`MESH_CAPACITY`] messages per direction. A message
//! that does not fit waits in this core's staging queue for that peer, drained
//! in order by a forwarder task. Connection readers stop reading from their
//! sockets while any staging queue holds more than [`STAGING_SOFT_LIMIT`]
//! messages, so the pressure lands on the clients that produce it (TCP
//! backpressure). The overshoot past the soft limit is bounded by what one
//! socket read can carry times the fan-out of one message, and hard-capped:
//!
//! - **Advisory** frames (typing, presence: [`ShardMsg::is_advisory`]) are
//!   shed first: once the queue holds [`STAGING_SOFT_LIMIT`] messages they
//!   are not staged, counted in `chat_mesh_shed_total{class="advisory"}`.
//!   A missed typing indicator expires on its own; a missed presence frame
//!   is corrected by the next one and by `GET /rooms/{id}/users`.
//! - **Control** messages (an adopted socket, a close request, shutdown:
//!   [`ShardMsg::is_control`]) are always staged: losing one would leak a
//!   socket or a shutdown, and there is at most one per connection or core,
//!   whatever the traffic.
//! - **Everything else** (deliveries, joins, publishes, acks, answers) is
//!   staged up to [`STAGING_HARD_LIMIT`]; past it the message is dropped,
//!   counted in `chat_mesh_shed_total{class="internal"}` and logged. What a
//!   client then sees: a member misses a delivery (a join with `since`
//!   replays it), a sender gets no ack for a message it may resend with the
//!   same `clientMsgId`, a join or a query gets no answer and times out.
//!   Never silent: every such drop is in the counter.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Waker;

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use crate::metrics::MeshShed;
use crate::shard::{shard_for, ShardMsg};

/// Messages one mesh channel holds before senders stage locally. Sized so a
/// burst to a 5,000-member room spread over both cores never stages:
/// `chat_mesh_staged_total` stayed 0 through `loadgen burst --members 5000
/// --window 64 --duration 5` (1.4 M deliveries/s, 2026-11-24).
pub const MESH_CAPACITY: usize = 4096;

/// Staged messages per peer above which connection readers pause: twice the
/// channel, so readers pause only once the peer is a full channel behind. No
/// measured run reached it (staging itself stayed at 0 in the burst above).
pub const STAGING_SOFT_LIMIT: usize = 8192;

/// Staged messages per peer past which non-control messages are dropped and
/// counted (see the module doc): four times the soft limit, so only a burst
/// that one round of socket reads fans out far beyond the paused readers'
/// limit reaches it. Control messages may exceed it by their own (small)
/// number.
pub const STAGING_HARD_LIMIT: usize = 4 * STAGING_SOFT_LIMIT;

/// This core's side of the mesh: sends to a peer's channel or, when it is
/// full, stages in order behind it.
pub struct Router {
    /// This core's index: its own messages are never routed through `senders`.
    core: usize,
    /// Number of executor cores: length of `senders` and `staging`, and the modulus of
    /// [`shard_for`].
    cores: usize,
    /// The mesh senders, indexed by peer core.
    senders: Senders<ShardMsg>,
    /// Messages waiting for room in each peer's channel, oldest first.
    staging: Vec<RefCell<VecDeque<ShardMsg>>>,
    /// Wakes the forwarder of each peer when its staging queue fills.
    forwarder_wakers: Vec<Cell<Option<Waker>>>,
    /// Connection readers paused because staging passed its soft limit.
    paused_readers: PausedReaders,
    /// Messages ever staged (a metric: non-zero means the mesh was full).
    staged_total: Cell<u64>,
    /// Messages not staged because staging was at its limits (a metric:
    /// non-zero means the mesh lost advisory or internal traffic).
    shed: Cell<MeshShed>,
}

impl Router {
    /// Wraps this core's mesh senders.
    pub fn new(senders: Senders<ShardMsg>, cores: usize) -> Router {
        let core = senders.peer_id();
        Router {
            core,
            cores,
            senders,
            staging: (0..cores).map(|_| RefCell::new(VecDeque::new())).collect(),
            forwarder_wakers: (0..cores).map(|_| Cell::new(None)).collect(),
            paused_readers: PausedReaders::default(),
            staged_total: Cell::new(0),
            shed: Cell::new(MeshShed::default()),
        }
    }

    /// This core's index.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The owner core of a room or user id.
    pub fn owner(&self, key: &str) -> usize {
        shard_for(key, self.cores)
    }

    /// Sends `msg` to core `to` (never the local core). Never blocks; stages
    /// behind a full channel, and past the staging limits sheds and counts
    /// (see the module documentation).
    pub fn send(&self, to: usize, msg: ShardMsg) {
        debug_assert_ne!(to, self.core, "local work must not go through the mesh");
        let mut staging = self.staging[to].borrow_mut();
        let msg = if staging.is_empty() {
            match self.senders.try_send_to(to, msg) {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(back))) => back,
                // The peer closed its side: the process is stopping.
                Err(_) => return,
            }
        } else {
            msg
        };
        let mut shed = self.shed.get();
        match admit_staged(staging.len(), &msg) {
            Staging::Stage => staging.push_back(msg),
            Staging::ShedAdvisory => {
                shed.advisory += 1;
                self.shed.set(shed);
                return;
            }
            Staging::DropInternal => {
                if shed.internal == 0 {
                    tracing::warn!(
                        peer = to,
                        "cross-core staging is full; dropping messages (chat_mesh_shed_total)"
                    );
                }
                shed.internal += 1;
                self.shed.set(shed);
                return;
            }
        }
        self.staged_total.set(self.staged_total.get() + 1);
        if let Some(waker) = self.forwarder_wakers[to].take() {
            waker.wake();
        }
    }

    /// True while connection readers should pause.
    pub fn congested(&self) -> bool {
        self.staging
            .iter()
            .any(|q| q.borrow().len() > STAGING_SOFT_LIMIT)
    }

    /// Registers a paused reader, woken when staging drains below the limit.
    /// `registered` is the reader's own record of its registration (see
    /// [`PausedReaders::pause`]).
    pub fn pause_reader(&self, waker: &Waker, registered: &mut Option<u64>) {
        self.paused_readers.pause(waker, registered);
    }

    /// Messages ever staged because a mesh channel was full.
    pub fn staged_total(&self) -> u64 {
        self.staged_total.get()
    }

    /// Messages ever shed or dropped at the staging limits.
    pub fn shed(&self) -> MeshShed {
        self.shed.get()
    }

    /// Moves staged messages for `peer` into its channel, in order, until the
    /// staging queue is empty. Runs as one task per peer for the life of the
    /// core.
    pub async fn forward(self: Rc<Self>, peer: usize) {
        loop {
            let next = self.staging[peer].borrow_mut().pop_front();
            match next {
                Some(msg) => {
                    if self.senders.send_to(peer, msg).await.is_err() {
                        return; // peer gone: the process is stopping
                    }
                    if !self.congested() {
                        self.paused_readers.wake_all();
                    }
                }
                None => {
                    std::future::poll_fn(|cx| {
                        if self.staging[peer].borrow().is_empty() {
                            self.forwarder_wakers[peer].set(Some(cx.waker().clone()));
                            std::task::Poll::Pending
                        } else {
                            std::task::Poll::Ready(())
                        }
                    })
                    .await
                }
            }
        }
    }
}

/// What becomes of a message that finds its peer's channel full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staging {
    /// Wait in the staging queue.
    Stage,
    /// A typing or presence frame past the soft limit: shed, counted.
    ShedAdvisory,
    /// Any other non-control message past the hard limit: dropped, counted.
    DropInternal,
}

/// The rule of the module doc for a queue already holding `staged`.
fn admit_staged(staged: usize, msg: &ShardMsg) -> Staging {
    if msg.is_control() {
        Staging::Stage
    } else if msg.is_advisory() && staged >= STAGING_SOFT_LIMIT {
        Staging::ShedAdvisory
    } else if staged >= STAGING_HARD_LIMIT {
        Staging::DropInternal
    } else {
        Staging::Stage
    }
}

/// Connection readers waiting for the mesh to drain, each at most once.
///
/// A paused reader's task is polled again whenever something else wakes it
/// (a frame for its client, a close request); each poll finds the mesh still
/// congested and pauses again. Registering every time would grow the list by
/// one waker per such wake-up for as long as the congestion lasts. Instead
/// each reader remembers the round it registered in, and registers again only
/// after [`PausedReaders::wake_all`] has started a new round: the list holds
/// at most one waker per connection that paused in the current round (a
/// connection that closes meanwhile leaves its waker until the round ends).
#[derive(Default)]
pub struct PausedReaders {
    /// Incremented by every `wake_all`; a registration is valid for one round.
    round: Cell<u64>,
    /// The wakers of this round's paused readers.
    wakers: RefCell<Vec<Waker>>,
}

impl PausedReaders {
    /// Registers `waker` unless `registered` says this reader is already
    /// registered in the current round; records the round in `registered`.
    pub fn pause(&self, waker: &Waker, registered: &mut Option<u64>) {
        let round = self.round.get();
        if *registered != Some(round) {
            self.wakers.borrow_mut().push(waker.clone());
            *registered = Some(round);
        }
    }

    /// Wakes every paused reader and starts a new round.
    pub fn wake_all(&self) {
        self.round.set(self.round.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Readers registered in the current round.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.wakers.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn typing() -> ShardMsg {
        ShardMsg::Typing {
            room: Arc::from("r"),
            user: Arc::from("u"),
            frame: bytes::Bytes::from_static(b"t"),
            exclude: crate::shard::ConnId::new(0, 1),
        }
    }

    fn deliver(kind: crate::shard::FrameKind) -> ShardMsg {
        ShardMsg::Deliver {
            room: Arc::from("r"),
            frame: bytes::Bytes::from_static(b"m"),
            deflated: 0,
            kind,
            exclude: None,
            received_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn advisory_frames_are_shed_at_the_soft_limit_and_the_rest_at_the_hard_one() {
        use crate::shard::FrameKind;
        let presence = deliver(FrameKind::Presence);
        let message = deliver(FrameKind::Message);
        let close = ShardMsg::CloseConn {
            conn: crate::shard::ConnId::new(0, 1),
            code: 1008,
            reason: crate::metrics::CloseReason::Protocol,
        };
        let below = STAGING_SOFT_LIMIT - 1;
        for msg in [&typing(), &presence, &message, &close] {
            assert_eq!(admit_staged(0, msg), Staging::Stage);
            assert_eq!(admit_staged(below, msg), Staging::Stage);
        }
        assert_eq!(
            admit_staged(STAGING_SOFT_LIMIT, &typing()),
            Staging::ShedAdvisory
        );
        assert_eq!(
            admit_staged(STAGING_SOFT_LIMIT, &presence),
            Staging::ShedAdvisory
        );
        assert_eq!(admit_staged(STAGING_SOFT_LIMIT, &message), Staging::Stage);
        assert_eq!(
            admit_staged(STAGING_HARD_LIMIT - 1, &message),
            Staging::Stage
        );
        assert_eq!(
            admit_staged(STAGING_HARD_LIMIT, &message),
            Staging::DropInternal
        );
        assert_eq!(
            admit_staged(STAGING_HARD_LIMIT, &ShardMsg::Shutdown),
            Staging::Stage
        );
        assert_eq!(
            admit_staged(STAGING_HARD_LIMIT + 10, &close),
            Staging::Stage
        );
    }

    #[test]
    fn a_peer_that_reads_nothing_gets_staging_up_to_the_limits_then_shedding() {
        use crate::shard::FrameKind;
        use glommio::channels::channel_mesh::{Full, MeshBuilder};
        use glommio::LocalExecutorBuilder;
        // A channel of one message, and a peer that never reads it.
        let mesh: MeshBuilder<ShardMsg, Full> = MeshBuilder::full(2, 1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let peer_mesh = mesh.clone();
        let peer = std::thread::spawn(move || {
            LocalExecutorBuilder::default()
                .make()
                .expect("executor")
                .run(async move {
                    let _joined = peer_mesh.join().await.expect("mesh");
                    // Holds its side open until the sender is done.
                    let _ = done_rx.recv();
                })
        });
        let (staged, shed, congested) = LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let (senders, _receivers) = mesh.join().await.expect("mesh");
                let router = Router::new(senders, 2);
                let to = 1 - router.core();
                // The first fills the channel; the next stage.
                for _ in 0..=STAGING_HARD_LIMIT {
                    router.send(to, deliver(FrameKind::Message));
                }
                assert_eq!(router.shed(), MeshShed::default());
                router.send(to, typing());
                router.send(to, deliver(FrameKind::Presence));
                router.send(to, deliver(FrameKind::Message));
                router.send(to, ShardMsg::Shutdown);
                (router.staged_total(), router.shed(), router.congested())
            });
        let _ = done_tx.send(());
        peer.join().expect("peer");
        assert_eq!(staged, STAGING_HARD_LIMIT as u64 + 1);
        assert_eq!(
            shed,
            MeshShed {
                advisory: 2,
                internal: 1
            }
        );
        assert!(congested);
    }

    #[test]
    fn a_reader_polled_again_while_paused_is_registered_once() {
        let paused = PausedReaders::default();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut ra, mut rb) = (None, None);
        for _ in 0..100 {
            paused.pause(&wa, &mut ra);
        }
        paused.pause(&wb, &mut rb);
        assert_eq!(paused.len(), 2);
        paused.wake_all();
        assert_eq!(paused.len(), 0);
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        // Woken, polled, still congested: registers again in the new round.
        paused.pause(&wa, &mut ra);
        paused.pause(&wa, &mut ra);
        assert_eq!(paused.len(), 1);
        paused.wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }
}
