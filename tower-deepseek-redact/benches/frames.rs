//! Fixed-work driver for instruction counts under callgrind, which stay comparable while the
//! machine is loaded (criterion's times do not). The same fixtures as `benches/redact.rs`.
//!
//! ```text
//! cargo bench -p tower-deepseek-redact --bench frames --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*frames*drain*' \
//!     target/release/deps/frames-<hash> body <case> 1000
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*frames*one_call*' \
//!     target/release/deps/frames-<hash> audit <case> 1000
//! ```
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*frames*request_call*' \
//!     target/release/deps/frames-<hash> request <case> 200
//! ```
//!
//! Request cases (the request side of `RedactLayer`, to the inner service and no further, the
//! bodies of `redact.rs`'s `redact_request`): `chat_64k`, `chat_no_pii_64k`,
//! `history_reasoning_tools_64k`, `short_fields_tools`.
//!
//! Body cases (the response body only, polled frame by frame, 401 frames per iteration):
//! `bare`, `floor` (bare + one `memchr` per frame), `no_pii`, `vault`, `restore5`. Audit cases
//! (one whole call, request to the end of the response body): `bare`, `audit`, `chain`.
//! Divide the collected instructions by the iterations (and by 401 for frames). Run without
//! arguments (as `cargo bench` does), it does one iteration of everything as a smoke test.
//! `frames time body <rounds>` (or `time audit <rounds>`) prints the best-of-rounds time per
//! frame (per call) of each case. `frames time loopback <rounds>` does the same for the
//! loopback cases of `redact.rs`'s `stream_restore_loopback` (a hyper-util client and a hyper
//! upstream on 127.0.0.1, on one current-thread tokio runtime; not for callgrind): the best
//! mean of 20 calls per round, both the whole call and the response body alone.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_redact::RedactLayer;
use tower_deepseek_redact::audit::{AuditLayer, AuditRequestBody, WriterSink};
use tower_layer::Layer;

/// Polls a future that never waits to its end.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

mod fixture;
use fixture::{
    Chunks, LOOPBACK_CASES, Loopback, Scanned, chat_req, loopback_req, poll_to_end, request_bodies,
    sse_response, stream,
};

/// The measured part of a body case: every frame, as the criterion harness polls them.
#[inline(never)]
fn drain<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> usize
where
    B::Error: std::fmt::Debug,
{
    block_on(async {
        let mut n = 0;
        while let Some(f) = body.frame().await {
            black_box(f.unwrap());
            n += 1;
        }
        n
    })
}

fn run_body<S, B>(svc: &S, content: &str, iters: u64) -> (usize, Duration)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut frames = 0;
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let res = block_on(svc.clone().oneshot(chat_req(content))).unwrap();
        let mut body = res.into_body();
        let start = Instant::now();
        frames += drain(&mut body);
        spent += start.elapsed();
    }
    (frames, spent)
}

fn body_case(case: &str, iters: u64) {
    body_case_timed(case, iters);
}

/// Runs a body case; returns the time spent in [`drain`] only.
fn body_case_timed(case: &str, iters: u64) -> Duration {
    let plain = stream(false);
    let with = stream(true);
    let layered = |frames: Arc<[Bytes]>| {
        RedactLayer::new().layer(service_fn(move |_req: Request<BufferedBody>| {
            let f = frames.clone();
            async move { Ok::<_, Infallible>(sse_response(Chunks::new(f))) }
        }))
    };
    let n = match case {
        "bare" => {
            let f = plain.clone();
            let svc = service_fn(move |_req: Request<Full<Bytes>>| {
                let f = f.clone();
                async move { Ok::<_, Infallible>(sse_response(Chunks::new(f))) }
            });
            run_body(&svc, "hello 13800138000", iters)
        }
        "floor" => {
            let f = plain.clone();
            let svc = service_fn(move |_req: Request<Full<Bytes>>| {
                let f = f.clone();
                async move { Ok::<_, Infallible>(sse_response(Scanned(Chunks::new(f)))) }
            });
            run_body(&svc, "hello 13800138000", iters)
        }
        "no_pii" => run_body(&layered(plain), "hello there", iters),
        "vault" => run_body(&layered(plain), "hello 13800138000", iters),
        "restore5" => run_body(&layered(with), "hello 13800138000", iters),
        other => panic!("unknown body case {other}"),
    };
    assert_eq!(n.0 as u64, 401 * iters);
    n.1
}

/// Best-of timing per frame, the cases interleaved round by round: on a shared machine the
/// minimum over many short rounds is far steadier than a mean.
fn time_body(rounds: u32) {
    let cases = ["bare", "floor", "no_pii", "vault", "restore5"];
    let mut best = [f64::MAX; 5];
    for _ in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            let ns = body_case_timed(case, 50).as_nanos() as f64 / (50.0 * 401.0);
            best[i] = best[i].min(ns);
        }
    }
    for (case, ns) in cases.iter().zip(best) {
        println!("{case:>9}: {ns:6.2} ns/frame  {:.2}x bare", ns / best[0]);
    }
}

const ANSWER: &[u8] = br#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;

fn answer() -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(ANSWER)))
        .unwrap()
}

/// The measured part of an audit case: one whole call.
#[inline(never)]
fn one_call<S, B>(svc: &S) -> usize
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    block_on(async {
        let res = svc.clone().oneshot(chat_req("hello")).await.unwrap();
        res.into_body().collect().await.unwrap().to_bytes().len()
    })
}

fn audit_case(case: &str, iters: u64) {
    audit_case_timed(case, iters);
}

/// Runs an audit case; returns the time of the calls.
fn audit_case_timed(case: &str, iters: u64) -> Duration {
    let run = |svc: &dyn Fn() -> usize| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(svc());
        }
        start.elapsed()
    };
    match case {
        "bare" => {
            let svc = service_fn(|req: Request<Full<Bytes>>| async move {
                black_box(req.into_body().collect().await.unwrap());
                Ok::<_, Infallible>(answer())
            });
            run(&|| one_call(&svc))
        }
        "audit" | "chain" => {
            let layer = AuditLayer::builder()
                .hmac_key(b"bench-key-0123456789".to_vec())
                .sink(WriterSink::new(std::io::sink()))
                .hash_chain(case == "chain")
                .build()
                .unwrap();
            let svc = layer.layer(service_fn(
                |req: Request<AuditRequestBody<Full<Bytes>>>| async move {
                    black_box(req.into_body().collect().await.unwrap());
                    Ok::<_, Infallible>(answer())
                },
            ));
            run(&|| one_call(&svc))
        }
        other => panic!("unknown audit case {other}"),
    }
}

/// Best-of timing per call, interleaved as in [`time_body`].
fn time_audit(rounds: u32) {
    let cases = ["bare", "audit", "chain"];
    let mut best = [f64::MAX; 3];
    for _ in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            let ns = audit_case_timed(case, 200).as_nanos() as f64 / 200.0;
            best[i] = best[i].min(ns);
        }
    }
    for (case, ns) in cases.iter().zip(best) {
        println!(
            "{case:>9}: {ns:7.0} ns/call  +{:.0} ns over bare",
            ns - best[0]
        );
    }
}

/// One loopback call: (whole call, response body from its first poll to its end, frames).
async fn timed_call<S, B>(svc: &S, req: Request<Full<Bytes>>) -> (Duration, Duration, usize)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let res = svc.clone().oneshot(req).await.unwrap();
    let mut body = res.into_body();
    let body_start = Instant::now();
    let n = poll_to_end(&mut body).await;
    let end = Instant::now();
    (end - start, end - body_start, n)
}

/// Best-of timing of the loopback cases, interleaved as in [`time_body`]: per round, the mean
/// of 20 calls of each case.
fn time_loopback(rounds: u32) {
    const CALLS: u32 = 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lb = Loopback::start().await;
        let cases = ["bare", "no_pii", "vault", "restore5"];
        let mut best = [(f64::MAX, f64::MAX); 4];
        let mut frames = [0usize; 4];
        for _ in 0..rounds {
            for (i, slot) in best.iter_mut().enumerate() {
                let (mut call, mut body) = (Duration::ZERO, Duration::ZERO);
                for _ in 0..CALLS {
                    let (c, b, n) = match i {
                        0 => {
                            let req = loopback_req(&lb.uri, "hello 13800138000", false);
                            timed_call(&lb.bare, req).await
                        }
                        _ => {
                            let (_, content, restore) = LOOPBACK_CASES[i - 1];
                            let req = loopback_req(&lb.uri, content, restore);
                            timed_call(&lb.layered, req).await
                        }
                    };
                    call += c;
                    body += b;
                    frames[i] += n;
                }
                let per = |d: Duration| d.as_nanos() as f64 / f64::from(CALLS) / 1000.0;
                slot.0 = slot.0.min(per(call));
                slot.1 = slot.1.min(per(body));
            }
        }
        let calls = f64::from(rounds * CALLS);
        for (i, (case, (call, body))) in cases.iter().zip(best).enumerate() {
            println!(
                "{case:>9}: call {call:7.1} us  {:.3}x bare  (+{:5.1} ns/frame) | body {body:7.1} us  {:.3}x bare  (+{:5.1} ns/frame) | {:.1} frames/response",
                call / best[0].0,
                (call - best[0].0) * 1000.0 / 401.0,
                body / best[0].1,
                (body - best[0].1) * 1000.0 / 401.0,
                frames[i] as f64 / calls,
            );
        }
        println!(
            "upstream accepted {} connection(s)",
            lb.accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
    });
}

/// The measured part of a request case: one call through the layer to an inner service that
/// takes the (masked) body and answers empty.
#[inline(never)]
fn request_call<S>(svc: &S, body: &Bytes) -> usize
where
    S: tower::Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    black_box(block_on(svc.clone().oneshot(req)).unwrap());
    1
}

fn request_case(case: &str, iters: u64) {
    let body = Bytes::from(
        request_bodies()
            .into_iter()
            .find(|(n, _)| *n == case)
            .unwrap_or_else(|| panic!("no request case {case}"))
            .1,
    );
    let svc = RedactLayer::new().layer(service_fn(|req: Request<BufferedBody>| async move {
        black_box(req.into_body().into_bytes());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let mut n = 0;
    for _ in 0..iters {
        n += request_call(&svc, &body);
    }
    black_box(n);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["body", case, iters] => body_case(case, iters.parse().expect("iterations")),
        ["audit", case, iters] => audit_case(case, iters.parse().expect("iterations")),
        ["request", case, iters] => request_case(case, iters.parse().expect("iterations")),
        ["time", "body", rounds] => time_body(rounds.parse().expect("rounds")),
        ["time", "audit", rounds] => time_audit(rounds.parse().expect("rounds")),
        ["time", "loopback", rounds] => time_loopback(rounds.parse().expect("rounds")),
        // `cargo bench` passes `--bench`: one iteration of everything.
        _ => {
            for case in ["bare", "floor", "no_pii", "vault", "restore5"] {
                body_case(case, 1);
            }
            for case in ["bare", "audit", "chain"] {
                audit_case(case, 1);
            }
            for (case, _) in request_bodies() {
                request_case(case, 1);
            }
        }
    }
}
