//! permessage-deflate (RFC 7692): what the upgrade agrees to, the per-core
//! compressor of broadcast frames and the per-connection inflater.
//!
//! The server always answers with `server_no_context_takeover`: every
//! compressed message is a deflate stream of its own, so one compressed
//! copy of a broadcast frame is valid for every member that negotiated the
//! extension, whatever that member received before. Compression therefore
//! happens once per message, at the room's owner core (`hub/room_owner.rs`),
//! never per connection, and only for rooms with such a member (the owner
//! counts them through their joins and leaves).
//!
//! Inbound it is the client's choice: without `client_no_context_takeover`
//! the client's compressor keeps its window across messages, so the
//! connection's inflater must keep it too (allocated on the first
//! compressed message, held while the connection lives); with it, the
//! inflater is dropped after each message, so an idle connection holds no
//! inflate state.
//!
//! Pure: no I/O, no clock. The negotiation is a function of the header text.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The extension's registered name.
pub const EXTENSION: &str = "permessage-deflate";

/// The bytes a sender strips from the end of each compressed message (the
/// empty stored block of a sync flush) and the receiver appends back
/// (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression level of broadcast frames. Level 1 (fastest): chat
/// messages are short JSON where higher levels find little more to
/// squeeze, and the compression runs on the room owner's core
/// (BENCHMARKS.md, "permessage-deflate").
const LEVEL: u32 = 1;

/// The window the server compresses with (2^15 bytes, deflate's largest):
/// an offer that limits it (`server_max_window_bits` below 15) is declined,
/// since the one shared compressed copy cannot honour a different window
/// per member.
const SERVER_WINDOW_BITS: u8 = 15;

/// What the server agreed to with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The client offered `client_no_context_takeover` (echoed in the
    /// answer): it compresses every message on its own, so the server's
    /// inflater keeps nothing between messages.
    pub client_no_context_takeover: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response_value(&self) -> &'static str {
        if self.client_no_context_takeover {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        } else {
            "permessage-deflate; server_no_context_takeover"
        }
    }
}

/// One extension of a `Sec-WebSocket-Extensions` list: its name and its
/// parameters (name, value after unquoting), in order.
#[derive(Debug, PartialEq, Eq)]
struct Offer<'a> {
    /// Extension token, e.g. `permessage-deflate`.
    name: &'a str,
    /// Parameters as written; a quoted value is unquoted.
    params: Vec<(&'a str, Option<String>)>,
}

/// The first acceptable permessage-deflate offer among the client's
/// `Sec-WebSocket-Extensions` offers, or `None` (no extension: the
/// connection runs uncompressed). An offer with an unknown or repeated
/// parameter or an invalid value is declined and the next one considered
/// (RFC 7692 section 5); a header that does not parse as an extension list
/// declines everything.
pub fn negotiate(header: &str) -> Option<Agreed> {
    parse_offers(header)?
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(EXTENSION))
        .find_map(|offer| accept(&offer.params))
}

/// The answer to one permessage-deflate offer, or `None` to decline it.
fn accept(params: &[(&str, Option<String>)]) -> Option<Agreed> {
    const NAMES: [&str; 4] = [
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    ];
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        client_no_context_takeover: false,
    };
    for (name, value) in params {
        let index = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name))?;
        if std::mem::replace(&mut seen[index], true) {
            return None; // a repeated parameter (section 7)
        }
        let value = value.as_deref();
        match index {
            // Takes no value.
            0 if value.is_none() => {}
            1 if value.is_none() => agreed.client_no_context_takeover = true,
            // Must have a value, 8 to 15; the server compresses with 15 only.
            2 => {
                if window_bits(value?)? != SERVER_WINDOW_BITS {
                    return None;
                }
            }
            // The client may limit its own window; any value is fine for
            // an inflater with the largest window, so the answer need not
            // name it. Without a value it only says the client could.
            3 => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// A window-bits value: 8 to 15, digits only, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    let ok = matches!(value.len(), 1 | 2)
        && value.bytes().all(|b| b.is_ascii_digit())
        && !value.starts_with('0');
    let bits: u8 = value.parse().ok().filter(|_| ok)?;
    (8..=15).contains(&bits).then_some(bits)
}

/// Whether `b` may appear in an HTTP token (RFC 7230 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses an extension list (RFC 6455 section 9.1): offers separated by
/// commas (empty elements allowed), each a token with `;`-separated
/// parameters, each `name` or `name=value` with a token or quoted-string
/// value. `None` when it does not parse.
fn parse_offers(header: &str) -> Option<Vec<Offer<'_>>> {
    let bytes = header.as_bytes();
    let mut pos = 0;
    let skip_ws = |pos: &mut usize| {
        while *pos < bytes.len() && matches!(bytes[*pos], b' ' | b'\t') {
            *pos += 1;
        }
    };
    let token = |pos: &mut usize| -> Option<&str> {
        let start = *pos;
        while *pos < bytes.len() && is_tchar(bytes[*pos]) {
            *pos += 1;
        }
        (*pos > start).then(|| &header[start..*pos])
    };
    let mut offers = Vec::new();
    loop {
        skip_ws(&mut pos);
        match bytes.get(pos) {
            None => break,
            Some(b',') => {
                pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = token(&mut pos)?;
        let mut params = Vec::new();
        loop {
            skip_ws(&mut pos);
            match bytes.get(pos) {
                None => break,
                Some(b',') => {
                    pos += 1;
                    break;
                }
                Some(b';') => pos += 1,
                Some(_) => return None,
            }
            skip_ws(&mut pos);
            let param = token(&mut pos)?;
            skip_ws(&mut pos);
            let mut value = None;
            if bytes.get(pos) == Some(&b'=') {
                pos += 1;
                skip_ws(&mut pos);
                value = Some(if bytes.get(pos) == Some(&b'"') {
                    quoted(bytes, &mut pos)?
                } else {
                    token(&mut pos)?.to_string()
                });
            }
            params.push((param, value));
        }
        offers.push(Offer { name, params });
    }
    Some(offers)
}

/// A quoted-string starting at `bytes[*pos]` (the opening quote), unquoted
/// (`\x` stands for `x`); `None` when it is not closed.
fn quoted(bytes: &[u8], pos: &mut usize) -> Option<String> {
    let mut out = Vec::new();
    *pos += 1;
    loop {
        match *bytes.get(*pos)? {
            b'"' => {
                *pos += 1;
                return String::from_utf8(out).ok();
            }
            b'\\' => {
                out.push(*bytes.get(*pos + 1)?);
                *pos += 2;
            }
            b => {
                out.push(b);
                *pos += 1;
            }
        }
    }
}

/// The compressor of one core: each call compresses one message as a
/// stream of its own (no context takeover), reusing the same state and
/// scratch buffer, so a compression allocates nothing once warm.
pub struct Deflater {
    /// Raw deflate state (no zlib header), reset before every message.
    z: Compress,
    /// Smallest payload compressed (WS_COMPRESSION_MIN_BYTES).
    min_bytes: usize,
    /// Compressed bytes of the message being framed; kept for the next.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("min_bytes", &self.min_bytes)
            .finish()
    }
}

impl Deflater {
    /// A compressor for payloads of at least `min_bytes`.
    pub fn new(min_bytes: usize) -> Deflater {
        Deflater {
            z: Compress::new(Compression::new(LEVEL), false),
            min_bytes,
            scratch: Vec::new(),
        }
    }

    /// Appends to `out` a complete text frame (FIN and RSV1 set) carrying
    /// `payload` compressed, when the payload has at least `min_bytes` and
    /// the compressed frame comes out smaller than the plain one. Returns
    /// whether it appended anything.
    pub fn text_frame_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        if payload.len() < self.min_bytes {
            return false;
        }
        self.z.reset();
        self.scratch.clear();
        // Deflate never grows a payload by more than a few bytes per 16 KiB
        // stored block plus the flush marker; output beyond the plain size
        // is not worth sending anyway.
        self.scratch.reserve(payload.len() + 64);
        match self
            .z
            .compress_vec(payload, &mut self.scratch, FlushCompress::Sync)
        {
            Ok(_) if self.z.total_in() == payload.len() as u64 => {}
            _ => return false,
        }
        let Some(body) = self.scratch.strip_suffix(&TAIL) else {
            return false;
        };
        if body.len() >= payload.len() {
            return false;
        }
        encode_compressed_text_into(body, out);
        true
    }
}

/// Appends a final text frame with RSV1 set (a compressed message).
pub fn encode_compressed_text_into(body: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Text),
        mask: None,
    };
    out.reserve(header.len(body.len() as u64) + body.len());
    header
        .format(body.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(body);
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The message inflates to more than the limit (close 1009).
    #[error("decompressed message too big")]
    TooBig,
    /// The bytes are not a valid deflate stream (close 1007).
    #[error("invalid compressed data")]
    Corrupt,
}

/// The inflater of one connection that negotiated permessage-deflate.
#[derive(Default)]
pub struct Inflater {
    /// Raw deflate state, created by the first compressed message; kept
    /// while the client keeps its context, else dropped after each message.
    z: Option<Box<Decompress>>,
    /// False when the client agreed to `client_no_context_takeover`.
    keep_context: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("allocated", &self.z.is_some())
            .field("keep_context", &self.keep_context)
            .finish()
    }
}

impl Inflater {
    /// The inflater for what was agreed; allocates nothing yet.
    pub fn new(agreed: Agreed) -> Inflater {
        Inflater {
            z: None,
            keep_context: !agreed.client_no_context_takeover,
        }
    }

    /// Whether inflate state is held between messages (what an idle
    /// connection costs).
    pub fn holds_state(&self) -> bool {
        self.z.is_some()
    }

    /// Inflates one whole compressed message (its frames' payloads, joined)
    /// and appends it to `out`. The output grows in steps and is checked
    /// after each, so a message inflating past `limit` is refused having
    /// allocated at most `limit + 1` bytes, whatever its ratio.
    pub fn inflate(
        &mut self,
        message: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let z = self
            .z
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        let result = inflate_with(z, message, limit, out);
        if result.is_err() || !self.keep_context {
            // After an error the stream is unusable (the connection closes);
            // without context nothing needs keeping.
            self.z = None;
        }
        result
    }
}

/// [`Inflater::inflate`] with the state at hand.
fn inflate_with(
    z: &mut Decompress,
    message: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    let start = out.len();
    // One byte past the limit proves the message is too big.
    let cap = limit.saturating_add(1);
    for chunk in [message, &TAIL[..]] {
        let mut used = 0;
        loop {
            let produced = out.len() - start;
            if produced > limit {
                return Err(InflateError::TooBig);
            }
            if out.len() == out.capacity() {
                // Double what came out so far (at least 4x the input, at
                // least 1 KiB), never beyond the limit plus one byte.
                let step = produced.max(message.len() * 4).max(1024);
                out.reserve_exact(step.min(cap - produced));
            }
            let (in_before, out_before) = (z.total_in(), z.total_out());
            let status = z
                .decompress_vec(&chunk[used..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            used += (z.total_in() - in_before) as usize;
            if out.len() - start > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // The client ended the stream (BFINAL): whatever follows,
                // the appended tail included, belongs to no stream. The
                // next message starts a new one.
                z.reset(false);
                return Ok(());
            }
            let full = out.len() == out.capacity();
            if used == chunk.len() && !full {
                break;
            }
            let progressed = z.total_in() != in_before || z.total_out() != out_before;
            if !progressed && !full {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(client_no_context_takeover: bool) -> Option<Agreed> {
        Some(Agreed {
            client_no_context_takeover,
        })
    }

    #[test]
    fn plain_offers_are_accepted() {
        assert_eq!(negotiate("permessage-deflate"), agreed(false));
        assert_eq!(negotiate("  permessage-deflate  "), agreed(false));
        assert_eq!(negotiate("Permessage-Deflate"), agreed(false));
        // What Chromium and Python websockets send.
        assert_eq!(
            negotiate("permessage-deflate; client_max_window_bits"),
            agreed(false)
        );
    }

    #[test]
    fn no_offer_or_other_extensions_give_nothing() {
        assert_eq!(negotiate(""), None);
        assert_eq!(negotiate("x-webkit-deflate-frame"), None);
        assert_eq!(negotiate("foo; bar=1, baz"), None);
    }

    #[test]
    fn context_takeover_parameters() {
        assert_eq!(
            negotiate("permessage-deflate; client_no_context_takeover"),
            agreed(true)
        );
        assert_eq!(
            negotiate("permessage-deflate; server_no_context_takeover"),
            agreed(false)
        );
        assert_eq!(
            negotiate("permessage-deflate;server_no_context_takeover;client_no_context_takeover"),
            agreed(true)
        );
        // Neither takes a value.
        assert_eq!(
            negotiate("permessage-deflate; client_no_context_takeover=1"),
            None
        );
        assert_eq!(
            negotiate("permessage-deflate; server_no_context_takeover=\"\""),
            None
        );
    }

    #[test]
    fn client_max_window_bits_with_or_without_a_value() {
        for ok in ["8", "9", "15", "\"10\""] {
            let header = format!("permessage-deflate; client_max_window_bits={ok}");
            assert_eq!(negotiate(&header), agreed(false), "{header}");
        }
        for bad in ["7", "16", "08", "0", "", "\"\"", "1a", "\"8 \"", "-9", "+9"] {
            let header = format!("permessage-deflate; client_max_window_bits={bad}");
            assert_eq!(negotiate(&header), None, "{header}");
        }
    }

    #[test]
    fn server_max_window_bits_only_15_is_accepted() {
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=15"),
            agreed(false)
        );
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=\"15\""),
            agreed(false)
        );
        // Valid but smaller than the shared copy's window: declined.
        for bits in 8..15 {
            let header = format!("permessage-deflate; server_max_window_bits={bits}");
            assert_eq!(negotiate(&header), None, "{header}");
        }
        // A value is required.
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits"),
            None
        );
        assert_eq!(
            negotiate("permessage-deflate; server_max_window_bits=16"),
            None
        );
    }

    #[test]
    fn unknown_or_repeated_parameters_decline_the_offer() {
        assert_eq!(negotiate("permessage-deflate; foo"), None);
        assert_eq!(negotiate("permessage-deflate; mem_level=8"), None);
        assert_eq!(
            negotiate("permessage-deflate; client_max_window_bits; client_max_window_bits=10"),
            None
        );
        assert_eq!(
            negotiate("permessage-deflate; client_no_context_takeover; CLIENT_NO_CONTEXT_TAKEOVER"),
            None
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        // Section 5's example: a preferred offer, then a fallback.
        let header = "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
                      permessage-deflate; client_max_window_bits";
        assert_eq!(negotiate(header), agreed(false));
        let header = "permessage-deflate; foo, permessage-deflate; client_no_context_takeover";
        assert_eq!(negotiate(header), agreed(true));
        let header = "x-other; q=\"a, b; c\", permessage-deflate; client_no_context_takeover, \
                      permessage-deflate";
        assert_eq!(negotiate(header), agreed(true));
        // Empty list elements are allowed.
        assert_eq!(negotiate(", ,permessage-deflate,"), agreed(false));
    }

    #[test]
    fn a_header_that_does_not_parse_declines_everything() {
        assert_eq!(
            negotiate("permessage-deflate; client_max_window_bits=\"10"),
            None
        );
        assert_eq!(negotiate("permessage-deflate; ;"), None);
        assert_eq!(negotiate("permessage-deflate x"), None);
        assert_eq!(negotiate("permessage-deflate; a=b=c"), None);
        assert_eq!(negotiate("permessage-deflate; =1"), None);
        assert_eq!(negotiate("permessage-deflate, \"x\""), None);
    }

    #[test]
    fn response_always_carries_server_no_context_takeover() {
        assert_eq!(
            agreed(false).unwrap().response_value(),
            "permessage-deflate; server_no_context_takeover"
        );
        assert_eq!(
            agreed(true).unwrap().response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    fn chat_json(len: usize) -> Vec<u8> {
        let mut s = String::from(
            "{\"type\":\"message\",\"messageId\":\"01JF8ZQ2V3K4M5N6P7Q8R9S0T1\",\"userId\":\"user-456\",\
             \"username\":\"john_doe\",\"roomId\":\"general\",\"content\":\"",
        );
        let words = [
            "hello ",
            "everyone ",
            "how ",
            "is ",
            "the ",
            "release ",
            "going? ",
        ];
        let mut i = 0;
        while s.len() < len - 40 {
            s.push_str(words[i % words.len()]);
            i += 1;
        }
        s.push_str("\",\"timestamp\":\"2024-01-01T12:00:00.123Z\"}");
        s.into_bytes()
    }

    /// The compressed frame's payload, from a frame written by the deflater.
    fn frame_body(frame: &[u8]) -> (&[u8], bool) {
        let mut cursor = std::io::Cursor::new(frame);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(frame.len(), start + len as usize);
        assert!(header.is_final);
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        (&frame[start..], header.rsv1)
    }

    #[test]
    fn compressed_frames_inflate_back_and_are_independent() {
        let mut deflater = Deflater::new(256);
        let mut inflater = Inflater::new(Agreed {
            client_no_context_takeover: true,
        });
        for len in [256, 2000, 60_000] {
            let payload = chat_json(len);
            let mut out = b"plain".to_vec();
            assert!(deflater.text_frame_into(&payload, &mut out), "{len}");
            let (body, rsv1) = frame_body(&out[5..]);
            assert!(rsv1);
            assert!(body.len() < payload.len() * 4 / 5, "{len}: {}", body.len());
            let mut back = Vec::new();
            inflater.inflate(body, 65_536, &mut back).unwrap();
            assert_eq!(back, payload);
            assert!(!inflater.holds_state());
            // A fresh inflater (no shared context) reads it as well: each
            // frame is a stream of its own.
            let mut fresh = Inflater::default();
            let mut again = Vec::new();
            fresh.inflate(body, 65_536, &mut again).unwrap();
            assert_eq!(again, payload);
        }
    }

    #[test]
    fn small_or_incompressible_payloads_are_not_compressed() {
        let mut deflater = Deflater::new(256);
        let mut out = Vec::new();
        assert!(!deflater.text_frame_into(&chat_json(255)[..255], &mut out));
        // Pseudo-random bytes: deflate cannot make them smaller.
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        assert!(!deflater.text_frame_into(&noise, &mut out));
        assert!(out.is_empty());
    }

    /// A client with context takeover: messages refer back to earlier ones.
    #[test]
    fn context_is_kept_across_messages_when_the_client_keeps_it() {
        let mut client = Compress::new(Compression::default(), false);
        let mut inflater = Inflater::new(Agreed {
            client_no_context_takeover: false,
        });
        let message = chat_json(500);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut compressed = Vec::with_capacity(1000);
            let before = client.total_out();
            client
                .compress_vec(&message, &mut compressed, FlushCompress::Sync)
                .unwrap();
            assert_eq!(client.total_out() - before, compressed.len() as u64);
            let body = compressed.strip_suffix(&TAIL).unwrap();
            sizes.push(body.len());
            let mut back = Vec::new();
            inflater.inflate(body, 65_536, &mut back).unwrap();
            assert_eq!(back, message);
            assert!(inflater.holds_state());
        }
        // The repeats were mostly back-references into the kept window.
        assert!(sizes[1] < sizes[0] / 4, "{sizes:?}");
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let zeros = vec![b'a'; 10 << 20];
        let mut z = Compress::new(Compression::best(), false);
        let mut bomb = Vec::with_capacity(64 << 10);
        z.compress_vec(&zeros, &mut bomb, FlushCompress::Sync)
            .unwrap();
        assert_eq!(z.total_in(), zeros.len() as u64);
        let bomb = bomb.strip_suffix(&TAIL).unwrap();
        assert!(bomb.len() < 64 << 10);
        let mut out = Vec::new();
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(bomb, 65_536, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= 65_537, "allocated {}", out.capacity());
        // Exactly the limit is fine.
        let exact = &zeros[..65_536];
        let mut z = Compress::new(Compression::best(), false);
        let mut compressed = Vec::with_capacity(1 << 16);
        z.compress_vec(exact, &mut compressed, FlushCompress::Sync)
            .unwrap();
        let mut out = Vec::new();
        Inflater::default()
            .inflate(compressed.strip_suffix(&TAIL).unwrap(), 65_536, &mut out)
            .unwrap();
        assert_eq!(out.len(), 65_536);
    }

    /// Arbitrary bytes (and valid streams with bytes flipped) never panic,
    /// never inflate past the limit, and never allocate past it.
    #[test]
    fn arbitrary_input_stays_within_the_limit() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = {
            let mut z = Compress::new(Compression::fast(), false);
            let mut out = Vec::with_capacity(70_000);
            z.compress_vec(&vec![b'z'; 60_000], &mut out, FlushCompress::Sync)
                .unwrap();
            out
        };
        for round in 0..3000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.clone();
                let at = (next() as usize) % v.len();
                v[at] ^= 1 << (next() % 8);
                v
            };
            for limit in [100, 65_536] {
                let mut out = Vec::new();
                let mut inflater = Inflater::default();
                match inflater.inflate(&input, limit, &mut out) {
                    Ok(()) => assert!(out.len() <= limit, "round {round}"),
                    Err(_) => assert!(!inflater.holds_state(), "round {round}"),
                }
                assert!(
                    out.capacity() <= limit + 1,
                    "round {round}: {}",
                    out.capacity()
                );
            }
        }
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        assert_eq!(
            Inflater::default().inflate(&[0xff, 0xff, 0xff, 0xff], 65_536, &mut out),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // BFINAL=1 (a finished stream) instead of a sync flush.
        let mut z = Compress::new(Compression::default(), false);
        let mut compressed = Vec::with_capacity(1000);
        let message = chat_json(400);
        z.compress_vec(&message, &mut compressed, FlushCompress::Finish)
            .unwrap();
        let mut inflater = Inflater::default();
        for _ in 0..2 {
            let mut out = Vec::new();
            inflater.inflate(&compressed, 65_536, &mut out).unwrap();
            assert_eq!(out, message);
        }
    }
}
