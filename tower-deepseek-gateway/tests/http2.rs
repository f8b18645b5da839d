//! Protocols and headers at the gateway's edge: HTTP/2 (h2c, prior knowledge) on every route,
//! the header allow-list toward the upstream, the header-size cap, and upstream error pages
//! that are not JSON.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_deepseek_testkit::{Fault, Match, MockServer};

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn hello(content: &str, stream: bool) -> Value {
    json!({"model": "deepseek-chat", "stream": stream,
           "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served_on_every_route() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = h2_client();

    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("over h2", false),
        ),
    )
    .await;
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: over h2");

    let res = send(
        &client,
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            hello("streamed over h2", true),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    let body = body_string(res).await;
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("h2"), "{body}");

    let res = get(&client, &gw.url("/v1/models"), Some(CLIENT_KEY)).await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    let res = send(
        &client,
        chat_request(
            &gw.url("/beta/completions"),
            Some(CLIENT_KEY),
            json!({"model": "deepseek-chat", "prompt": "fn main() {"}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    let res = get(&client, &gw.url("/healthz"), None).await;
    assert_eq!(res.status(), 200);
    body_string(res).await;

    // The upstream got HTTP/1.1 requests: the pool chose, not the caller.
    assert_eq!(upstream.requests().len(), 4);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn only_allowed_headers_reach_the_upstream() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    for client in [client(), h2_client()] {
        let req = Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("api-key", CLIENT_KEY)
            .header("cookie", "session=s3cr3t-cookie")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=203.0.113.7")
            .header("x-real-ip", "203.0.113.7")
            .header("user-agent", "my-app/1.0")
            .header("x-custom-thing", "private")
            .header("x-request-id", "req-abc-123")
            .header("x-ds-trace", "t1")
            .body(Full::new(Bytes::from(hello("headers", false).to_string())))
            .unwrap();
        let res = send(&client, req).await;
        assert_eq!(res.status(), 200);
        body_string(res).await;
    }
    let seen = upstream.requests_to("/chat/completions");
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.bearer(),
            Some(UPSTREAM_KEY),
            "only the upstream credential"
        );
        for name in [
            "cookie",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "x-real-ip",
            "api-key",
            "user-agent",
            "x-custom-thing",
        ] {
            assert!(r.header(name).is_none(), "{name} reached the upstream");
        }
        let all: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        assert!(
            !all.contains(CLIENT_KEY) && !all.contains("s3cr3t") && !all.contains("203.0.113"),
            "{all}"
        );
        assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
        assert_eq!(r.header("x-ds-trace"), Some("t1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_an_openai_431_and_never_reach_the_upstream() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    // Above `max_header_bytes` (32 KiB), below hyper's own limits (twice that).
    let big = "a".repeat(40 * 1024);
    for client in [client(), h2_client()] {
        let req = Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("x-big", big.as_str())
            .body(Full::new(Bytes::from(hello("big", false).to_string())))
            .unwrap();
        let res = send(&client, req).await;
        assert_eq!(res.status(), 431);
        assert_eq!(res.headers()["content-type"], "application/json");
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(v["error"]["code"], "request_header_fields_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_eq!(upstream.chat_count(), 0);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn upstream_error_pages_that_are_not_json_arrive_as_openai_errors() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();
    let html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    for (status, page) in [
        (502u16, html),
        (431, "<html>431 Request Header Fields Too Large</html>"),
    ] {
        upstream.always(
            Match::chat(),
            Fault::status(status)
                .header("content-type", "text/html")
                .body(page),
        );
        let res = send(
            &client,
            chat_request(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                hello("html", false),
            ),
        )
        .await;
        assert_eq!(res.status(), status);
        assert_eq!(res.headers()["content-type"], "application/json");
        let body = tokio::time::timeout(Duration::from_secs(10), body_string(res))
            .await
            .unwrap();
        assert!(!body.contains("<html>"), "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&status.to_string())
        );
        upstream.clear_faults();
    }
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}
