//! Server side of the WebSocket protocol (RFC 6455): frame decoding, message
//! reassembly, frame encoding and the opening handshake response.
//!
//! The module is pure: it never touches a socket. The connection task reads
//! the socket into a per-core scratch buffer and hands those bytes to
//! [`Decoder::feed`], and it writes whatever the `encode_*` functions return.
//! Keeping I/O out makes every rule here testable byte by byte.
//!
//! Header parsing and formatting come from tungstenite's frame primitives, so
//! the bit-level layout is shared with a well-tested implementation. What
//! tungstenite's own connection type would add (an owned buffer per
//! connection, copies of every payload) is what we avoid: a server holding
//! 100k mostly idle connections cannot afford a read buffer for each one. The
//! decoder therefore works on the caller's buffer, unmasks complete frames in
//! place, and only copies bytes when a frame or a fragmented message straddles
//! two reads. Those copies live in vectors that are released as soon as they
//! drain, so an idle connection's decoder owns no heap memory at all.

use std::io::Cursor;
use std::mem;

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::deflate::{Agreed, InflateError, Inflater};

/// Largest accepted message (after reassembly of fragments); larger closes with 1009.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason we send: the control payload limit minus the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// One thing the peer said, as reported by [`Decoder::feed`].
#[derive(Debug)]
pub enum WsEvent<'a> {
    /// A complete text message, unmasked, UTF-8 checked; mutable so the JSON parser can work in place.
    Text(&'a mut [u8]),
    /// A complete binary message (the server refuses them with an error frame, so only the fact matters).
    Binary,
    /// A ping with its payload, which the pong must echo.
    Ping(&'a [u8]),
    /// A pong (unsolicited or answering our keep-alive ping); only its arrival matters.
    Pong,
    /// A close frame from the peer with its code, if any.
    Close(Option<u16>),
}

/// Why the peer's byte stream was refused. Every variant ends the connection
/// with the close code given by [`WsError::close_code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// A frame header or a reassembled message exceeds the decoder's limit.
    #[error("message too big")]
    TooBig,
    /// The peer broke a framing rule of RFC 6455; the text names which.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or close reason) is not valid UTF-8.
    #[error("invalid utf-8 in text message")]
    InvalidUtf8,
    /// A compressed message is not a valid deflate stream.
    #[error("invalid compressed data")]
    BadDeflate,
}

impl From<InflateError> for WsError {
    fn from(e: InflateError) -> WsError {
        match e {
            InflateError::TooBig => WsError::TooBig,
            InflateError::Corrupt => WsError::BadDeflate,
        }
    }
}

impl WsError {
    /// The close code to send before dropping the connection (RFC 6455 section 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig => 1009,
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 | WsError::BadDeflate => 1007,
        }
    }
}

/// Kind of a fragmented message whose final fragment has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragmented {
    /// Text: the fragments are kept, because the whole message is handed over.
    Text,
    /// Binary: only the length is tracked, because the content is never used.
    Binary,
}

/// Whether decoding may continue after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep decoding the following frames.
    Continue,
    /// The peer sent a close frame; anything after it is meaningless.
    Closed,
}

/// Incremental decoder, one per connection. Holds NO heap allocation while idle (between complete frames):
/// a partial frame tail or an unfinished fragmented message is copied into an internal Vec only when needed, and that Vec is freed (not just cleared) once it drains, so 100k idle connections cost nothing here.
#[derive(Debug)]
pub struct Decoder {
    /// Largest message (and therefore frame) accepted; checked against frame
    /// headers so an oversized message is refused before it is buffered.
    max_message: usize,
    /// Raw (still masked) bytes of a frame that was cut off at the end of a
    /// previous `feed`: header first, then as much payload as arrived.
    /// Empty with no capacity whenever the input ended on a frame boundary.
    tail: Vec<u8>,
    /// Unmasked payload of the text fragments received so far of a fragmented
    /// message. Empty with no capacity when no text message is in progress.
    message: Vec<u8>,
    /// Kind of the fragmented message in progress, `None` between messages;
    /// needed to reject out-of-sequence continuation and data frames.
    fragmented: Option<Fragmented>,
    /// Payload bytes received so far of the fragmented message in progress.
    /// Tracked separately from `message` because binary fragments are counted
    /// against the size limit but not stored.
    message_len: usize,
    /// permessage-deflate, when the upgrade negotiated it: RSV1 marks a
    /// compressed message, inflated here. `None`: RSV1 is a protocol error.
    inflater: Option<Inflater>,
    /// The fragmented message in progress is compressed (RSV1 on its first
    /// frame): its fragments are kept, binary ones too, and inflated whole.
    compressed: bool,
}

impl Decoder {
    /// A decoder that refuses messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            tail: Vec::new(),
            message: Vec::new(),
            fragmented: None,
            message_len: 0,
            inflater: None,
            compressed: false,
        }
    }

    /// A decoder for a connection that negotiated permessage-deflate:
    /// compressed messages are inflated, and `max_message` bounds both
    /// their compressed and their inflated size.
    pub fn with_deflate(max_message: usize, agreed: Agreed) -> Decoder {
        Decoder {
            inflater: Some(Inflater::new(agreed)),
            ..Decoder::new(max_message)
        }
    }

    /// Decodes every complete frame found in (held tail ++ `input`), calling `on_event` for each complete message and control frame in order.
    /// `input` is the caller's scratch buffer and may be overwritten after return; frames lying wholly inside `input` are unmasked in place and passed without copying.
    /// After an error or a Close event, the caller stops feeding.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        mut on_event: impl FnMut(WsEvent<'_>),
    ) -> Result<(), WsError> {
        let mut pos = 0;

        // First finish the frame left over from the previous read, if any,
        // copying only the bytes that belong to it.
        if !self.tail.is_empty() {
            match self.finish_tail(input, &mut pos, &mut on_event)? {
                Some(Flow::Continue) => {}
                Some(Flow::Closed) => return Ok(()),
                // The input ran out before the held frame was complete.
                None => return Ok(()),
            }
        }

        // Then every frame lying wholly inside `input` is handled in place.
        while pos < input.len() {
            let rest = &input[pos..];
            let mut cursor = Cursor::new(rest);
            let parsed =
                FrameHeader::parse(&mut cursor).map_err(|_| WsError::Protocol("unknown opcode"))?;
            let Some((header, len)) = parsed else {
                // Not even the whole header arrived: keep it for next time.
                self.hold(rest);
                return Ok(());
            };
            self.check_header(&header, len)?;
            let header_len = cursor.position() as usize;
            // `check_header` bounded `len` by `max_message`, so it fits a usize.
            let len = len as usize;
            if rest.len() - header_len < len {
                self.hold(rest);
                return Ok(());
            }
            let start = pos + header_len;
            pos = start + len;
            let payload = &mut input[start..pos];
            unmask(payload, header.mask.unwrap_or_default());
            if self.on_frame(&header, payload, &mut on_event)? == Flow::Closed {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Bytes currently held (for memory accounting and tests).
    pub fn held_bytes(&self) -> usize {
        self.tail.len() + self.message.len()
    }

    /// Heap capacity currently allocated by the decoder. This is what an idle
    /// connection actually costs, so it is the figure to watch for leaks; it
    /// is 0 whenever no partial frame or fragmented message is held.
    pub fn held_capacity(&self) -> usize {
        self.tail.capacity() + self.message.capacity()
    }

    /// Whether inflate state is held between messages (a connection whose
    /// client keeps its compression context).
    pub fn holds_inflate_state(&self) -> bool {
        self.inflater.as_ref().is_some_and(Inflater::holds_state)
    }

    /// Copies the start of a frame that `input` cut off, to be completed by a
    /// later `feed`. Only called while `tail` is empty.
    fn hold(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
    }

    /// Moves bytes from `input[*pos..]` into the held frame until it is
    /// complete, then handles it and frees the tail. Returns `None` when the
    /// input ran out first (everything was taken and held).
    fn finish_tail(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<Option<Flow>, WsError> {
        // The header length is known from its first two bytes.
        if !self.take_until(2, input, pos) {
            return Ok(None);
        }
        let header_len = header_len(self.tail[1]);
        if !self.take_until(header_len, input, pos) {
            return Ok(None);
        }
        let (header, len) = FrameHeader::parse(&mut Cursor::new(&self.tail[..header_len]))
            .map_err(|_| WsError::Protocol("unknown opcode"))?
            .ok_or(WsError::Protocol("truncated frame header"))?;
        // Checked on every call, so that a header which completes inside this
        // call is refused before its payload is buffered. The check does not
        // change state, so repeating it on later calls is harmless.
        self.check_header(&header, len)?;
        if !self.take_until(header_len + len as usize, input, pos) {
            return Ok(None);
        }
        // Taking the vector out frees its allocation when it goes out of
        // scope and lets `on_frame` borrow `self` while the payload is lent.
        let mut frame = mem::take(&mut self.tail);
        let payload = &mut frame[header_len..];
        unmask(payload, header.mask.unwrap_or_default());
        self.on_frame(&header, payload, on_event).map(Some)
    }

    /// Inflates a whole compressed message (binary ones too: a client
    /// that keeps its context refers back to them later) and reports it.
    fn inflated(
        &mut self,
        kind: Fragmented,
        compressed: &[u8],
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<(), WsError> {
        let inflater = self
            .inflater
            .as_mut()
            .ok_or(WsError::Protocol("reserved bits set"))?;
        // A vector of its own, freed once the message is handled.
        let mut message = Vec::new();
        inflater.inflate(compressed, self.max_message, &mut message)?;
        match kind {
            Fragmented::Text => {
                std::str::from_utf8(&message).map_err(|_| WsError::InvalidUtf8)?;
                on_event(WsEvent::Text(&mut message));
            }
            Fragmented::Binary => on_event(WsEvent::Binary),
        }
        Ok(())
    }

    /// Grows `tail` to `want` bytes from `input[*pos..]`; true when it got there.
    fn take_until(&mut self, want: usize, input: &[u8], pos: &mut usize) -> bool {
        let missing = want.saturating_sub(self.tail.len());
        let take = missing.min(input.len() - *pos);
        self.tail.extend_from_slice(&input[*pos..*pos + take]);
        *pos += take;
        self.tail.len() >= want
    }

    /// Refuses a frame from its header alone, before any payload is buffered.
    fn check_header(&self, header: &FrameHeader, len: u64) -> Result<(), WsError> {
        if header.rsv2 || header.rsv3 {
            // No extension that uses them is ever negotiated.
            return Err(WsError::Protocol("reserved bits set"));
        }
        if header.rsv1 {
            // permessage-deflate's "compressed" bit: only with the
            // extension, only on the first frame of a data message.
            if self.inflater.is_none() {
                return Err(WsError::Protocol("reserved bits set"));
            }
            match header.opcode {
                OpCode::Control(_) => return Err(WsError::Protocol("RSV1 set on a control frame")),
                OpCode::Data(Data::Continue) => {
                    return Err(WsError::Protocol("RSV1 set on a continuation frame"))
                }
                OpCode::Data(_) => {}
            }
        }
        if header.mask.is_none() {
            // RFC 6455 section 5.1: the server must refuse unmasked client frames.
            return Err(WsError::Protocol("client frame not masked"));
        }
        let max = self.max_message as u64;
        match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(WsError::Protocol("unknown opcode"))
            }
            OpCode::Control(_) if !header.is_final => {
                Err(WsError::Protocol("fragmented control frame"))
            }
            OpCode::Control(_) if len > MAX_CONTROL_PAYLOAD as u64 => {
                Err(WsError::Protocol("control frame too long"))
            }
            OpCode::Control(_) => Ok(()),
            OpCode::Data(Data::Continue) if self.fragmented.is_none() => Err(WsError::Protocol(
                "continuation frame without a message in progress",
            )),
            // Saturating: a 64-bit length near 2^64 must not wrap the sum below the limit.
            OpCode::Data(Data::Continue) if (self.message_len as u64).saturating_add(len) > max => {
                Err(WsError::TooBig)
            }
            OpCode::Data(Data::Continue) => Ok(()),
            OpCode::Data(_) if self.fragmented.is_some() => Err(WsError::Protocol(
                "new data frame while a fragmented message is in progress",
            )),
            OpCode::Data(_) if len > max => Err(WsError::TooBig),
            OpCode::Data(_) => Ok(()),
        }
    }

    /// Handles one complete, validated, unmasked frame.
    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: &mut [u8],
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<Flow, WsError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => on_event(WsEvent::Ping(payload)),
            OpCode::Control(Control::Pong) => on_event(WsEvent::Pong),
            OpCode::Control(Control::Close) => {
                on_event(WsEvent::Close(close_code(payload)?));
                return Ok(Flow::Closed);
            }
            OpCode::Data(data) if header.is_final && header.rsv1 => {
                let kind = match data {
                    Data::Text => Fragmented::Text,
                    _ => Fragmented::Binary,
                };
                self.inflated(kind, payload, on_event)?;
            }
            OpCode::Data(Data::Text) if header.is_final => {
                std::str::from_utf8(payload).map_err(|_| WsError::InvalidUtf8)?;
                on_event(WsEvent::Text(payload));
            }
            OpCode::Data(Data::Binary) if header.is_final => on_event(WsEvent::Binary),
            OpCode::Data(Data::Text) => {
                self.fragmented = Some(Fragmented::Text);
                self.compressed = header.rsv1;
                self.message_len = payload.len();
                self.message.extend_from_slice(payload);
            }
            OpCode::Data(Data::Binary) => {
                self.fragmented = Some(Fragmented::Binary);
                self.compressed = header.rsv1;
                self.message_len = payload.len();
                if self.compressed {
                    // Inflated at the end, to keep the client's context in step.
                    self.message.extend_from_slice(payload);
                }
            }
            OpCode::Data(Data::Continue) => {
                self.message_len += payload.len();
                if self.fragmented == Some(Fragmented::Text) || self.compressed {
                    self.message.extend_from_slice(payload);
                }
                if header.is_final {
                    self.message_len = 0;
                    let compressed = mem::take(&mut self.compressed);
                    match self.fragmented.take() {
                        Some(kind) if compressed => {
                            let message = mem::take(&mut self.message);
                            self.inflated(kind, &message, on_event)?;
                        }
                        Some(Fragmented::Text) => {
                            // Taken out so the allocation is freed once handled.
                            let mut message = mem::take(&mut self.message);
                            std::str::from_utf8(&message).map_err(|_| WsError::InvalidUtf8)?;
                            on_event(WsEvent::Text(&mut message));
                        }
                        Some(Fragmented::Binary) => on_event(WsEvent::Binary),
                        // `check_header` refuses continuations with nothing in progress.
                        None => return Err(WsError::Protocol("unexpected continuation frame")),
                    }
                }
            }
            // `check_header` has refused reserved opcodes already.
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::Protocol("unknown opcode"));
            }
        }
        Ok(Flow::Continue)
    }
}

/// Length of a frame header from its second byte (mask bit and 7-bit length):
/// the 2 fixed bytes, the extended length if any, and the masking key if any.
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The code of a close frame's payload (RFC 6455 section 5.5.1), refusing
/// payloads that cannot be a valid close body.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes such as 1005/1006 are reserved for local use and must
            // never appear on the wire; unassigned ranges are refused too.
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// XORs `buf` with the repeating 4-byte masking key, 8 bytes at a time.
///
/// Every payload the server reads goes through here, so it works on whole
/// words rather than byte by byte. Masking always starts at offset 0 because
/// only complete frame payloads are unmasked.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    // Native byte order on both sides, so the key's bytes line up with the
    // buffer's bytes whatever the endianness.
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence at key index 0.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends an unmasked, final frame with `opcode` and `payload` to `out`.
fn encode_frame_into(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        // RFC 6455 section 5.1: a server must not mask its frames.
        mask: None,
    };
    out.reserve(header.len(payload.len() as u64) + payload.len());
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
}

/// A whole unmasked frame with `opcode` and `payload`.
fn encode_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(opcode, payload, &mut out);
    out
}

/// Cuts a control payload to the 125 bytes a control frame may carry, so a
/// careless caller cannot make the server break the protocol itself.
fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// A text frame carrying `payload` (server frames are never masked; FIN set).
pub fn encode_text(payload: &[u8]) -> Vec<u8> {
    encode_frame(OpCode::Data(Data::Text), payload)
}

/// Appends a text frame carrying `payload` to `out`, so a fan-out can build
/// one buffer for many messages without intermediate vectors.
pub fn encode_text_into(payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_into(OpCode::Data(Data::Text), payload, out);
}

/// Length of the header [`encode_text_into`] writes for a payload of this
/// size, so callers can size output buffers exactly before encoding.
pub fn text_header_len(payload_len: usize) -> usize {
    FrameHeader::default().len(payload_len as u64)
}

/// A ping frame (the payload is cut to the 125 bytes a control frame allows).
pub fn encode_ping(payload: &[u8]) -> Vec<u8> {
    encode_frame(OpCode::Control(Control::Ping), control_payload(payload))
}

/// A pong frame echoing a ping's payload (cut to 125 bytes like a ping's).
pub fn encode_pong(payload: &[u8]) -> Vec<u8> {
    encode_frame(OpCode::Control(Control::Pong), control_payload(payload))
}

/// A close frame with `code` and `reason`; the reason is truncated at a char
/// boundary so that it fits the 123 bytes left after the code.
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Control(Control::Close), &payload)
}

/// The complete `101 Switching Protocols` response for a client's
/// Sec-WebSocket-Key, naming permessage-deflate when it was agreed.
pub fn accept_response(sec_websocket_key: &str, deflate: Option<Agreed>) -> Vec<u8> {
    let accept = derive_accept_key(sec_websocket_key.trim().as_bytes());
    let (ext_name, ext_value, ext_end) = match deflate {
        Some(agreed) => (
            "Sec-WebSocket-Extensions: ",
            agreed.response_value(),
            "\r\n",
        ),
        None => ("", "", ""),
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\
         {ext_name}{ext_value}{ext_end}\
         \r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed masking key with four distinct bytes, so a misaligned unmask shows.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Byte-at-a-time reference for `unmask`.
    fn naive_mask(buf: &mut [u8], mask: [u8; 4]) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }

    /// A raw client frame: header written by tungstenite, payload masked.
    /// `first` is the whole first byte (FIN, RSV and opcode).
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode: OpCode::from(first & 0x0F),
            mask,
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(mask) = mask {
            naive_mask(&mut out[start..], mask);
        }
        out
    }

    /// A masked client frame with FIN set or not and opcode `op`.
    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(if fin { 0x80 } else { 0 } | op, payload, Some(MASK))
    }

    /// An owned copy of an event, so tests can collect them across feeds.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Text(String),
        Binary,
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn own(ev: WsEvent<'_>) -> Ev {
        match ev {
            WsEvent::Text(t) => Ev::Text(String::from_utf8(t.to_vec()).unwrap()),
            WsEvent::Binary => Ev::Binary,
            WsEvent::Ping(p) => Ev::Ping(p.to_vec()),
            WsEvent::Pong => Ev::Pong,
            WsEvent::Close(c) => Ev::Close(c),
        }
    }

    /// Feeds `chunks` one after the other into `dec`, collecting the events.
    fn feed_chunks(dec: &mut Decoder, chunks: &[&[u8]]) -> (Vec<Ev>, Result<(), WsError>) {
        let mut events = Vec::new();
        for chunk in chunks {
            let mut buf = chunk.to_vec();
            let res = dec.feed(&mut buf, |ev| events.push(own(ev)));
            if res.is_err() {
                return (events, res);
            }
        }
        (events, Ok(()))
    }

    fn decode(bytes: &[u8]) -> (Vec<Ev>, Result<(), WsError>) {
        feed_chunks(&mut Decoder::new(MAX_MESSAGE_SIZE), &[bytes])
    }

    #[test]
    fn unmask_matches_naive_for_every_length() {
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(31)).collect();
        for len in 0..data.len() {
            let mut fast = data[..len].to_vec();
            let mut slow = data[..len].to_vec();
            unmask(&mut fast, MASK);
            naive_mask(&mut slow, MASK);
            assert_eq!(fast, slow, "length {len}");
        }
        // Masking twice restores the input.
        let mut twice = data.clone();
        unmask(&mut twice, MASK);
        assert_ne!(twice, data);
        unmask(&mut twice, MASK);
        assert_eq!(twice, data);
    }

    #[test]
    fn single_text_frame() {
        let (events, res) = decode(&frame(true, 1, b"{\"type\":\"ping\"}"));
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("{\"type\":\"ping\"}".into())]);
    }

    #[test]
    fn text_is_unmasked_in_place_in_the_input() {
        let mut buf = frame(true, 1, b"hello");
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let mut seen = None;
        dec.feed(&mut buf, |ev| {
            if let WsEvent::Text(t) = ev {
                // The caller may rewrite the message, e.g. for in-place JSON parsing.
                t[0] = b'j';
                seen = Some(t.as_ptr());
            }
        })
        .unwrap();
        // 2-byte header + 4-byte key, then the payload: no copy was made.
        assert_eq!(seen, Some(buf[6..].as_ptr()));
        assert_eq!(&buf[6..], b"jello");
        assert_eq!(dec.held_capacity(), 0);
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let mut bytes = Vec::new();
        bytes.extend(frame(true, 1, b"one"));
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(true, 2, &[1, 2, 3]));
        bytes.extend(frame(true, 1, "zwei \u{e9}".as_bytes()));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(true, 1, b""));
        let (events, res) = decode(&bytes);
        assert_eq!(res, Ok(()));
        assert_eq!(
            events,
            vec![
                Ev::Text("one".into()),
                Ev::Ping(b"p".to_vec()),
                Ev::Binary,
                Ev::Text("zwei \u{e9}".into()),
                Ev::Pong,
                Ev::Text(String::new()),
            ]
        );
    }

    #[test]
    fn split_at_every_position_gives_the_same_events() {
        let mut bytes = Vec::new();
        bytes.extend(frame(true, 1, b"first message"));
        bytes.extend(frame(true, 9, b"ping!"));
        bytes.extend(frame(true, 1, &[b'x'; 300])); // 16-bit length form
        let (expected, res) = decode(&bytes);
        assert_eq!(res, Ok(()));
        assert_eq!(expected.len(), 3);
        for split in 0..=bytes.len() {
            let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
            let (events, res) = feed_chunks(&mut dec, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(res, Ok(()), "split at {split}");
            assert_eq!(events, expected, "split at {split}");
            assert_eq!(dec.held_bytes(), 0, "split at {split}");
            assert_eq!(dec.held_capacity(), 0, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_events() {
        let mut bytes = frame(false, 1, b"frag");
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(true, 0, b"mented"));
        bytes.extend(frame(true, 8, &[0x03, 0xe8]));
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let (events, res) = feed_chunks(&mut Decoder::new(MAX_MESSAGE_SIZE), &chunks);
        assert_eq!(res, Ok(()));
        assert_eq!(
            events,
            vec![
                Ev::Ping(b"ping".to_vec()),
                Ev::Text("fragmented".into()),
                Ev::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn fragmented_text_with_ping_between_fragments() {
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (events, res) = feed_chunks(
            &mut dec,
            &[
                &frame(false, 1, b"Hel"),
                &frame(true, 9, b"are you there"),
                &frame(false, 0, b"lo, "),
            ],
        );
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Ping(b"are you there".to_vec())]);
        // The two first fragments are held until the message completes.
        assert_eq!(dec.held_bytes(), 7);
        let (events, res) = feed_chunks(&mut dec, &[&frame(true, 0, b"world")]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("Hello, world".into())]);
        assert_eq!(dec.held_bytes(), 0);
        assert_eq!(dec.held_capacity(), 0);
    }

    #[test]
    fn fragmented_binary_is_reported_once_complete() {
        let mut bytes = frame(false, 2, &[0xff; 10]);
        bytes.extend(frame(false, 0, &[0xfe; 10]));
        bytes.extend(frame(true, 0, &[0xfd; 10]));
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (events, res) = feed_chunks(&mut dec, &[&bytes]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Binary]);
        assert_eq!(dec.held_capacity(), 0);
    }

    #[test]
    fn length_forms_7_16_and_64_bit() {
        // (payload length, expected header length including the 4-byte key)
        for (len, header) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let payload = vec![b'a'; len];
            let bytes = frame(true, 1, &payload);
            assert_eq!(bytes.len(), header + len, "length {len}");
            let (events, res) = decode(&bytes);
            assert_eq!(res, Ok(()), "length {len}");
            assert_eq!(events, vec![Ev::Text("a".repeat(len))], "length {len}");
        }
    }

    #[test]
    fn exactly_max_size_is_accepted() {
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (events, res) = feed_chunks(&mut dec, &[&frame(true, 2, &vec![0; MAX_MESSAGE_SIZE])]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Binary]);
    }

    #[test]
    fn max_plus_one_is_refused_from_the_header_alone() {
        let bytes = frame(true, 1, &vec![b'a'; MAX_MESSAGE_SIZE + 1]);
        // 2 fixed bytes + 8-byte length + 4-byte key: no payload byte at all.
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (events, res) = feed_chunks(&mut dec, &[&bytes[..14]]);
        assert_eq!(res, Err(WsError::TooBig));
        assert_eq!(res.unwrap_err().close_code(), 1009);
        assert!(events.is_empty());
        // Also when the header itself arrives in two pieces.
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (_, res) = feed_chunks(&mut dec, &[&bytes[..5], &bytes[5..14]]);
        assert_eq!(res, Err(WsError::TooBig));
    }

    #[test]
    fn reassembled_message_over_max_is_refused_at_the_continuation_header() {
        let mut dec = Decoder::new(10);
        let (_, res) = feed_chunks(&mut dec, &[&frame(false, 1, b"123456")]);
        assert_eq!(res, Ok(()));
        let next = frame(true, 0, b"12345");
        let (_, res) = feed_chunks(&mut dec, &[&next[..6]]);
        assert_eq!(res, Err(WsError::TooBig));
    }

    /// Found by the `ws_decoder` fuzz target (exact bytes): a 6-byte binary
    /// fragment, then a continuation whose 64-bit length is 2^64 - 1. The
    /// reassembled-length check added the two lengths: a panic with overflow
    /// checks, and without them a wrapped sum that let the frame through.
    #[test]
    fn continuation_length_near_u64_max_is_too_big() {
        let stream: &[u8] = &[
            2, 134, 151, 0, 0, 0, 10, 3, 2, 131, 55, 55, 0, 255, 255, 255, 255, 255, 255, 255, 255,
            255, 255, 237, 250, 129,
        ];
        for limit in [40, MAX_MESSAGE_SIZE] {
            let (events, res) = feed_chunks(&mut Decoder::new(limit), &[stream]);
            assert_eq!(events, vec![], "limit {limit}");
            assert_eq!(res, Err(WsError::TooBig), "limit {limit}");
        }
        // The same when the header arrives in reads of 3 bytes, as fuzzed.
        let chunks: Vec<&[u8]> = stream.chunks(3).collect();
        let (events, res) = feed_chunks(&mut Decoder::new(40), &chunks);
        assert_eq!(events, vec![]);
        assert_eq!(res, Err(WsError::TooBig));
    }

    #[test]
    fn reassembled_message_of_exactly_max_is_accepted() {
        let mut dec = Decoder::new(10);
        let mut bytes = frame(false, 1, b"123456");
        bytes.extend(frame(true, 0, b"7890"));
        let (events, res) = feed_chunks(&mut dec, &[&bytes]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("1234567890".into())]);
    }

    #[test]
    fn unmasked_frame_is_refused() {
        let (events, res) = decode(&raw_frame(0x81, b"hi", None));
        assert_eq!(res, Err(WsError::Protocol("client frame not masked")));
        assert_eq!(res.unwrap_err().close_code(), 1002);
        assert!(events.is_empty());
    }

    #[test]
    fn rsv_bits_are_refused() {
        for rsv in [0x40, 0x20, 0x10] {
            let (_, res) = decode(&raw_frame(0x81 | rsv, b"hi", Some(MASK)));
            assert_eq!(res, Err(WsError::Protocol("reserved bits set")), "{rsv:#x}");
        }
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        for op in [3u8, 7, 11, 15] {
            let mut bytes = raw_frame(0x81, b"hi", Some(MASK));
            bytes[0] = 0x80 | op;
            let (_, res) = decode(&bytes);
            assert_eq!(res, Err(WsError::Protocol("unknown opcode")), "opcode {op}");
        }
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        let (_, res) = decode(&frame(false, 9, b"x"));
        assert_eq!(res, Err(WsError::Protocol("fragmented control frame")));
        let (_, res) = decode(&frame(true, 9, &[0; 126]));
        assert_eq!(res, Err(WsError::Protocol("control frame too long")));
        let (events, res) = decode(&frame(true, 9, &[7; 125]));
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Ping(vec![7; 125])]);
    }

    #[test]
    fn out_of_sequence_data_frames_are_refused() {
        let (_, res) = decode(&frame(true, 0, b"x"));
        assert_eq!(
            res,
            Err(WsError::Protocol(
                "continuation frame without a message in progress"
            ))
        );
        let mut bytes = frame(false, 1, b"a");
        bytes.extend(frame(true, 1, b"b"));
        let (_, res) = decode(&bytes);
        assert_eq!(
            res,
            Err(WsError::Protocol(
                "new data frame while a fragmented message is in progress"
            ))
        );
    }

    #[test]
    fn bad_utf8_is_refused() {
        let (events, res) = decode(&frame(true, 1, &[b'a', 0xff, b'b']));
        assert_eq!(res, Err(WsError::InvalidUtf8));
        assert_eq!(res.unwrap_err().close_code(), 1007);
        assert!(events.is_empty());
        // A character split across fragments is fine; a truncated one is not.
        let euro = "\u{20ac}".as_bytes();
        let mut ok = frame(false, 1, &euro[..1]);
        ok.extend(frame(true, 0, &euro[1..]));
        assert_eq!(decode(&ok).0, vec![Ev::Text("\u{20ac}".into())]);
        let mut bad = frame(false, 1, &euro[..1]);
        bad.extend(frame(true, 0, &euro[1..2]));
        assert_eq!(decode(&bad).1, Err(WsError::InvalidUtf8));
    }

    #[test]
    fn binary_is_reported_as_binary() {
        let (events, res) = decode(&frame(true, 2, &[0, 159, 146, 150]));
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Binary]);
    }

    #[test]
    fn close_with_code_and_without_payload() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let (events, res) = decode(&frame(true, 8, &payload));
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Close(Some(1000))]);

        let (events, res) = decode(&frame(true, 8, b""));
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Close(None)]);
    }

    #[test]
    fn frames_after_close_are_ignored() {
        let mut bytes = frame(true, 8, &4000u16.to_be_bytes());
        bytes.extend(frame(true, 1, b"late"));
        let (events, res) = decode(&bytes);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Close(Some(4000))]);
    }

    #[test]
    fn invalid_close_payloads_are_refused() {
        let (_, res) = decode(&frame(true, 8, &[0x03]));
        assert_eq!(
            res,
            Err(WsError::Protocol("close frame with a 1-byte payload"))
        );
        for code in [0u16, 999, 1005, 1006, 1015, 1016, 2999, 5000] {
            let (_, res) = decode(&frame(true, 8, &code.to_be_bytes()));
            assert_eq!(
                res,
                Err(WsError::Protocol("invalid close code")),
                "code {code}"
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xc3);
        assert_eq!(
            decode(&frame(true, 8, &bad_reason)).1,
            Err(WsError::InvalidUtf8)
        );
    }

    #[test]
    fn held_bytes_track_partial_frames_and_are_freed() {
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let bytes = frame(true, 1, b"hello world");
        feed_chunks(&mut dec, &[&bytes]).1.unwrap();
        assert_eq!(dec.held_bytes(), 0);
        assert_eq!(dec.held_capacity(), 0);

        // Header (6 bytes) and 3 payload bytes arrive: all 9 are held.
        let (events, res) = feed_chunks(&mut dec, &[&bytes[..9]]);
        assert_eq!(res, Ok(()));
        assert!(events.is_empty());
        assert_eq!(dec.held_bytes(), 9);
        assert!(dec.held_capacity() >= 9);

        let (events, res) = feed_chunks(&mut dec, &[&bytes[9..]]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("hello world".into())]);
        assert_eq!(dec.held_bytes(), 0);
        assert_eq!(dec.held_capacity(), 0);
    }

    #[test]
    fn tail_copies_only_the_held_frame() {
        // The second frame lies wholly in the second chunk and must not be
        // copied into the tail along with the end of the first.
        let first = frame(true, 1, b"abc");
        let second = frame(true, 1, b"def");
        let mut chunk2 = first[4..].to_vec();
        chunk2.extend(&second);
        let mut dec = Decoder::new(MAX_MESSAGE_SIZE);
        let (events, res) = feed_chunks(&mut dec, &[&first[..4], &chunk2, &second[..3]]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("abc".into()), Ev::Text("def".into())]);
        assert_eq!(dec.held_bytes(), 3);
    }

    #[test]
    fn accept_response_for_the_rfc_sample_key() {
        let response =
            String::from_utf8(accept_response("dGhlIHNhbXBsZSBub25jZQ==", None)).unwrap();
        assert!(!response.contains("Extensions"));
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.contains("\r\nUpgrade: websocket\r\n"));
        assert!(response.contains("\r\nConnection: Upgrade\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }

    /// Parses a server frame with tungstenite: (header, payload).
    fn parse_server_frame(bytes: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(bytes.len(), start + len as usize, "trailing bytes");
        (header, bytes[start..].to_vec())
    }

    #[test]
    fn encoded_frames_round_trip_through_tungstenite() {
        for len in [0, 125, 126, 65535, 65536] {
            let payload = vec![b'z'; len];
            let bytes = encode_text(&payload);
            assert_eq!(bytes.len(), text_header_len(len) + len, "length {len}");
            let (header, body) = parse_server_frame(&bytes);
            assert!(header.is_final);
            assert_eq!(header.mask, None);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(body, payload);
        }
        assert_eq!(text_header_len(125), 2);
        assert_eq!(text_header_len(126), 4);
        assert_eq!(text_header_len(65536), 10);

        let (header, body) = parse_server_frame(&encode_ping(b"tick"));
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert_eq!(body, b"tick");

        let (header, body) = parse_server_frame(&encode_pong(b"tock"));
        assert_eq!(header.opcode, OpCode::Control(Control::Pong));
        assert_eq!(body, b"tock");

        let (header, body) = parse_server_frame(&encode_close(1009, "too big"));
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(body, b"\x03\xf1too big");
    }

    #[test]
    fn encode_text_into_appends() {
        let mut out = b"prefix".to_vec();
        encode_text_into(b"ab", &mut out);
        encode_text_into(b"c", &mut out);
        assert_eq!(out, b"prefix\x81\x02ab\x81\x01c");
    }

    #[test]
    fn close_reason_is_truncated_at_a_char_boundary() {
        // 61 two-byte chars = 122 bytes, then a third byte would split a char
        // at 123: the reason must stop at 122.
        let reason = "\u{e9}".repeat(70);
        let (_, body) = parse_server_frame(&encode_close(1000, &reason));
        assert_eq!(body.len(), 2 + 122);
        assert_eq!(
            std::str::from_utf8(&body[2..]).unwrap(),
            "\u{e9}".repeat(61)
        );
        let (_, body) = parse_server_frame(&encode_close(1000, &"a".repeat(200)));
        assert_eq!(body.len(), 125);
    }

    #[test]
    fn control_payloads_are_capped_at_125_bytes() {
        let (_, body) = parse_server_frame(&encode_ping(&[1; 200]));
        assert_eq!(body.len(), 125);
        let (_, body) = parse_server_frame(&encode_pong(&[1; 200]));
        assert_eq!(body.len(), 125);
    }

    #[test]
    fn close_codes() {
        assert_eq!(WsError::TooBig.close_code(), 1009);
        assert_eq!(WsError::Protocol("x").close_code(), 1002);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
    }

    /// Raw deflate of `data` with a sync flush, the 4-byte tail stripped,
    /// from a compressor the caller keeps (context takeover) or not.
    fn deflate_with(z: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        z.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0xff, 0xff]);
        out.truncate(out.len() - 4);
        out
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        deflate_with(
            &mut flate2::Compress::new(flate2::Compression::default(), false),
            data,
        )
    }

    fn deflate_decoder() -> Decoder {
        Decoder::with_deflate(
            MAX_MESSAGE_SIZE,
            Agreed {
                client_no_context_takeover: false,
            },
        )
    }

    #[test]
    fn compressed_text_is_inflated() {
        let text = "hello hello hello hello compressed world".repeat(20);
        let bytes = raw_frame(0xc1, &deflate(text.as_bytes()), Some(MASK));
        let mut dec = deflate_decoder();
        let (events, res) = feed_chunks(&mut dec, &[&bytes]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text(text.clone())]);
        // Uncompressed frames still pass as they are.
        let (events, res) = feed_chunks(&mut dec, &[&frame(true, 1, b"plain")]);
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("plain".into())]);
        // Byte by byte, the same.
        let mut dec = deflate_decoder();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed_chunks(&mut dec, &chunks).0, vec![Ev::Text(text)]);
    }

    #[test]
    fn rsv1_without_the_extension_or_on_the_wrong_frame_is_a_protocol_error() {
        let body = deflate(b"hello");
        let (_, res) = decode(&raw_frame(0xc1, &body, Some(MASK)));
        assert_eq!(res, Err(WsError::Protocol("reserved bits set")));
        assert_eq!(res.unwrap_err().close_code(), 1002);
        for op in [0x89u8, 0x8a, 0x88] {
            let (_, res) = feed_chunks(
                &mut deflate_decoder(),
                &[&raw_frame(op | 0x40, b"", Some(MASK))],
            );
            assert_eq!(res, Err(WsError::Protocol("RSV1 set on a control frame")));
        }
        let mut bytes = raw_frame(0x41, &body[..2], Some(MASK));
        bytes.extend(raw_frame(0xc0, &body[2..], Some(MASK)));
        let (_, res) = feed_chunks(&mut deflate_decoder(), &[&bytes]);
        assert_eq!(
            res,
            Err(WsError::Protocol("RSV1 set on a continuation frame"))
        );
        assert_eq!(res.unwrap_err().close_code(), 1002);
        // RSV2 and RSV3 stay refused with the extension.
        let (_, res) = feed_chunks(
            &mut deflate_decoder(),
            &[&raw_frame(0xa1, b"x", Some(MASK))],
        );
        assert_eq!(res, Err(WsError::Protocol("reserved bits set")));
    }

    #[test]
    fn fragmented_compressed_message_is_inflated_whole() {
        let text = "fragmented and compressed, ".repeat(30);
        let body = deflate(text.as_bytes());
        let third = body.len() / 3;
        let mut bytes = raw_frame(0x41, &body[..third], Some(MASK));
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(raw_frame(0x00, &body[third..2 * third], Some(MASK)));
        bytes.extend(raw_frame(0x80, &body[2 * third..], Some(MASK)));
        let mut dec = deflate_decoder();
        let (events, res) = feed_chunks(&mut dec, &[&bytes]);
        assert_eq!(res, Ok(()));
        assert_eq!(
            events,
            vec![Ev::Ping(b"ping".to_vec()), Ev::Text(text.clone())]
        );
        assert_eq!(dec.held_capacity(), 0);
        // A compressed binary message is inflated too (the context needs
        // it) and reported as binary.
        let bytes = raw_frame(0xc2, &deflate(text.as_bytes()), Some(MASK));
        assert_eq!(feed_chunks(&mut dec, &[&bytes]).0, vec![Ev::Binary]);
    }

    #[test]
    fn the_limit_applies_to_the_inflated_message() {
        // 64 KiB + 1 of one letter compresses to a few hundred bytes.
        let big = vec![b'a'; MAX_MESSAGE_SIZE + 1];
        let body = deflate(&big);
        assert!(body.len() < 1024);
        let (events, res) = feed_chunks(
            &mut deflate_decoder(),
            &[&raw_frame(0xc1, &body, Some(MASK))],
        );
        assert_eq!(res, Err(WsError::TooBig));
        assert_eq!(res.unwrap_err().close_code(), 1009);
        assert!(events.is_empty());
        // Exactly the limit inflates.
        let body = deflate(&big[..MAX_MESSAGE_SIZE]);
        let (events, res) = feed_chunks(
            &mut deflate_decoder(),
            &[&raw_frame(0xc1, &body, Some(MASK))],
        );
        assert_eq!(res, Ok(()));
        assert_eq!(events, vec![Ev::Text("a".repeat(MAX_MESSAGE_SIZE))]);
    }

    #[test]
    fn invalid_deflate_data_closes_with_1007() {
        let (_, res) = feed_chunks(
            &mut deflate_decoder(),
            &[&raw_frame(0xc1, &[0xff; 8], Some(MASK))],
        );
        assert_eq!(res, Err(WsError::BadDeflate));
        assert_eq!(res.unwrap_err().close_code(), 1007);
        // Inflated bytes that are not UTF-8: 1007 as for a plain frame.
        let (_, res) = feed_chunks(
            &mut deflate_decoder(),
            &[&raw_frame(0xc1, &deflate(&[b'a', 0xff]), Some(MASK))],
        );
        assert_eq!(res, Err(WsError::InvalidUtf8));
    }

    #[test]
    fn a_client_keeping_its_context_is_followed_across_messages() {
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let text = "{\"type\":\"message\",\"content\":\"the same words again and again\"}";
        let mut dec = deflate_decoder();
        for round in 0..3 {
            let bytes = raw_frame(0xc1, &deflate_with(&mut z, text.as_bytes()), Some(MASK));
            let (events, res) = feed_chunks(&mut dec, &[&bytes]);
            assert_eq!(res, Ok(()), "round {round}");
            assert_eq!(events, vec![Ev::Text(text.into())], "round {round}");
            assert!(dec.holds_inflate_state());
        }
        // With client_no_context_takeover nothing is held between messages.
        let mut dec = Decoder::with_deflate(
            MAX_MESSAGE_SIZE,
            Agreed {
                client_no_context_takeover: true,
            },
        );
        let bytes = raw_frame(0xc1, &deflate(text.as_bytes()), Some(MASK));
        assert_eq!(
            feed_chunks(&mut dec, &[&bytes]).0,
            vec![Ev::Text(text.into())]
        );
        assert!(!dec.holds_inflate_state());
    }

    #[test]
    fn compressed_frames_cut_anywhere_give_the_same_messages() {
        let texts = ["short", &"a longer message with repeats, ".repeat(40)];
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut stream = Vec::new();
        for text in texts {
            // Context kept across the two messages, as a browser does.
            stream.extend(raw_frame(
                0xc1,
                &deflate_with(&mut z, text.as_bytes()),
                Some(MASK),
            ));
        }
        let want: Vec<Ev> = texts.iter().map(|t| Ev::Text(t.to_string())).collect();
        for cut in 0..stream.len() {
            let (events, res) =
                feed_chunks(&mut deflate_decoder(), &[&stream[..cut], &stream[cut..]]);
            assert_eq!(res, Ok(()), "cut at {cut}");
            assert_eq!(events, want, "cut at {cut}");
        }
    }

    #[test]
    fn accept_response_names_the_agreed_extension() {
        let agreed = Agreed {
            client_no_context_takeover: false,
        };
        let response = String::from_utf8(accept_response("x", Some(agreed))).unwrap();
        assert!(response.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        ));
    }
}
