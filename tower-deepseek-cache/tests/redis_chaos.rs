//! Redis chaos: the test runs its own `redis-server` on a free port, sends traffic through a
//! `CacheLayer` whose L2 is that Redis, and kills, restarts, freezes (SIGSTOP) and thaws
//! (SIGCONT) it during the traffic. No call may fail because of the cache, no call may wait on
//! a frozen Redis longer than the L2 timeout (plus the upstream's own time), and L2 must be
//! used again, for writes and for reads, once Redis is back.
//!
//! Without a `redis-server` binary the test prints a notice and passes, unless `CI=true`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_deepseek_cache::{CacheKey, CacheLayer};
use tower_deepseek_testkit::{MockServer, RedisServer};

/// What the traffic saw: calls, failures, and the slowest call of each phase.
#[derive(Default)]
struct Tally {
    calls: AtomicUsize,
    failures: AtomicUsize,
    /// Slowest call that finished in the current phase, in microseconds.
    slowest_us: AtomicUsize,
}

const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

fn layer(url: &str, prefix: &str) -> CacheLayer {
    CacheLayer::builder()
        .redis_url(url)
        .key_prefix(prefix)
        .redis_timeout(REDIS_TIMEOUT)
        .redis_retry(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn redis_key(prefix: &str, body: &serde_json::Value) -> String {
    format!(
        "{prefix}:v1:{}",
        CacheKey::for_request(&post(body), body).to_hex()
    )
}

async fn key_exists(url: &str, key: &str) -> bool {
    let probe = async {
        let client = redis::Client::open(url).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<bool>(&mut c)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

/// Until `timeout`: a fresh body through `writer` (a miss) until its answer lands in Redis and
/// `reader` (whose L1 never saw it) answers it from L2. Returns how long that took.
async fn l2_round_trip<S>(
    url: &str,
    prefix: &str,
    writer: &S,
    reader: &S,
    tag: &str,
    timeout: Duration,
) -> Duration
where
    S: tower::Service<
            http::Request<tower_deepseek_core::body::BufferedBody>,
            Response = http::Response<tower_deepseek_cache::ResponseBody<hyper::body::Incoming>>,
            Error = tower_deepseek_core::BoxError,
        > + Clone,
{
    let start = Instant::now();
    for i in 0.. {
        assert!(
            start.elapsed() < timeout,
            "{tag}: L2 not used again within {timeout:?}"
        );
        let body = chat_body(&format!("{tag} probe {i}"), json!({}));
        let (xc, _) = call(writer, post(&body)).await;
        assert_eq!(xc, "miss");
        let key = redis_key(prefix, &body);
        let written = Instant::now();
        while written.elapsed() < Duration::from_millis(300) {
            if key_exists(url, &key).await {
                // The reader's first operation on a connection that died with the old
                // server fails (a miss, fail-open) and it skips L2 for `redis_retry`: try
                // again with a fresh body until it reads from L2.
                let (xc, _) = call(reader, post(&body)).await;
                if xc == "hit-l2" {
                    return start.elapsed();
                }
                assert_eq!(xc, "miss", "{tag}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_redis_kill_restart_and_freeze() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let server = MockServer::start().await;
    let prefix = unique_prefix("chaos");
    let a = layer(&url, &prefix).layer(upstream(&server));

    // Traffic: 4 workers, each a loop of calls over 40 prompts (first a miss, then hits in L1,
    // and fresh prompts now and then so that L2 reads and writes keep happening).
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for w in 0..4 {
        let (svc, stop, tally) = (a.clone(), stop.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let text = if i % 5 == 0 {
                    format!("fresh {w} {i}")
                } else {
                    format!("prompt {}", i % 40)
                };
                let body = chat_body(&text, json!({}));
                let t0 = Instant::now();
                let ok = match svc.clone().oneshot(post(&body)).await {
                    Ok(resp) if resp.status() == 200 => read_all(resp.into_body())
                        .await
                        .is_ok_and(|b| json_answer_ok(&b)),
                    _ => false,
                };
                let us = t0.elapsed().as_micros() as usize;
                tally.calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                }
                tally.slowest_us.fetch_max(us, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let phase = |name: &str| {
        let calls = tally.calls.swap(0, Ordering::Relaxed);
        let failures = tally.failures.swap(0, Ordering::Relaxed);
        let slowest = Duration::from_micros(tally.slowest_us.swap(0, Ordering::Relaxed) as u64);
        eprintln!("{name}: {calls} calls, {failures} failed, slowest {slowest:?}");
        assert_eq!(failures, 0, "{name}: calls failed because of Redis");
        assert!(calls > 10, "{name}: traffic kept flowing ({calls} calls)");
        slowest
    };

    // 1. Redis up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b = layer(&url, &prefix).layer(upstream(&server));
    l2_round_trip(&url, &prefix, &a, &b, "up", Duration::from_secs(3)).await;
    phase("up");

    // 2. Killed: L2 is skipped, every call still answers.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    phase("killed");

    // 3. Restarted on the same port (empty): L2 written and read again, both ways, by
    //    instances whose connection died with the old server.
    redis.spawn().unwrap();
    let took = l2_round_trip(
        &url,
        &prefix,
        &a,
        &b,
        "restart a->b",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("L2 back after restart in {took:?}");
    l2_round_trip(
        &url,
        &prefix,
        &b,
        &a,
        "restart b->a",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase("restarted");

    // 4. Frozen (SIGSTOP): the connection is open but nothing answers. Each L2 operation gives
    //    up at the L2 timeout; no call waits for the thaw (the freeze lasts 2.5 s).
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let slowest = phase("frozen");
    assert!(
        slowest < REDIS_TIMEOUT + Duration::from_millis(900),
        "a call waited {slowest:?} on a frozen Redis (L2 timeout {REDIS_TIMEOUT:?})"
    );

    // 5. Thawed (SIGCONT): L2 is used again.
    redis.signal("-CONT");
    let took = l2_round_trip(&url, &prefix, &a, &b, "thaw a->b", Duration::from_secs(5)).await;
    eprintln!("L2 back after thaw in {took:?}");
    l2_round_trip(&url, &prefix, &b, &a, "thaw b->a", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase("thawed");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
}

/// A complete, well-formed non-streaming answer.
fn json_answer_ok(bytes: &bytes::Bytes) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v["object"] == "chat.completion" && v["choices"][0]["message"].is_object())
}
