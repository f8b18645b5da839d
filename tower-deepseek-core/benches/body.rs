//! Request-body buffering: a body that arrives as one chunk is taken as-is (no copy), several
//! chunks are joined once. Baseline: copying the same bytes into a fresh buffer.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http_body_util::Full;
use std::hint::black_box;
use tower_deepseek_core::body::{Buffered, buffer};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("buffer_body");
    for size in [2 * 1024, 64 * 1024, 1024 * 1024] {
        let data = Bytes::from(vec![b'x'; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("copy_baseline", size), &data, |b, d| {
            b.iter(|| black_box(Bytes::copy_from_slice(d)))
        });
        group.bench_with_input(BenchmarkId::new("one_chunk", size), &data, |b, d| {
            b.iter(|| {
                // A `Full` body is ready at once: poll the named future once, no runtime.
                let Some(Ok(Buffered::Complete(body))) =
                    buffer(Full::new(d.clone()), 8 << 20).now_or_never()
                else {
                    unreachable!()
                };
                // Same memory as the input: nothing was copied.
                assert_eq!(body.bytes().as_ptr(), d.as_ptr());
                black_box(body)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
