//! An answer is judged once through the recommended stack: the breaker, the lowest layer that
//! classifies it, publishes its verdict, and retry, the rate limiter's settle, the cache and
//! audit read it instead of parsing the same bytes again (core's `ShareVerdict`,
//! `SharedOutcome`, `EndJudge`). Counted with core's `scan-counter` feature: the answer bytes
//! every classifier scanned. One test in this binary, so no other call moves the counter.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_deepseek::core::classify::bytes_scanned;
use tower_deepseek::redact::audit::WriterSink;
use tower_deepseek::stack::{RecommendedStack, StackBody, StackBuilder};
use tower_deepseek::{
    AuditLayer, BearerAuthLayer, CacheLayer, CircuitBreakerLayer, RateLimitLayer, RedactLayer,
    RetryLayer, TimeoutLayer,
};

/// A 2 KB JSON answer, with usage.
fn json_answer() -> Bytes {
    let content = "x".repeat(1900);
    Bytes::from(format!(
        r#"{{"id":"c1","object":"chat.completion","created":1,"model":"deepseek-chat","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":5,"completion_tokens":300,"total_tokens":305}}}}"#
    ))
}

/// A stream of 40 events, usage in the last one, then `[DONE]`: one frame per event, as
/// DeepSeek sends them.
fn sse_answer() -> Vec<Bytes> {
    let mut events: Vec<Bytes> = (0..40)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"c1\",\"model\":\"deepseek-chat\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}}}}]}}\n\n"
            ))
        })
        .collect();
    events.push(Bytes::from_static(b"data: {\"id\":\"c1\",\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":40,\"total_tokens\":45}}\n\n"));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// A body of the given frames, in order.
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn layers(b: StackBuilder) -> StackBuilder {
    b.redact(RedactLayer::new())
        .cache(CacheLayer::new())
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

/// Bytes scanned by the classifiers for one call of `stack` answered with `answer`.
async fn scanned_for_one_call(
    stack: RecommendedStack,
    answer: Vec<Bytes>,
    stream: bool,
    prompt: &str,
) -> u64 {
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let upstream = tower::service_fn(move |_req: http::Request<StackBody>| {
        let answer = answer.clone();
        async move {
            Ok::<_, tower_deepseek::BoxError>(
                http::Response::builder()
                    .header("content-type", content_type)
                    .body(Frames(answer.into()))
                    .unwrap(),
            )
        }
    });
    let svc = stack.layer(upstream);
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
        "temperature": 0,
    });
    let req = http::Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let before = bytes_scanned();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    bytes_scanned() - before
}

#[tokio::test]
async fn an_answer_is_scanned_once_with_and_without_audit() {
    for audit in [false, true] {
        for stream in [false, true] {
            let answer = if stream {
                sse_answer()
            } else {
                vec![json_answer()]
            };
            let len: u64 = answer.iter().map(|f| f.len() as u64).sum();
            // Before it hands a stream over, the retry layer reads its first event itself: its
            // decision is about bytes it saw (a layer between could have rewritten them).
            let first_event = if stream { answer[0].len() as u64 } else { 0 };
            let mut b = RecommendedStack::builder();
            if audit {
                b = b.audit(
                    AuditLayer::builder()
                        .hmac_key(b"parse-once-audit-key-0123456".to_vec())
                        .sink(WriterSink::new(std::io::sink()))
                        .build()
                        .unwrap(),
                );
            }
            let stack = layers(b).build().unwrap();
            let n = scanned_for_one_call(
                stack,
                answer,
                stream,
                &format!("audit {audit} stream {stream}"),
            )
            .await;
            // Once: the breaker's scan. (Before the verdict was shared without audit, retry,
            // the rate limiter's settle and the cache each parsed the answer again.)
            assert_eq!(
                n,
                len + first_event,
                "audit: {audit}, stream: {stream}: {n} bytes scanned for a {len}-byte answer"
            );
        }
    }
}
