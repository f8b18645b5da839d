//! The gateway end to end over loopback: client → gateway (full stack) → testkit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_deepseek_testkit::{Fault, MockServer};

fn hello(content: &str) -> Value {
    json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": content}]})
}

/// Parses an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn non_stream_chat_is_proxied_with_the_upstream_key_only() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();

    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("hi there"),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: hi there");

    // Both route spellings reach the same upstream endpoint.
    let res = send(
        &client,
        chat_request(
            &gw.url("/chat/completions"),
            Some(OTHER_KEY),
            hello("again"),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    let seen = upstream.requests_to("/chat/completions");
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.bearer(), Some(UPSTREAM_KEY));
        let all: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        assert!(
            !all.contains(CLIENT_KEY) && !all.contains(OTHER_KEY),
            "{all}"
        );
        assert!(r.header("x-request-id").is_some());
    }
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn stream_with_include_usage_passes_through_to_done() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let mut body = hello("stream me please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = body_string(res).await;
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Echo: stream me please");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn tools_are_proxied() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let mut body = hello("weather in Paris");
    body["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}
    }}]);
    let res = send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body),
    )
    .await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["input"], "weather in Paris");
    // The upstream got the tools.
    let sent = upstream.requests_to("/chat/completions")[0].json().unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn first_streamed_byte_arrives_before_the_upstream_finishes() {
    let delay = Duration::from_millis(60);
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(delay)
        .start()
        .await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let mut body = hello("one two three four five six seven eight nine ten");
    body["stream"] = json!(true);
    let started = Instant::now();
    let res = send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut first_data = None;
    let mut text = String::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
    {
        if let Ok(data) = frame.unwrap().into_data() {
            if first_data.is_none() && !data.is_empty() {
                first_data = Some(started.elapsed());
            }
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let total = started.elapsed();
    let first = first_data.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // The upstream spends at least 12 chunk delays on this stream; the first byte came well
    // before its end.
    assert!(total >= delay * 10, "total {total:?}");
    assert!(
        first + delay * 5 < total,
        "first byte at {first:?}, end at {total:?}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn inbound_keys_are_enforced_with_openai_401s() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();
    for key in [None, Some("sk-not-allowed"), Some(UPSTREAM_KEY)] {
        let res = send(
            &client,
            chat_request(&gw.url("/v1/chat/completions"), key, hello("hi")),
        )
        .await;
        assert_eq!(res.status(), 401, "key {key:?}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["message"].as_str().unwrap().contains("API key"));
    }
    let res = get(&client, &gw.url("/v1/models"), None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(upstream.requests().len(), 0, "nothing reached the upstream");
    // Health and metrics stay open.
    assert_eq!(get(&client, &gw.url("/healthz"), None).await.status(), 200);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn models_fim_and_unknown_routes() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();
    let res = get(&client, &gw.url("/v1/models"), Some(CLIENT_KEY)).await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "deepseek-chat")
    );
    assert_eq!(
        get(&client, &gw.url("/models"), Some(CLIENT_KEY))
            .await
            .status(),
        200
    );

    let res = send(
        &client,
        chat_request(
            &gw.url("/beta/completions"),
            Some(CLIENT_KEY),
            json!({"model": "deepseek-chat", "prompt": "def f(", "suffix": "return 1"}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(upstream.request_count("/beta/completions"), 1);

    let res = get(&client, &gw.url("/v2/nothing"), Some(CLIENT_KEY)).await;
    assert_eq!(res.status(), 404);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let res = get(&client, &gw.url("/v1/chat/completions"), Some(CLIENT_KEY)).await;
    assert_eq!(res.status(), 405);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_errors_and_failures_come_back_in_the_openai_shape() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();

    // An upstream 4xx passes through as it is (status and DeepSeek's body).
    upstream.enqueue(Fault::status(402));
    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("x"),
        ),
    )
    .await;
    assert_eq!(res.status(), 402);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(v["error"]["message"].is_string());

    // A dead upstream: 502 with the OpenAI error shape.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw2 = start(&format!("http://{dead}"), config_with_keys(""), None).await;
    let res = send(
        &client,
        chat_request(
            &gw2.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("x"),
        ),
    )
    .await;
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
    gw.stop().await.unwrap();
    gw2.stop().await.unwrap();
}

#[tokio::test]
async fn cache_hits_are_scoped_per_tenant() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();
    let mut body = hello("cache me");
    body["temperature"] = json!(0);
    let mut cache_headers = Vec::new();
    for key in [CLIENT_KEY, CLIENT_KEY, OTHER_KEY] {
        let res = send(
            &client,
            chat_request(&gw.url("/v1/chat/completions"), Some(key), body.clone()),
        )
        .await;
        assert_eq!(res.status(), 200);
        cache_headers.push(res.headers()["x-cache"].to_str().unwrap().to_owned());
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Echo: cache me");
    }
    assert_eq!(cache_headers, ["miss", "hit-l1", "miss"]);
    assert_eq!(upstream.chat_count(), 2);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn per_key_limits_answer_429() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let text = format!(
        r#"
[[keys]]
sha256 = "{}"
tenant = "tiny"
requests_per_minute = 1

[[keys]]
sha256 = "{}"

[rate_limit]
max_wait_ms = 50
"#,
        sha256_hex(CLIENT_KEY),
        sha256_hex(OTHER_KEY)
    );
    let cfg = tower_deepseek_gateway::GatewayConfig::from_toml(&text).unwrap();
    let gw = start(&upstream.url(), cfg, None).await;
    let client = client();
    let call = |key: &'static str| {
        send(
            &client,
            chat_request(&gw.url("/v1/chat/completions"), Some(key), hello("limit")),
        )
    };
    assert_eq!(call(CLIENT_KEY).await.status(), 200);
    let res = call(CLIENT_KEY).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Another client is not limited by it.
    for _ in 0..3 {
        assert_eq!(call(OTHER_KEY).await.status(), 200);
    }
    assert_eq!(upstream.chat_count(), 4);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn pii_is_masked_upstream_restored_for_the_client_and_audited() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-audit-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config_with_keys(""), Some(&log)).await;
    let res = send(
        &client(),
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("call me at 13800138000"),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Echo: call me at 13800138000"
    );
    let sent =
        String::from_utf8(upstream.requests_to("/chat/completions")[0].body.to_vec()).unwrap();
    assert!(!sent.contains("13800138000"), "{sent}");
    gw.stop().await.unwrap();

    let audit = std::fs::read_to_string(&log).unwrap();
    let record: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(record["status"], 200);
    assert_eq!(record["endpoint"], "/chat/completions");
    assert!(record["request_id"].is_string());
    for secret in [CLIENT_KEY, UPSTREAM_KEY, "13800138000", "acme"] {
        assert!(!audit.contains(secret), "{secret} in {audit}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
