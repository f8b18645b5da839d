//! A request is parsed once through the recommended stack: the first layer that reads the
//! chat request (the redactor, else the cache) parses it into core's `ChatView` and leaves it
//! in the extensions; the cache key, the rate limiter's token estimate, the keyed breaker's
//! model and audit's model of a call without one read that view. When the redactor masks
//! something, it builds the view of the masked body as it writes it, so the layers below read
//! the view of what is sent without parsing it again. Counted with core's `scan-counter`
//! feature (`view::requests_parsed`). One test in this binary, so no other call moves the
//! counter.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_deepseek::core::view::requests_parsed;
use tower_deepseek::redact::audit::WriterSink;
use tower_deepseek::stack::{RecommendedStack, StackBody, StackBuilder};
use tower_deepseek::{
    AuditLayer, BearerAuthLayer, CacheLayer, CircuitBreakerLayer, RateLimitLayer, RedactLayer,
    RetryLayer, TimeoutLayer,
};

/// A JSON answer; without `model` when `model` is false (audit then takes the model of the
/// request, from the view).
fn answer(model: bool) -> Bytes {
    let model = if model {
        r#""model":"deepseek-chat","#
    } else {
        ""
    };
    Bytes::from(format!(
        r#"{{"id":"c1","object":"chat.completion","created":1,{model}"choices":[{{"index":0,"message":{{"role":"assistant","content":"fine"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}}}"#
    ))
}

fn layers(b: StackBuilder, redact: bool) -> StackBuilder {
    let b = if redact {
        b.redact(RedactLayer::new())
    } else {
        b
    };
    b.cache(CacheLayer::new())
        .rate_limit(
            RateLimitLayer::builder()
                .tokens_per_minute(1_000_000)
                .build()
                .unwrap(),
        )
        .retry(RetryLayer::builder().build().unwrap())
        .circuit_breaker(CircuitBreakerLayer::new())
        .bearer_auth(BearerAuthLayer::new("sk-parse-once").unwrap())
        .timeout(TimeoutLayer::builder().build().unwrap())
}

/// Requests parsed for one call of `stack` with `prompt`; the body that reached the
/// upstream.
async fn parsed_for_one_call(
    stack: RecommendedStack,
    prompt: &str,
    model_in_answer: bool,
) -> (u64, Bytes) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let upstream = tower::service_fn(move |req: http::Request<StackBody>| {
        let tx = tx.clone();
        async move {
            let sent = req.into_body().collect().await?.to_bytes();
            tx.send(sent).unwrap();
            Ok::<_, tower_deepseek::BoxError>(
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(answer(model_in_answer)))
                    .unwrap(),
            )
        }
    });
    let svc = stack.layer(upstream);
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 64,
    });
    let req = http::Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let before = requests_parsed();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    let n = requests_parsed() - before;
    (n, rx.recv().await.expect("the call reached the upstream"))
}

#[tokio::test]
async fn a_request_is_parsed_once_with_and_without_audit() {
    for audit in [false, true] {
        for redact in [true, false] {
            for pii in [false, true] {
                for model_in_answer in [true, false] {
                    let mut b = RecommendedStack::builder();
                    let log = WriterSink::new(Vec::new());
                    if audit {
                        b = b.audit(
                            AuditLayer::builder()
                                .hmac_key(b"parse-once-audit-key-0123456".to_vec())
                                .sink(log.clone())
                                .build()
                                .unwrap(),
                        );
                    }
                    let stack = layers(b, redact).build().unwrap();
                    // A fresh stack (and cache) per case, so every call goes upstream.
                    let prompt = if pii {
                        "call me at 13800138000 or alice@example.com"
                    } else {
                        "what is a monad?"
                    };
                    let (n, sent) = parsed_for_one_call(stack, prompt, model_in_answer).await;
                    let case = format!(
                        "audit {audit}, redact {redact}, pii {pii}, model in answer {model_in_answer}"
                    );
                    // Once: by the redactor (or, without it, the cache); the layers below and
                    // audit read the view. (Before the shared view, the redactor, the cache key
                    // and the rate limiter each parsed the request, and audit parsed it again
                    // when the answer named no model: 3 or 4 times.)
                    assert_eq!(n, 1, "{case}: the request was parsed {n} times");
                    let sent = String::from_utf8(sent.to_vec()).unwrap();
                    assert_eq!(
                        sent.contains("13800138000"),
                        pii && !redact,
                        "{case}: {sent}"
                    );
                    if audit {
                        let record = log.with_inner(|w| String::from_utf8(w.clone()).unwrap());
                        assert!(
                            record.contains(r#""model":"deepseek-chat""#),
                            "{case}: audit knows the model: {record}"
                        );
                    }
                }
            }
        }
    }
}
