//! Redaction fails closed through the gateway, in-process over loopback, with the default
//! configuration (and with the shipped `gateway.example.toml`): for every route by which
//! personal data could reach the upstream (each field that carries text, any `Content-Type`,
//! bodies that are not JSON, not UTF-8, nested too deep or too large), the upstream never
//! receives a raw value, and the client gets either its answer with the values restored or a
//! clean 400/413 in the OpenAI error shape.

mod common;
// The routes are shared with the redact crate's own tests.
#[path = "../../tower-deepseek-redact/tests/routes/mod.rs"]
mod routes;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use routes::*;
use serde_json::{Value, json};
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::MockServer;

const LABELS: [Option<&str>; 5] = [
    Some("application/json"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    None,
];

fn post(url: &str, label: Option<&str>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    if let Some(l) = label {
        b = b.header("content-type", l);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Every body the upstream received, checked for raw values.
fn assert_upstream_clean(upstream: &MockServer, what: &str) {
    for r in upstream.requests() {
        assert_no_raw_value(what, &r.body);
    }
}

/// The gateway with the default configuration (no client keys: loopback only), in front of
/// `upstream`.
async fn default_gateway(upstream: &MockServer) -> Running {
    start(&upstream.url(), GatewayConfig::default(), None).await
}

#[tokio::test]
async fn every_field_under_every_label_is_masked_upstream_and_restored_for_the_client() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = default_gateway(&upstream).await;
    let client = client();
    for label in LABELS {
        for (what, body) in field_cases() {
            let path = if body.get("prompt").is_some() {
                "/beta/completions"
            } else {
                "/v1/chat/completions"
            };
            let res = send(&client, post(&gw.url(path), label, body.to_string())).await;
            let status = res.status();
            let answer = body_string(res).await;
            assert_upstream_clean(&upstream, what);
            for ph in ["<CN_MOBILE_", "<EMAIL_", "<CN_ID_CARD_"] {
                assert!(!answer.contains(ph), "{what} {label:?}: {answer}");
            }
            if what.starts_with("messages[].content") || what.starts_with("FIM") {
                assert_eq!(status, 200, "{what} {label:?}: {answer}");
            }
            if what == "messages[].content (string)" {
                let v: Value = serde_json::from_str(&answer).unwrap();
                assert_eq!(
                    v["choices"][0]["message"]["content"],
                    format!("Echo: call {PHONE}"),
                    "{label:?}"
                );
            }
        }
    }
    // Every field and label reached the upstream at least once (the cache answers repeats).
    assert!(upstream.requests().len() >= field_cases().len());
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn structural_fields_reach_the_upstream_byte_identical() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = default_gateway(&upstream).await;
    let body = json!({
        "model": "deepseek-chat", "temperature": 0.25, "seed": 13800138000_u64, "max_tokens": 64,
        "messages": [
            {"role": "user", "content": format!("my number is {PHONE}")},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_13800138000", "type": "function",
                "function": {"name": "lookup_13800138000", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_13800138000", "content": "none"},
            {"role": "user", "content": "and now?"}],
        "tools": [{"type": "function", "function": {"name": "lookup_13800138000", "parameters": {"type": "object"}}}],
        "tool_choice": "none"
    });
    let res = send(
        &client(),
        post(
            &gw.url("/v1/chat/completions"),
            Some("text/plain"),
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;
    let got = upstream.requests_to("/chat/completions")[0].json().unwrap();
    for field in [
        "/model",
        "/temperature",
        "/seed",
        "/max_tokens",
        "/tool_choice",
    ] {
        assert_eq!(got.pointer(field), body.pointer(field), "{field}");
    }
    for field in [
        "/messages/0/role",
        "/messages/1/tool_calls",
        "/messages/2/tool_call_id",
        "/tools",
    ] {
        assert_eq!(got.pointer(field), body.pointer(field), "{field}");
    }
    assert_eq!(got["messages"][0]["content"], "my number is <CN_MOBILE_1>");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn bodies_that_cannot_be_parsed_get_a_clean_400_and_nothing_reaches_the_upstream() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = default_gateway(&upstream).await;
    let client = client();
    for path in [
        "/v1/chat/completions",
        "/chat/completions",
        "/beta/completions",
    ] {
        for label in LABELS {
            for (what, body, _reason) in unparseable_bodies() {
                let res = send(&client, post(&gw.url(path), label, body)).await;
                assert_eq!(res.status(), 400, "{what} {path} {label:?}");
                assert_eq!(res.headers()["content-type"], "application/json");
                let text = body_string(res).await;
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["type"], "invalid_request_error", "{what}");
                assert_eq!(v["error"]["code"], "invalid_json", "{what}");
                let message = v["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("cannot be checked for personal data"),
                    "{message}"
                );
                // The message says why, and never echoes the body.
                assert_no_raw_value(what, text.as_bytes());
                assert!(!text.contains("call me"), "{text}");
            }
        }
    }
    let too_deep = unparseable_bodies()
        .into_iter()
        .find(|(_, _, r)| *r == "too_deep")
        .unwrap()
        .1;
    let res = send(
        &client,
        post(&gw.url("/v1/chat/completions"), None, too_deep),
    )
    .await;
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("256 levels"),
        "{v}"
    );
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn depth_200_is_masked_and_300_refused() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = default_gateway(&upstream).await;
    let client = client();
    let body = |levels: usize| {
        format!(
            r#"{{"model":"deepseek-chat","messages":[{{"role":"user","content":"call {PHONE}"}}],"metadata":{}"{MAIL}"{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let res = send(
        &client,
        post(&gw.url("/v1/chat/completions"), None, body(300)),
    )
    .await;
    assert_eq!(res.status(), 400);
    body_string(res).await;
    assert!(upstream.requests().is_empty());
    // At 200 levels the body is masked and sent (the mock's own JSON parser stops at 128
    // levels and answers 400: what matters here is what it received).
    let res = send(
        &client,
        post(&gw.url("/v1/chat/completions"), None, body(200)),
    )
    .await;
    body_string(res).await;
    let got = upstream.requests();
    assert_eq!(got.len(), 1);
    assert_no_raw_value("depth 200", &got[0].body);
    assert!(String::from_utf8_lossy(&got[0].body).contains("<EMAIL_1>"));
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_oversized_body_gets_a_413_and_nothing_reaches_the_upstream() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = default_gateway(&upstream).await;
    // Over the default 8 MiB limit, with and without a JSON label.
    let big = format!(
        r#"{{"model":"deepseek-chat","messages":[{{"role":"user","content":"{PHONE} {}"}}]}}"#,
        "x".repeat(8 << 20)
    );
    for label in [Some("application/json"), Some("text/plain")] {
        let res = send(
            &client(),
            post(&gw.url("/v1/chat/completions"), label, big.clone()),
        )
        .await;
        assert_eq!(res.status(), 413, "{label:?}");
        let text = body_string(res).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_no_raw_value("413", text.as_bytes());
    }
    assert!(upstream.requests().is_empty());
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_example_config_fails_closed_too() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let mut cfg = GatewayConfig::from_toml(include_str!("../gateway.example.toml")).unwrap();
    // Its keys are examples: serve on loopback without them.
    cfg.keys.clear();
    let gw = start(&upstream.url(), cfg, None).await;
    let client = client();
    let res = send(
        &client,
        post(
            &gw.url("/v1/chat/completions"),
            Some("text/plain"),
            format!("call me at {PHONE}"),
        ),
    )
    .await;
    assert_eq!(res.status(), 400);
    body_string(res).await;
    let body = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": format!("call {PHONE}")}]});
    let res = send(
        &client,
        post(
            &gw.url("/v1/chat/completions"),
            Some("application/x-www-form-urlencoded"),
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(body_string(res).await.contains(PHONE));
    assert_eq!(upstream.requests().len(), 1);
    assert_upstream_clean(&upstream, "example config");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}
