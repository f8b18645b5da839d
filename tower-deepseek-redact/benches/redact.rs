//! Redaction throughput (text, and whole request bodies through the layer), streaming restore
//! against passthrough (in memory and over a loopback HTTP/1.1 connection), audit record cost.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_redact::audit::{AuditLayer, WriterSink};
use tower_deepseek_redact::{Detectors, RedactContext, RedactLayer, Redactor};
use tower_layer::Layer;

/// Mixed chat text with a value of every kind (secrets, landlines with `+86`, bare SSNs after
/// `SSN`, passports, passwords in URLs) and look-alikes (versions, invoice codes, file names
/// with `@`), one every ~1 KB.
fn chat_text_all(size: usize) -> String {
    let base = chat_text(size, false);
    let extra = [
        "数据库密码：Zhang@2024，",
        " api_key=\"sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b\" ",
        " office +86 10 6234 5678 ",
        " SSN 123456789. ",
        "护照号码E12345678。",
        " postgres://app:S3cr3t-pw@db.example.com/app ",
        "固件版本 4.2.0.12，",
        "发票代码 044031900111 ",
        " icon@2x.png ",
        " token: q8Xr2mZt9LkP4vNw7YhB3sJd ",
    ];
    let mut s = String::with_capacity(size + 1024);
    let mut i = 0;
    for piece in base.split_inclusive('。') {
        s.push_str(piece);
        if s.len() / 1024 > i {
            s.push_str(extra[i % extra.len()]);
            i += 1;
        }
    }
    s
}

/// With `DETECT_ITERS=N` (and `DETECT_TEXT=mixed|fullwidth|all`), runs detection N times on
/// one 64 KiB text and exits: a fixed amount of work whose instruction count (callgrind, run
/// once with N and once with 0) does not move with the machine's load, as criterion's times do.
fn fixed_work_detect() {
    let Some(n) = std::env::var("DETECT_ITERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let text = match std::env::var("DETECT_TEXT").as_deref() {
        Ok("fullwidth") => chat_text(64 * 1024, true),
        Ok("all") => chat_text_all(64 * 1024),
        _ => chat_text(64 * 1024, false),
    };
    let detectors = Detectors::all();
    let mut found = 0;
    for _ in 0..n {
        found += black_box(detectors.detect(black_box(&text))).len();
    }
    println!("{n} x {} bytes, {found} detections", text.len());
    std::process::exit(0);
}

fn bench_detect(c: &mut Criterion) {
    fixed_work_detect();
    let mut g = c.benchmark_group("redact_text");
    let redactor = Redactor::default();
    let detectors = Detectors::all();
    for (name, text) in [
        ("mixed_64k", chat_text(64 * 1024, false)),
        ("mixed_fullwidth_64k", chat_text(64 * 1024, true)),
        ("mixed_all_kinds_64k", chat_text_all(64 * 1024)),
    ] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("detect/{name}"), |b| {
            b.iter(|| black_box(detectors.detect(black_box(&text))))
        });
        g.bench_function(format!("redact/{name}"), |b| {
            b.iter(|| {
                let mut ctx = RedactContext::new(None);
                black_box(redactor.redact(black_box(&text), &mut ctx).unwrap())
            })
        });
    }
    let text = chat_text(64 * 1024, false);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("detect/none_enabled", |b| {
        let d = Detectors::builder().none().build().unwrap();
        b.iter(|| black_box(d.detect(black_box(&text))))
    });
    for e in tower_deepseek_redact::EntityType::builtin() {
        let d = Detectors::builder().none().enable(&e).build().unwrap();
        g.bench_function(format!("detect/only_{e}"), |b| {
            b.iter(|| black_box(d.detect(black_box(&text))))
        });
    }
    let clean = chat_text(64 * 1024, false).replace(['@'], "at");
    let clean: String = clean
        .split("联系人手机13800138000。")
        .collect::<Vec<_>>()
        .join("")
        .replace("11010519491231002X", "")
        .replace("192.168.1.20", "");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("redact/no_pii_64k", |b| {
        b.iter(|| {
            let mut ctx = RedactContext::new(None);
            black_box(redactor.redact(black_box(&clean), &mut ctx).unwrap())
        })
    });
    g.finish();
}

fn bench_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let svc = RedactLayer::new().layer(service_fn(|req: Request<BufferedBody>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(req.into_body().into_bytes())))
    }));
    let mut g = c.benchmark_group("redact_request");
    for (name, body) in request_bodies() {
        let body = Bytes::from(body);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = Request::post("/chat/completions")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let res = rt.block_on(svc.clone().oneshot(req)).unwrap();
                black_box(res)
            })
        });
    }
    g.finish();
}

mod fixture;
use fixture::{
    Chunks, LOOPBACK_CASES, Loopback, Scanned, chat_req, chat_text, loopback_req, poll_to_end,
    request_bodies, sse_response, stream,
};

/// Times only the response body (the streaming part), not the request (made by `req`): its
/// frames are polled one by one and dropped, so that the harness adds as little as possible
/// per frame.
async fn body_only<S, B>(svc: &S, req: impl Fn() -> Request<Full<Bytes>>, iters: u64) -> Duration
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let res = svc.clone().oneshot(req()).await.unwrap();
        let mut body = res.into_body();
        let start = Instant::now();
        while let Some(f) = body.frame().await {
            black_box(f.unwrap());
        }
        total += start.elapsed();
    }
    total
}

fn bench_restore(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let plain = stream(false);
    let with = stream(true);
    let bytes: usize = plain.iter().map(Bytes::len).sum();
    let bare_frames = plain.clone();
    let bare = service_fn(move |_req: Request<Full<Bytes>>| {
        let f = bare_frames.clone();
        async move { Ok::<_, Infallible>(sse_response(Chunks::new(f))) }
    });
    let scan_frames = plain.clone();
    let scanned = service_fn(move |_req: Request<Full<Bytes>>| {
        let f = scan_frames.clone();
        async move { Ok::<_, Infallible>(sse_response(Scanned(Chunks::new(f)))) }
    });
    let layered = |frames: Arc<[Bytes]>| {
        RedactLayer::new().layer(service_fn(move |_req: Request<BufferedBody>| {
            let f = frames.clone();
            async move { Ok::<_, Infallible>(sse_response(Chunks::new(f))) }
        }))
    };
    let cases = [
        ("redact_no_pii_in_request", plain.clone(), "hello there"),
        (
            "redact_vault_no_placeholder_in_stream",
            plain.clone(),
            "hello 13800138000",
        ),
        (
            "redact_restore_5pct_events",
            with.clone(),
            "hello 13800138000",
        ),
    ];

    // Request and response: what a caller sees per call.
    let mut g = c.benchmark_group("stream_restore");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("bare_passthrough", |b| {
        b.to_async(&rt).iter(|| async {
            let res = bare
                .clone()
                .oneshot(chat_req("hello 13800138000"))
                .await
                .unwrap();
            black_box(res.into_body().collect().await.unwrap());
        })
    });
    for (name, frames, content) in cases.clone() {
        let svc = layered(frames);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let res = svc.clone().oneshot(chat_req(content)).await.unwrap();
                black_box(res.into_body().collect().await.unwrap());
            })
        });
    }
    g.finish();

    // The response body only: the streaming restore itself against the same passthrough.
    let mut g = c.benchmark_group("stream_restore_body");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("bare_passthrough", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| body_only(&bare, || chat_req("hello 13800138000"), iters))
    });
    g.bench_function("bare_plus_memchr_floor", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| body_only(&scanned, || chat_req("hello 13800138000"), iters))
    });
    for (name, frames, content) in cases {
        let svc = layered(frames);
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| body_only(&svc, || chat_req(content), iters))
        });
    }
    g.finish();
}

fn bench_audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit_per_request");
    let inner = service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#,
                )))
                .unwrap(),
        )
    });
    let bare = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(req.into_body().collect().await.unwrap());
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#,
                )))
                .unwrap(),
        )
    });
    g.bench_function("piece/rfc3339", |b| {
        b.iter(|| {
            black_box(tower_deepseek_redact::audit::rfc3339(
                std::time::SystemTime::now(),
            ))
        })
    });
    let rec = tower_deepseek_redact::audit::AuditRecord::default();
    g.bench_function("piece/serialize_record", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&rec)).unwrap()))
    });
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let res = bare.oneshot(chat_req("hello")).await.unwrap();
            black_box(res.into_body().collect().await.unwrap());
        })
    });
    for (name, chain) in [("audit", false), ("audit_hash_chain", true)] {
        let layer = AuditLayer::builder()
            .hmac_key(b"bench-key-0123456789".to_vec())
            .sink(WriterSink::new(std::io::sink()))
            .hash_chain(chain)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(move |req: Request<_>| {
            let inner = inner;
            async move {
                let req: Request<tower_deepseek_redact::audit::AuditRequestBody<Full<Bytes>>> = req;
                black_box(req.into_body().collect().await.unwrap());
                inner.oneshot(Request::new(())).await
            }
        }));
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let res = svc.clone().oneshot(chat_req("hello")).await.unwrap();
                black_box(res.into_body().collect().await.unwrap());
            })
        });
    }
    g.finish();
}

const REVIEW_ANSWER: &[u8] = br#"{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;

/// A review layer sampling `fraction` of the calls (null sink, no evaluator) over a service
/// answering [`REVIEW_ANSWER`].
fn review_service(
    fraction: f64,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = impl std::fmt::Debug>>,
    Error = impl std::fmt::Debug,
> + Clone {
    use tower_deepseek_redact::review::{ReviewLayer, ReviewRequestBody, SamplingRule};
    let layer = ReviewLayer::builder()
        .rule(SamplingRule::new(fraction))
        .json_mode_evaluator(false)
        .queue_capacity(1 << 16)
        .sink(WriterSink::new(std::io::sink()))
        .build()
        .unwrap();
    layer.layer(service_fn(
        |req: Request<ReviewRequestBody<Full<Bytes>>>| async move {
            black_box(req.into_body().collect().await.unwrap());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(REVIEW_ANSWER))))
        },
    ))
}

/// A moka cache configured as the recent-call index was before it was replaced (TinyLFU, a
/// time to live, 100 000 entries), or with the LRU policy.
fn moka_index(lru: bool) -> moka::sync::Cache<Arc<str>, u64> {
    let b = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(86_400));
    if lru {
        b.eviction_policy(moka::policy::EvictionPolicy::lru())
            .build()
    } else {
        b.build()
    }
}

fn bench_review(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("review_per_request");
    let bare = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(req.into_body().collect().await.unwrap());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(REVIEW_ANSWER))))
    });
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let res = bare.oneshot(chat_req("hello")).await.unwrap();
            black_box(res.into_body().collect().await.unwrap());
        })
    });
    // The key alone (the id formatted and shared), then moka inserts of that key once the
    // cache is full (criterion runs far more than 100 000 iterations).
    let mut n = 0u64;
    g.bench_function("piece/key", |b| {
        b.iter(|| {
            n += 1;
            black_box(Arc::<str>::from(format!("id-{n}")))
        })
    });
    for (name, lru, entry) in [
        ("piece/moka_insert", false, false),
        ("piece/moka_insert_lru", true, false),
        ("piece/moka_entry", false, true),
    ] {
        let cache = moka_index(lru);
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let k: Arc<str> = Arc::from(format!("id-{n}"));
                if entry {
                    cache.entry(k).or_insert_with(|| n);
                } else {
                    cache.insert(k, n);
                }
            })
        });
    }
    for (name, fraction) in [("unsampled", 0.0), ("sampled", 1.0)] {
        let svc = review_service(fraction);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let res = svc.clone().oneshot(chat_req("hello")).await.unwrap();
                black_box(res.into_body().collect().await.unwrap());
            })
        });
    }
    g.finish();
}

/// `REVIEW_DRIVE=<bare|unsampled|sampled|moka_insert|moka_insert_lru> REVIEW_ITERS=<n>`:
/// only `n` calls (or inserts) of that variant of `review_per_request`, after 200 000 to warm
/// it (and fill moka), for callgrind (run with `n` and 0, subtract, divide by `n`).
fn review_drive(which: &str) {
    let iters: u64 = std::env::var("REVIEW_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut run: Box<dyn FnMut(u64)> = match which {
        "unsampled" | "sampled" => {
            let svc = review_service(if which == "sampled" { 1.0 } else { 0.0 });
            Box::new(move |k| {
                rt.block_on(async {
                    for _ in 0..k {
                        let res = svc.clone().oneshot(chat_req("hello")).await.unwrap();
                        black_box(res.into_body().collect().await.unwrap());
                    }
                })
            })
        }
        "bare" => {
            let bare = service_fn(|req: Request<Full<Bytes>>| async move {
                black_box(req.into_body().collect().await.unwrap());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(REVIEW_ANSWER))))
            });
            Box::new(move |k| {
                rt.block_on(async {
                    for _ in 0..k {
                        let res = bare.oneshot(chat_req("hello")).await.unwrap();
                        black_box(res.into_body().collect().await.unwrap());
                    }
                })
            })
        }
        "moka_insert" | "moka_insert_lru" => {
            let cache = moka_index(which == "moka_insert_lru");
            let mut n = 0u64;
            Box::new(move |k| {
                for _ in 0..k {
                    n += 1;
                    cache.insert(Arc::from(format!("id-{n}")), n);
                }
            })
        }
        other => panic!("unknown variant {other}"),
    };
    run(200_000);
    run(iters);
}

/// One whole call: the request sent, the response body drained.
async fn loopback_call<S, B>(svc: &S, req: Request<Full<Bytes>>) -> usize
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    poll_to_end(&mut res.into_body()).await
}

/// The streaming restore behind a real HTTP/1.1 client and upstream over loopback TCP: the
/// bare hyper-util legacy `Client` (keep-alive pool) against `RedactLayer` over the same
/// client. Server, client connection tasks and the bench run on one current-thread runtime,
/// so every figure is the CPU work of one core for the whole exchange, upstream included.
fn bench_restore_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plain = stream(false);
    let bytes: usize = plain.iter().map(Bytes::len).sum();
    let Loopback {
        uri,
        bare,
        layered,
        accepted,
    } = rt.block_on(Loopback::start());
    let cases = LOOPBACK_CASES;

    // Request and response: what a caller sees per call.
    let mut g = c.benchmark_group("stream_restore_loopback");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("call/bare_passthrough", |b| {
        b.to_async(&rt)
            .iter(|| loopback_call(&bare, loopback_req(&uri, "hello 13800138000", false)))
    });
    for (name, content, restore) in cases {
        g.bench_function(format!("call/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| loopback_call(&layered, loopback_req(&uri, content, restore)))
        });
    }
    // The response body only, from its first poll to its end.
    g.bench_function("body/bare_passthrough", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            body_only(
                &bare,
                || loopback_req(&uri, "hello 13800138000", false),
                iters,
            )
        })
    });
    for (name, content, restore) in cases {
        g.bench_function(format!("body/{name}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                body_only(&layered, || loopback_req(&uri, content, restore), iters)
            })
        });
    }
    g.finish();
    eprintln!(
        "loopback: upstream accepted {} connection(s) in all",
        accepted.load(Ordering::Relaxed)
    );
}

criterion_group!(
    benches,
    bench_detect,
    bench_request,
    bench_restore,
    bench_restore_loopback,
    bench_audit,
    bench_review
);
fn main() {
    if let Ok(which) = std::env::var("REVIEW_DRIVE") {
        review_drive(&which);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
