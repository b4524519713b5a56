//! permessage-deflate backends: flate2 on zlib-rs (what `src/deflate.rs` uses) against
//! miniz_oxide (flate2's default `rust_backend`, called directly here since one build can
//! hold only one flate2 backend).
//!
//! Inputs are the server's own `message` frames (`protocol::encode_message`) of about 150 bytes
//! and 2 KB. `compress/*` does what the room owner does once per broadcast message: reset the
//! stream (no context takeover), raw deflate with a sync flush, at level 1 and level 6.
//! `inflate/*` does what a connection does with a compressed client message: inflate it with
//! the 4-byte tail appended, from a reset stream. `frame/chatd` is the server's whole path
//! (`Deflater::text_frame_into`: compress, strip the tail, write the frame header).
//!
//! Run with `cargo bench --bench deflate`.

use std::hint::black_box;
use std::sync::Arc;

use chatd::deflate::Deflater;
use chatd::protocol::{self, ChatMessage};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush};

/// A server `message` frame's JSON whose content makes it about `len` bytes long.
fn message(len: usize) -> Vec<u8> {
    const WORDS: &str =
        "The quick brown fox jumps over the lazy dog while the team ships the release. ";
    let mut content_len = len.saturating_sub(170);
    let make = |n: usize| ChatMessage {
        id: ulid::Ulid::from_string("01JF8ZQ2V3K4M5N6P7Q8R9S0T1").unwrap(),
        room_id: Arc::from("general"),
        user_id: Arc::from("user-456"),
        username: Arc::from("john_doe"),
        content: WORDS.chars().cycle().take(n).collect(),
        timestamp_ms: 1_704_110_400_123,
    };
    loop {
        let json = protocol::encode_message(&make(content_len)).to_vec();
        if json.len() >= len || content_len > len {
            return json;
        }
        content_len += 1;
    }
}

/// Raw deflate of `input` with a sync flush, from a reset zlib-rs stream.
fn zlib_rs(z: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    z.reset();
    out.clear();
    z.compress_vec(input, out, FlushCompress::Sync).unwrap();
}

/// The same with miniz_oxide.
fn miniz(z: &mut CompressorOxide, input: &[u8], out: &mut [u8]) -> usize {
    z.reset();
    let r = miniz_oxide::deflate::stream::deflate(z, input, out, MZFlush::Sync);
    assert_eq!(r.bytes_consumed, input.len());
    r.bytes_written
}

fn compress(c: &mut Criterion) {
    for len in [150, 2000] {
        let input = message(len);
        let mut group = c.benchmark_group(format!("compress/{}B", input.len()));
        group.throughput(Throughput::Bytes(input.len() as u64));
        for level in [1u32, 6] {
            let mut z = Compress::new(Compression::new(level), false);
            let mut out = Vec::with_capacity(input.len() + 64);
            zlib_rs(&mut z, &input, &mut out);
            println!(
                "{}B level {level}: zlib-rs {} bytes",
                input.len(),
                out.len() - 4
            );
            group.bench_function(BenchmarkId::new("zlib-rs", level), |b| {
                b.iter(|| zlib_rs(&mut z, black_box(&input), &mut out))
            });
            let flags = create_comp_flags_from_zip_params(level as i32, -15, 0);
            let mut m = CompressorOxide::new(flags);
            let mut buf = vec![0u8; input.len() + 64];
            let n = miniz(&mut m, &input, &mut buf);
            println!(
                "{}B level {level}: miniz_oxide {} bytes",
                input.len(),
                n - 4
            );
            group.bench_function(BenchmarkId::new("miniz_oxide", level), |b| {
                b.iter(|| miniz(&mut m, black_box(&input), &mut buf))
            });
        }
        let mut deflater = Deflater::new(1);
        let mut frame = Vec::with_capacity(input.len() + 64);
        group.bench_function("frame/chatd", |b| {
            b.iter(|| {
                frame.clear();
                deflater.text_frame_into(black_box(&input), &mut frame)
            })
        });
        group.finish();
    }
}

fn inflate(c: &mut Criterion) {
    for len in [150, 2000] {
        let input = message(len);
        let mut z = Compress::new(Compression::new(6), false);
        let mut compressed = Vec::with_capacity(input.len() + 64);
        zlib_rs(&mut z, &input, &mut compressed);
        // The tail stays on, as the receiver appends it back.
        let mut group = c.benchmark_group(format!("inflate/{}B", input.len()));
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(input.len() + 64);
        group.bench_function("zlib-rs", |b| {
            b.iter(|| {
                d.reset(false);
                out.clear();
                d.decompress_vec(black_box(&compressed), &mut out, FlushDecompress::Sync)
                    .unwrap();
                assert_eq!(out.len(), input.len());
            })
        });
        let mut state = InflateState::new_boxed(DataFormat::Raw);
        let mut buf = vec![0u8; input.len() + 64];
        group.bench_function("miniz_oxide", |b| {
            b.iter(|| {
                state.reset(DataFormat::Raw);
                let r = miniz_oxide::inflate::stream::inflate(
                    &mut state,
                    black_box(&compressed),
                    &mut buf,
                    MZFlush::Sync,
                );
                assert_eq!(r.bytes_written, input.len());
            })
        });
        group.finish();
    }
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
