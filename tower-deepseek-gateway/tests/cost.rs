//! `[prices]` and `[budgets]`: each call is priced (metrics, audit record), a spent budget is
//! a 429 `budget_exceeded` with `Retry-After`, per client key; the example price table parses.

mod common;

use common::*;
use serde_json::{Value, json};
use tower_deepseek::redact::audit::AuditRecord;
use tower_deepseek::retry::cost::PriceTable;
use tower_deepseek_testkit::MockServer;

#[test]
fn the_example_price_table_parses_and_builds() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prices.example.toml"),
    )
    .unwrap();
    let table: PriceTable = toml::from_str(&text).unwrap();
    assert!(table.models.contains_key("deepseek-chat"));
    tower_deepseek::CostLayer::builder(table).build().unwrap();
}

#[tokio::test]
async fn calls_are_priced_and_a_spent_budget_is_a_429() {
    let upstream = MockServer::start().await;
    let extra = r#"
[prices]
currency = "USD"
[prices.models.deepseek-chat]
cache_hit = 0.028
cache_miss = 0.28
output = 0.42

[budgets]
default = { daily_tokens = 1 }
"#;
    let dir = std::env::temp_dir().join(format!("deepseek-gateway-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config_with_keys(extra), Some(&log)).await;
    let client = client();
    let call = |key: &'static str, n: u32| {
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(key),
            json!({"model": "deepseek-chat", "temperature": 1,
                   "messages": [{"role": "user", "content": format!("call {n}")}]}),
        )
    };

    // The first call of `acme` starts under its budget (0 of 1 token) and spends it.
    let res = send(&client, call(CLIENT_KEY, 1)).await;
    assert_eq!(res.status(), 200);
    body_string(res).await;
    // The next one is refused before it starts: 429 in the OpenAI shape, until midnight UTC.
    let res = send(&client, call(CLIENT_KEY, 2)).await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    // Another key has its own budget.
    let res = send(&client, call(OTHER_KEY, 3)).await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    let res = get(&client, &gw.url("/metrics"), None).await;
    let text = body_string(res).await;
    for name in [
        "deepseek_cost_micros_total{tenant=\"acme\",model=\"deepseek-chat\"}",
        "deepseek_cost_tokens_total{tenant=\"acme\",model=\"deepseek-chat\",kind=\"output\"}",
        "deepseek_cost_budget_rejected_total{tenant=\"acme\",period=\"day\",kind=\"tokens\"} 1",
        "deepseek_cost_budget_used_ratio{tenant=\"acme\",limit=\"daily_tokens\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(!text.contains(CLIENT_KEY) && !text.contains(OTHER_KEY));
    gw.stop().await.unwrap();

    // The audit records of the two answered calls carry their cost.
    let records: Vec<AuditRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let priced: Vec<&AuditRecord> = records.iter().filter(|r| r.status == Some(200)).collect();
    assert_eq!(priced.len(), 2, "{records:?}");
    for r in priced {
        let cost: tower_deepseek::core::money::Money = r.cost.as_deref().unwrap().parse().unwrap();
        assert!(!cost.is_zero());
        assert_eq!(r.currency.as_deref(), Some("USD"));
    }
    let refused = records
        .iter()
        .find(|r| r.status.is_none() || r.status == Some(429));
    assert!(refused.is_some_and(|r| r.cost.is_none()), "{records:?}");
    let _ = std::fs::remove_dir_all(dir);
}
