//! The connection driver: moves bytes between one WebSocket and its session.
//!
//! One task per connection, no buffers of its own while idle:
//! - **Reads** go into the core's shared scratch buffer (a socket read and
//!   the decoding of what it returned happen within one poll, so one buffer
//!   serves every connection of the core); only an incomplete frame tail is
//!   copied into the connection's decoder.
//! - **Writes**: the core's batched sender (`sender.rs`) sends a queue that
//!   just became non-empty along with the rest of the fan-out; the driver
//!   gathers what remains (a full socket, a backlog) into one `sendmsg` per
//!   wake-up. When the socket is full, the driver waits for writability
//!   through glommio (io_uring poll) and keeps reading meanwhile.
//! - **Replays**: every write's `consume` tops the queue up from the
//!   connection's `since` replay backlog (`outbound.rs`), so a replay goes
//!   out as fast as this loop (or the writer) gets bytes into the socket,
//!   and no faster.
//! - **Backpressure**: while the cross-core staging queues are over their
//!   soft limit, the driver stops reading its socket.
//!
//! Closing: the driver sends a close frame (1000 echo, 1001 shutdown/idle,
//! 1009 oversized, 1013 slow consumer, ...), half-closes, and lingers briefly
//! for the client's own close so the close frame is not lost to a reset.

use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::auth::Identity;
use crate::client::Client;
use crate::deflate::Agreed;
use crate::metrics::CloseReason;
use crate::protocol::MessageId;
use crate::runtime::server::CoreCtx;
use crate::shard::FrameKind;
use crate::ws::{self, Decoder, WsEvent, MAX_MESSAGE_SIZE};

/// Frames gathered into one `sendmsg`.
pub const MAX_IOVECS: usize = 64;
/// How long a closing connection waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What woke the driver.
enum Wake {
    /// `n` bytes are in the core's scratch buffer.
    Read(usize),
    /// The client closed the TCP connection, or it failed.
    Eof,
    /// The socket took some bytes, or the queue has frames, or a close was
    /// requested: run the loop again.
    Work,
}

/// What a verified upgrade request hands to the connection.
pub struct Start {
    /// Who the token says is connecting.
    pub identity: Identity,
    /// The token's `exp` (Unix seconds): when the connection expires.
    pub exp: Option<u64>,
    /// The initial room (validated).
    pub room: Arc<str>,
    /// Recovery point for the initial room, from `?since=`.
    pub since: Option<MessageId>,
    /// The client's `Sec-WebSocket-Key`.
    pub ws_key: Box<str>,
    /// permessage-deflate as agreed in the upgrade (None: off).
    pub deflate: Option<Agreed>,
    /// Bytes the client sent after its request head.
    pub early: Vec<u8>,
}

/// Completes the WebSocket handshake of a verified socket and runs the
/// connection until it closes.
pub async fn serve(ctx: Rc<CoreCtx>, mut stream: TcpStream, start: Start) {
    let Start {
        identity,
        exp,
        room,
        since,
        ws_key,
        deflate,
        early,
    } = start;
    let accept = ws::accept_response(&ws_key, deflate);
    drop(ws_key);
    if stream.write_all(&accept).await.is_err() {
        return;
    }
    drop(accept);
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = ctx.shared.settings.socket_send_buffer {
        set_send_buffer(stream.as_raw_fd(), bytes);
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let client = ctx.with_hub(|hub| {
        let client = hub.open_with(identity, room, since, deflate.is_some(), now);
        hub.set_token_expiry(client.id, exp, now, wall);
        // Banned after the accepting core checked (its copy of the ban
        // list was a moment behind this core's): closed like the user's
        // other connections.
        if hub.banned_until(&client.identity.user_id, wall).is_some() {
            client.request_close(crate::hub::BANNED_CLOSE, CloseReason::Banned);
        }
        client
    });
    let mut decoder = match deflate {
        Some(agreed) => Decoder::with_deflate(MAX_MESSAGE_SIZE, agreed),
        None => Decoder::new(MAX_MESSAGE_SIZE),
    };
    let mut early = early;
    let ended = match early.is_empty() {
        true => None,
        false => feed(&ctx, &client, &mut decoder, &mut early).err(),
    };
    let reason = match ended {
        Some(reason) => reason,
        None => drive(&ctx, &client, &mut stream, &mut decoder).await,
    };
    finish(&ctx, &client, &mut stream).await;
    ctx.with_hub(|hub| hub.closed(&client, reason, Instant::now()));
}

/// The read/write loop. Returns why the connection ended.
async fn drive(
    ctx: &Rc<CoreCtx>,
    client: &Rc<Client>,
    stream: &mut TcpStream,
    decoder: &mut Decoder,
) -> CloseReason {
    let fd = stream.as_raw_fd();
    client.attach_socket(fd);
    // Detached on every way out, a dropped task included: the descriptor
    // number may belong to another connection once the stream is closed.
    let _attached = Attached(client);
    drive_attached(ctx, client, stream, decoder, fd).await
}

/// Detaches the client's socket from the writer when dropped.
struct Attached<'a>(&'a Client);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.detach_socket();
    }
}

/// [`drive`] while the writer may send on the socket.
async fn drive_attached(
    ctx: &Rc<CoreCtx>,
    client: &Rc<Client>,
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    fd: i32,
) -> CloseReason {
    // The round this reader last paused in while the mesh was congested.
    let mut paused = None;
    loop {
        if let Some((_, reason)) = client.close_request() {
            return reason;
        }
        let blocked = match flush(fd, client) {
            Ok(blocked) => blocked,
            Err(_) => return CloseReason::Client,
        };
        let wake = poll_fn(|cx| {
            client.set_waker(cx.waker());
            if client.close_request().is_some()
                || (!blocked && !client.outbound().borrow().is_empty())
            {
                return Poll::Ready(Wake::Work);
            }
            if blocked {
                let out = client.outbound().borrow();
                if let Some(front) = out.frames().front() {
                    // glommio tries the send, else waits for writability.
                    match Pin::new(&mut *stream).poll_write(cx, front) {
                        Poll::Ready(Ok(n)) => {
                            drop(out);
                            client.outbound().borrow_mut().consume(n, Instant::now());
                            return Poll::Ready(Wake::Work);
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(Wake::Eof),
                        Poll::Pending => {}
                    }
                }
            }
            if ctx.router.congested() {
                ctx.router.pause_reader(cx.waker(), &mut paused);
                return Poll::Pending;
            }
            let mut scratch = ctx.scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::Eof),
                Poll::Ready(Ok(n)) => Poll::Ready(Wake::Read(n)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match wake {
            Wake::Work => {}
            Wake::Eof => return CloseReason::Client,
            Wake::Read(n) => {
                let mut scratch = ctx.scratch.borrow_mut();
                if let Err(reason) = feed(ctx, client, decoder, &mut scratch[..n]) {
                    return reason;
                }
            }
        }
    }
}

/// Decodes bytes from the client and hands each frame to the session.
/// Protocol errors request a close and return its reason.
fn feed(
    ctx: &Rc<CoreCtx>,
    client: &Rc<Client>,
    decoder: &mut Decoder,
    bytes: &mut [u8],
) -> Result<(), CloseReason> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut peer_closed = None;
    let result = ctx.with_hub(|hub| {
        decoder.feed(bytes, |event| {
            if peer_closed.is_some() {
                return;
            }
            match event {
                WsEvent::Text(payload) => hub.on_text(client, payload, now, wall),
                WsEvent::Binary => hub.on_binary(client, now),
                WsEvent::Ping(payload) => {
                    client.touch(now);
                    client.push(ws::encode_pong(payload).into(), FrameKind::Message, now);
                }
                WsEvent::Pong => client.touch(now),
                WsEvent::Close(code) => peer_closed = Some(code),
            }
        })
    });
    if let Err(e) = result {
        client.request_close(e.close_code(), CloseReason::Protocol);
        return Err(CloseReason::Protocol);
    }
    if let Some(code) = peer_closed {
        // Echo the client's code (1000 when it gave none), as RFC 6455 asks.
        client.request_close(code.unwrap_or(1000), CloseReason::Client);
        return Err(CloseReason::Client);
    }
    Ok(())
}

/// Writes as much of the queue as the socket takes, in one gathered
/// `sendmsg`. Returns true when the socket is full and frames remain.
pub(crate) fn flush(fd: i32, client: &Client) -> io::Result<bool> {
    let mut out = client.outbound().borrow_mut();
    loop {
        let frames = out.frames();
        let n = match frames.len() {
            0 => return Ok(false),
            // One frame (the common case at chat rates): a plain send.
            // SAFETY: the frame outlives the call.
            1 => unsafe {
                libc::send(
                    fd,
                    frames[0].as_ptr() as *const libc::c_void,
                    frames[0].len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
            _ => {
                let mut iov = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVECS];
                let mut count = 0;
                for (slot, frame) in iov.iter_mut().zip(frames.iter()) {
                    slot.iov_base = frame.as_ptr() as *mut libc::c_void;
                    slot.iov_len = frame.len();
                    count += 1;
                }
                // SAFETY: msghdr is plain data; zeroed is a valid empty header.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = count as _;
                // SAFETY: the iovecs point into frames kept alive by `out` for the call.
                unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(true),
                io::ErrorKind::Interrupted => continue,
                _ => Err(err),
            };
        }
        let wanted: usize = frames.iter().take(MAX_IOVECS).map(|f| f.len()).sum();
        out.consume(n as usize, Instant::now());
        if (n as usize) < wanted {
            return Ok(true);
        }
    }
}

/// Sends what is queued and the close frame, half-closes, and waits briefly
/// for the client's close. A slow consumer gets one non-blocking attempt and
/// no linger: it is not reading anyway.
async fn finish(ctx: &CoreCtx, client: &Client, stream: &mut TcpStream) {
    let (code, reason) = client
        .close_request()
        .unwrap_or((1000, CloseReason::Client));
    let text = match reason {
        CloseReason::SlowConsumer => "slow consumer",
        CloseReason::Idle => "idle timeout",
        CloseReason::Shutdown => "server shutting down",
        CloseReason::Protocol => "protocol error",
        CloseReason::TooManyConnections => "too many connections for this user",
        CloseReason::TokenExpired => "token expired",
        CloseReason::Disconnected => "disconnected by an operator",
        CloseReason::Banned => "banned",
        CloseReason::Client => "",
    };
    {
        let mut out = client.outbound().borrow_mut();
        if reason != CloseReason::SlowConsumer && !out.is_closed() {
            out.close_after_queued();
        } else {
            out.close();
        }
        out.push_final(ws::encode_close(code, text).into());
    }
    let fd = stream.as_raw_fd();
    if reason == CloseReason::SlowConsumer {
        let _ = flush(fd, client);
        return;
    }
    let written = glommio::timer::timeout(CLOSE_LINGER, async {
        write_all_queued(stream, client)
            .await
            .map_err(glommio::GlommioError::IoError)
    })
    .await;
    if written.is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    // Linger: read and discard until the client closes or time runs out.
    let _ = glommio::timer::timeout(CLOSE_LINGER, async {
        loop {
            let n = poll_fn(|cx| {
                let mut scratch = ctx.scratch.borrow_mut();
                Pin::new(&mut *stream).poll_read(cx, &mut scratch[..])
            })
            .await;
            match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            }
        }
    })
    .await;
}

/// Writes the whole queue, waiting for writability as needed.
async fn write_all_queued(stream: &mut TcpStream, client: &Client) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while flush(fd, client)? {
        poll_fn(|cx| {
            let out = client.outbound().borrow();
            let Some(front) = out.frames().front() else {
                return Poll::Ready(Ok(()));
            };
            match Pin::new(&mut *stream).poll_write(cx, front) {
                Poll::Ready(Ok(n)) => {
                    drop(out);
                    client.outbound().borrow_mut().consume(n, Instant::now());
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
    }
    Ok(())
}

/// Sets SO_SNDBUF (best effort: the kernel clamps it to its limits).
fn set_send_buffer(fd: i32, bytes: u64) {
    let value = bytes.min(i32::MAX as u64) as libc::c_int;
    // SAFETY: setsockopt reads an int from the pointer we pass.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
