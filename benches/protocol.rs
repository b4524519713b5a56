//! Client frame parsing (simd-json against serde_json) and server frame encoding.
//!
//! Parsing: one group per chat-sized frame, each with the two parsers side by side and a
//! `copy_only` arm. simd-json parses in place, so every iteration of every arm first copies the
//! frame into the same reused buffer; `copy_only` measures that copy alone, so the parser's own
//! cost is the difference. Throughput is in bytes of the whole frame.
//!
//! Encoding: what the room's owner core does once per accepted message (`encode_message`, then
//! the WebSocket text frame as in `hub/mod.rs`), error frames, and a 50-message history page.
//!
//! Run with `cargo bench --bench protocol`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use chatd::protocol::{self, ChatMessage, ErrorCode};
use chatd::ws;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// ASCII chat text of exactly `len` bytes (no characters that need escaping).
fn text(len: usize) -> String {
    const WORDS: &str =
        "The quick brown fox jumps over the lazy dog while the team ships the release. ";
    WORDS.chars().cycle().take(len).collect()
}

/// A `message` frame as a browser client sends it; `content` must already be JSON-escaped.
fn message_frame(content: &str) -> String {
    format!(
        r#"{{"type":"message","roomId":"general","content":"{content}","clientMsgId":"c-7f3a9e21"}}"#
    )
}

/// Content with escapes (quote, backslash, newline, tab, `\u` sequences including a surrogate
/// pair) and raw non-ASCII text (accents, CJK, emoji), as JSON source.
const ESCAPED_CONTENT: &str = r#"Line one\nLine \"two\"\tafter a tab, a back\\slash, caf\u00e9 \ud83d\ude00 and raw text: naïve façade, Grüße, 日本語のテキスト, Привет, 😀🎉"#;

/// The frames of the parsing benchmarks: (name, frame).
fn client_frames() -> Vec<(&'static str, String)> {
    vec![
        ("ping", r#"{"type":"ping"}"#.to_owned()),
        (
            "typing",
            r#"{"type":"typing","roomId":"general","isTyping":true}"#.to_owned(),
        ),
        ("message_100B", message_frame(&text(100))),
        ("message_1000_chars", message_frame(&text(1000))),
        ("message_escapes_non_ascii", message_frame(ESCAPED_CONTENT)),
        ("message_16KiB", message_frame(&text(16 * 1024))),
    ]
}

/// Checks that both parsers accept `frame` and agree, so the benchmark compares equal work.
fn check_frame(name: &str, frame: &str) {
    let mut buf = frame.as_bytes().to_vec();
    let simd = format!("{:?}", protocol::parse_client_frame_simd(&mut buf));
    let serde = format!(
        "{:?}",
        protocol::parse_client_frame_serde_json(frame.as_bytes())
    );
    assert!(
        simd.starts_with("Ok("),
        "{name}: simd-json refused it: {simd}"
    );
    assert_eq!(simd, serde, "{name}: the parsers disagree");
}

fn parse(c: &mut Criterion) {
    for (name, frame) in client_frames() {
        check_frame(name, &frame);
        let input = frame.as_bytes();
        let mut group = c.benchmark_group(format!("parse/{name}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        // One buffer per group, reused by every iteration of every arm.
        let mut buf = input.to_vec();
        group.bench_function(BenchmarkId::new("simd_json", input.len()), |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(input));
                let frame = protocol::parse_client_frame_simd(&mut buf);
                black_box(&frame);
            })
        });
        group.bench_function(BenchmarkId::new("serde_json", input.len()), |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(input));
                let frame = protocol::parse_client_frame_serde_json(&buf);
                black_box(&frame);
            })
        });
        group.bench_function(BenchmarkId::new("copy_only", input.len()), |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(input));
                black_box(&mut buf);
            })
        });
        group.finish();
    }
}

/// A message as the room's owner core stamps it.
fn chat_message(content: String) -> ChatMessage {
    ChatMessage {
        id: protocol::parse_message_id("01HQZX3Y7K8M9N0P1Q2R3S4T5V").expect("a valid id"),
        room_id: Arc::from("general"),
        user_id: Arc::from("user-456"),
        username: Arc::from("john_doe"),
        content,
        timestamp_ms: 1_704_110_400_123,
    }
}

/// The owner core's per-message work after moderation, as in `Hub::sequence`: the JSON payload,
/// then one WebSocket text frame shared by every recipient.
fn encode_and_frame(message: &ChatMessage) -> Bytes {
    let json = protocol::encode_message(message);
    let header = ws::text_header_len(json.len());
    let mut buf = Vec::with_capacity(header + json.len());
    ws::encode_text_into(&json, &mut buf);
    Bytes::from(buf)
}

fn encode(c: &mut Criterion) {
    let messages = [
        ("hello", chat_message("Hello everyone!".to_owned())),
        ("content_100B", chat_message(text(100))),
        ("content_1000_chars", chat_message(text(1000))),
        (
            "escapes_non_ascii",
            chat_message(
                "Line one\nLine \"two\"\tafter a tab, a back\\slash, café 😀 and raw text: naïve façade, Grüße, 日本語のテキスト, Привет, 😀🎉"
                    .to_owned(),
            ),
        ),
    ];
    for (name, message) in &messages {
        let frame_len = encode_and_frame(message).len() as u64;
        let mut group = c.benchmark_group(format!("encode_message/{name}"));
        group.throughput(Throughput::Bytes(frame_len));
        group.bench_function("json", |b| {
            b.iter(|| black_box(protocol::encode_message(black_box(message))))
        });
        group.bench_function("json+ws_frame", |b| {
            b.iter(|| black_box(encode_and_frame(black_box(message))))
        });
        group.finish();
    }

    let mut group = c.benchmark_group("encode_error");
    group.bench_function("rate_limited_retry_after", |b| {
        b.iter(|| {
            black_box(protocol::encode_error(
                ErrorCode::RateLimited,
                black_box("rate limit exceeded; retry in 1200 ms"),
                Some(1200),
            ))
        })
    });
    group.bench_function("invalid_message", |b| {
        b.iter(|| {
            black_box(protocol::encode_error(
                ErrorCode::InvalidMessage,
                black_box("field `content` must not be empty or whitespace-only"),
                None,
            ))
        })
    });
    group.bench_function("rate_limited+ws_frame", |b| {
        b.iter(|| {
            let payload = protocol::encode_error(
                ErrorCode::RateLimited,
                black_box("rate limit exceeded; retry in 1200 ms"),
                Some(1200),
            );
            black_box(ws::encode_text(&payload))
        })
    });
    group.finish();

    // History stores each message's payload as encoded for the broadcast; a page splices them.
    let stored: Vec<Vec<u8>> = (0..50)
        .map(|i| protocol::encode_message(&chat_message(format!("{} #{i}", text(90)))))
        .collect();
    let page_len =
        protocol::encode_history("general", stored.iter().map(Vec::as_slice), true).len();
    let mut group = c.benchmark_group("encode_history");
    group.throughput(Throughput::Bytes(page_len as u64));
    group.bench_function("50_messages", |b| {
        b.iter(|| {
            black_box(protocol::encode_history(
                black_box("general"),
                stored.iter().map(Vec::as_slice),
                true,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
