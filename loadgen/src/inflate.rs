//! permessage-deflate for `--deflate` runs: the socket under tungstenite (which has no
//! compression of its own) offers the extension and inflates the server's compressed
//! frames back into plain ones before tungstenite parses them.
//!
//! The offer is `permessage-deflate; client_no_context_takeover`: the server answers with
//! `server_no_context_takeover` (the chat contract), so every compressed frame is a deflate
//! stream of its own and one reset inflater reads it. What the client sends stays
//! uncompressed, which the extension allows; the server's cost of compressing its
//! broadcasts is what a run measures.
//!
//! The bytes before the first frame (the HTTP 101 answer) pass through unchanged. A
//! server frame with RSV1 set must be final and unfragmented (the chat server sends no
//! other); anything else is passed through for tungstenite to refuse.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The `Sec-WebSocket-Extensions` offer of a `--deflate` connection.
pub const OFFER: &str = "permessage-deflate; client_no_context_takeover";

/// Bytes a sender strips from each compressed message and the receiver appends back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest inflated message accepted (the contract's frame limit, with room for the
/// fields the server adds).
const MAX_INFLATED: usize = 1 << 20;

/// Buffers are kept up to this capacity between reads; larger ones are freed once drained,
/// so 18,000 connections in one process stay small.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The connection's socket: plain, or inflating compressed server frames.
pub enum Stream {
    /// No `--deflate`: bytes go straight through.
    Plain(TcpStream),
    /// `--deflate`: see the module documentation.
    Inflating(Box<Inflating>),
}

impl Stream {
    /// The socket for a connection that offers permessage-deflate when `deflate` is set.
    pub fn new(tcp: TcpStream, deflate: bool) -> Stream {
        if deflate {
            Stream::Inflating(Box::new(Inflating::new(tcp)))
        } else {
            Stream::Plain(tcp)
        }
    }
}

/// A socket that rewrites compressed server frames as plain ones.
pub struct Inflating {
    /// The socket.
    tcp: TcpStream,
    /// Still in the HTTP answer: bytes pass through until its blank line.
    in_head: bool,
    /// Bytes read and not yet turned into output (an incomplete frame, or the last bytes
    /// of the head that could begin its end).
    raw: Vec<u8>,
    /// Bytes for tungstenite, from `out_pos` on.
    out: Vec<u8>,
    /// How much of `out` tungstenite has taken.
    out_pos: usize,
    /// The inflater, reset for every message (no context takeover on the server's side).
    z: Decompress,
    /// Frames that arrived compressed (for tests).
    pub inflated_frames: u64,
}

impl Inflating {
    fn new(tcp: TcpStream) -> Inflating {
        Inflating {
            tcp,
            in_head: true,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            z: Decompress::new(false),
            inflated_frames: 0,
        }
    }

    /// Moves everything complete in `raw` to `out`: head bytes as they are, plain frames
    /// as they are, compressed frames inflated.
    fn process(&mut self) -> io::Result<()> {
        let mut pos = 0;
        if self.in_head {
            match self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    pos = end + 4;
                    self.in_head = false;
                }
                // Keep 3 bytes that may start the blank line.
                None => pos = self.raw.len().saturating_sub(3),
            }
            self.out.extend_from_slice(&self.raw[..pos]);
        }
        while !self.in_head {
            let rest = &self.raw[pos..];
            let Some((header_len, len)) = frame_len(rest) else {
                break;
            };
            if rest.len() < header_len + len {
                break;
            }
            let (first, second) = (rest[0], rest[1]);
            let payload = &rest[header_len..header_len + len];
            if first & 0x40 == 0 || first & 0x80 == 0 || second & 0x80 != 0 {
                self.out.extend_from_slice(&rest[..header_len + len]);
            } else {
                let body = inflate(&mut self.z, payload)?;
                self.inflated_frames += 1;
                write_header(first & !0x40, body.len(), &mut self.out);
                self.out.extend_from_slice(&body);
            }
            pos += header_len + len;
        }
        self.raw.drain(..pos);
        if self.raw.is_empty() && self.raw.capacity() > KEEP_CAPACITY {
            self.raw = Vec::new();
        }
        Ok(())
    }
}

/// Header and payload lengths of the server frame at the start of `bytes`, once the
/// header is complete.
fn frame_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let second = *bytes.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, len) = match second & 0x7f {
        126 => (
            2,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            8,
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (0, n as usize),
    };
    let header = 2 + extended + mask;
    (bytes.len() >= header).then_some((header, len))
}

/// Appends an unmasked frame header with first byte `first` for `len` payload bytes.
fn write_header(first: u8, len: usize, out: &mut Vec<u8>) {
    out.push(first);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// One compressed message, inflated with `z` from a reset state.
fn inflate(z: &mut Decompress, payload: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    z.reset(false);
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    for chunk in [payload, &TAIL[..]] {
        let mut used = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_INFLATED {
                    return Err(bad("inflated frame too big"));
                }
                out.reserve(out.len());
            }
            let before = z.total_in();
            let status = z
                .decompress_vec(&chunk[used..], &mut out, FlushDecompress::Sync)
                .map_err(|_| bad("invalid compressed frame"))?;
            used += (z.total_in() - before) as usize;
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if used == chunk.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(out)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = match self.get_mut() {
            Stream::Plain(tcp) => return Pin::new(tcp).poll_read(cx, buf),
            Stream::Inflating(me) => me,
        };
        loop {
            if me.out_pos < me.out.len() {
                let n = buf.remaining().min(me.out.len() - me.out_pos);
                buf.put_slice(&me.out[me.out_pos..me.out_pos + n]);
                me.out_pos += n;
                if me.out_pos == me.out.len() {
                    me.out.clear();
                    me.out_pos = 0;
                    if me.out.capacity() > KEEP_CAPACITY {
                        me.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut read = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut me.tcp).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                // End of stream: whatever is incomplete is lost, as on the plain path.
                return Poll::Ready(Ok(()));
            }
            me.raw.extend_from_slice(&tmp[..n]);
            me.process()?;
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Inflating(me) => Pin::new(&mut me.tcp).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Inflating(me) => Pin::new(&mut me.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Inflating(me) => Pin::new(&mut me.tcp).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Inflating(me) => Pin::new(&mut me.tcp).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn compressed_frame(text: &[u8]) -> Vec<u8> {
        let mut z = Compress::new(Compression::fast(), false);
        let mut body = Vec::with_capacity(text.len() + 64);
        z.compress_vec(text, &mut body, FlushCompress::Sync)
            .unwrap();
        body.truncate(body.len() - 4);
        let mut frame = Vec::new();
        write_header(0xc1, body.len(), &mut frame);
        frame.extend_from_slice(&body);
        frame
    }

    #[tokio::test(flavor = "current_thread")]
    async fn head_passes_and_compressed_frames_come_out_plain() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = "{\"type\":\"message\",\"content\":\"".to_string() + &"abc ".repeat(200) + "\"}";
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\nX: y\r\n\r\n".to_vec();
        let mut plain = Vec::new();
        write_header(0x81, 5, &mut plain);
        plain.extend_from_slice(b"hello");
        wire.extend_from_slice(&compressed_frame(text.as_bytes()));
        wire.extend_from_slice(&plain);
        wire.extend_from_slice(&compressed_frame(text.as_bytes()));
        let sent = wire.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // In small pieces, so frames and the head straddle reads.
            for chunk in sent.chunks(7) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut stream = Stream::new(tcp, true);
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        server.await.unwrap();
        let mut want = b"HTTP/1.1 101 Switching Protocols\r\nX: y\r\n\r\n".to_vec();
        write_header(0x81, text.len(), &mut want);
        want.extend_from_slice(text.as_bytes());
        want.extend_from_slice(&plain);
        write_header(0x81, text.len(), &mut want);
        want.extend_from_slice(text.as_bytes());
        assert_eq!(got, want);
        let Stream::Inflating(me) = stream else {
            panic!("inflating")
        };
        assert_eq!(me.inflated_frames, 2);
    }
}
