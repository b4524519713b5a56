//! The per-core batched sender: after a fan-out, one io_uring submission
//! sends to every connection that got frames.
//!
//! At chat rates each member of a room gets one frame per message. Sent by
//! each connection's own driver, that is one task wake-up and one `send()`
//! system call per member, and the return of every call is a point where the
//! kernel may switch to the reader the send just woke. Submitted together,
//! the sends cost one system call per fan-out and run back to back in the
//! kernel (BENCHMARKS.md, "Batched sends", measures both in one run).
//!
//! - [`Client::push`] that makes a connection's queue non-empty registers the
//!   connection here (once: a flag on the client) instead of waking its
//!   driver, and wakes this core's writer task if the list was empty.
//! - The writer task runs after the tasks that queued frames (glommio runs a
//!   queue's tasks in order), so the fan-outs of every message handled in one
//!   pass go out together. It prepares one SEND (one frame) or SENDMSG (up to
//!   [`MAX_IOVECS`] frames) per connection and submits them in one
//!   `io_uring_enter`, which also waits for their completions.
//! - Every operation carries `MSG_DONTWAIT`, so the kernel completes it
//!   inline: a full socket answers `-EAGAIN` at once instead of arming a
//!   poll. Nothing is in flight when the call returns, so frames need no
//!   pinning and the driver never races the writer for a queue.
//! - Anything unfinished (a full socket, a partial write, an error, more
//!   frames queued) goes back to the connection's driver by waking it: the
//!   driver owns waiting for writability and closing.
//!
//! Without a ring (the kernel refused one) the same pass makes plain `send()`
//! calls: still one task for the whole fan-out. `BATCHED_SENDS=false` turns
//! the writer off: each driver sends its own frames, the baseline the
//! benchmark compares against.
//!
//! Bounds: `pending` holds each connection at most once, so it is bounded by
//! the core's connections; a submission carries at most [`RING_ENTRIES`]
//! operations, more connections are sent in further submissions of the same
//! pass.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use crate::client::{Client, Flush};

/// Operations per submission, and the ring's size. A 100 × 50 `loadgen
/// fanout` puts about 25 connections per core in a pass; 256 covers the
/// 5,000-member `burst` room's per-core half in 10 submissions, each under
/// a millisecond of kernel work.
pub const RING_ENTRIES: usize = 256;

/// Frames gathered into one SENDMSG, as many as the driver gathers. At chat
/// rates a connection has one frame per pass; in `loadgen burst` (a sender
/// pipelining 64 messages) a pass finds several per member, and with 8 here
/// the driver had to send the rest in a second call: 0.33-0.36 µs of server
/// CPU per delivery against 0.24-0.25 without the writer.
pub const MAX_IOVECS: usize = crate::runtime::connection::MAX_IOVECS;

/// Flags of every send: never block the core, never raise SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// One SENDMSG's header and vectors, alive for the submission that uses them.
struct MsgSlot {
    /// Points at `iov`.
    hdr: libc::msghdr,
    /// The frames' bytes.
    iov: [libc::iovec; MAX_IOVECS],
}

/// A connection in the submission being prepared.
struct Entry {
    /// Kept alive until its completion is handled.
    client: Rc<Client>,
    /// Bytes the operation asked to send.
    wanted: usize,
    /// Set when its completion was seen.
    completed: bool,
}

/// The batched sender of one core. Owned by that core; never shared.
pub struct BatchSender {
    /// Connections with frames to send, in the order they got them.
    pending: RefCell<Vec<Weak<Client>>>,
    /// The previous pass's list, kept for its capacity.
    spare: RefCell<Vec<Weak<Client>>>,
    /// The writer task, woken when `pending` stops being empty.
    waker: Cell<Option<Waker>>,
    /// The private ring of the sends; `None` means plain `send()` calls.
    ring: RefCell<Option<IoUring>>,
    /// SENDMSG scratch, one slot per operation of a submission. Allocated
    /// once and never resized: submitted operations point into it.
    msgs: RefCell<Box<[MsgSlot]>>,
    /// The submission being prepared (reused).
    entries: RefCell<Vec<Entry>>,
    /// Submissions made (ring) or passes of plain sends (no ring).
    batches: Cell<u64>,
    /// Connections written to by this writer.
    sends: Cell<u64>,
}

impl Flush for BatchSender {
    fn queued(&self, client: Weak<Client>) {
        self.enqueue(client);
    }
}

impl BatchSender {
    /// A writer with its own ring, or with plain sends if the kernel refuses
    /// one (or lacks `IORING_SETUP_SUBMIT_ALL`, 5.18: without it one failed
    /// operation would stop the rest of a submission).
    pub fn new() -> BatchSender {
        let ring = IoUring::builder()
            .setup_submit_all()
            .build(RING_ENTRIES as u32);
        if let Err(e) = &ring {
            tracing::warn!(error = %e, "io_uring refused for batched sends; using send()");
        }
        BatchSender::with_ring(ring.ok())
    }

    /// A writer that makes plain `send()` calls.
    pub fn without_ring() -> BatchSender {
        BatchSender::with_ring(None)
    }

    fn with_ring(ring: Option<IoUring>) -> BatchSender {
        let msgs = (0..RING_ENTRIES)
            .map(|_| MsgSlot {
                // SAFETY: msghdr is plain data; zeroed is a valid empty header.
                hdr: unsafe { std::mem::zeroed() },
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVECS],
            })
            .collect();
        BatchSender {
            pending: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            waker: Cell::new(None),
            ring: RefCell::new(ring),
            msgs: RefCell::new(msgs),
            entries: RefCell::new(Vec::with_capacity(RING_ENTRIES)),
            batches: Cell::new(0),
            sends: Cell::new(0),
        }
    }

    /// True when sends go through io_uring.
    pub fn uses_ring(&self) -> bool {
        self.ring.borrow().is_some()
    }

    /// Submissions (or plain-send passes) so far.
    pub fn batches(&self) -> u64 {
        self.batches.get()
    }

    /// Connections written to so far.
    pub fn sends(&self) -> u64 {
        self.sends.get()
    }

    /// Connections waiting for the next pass.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Registers a connection whose queue just became non-empty. The caller
    /// guarantees it is not registered already (`Client` keeps a flag).
    pub fn enqueue(&self, client: Weak<Client>) {
        let mut pending = self.pending.borrow_mut();
        pending.push(client);
        if pending.len() == 1 {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    /// The writer task: one pass whenever connections are pending. Runs for
    /// the life of the core.
    pub async fn run(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                if self.pending.borrow().is_empty() {
                    self.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            self.flush(Instant::now());
        }
    }

    /// Sends what every pending connection has queued (one pass).
    pub fn flush(&self, now: Instant) {
        let mut batch = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut batch, &mut *self.pending.borrow_mut());
        for chunk in batch.chunks(RING_ENTRIES) {
            if self.ring.borrow().is_some() {
                self.submit(chunk, now);
            } else {
                self.send_plain(chunk);
            }
        }
        batch.clear();
        *self.spare.borrow_mut() = batch;
    }

    /// One io_uring submission for up to [`RING_ENTRIES`] connections.
    fn submit(&self, chunk: &[Weak<Client>], now: Instant) {
        let mut ring_slot = self.ring.borrow_mut();
        let Some(ring) = ring_slot.as_mut() else {
            return;
        };
        let mut msgs = self.msgs.borrow_mut();
        let mut entries = self.entries.borrow_mut();
        entries.clear();
        for weak in chunk {
            let Some((client, fd)) = take_off(weak) else {
                continue;
            };
            let out = client.outbound().borrow();
            let frames = out.frames();
            if frames.is_empty() {
                continue;
            }
            let index = entries.len();
            let (sqe, wanted) = if frames.len() == 1 {
                let frame = &frames[0];
                let sqe = opcode::Send::new(types::Fd(fd), frame.as_ptr(), frame.len() as u32)
                    .flags(SEND_FLAGS)
                    .build();
                (sqe, frame.len())
            } else {
                let slot = &mut msgs[index];
                let mut count = 0;
                let mut wanted = 0;
                for (iov, frame) in slot.iov.iter_mut().zip(frames.iter()) {
                    iov.iov_base = frame.as_ptr() as *mut libc::c_void;
                    iov.iov_len = frame.len();
                    wanted += frame.len();
                    count += 1;
                }
                // SAFETY: see `with_ring`.
                slot.hdr = unsafe { std::mem::zeroed() };
                slot.hdr.msg_iov = slot.iov.as_mut_ptr();
                slot.hdr.msg_iovlen = count as _;
                let sqe = opcode::SendMsg::new(types::Fd(fd), &slot.hdr)
                    .flags(SEND_FLAGS as u32)
                    .build();
                (sqe, wanted)
            };
            drop(out);
            // SAFETY: the buffers (frames held by the queue, `msgs` slots) stay
            // put until every completion of this submission is reaped below,
            // and nothing else runs on this core meanwhile. The queue holds at
            // most RING_ENTRIES entries and is drained by every submission.
            let pushed = unsafe { ring.submission().push(&sqe.user_data(index as u64)) };
            if pushed.is_err() {
                client.wake_driver();
                continue;
            }
            entries.push(Entry {
                client,
                wanted,
                completed: false,
            });
        }
        if entries.is_empty() {
            return;
        }
        let want = entries.len();
        let mut failed = None;
        loop {
            match ring.submit_and_wait(want) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.batches.set(self.batches.get() + 1);
        for cqe in ring.completion() {
            let Some(entry) = entries.get_mut(cqe.user_data() as usize) else {
                continue;
            };
            entry.completed = true;
            let result = cqe.result();
            if result > 0 {
                entry
                    .client
                    .outbound()
                    .borrow_mut()
                    .consume(result as usize, now);
                self.sends.set(self.sends.get() + 1);
            }
            // A full socket (-EAGAIN), an error, a partial write or frames
            // beyond MAX_IOVECS: the driver takes it from here.
            if result < 0
                || result as usize != entry.wanted
                || !entry.client.outbound().borrow().is_empty()
            {
                entry.client.wake_driver();
            }
        }
        for entry in entries.iter().filter(|e| !e.completed) {
            entry.client.wake_driver();
        }
        entries.clear();
        if let Some(e) = failed {
            // Operations still queued would point at frames we are about to
            // let go of: drop the ring with them and send plainly from now on.
            tracing::warn!(error = %e, "io_uring submit failed; batched sends use send() from now on");
            *ring_slot = None;
        }
    }

    /// The same pass with plain `send()` calls.
    fn send_plain(&self, chunk: &[Weak<Client>]) {
        self.batches.set(self.batches.get() + 1);
        for weak in chunk {
            let Some((client, fd)) = take_off(weak) else {
                continue;
            };
            let before = client.outbound().borrow().bytes();
            if before == 0 {
                continue;
            }
            let result = crate::runtime::connection::flush(fd, &client);
            if client.outbound().borrow().bytes() < before {
                self.sends.set(self.sends.get() + 1);
            }
            if !matches!(result, Ok(false)) {
                client.wake_driver();
            }
        }
    }
}

/// Takes a connection off the writer's list: the client and its socket, or
/// `None` when it is gone or its driver is closing (woken to finish alone).
fn take_off(weak: &Weak<Client>) -> Option<(Rc<Client>, RawFd)> {
    let client = weak.upgrade()?;
    client.left_batch();
    let fd = client.socket();
    if fd < 0 {
        client.wake_driver();
        return None;
    }
    Some((client, fd))
}

impl Default for BatchSender {
    fn default() -> Self {
        BatchSender::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::outbound::Outbound;
    use crate::shard::{ConnId, FrameKind};
    use bytes::Bytes;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    /// Counts driver wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connected loopback pair: (server side, client side).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (server, client)
    }

    /// A session on `socket` that sends through `writer`, with a counting
    /// driver waker.
    fn session(writer: &Rc<BatchSender>, socket: &TcpStream, n: u64) -> (Rc<Client>, Arc<Count>) {
        let user: Arc<str> = Arc::from(format!("u{n}"));
        let client = Client::new(
            ConnId::new(0, n),
            Identity {
                user_id: user.clone(),
                username: user,
                admin: false,
            },
            Arc::from("room"),
            Outbound::new(1 << 20, Duration::from_secs(30)),
            Instant::now(),
            Some(writer.clone() as Rc<dyn Flush>),
        );
        client.attach_socket(socket.as_raw_fd());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        client.set_waker(&Waker::from(count.clone()));
        (client, count)
    }

    /// A session and the count of its driver's wake-ups.
    type Session = (Rc<Client>, Arc<Count>);

    /// `n` loopback pairs and a session on the server side of each.
    fn sessions(writer: &Rc<BatchSender>, n: usize) -> (Vec<(TcpStream, TcpStream)>, Vec<Session>) {
        let pairs: Vec<_> = (0..n).map(|_| pair()).collect();
        let sessions = pairs
            .iter()
            .enumerate()
            .map(|(i, (s, _))| session(writer, s, i as u64))
            .collect();
        (pairs, sessions)
    }

    fn frame(text: &str) -> Bytes {
        Bytes::from(crate::ws::encode_text(text.as_bytes()))
    }

    fn read_exactly(socket: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        socket.read_exact(&mut buf).unwrap();
        buf
    }

    fn writers() -> Vec<Rc<BatchSender>> {
        let ring = Rc::new(BatchSender::new());
        assert!(
            ring.uses_ring(),
            "io_uring is available on every supported kernel"
        );
        vec![ring, Rc::new(BatchSender::without_ring())]
    }

    #[test]
    fn one_pass_sends_every_pending_connection_in_one_submission() {
        for writer in writers() {
            let (pairs, sessions) = sessions(&writer, 3);
            let now = Instant::now();
            for (i, (client, _)) in sessions.iter().enumerate() {
                client.push(frame(&format!("hello {i}")), FrameKind::Message, now);
            }
            assert_eq!(writer.pending(), 3);
            writer.flush(now);
            assert_eq!(writer.pending(), 0);
            assert_eq!(writer.batches(), 1);
            assert_eq!(writer.sends(), 3);
            for (i, ((client, woken), (_, peer))) in sessions.iter().zip(pairs).enumerate() {
                let want = frame(&format!("hello {i}"));
                let mut peer = peer;
                assert_eq!(read_exactly(&mut peer, want.len()), want.to_vec());
                assert!(client.outbound().borrow().is_empty());
                assert_eq!(woken.0.load(Ordering::SeqCst), 0, "no driver wake-up");
            }
        }
    }

    #[test]
    fn frames_queued_before_the_pass_go_out_in_order_and_registration_is_once() {
        for writer in writers() {
            let (server, mut peer) = pair();
            let (client, woken) = session(&writer, &server, 1);
            let now = Instant::now();
            let frames: Vec<Bytes> = (0..3).map(|i| frame(&format!("m{i}"))).collect();
            for f in &frames {
                client.push(f.clone(), FrameKind::Message, now);
            }
            assert_eq!(writer.pending(), 1);
            writer.flush(now);
            let want: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
            assert_eq!(read_exactly(&mut peer, want.len()), want);
            assert_eq!(writer.sends(), 1);
            assert_eq!(woken.0.load(Ordering::SeqCst), 0);
            // Empty again: the next frame registers again.
            client.push(frame("again"), FrameKind::Message, now);
            assert_eq!(writer.pending(), 1);
        }
    }

    #[test]
    fn frames_beyond_the_vector_limit_go_back_to_the_driver() {
        let writer = Rc::new(BatchSender::new());
        let (server, mut peer) = pair();
        let (client, woken) = session(&writer, &server, 1);
        let now = Instant::now();
        let frames: Vec<Bytes> = (0..MAX_IOVECS + 2)
            .map(|i| frame(&format!("f{i}")))
            .collect();
        for f in &frames {
            client.push(f.clone(), FrameKind::Message, now);
        }
        writer.flush(now);
        let sent: Vec<u8> = frames[..MAX_IOVECS]
            .iter()
            .flat_map(|f| f.to_vec())
            .collect();
        assert_eq!(read_exactly(&mut peer, sent.len()), sent);
        assert_eq!(client.outbound().borrow().frames().len(), 2);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_socket_keeps_its_frame_and_wakes_the_driver() {
        for writer in writers() {
            let (server, _peer) = pair();
            server.set_nonblocking(true).unwrap();
            // Fill the socket: the peer never reads.
            let fill = vec![0u8; 1 << 16];
            // SAFETY: a plain send on an open socket from a live buffer.
            while unsafe {
                libc::send(
                    server.as_raw_fd(),
                    fill.as_ptr().cast(),
                    fill.len(),
                    libc::MSG_DONTWAIT,
                )
            } > 0
            {}
            let (client, woken) = session(&writer, &server, 1);
            let now = Instant::now();
            let f = frame("stuck");
            client.push(f.clone(), FrameKind::Message, now);
            writer.flush(now);
            assert_eq!(writer.sends(), 0);
            assert_eq!(client.outbound().borrow().frames().front(), Some(&f));
            assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn a_closing_connection_is_left_to_its_driver() {
        for writer in writers() {
            let (server, _peer) = pair();
            let (client, woken) = session(&writer, &server, 1);
            let now = Instant::now();
            // Registered, then the driver starts closing before the pass.
            client.push(frame("late"), FrameKind::Message, now);
            client.detach_socket();
            writer.flush(now);
            assert_eq!(writer.sends(), 0);
            assert_eq!(client.outbound().borrow().frames().len(), 1);
            assert_eq!(woken.0.load(Ordering::SeqCst), 1);
            // Once detached, a frame on an empty queue wakes the driver directly.
            client.outbound().borrow_mut().consume(usize::MAX, now);
            client.set_waker(&Waker::from(woken.clone()));
            client.push(frame("direct"), FrameKind::Message, now);
            assert_eq!(writer.pending(), 0);
            assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        }
    }

    #[test]
    fn more_connections_than_the_ring_holds_take_several_submissions() {
        let writer = Rc::new(BatchSender::new());
        let n = RING_ENTRIES + 44;
        let (pairs, sessions) = sessions(&writer, n);
        let now = Instant::now();
        let f = frame("to everyone");
        for (client, _) in &sessions {
            client.push(f.clone(), FrameKind::Message, now);
        }
        writer.flush(now);
        assert_eq!(writer.batches(), 2);
        assert_eq!(writer.sends(), n as u64);
        for (_, peer) in pairs {
            let mut peer = peer;
            assert_eq!(read_exactly(&mut peer, f.len()), f.to_vec());
        }
    }

    #[test]
    fn a_dropped_connection_is_skipped() {
        let writer = Rc::new(BatchSender::new());
        let (server, _peer) = pair();
        let (client, _) = session(&writer, &server, 1);
        client.push(frame("gone"), FrameKind::Message, Instant::now());
        drop(client);
        writer.flush(Instant::now());
        assert_eq!(writer.batches(), 0);
        assert_eq!(writer.sends(), 0);
    }
}
