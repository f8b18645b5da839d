//! `/metrics` shows every wired layer's metrics and the gateway's own.

mod common;

use common::*;
use serde_json::{Value, json};
use tower_deepseek_testkit::{Fault, MockServer};

#[tokio::test]
async fn metrics_show_each_layer_and_the_gateway() {
    let upstream = MockServer::builder()
        .oauth_client("gateway-client", "gateway-secret-0001")
        .start()
        .await;
    let extra = format!(
        r#"
[oauth2]
token_url = "{}"
client_id = "gateway-client"
client_secret = "gateway-secret-0001"

[rate_limit]
requests_per_minute = 6000
tokens_per_minute = 100000000
"#,
        upstream.token_url()
    );
    let dir = std::env::temp_dir().join(format!("deepseek-gateway-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config_with_keys(&extra), Some(&log)).await;
    let client = client();

    // A cacheable call with PII, twice (miss then hit), and one retried after a 502.
    let body = json!({"model": "deepseek-chat", "temperature": 0,
        "messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}]});
    for _ in 0..2 {
        let res = send(
            &client,
            chat_request(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                body.clone(),
            ),
        )
        .await;
        assert_eq!(res.status(), 200);
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Echo: mail me at jane.doe@example.com"
        );
    }
    upstream.enqueue(Fault::status(502));
    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            json!({"model": "deepseek-chat", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "retry me"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(body_string(res).await.ends_with("data: [DONE]\n\n"));
    assert_eq!(upstream.token_fetches(), 1);

    // An upstream 429 retried by the retry layer pauses the shared limiter above it.
    upstream.enqueue(Fault::status(429).header("retry-after", "1"));
    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "after a 429"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    let res = get(&client, &gw.url("/metrics"), None).await;
    assert_eq!(res.status(), 200);
    let text = body_string(res).await;
    println!("{text}");
    for name in [
        // the gateway
        "deepseek_gateway_requests_total{route=\"/chat/completions\",status=\"200\"}",
        "deepseek_gateway_request_duration_seconds_bucket",
        "deepseek_gateway_responses_total",
        "deepseek_gateway_tokens_total{kind=\"prompt_cache_hit\"}",
        // each layer
        "deepseek_audit_records_total",
        "deepseek_redact_entities_total",
        "deepseek_cache_requests_total",
        "deepseek_ratelimit_tokens_settled_total",
        "deepseek_ratelimit_paused_total 1",
        "deepseek_retry_attempts_total{reason=\"rate_limited\"} 1",
        "deepseek_retry_attempts_total",
        "deepseek_breaker_state",
        "deepseek_breaker_calls_total",
        "deepseek_auth_token_fetches_total",
        // the process
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    for secret in [CLIENT_KEY, "gateway-secret-0001", "jane.doe"] {
        assert!(!text.contains(secret));
    }
    gw.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
