//! `[rate_limit.redis]`: two gateways (in this process, each with its own Redis connection)
//! share one quota per client through Redis, and a client's own limit stays its own.

mod common;

use common::*;
use serde_json::json;
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::MockServer;

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

/// The most calls in flight at `upstream` while six calls go through a gateway built from
/// `[layers] cache = false` and `extra`, without a cap and with a cap of 2.
async fn peaks_without_and_with_a_cap_of_two(
    upstream: &CountingUpstream,
    extra: &str,
) -> Vec<usize> {
    let client = client();
    let mut peaks = Vec::new();
    for cap in ["", "[concurrency]\ninitial = 2\nmax = 2\n"] {
        let cfg =
            GatewayConfig::from_toml(&format!("[layers]\ncache = false\n{cap}{extra}")).unwrap();
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
    peaks
}

/// `[concurrency]` (in memory) caps the calls in flight at the upstream; without it, they are
/// not capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_table_caps_calls_in_flight_at_the_upstream() {
    let upstream = CountingUpstream::start(std::time::Duration::from_millis(200)).await;
    let peaks = peaks_without_and_with_a_cap_of_two(&upstream, "").await;
    assert!(peaks[0] >= 3, "without a cap: {peaks:?}");
    assert_eq!(peaks[1], 2, "with a cap of 2: {peaks:?}");
}

/// With several upstreams, the `[concurrency]` cap is one cap for the pool: two upstreams
/// (both at the one counting server, so its count is theirs together) never see more than
/// the cap in flight between them; without the cap they see more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_across_a_pool_of_upstreams() {
    let upstream = CountingUpstream::start(std::time::Duration::from_millis(200)).await;
    let url = upstream.url();
    let pool = format!(
        "[[upstreams]]\nname = \"az1\"\nurl = \"{url}\"\n[[upstreams]]\nname = \"az2\"\nurl = \"{url}\"\n"
    );
    let peaks = peaks_without_and_with_a_cap_of_two(&upstream, &pool).await;
    assert!(peaks[0] >= 3, "without a cap: {peaks:?}");
    assert_eq!(peaks[1], 2, "with a cap of 2 for the pool: {peaks:?}");
}

/// A token budget of `daily_tokens` per client key, kept through `[budgets.redis]` (`redis`:
/// the table's lines).
fn budget_config(daily_tokens: u64, redis: &str) -> GatewayConfig {
    let text = format!(
        r#"
[[keys]]
sha256 = "{}"
tenant = "acme"

[layers]
cache = false
rate_limit = false

[prices]
currency = "USD"
[prices.models.deepseek-chat]
cache_hit = 0.028
cache_miss = 0.28
output = 0.42

[budgets]
default = {{ daily_tokens = {daily_tokens} }}

[budgets.redis]
{redis}
"#,
        sha256_hex(CLIENT_KEY),
    );
    GatewayConfig::from_toml(&text).unwrap()
}

/// One call of `acme`: its status and the tokens its answer says it used.
async fn budget_call(client: &TestClient, gw: &Running, n: u32) -> (u16, u64) {
    let body = json!({"model": "deepseek-chat",
        "messages": [{"role": "user", "content": format!("budget call {n}")}]});
    let res = send(
        client,
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body),
    )
    .await;
    let status = res.status().as_u16();
    let text = body_string(res).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    match status {
        200 => (200, v["usage"]["total_tokens"].as_u64().unwrap()),
        429 => {
            assert_eq!(v["error"]["code"], "budget_exceeded", "{text}");
            (429, 0)
        }
        other => panic!("{other}: {text}"),
    }
}

/// `[budgets.redis]`: two gateways of one environment (one key prefix) share a budget through
/// Redis, and a gateway of another environment on the same Redis (another prefix) keeps its
/// own.
#[tokio::test]
async fn budgets_redis_shares_a_budget_per_key_prefix() {
    if !redis_available().await {
        return;
    }
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let run = format!("{}-{:x}", std::process::id(), rand_u64());
    let table = |env: &str| {
        format!(
            "redis_url = \"{}\"\nkey_prefix = \"gw-budget-{env}-{run}\"\ntimeout_ms = 1000\n",
            redis_url()
        )
    };
    let staging_a = start(&upstream.url(), budget_config(1, &table("staging")), None).await;
    let staging_b = start(&upstream.url(), budget_config(1, &table("staging")), None).await;
    let prod = start(&upstream.url(), budget_config(1, &table("prod")), None).await;
    let client = client();

    // Staging's first call starts under the budget (0 of 1 token) and spends it; the
    // spending is settled in Redis in the background when the answer ends: once this gateway
    // refuses, Redis holds it.
    let t = std::time::Instant::now();
    let mut n = 0;
    while budget_call(&client, &staging_a, n).await.0 != 429 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "never refused"
        );
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The other staging gateway has not served anyone, and refuses its first call.
    assert_eq!(
        budget_call(&client, &staging_b, 100).await.0,
        429,
        "staging's budget is not shared"
    );
    // Production, on the same Redis under its own prefix, has its whole budget.
    assert_eq!(budget_call(&client, &prod, 200).await.0, 200);
    for gw in [staging_a, staging_b, prod] {
        gw.stop().await.unwrap();
    }
}

/// `[budgets.redis] expected_instances`: while Redis is unavailable, a gateway checks its own
/// spending against its share of the budget (limit / expected_instances), not the whole.
#[tokio::test]
async fn while_redis_is_down_a_gateway_allows_its_share_of_the_budget() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let client = client();
    // Nothing listens there: every check fails at once and falls back to the local share.
    let down = "redis_url = \"redis://127.0.0.1:1\"\ntimeout_ms = 200\n";
    let mut spent = Vec::new();
    for instances in [1, 4] {
        let cfg = budget_config(400, &format!("{down}expected_instances = {instances}\n"));
        let gw = start(&upstream.url(), cfg, None).await;
        let mut tokens = 0;
        let mut per_call = 0;
        for n in 0..100 {
            match budget_call(&client, &gw, n).await {
                (200, t) => {
                    tokens += t;
                    per_call = t;
                }
                _ => break,
            }
            assert!(n < 99, "never refused");
        }
        // Calls start while the spending is under the share, so it is passed by at most one.
        let share = 400 / instances;
        assert!(
            tokens >= share && tokens < share + per_call,
            "{instances} instance(s): {tokens} tokens spent for a share of {share}"
        );
        spent.push(tokens);
        gw.stop().await.unwrap();
    }
    assert!(spent[1] * 2 < spent[0], "{spent:?}");
}
