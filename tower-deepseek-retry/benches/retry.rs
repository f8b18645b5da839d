//! Success-path overhead of the retry layer against a bare service, tower's `Retry` and
//! tower-resilience's retry, and the rate limiter's admit path, in the same run.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_retry::RetryLayer;
use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer};

const REQ: &[u8] = br#"{"model":"deepseek-chat","max_tokens":256,"messages":[{"role":"user","content":"Hello there"}]}"#;
const CHAT: &[u8] = br#"{"id":"1","object":"chat.completion","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

fn request() -> Request<Full<Bytes>> {
    let mut r = Request::post("https://api.deepseek.com/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-x")
        .body(Full::new(Bytes::from_static(REQ)))
        .unwrap();
    r.extensions_mut().insert(TenantId::new("t1"));
    r
}

fn response(content_type: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(CHAT)))
        .unwrap()
}

async fn handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(response("application/json"))
}

/// What a real client's response carries: hyper-util's connector puts the connection's
/// addresses (`HttpInfo`) in every response's extensions, so the map is never empty there.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct ConnInfo {
    remote: std::net::SocketAddr,
    local: std::net::SocketAddr,
}

fn with_conn_info(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.extensions_mut().insert(ConnInfo {
        remote: ([10, 0, 0, 1], 443).into(),
        local: ([10, 0, 0, 2], 51234).into(),
    });
    r
}

async fn ext_handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(with_conn_info(response("application/json")))
}

async fn ext_plain_handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(with_conn_info(response("text/plain")))
}

async fn plain_handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(response("text/plain"))
}

/// Calls once and reads the whole response body, as a caller does.
async fn call<S, B>(svc: &mut S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

/// `iters` calls in one runtime entry, timed.
async fn timed<S, B>(iters: u64, svc: &mut S) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    for _ in 0..iters {
        black_box(call(svc).await);
    }
    start.elapsed()
}

#[derive(Clone)]
struct Always;

impl tower::retry::Policy<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError> for Always {
    type Future = std::future::Ready<()>;
    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<Full<Bytes>>, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(r) if !r.status().is_server_error() => None,
            _ => Some(std::future::ready(())),
        }
    }
    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        *r.extensions_mut() = req.extensions().clone();
        Some(r)
    }
}

/// `http::Request` is not `Clone`; tower-resilience needs a cloneable request.
struct CloneReq(Request<Full<Bytes>>);

impl Clone for CloneReq {
    fn clone(&self) -> Self {
        let req = &self.0;
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        *r.extensions_mut() = req.extensions().clone();
        CloneReq(r)
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("retry_success_path");

    let mut bare = tower::service_fn(handler::<Full<Bytes>>);
    g.bench_function("bare_service_fn", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut bare)))
    });

    let mut tower_retry =
        tower::retry::RetryLayer::new(Always).layer(tower::service_fn(handler::<Full<Bytes>>));
    g.bench_function("tower_retry", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut tower_retry)))
    });

    let resilience =
        tower_resilience::retry::RetryLayer::<CloneReq, Response<Full<Bytes>>, BoxError>::builder()
            .max_attempts(3)
            .fixed_backoff(Duration::from_millis(1))
            .build();
    let mut resilience = resilience.layer(tower::service_fn(|r: CloneReq| handler(r.0)));
    g.bench_function("tower_resilience_retry", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let resp = resilience
                        .ready()
                        .await
                        .unwrap()
                        .call(CloneReq(request()))
                        .await
                        .unwrap();
                    black_box(resp.into_body().collect().await.unwrap().to_bytes().len());
                }
                start.elapsed()
            })
        })
    });

    let mut ours = RetryLayer::new().layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>));
    g.bench_function("deepseek_retry_json_chat", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut ours)))
    });

    let mut ours_plain =
        RetryLayer::new().layer(tower::service_fn(plain_handler::<ReplayBody<Full<Bytes>>>));
    g.bench_function("deepseek_retry_non_chat", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut ours_plain)))
    });
    // Without the replay offered to an OAuth2 layer below (one request extension per attempt).
    let mut ours_plain_no_offer = RetryLayer::builder()
        .credential_replay(false)
        .build()
        .unwrap()
        .layer(tower::service_fn(plain_handler::<ReplayBody<Full<Bytes>>>));
    g.bench_function("deepseek_retry_non_chat_no_credential_replay", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut ours_plain_no_offer)))
    });
    // What the shared classifier alone costs on that 2xx chat JSON (part of both lines above).
    let classifier = tower_deepseek_core::classify::Classifier::new();
    let resp = response("application/json");
    g.bench_function("core_classify_json_chat_only", |b| {
        b.iter(
            || match classifier.classify_head(resp.status(), resp.headers()) {
                tower_deepseek_core::classify::ClassifiedResponse::RequiresEos(mut eos) => {
                    eos.on_data(&Bytes::from_static(CHAT));
                    black_box(eos.finish().is_ok())
                }
                _ => unreachable!(),
            },
        )
    });
    g.finish();

    let mut g = c.benchmark_group("rate_limit_admit");
    let mut bare = tower::service_fn(handler::<Full<Bytes>>);
    g.bench_function("bare_service_fn", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut bare)))
    });
    let mut tenant = RateLimitLayer::builder()
        .requests_per_minute(u32::MAX / 2)
        .request_burst(u32::MAX / 2)
        .key_by(KeyBy::Tenant)
        .build()
        .unwrap()
        .layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>));
    g.bench_function("keyed_rpm_per_tenant", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut tenant)))
    });
    let mut model = RateLimitLayer::builder()
        .requests_per_minute(u32::MAX / 2)
        .request_burst(u32::MAX / 2)
        .tokens_per_minute(u64::MAX / 4_000_000_000)
        .key_by(KeyBy::Model)
        .build()
        .unwrap()
        .layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>));
    g.bench_function("keyed_rpm_tpm_per_model_settled", |b| {
        b.iter_custom(|iters| rt.block_on(timed(iters, &mut model)))
    });
    // The same quota shared through Redis on loopback (`REDIS_URL`, default
    // 127.0.0.1:6379): one script round trip to admit, one in the background to settle.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let fleet = tower_deepseek_retry::fleet::Fleet::builder()
        .redis_url(url)
        .key_prefix(format!("tdr-bench:{}", std::process::id()))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut shared = RateLimitLayer::builder()
        .requests_per_minute(u32::MAX / 2)
        .request_burst(u32::MAX / 2)
        .tokens_per_minute(u64::MAX / 4_000_000_000)
        .key_by(KeyBy::Model)
        .fleet(fleet.clone())
        .build()
        .unwrap()
        .layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>));
    rt.block_on(timed(1, &mut shared));
    if fleet.is_up() {
        g.bench_function("fleet_redis_rpm_tpm_per_model_settled", |b| {
            b.iter_custom(|iters| rt.block_on(timed(iters, &mut shared)))
        });
    } else {
        eprintln!("notice: no Redis; the fleet variant is not measured");
    }
    g.finish();
}

/// Runs `iters` calls through tower-resilience's retry (its request type differs).
async fn timed_resilience<S>(iters: u64, svc: &mut S) -> Duration
where
    S: Service<CloneReq, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    for _ in 0..iters {
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(CloneReq(request()))
            .await
            .unwrap();
        black_box(resp.into_body().collect().await.unwrap().to_bytes().len());
    }
    start.elapsed()
}

/// The machine is shared and loaded: besides criterion's figures, run every variant in
/// interleaved rounds (A B C ... A B C ...) and keep each one's best round, which is the
/// figure least disturbed by other processes. Printed to stderr.
///
/// Two groups, each against its own bare baseline: responses with an empty extension map (as
/// a `service_fn` makes them: the first extension inserted allocates the map), and responses
/// that already carry one (as hyper-util's client makes them).
fn interleaved(_c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let rt = &rt;
    const N: u64 = 2000;
    type Run<'a> = (&'static str, Box<dyn FnMut() -> Duration + 'a>);
    macro_rules! run {
        ($name:expr, $svc:expr) => {{
            let mut svc = $svc;
            (
                $name,
                Box::new(move || rt.block_on(timed(N, &mut svc))) as Box<dyn FnMut() -> Duration>,
            )
        }};
    }
    let resilience = || {
        tower_resilience::retry::RetryLayer::<CloneReq, Response<Full<Bytes>>, BoxError>::builder()
            .max_attempts(3)
            .fixed_backoff(Duration::from_millis(1))
            .build()
    };
    let mut res_plain = resilience().layer(tower::service_fn(|r: CloneReq| handler(r.0)));
    let mut res_ext = resilience().layer(tower::service_fn(|r: CloneReq| ext_handler(r.0)));
    let mut runs: Vec<Run<'_>> = vec![
        run!("bare_service_fn", tower::service_fn(handler::<Full<Bytes>>)),
        run!(
            "tower_retry",
            tower::retry::RetryLayer::new(Always).layer(tower::service_fn(handler::<Full<Bytes>>))
        ),
        (
            "tower_resilience_retry",
            Box::new(move || rt.block_on(timed_resilience(N, &mut res_plain))),
        ),
        run!(
            "deepseek_retry_json_chat",
            RetryLayer::new().layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "deepseek_retry_non_chat",
            RetryLayer::new().layer(tower::service_fn(plain_handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "deepseek_retry_non_chat_no_budget",
            RetryLayer::builder()
                .no_budget()
                .build()
                .unwrap()
                .layer(tower::service_fn(plain_handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "deepseek_retry_non_chat_no_credential_replay",
            RetryLayer::builder()
                .credential_replay(false)
                .build()
                .unwrap()
                .layer(tower::service_fn(plain_handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "rate_limit_keyed_rpm_per_tenant",
            RateLimitLayer::builder()
                .requests_per_minute(u32::MAX / 2)
                .request_burst(u32::MAX / 2)
                .key_by(KeyBy::Tenant)
                .build()
                .unwrap()
                .layer(tower::service_fn(handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "ext/bare_service_fn",
            tower::service_fn(ext_handler::<Full<Bytes>>)
        ),
        run!(
            "ext/tower_retry",
            tower::retry::RetryLayer::new(Always)
                .layer(tower::service_fn(ext_handler::<Full<Bytes>>))
        ),
        (
            "ext/tower_resilience_retry",
            Box::new(move || rt.block_on(timed_resilience(N, &mut res_ext))),
        ),
        run!(
            "ext/deepseek_retry_json_chat",
            RetryLayer::new().layer(tower::service_fn(ext_handler::<ReplayBody<Full<Bytes>>>))
        ),
        run!(
            "ext/deepseek_retry_non_chat",
            RetryLayer::new().layer(tower::service_fn(
                ext_plain_handler::<ReplayBody<Full<Bytes>>>
            ))
        ),
    ];
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut best = vec![f64::MAX; runs.len()];
    for _ in 0..rounds {
        for (b, (_, run)) in best.iter_mut().zip(runs.iter_mut()) {
            *b = b.min(run().as_nanos() as f64 / N as f64);
        }
    }
    eprintln!(
        "interleaved best-of-{rounds} rounds (ns per call; overhead over the bare service_fn of its group):"
    );
    let mut base = 0.0;
    for ((name, _), b) in runs.iter().zip(&best) {
        if name.ends_with("bare_service_fn") {
            base = *b;
        }
        eprintln!("  {name:36} {b:8.0} ns  (+{:.0} ns)", b - base);
    }
}

criterion_group!(group, benches, interleaved);
criterion_main!(group);
