//! Cache benchmarks: L1 hit latency (canonical key included) against a bare service and
//! tower-resilience's cache on the same workload; key computation throughput; L2 hit against a
//! plain Redis GET of the same bytes (when Redis answers).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt, service_fn};
use tower_deepseek_cache::{CacheKey, CacheLayer, Scope};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::view::ChatView;

/// A chat request of about `size` bytes: a system prompt, a few turns, sampling parameters.
fn request_body(size: usize) -> Bytes {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a careful assistant. Answer briefly and cite sources."}),
    ];
    let mut i = 0;
    loop {
        let v = json!({
            "model": "deepseek-chat", "temperature": 0, "top_p": 1, "max_tokens": 512,
            "stream": false, "messages": messages,
        });
        let s = v.to_string();
        if s.len() >= size {
            return Bytes::from(s);
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("Turn {i}: what does the documentation say about the retry budget and its refill rate in section {i}?")}));
        i += 1;
    }
}

fn answer() -> Bytes {
    Bytes::from(
        json!({"id":"c1","object":"chat.completion","created":1,"model":"deepseek-chat",
            "choices":[{"index":0,"message":{"role":"assistant","content":"The retry budget refills at 10% of the request rate."},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":500,"completion_tokens":12,"total_tokens":512}})
        .to_string(),
    )
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = request_body(2048);
    let ans = answer();
    let mut g = c.benchmark_group("l1_hit_2k");

    // Baseline: the bare service.
    let a = ans.clone();
    let bare = service_fn(move |_r: Request<BufferedBody>| {
        let a = a.clone();
        async move { Ok::<_, Infallible>(Response::new(BufferedBody::new(a))) }
    });
    let b = body.clone();
    g.bench_function("bare_service", |bn| {
        bn.to_async(&rt).iter(|| async {
            let req = Request::post("/chat/completions")
                .body(BufferedBody::new(b.clone()))
                .unwrap();
            let resp = bare.clone().oneshot(req).await.unwrap();
            black_box(resp.into_body().collect().await.unwrap().to_bytes())
        })
    });

    // Ours: canonical SHA-256 key + moka + replay.
    let ours = CacheLayer::new().layer(bare.clone());
    rt.block_on(async {
        let req = Request::post("/chat/completions")
            .body(BufferedBody::new(body.clone()))
            .unwrap();
        let r = ours.clone().oneshot(req).await.unwrap();
        r.into_body().collect().await.unwrap();
    });
    g.bench_function("tower_deepseek_cache", |bn| {
        bn.to_async(&rt).iter(|| async {
            let req = Request::post("/chat/completions")
                .body(BufferedBody::new(b.clone()))
                .unwrap();
            let resp = ours.clone().oneshot(req).await.unwrap();
            debug_assert_eq!(resp.headers()["x-cache"], "hit-l1");
            black_box(resp.into_body().collect().await.unwrap().to_bytes())
        })
    });

    // tower-resilience: key = SHA-256 of the raw body (no canonical form); response must be
    // `Clone`, so the service answers `Bytes`.
    let a = ans.clone();
    let tr_inner = service_fn(move |_r: Request<Bytes>| {
        let a = a.clone();
        async move { Ok::<_, Infallible>(a) }
    });
    let tr = tower_resilience::cache::CacheLayer::builder()
        .max_size(10_000)
        .ttl(Duration::from_secs(300))
        .key_extractor(|r: &Request<Bytes>| -> [u8; 32] { Sha256::digest(r.body()).into() })
        .build()
        .unwrap()
        .layer(tr_inner);
    g.bench_function("tower_resilience_cache", |bn| {
        bn.to_async(&rt).iter(|| async {
            let req = Request::post("/chat/completions").body(b.clone()).unwrap();
            black_box(tr.clone().oneshot(req).await.unwrap())
        })
    });
    g.finish();
}

fn key_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    for size in [2048usize, 32 * 1024] {
        let body = request_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("value_parse_canonical_sha256", size),
            &body,
            |bn, body| {
                bn.iter(|| {
                    let v: Value = serde_json::from_slice(body).unwrap();
                    black_box(CacheKey::compute(
                        &Method::POST,
                        "/chat/completions",
                        Scope::Anonymous,
                        &v,
                    ))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("from_json_canonical_sha256", size),
            &body,
            |bn, body| {
                bn.iter(|| {
                    black_box(
                        CacheKey::from_json(
                            &Method::POST,
                            "/chat/completions",
                            Scope::Anonymous,
                            body,
                        )
                        .unwrap(),
                    )
                })
            },
        );
        // The layer's path: core's shared view of the body (parsed here, as when the cache is
        // the first layer that reads it), then the key from the view.
        let bytes = body.clone();
        g.bench_with_input(
            BenchmarkId::new("view_parse_canonical_sha256", size),
            &bytes,
            |bn, bytes| {
                bn.iter(|| {
                    let view = ChatView::parse(bytes.clone()).unwrap();
                    black_box(CacheKey::from_view(
                        &Method::POST,
                        "/chat/completions",
                        Scope::Anonymous,
                        &view,
                    ))
                })
            },
        );
        // The view already parsed by a layer above (the redactor): the key alone.
        let view = ChatView::parse(bytes.clone()).unwrap();
        g.bench_with_input(
            BenchmarkId::new("from_view_canonical_sha256", size),
            &view,
            |bn, view| {
                bn.iter(|| {
                    black_box(CacheKey::from_view(
                        &Method::POST,
                        "/chat/completions",
                        Scope::Anonymous,
                        view,
                    ))
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("raw_sha256", size), &body, |bn, body| {
            bn.iter(|| black_box(Sha256::digest(body)))
        });
    }
    g.finish();
}

fn l2_hit(c: &mut Criterion) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Ok(client) = redis::Client::open(url.as_str()) else {
        return;
    };
    let Ok(Ok(mut conn)) = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
    }) else {
        eprintln!("notice: no Redis at {url}; L2 benchmark skipped");
        return;
    };
    let prefix = format!("tdc-bench:{}", std::process::id());
    let body = request_body(2048);
    let ans = answer();
    let a = ans.clone();
    let inner = service_fn(move |_r: Request<BufferedBody>| {
        let a = a.clone();
        async move { Ok::<_, Infallible>(Response::new(BufferedBody::new(a))) }
    });
    // L1 disabled: every request reads Redis.
    let ours = CacheLayer::builder()
        .l1_max_bytes(0)
        .redis_url(url.clone())
        .key_prefix(prefix.clone())
        .build()
        .unwrap()
        .layer(inner);
    let req = || {
        Request::post("/chat/completions")
            .body(BufferedBody::new(body.clone()))
            .unwrap()
    };
    let v: Value = serde_json::from_slice(&body).unwrap();
    let rkey = format!("{prefix}:v1:{}", CacheKey::for_request(&req(), &v).to_hex());
    rt.block_on(async {
        let r = ours.clone().oneshot(req()).await.unwrap();
        r.into_body().collect().await.unwrap();
        // Wait for the background write.
        for _ in 0..200 {
            let n: bool = redis::AsyncCommands::exists(&mut conn, &rkey)
                .await
                .unwrap();
            if n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut g = c.benchmark_group("l2_hit_2k");
    g.bench_function("plain_redis_get", |bn| {
        bn.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let rkey = rkey.clone();
            async move {
                let v: Vec<u8> = redis::AsyncCommands::get(&mut conn, &rkey).await.unwrap();
                black_box(v)
            }
        })
    });
    g.bench_function("tower_deepseek_cache", |bn| {
        bn.to_async(&rt).iter(|| async {
            let resp = ours.clone().oneshot(req()).await.unwrap();
            debug_assert_eq!(resp.headers()["x-cache"], "hit-l2");
            black_box(resp.into_body().collect().await.unwrap().to_bytes())
        })
    });
    g.finish();
    rt.block_on(async {
        let _: () = redis::AsyncCommands::del(&mut conn, &rkey).await.unwrap();
    });
}

criterion_group!(benches, l1_hit, key_throughput, l2_hit);
criterion_main!(benches);
