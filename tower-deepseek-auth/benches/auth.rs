//! Per-request cost of BearerAuthLayer and OAuth2Layer (fresh token) against a bare service.
//!
//! Each iteration calls the service with a prepared request and polls the returned future
//! once with a no-op waker (every service here answers on the first poll), so the figures
//! hold the layer's own work and not an executor's. Requests are built before the timed
//! section and responses dropped after it (`iter_custom`).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_deepseek_auth::oauth2::ReplayBody;
use tower_deepseek_auth::{BearerAuthLayer, OAuth2Config, OAuth2Layer};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::protocol::ReplayOn401;

/// A realistic chat request: a parsed URI, two headers and a small JSON body.
fn request() -> Request<Full<Bytes>> {
    Request::post("https://api.deepseek.com/chat/completions")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        )))
        .unwrap()
}

/// The same request with its head held the way hyper's server parser holds it: the URI and
/// the header values are slices of one shared read buffer, so cloning them only bumps a
/// reference count (a request built from `&str`s, as [`request`] is, copies each value into
/// its own vector, and the first clone of each then allocates).
fn request_parsed() -> Request<Full<Bytes>> {
    const HEAD: &[u8] = b"https://api.deepseek.com/chat/completionsapplication/json";
    // Sized to the head: 1,000 prepared requests with a 4 KiB buffer each would spread over
    // 4 MiB and measure cache misses instead of the layers.
    let mut buf = bytes::BytesMut::with_capacity(HEAD.len());
    buf.extend_from_slice(HEAD);
    // Splitting makes the buffer shared (reference counted), as hyper's read buffer is.
    let head = buf.split_to(HEAD.len()).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(0..41)).unwrap();
    let json = http::HeaderValue::from_maybe_shared(head.slice(41..57)).unwrap();
    Request::post(uri)
        .header("content-type", json.clone())
        .header("accept", json)
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        )))
        .unwrap()
}

/// [`request`] as a retry layer above hands it on: it offers the replay after a 401
/// ([`ReplayOn401::Offered`]), so OAuth2 keeps no copy. (The retry layer's cost of adding the
/// extension is in the retry bench.)
fn request_offered() -> Request<Full<Bytes>> {
    let mut req = request();
    req.extensions_mut().insert(ReplayOn401::Offered);
    req
}

/// Calls `svc` and polls the future once; it must be ready.
fn call_once<S, B>(svc: &mut S, req: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(resp)) => resp,
        _ => panic!("not ready on the first poll"),
    }
}

/// Times `iters` calls of `svc` on prepared requests, in chunks of 1,000 so that the
/// prepared requests stay in cache.
fn timed<S>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    timed_with(svc, iters, request)
}

fn timed_with<S>(svc: &mut S, iters: u64, make: fn() -> Request<Full<Bytes>>) -> Duration
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(1000);
        left -= n;
        let requests: Vec<_> = (0..n).map(|_| make()).collect();
        let mut responses = Vec::with_capacity(requests.len());
        let start = Instant::now();
        for req in requests {
            responses.push(call_once(svc, req));
        }
        total += start.elapsed();
        drop(black_box(responses));
    }
    total
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // tokio's clock and spawn need a runtime context.
    let _enter = rt.enter();
    let mut group = c.benchmark_group("auth");

    let bare = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(req.headers().len());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let mut svc = bare;
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| timed(&mut svc, iters))
    });

    let mut bearer = BearerAuthLayer::new("sk-bench-key").unwrap().layer(bare);
    group.bench_function("BearerAuthLayer", |b| {
        b.iter_custom(|iters| timed(&mut bearer, iters))
    });

    // The tower ecosystem's way to set a header: tower-http's `SetRequestHeader`, with the same
    // sensitive value and the same "keep a header the caller set" rule. The floor of any layer
    // that injects a static header.
    // Built at run time as the layer builds its own (a static value would clone for free).
    let mut value = http::HeaderValue::try_from(format!("Bearer {}", "sk-bench-key")).unwrap();
    value.set_sensitive(true);
    let mut set_header = tower_http::set_header::SetRequestHeaderLayer::if_not_present(
        http::header::AUTHORIZATION,
        value,
    )
    .layer(bare);
    group.bench_function("tower-http SetRequestHeader", |b| {
        b.iter_custom(|iters| timed(&mut set_header, iters))
    });

    // A bare service taking the body type OAuth2 hands on, for a like-for-like baseline.
    let bare_replay = service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        black_box(req.headers().len());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let token_endpoint = service_fn(|_req: Request<BufferedBody>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"access_token\":\"bench-token\",\"token_type\":\"Bearer\",\"expires_in\":7200}",
        ))))
    });
    let layer = OAuth2Layer::new(
        OAuth2Config::new("http://auth.bench/token", "client", "secret"),
        token_endpoint,
    )
    .unwrap();
    rt.block_on(layer.warm_up()).unwrap();
    let mut oauth2 = layer.layer(bare_replay);
    group.bench_function("OAuth2Layer (fresh token)", |b| {
        b.iter_custom(|iters| timed(&mut oauth2, iters))
    });

    let layer_no_replay = OAuth2Layer::new(
        OAuth2Config::new("http://auth.bench/token", "client", "secret").replay_on_401(false),
        token_endpoint,
    )
    .unwrap();
    rt.block_on(layer_no_replay.warm_up()).unwrap();
    let mut oauth2_no_replay = layer_no_replay.layer(bare_replay);
    group.bench_function("OAuth2Layer (fresh token, replay_on_401 off)", |b| {
        b.iter_custom(|iters| timed(&mut oauth2_no_replay, iters))
    });
    // The bare service on the same requests (their extension map is dropped in the timed
    // loop), then OAuth2 with the replay offered from above: the recommended stack's case.
    group.bench_function("bare service_fn (request with extension)", |b| {
        b.iter_custom(|iters| timed_with(&mut svc, iters, request_offered))
    });
    group.bench_function(
        "OAuth2Layer (fresh token, replay offered by retry above)",
        |b| b.iter_custom(|iters| timed_with(&mut oauth2, iters, request_offered)),
    );
    group.finish();

    // An inner service whose clone is a reference count, as a real client's is (hyper-util's
    // legacy `Client` holds several `Arc`s): a layer that clones its inner service per call
    // pays that here, which the `Copy` `service_fn` above hides.
    let state = std::sync::Arc::new(0u8);
    let client_like = service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        black_box(&state);
        async move {
            black_box(req.headers().len());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let mut oauth2_client_like = layer.layer(client_like.clone());
    let mut oauth2_client_like_no_replay = layer_no_replay.layer(client_like);
    let mut group = c.benchmark_group("auth_client_like_inner");
    group.bench_function("OAuth2Layer (fresh token)", |b| {
        b.iter_custom(|iters| timed(&mut oauth2_client_like, iters))
    });
    group.bench_function("OAuth2Layer (fresh token, replay_on_401 off)", |b| {
        b.iter_custom(|iters| timed(&mut oauth2_client_like_no_replay, iters))
    });
    group.bench_function(
        "OAuth2Layer (fresh token, replay offered by retry above)",
        |b| b.iter_custom(|iters| timed_with(&mut oauth2_client_like, iters, request_offered)),
    );
    group.finish();

    // The same services on requests whose head came from hyper's parser (a gateway's case).
    let mut group = c.benchmark_group("auth_parsed_request");
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| timed_with(&mut svc, iters, request_parsed))
    });
    group.bench_function("BearerAuthLayer", |b| {
        b.iter_custom(|iters| timed_with(&mut bearer, iters, request_parsed))
    });
    group.bench_function("OAuth2Layer (fresh token)", |b| {
        b.iter_custom(|iters| timed_with(&mut oauth2, iters, request_parsed))
    });
    group.bench_function("OAuth2Layer (fresh token, replay_on_401 off)", |b| {
        b.iter_custom(|iters| timed_with(&mut oauth2_no_replay, iters, request_parsed))
    });
    group.finish();

    // `AUTH_BENCH_FIXED=1`: on a loaded shared machine criterion's means swing by 2-3x
    // between runs; this prints, per service, the fastest and the median of many short
    // rounds (1,000 calls each, interleaved), which preemption can only slow down.
    if std::env::var_os("AUTH_BENCH_FIXED").is_some() {
        let mut rounds: [Vec<f64>; 9] = Default::default();
        for _ in 0..400 {
            rounds[6].push(timed(&mut set_header, 1000).as_nanos() as f64 / 1000.0);
            rounds[0].push(timed(&mut svc, 1000).as_nanos() as f64 / 1000.0);
            rounds[1].push(timed(&mut bearer, 1000).as_nanos() as f64 / 1000.0);
            rounds[2].push(timed(&mut oauth2, 1000).as_nanos() as f64 / 1000.0);
            rounds[3].push(timed(&mut oauth2_no_replay, 1000).as_nanos() as f64 / 1000.0);
            rounds[4].push(timed_with(&mut svc, 1000, request_offered).as_nanos() as f64 / 1000.0);
            rounds[5]
                .push(timed_with(&mut oauth2, 1000, request_offered).as_nanos() as f64 / 1000.0);
            rounds[7].push(
                timed_with(&mut oauth2_client_like, 1000, request_offered).as_nanos() as f64
                    / 1000.0,
            );
            rounds[8]
                .push(timed(&mut oauth2_client_like_no_replay, 1000).as_nanos() as f64 / 1000.0);
        }
        for (name, r) in [
            "bare",
            "bearer",
            "oauth2",
            "oauth2 (replay off)",
            "bare (request with extension)",
            "oauth2 (replay offered from above)",
            "tower-http SetRequestHeader",
            "oauth2 (replay offered from above), client-like inner",
            "oauth2 (replay off), client-like inner",
        ]
        .iter()
        .zip(rounds.iter_mut())
        {
            r.sort_by(f64::total_cmp);
            eprintln!(
                "{name}: min {:.1} ns, median {:.1} ns per call",
                r[0],
                r[r.len() / 2]
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
