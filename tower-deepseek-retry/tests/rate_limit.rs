//! Rate limiter with paused time.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::read_body;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_retry::RetryLayer;
use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer, RateLimited, RequestTooLarge};

type Req = http::Request<ReplayBody<Full<Bytes>>>;
type Answer = Arc<dyn Fn(&str) -> http::Response<Full<Bytes>> + Send + Sync>;

/// Records the admission time and a tag of each request; answers with `answer`.
#[derive(Clone)]
struct Upstream {
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    answer: Answer,
}

impl Upstream {
    fn new(answer: impl Fn(&str) -> http::Response<Full<Bytes>> + Send + Sync + 'static) -> Self {
        Self {
            log: Arc::default(),
            answer: Arc::new(answer),
        }
    }
    fn ok() -> Self {
        Self::new(|_| json_usage(None))
    }
    fn times(&self) -> Vec<Instant> {
        self.log.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }
    fn tags(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}

impl Service<Req> for Upstream {
    type Response = http::Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Self::Future {
        let tag = req
            .headers()
            .get("x-tag")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        self.log.lock().unwrap().push((Instant::now(), tag.clone()));
        std::future::ready(Ok((self.answer)(&tag)))
    }
}

fn json_usage(total: Option<u64>) -> http::Response<Full<Bytes>> {
    let body = match total {
        Some(t) => format!(
            r#"{{"choices":[{{"message":{{"content":"x"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":{},"total_tokens":{t}}}}}"#,
            t - 1
        ),
        None => r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}"#.to_owned(),
    };
    http::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn chat(model: &str, max_tokens: u64, tag: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("http://upstream/chat/completions")
        .header("x-tag", tag)
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_requests_at_twice_the_rate() {
    // 6000/min = 100/s, burst 1; requests arrive at 200/s.
    let layer = RateLimitLayer::builder()
        .requests_per_minute(6000)
        .request_burst(1)
        .max_wait(Duration::from_secs(3600))
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    let mut tasks = Vec::new();
    for i in 0..10_000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(chat("m", 1, &i.to_string()))
                .await
                .map(|r| r.status())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ok = 0;
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 10_000, "every waiter is served");
    let times = up.times();
    assert_eq!(times.len(), 10_000, "nothing lost");
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    let rate = (times.len() - 1) as f64 / span;
    assert!((95.0..=105.0).contains(&rate), "admitted rate {rate}/s");
    // fair: admitted in arrival order
    let tags: Vec<u32> = up.tags().iter().map(|t| t.parse().unwrap()).collect();
    assert!(tags.windows(2).all(|w| w[0] < w[1]), "FIFO order");
}

#[tokio::test(start_paused = true)]
async fn over_max_wait_gets_a_typed_error_and_nothing_is_lost() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(6000)
        .request_burst(1)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(chat("m", 1, &i.to_string())).await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut served, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => served += 1,
            Err(e) => {
                assert!(e.is::<RateLimited>(), "{e}");
                limited += 1;
            }
        }
    }
    assert_eq!(served + limited, 1000);
    assert_eq!(served, up.times().len());
    assert!(limited > 0 && served > 0);
    // the rate held: rejected requests consumed no quota
    let times = up.times();
    let rate = (times.len() - 1) as f64 / (*times.last().unwrap() - times[0]).as_secs_f64();
    assert!((95.0..=105.0).contains(&rate), "admitted rate {rate}/s");
}

#[tokio::test(start_paused = true)]
async fn wait_past_max_wait_is_rejected_at_once_with_retry_after() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .request_burst(1)
        .max_wait(Duration::from_millis(500))
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    svc.clone().oneshot(chat("m", 1, "a")).await.unwrap();
    let start = Instant::now();
    let err = svc.clone().oneshot(chat("m", 1, "b")).await.unwrap_err();
    let e = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected at once");
    assert_eq!(up.times().len(), 1);
    // after the second, a request passes: the rejection took no quota
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.oneshot(chat("m", 1, "c")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn request_larger_than_the_token_burst_fails_at_once() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(60_000)
        .token_burst(1000)
        .build()
        .unwrap();
    let up = Upstream::ok();
    let err = layer
        .layer(up.clone())
        .oneshot(chat("m", 5000, "a"))
        .await
        .unwrap_err();
    let e = err.downcast_ref::<RequestTooLarge>().expect("typed");
    assert!(e.tokens() > 5000 && e.burst() == 1000);
    assert!(up.times().is_empty());
}

async fn second_admission_gap(actual: Option<u64>) -> Duration {
    admission_gap_after(Upstream::new(move |_| json_usage(actual))).await
}

/// The gap between two token-limited requests, the first answered (and its body read to the
/// end, which settles it) by `up`.
async fn admission_gap_after(up: Upstream) -> Duration {
    // 60 000 tokens/min = 1000/s, burst 1000. Estimate = body/4 + 900.
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(60_000)
        .token_burst(1000)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(up.clone());
    let resp = svc.clone().oneshot(chat("m", 900, "a")).await.unwrap();
    let (_, err) = read_body(resp.into_body()).await; // the end settles
    assert!(err.is_none());
    svc.oneshot(chat("m", 900, "b")).await.unwrap();
    let t = up.times();
    t[1] - t[0]
}

#[tokio::test(start_paused = true)]
async fn tokens_are_settled_against_real_usage() {
    // Real usage 100: 800+ tokens come back, the second request passes almost at once.
    let settled = second_admission_gap(Some(100)).await;
    assert!(settled <= Duration::from_millis(50), "{settled:?}");
    // No usage reported: the estimate stands, the second waits ~0.8 s for tokens.
    let estimated = second_admission_gap(None).await;
    assert!(estimated >= Duration::from_millis(800), "{estimated:?}");
    // More used than estimated: the debt delays the next one further.
    let debt = second_admission_gap(Some(1900)).await;
    assert!(debt >= estimated + Duration::from_millis(900), "{debt:?}");
}

/// A layer below that classifies the same body (the breaker, when audit asks for call facts)
/// shares its summary (core's `SharedOutcome`): the settle reads the usage there instead of
/// parsing the body again. Here the body reports no usage and the shared summary reports 100
/// tokens: settled by the shared one, the second request passes almost at once (by its own
/// parse it would wait ~0.8 s, as in `tokens_are_settled_against_real_usage`).
#[tokio::test(start_paused = true)]
async fn usage_shared_from_below_settles_the_tokens() {
    use tower_deepseek_core::chat::Usage;
    use tower_deepseek_core::classify::{FrameTrace, ResponseSummary, SharedOutcome};

    let gap = admission_gap_after(Upstream::new(|_| {
        let answer = Bytes::from_static(
            br#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}"#,
        );
        // The verdict below is about the very frame the rate limiter sees.
        let mut frames = FrameTrace::new();
        frames.record(&answer);
        let mut resp = http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(answer))
            .unwrap();
        let slot = SharedOutcome::new();
        let mut summary = ResponseSummary::default();
        summary.usage = Some(Usage {
            total_tokens: 100,
            ..Usage::default()
        });
        // Filled before the end reaches the rate limiter, as the breaker does.
        slot.publish(Ok(()), summary, frames);
        resp.extensions_mut().insert(slot);
        resp
    }))
    .await;
    assert!(gap <= Duration::from_millis(50), "{gap:?}");
}

#[tokio::test(start_paused = true)]
async fn streamed_usage_is_settled_too() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(60_000)
        .token_burst(1000)
        .build()
        .unwrap();
    let up = Upstream::new(|_| {
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":5,\"total_tokens\":10}}\n\ndata: [DONE]\n\n",
            )))
            .unwrap()
    });
    let svc = layer.layer(up.clone());
    let resp = svc.clone().oneshot(chat("m", 900, "a")).await.unwrap();
    read_body(resp.into_body()).await;
    svc.oneshot(chat("m", 900, "b")).await.unwrap();
    let t = up.times();
    assert!(t[1] - t[0] <= Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn http_errors_give_the_estimate_back() {
    let layer = RateLimitLayer::builder()
        .tokens_per_minute(60_000)
        .token_burst(1000)
        .build()
        .unwrap();
    let up = Upstream::new(|tag| {
        if tag == "a" {
            http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            json_usage(None)
        }
    });
    let svc = layer.layer(up.clone());
    let r = svc.clone().oneshot(chat("m", 900, "a")).await.unwrap();
    assert_eq!(r.status(), 503);
    svc.oneshot(chat("m", 900, "b")).await.unwrap();
    let t = up.times();
    assert_eq!(t[1] - t[0], Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn keys_are_independent_per_model_and_tenant() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .request_burst(1)
        .key_by(KeyBy::Model)
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    svc.clone().oneshot(chat("a", 1, "a1")).await.unwrap();
    svc.clone().oneshot(chat("b", 1, "b1")).await.unwrap();
    svc.clone().oneshot(chat("a", 1, "a2")).await.unwrap();
    let t = up.times();
    assert_eq!(t[1] - t[0], Duration::ZERO, "another model is not delayed");
    assert_eq!(t[2] - t[0], Duration::from_secs(1));

    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .request_burst(1)
        .key_by(KeyBy::Tenant)
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    for (tenant, tag) in [("t1", "1"), ("t2", "2"), ("t1", "3")] {
        let mut r = chat("m", 1, tag);
        r.extensions_mut().insert(TenantId::new(tenant));
        svc.clone().oneshot(r).await.unwrap();
    }
    let t = up.times();
    assert_eq!(t[1] - t[0], Duration::ZERO);
    assert_eq!(t[2] - t[0], Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_pauses_every_key() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(6000)
        .key_by(KeyBy::Model)
        .build()
        .unwrap();
    let up = Upstream::new(|tag| {
        if tag == "a" {
            http::Response::builder()
                .status(429)
                .header("retry-after", "5")
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            json_usage(None)
        }
    });
    let svc = layer.layer(up.clone());
    let r = svc.clone().oneshot(chat("a", 1, "a")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(layer.pause_handle().remaining(), Duration::from_secs(5));
    svc.oneshot(chat("b", 1, "b")).await.unwrap();
    let t = up.times();
    assert_eq!(
        t[1] - t[0],
        Duration::from_secs(5),
        "another model waited for the pause"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_below_pauses_the_limiter() {
    let limiter = RateLimitLayer::builder()
        .requests_per_minute(6000)
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .rng_seed(1)
        .pause_on_rate_limit(limiter.pause_handle())
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let inner = tower::service_fn(
        move |req: http::Request<ReplayBody<ReplayBody<Full<Bytes>>>>| {
            let tag = req.headers()["x-tag"].to_str().unwrap().to_owned();
            let mut c = c2.lock().unwrap();
            let first_a = tag == "a" && !c.iter().any(|(t, _): &(String, Instant)| t == "a");
            c.push((tag, Instant::now()));
            async move {
                Ok::<_, BoxError>(if first_a {
                    http::Response::builder()
                        .status(429)
                        .header("retry-after", "3")
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                } else {
                    json_usage(None)
                })
            }
        },
    );
    let svc = tower::ServiceBuilder::new()
        .layer(limiter)
        .layer(retry)
        .service(inner);
    let a = tokio::spawn(svc.clone().oneshot(chat("m", 1, "a")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = svc.oneshot(chat("m", 1, "b")).await.unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    let c = calls.lock().unwrap().clone();
    let t0 = c[0].1;
    let b_at = c.iter().find(|(t, _)| t == "b").unwrap().1;
    assert!(
        b_at - t0 >= Duration::from_secs(3),
        "b waited for the pause: {:?}",
        b_at - t0
    );
}

#[tokio::test(start_paused = true)]
async fn no_quota_admits_everything_and_config_is_validated() {
    let up = Upstream::ok();
    let svc = RateLimitLayer::builder().build().unwrap().layer(up.clone());
    for i in 0..100 {
        svc.clone()
            .oneshot(chat("m", 1, &i.to_string()))
            .await
            .unwrap();
    }
    assert_eq!(up.times().len(), 100);
    assert!(
        RateLimitLayer::builder()
            .requests_per_minute(0)
            .build()
            .is_err()
    );
    assert!(
        RateLimitLayer::builder()
            .tokens_per_minute(10)
            .token_burst(0)
            .build()
            .is_err()
    );
    let cfg: tower_deepseek_retry::rate_limit::RateLimitConfig = serde_json::from_str(
        r#"{"requests_per_minute":600,"key_by":"model_and_tenant","max_wait_ms":1000}"#,
    )
    .unwrap();
    assert!(RateLimitLayer::from_config(cfg).is_ok());
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_pruned_and_busy_ones_kept() {
    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .request_burst(1)
        .tokens_per_minute(60_000)
        .key_by(KeyBy::Tenant)
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    // tenant "busy" took 50 000 of its 60 000 tokens/min: its state must survive pruning
    let mut r = chat("m", 50_000, "busy");
    r.extensions_mut().insert(TenantId::new("busy"));
    let resp = svc.clone().oneshot(r).await.unwrap();
    drop(resp);
    tokio::time::advance(Duration::from_millis(100)).await;
    // 3000 one-off tenants: the map is pruned as it grows
    for i in 0..3000 {
        let mut r = chat("m", 1, "x");
        r.extensions_mut().insert(TenantId::new(format!("t{i}")));
        svc.clone().oneshot(r).await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(layer.tracked_keys() < 3000, "{}", layer.tracked_keys());
    // the busy tenant is still limited: its state was kept while its bucket refills, so a
    // second big request would wait ~47 s (> max_wait 30 s) and is refused at once
    let mut r = chat("m", 50_000, "busy2");
    r.extensions_mut().insert(TenantId::new("busy"));
    let err = svc.oneshot(r).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn request_only_quotas_are_pruned_and_a_recent_key_still_waits() {
    // 60 requests per minute, burst 1: a key's state is fresh again 1 s after its last
    // request. No token quota: only the request limiter holds state.
    let layer = RateLimitLayer::builder()
        .requests_per_minute(60)
        .request_burst(1)
        .key_by(KeyBy::Tenant)
        .build()
        .unwrap();
    let up = Upstream::ok();
    let svc = layer.layer(up.clone());
    let as_tenant = |t: String| {
        let mut r = chat("m", 1, "x");
        r.extensions_mut().insert(TenantId::new(t));
        r
    };
    // 3000 one-off tenants 1 ms apart (the map is pruned as it grows), and "busy" every
    // 500 ms, last 500 ms before the end.
    for i in 0..3000 {
        if i % 500 == 0 {
            svc.clone().oneshot(as_tenant("busy".into())).await.unwrap();
        }
        svc.clone()
            .oneshot(as_tenant(format!("t{i}")))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(layer.tracked_keys() < 3000, "{}", layer.tracked_keys());
    // Forgetting "busy" would admit it at once; its quota still needs ~500 ms.
    let start = tokio::time::Instant::now();
    svc.oneshot(as_tenant("busy".into())).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited <= Duration::from_millis(550),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_buffered_by_the_limiter_reaches_every_retry_attempt_uncopied() {
    // Both layers buffer: the limiter to estimate tokens, the retry layer to replay. The
    // request's one `Bytes` goes through both, and through a retry, without a copy.
    let limiter = RateLimitLayer::builder()
        .tokens_per_minute(1_000_000)
        .build()
        .unwrap();
    let retry = RetryLayer::builder().rng_seed(1).build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let inner = tower::service_fn(
        move |req: http::Request<ReplayBody<ReplayBody<Full<Bytes>>>>| {
            let body = req.body();
            assert!(body.is_buffered());
            let ptr = body.buffered_bytes().unwrap().as_ptr() as usize;
            let mut s = s2.lock().unwrap();
            s.push(ptr);
            let first = s.len() == 1;
            async move {
                Ok::<_, BoxError>(if first {
                    http::Response::builder()
                        .status(502)
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                } else {
                    json_usage(None)
                })
            }
        },
    );
    let svc = tower::ServiceBuilder::new()
        .layer(limiter)
        .layer(retry)
        .service(inner);
    let bytes = Bytes::from_static(br#"{"model":"m","max_tokens":1,"messages":[]}"#);
    let ptr = bytes.as_ptr() as usize;
    let req = http::Request::post("http://upstream/chat/completions")
        .body(Full::new(bytes))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![ptr, ptr],
        "one `Bytes`, never copied"
    );
}
