//! `[rate_limit.redis]`: two gateways (in this process, each with its own Redis connection)
//! share one quota per client through Redis, and a client's own limit stays its own.

mod common;

use common::*;
use serde_json::json;
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::MockServer;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether something answers on the Redis address (skip locally when not, fail under CI).
async fn redis_available() -> bool {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let ok = matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(&hostport)
        )
        .await,
        Ok(Ok(_))
    );
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis is required under CI (REDIS_URL={url})"
        );
        eprintln!("notice: no Redis at {url}; skipping");
    }
    ok
}

fn config(prefix: &str) -> GatewayConfig {
    // acme has its own limit (3 a minute, with the default burst of 6); the other client
    // shares the default quota (6 a minute, burst 6). Refused at once when over (no wait).
    let text = format!(
        r#"
[[keys]]
sha256 = "{}"
tenant = "acme"
requests_per_minute = 3

[[keys]]
sha256 = "{}"

[layers]
cache = false

[rate_limit]
requests_per_minute = 6
request_burst = 6
max_wait_ms = 0

[rate_limit.redis]
redis_url = "{}"
key_prefix = "{prefix}"
timeout_ms = 1000
expected_instances = 2
"#,
        sha256_hex(CLIENT_KEY),
        sha256_hex(OTHER_KEY),
        redis_url()
    );
    GatewayConfig::from_toml(&text).unwrap()
}

#[tokio::test]
async fn two_gateways_share_each_clients_quota_through_redis() {
    if !redis_available().await {
        return;
    }
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let prefix = format!("gw-fleet-test-{}-{:x}", std::process::id(), rand_u64());
    let a = start(&upstream.url(), config(&prefix), None).await;
    let b = start(&upstream.url(), config(&prefix), None).await;
    let client = client();
    let mut admitted = std::collections::HashMap::new();
    for i in 0..10 {
        for (key, name) in [(CLIENT_KEY, "acme"), (OTHER_KEY, "other")] {
            let gw = if i % 2 == 0 { &a } else { &b };
            let body = json!({"model": "deepseek-chat",
                "messages": [{"role": "user", "content": format!("call {i}")}]});
            let res = send(
                &client,
                chat_request(&gw.url("/v1/chat/completions"), Some(key), body),
            )
            .await;
            let status = res.status().as_u16();
            let text = body_string(res).await;
            match status {
                200 => *admitted.entry(name).or_insert(0) += 1,
                429 => assert!(text.contains("rate_limit_exceeded"), "{text}"),
                other => panic!("{other}: {text}"),
            }
        }
    }
    // Each gateway alone would have admitted 5 of each client's 10 calls: together, each
    // client gets its one quota's burst, 6, and no more.
    assert_eq!(admitted.get("acme"), Some(&6), "{admitted:?}");
    assert_eq!(admitted.get("other"), Some(&6), "{admitted:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// `[concurrency]` (in memory) caps the calls in flight at the upstream; without it, they are
/// not capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_table_caps_calls_in_flight_at_the_upstream() {
    let upstream = CountingUpstream::start(std::time::Duration::from_millis(200)).await;
    let client = client();
    let mut peaks = Vec::new();
    for extra in ["", "[concurrency]\ninitial = 2\nmax = 2\n"] {
        let cfg = GatewayConfig::from_toml(&format!("[layers]\ncache = false\n{extra}")).unwrap();
        let gw = start(&upstream.url(), cfg, None).await;
        let from = std::time::Instant::now();
        let calls = (0..6).map(|i| {
            let req = chat_request(
                &gw.url("/v1/chat/completions"),
                None,
                json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": format!("call {i}")}]}),
            );
            let client = client.clone();
            async move {
                let res = send(&client, req).await;
                assert_eq!(res.status(), 200);
                body_string(res).await
            }
        });
        futures_util::future::join_all(calls).await;
        peaks.push(upstream.peak(from, std::time::Instant::now()));
        gw.stop().await.unwrap();
    }
    assert!(peaks[0] >= 3, "without a cap: {peaks:?}");
    assert_eq!(peaks[1], 2, "with a cap of 2: {peaks:?}");
}

/// With several upstreams, the `[concurrency]` cap is one cap for the pool: two upstreams
/// (both at the one counting server, so its count is theirs together) never see more than
/// the cap in flight between them; without the cap they see more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_across_a_pool_of_upstreams() {
    let upstream = CountingUpstream::start(std::time::Duration::from_millis(200)).await;
    let client = client();
    let url = upstream.url();
    let pool = format!(
        "[[upstreams]]\nname = \"az1\"\nurl = \"{url}\"\n[[upstreams]]\nname = \"az2\"\nurl = \"{url}\"\n"
    );
    let mut peaks = Vec::new();
    for cap in ["", "[concurrency]\ninitial = 2\nmax = 2\n"] {
        let cfg =
            GatewayConfig::from_toml(&format!("[layers]\ncache = false\n{cap}{pool}")).unwrap();
        let gw = start(&url, cfg, None).await;
        let from = std::time::Instant::now();
        let calls = (0..6).map(|i| {
            let req = chat_request(
                &gw.url("/v1/chat/completions"),
                None,
                json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": format!("call {i}")}]}),
            );
            let client = client.clone();
            async move {
                let res = send(&client, req).await;
                assert_eq!(res.status(), 200);
                body_string(res).await
            }
        });
        futures_util::future::join_all(calls).await;
        peaks.push(upstream.peak(from, std::time::Instant::now()));
        gw.stop().await.unwrap();
    }
    assert!(peaks[0] >= 3, "without a cap: {peaks:?}");
    assert_eq!(peaks[1], 2, "with a cap of 2 for the pool: {peaks:?}");
}
