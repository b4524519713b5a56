//! Opening one WebSocket connection and classifying why it failed.
//!
//! A connection counts as established when the server's first `room_joined` frame
//! arrives; the handshake latency runs from just before the TCP connect to that frame, so
//! it includes TCP setup, the HTTP upgrade, token verification and the join.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::StreamExt;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

use crate::clock::mono_ns;
use crate::frame;
use crate::inflate::{self, Stream};

/// A client WebSocket over plain TCP (inflating compressed frames with `--deflate`).
pub type Ws = WebSocketStream<Stream>;

/// Socket buffer sizes inside tungstenite, kept small so one process holds 18,000
/// connections in a few hundred MiB; the kernel's own socket buffers do the queueing.
pub fn ws_config(sender: bool) -> WebSocketConfig {
    // Receivers write only pongs and a close frame: write them out at once. Senders batch
    // up to 16 KiB of frames per flush.
    let write = if sender { 16 * 1024 } else { 0 };
    let mut cfg = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(write)
        .max_write_buffer_size(write + 1024 * 1024);
    // The contract caps client frames at 64 KiB; server frames are bounded by the same
    // content limits, so 1 MiB is generous and still stops a runaway server.
    cfg = cfg
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    cfg
}

/// An established connection.
pub struct Opened {
    /// The stream, positioned right after `room_joined`.
    pub ws: Ws,
    /// TCP connect start to `room_joined`, ns.
    pub handshake_ns: u64,
    /// Frames that arrived before `room_joined` (the contract says none should).
    pub early_frames: u32,
}

/// Connects from `src` to `server`, upgrades with `url` and waits for `room_joined`.
/// On failure returns the failure kind.
pub async fn open(
    server: SocketAddr,
    src: IpAddr,
    url: &str,
    config: WebSocketConfig,
    timeout: Duration,
    deflate: bool,
) -> Result<Opened, String> {
    let start = mono_ns();
    let attempt = async {
        let socket = bound_socket(server, src).map_err(|e| io_kind(&e))?;
        let stream = socket.connect(server).await.map_err(|e| io_kind(&e))?;
        // Chat frames are small and latency is the measurement: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let mut request = url.into_client_request().map_err(|e| ws_kind(&e))?;
        if deflate {
            request.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                tungstenite::http::HeaderValue::from_static(inflate::OFFER),
            );
        }
        let stream = Stream::new(stream, deflate);
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| ws_kind(&e))?;
        let mut early_frames = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if frame::parse(&text).is_some_and(|f| f.kind == "room_joined") {
                        return Ok((ws, early_frames));
                    }
                    early_frames += 1;
                }
                Some(Ok(Message::Close(_))) | None => return Err("closed".to_string()),
                Some(Ok(_)) => early_frames += 1,
                Some(Err(e)) => return Err(ws_kind(&e)),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err("timeout".into()),
        Ok(Err(kind)) => Err(kind),
        Ok(Ok((ws, early_frames))) => Ok(Opened {
            ws,
            handshake_ns: mono_ns() - start,
            early_frames,
        }),
    }
}

/// A non-blocking TCP socket bound to `src` with the port left to `connect`.
///
/// `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect`, which only needs the
/// full 4-tuple to be unique; a plain `bind(src:0)` would reserve the port for every
/// destination and exhaust the range sooner.
fn bound_socket(server: SocketAddr, src: IpAddr) -> std::io::Result<TcpSocket> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    if src.is_ipv4() {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and a correctly sized int option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket.bind(&SocketAddr::new(src, 0).into())?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// Failure kind of an I/O error during connect.
pub fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "fd_limit".into(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => return "no_source_port".into(),
        Some(libc::ETIMEDOUT) => return "timeout".into(),
        _ => {}
    }
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset".into(),
        K::UnexpectedEof => "closed".into(),
        K::TimedOut => "timeout".into(),
        _ => "io_error".into(),
    }
}

/// Failure kind of a WebSocket error during the upgrade or before `room_joined`.
pub fn ws_kind(e: &tungstenite::Error) -> String {
    use tungstenite::error::ProtocolError as P;
    use tungstenite::Error as E;
    match e {
        E::Http(response) => format!("http_{}", response.status().as_u16()),
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        E::Protocol(P::HandshakeIncomplete) | E::Protocol(P::ResetWithoutClosingHandshake) => {
            "closed".into()
        }
        E::Io(io) => io_kind(io),
        E::Protocol(_) | E::HttpFormat(_) | E::Utf8(_) => "protocol".into(),
        _ => "ws_error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_io_errors() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_kind(&e), "refused");
        assert_eq!(
            io_kind(&std::io::Error::from_raw_os_error(libc::EMFILE)),
            "fd_limit"
        );
        assert_eq!(
            io_kind(&std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            "no_source_port"
        );
        assert_eq!(
            io_kind(&std::io::Error::from_raw_os_error(libc::ECONNRESET)),
            "reset"
        );
    }

    #[test]
    fn classifies_http_refusals() {
        let response = tungstenite::http::Response::builder()
            .status(401)
            .body(Some(b"{\"error\":\"bad token\"}".to_vec()))
            .unwrap();
        assert_eq!(
            ws_kind(&tungstenite::Error::Http(Box::new(response))),
            "http_401"
        );
        assert_eq!(ws_kind(&tungstenite::Error::ConnectionClosed), "closed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refused_when_nobody_listens() {
        // Find a free port, then close the listener so the port refuses.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let url = format!("ws://127.0.0.1:{port}/ws?token=x&roomId=r");
        let r = open(
            server,
            [127, 0, 0, 2].into(),
            &url,
            ws_config(false),
            Duration::from_secs(2),
            false,
        )
        .await;
        assert_eq!(r.err().as_deref(), Some("refused"));
    }
}
