//! Fleet limits on a real Redis (`REDIS_URL`, default 127.0.0.1:6379; a Redis Cluster at
//! `REDIS_CLUSTER_URLS` for the cluster variant): two layer instances, each with its own
//! connection (two gateway processes), share one quota. Without Redis these tests print a
//! notice and pass, unless `CI=true`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use redis::AsyncCommands;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer;
use tower_deepseek_retry::fleet::Fleet;
use tower_deepseek_retry::rate_limit::{RateLimitLayer, RateLimited};
use tower_deepseek_testkit::RedisServer;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn cluster_urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_owned()
        })
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

fn skip_or_panic(what: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no {what} and CI=true");
    }
    eprintln!("notice: no {what}; fleet test skipped");
}

/// A connection of the test's own to look at the keys, or `None` (skipped) without Redis.
async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let conn = async {
        let c = redis::Client::open(redis_url()).ok()?;
        let mut c = c.get_multiplexed_async_connection().await.ok()?;
        let _: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
        Some(c)
    };
    match tokio::time::timeout(Duration::from_secs(3), conn).await {
        Ok(Some(c)) => Some(c),
        _ => {
            skip_or_panic(&format!("Redis at {}", redis_url()));
            None
        }
    }
}

fn unique_prefix(test: &str) -> String {
    format!(
        "tdr-test:{test}:{}:{:x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// One "process": its own fleet handle (its own connection). A generous timeout so that a
/// loaded test machine does not fall back by accident.
fn fleet(prefix: &str) -> Fleet {
    Fleet::builder()
        .redis_url(redis_url())
        .key_prefix(prefix)
        .timeout(Duration::from_millis(1_000))
        .build()
        .unwrap()
}

type Req = http::Request<ReplayBody<Full<Bytes>>>;
type Resp = http::Response<Full<Bytes>>;

/// Counts the calls it answers; answers with `usage.total_tokens = usage` (JSON and SSE in
/// turn) when set.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
    usage: Option<u64>,
}

impl Service<Req> for Counting {
    type Response = Resp;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Resp, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Req) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let resp = match self.usage {
            None => json(r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}"#.to_owned()),
            Some(t) if n % 2 == 0 => json(format!(
                r#"{{"choices":[{{"message":{{"content":"x"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":{},"total_tokens":{t}}}}}"#,
                t - 1
            )),
            Some(t) => http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"content\":\"x\"}},\"finish_reason\":null}}]}}\n\n\
                     data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
                     data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{},\"total_tokens\":{t}}}}}\n\n\
                     data: [DONE]\n\n",
                    t - 1
                ))))
                .unwrap(),
        };
        std::future::ready(Ok(resp))
    }
}

fn json(body: String) -> Resp {
    http::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn chat(max_tokens: u64) -> http::Request<Full<Bytes>> {
    http::Request::post("http://upstream/chat/completions")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"deepseek-chat","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))))
        .unwrap()
}

/// `tasks` callers per instance send requests without pause until `run` has passed; a
/// refused request is tried again after its `retry_after` (at most 20 ms). Returns how many
/// were admitted (answered by the upstream) and how long it ran.
async fn overload(
    layers: Vec<RateLimitLayer>,
    upstream: Counting,
    tasks: usize,
    run: Duration,
    max_tokens: u64,
) -> usize {
    let end = tokio::time::Instant::now() + run;
    let mut handles = Vec::new();
    for layer in layers {
        for _ in 0..tasks {
            let svc = layer.clone().layer(upstream.clone());
            handles.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    match svc.clone().oneshot(chat(max_tokens)).await {
                        Ok(resp) => {
                            let _ = resp.into_body().collect().await.unwrap();
                        }
                        Err(e) => {
                            let wait = e
                                .downcast_ref::<RateLimited>()
                                .unwrap_or_else(|| panic!("unexpected error: {e}"))
                                .retry_after()
                                .unwrap_or_default()
                                .min(Duration::from_millis(20));
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    upstream.calls.load(Ordering::SeqCst)
}

fn assert_within_5_percent(got: usize, expected: usize, what: &str) {
    eprintln!("{what}: admitted {got}, expected {expected}");
    let (lo, hi) = (expected as f64 * 0.95, expected as f64 * 1.05);
    assert!(
        (lo..=hi).contains(&(got as f64)),
        "{what}: admitted {got}, expected {expected} ± 5 % ({lo:.0}..={hi:.0})"
    );
}

fn request_limiter(f: Fleet) -> RateLimitLayer {
    RateLimitLayer::builder()
        .requests_per_minute(200)
        .request_burst(10)
        .window(Duration::from_secs(2))
        .max_wait(Duration::from_millis(20))
        .fleet(f)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_request_quota() {
    let Some(mut conn) = redis().await else {
        return;
    };
    let prefix = unique_prefix("rpm");
    let a = request_limiter(fleet(&prefix));
    let b = request_limiter(fleet(&prefix));
    // 200 per 2 s and a burst of 10, overloaded by 2 × 6 callers for one window: 210 together
    // (each alone would admit as many: 420 without the shared quota).
    let admitted = overload(
        vec![a, b],
        Counting::default(),
        6,
        Duration::from_secs(2),
        10,
    )
    .await;
    assert_within_5_percent(admitted, 210, "requests");
    let keys: Vec<String> = conn.keys(format!("{{{prefix}:*")).await.unwrap();
    assert!(!keys.is_empty(), "the quota lives in Redis");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{{{prefix}:rl:"))),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_token_quota_settled_from_usage() {
    let Some(_conn) = redis().await else { return };
    let prefix = unique_prefix("tpm");
    let limiter = |f| {
        RateLimitLayer::builder()
            .tokens_per_minute(20_000)
            .token_burst(1_000)
            .window(Duration::from_secs(2))
            .max_wait(Duration::from_millis(20))
            .fleet(f)
            .build()
            .unwrap()
    };
    // Estimated at about 40 tokens (body / 4 + max_tokens 20); each answer reports 100: the
    // settlement charges the difference, so 21 000 tokens admit 210 calls (525 on estimates).
    let upstream = Counting {
        usage: Some(100),
        ..Counting::default()
    };
    let admitted = overload(
        vec![limiter(fleet(&prefix)), limiter(fleet(&prefix))],
        upstream,
        6,
        Duration::from_secs(2),
        20,
    )
    .await;
    assert_within_5_percent(admitted, 210, "tokens");
}

/// Counts calls in flight (and the most ever seen); each call takes `hold`, or never ends
/// when `hold` is `None`.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    hold: Option<Duration>,
}

impl Service<http::Request<Full<Bytes>>> for Gauge {
    type Response = Resp;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Resp, BoxError>> + Send>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: http::Request<Full<Bytes>>) -> Self::Future {
        let g = self.clone();
        Box::pin(async move {
            g.calls.fetch_add(1, Ordering::SeqCst);
            let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
            g.peak.fetch_max(n, Ordering::SeqCst);
            match g.hold {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            g.now.fetch_sub(1, Ordering::SeqCst);
            Ok(json("{}".to_owned()))
        })
    }
}

fn cap(f: Fleet, c: u32, ttl: Duration) -> AdaptiveConcurrencyLayer {
    AdaptiveConcurrencyLayer::builder()
        .initial(c)
        .max(c)
        .min(1)
        .account("acct-1")
        .lease_ttl(ttl)
        .fleet(f)
        .build()
        .unwrap()
}

async fn hammer(
    layers: Vec<AdaptiveConcurrencyLayer>,
    upstream: Gauge,
    tasks: usize,
    calls: usize,
) {
    let mut handles = Vec::new();
    for layer in layers {
        for _ in 0..tasks {
            let svc = layer.clone().layer(upstream.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..calls {
                    let resp = svc
                        .clone()
                        .oneshot(http::Request::new(Full::new(Bytes::new())))
                        .await
                        .unwrap();
                    let _ = resp.into_body().collect().await;
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_concurrency_cap_is_never_exceeded() {
    let Some(mut conn) = redis().await else {
        return;
    };
    let prefix = unique_prefix("cap");
    let upstream = Gauge {
        hold: Some(Duration::from_millis(20)),
        ..Gauge::default()
    };
    let (a, b) = (
        cap(fleet(&prefix), 4, Duration::from_secs(5)),
        cap(fleet(&prefix), 4, Duration::from_secs(5)),
    );
    hammer(vec![a.clone(), b.clone()], upstream.clone(), 6, 5).await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 60);
    let peak = upstream.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 4,
        "{peak} calls in flight at once, over the fleet's cap of 4"
    );
    assert!(peak >= 3, "the cap was not used: at most {peak} at once");
    assert_eq!(a.in_flight() + b.in_flight(), 0);
    // Every lease was given back (in the background, just after each body's end).
    let key = format!("{{{prefix}:cc:{}}}:leases", Fleet::digest("acct-1"));
    for _ in 0..100 {
        let n: usize = conn.zcard(&key).await.unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("leases left in Redis after every call ended");
}

#[test]
fn leases_of_an_instance_that_died_come_back_after_their_ttl() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(mut conn) = rt.block_on(redis()) else {
        return;
    };
    let prefix = unique_prefix("dead");
    let ttl = Duration::from_millis(900);
    let key = format!("{{{prefix}:cc:{}}}:leases", Fleet::digest("acct-1"));
    let zcard = |conn: &mut redis::aio::MultiplexedConnection| -> usize {
        rt.block_on(conn.zcard::<_, usize>(&key)).unwrap()
    };

    // Instance A, in a runtime of its own: two calls that never end hold the whole cap.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let a = doomed.block_on(async { cap(fleet(&prefix), 2, ttl) });
    let stuck = Gauge::default(); // never answers
    for _ in 0..2 {
        let svc = a.clone().layer(stuck.clone());
        doomed.spawn(async move {
            let _ = svc
                .oneshot(http::Request::new(Full::new(Bytes::new())))
                .await;
        });
    }
    let start = std::time::Instant::now();
    while stuck.calls.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "A's calls never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Alive, A renews its leases: they outlast their TTL.
    std::thread::sleep(ttl * 2);
    assert_eq!(zcard(&mut conn), 2, "a live holder's leases were lost");

    // A dies: its runtime goes away with the calls, renewals and all, and releases nothing.
    doomed.shutdown_background();
    assert_eq!(
        zcard(&mut conn),
        2,
        "the dead instance gave its leases back"
    );

    // Instance B waits for the cap, and gets it once the dead leases expire.
    let upstream = Gauge {
        hold: Some(Duration::from_millis(1)),
        ..Gauge::default()
    };
    rt.block_on(async {
        let b = cap(fleet(&prefix), 2, ttl);
        let started = tokio::time::Instant::now();
        hammer(vec![b], upstream.clone(), 2, 2).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            started.elapsed() >= ttl / 3,
            "B got a lease while the dead ones were still valid"
        );
    });
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 4);
    assert!(upstream.peak.load(Ordering::SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_lowers_the_limit_of_every_instance() {
    let Some(_conn) = redis().await else { return };
    let prefix = unique_prefix("aimd");
    let layer = |f| {
        AdaptiveConcurrencyLayer::builder()
            .initial(16)
            .max(64)
            .min(1)
            .fleet(f)
            .build()
            .unwrap()
    };
    let (a, b) = (layer(fleet(&prefix)), layer(fleet(&prefix)));
    let too_many = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(
            http::Response::builder()
                .status(429)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    });
    let resp = a
        .clone()
        .layer(too_many)
        .oneshot(http::Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    drop(resp); // the lease goes back with its outcome
    // B sees the halved limit with its next lease.
    let ok = Gauge {
        hold: Some(Duration::from_millis(1)),
        ..Gauge::default()
    };
    for _ in 0..100 {
        let resp = b
            .clone()
            .layer(ok.clone())
            .oneshot(http::Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        drop(resp);
        if b.limit() == 8 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the other instance still has limit {}", b.limit());
}

async fn keys(url: String, prefix: &str) -> Vec<String> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    c.keys::<_, Vec<String>>(format!("{{{prefix}:*"))
        .await
        .unwrap()
}

/// A fleet whose Redis never answers (nothing listens on the port).
fn dead_fleet(prefix: &str) -> Fleet {
    Fleet::builder()
        .redis_url("redis://127.0.0.1:1")
        .key_prefix(prefix)
        .expected_instances(2)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_admits_its_local_share() {
    let prefix = unique_prefix("down");
    let f = dead_fleet(&prefix);
    // 200 per 2 s, burst 10, shared by 2: this instance alone admits 5 + 100 per 2 s.
    let limiter = request_limiter(f.clone());
    let admitted = overload(
        vec![limiter],
        Counting::default(),
        4,
        Duration::from_secs(2),
        10,
    )
    .await;
    assert!(!f.is_up());
    assert_within_5_percent(admitted, 105, "local share");

    // The concurrency cap too: 4 shared by 2 is 2 here.
    let upstream = Gauge {
        hold: Some(Duration::from_millis(10)),
        ..Gauge::default()
    };
    hammer(
        vec![cap(f, 4, Duration::from_secs(5))],
        upstream.clone(),
        6,
        3,
    )
    .await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 18);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_again_once_redis_returns() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("back");
    let f = Fleet::builder()
        .redis_url(redis.url())
        .key_prefix(&prefix)
        .timeout(Duration::from_millis(200))
        .retry(Duration::from_millis(100))
        .expected_instances(2)
        .build()
        .unwrap();
    // Each request moves the quota's state 600 ms ahead: its key outlives the checks.
    let limiter = RateLimitLayer::builder()
        .requests_per_minute(100)
        .request_burst(100)
        .fleet(f.clone())
        .build()
        .unwrap();
    let svc = limiter.layer(Counting::default());
    svc.clone().oneshot(chat(10)).await.unwrap();
    assert!(f.is_up());
    assert_eq!(
        keys(redis.url(), &prefix).await.len(),
        1,
        "shared through Redis"
    );

    redis.kill();
    for _ in 0..5 {
        // Admitted on the local share, Redis down.
        svc.clone().oneshot(chat(10)).await.unwrap();
    }
    assert!(!f.is_up());
    assert!(!redis.pings());

    redis.spawn().unwrap(); // empty
    let start = tokio::time::Instant::now();
    while !f.is_up() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never shared again"
        );
        let _ = svc.clone().oneshot(chat(10)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        keys(redis.url(), &prefix).await.len(),
        1,
        "shared through Redis again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_request_quota_on_a_cluster() {
    let cluster = async {
        let client = redis::cluster::ClusterClient::new(cluster_urls()).ok()?;
        let mut conn = client.get_async_connection().await.ok()?;
        let _: Option<String> = conn.get("tdr-cluster-probe").await.ok()?;
        Some(conn)
    };
    let Ok(Some(mut conn)) = tokio::time::timeout(Duration::from_secs(3), cluster).await else {
        skip_or_panic(&format!("Redis Cluster at {:?}", cluster_urls()));
        return;
    };
    let prefix = unique_prefix("cluster");
    let cluster_fleet = || {
        Fleet::builder()
            .redis_cluster(cluster_urls())
            .key_prefix(&prefix)
            .timeout(Duration::from_millis(1_000))
            .build()
            .unwrap()
    };
    let limiter = |f| {
        RateLimitLayer::builder()
            .requests_per_minute(200)
            .request_burst(10)
            .tokens_per_minute(1_000_000)
            .window(Duration::from_secs(2))
            .max_wait(Duration::from_millis(20))
            .fleet(f)
            .build()
            .unwrap()
    };
    let admitted = overload(
        vec![limiter(cluster_fleet()), limiter(cluster_fleet())],
        Counting::default(),
        6,
        Duration::from_secs(2),
        10,
    )
    .await;
    assert_within_5_percent(admitted, 210, "requests on the cluster");
    // The request and token keys of the quota share one slot (one hash tag).
    let name = format!("{{{prefix}:rl:{}}}", Fleet::digest("g"));
    let slot = |k: String| redis::cmd("CLUSTER").arg("KEYSLOT").arg(k).to_owned();
    let r: u16 = slot(format!("{name}:r"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let t: u16 = slot(format!("{name}:t"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(r, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_concurrency_cap_holds_on_a_cluster() {
    let cluster = async {
        let client = redis::cluster::ClusterClient::new(cluster_urls()).ok()?;
        let mut conn = client.get_async_connection().await.ok()?;
        let _: Option<String> = conn.get("tdr-cluster-probe").await.ok()?;
        Some(conn)
    };
    let Ok(Some(_conn)) = tokio::time::timeout(Duration::from_secs(3), cluster).await else {
        skip_or_panic(&format!("Redis Cluster at {:?}", cluster_urls()));
        return;
    };
    let prefix = unique_prefix("cluster-cap");
    let cluster_fleet = || {
        Fleet::builder()
            .redis_cluster(cluster_urls())
            .key_prefix(&prefix)
            .timeout(Duration::from_millis(1_000))
            .build()
            .unwrap()
    };
    let upstream = Gauge {
        hold: Some(Duration::from_millis(20)),
        ..Gauge::default()
    };
    let (a, b) = (
        cap(cluster_fleet(), 3, Duration::from_secs(5)),
        cap(cluster_fleet(), 3, Duration::from_secs(5)),
    );
    hammer(vec![a, b], upstream.clone(), 4, 4).await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 32);
    let peak = upstream.peak.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&peak),
        "{peak} in flight at once; the cap is 3"
    );
}
