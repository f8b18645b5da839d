//! Our layers against their tower-resilience twins (issue 17), in one run, on the same fixtures
//! (testkit's 2 KB chat request and 2 KB JSON answer) and the same drive loop for every
//! variant: `ready`, `call`, read the whole answer. Each group has a bare service (the same
//! inner service, no layer) and, where our layer must do work the peer does not, the floor of
//! that work measured alone:
//!
//! | group | ours | peer | floor |
//! |---|---|---|---|
//! | `peer_retry_2k` | `RetryLayer`, success | tower-resilience retry | bare + the light end-of-body check of the answer |
//! | `peer_breaker_2k` | `CircuitBreakerLayer`, closed | tower-resilience breaker | the same |
//! | `peer_cache_hit_2k` | `CacheLayer`, L1 hit | tower-resilience cache hit | |
//! | `peer_cache_miss_2k` | `CacheLayer`, miss (a new request each call) | tower-resilience cache miss | bare + the canonical key of the request |
//! | `peer_stack_miss_2k` | cache → retry → breaker, miss | tower-resilience, same shape | bare + canonical key + end check |
//!
//! ```text
//! cargo bench -p tower-deepseek --bench peers -- --warm-up-time 1 --measurement-time 3
//! PEERS_DRIVE=peer_retry_2k/ours PEERS_ITERS=2000 <peers bench binary>   # one variant only, for callgrind
//! ```
//!
//! The tower-resilience twins get what they need to work at all: a cloneable request (retry,
//! cache) and a cloneable response (cache), by copying the head and sharing the body bytes; the
//! peer cache keys a request by the SHA-256 of its raw body.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::{CacheKey, CacheLayer, Scope};
use tower_deepseek::core::classify::{ClassifiedResponse, Classifier};
use tower_deepseek::retry::RetryLayer;
use tower_deepseek_testkit::fixture::{answer_2k, chat_request_2k};

const PATH: &str = "https://api.deepseek.com/chat/completions";

fn answer_response(answer: &Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(answer.clone()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The inner service of our layers (and the bare baseline): any request, the 2 KB answer.
#[derive(Clone)]
struct Upstream(Bytes);

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        std::future::ready(Ok(answer_response(&self.0)))
    }
}

/// A request tower-resilience can clone (`http::Request` is not `Clone`).
struct PeerReq(Request<Bytes>);

impl Clone for PeerReq {
    fn clone(&self) -> Self {
        let mut r = Request::new(self.0.body().clone());
        *r.method_mut() = self.0.method().clone();
        *r.uri_mut() = self.0.uri().clone();
        *r.headers_mut() = self.0.headers().clone();
        PeerReq(r)
    }
}

/// A response tower-resilience's cache can clone.
struct PeerResp(Response<Full<Bytes>>, Bytes);

impl Clone for PeerResp {
    fn clone(&self) -> Self {
        let mut r = Response::new(Full::new(self.1.clone()));
        *r.status_mut() = self.0.status();
        *r.headers_mut() = self.0.headers().clone();
        PeerResp(r, self.1.clone())
    }
}

/// The peers' inner service: the same answer, in the types they need.
fn peer_upstream(
    answer: Bytes,
) -> impl Service<PeerReq, Response = PeerResp, Error = BoxError, Future = impl Send> + Clone {
    tower::service_fn(move |_r: PeerReq| {
        let a = answer.clone();
        async move { Ok::<_, BoxError>(PeerResp(answer_response(&a), a)) }
    })
}

/// A response as the floor variants read it: the bare answer, judged at its end by core's
/// classifier (verdict only, as retry and breaker ask for it).
struct Judged(Response<Full<Bytes>>);

/// Reading the whole answer, whatever its type.
trait Answer {
    fn read(self) -> impl std::future::Future<Output = usize>;
}

impl<B> Answer for Response<B>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    async fn read(self) -> usize {
        self.into_body().collect().await.unwrap().to_bytes().len()
    }
}

impl Answer for PeerResp {
    async fn read(self) -> usize {
        self.0.read().await
    }
}

thread_local! {
    static LEAN: Classifier = const { Classifier::new().summary(false) };
}

impl Answer for Judged {
    async fn read(self) -> usize {
        let (parts, body) = self.0.into_parts();
        let ClassifiedResponse::RequiresEos(mut eos) =
            LEAN.with(|c| c.classify_head(parts.status, &parts.headers))
        else {
            unreachable!("a 2xx JSON answer is judged at its end")
        };
        let mut body = body;
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                eos.on_data(&data);
                n += data.len();
            }
        }
        assert!(eos.finish().is_ok());
        n
    }
}

/// The drive loop of every variant: `ready`, `call` with the `i`-th request, read the answer.
async fn drive<S, Rq>(svc: &mut S, iters: u64, req: &impl Fn(u64) -> Rq) -> Duration
where
    S: Service<Rq>,
    S::Response: Answer,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let resp = svc.ready().await.unwrap().call(req(i)).await.unwrap();
        black_box(resp.read().await);
    }
    start.elapsed()
}

/// The 2 KB request, the same for every call (`i` ignored), or a new one per call (its user
/// text starts with the call's number: every call a miss).
#[derive(Clone)]
struct Requests {
    body: Bytes,
    /// Where the user turn's text starts.
    at: usize,
}

impl Requests {
    fn new() -> Self {
        let body = chat_request_2k();
        // The last text field is the user turn's, long enough to number.
        let marker = br#""content":""#;
        let at = body
            .windows(marker.len())
            .rposition(|w| w == marker)
            .expect("a user turn")
            + marker.len();
        Requests { body, at }
    }

    fn body(&self, i: Option<u64>) -> Bytes {
        match i {
            None => self.body.clone(),
            Some(i) => {
                let mut b = self.body.to_vec();
                b[self.at..self.at + 20].copy_from_slice(format!("{i:020}").as_bytes());
                Bytes::from(b)
            }
        }
    }

    fn ours(&self, i: Option<u64>) -> Request<Full<Bytes>> {
        Request::post(PATH)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body(i)))
            .unwrap()
    }

    fn peer(&self, i: Option<u64>) -> PeerReq {
        PeerReq(
            Request::post(PATH)
                .header(header::CONTENT_TYPE, "application/json")
                .body(self.body(i))
                .unwrap(),
        )
    }
}

type Run<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Every variant: (group, name, run `iters` calls and time them).
fn variants(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, &'static str, Run<'_>)> {
    let answer = answer_2k();
    let reqs = Requests::new();
    let mut v: Vec<(&'static str, &'static str, Run<'_>)> = Vec::new();
    macro_rules! add {
        ($group:expr, $name:expr, $svc:expr, $req:expr) => {{
            let mut svc = $svc;
            let req = $req;
            v.push((
                $group,
                $name,
                Box::new(move |iters| rt.block_on(drive(&mut svc, iters, &req))),
            ));
        }};
    }
    let up = Upstream(answer.clone());
    let same = {
        let r = reqs.clone();
        move |_| r.ours(None)
    };
    let same_peer = {
        let r = reqs.clone();
        move |_| r.peer(None)
    };
    // A new request per call, numbered across batches (criterion calls a variant many times).
    let fresh = {
        let r = reqs.clone();
        let n = std::sync::Arc::new(AtomicU64::new(0));
        move |_| r.ours(Some(n.fetch_add(1, Ordering::Relaxed)))
    };
    let fresh_peer = {
        let r = reqs.clone();
        let n = std::sync::Arc::new(AtomicU64::new(0));
        move |_| r.peer(Some(n.fetch_add(1, Ordering::Relaxed)))
    };
    let judged = {
        let a = answer.clone();
        tower::service_fn(move |_r: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, Infallible>(Judged(answer_response(&a))))
        })
    };
    // The canonical key a miss must compute, then the judged answer.
    let keyed_judged = {
        let a = answer.clone();
        tower::service_fn(move |r: Request<Full<Bytes>>| {
            let a = a.clone();
            async move {
                let body = r.into_body().collect().await.unwrap().to_bytes();
                let key = CacheKey::from_json(
                    &http::Method::POST,
                    "/chat/completions",
                    Scope::Anonymous,
                    &body,
                )
                .unwrap();
                black_box(key);
                Ok::<_, Infallible>(Judged(answer_response(&a)))
            }
        })
    };
    let keyed = {
        let a = answer.clone();
        tower::service_fn(move |r: Request<Full<Bytes>>| {
            let a = a.clone();
            async move {
                let body = r.into_body().collect().await.unwrap().to_bytes();
                let key = CacheKey::from_json(
                    &http::Method::POST,
                    "/chat/completions",
                    Scope::Anonymous,
                    &body,
                )
                .unwrap();
                black_box(key);
                Ok::<_, Infallible>(answer_response(&a))
            }
        })
    };
    let peer_retry = || {
        tower_resilience::retry::RetryLayer::<PeerReq, PeerResp, BoxError>::builder()
            .max_attempts(3)
            .fixed_backoff(Duration::from_millis(1))
            .build()
    };
    let peer_breaker = || {
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(100)
            .build()
            .unwrap()
    };
    let peer_cache = || {
        tower_resilience::cache::CacheLayer::builder()
            .max_size(10_000)
            .ttl(Duration::from_secs(300))
            .key_extractor(|r: &PeerReq| -> [u8; 32] { Sha256::digest(r.0.body()).into() })
            .build()
            .unwrap()
    };

    let g = "peer_retry_2k";
    add!(g, "bare", up.clone(), same.clone());
    add!(g, "floor_end_check", judged.clone(), same.clone());
    add!(g, "ours", RetryLayer::new().layer(up.clone()), same.clone());
    add!(
        g,
        "tower_resilience",
        peer_retry().layer(peer_upstream(answer.clone())),
        same_peer.clone()
    );

    let g = "peer_breaker_2k";
    add!(g, "bare", up.clone(), same.clone());
    add!(g, "floor_end_check", judged.clone(), same.clone());
    add!(
        g,
        "ours",
        CircuitBreakerLayer::new().layer(up.clone()),
        same.clone()
    );
    add!(
        g,
        "tower_resilience",
        peer_breaker().layer(up.clone()),
        same.clone()
    );

    let g = "peer_cache_hit_2k";
    add!(g, "bare", up.clone(), same.clone());
    add!(g, "ours", CacheLayer::new().layer(up.clone()), same.clone());
    add!(
        g,
        "tower_resilience",
        peer_cache().layer(peer_upstream(answer.clone())),
        same_peer.clone()
    );

    let g = "peer_cache_miss_2k";
    add!(g, "bare", up.clone(), fresh.clone());
    add!(g, "floor_canonical_key", keyed.clone(), fresh.clone());
    add!(
        g,
        "ours",
        CacheLayer::new().layer(up.clone()),
        fresh.clone()
    );
    add!(
        g,
        "tower_resilience",
        peer_cache().layer(peer_upstream(answer.clone())),
        fresh_peer.clone()
    );

    let g = "peer_stack_miss_2k";
    add!(g, "bare", up.clone(), fresh.clone());
    add!(g, "floor_key_and_end_check", keyed_judged, fresh.clone());
    add!(
        g,
        "ours",
        CacheLayer::new()
            .layer(RetryLayer::new().layer(CircuitBreakerLayer::new().layer(up.clone()))),
        fresh.clone()
    );
    add!(
        g,
        "tower_resilience",
        peer_cache().layer(
            peer_retry().layer(
                peer_breaker()
                    .layer(peer_upstream(answer.clone()))
                    // Its error type, as the retry layer above takes it (never called here).
                    .map_err(|e| -> BoxError { format!("{e:?}").into() })
            )
        ),
        fresh_peer.clone()
    );
    v
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn peers(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut variants = variants(&rt);
    let mut groups: Vec<&'static str> = variants.iter().map(|v| v.0).collect();
    groups.dedup();
    for group in groups {
        let mut g = c.benchmark_group(group);
        for (_, name, run) in variants.iter_mut().filter(|v| v.0 == group) {
            g.bench_function(*name, |b| b.iter_custom(&mut *run));
        }
        g.finish();
    }
}

criterion_group!(benches, peers);

/// `PEERS_DRIVE=<group>/<variant> PEERS_ITERS=<n>`: only `n` calls of that variant, after
/// as many to warm it (caches filled, breaker windows full), for callgrind (run with `n` and
/// 0, subtract).
fn main() {
    if let Ok(which) = std::env::var("PEERS_DRIVE") {
        let iters: u64 = std::env::var("PEERS_ITERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        let rt = runtime();
        let _guard = rt.enter();
        let mut variants = variants(&rt);
        let (_, _, run) = variants
            .iter_mut()
            .find(|(g, n, _)| format!("{g}/{n}") == which)
            .expect("a known <group>/<variant>");
        run(1000);
        black_box(run(iters));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
