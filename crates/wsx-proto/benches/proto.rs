//! Throughput of the receive path and of permessage-deflate.
//!
//! `copy` is the ceiling: a plain copy of the same bytes. `unmask_validate` is the work
//! the core adds per payload byte (in place, as on a real read buffer). `decode` is the
//! whole receive path through `Connection`, including the copy into its read buffer.
//!
//! Run: `cargo bench -p wsx-proto --bench proto`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsx_proto::extensions::permessage_deflate::DeflateCodec;
use wsx_proto::mask::apply_mask;
use wsx_proto::utf8::Utf8Validator;
use wsx_proto::{Config, Connection, DeflateParams, Event, Role};

const SIZES: [usize; 4] = [20, 1024, 64 * 1024, 1024 * 1024];
// ASCII key bytes keep masked ASCII text valid UTF-8, so the buffer can be unmasked
// and validated in place on every iteration.
const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn text(len: usize) -> Vec<u8> {
    let sample = b"{\"channel\":\"judge:42\",\"case\":7,\"verdict\":\"AC\",\"time_ms\":13} ";
    (0..len).map(|i| sample[i % sample.len()]).collect()
}

/// At least 64 KiB of masked text frames of one size.
fn frames(size: usize) -> (Vec<u8>, usize) {
    let count = (64 * 1024 / size).max(1);
    let mut out = Vec::new();
    let payload = text(size);
    for _ in 0..count {
        out.push(0x81);
        match size {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend_from_slice(&payload);
        apply_mask(&mut out[start..], KEY, 0);
    }
    (out, count)
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    for size in SIZES {
        let (wire, count) = frames(size);
        g.throughput(Throughput::Bytes((size * count) as u64));
        let payload_bytes = size * count;
        let mut dst = vec![0u8; wire.len()];
        g.bench_with_input(BenchmarkId::new("copy", size), &wire, |b, wire| {
            b.iter(|| {
                dst.copy_from_slice(black_box(wire));
                black_box(&dst);
            })
        });
        let mut buf = text(payload_bytes);
        g.bench_with_input(
            BenchmarkId::new("unmask_validate", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    for chunk in buf.chunks_mut(size) {
                        apply_mask(chunk, KEY, 0);
                        let mut v = Utf8Validator::new();
                        v.feed(chunk).unwrap();
                        black_box(v.is_complete());
                    }
                })
            },
        );
        let cfg = Config::default()
            .max_frame_size(2 << 20)
            .max_message_size(2 << 20);
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, cfg, now);
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter(|| {
                conn.handle_input(now, wire);
                let mut n = 0;
                while let Ok(Some(ev)) = conn.poll_event() {
                    if let Event::Message(m) = ev {
                        black_box(m);
                        n += 1;
                    }
                }
                assert_eq!(n, count);
            })
        });
    }
    g.finish();
}

fn deflate(c: &mut Criterion) {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut g = c.benchmark_group("deflate");
    for size in [1024usize, 64 * 1024] {
        let data = text(size);
        g.throughput(Throughput::Bytes(size as u64));
        let mut tx = DeflateCodec::new(params, true, 1, 0);
        g.bench_with_input(BenchmarkId::new("compress", size), &data, |b, d| {
            b.iter(|| black_box(tx.compress(d)))
        });
        // Inflate a stream of messages compressed with context takeover.
        let mut tx = DeflateCodec::new(params, true, 1, 0);
        let msgs: Vec<_> = (0..1000).map(|_| tx.compress(&data)).collect();
        let mut rx = DeflateCodec::new(params, false, 1, 0);
        let mut i = 0;
        let mut out = Vec::with_capacity(size);
        g.bench_function(BenchmarkId::new("decompress", size), |b| {
            b.iter(|| {
                if i == msgs.len() {
                    rx = DeflateCodec::new(params, false, 1, 0);
                    i = 0;
                }
                out.clear();
                rx.decompress(&msgs[i], true, &mut out, 1 << 20).unwrap();
                i += 1;
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, receive, deflate);
criterion_main!(benches);
