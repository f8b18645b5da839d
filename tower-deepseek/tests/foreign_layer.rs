//! A user's own body-rewriting layer, knowing nothing of our protocol, between the breaker
//! (which classifies the answer and shares its verdict) and the layers above that act on a
//! verdict (retry, cache, audit). The verdict the breaker shares describes the bytes it passed
//! up; the layers above see other bytes, so they must not act on it (ARCHITECTURE.md, "the
//! protocol between layers").

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::redact::audit::{AuditLayer, WriterSink};
use tower_deepseek::{CacheLayer, CircuitBreakerLayer, RetryLayer};

const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"a whole answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;

/// The upstream: a whole JSON answer, every time; counts its calls.
fn upstream<B: Send + 'static>(
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(move |_req: Request<B>| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                .unwrap())
        }
    })
}

/// The foreign layer: cuts every data frame in half (a new `Bytes` of other bytes), as a
/// user's own rewriting layer might; it keeps the response's extensions, as
/// `Response::map` does.
fn cut_in_half<B>(
    res: Response<B>,
) -> Response<impl http_body::Body<Data = Bytes, Error = B::Error>>
where
    B: http_body::Body<Data = Bytes>,
{
    res.map(|b| b.map_frame(|f| f.map_data(|d: Bytes| Bytes::copy_from_slice(&d[..d.len() / 2]))))
}

/// The audit layer, writing to `log`: it asks the layers below for their facts, so the
/// breaker shares its verdict.
fn audit(log: &WriterSink<Vec<u8>>) -> AuditLayer {
    AuditLayer::builder()
        .hmac_key(b"foreign-layer-audit-key-0123".to_vec())
        .sink(log.clone())
        .build()
        .unwrap()
}

fn chat() -> Request<Full<Bytes>> {
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        )))
        .unwrap()
}

#[tokio::test]
async fn cache_and_audit_judge_the_bytes_they_see_not_the_breakers() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let log = WriterSink::new(Vec::new());
    let svc = ServiceBuilder::new()
        .layer(audit(&log))
        .layer(CacheLayer::new())
        .map_response(cut_in_half)
        .layer(CircuitBreakerLayer::new())
        .service(upstream(calls.clone()));

    for _ in 0..2 {
        let res = svc.clone().oneshot(chat()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_ne!(
            res.headers().get("x-cache").map(|v| v.to_str().unwrap()),
            Some("hit"),
            "a cut answer was stored and served as a hit"
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), ANSWER.len() / 2);
    }
    // Nothing was served from the cache: both calls went upstream.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The audit records say what the caller got: a cut answer.
    let records = log.with_inner(|v| String::from_utf8(v.clone()).unwrap());
    assert_eq!(records.lines().count(), 2, "{records}");
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["outcome"], "incomplete", "{r}");
    }
}

#[tokio::test]
async fn retry_judges_the_bytes_it_sees_not_the_breakers() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let log = WriterSink::new(Vec::new());
    let svc = ServiceBuilder::new()
        .layer(audit(&log))
        .layer(RetryLayer::builder().build().unwrap())
        .map_response(cut_in_half)
        .layer(CircuitBreakerLayer::new())
        .service(upstream(calls.clone()));

    // Every answer the retry layer sees is cut: it is not a success, so it retries, and in the
    // end the caller gets an error rather than a cut answer dressed as a whole one.
    let res = svc.oneshot(chat()).await;
    let outcome = match res {
        Ok(res) => res.into_body().collect().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "a cut answer reached the caller as a clean success"
    );
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) > 1);
}

/// The request side: a user's layer below the redactor rewrites the body (a new buffer),
/// keeping the request's extensions and so the redactor's view of the body it sent, without
/// knowing of views. The cache key and the rate limiter's estimate must be about the body
/// that goes on, not the view's (core's `ChatView::describes`).
#[tokio::test]
async fn cache_key_and_token_estimate_are_about_the_body_sent_not_a_stale_view() {
    use tower_deepseek::core::body::BufferedBody;
    use tower_deepseek::{RateLimitLayer, RedactLayer};

    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = |prompt: &str, max_tokens: u64| {
        serde_json::json!({
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        })
        .to_string()
    };
    // The foreign layer: the body named by the `x-rewrite` header replaces the caller's.
    let rewrite = |req: Request<BufferedBody>| {
        let (parts, _) = req.into_parts();
        let to = parts.headers["x-rewrite"].to_str().unwrap().to_owned();
        Request::from_parts(parts, BufferedBody::new(to))
    };
    let svc = ServiceBuilder::new()
        .layer(RedactLayer::new())
        .map_request(rewrite)
        .layer(CacheLayer::new())
        .layer(
            RateLimitLayer::builder()
                .tokens_per_minute(1_000)
                .build()
                .unwrap(),
        )
        .service(upstream(calls.clone()));
    let call = |from: String, to: String| {
        let svc = svc.clone();
        async move {
            let req = Request::post("/chat/completions")
                .header("content-type", "application/json")
                .header("x-rewrite", to)
                .body(Full::new(Bytes::from(from)))
                .unwrap();
            match svc.oneshot(req).await {
                Ok(res) => {
                    let hit = res.headers()["x-cache"].to_str().unwrap().to_owned();
                    res.into_body().collect().await.unwrap();
                    Ok(hit)
                }
                Err(e) => Err(e),
            }
        }
    };
    let calls_now = || calls.load(std::sync::atomic::Ordering::SeqCst);

    // The same caller's body, rewritten to two different bodies: two keys, two misses. (The
    // redactor's view of the caller's body would have given one key, and a wrong hit.)
    assert_eq!(call(body("a", 10), body("x", 10)).await.unwrap(), "miss");
    assert_eq!(call(body("a", 10), body("y", 10)).await.unwrap(), "miss");
    assert_eq!(calls_now(), 2);
    // Another caller's body, rewritten to the first one: the key of the body sent, a hit.
    assert_eq!(call(body("b", 10), body("x", 10)).await.unwrap(), "hit-l1");
    assert_eq!(calls_now(), 2);

    // The estimate is about the body sent too: a small request rewritten to one whose
    // `max_tokens` is over the limit's whole minute is refused, and the other way round passes.
    let refused = call(body("c", 10), body("z", 100_000)).await.unwrap_err();
    assert!(
        refused.is::<tower_deepseek::retry::RequestTooLarge>(),
        "not refused for its size: {refused}"
    );
    assert_eq!(
        call(body("d", 100_000), body("w", 10)).await.unwrap(),
        "miss"
    );
    assert_eq!(calls_now(), 3);
}
