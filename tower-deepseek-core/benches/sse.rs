//! SSE parse throughput on a recorded DeepSeek stream, fed in realistic chunk sizes.
//!
//! Chunkings: one network read per event (what hyper hands over for a live stream), 1 KiB and
//! 16 KiB reads (a replayed or buffered stream). The baseline is a memchr scan for line ends
//! over the same chunks: the least any line-based parser must do.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier};
use tower_deepseek_core::sse::SseParser;

const RECORDED: &[u8] = include_bytes!("../tests/fixtures/deepseek-stream.sse");

fn stream(repeat: usize) -> Vec<u8> {
    // Drop the final [DONE] from every copy but the last, so the stream stays realistic.
    let body = &RECORDED[..RECORDED.len() - b"data: [DONE]\n\n".len()];
    let mut out = Vec::with_capacity(body.len() * repeat + 16);
    for _ in 0..repeat {
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn chunk_per_event(input: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < input.len() {
        if input[i] == b'\n' && input[i + 1] == b'\n' {
            out.push(Bytes::copy_from_slice(&input[start..i + 2]));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < input.len() {
        out.push(Bytes::copy_from_slice(&input[start..]));
    }
    out
}

fn fixed(input: &[u8], size: usize) -> Vec<Bytes> {
    input.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn bench(c: &mut Criterion) {
    let input = stream(64);
    let total = input.len() as u64;
    let chunkings = [
        ("per_event", chunk_per_event(&input)),
        ("1KiB", fixed(&input, 1024)),
        ("16KiB", fixed(&input, 16 * 1024)),
    ];
    let mut group = c.benchmark_group("sse_parse");
    group.throughput(Throughput::Bytes(total));
    for (name, chunks) in &chunkings {
        group.bench_with_input(
            BenchmarkId::new("memchr_baseline", name),
            chunks,
            |b, chunks| {
                b.iter(|| {
                    let mut n = 0usize;
                    for c in chunks {
                        n += memchr::memchr_iter(b'\n', c).count();
                    }
                    black_box(n)
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("parser", name), chunks, |b, chunks| {
            b.iter(|| {
                let mut parser = SseParser::new();
                let mut n = 0usize;
                for c in chunks {
                    parser.push(c, |e| n += e.data().len()).unwrap();
                }
                black_box(n)
            })
        });
        group.bench_with_input(BenchmarkId::new("classifier", name), chunks, |b, chunks| {
            // The parser plus the per-event JSON probe (usage, finish_reason, in-band errors)
            // that every observing layer runs.
            let mut headers = http::HeaderMap::new();
            headers.insert("content-type", "text/event-stream".parse().unwrap());
            b.iter(|| {
                let ClassifiedResponse::RequiresEos(mut eos) =
                    Classifier::new().classify_head(http::StatusCode::OK, &headers)
                else {
                    unreachable!()
                };
                for c in chunks {
                    eos.on_data(c);
                }
                black_box(eos.finish().is_ok())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
