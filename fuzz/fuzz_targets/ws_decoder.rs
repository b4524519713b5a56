//! The WebSocket decoder (`chatd::ws::Decoder`) on an arbitrary byte stream
//! from a client, cut into arbitrary reads.
//!
//! Input layout: byte 0 picks the message limit (so small inputs reach the
//! "too big" paths), byte 1 the read size the stream is cut into (1 is byte
//! by byte; 0 is the whole stream in one read, compared with itself); the
//! rest is the stream.
//!
//! Invariants checked beyond "no panic":
//! - no text message is larger than the limit or invalid UTF-8, no ping
//!   payload exceeds 125 bytes;
//! - nothing is reported after a close or an error;
//! - cutting the stream into reads of any size gives the same events, the
//!   same error and the same bytes held as one read of the whole stream;
//! - what the decoder holds is bounded by the limit, and when it holds no
//!   byte it holds no allocation either (an idle connection costs nothing);
//! - every text message re-encodes (`encode_text`) into a frame that decodes
//!   back to the same text.
#![no_main]

use chatd::ws::{encode_text, text_header_len, Decoder, WsError, WsEvent};
use libfuzzer_sys::fuzz_target;

/// An owned copy of an event, so runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// What one run over the stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    /// Events in order.
    events: Vec<Ev>,
    /// The error that ended the stream, if any.
    error: Option<WsError>,
    /// Bytes the decoder holds at the end; `None` after an error, when the
    /// connection is closed and what was held no longer matters.
    held: Option<usize>,
}

/// Feeds `stream` to a fresh decoder in reads of `chunk` bytes (all at once
/// when 0), stopping at a close or an error as the connection does.
fn run(max: usize, stream: &[u8], chunk: usize) -> Run {
    let mut decoder = Decoder::new(max);
    let mut events = Vec::new();
    let mut error = None;
    let chunk = if chunk == 0 {
        stream.len().max(1)
    } else {
        chunk
    };
    'reads: for read in stream.chunks(chunk) {
        let mut buf = read.to_vec();
        let mut closed = false;
        let result = decoder.feed(&mut buf, |ev| {
            assert!(!closed, "event after a close in the same read");
            let ev = match ev {
                WsEvent::Text(text) => {
                    assert!(text.len() <= max, "text of {} bytes over {max}", text.len());
                    assert!(std::str::from_utf8(text).is_ok(), "text not UTF-8");
                    Ev::Text(text.to_vec())
                }
                WsEvent::Binary => Ev::Binary,
                WsEvent::Ping(payload) => {
                    assert!(payload.len() <= 125, "ping payload over 125 bytes");
                    Ev::Ping(payload.to_vec())
                }
                WsEvent::Pong => Ev::Pong,
                WsEvent::Close(code) => {
                    closed = true;
                    Ev::Close(code)
                }
            };
            events.push(ev);
        });
        // Header (at most 14 bytes) plus a frame's payload in the tail, plus
        // the fragments of a message in progress.
        assert!(
            decoder.held_bytes() <= 14 + max.max(125) + max,
            "decoder holds {} bytes with a limit of {max}",
            decoder.held_bytes()
        );
        if decoder.held_bytes() == 0 {
            assert_eq!(decoder.held_capacity(), 0, "idle decoder keeps memory");
        }
        match result {
            Err(e) => {
                error = Some(e);
                break 'reads;
            }
            Ok(()) if closed => break 'reads,
            Ok(()) => {}
        }
    }
    Run {
        events,
        held: error.is_none().then(|| decoder.held_bytes()),
        error,
    }
}

/// `payload` as a client would send it: the server's frame with the mask
/// bit set and an all-zero key (which leaves the payload as it is).
fn as_client_frame(payload: &[u8]) -> Vec<u8> {
    let server = encode_text(payload);
    let header_len = text_header_len(payload.len());
    assert_eq!(server.len(), header_len + payload.len());
    assert_eq!(server[0], 0x81, "not a final text frame");
    assert_eq!(server[1] & 0x80, 0, "server frame masked");
    assert_eq!(&server[header_len..], payload);
    let mut client = server[..header_len].to_vec();
    client[1] |= 0x80;
    client.extend_from_slice(&[0; 4]);
    client.extend_from_slice(payload);
    client
}

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
    let whole = run(max, stream, 0);
    let cut = run(max, stream, usize::from(*chunk));
    assert_eq!(whole, cut, "reads of {chunk} bytes change the outcome");

    for ev in &whole.events {
        if let Ev::Text(text) = ev {
            let again = run(max, &as_client_frame(text), 0);
            assert_eq!(again.events, vec![Ev::Text(text.clone())]);
            assert_eq!(again.error, None);
            assert_eq!(again.held, Some(0));
        }
    }
});
