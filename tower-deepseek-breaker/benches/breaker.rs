//! Closed-state overhead per call: a bare service, this crate's breaker (plain and keyed), and
//! tower-resilience's circuit breaker, on one thread and on two threads sharing one breaker.
//!
//! Every variant runs the same loop: `poll_ready`, `call`, poll the future to completion with a
//! thread-parking waker (no runtime), drop the response. The inner service answers at once, so
//! the figures are the middleware's own cost.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service};
use tower_deepseek_breaker::CircuitBreakerLayer;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(std::thread::current())))
}

fn block_on<F: Future>(cx: &mut Context<'_>, f: F) -> F::Output {
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return v;
        }
        std::thread::park();
    }
}

const JSON: &str = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;

/// Answers 204 at once: the head alone decides the outcome.
fn no_content(_: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    std::future::ready(Ok(r))
}

/// Stands in for hyper-util's `HttpInfo`, which every response of its client carries.
#[derive(Clone, Copy)]
struct ConnInfo(#[allow(dead_code)] [u8; 16]);

/// Answers 204 at once, with one extension already set, as hyper-util's client responses are:
/// the breaker's `BreakerStatus` goes into an existing map.
fn no_content_with_extension(
    _: Request<()>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.extensions_mut().insert(ConnInfo([0; 16]));
    std::future::ready(Ok(r))
}

/// Answers a complete JSON chat answer at once: the outcome waits for the body's end.
fn json(_: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let r = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(JSON.as_bytes())))
        .unwrap();
    std::future::ready(Ok(r))
}

#[inline(never)]
fn once<S, B>(svc: &mut S, cx: &mut Context<'_>, read_body: bool)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    block_on(cx, poll_fn(|cx| svc.poll_ready(cx))).unwrap();
    let resp = block_on(cx, svc.call(Request::new(()))).unwrap();
    if read_body {
        let body = block_on(cx, resp.into_body().collect()).unwrap();
        black_box(body);
    } else {
        black_box(resp);
    }
}

/// `iters` calls on each of `threads` threads at once; the time of the slowest thread.
fn run_threads<S, B>(svc: &S, threads: usize, iters: u64, read_body: bool) -> Duration
where
    S: Service<Request<()>, Response = Response<B>> + Clone + Send,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    if threads == 1 {
        let mut svc = svc.clone();
        let w = waker();
        let mut cx = Context::from_waker(&w);
        let start = Instant::now();
        for _ in 0..iters {
            once(&mut svc, &mut cx, read_body);
        }
        return start.elapsed();
    }
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    let w = waker();
                    let mut cx = Context::from_waker(&w);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        once(&mut svc, &mut cx, read_body);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

/// An inner service that answers at once.
type Answer = fn(Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// The closed-state groups `{prefix}_{1,2}_thread` around `answer`: bare, ours (default, without
/// slow-call detection, optionally keyed) and tower-resilience's.
fn closed_groups(c: &mut Criterion, prefix: &str, answer: Answer, keyed: bool) {
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("{prefix}_{threads}_thread"));
        let bare = tower::service_fn(answer);
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| run_threads(&bare, threads, iters, false))
        });
        let ours = CircuitBreakerLayer::builder()
            .build()
            .unwrap()
            .layer(tower::service_fn(answer));
        group.bench_function("deepseek_breaker", |b| {
            b.iter_custom(|iters| run_threads(&ours, threads, iters, false))
        });
        let untimed = CircuitBreakerLayer::builder()
            .slow_call_detection(false)
            .build()
            .unwrap()
            .layer(tower::service_fn(answer));
        group.bench_function("deepseek_breaker_no_slow_call_detection", |b| {
            b.iter_custom(|iters| run_threads(&untimed, threads, iters, false))
        });
        if keyed {
            let keyed = CircuitBreakerLayer::builder()
                .build_keyed()
                .unwrap()
                .layer(tower::service_fn(answer));
            group.bench_function("deepseek_breaker_keyed", |b| {
                b.iter_custom(|iters| run_threads(&keyed, threads, iters, false))
            });
        }
        let theirs = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(100)
            .build()
            .unwrap()
            .layer(tower::service_fn(answer));
        group.bench_function("tower_resilience", |b| {
            b.iter_custom(|iters| run_threads(&theirs, threads, iters, false))
        });
        group.finish();
    }
}

fn closed_state(c: &mut Criterion) {
    closed_groups(c, "closed", no_content, true);
}

/// The same, with an inner service whose responses already carry one extension (as hyper-util's
/// client's do): inserting `BreakerStatus` then allocates the value only, not the map.
fn closed_state_with_extension(c: &mut Criterion) {
    closed_groups(c, "closed_ext", no_content_with_extension, false);
}

fn json_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("json_body_read_1_thread");
    let bare = tower::service_fn(json);
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| run_threads(&bare, 1, iters, true))
    });
    let ours = CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(tower::service_fn(json));
    group.bench_function("deepseek_breaker", |b| {
        b.iter_custom(|iters| run_threads(&ours, 1, iters, true))
    });
    group.finish();
}

criterion_group!(
    benches,
    closed_state,
    closed_state_with_extension,
    json_body
);
criterion_main!(benches);
