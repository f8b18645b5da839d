//! The recommended stack (`tower_deepseek::stack`) over real loopback HTTP against the testkit.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::auth::BearerAuthLayer;
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
use tower_deepseek::core::meta::TenantId;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::redact::audit::{AuditLayer, WriterSink};
use tower_deepseek::redact::review::{ReviewLayer, SamplingRule};
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::retry::{Attempts, RetryLayer};
use tower_deepseek::stack::{RecommendedStack, StackBody, StackBuilder, StackConfig, StackService};
use tower_deepseek_testkit::{Fault, Match, MockServer};

const KEY: &str = "sk-stack-test-0001";
const EMAIL: &str = "zhang.san@example.com";

type Caller = Full<Bytes>;

type Svc = StackService;

/// `stack` around the facade's client, pointed at `server`.
fn service(server: &MockServer, stack: RecommendedStack) -> Svc {
    ServiceBuilder::new()
        .layer(stack)
        .layer(BaseUrlLayer::new(&server.url()).unwrap())
        .service(upstream_client(&ClientConfig::default()))
}

fn chat(text: &str, stream: bool) -> Request<Caller> {
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        "temperature": 0,
    });
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn all_on(log: &WriterSink<Vec<u8>>) -> StackBuilder {
    RecommendedStack::builder()
        .audit(
            AuditLayer::builder()
                .hmac_key(b"stack-audit-key-0123456789".to_vec())
                .sink(log.clone())
                .build()
                .unwrap(),
        )
        .redact(RedactLayer::new())
        .cache(CacheLayer::new())
        .rate_limit(
            RateLimitLayer::builder()
                .requests_per_minute(6000)
                .build()
                .unwrap(),
        )
        .retry(RetryLayer::builder().build().unwrap())
        .circuit_breaker(
            CircuitBreakerLayer::builder()
                .name("stack-test")
                .build()
                .unwrap(),
        )
        .bearer_auth(BearerAuthLayer::new(KEY).unwrap())
        .timeout(TimeoutLayer::builder().build().unwrap())
}

#[tokio::test]
async fn every_layer_on() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let log = WriterSink::new(Vec::new());
    let stack = all_on(&log).build().unwrap();
    assert_eq!(
        stack.layers(),
        [
            "audit",
            "redact",
            "cache",
            "rate_limit",
            "retry",
            "circuit_breaker",
            "bearer_auth",
            "timeout"
        ]
    );
    let svc = service(&server, stack);
    // One transient failure: the retry layer below the cache replays it.
    server.enqueue(Fault::status(502));

    let text = format!("mail me at {EMAIL}");
    let res = svc.clone().oneshot(chat(&text, false)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "miss");
    assert_eq!(res.extensions().get::<Attempts>().unwrap().count(), 2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let usage = v["usage"].clone();
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    // The answer echoes the prompt: the placeholder was restored on the way out...
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, format!("Echo: {text}"));
    // ...while the upstream only saw it masked, with the stack's credential.
    let seen = server.requests_to("/chat/completions");
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.bearer(), Some(KEY));
        assert!(!String::from_utf8_lossy(&r.body).contains(EMAIL));
    }

    // The same request again: a cache hit, nothing goes upstream.
    let res = svc.clone().oneshot(chat(&text, false)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["x-cache"]
            .to_str()
            .unwrap()
            .starts_with("hit")
    );
    let again = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&again).contains(EMAIL));
    assert_eq!(server.chat_count(), 2);

    // One audit record per call, without the PII value.
    let records = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    assert_eq!(records.lines().count(), 2, "{records}");
    assert!(!records.contains(EMAIL));
    // The facts audit asked the layers below for: one retry, the breaker's state.
    let first: serde_json::Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    assert_eq!(first["retries"], 1, "{first}");
    assert_eq!(first["breaker"], "closed", "{first}");
    // Verdict, usage and model come from the breaker's classification of the body, shared
    // with the layers above (core's `SharedOutcome`) rather than parsed again by audit.
    assert_eq!(first["outcome"], "ok", "{first}");
    assert_eq!(first["prompt_tokens"], usage["prompt_tokens"], "{first}");
    assert_eq!(
        first["completion_tokens"], usage["completion_tokens"],
        "{first}"
    );
    assert_eq!(first["model"], v["model"], "{first}");

    // A streamed answer: its usage (in the final chunk) reaches the record the same way.
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "a streamed question"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let streamed = res.into_body().collect().await.unwrap().to_bytes();
    assert!(streamed.ends_with(b"data: [DONE]\n\n"));
    let records = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    let third: serde_json::Value = serde_json::from_str(records.lines().nth(2).unwrap()).unwrap();
    assert_eq!(third["outcome"], "ok", "{third}");
    assert!(third["prompt_tokens"].as_u64().unwrap() > 0, "{third}");
    assert!(third["completion_tokens"].as_u64().unwrap() > 0, "{third}");
    assert_eq!(third["model"], "deepseek-chat", "{third}");
}

#[tokio::test]
async fn review_sits_below_redact_and_above_the_cache() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let log = WriterSink::new(Vec::new());
    let review_log = WriterSink::new(Vec::new());
    let review = ReviewLayer::builder()
        .rule(SamplingRule::new(1.0))
        .sink(review_log.clone())
        .build()
        .unwrap();
    let handle = review.handle();
    let stack = all_on(&log).review(review).build().unwrap();
    assert_eq!(&stack.layers()[..4], ["audit", "redact", "review", "cache"]);
    let svc = service(&server, stack);
    let text = format!("mail me at {EMAIL}");
    for stream in [false, false, true] {
        let res = svc.clone().oneshot(chat(&text, stream)).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(EMAIL));
    }
    handle.flush().await.unwrap();
    let reviewed = review_log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    // Masked: the placeholder, never the address (the caller got it back above).
    assert!(!reviewed.contains(EMAIL), "{reviewed}");
    let calls: Vec<serde_json::Value> = reviewed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Three calls, the cache hit (the second) included; each linked to its audit record.
    assert_eq!(calls.len(), 3, "{reviewed}");
    let audited = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    for c in &calls {
        assert_eq!(c["outcome"], "complete", "{c}");
        assert_eq!(
            c["answer"]["choices"][0]["content"],
            "Echo: mail me at <EMAIL_1>"
        );
        let id = c["request_id"].as_str().unwrap();
        assert!(
            audited.contains(&format!("\"request_id\":\"{id}\"")),
            "{id}"
        );
    }
}

#[tokio::test]
async fn layers_off_are_bypassed() {
    let server = MockServer::builder().api_key(KEY).start().await;
    // Only retry and auth.
    let stack = RecommendedStack::builder()
        .retry(RetryLayer::builder().build().unwrap())
        .bearer_auth(BearerAuthLayer::new(KEY).unwrap())
        .build()
        .unwrap();
    assert_eq!(stack.layers(), ["retry", "bearer_auth"]);
    let svc = service(&server, stack);
    server.enqueue(Fault::status(502));
    let text = format!("mail me at {EMAIL}");
    for _ in 0..2 {
        let res = svc.clone().oneshot(chat(&text, false)).await.unwrap();
        assert_eq!(res.status(), 200);
        // No cache: no x-cache header, and every call goes upstream.
        assert!(res.headers().get("x-cache").is_none());
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(server.chat_count(), 3);
    // No redaction: the upstream saw the value itself.
    assert!(String::from_utf8_lossy(&server.requests()[0].body).contains(EMAIL));

    // Nothing at all: the stack is the client.
    let svc = service(&server, RecommendedStack::builder().build().unwrap());
    server.enqueue(Fault::status(502));
    let res = svc.oneshot(chat("hi", false)).await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(server.requests().last().unwrap().bearer(), None);
}

#[tokio::test]
async fn streams_pass_through_unbuffered() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let log = WriterSink::new(Vec::new());
    let svc = service(&server, all_on(&log).build().unwrap());
    // The first events come at once, the next one only after an hour: whatever arrives
    // before the end of the stream was not buffered by any layer.
    server.always(
        Match::chat().and(Match::stream()),
        Fault::slow_drip(Duration::from_secs(3600)),
    );
    let res = svc.oneshot(chat("hello there", true)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the first event arrives before the stream ends")
        .unwrap()
        .unwrap();
    let data = first.into_data().unwrap();
    assert!(data.starts_with(b"data: "), "{data:?}");
}

#[tokio::test]
async fn errors_map_to_openai_json() {
    let server = MockServer::builder().api_key(KEY).start().await;
    // A default limiter for everyone, and one request a minute for tenant "small".
    let stack = RecommendedStack::builder()
        .rate_limit(
            RateLimitLayer::builder()
                .requests_per_minute(6000)
                .build()
                .unwrap(),
        )
        .tenant_rate_limit(
            TenantId::new("small"),
            RateLimitLayer::builder()
                .requests_per_minute(1)
                .max_wait(Duration::ZERO)
                .build()
                .unwrap(),
        )
        .bearer_auth(BearerAuthLayer::new(KEY).unwrap())
        .build()
        .unwrap();
    let svc = service(&server, stack);
    let as_tenant = |text: &str| {
        let mut req = chat(text, false);
        req.extensions_mut().insert(TenantId::new("small"));
        req
    };
    let res = svc.clone().oneshot(as_tenant("one")).await.unwrap();
    assert_eq!(res.status(), 200);
    let err = svc.clone().oneshot(as_tenant("two")).await.unwrap_err();
    let res = tower_deepseek::error::error_response(&*err);
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: serde_json::Value = serde_json::from_slice(res.body().bytes()).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    // Other requests use the default limiter.
    let res = svc.oneshot(chat("three", false)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.chat_count(), 2);
}

#[test]
fn tenant_limits_need_a_default() {
    let err = RecommendedStack::builder()
        .tenant_rate_limit(
            TenantId::new("t"),
            RateLimitLayer::builder().build().unwrap(),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.layer(), "rate_limit");
}

#[test]
fn config_tables_turn_layers_on_and_are_validated() {
    let cfg: StackConfig = serde_json::from_str(r#"{"cache":{},"retry":{},"timeout":{}}"#).unwrap();
    let stack = cfg.builder(None).unwrap().build().unwrap();
    assert_eq!(stack.layers(), ["cache", "retry", "timeout"]);

    let all = StackConfig::recommended()
        .builder(None)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        all.layers(),
        [
            "redact",
            "cache",
            "rate_limit",
            "retry",
            "circuit_breaker",
            "timeout"
        ]
    );

    let err = serde_json::from_str::<StackConfig>(r#"{"cahce":{}}"#).unwrap_err();
    assert!(err.to_string().contains("cahce"), "{err}");

    let bad: StackConfig = serde_json::from_str(r#"{"retry":{"max_attempts":0}}"#).unwrap();
    let err = bad.builder(None).unwrap_err();
    assert_eq!(err.layer(), "retry");
    assert!(
        err.to_string().starts_with("invalid [retry] configuration"),
        "{err}"
    );
}

#[tokio::test]
async fn oauth2_replaces_the_static_key_and_replays_after_a_401() {
    use tower_deepseek::auth::{OAuth2Config, OAuth2Layer};
    use tower_deepseek::core::body::BufferedBody;

    let server = MockServer::builder()
        .oauth_client("stack-client", "stack-secret-0001")
        .require_auth(true)
        .start()
        .await;
    let oauth = OAuth2Layer::new(
        OAuth2Config::new(server.token_url(), "stack-client", "stack-secret-0001"),
        upstream_client::<BufferedBody>(&ClientConfig::default()),
    )
    .unwrap();
    let stack = RecommendedStack::builder()
        .bearer_auth(BearerAuthLayer::new(KEY).unwrap())
        .retry(RetryLayer::builder().build().unwrap())
        .oauth2(oauth)
        .build()
        .unwrap();
    assert_eq!(stack.layers(), ["retry", "oauth2"]);
    let svc = ServiceBuilder::new()
        .layer(stack)
        .layer(BaseUrlLayer::new(&server.url()).unwrap())
        .service(upstream_client::<StackBody>(&ClientConfig::default()));

    let res = svc.clone().oneshot(chat("one", false)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.token_fetches(), 1);
    // The token is revoked upstream: the next call gets a 401, fetches a new token and
    // replays its (buffered) body once.
    server.revoke_tokens();
    let res = svc.clone().oneshot(chat("two", false)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.token_fetches(), 2);
    let chats = server.requests_to("/chat/completions");
    assert_eq!(chats.len(), 3);
    assert_eq!(chats[1].body, chats[2].body);
    assert_ne!(chats[2].bearer(), Some(KEY));
    // The retry layer above made the replay (OAuth2 kept no copy of its own): two attempts.
    assert_eq!(res.extensions().get::<Attempts>().unwrap().count(), 2);

    // Two 401s in a row: the caller gets the second, after one refresh and one replay.
    server.enqueue_when(Match::chat(), Fault::status(401));
    server.enqueue_when(Match::chat(), Fault::status(401));
    let res = svc.oneshot(chat("three", false)).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(server.token_fetches(), 3);
    assert_eq!(server.requests_to("/chat/completions").len(), 5);
}
