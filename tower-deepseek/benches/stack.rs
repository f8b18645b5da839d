//! The cost of composing the recommended stack: [`RecommendedStack`] (one boxed service per
//! stage, one `StackBody` between stages) against the same layers joined by the gateway's
//! first type erasure (an `Arc<dyn Fn>`, a boxed future and an `axum::body::Body` per stage and
//! request), and against no layers at all. Every layer on, around an in-process upstream that
//! answers a fixed JSON chat completion at once, so that only the stack is measured; then each
//! layer alone (`stack_one_layer`), for what each one costs.
//!
//! `cargo bench -p tower-deepseek --bench stack`

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::auth::BearerAuthLayer;
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::core::body::BufferedBody;
use tower_deepseek::core::body::ReplayBody;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::redact::audit::{AuditLayer, AuditRequestBody, WriterSink};
use tower_deepseek::retry::RetryLayer;
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::stack::RecommendedStack;

const ANSWER: &[u8] = br#"{"id":"x","object":"chat.completion","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Echo: Hello, how are you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":8,"total_tokens":15}}"#;
const PROMPT: &[u8] = br#"{"model":"deepseek-chat","temperature":1,"messages":[{"role":"user","content":"Hello, how are you today?"}]}"#;

/// The upstream: any request body, a fixed answer.
#[derive(Clone, Copy)]
struct Upstream;

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(res))
    }
}

struct Layers {
    audit: AuditLayer,
    redact: RedactLayer,
    cache: CacheLayer,
    rate_limit: RateLimitLayer,
    retry: RetryLayer,
    breaker: CircuitBreakerLayer,
    auth: BearerAuthLayer,
    timeout: TimeoutLayer,
}

fn layers() -> Layers {
    Layers {
        audit: AuditLayer::builder()
            .hmac_key(b"bench-audit-key-0123456789".to_vec())
            .sink(WriterSink::new(io::sink()))
            .build()
            .unwrap(),
        redact: RedactLayer::new(),
        cache: CacheLayer::new(),
        rate_limit: RateLimitLayer::builder()
            .requests_per_minute(1_000_000_000)
            .build()
            .unwrap(),
        retry: RetryLayer::builder().build().unwrap(),
        breaker: CircuitBreakerLayer::builder()
            .name("bench")
            .build()
            .unwrap(),
        auth: BearerAuthLayer::new("sk-bench").unwrap(),
        timeout: TimeoutLayer::builder().build().unwrap(),
    }
}

// ---- the erased composition (the gateway's former `Svc`) ----

type SvcFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

#[derive(Clone)]
struct Svc(Arc<dyn Fn(Request<Body>) -> SvcFuture + Send + Sync>);

impl Service<Request<Body>> for Svc {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = SvcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> SvcFuture {
        (self.0)(req)
    }
}

fn boxed<S, B>(svc: S) -> Svc
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Svc(Arc::new(move |req: Request<Body>| -> SvcFuture {
        let fut = svc.clone().oneshot(req);
        Box::pin(async move {
            fut.await
                .map(|res: Response<B>| res.map(Body::new))
                .map_err(Into::into)
        })
    }))
}

/// `inner` taking requests with body `B`.
struct Adapt<B>(Svc, std::marker::PhantomData<fn(B)>);

impl<B> Clone for Adapt<B> {
    fn clone(&self) -> Self {
        Adapt(self.0.clone(), std::marker::PhantomData)
    }
}

impl<B> Service<Request<B>> for Adapt<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = SvcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> SvcFuture {
        self.0.call(req.map(Body::new))
    }
}

fn adapt<B>(svc: Svc) -> Adapt<B> {
    Adapt(svc, std::marker::PhantomData)
}

fn erased(l: &Layers) -> Svc {
    let svc = boxed(Upstream);
    let svc = boxed(l.timeout.layer(svc));
    let svc = boxed(l.auth.layer(svc));
    let svc = boxed(l.breaker.layer(svc));
    let svc = boxed(l.retry.layer(adapt::<ReplayBody<Body>>(svc)));
    let svc = boxed(l.rate_limit.layer(adapt::<ReplayBody<Body>>(svc)));
    let svc = boxed(l.cache.layer(adapt::<BufferedBody>(svc)));
    let svc = boxed(l.redact.layer(adapt::<BufferedBody>(svc)));
    boxed(l.audit.layer(adapt::<AuditRequestBody<Body>>(svc)))
}

fn request() -> Request<Body> {
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(Bytes::from_static(PROMPT)))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("stack_all_layers");

    group.bench_function("no_layers", |b| {
        b.to_async(&rt).iter(|| async {
            let res = Upstream.oneshot(request()).await.unwrap();
            Body::new(res.into_body()).collect().await.unwrap()
        })
    });

    let erased = erased(&layers());
    group.bench_function("erased_per_stage", |b| {
        b.to_async(&rt).iter(|| async {
            let res = erased.clone().oneshot(request()).await.unwrap();
            res.into_body().collect().await.unwrap()
        })
    });

    let l = layers();
    let stack = RecommendedStack::builder()
        .audit(l.audit)
        .redact(l.redact)
        .cache(l.cache)
        .rate_limit(l.rate_limit)
        .retry(l.retry)
        .circuit_breaker(l.breaker)
        .bearer_auth(l.auth)
        .timeout(l.timeout)
        .build()
        .unwrap();
    let fixed = stack.layer(Upstream);
    group.bench_function("recommended_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let res = fixed.clone().oneshot(request()).await.unwrap();
            // Boxed once at the top, as a server does.
            Body::new(res.into_body()).collect().await.unwrap()
        })
    });
    group.finish();

    // What each layer costs alone: the same stack with one layer on.
    let mut group = c.benchmark_group("stack_one_layer");
    type Pick =
        fn(tower_deepseek::stack::StackBuilder, Layers) -> tower_deepseek::stack::StackBuilder;
    let picks: [(&str, Pick); 9] = [
        ("none", |b, _| b),
        ("audit", |b, l| b.audit(l.audit)),
        ("redact", |b, l| b.redact(l.redact)),
        ("cache", |b, l| b.cache(l.cache)),
        ("rate_limit", |b, l| b.rate_limit(l.rate_limit)),
        ("retry", |b, l| b.retry(l.retry)),
        ("circuit_breaker", |b, l| b.circuit_breaker(l.breaker)),
        ("bearer_auth", |b, l| b.bearer_auth(l.auth)),
        ("timeout", |b, l| b.timeout(l.timeout)),
    ];
    for (name, pick) in picks {
        let stack = pick(RecommendedStack::builder(), layers()).build().unwrap();
        let svc = stack.layer(Upstream);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let res = svc.clone().oneshot(request()).await.unwrap();
                Body::new(res.into_body()).collect().await.unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
