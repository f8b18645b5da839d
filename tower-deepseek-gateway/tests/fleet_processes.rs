//! Issue 19's acceptance with real processes: two `deepseek-gateway` binaries (spawned as the
//! operator runs them) share one Redis (a `redis-server` each test starts on a free port, or
//! the CI's Redis Cluster on 7000-7002) and one quota:
//!
//! - a request quota: together they admit the quota (± 5 %) under steady overload;
//! - a fleet concurrency cap (`[concurrency]` with `[concurrency.redis]`): never exceeded at
//!   the upstream, which counts calls in flight, including after one gateway is SIGKILLed while
//!   holding leases (they expire; the survivor then gets the whole cap);
//! - a token budget: the next call after the limit is refused by either process, within one
//!   call of the limit (on one Redis and on the Redis Cluster);
//! - Redis killed mid-run: calls go on under the local shares, and the quota is shared again
//!   once Redis is back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_deepseek_testkit::RedisServer;

/// What a load generator saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: usize,
    rate_limited: usize,
    budget: usize,
    /// Transport errors (a killed gateway) and unexpected answers.
    other: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.ok += o.ok;
        self.rate_limited += o.rate_limited;
        self.budget += o.budget;
        self.other += o.other;
    }
}

/// One chat call; `(status, body)`, or `None` for a transport error or no answer in 30 s.
async fn call(client: &TestClient, url: &str, key: Option<&str>) -> Option<(u16, String)> {
    let body = json!({"model": "deepseek-chat", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hello"}]});
    let req = chat_request(url, key, body);
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let bytes = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// `tasks` callers of `gw` sending calls back to back until `stop`; a refused call is tried
/// again 20 ms later.
fn load(
    gw: &GatewayProcess,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Tally> {
    let url = gw.url("/v1/chat/completions");
    tokio::spawn(async move {
        let client = client();
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            handles.push(tokio::spawn(async move {
                let mut t = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    match call(&client, &url, None).await {
                        Some((200, _)) => t.ok += 1,
                        Some((429, b)) if b.contains("rate_limit_exceeded") => {
                            t.rate_limited += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {
                            t.other += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                t
            }));
        }
        let mut total = Tally::default();
        for h in handles {
            total += h.await.unwrap();
        }
        total
    })
}

/// Runs `tasks` callers on each gateway for `run`, then waits for them.
async fn overload(gws: &[&GatewayProcess], tasks: usize, run: Duration) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = gws.iter().map(|gw| load(gw, tasks, stop.clone())).collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for h in handles {
        total += h.await.unwrap();
    }
    total
}

fn assert_within(got: usize, expected: usize, percent: f64, what: &str) {
    eprintln!("{what}: admitted {got}, expected {expected} ± {percent} %");
    let (lo, hi) = (
        expected as f64 * (1.0 - percent / 100.0),
        expected as f64 * (1.0 + percent / 100.0),
    );
    assert!(
        (lo..=hi).contains(&(got as f64)),
        "{what}: admitted {got}, expected {expected} ± {percent} % ({lo:.1}..={hi:.1})"
    );
}

/// One request quota for the fleet: 200 requests per 4 s window (a "minute" made short),
/// burst 10, refused when a slot is more than 20 ms away.
const REQUEST_QUOTA: &str = "requests_per_minute = 200\nrequest_burst = 10";

fn rate_limit_config(redis_url: &str, prefix: &str, timeout_ms: u64) -> String {
    quota_config(REQUEST_QUOTA, redis_url, prefix, timeout_ms)
}

fn quota_config(quota: &str, redis_url: &str, prefix: &str, timeout_ms: u64) -> String {
    format!(
        r#"
[layers]
cache = false

[rate_limit]
{quota}
window_ms = 4000
max_wait_ms = 20

[rate_limit.redis]
redis_url = "{redis_url}"
key_prefix = "{prefix}"
timeout_ms = {timeout_ms}
expected_instances = 2
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_admit_one_request_quota_together() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = CountingUpstream::start(Duration::ZERO).await;
    let cfg = rate_limit_config(&redis.url(), "gw-proc-rpm", 1_000);
    let a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;

    // 6 callers per process without pause for one window: the quota's burst (10) and one
    // window's worth (200) pass, together; each process alone would admit as many.
    let t = overload(&[&a, &b], 6, Duration::from_secs(4)).await;
    eprintln!("{t:?}");
    assert_eq!(t.other, 0, "{t:?}\n{}\n{}", a.logs(), b.logs());
    assert!(t.rate_limited > t.ok, "not overloaded: {t:?}");
    assert_eq!(t.ok, upstream.calls());
    assert_within(t.ok, 210, 5.0, "two processes, one request quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_admit_one_token_quota_settled_from_usage() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = CountingUpstream::start(Duration::ZERO).await;
    // 3 000 tokens per 4 s window, burst 150. A call is estimated at about 30 tokens (its body
    // / 4 + max_tokens 5) and its answer reports 15: settled from usage, 3 150 tokens admit
    // 210 calls (105 if the estimates stood).
    let quota = "tokens_per_minute = 3000\ntoken_burst = 150";
    let cfg = quota_config(quota, &redis.url(), "gw-proc-tpm", 1_000);
    let a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let t = overload(&[&a, &b], 6, Duration::from_secs(4)).await;
    eprintln!("{t:?}");
    assert_eq!(t.other, 0, "{t:?}\n{}\n{}", a.logs(), b.logs());
    assert!(t.rate_limited > t.ok, "not overloaded: {t:?}");
    assert_eq!(t.ok, upstream.calls());
    assert_within(t.ok, 210, 5.0, "two processes, one token quota");
}

/// The key of the leases of `account` (see `tower_deepseek_retry::concurrency`).
fn leases_key(prefix: &str, account: &str) -> String {
    let digest = hex::encode(&Sha256::digest(account.as_bytes())[..12]);
    format!("{{{prefix}:cc:{digest}}}:leases")
}

/// One Redis command over RESP on 127.0.0.1:`port` (following a cluster's `MOVED` once); the
/// integer answer.
fn redis_int(port: u16, cmd: &[&str]) -> i64 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = format!("*{}\r\n", cmd.len());
    for a in cmd {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let line = line.trim();
    if let Some(moved) = line.strip_prefix("-MOVED ") {
        let port = moved.rsplit(':').next().unwrap().parse().unwrap();
        return redis_int(port, cmd);
    }
    line.strip_prefix(':')
        .unwrap_or_else(|| panic!("not an integer: {line:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_concurrency_cap_holds_across_processes_and_a_sigkill() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = format!("redis_url = \"{}\"", redis.url());
    cap_holds_across_a_sigkill(&url, "gw-proc-cc", redis.port()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_concurrency_cap_holds_across_processes_and_a_sigkill_on_a_cluster() {
    let Some((urls, port)) = cluster().await else {
        return;
    };
    // The cluster is shared by every run: a key prefix of this run's own.
    let prefix = format!("gw-proc-cc-{:x}", rand_u64());
    cap_holds_across_a_sigkill(&urls, &prefix, port).await;
}

/// Two gateways under one fleet cap of 4 on the Redis of `redis` (a TOML line of the
/// `[concurrency.redis]` table; `port` a node to ask for the leases).
async fn cap_holds_across_a_sigkill(redis: &str, prefix: &str, port: u16) {
    const CAP: usize = 4;
    const TTL: Duration = Duration::from_millis(3_000);
    let upstream = CountingUpstream::start(Duration::from_millis(250)).await;
    let cfg = format!(
        r#"
[layers]
cache = false
rate_limit = false

[concurrency]
initial = {CAP}
max = {CAP}
lease_ttl_ms = {ttl}

[concurrency.redis]
{redis}
key_prefix = "{prefix}"
timeout_ms = 1000
expected_instances = 2
"#,
        ttl = TTL.as_millis(),
    );
    let mut a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let begin = Instant::now();

    // Both loaded (6 callers each, 250 ms per call): the upstream sees the cap, never more.
    let stop = Arc::new(AtomicBool::new(false));
    let load_a = load(&a, 6, stop.clone());
    let load_b = load(&b, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (tally_a, tally_b) = (load_a.await.unwrap(), load_b.await.unwrap());
    let both = upstream.peak(begin, Instant::now());
    eprintln!("both loaded: A {tally_a:?}, B {tally_b:?}, at most {both} in flight");
    // (How the cap was split between them is not the point: a waiter polls Redis, so the
    // fairness of a local semaphore's queue does not hold across processes.)
    assert!(tally_a.ok + tally_b.ok > 0);
    assert_eq!(
        tally_a.other + tally_b.other,
        0,
        "{}\n{}",
        a.logs(),
        b.logs()
    );
    assert_eq!(both, CAP, "two processes under one cap of {CAP}");

    // A alone, loaded: it takes the leases, and is killed (SIGKILL) holding them.
    let stop_a = Arc::new(AtomicBool::new(false));
    let load_a = load(&a, 6, stop_a.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill().await;
    let killed = Instant::now();
    stop_a.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B is idle: every lease left in Redis is the dead process's.
    let stale = redis_int(port, &["ZCARD", &leases_key(prefix, "default")]) as usize;
    load_a.await.unwrap();
    eprintln!("A killed holding {stale} leases");
    assert!(
        (1..=CAP).contains(&stale),
        "A was killed holding {stale} leases"
    );

    // The survivor, loaded again: the dead process's leases block their share of the cap
    // until they expire (TTL after they were taken, at most 250 ms before the kill), then the
    // survivor gets the whole cap.
    let stop_b = Arc::new(AtomicBool::new(false));
    let load_b = load(&b, 8, stop_b.clone());
    tokio::time::sleep(TTL + Duration::from_millis(2_000)).await;
    stop_b.store(true, Ordering::SeqCst);
    let tally_b = load_b.await.unwrap();
    let end = Instant::now();
    let blocked = upstream.peak(
        killed + Duration::from_millis(400),
        killed + TTL - Duration::from_millis(700),
    );
    let regained = upstream.peak(killed + TTL + Duration::from_millis(300), end);
    let overall = upstream.peak(begin, end);
    eprintln!(
        "after the kill: B {tally_b:?}; in flight at most {blocked} while A's leases lived, \
         {regained} after they expired; {overall} at most overall"
    );
    assert_eq!(tally_b.other, 0, "{tally_b:?}\n{}", b.logs());
    assert!(
        overall <= CAP,
        "{overall} calls in flight at once; the cap is {CAP}"
    );
    assert!(
        blocked <= CAP - stale,
        "{blocked} in flight while the dead process's {stale} leases lived"
    );
    assert_eq!(regained, CAP, "the survivor regains the whole cap");
}

/// Two gateways with one token budget per tenant (100 tokens a day; each call spends 15) on
/// the Redis of `redis` (a TOML line for the `[cache]` table), for the tenants `acme` (the
/// budget under test) and `other` (warm-up calls).
async fn budget_is_shared(redis: &str, acme: &str, other: &str) {
    let upstream = CountingUpstream::start(Duration::ZERO).await;
    let cfg = format!(
        r#"
[[keys]]
sha256 = "{}"
tenant = "{acme}"

[[keys]]
sha256 = "{}"
tenant = "{other}"

[layers]
cache = false
rate_limit = false

[cache]
{redis}

[prices]
currency = "USD"
[prices.models.deepseek-chat]
cache_hit = 0.028
cache_miss = 0.28
output = 0.42

[budgets]
default = {{ daily_tokens = 100 }}
"#,
        sha256_hex(CLIENT_KEY),
        sha256_hex(OTHER_KEY)
    );
    let a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let client = client();
    // Connected to Redis first (a first connection slower than the fleet's 50 ms would use
    // the local shares for a second): one call of the other tenant on each, until Redis is up.
    for gw in [&a, &b] {
        let t = Instant::now();
        loop {
            call(&client, &gw.url("/v1/chat/completions"), Some(OTHER_KEY)).await;
            let (_, metrics) = get_text(&client, &gw.url("/metrics")).await;
            if metrics.contains("deepseek_fleet_redis_up 1") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{metrics}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One call at a time, alternating between the processes: 6 calls leave 90 of 100 tokens
    // spent, the 7th starts under the limit and spends 105; the next is refused by either.
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, body) = call(&client, &gw.url("/v1/chat/completions"), Some(CLIENT_KEY))
            .await
            .expect("an answer");
        match status {
            200 if refused == 0 => admitted += 1,
            429 => {
                assert!(body.contains("budget_exceeded"), "{body}");
                refused += 1;
            }
            _ => panic!("call {i}: {status} {body} (after {refused} refusals)"),
        }
    }
    eprintln!("budget: {admitted} calls admitted by two processes, then {refused} refused");
    // The settlement of a call's usage reaches Redis just after its answer: the call right after
    // may still see the total before it, hence "within one call".
    assert!(
        (7..=8).contains(&admitted),
        "{admitted} calls of 15 tokens admitted under a budget of 100"
    );
    assert_eq!(admitted + refused, 12);
}

async fn get_text(client: &TestClient, url: &str) -> (u16, String) {
    let res = get(client, url, None).await;
    let status = res.status().as_u16();
    (status, body_string(res).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_the_next_call_across_two_processes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    budget_is_shared(&format!("redis_url = \"{}\"", redis.url()), "acme", "other").await;
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

/// The CI's Redis Cluster (`REDIS_CLUSTER_URLS`, default 127.0.0.1:7000-7002): the TOML line
/// `redis_cluster_urls = [...]` and the first node's port; `None` (skipped) locally without
/// it, a failure under `CI=true`.
async fn cluster() -> Option<(String, u16)> {
    let urls = cluster_urls();
    let first = urls[0].trim_start_matches("redis://").to_owned();
    let up = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&first)
        )
        .await,
        Ok(Ok(_))
    );
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Redis Cluster ({urls:?}) is required under CI"
        );
        eprintln!("notice: no Redis Cluster at {urls:?}; skipped");
        return None;
    }
    let port = first.rsplit(':').next().unwrap().parse().unwrap();
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Some((format!("redis_cluster_urls = [{list}]"), port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_the_next_call_across_two_processes_on_a_cluster() {
    let Some((urls, _)) = cluster().await else {
        return;
    };
    // The cluster is shared by every run: tenants of this run's own.
    let run = format!("{:x}", rand_u64());
    budget_is_shared(&urls, &format!("acme-{run}"), &format!("other-{run}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_admit_one_request_quota_together_on_a_cluster() {
    let Some((urls, _)) = cluster().await else {
        return;
    };
    let upstream = CountingUpstream::start(Duration::ZERO).await;
    let prefix = format!("gw-proc-rpm-{:x}", rand_u64());
    let cfg = quota_config(REQUEST_QUOTA, "", &prefix, 1_000).replace("redis_url = \"\"", &urls);
    let a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let t = overload(&[&a, &b], 6, Duration::from_secs(4)).await;
    eprintln!("{t:?}");
    assert_eq!(t.other, 0, "{t:?}\n{}\n{}", a.logs(), b.logs());
    assert_eq!(t.ok, upstream.calls());
    assert_within(
        t.ok,
        210,
        5.0,
        "two processes, one request quota, on the cluster",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_local_shares_then_shared_again() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = CountingUpstream::start(Duration::ZERO).await;
    // The fleet's default 50 ms bound on a Redis round trip, and 1 s before Redis is tried
    // again after a failure.
    let cfg = rate_limit_config(&redis.url(), "gw-proc-chaos", 50);
    let a = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let b = GatewayProcess::spawn(&upstream.url(), &cfg, &[], &[]).await;
    let client = client();
    let up = |text: &str, v: u8| text.contains(&format!("deepseek_fleet_redis_up {v}"));

    // Redis gone: each process admits its share (100 per window, burst 5) on its own: about
    // the quota together, and every call is answered (200 or 429), none fails.
    redis.kill();
    let t = overload(&[&a, &b], 6, Duration::from_secs(4)).await;
    eprintln!("Redis down: {t:?}");
    assert_eq!(t.other, 0, "{t:?}\n{}\n{}", a.logs(), b.logs());
    assert_within(t.ok, 210, 10.0, "two processes on their local shares");
    for gw in [&a, &b] {
        let (_, m) = get_text(&client, &gw.url("/metrics")).await;
        assert!(up(&m, 0), "{m}");
        assert!(
            m.contains("deepseek_fleet_fallback_total{limit=\"rate_limit\"}"),
            "{m}"
        );
    }

    // Redis back (empty): once each process tried it again, the quota lives in Redis again.
    redis.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for gw in [&a, &b] {
        let t = Instant::now();
        loop {
            call(&client, &gw.url("/v1/chat/completions"), None).await;
            let (_, m) = get_text(&client, &gw.url("/metrics")).await;
            if up(&m, 1) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{m}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The burst the calls above took refills (10 requests at 50 a second), then overload
    // again: one quota for the two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = overload(&[&a, &b], 6, Duration::from_secs(4)).await;
    eprintln!("Redis back: {t:?}");
    // (The keys expire once the quota has refilled: look right after the traffic.)
    let keys = redis_int(redis.port(), &["DBSIZE"]);
    assert!(keys > 0, "the quota lives in Redis again");
    assert_eq!(t.other, 0, "{t:?}");
    assert_within(t.ok, 210, 5.0, "two processes sharing the quota again");
}
