//! Redis chaos for the OAuth2 token store: the test runs its own `redis-server` on a free port,
//! sends traffic through two `OAuth2Layer`s sharing a `RedisTokenStore` in it (tokens live 3 s,
//! so that refreshes go through the store all along), and kills,
//! restarts, freezes (SIGSTOP) and thaws (SIGCONT) Redis during the traffic. No call may fail
//! because of the store, no call may wait on a frozen Redis much longer than the store's
//! operation timeouts, and the store must be written and read again once Redis is back.
//!
//! Without a `redis-server` binary the test prints a notice and passes, unless `CI=true`.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Layer, ServiceExt};
use tower_deepseek_auth::store::RedisTokenStore;
use tower_deepseek_auth::{OAuth2Config, OAuth2Layer};
use tower_deepseek_testkit::{MockServer, RedisServer};

use support::*;

#[derive(Default)]
struct Tally {
    calls: AtomicUsize,
    failures: AtomicUsize,
    slowest_us: AtomicUsize,
}

type Layer2 = OAuth2Layer<TokenClient>;

fn layer(server: &MockServer, url: &str, prefix: &str) -> Layer2 {
    let store = RedisTokenStore::open(url)
        .unwrap()
        .key_prefix(prefix.to_owned());
    OAuth2Layer::builder(
        OAuth2Config::new(server.token_url(), CLIENT, SECRET)
            .refresh_margin(Duration::from_millis(500))
            .refresh_jitter(Duration::ZERO)
            .store_wait(Duration::from_millis(300)),
        token_client(),
    )
    .store(store)
    .build()
    .unwrap()
}

async fn get_key(url: &str, key: &str) -> Option<String> {
    let probe = async {
        let client = redis::Client::open(url).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(&mut c)
            .await
            .ok()?
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
}

async fn ok_call(layer: &Layer2, server: &MockServer) -> bool {
    matches!(
        layer
            .layer(api_client())
            .oneshot(chat_request(server.uri("/chat/completions"), "hi"))
            .await,
        Ok(r) if r.status() == 200
    )
}

/// Until `timeout`: call through `writer` until a token is in Redis (refreshes every 2.5 s
/// put one there); then a new instance (nothing in memory) must take that token from the
/// store, without a fetch of its own.
async fn store_round_trip(
    server: &MockServer,
    url: &str,
    prefix: &str,
    writer: &Layer2,
    tag: &str,
    timeout: Duration,
) -> Duration {
    let key = format!("{prefix}token:{CLIENT}||");
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < timeout,
            "{tag}: token store not used again within {timeout:?}"
        );
        assert!(ok_call(writer, server).await, "{tag}: call");
        let after = get_key(url, &key).await;
        if after.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Written. A fresh instance adopts it (other traffic may fetch meanwhile: the new
        // instance's call must not be the one that fetched, which the stored token proves
        // when it is unchanged across the call).
        let fresh = layer(server, url, prefix);
        let fetches = server.token_fetches();
        assert!(ok_call(&fresh, server).await, "{tag}: fresh instance");
        if server.token_fetches() == fetches && get_key(url, &key).await == after {
            return start.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_store_survives_redis_kill_restart_and_freeze() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let server = MockServer::builder()
        .oauth_client(CLIENT, SECRET)
        .require_auth(true)
        .token_lifetime(Duration::from_secs(3))
        .start()
        .await;
    let prefix = unique_prefix("chaos");
    let a = layer(&server, &url, &prefix);
    let b = layer(&server, &url, &prefix);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for w in 0..4 {
        let l = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (stop, tally, uri) = (stop.clone(), tally.clone(), server.uri("/chat/completions"));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let res = l
                    .layer(api_client())
                    .oneshot(chat_request(uri.clone(), "hi"))
                    .await;
                let ok = matches!(&res, Ok(r) if r.status() == 200);
                if !ok {
                    match res {
                        Ok(r) => eprintln!("failed call: status {}", r.status()),
                        Err(e) => eprintln!("failed call: {e}"),
                    }
                }
                tally.calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                }
                let us = t0.elapsed().as_micros() as usize;
                tally.slowest_us.fetch_max(us, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let phase = |name: &str| {
        let calls = tally.calls.swap(0, Ordering::Relaxed);
        let failures = tally.failures.swap(0, Ordering::Relaxed);
        let slowest = Duration::from_micros(tally.slowest_us.swap(0, Ordering::Relaxed) as u64);
        eprintln!(
            "{name}: {calls} calls, {failures} failed, slowest {slowest:?}, {} token fetches so far",
            server.token_fetches()
        );
        assert_eq!(
            failures, 0,
            "{name}: calls failed because of the token store"
        );
        assert!(calls > 10, "{name}: traffic kept flowing ({calls} calls)");
        slowest
    };

    tokio::time::sleep(Duration::from_millis(800)).await;
    store_round_trip(&server, &url, &prefix, &a, "up", Duration::from_secs(5)).await;
    phase("up");

    // Killed for longer than a refresh period: refreshes meet a dead store.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    phase("killed");

    redis.spawn().unwrap();
    let took = store_round_trip(
        &server,
        &url,
        &prefix,
        &b,
        "restart",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("token store back after restart in {took:?}");
    phase("restarted");

    // Frozen for longer than a refresh period: get, lock and put each give up at the store's
    // 200 ms operation timeout.
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let slowest = phase("frozen");
    assert!(
        slowest < Duration::from_millis(1500),
        "a call waited {slowest:?} on a frozen Redis"
    );

    redis.signal("-CONT");
    let took = store_round_trip(&server, &url, &prefix, &a, "thaw", Duration::from_secs(5)).await;
    eprintln!("token store back after thaw in {took:?}");
    // Traffic after the thaw, as long as after the other events (the store may answer within
    // milliseconds, before the callers have made the phase's calls).
    tokio::time::sleep(Duration::from_millis(800)).await;
    phase("thawed");

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}
