//! Over real loopback HTTP against the testkit's DeepSeek mock: retry + timeouts + hyper-util.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::read_body;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::classify::FailureClass;
use tower_deepseek_core::error::IncompleteResponse;
use tower_deepseek_retry::timeout::TimeoutLayer;
use tower_deepseek_retry::{Attempts, Backoff, RetryLayer, Schedule, StopReason};
use tower_deepseek_testkit::{Fault, MockServer};

type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Full<Bytes>>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn chat(server: &MockServer, stream: bool) -> http::Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"deepseek-chat","stream":{stream},"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    http::Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn retry() -> RetryLayer {
    RetryLayer::builder()
        .rng_seed(3)
        // short real-time waits for a real socket
        .on_bad_body(Schedule::new(Backoff::fixed(Duration::from_millis(10))))
        .build()
        .unwrap()
}

#[tokio::test]
async fn keepalives_longer_than_the_first_token_timeout_are_retried() {
    let server = MockServer::start().await;
    server.enqueue(Fault::keepalive_comments(40, Duration::from_millis(50)));
    let svc = ServiceBuilder::new()
        .layer(retry())
        .layer(
            TimeoutLayer::builder()
                .first_token(Duration::from_millis(300))
                .build()
                .unwrap(),
        )
        .service(client());
    let start = Instant::now();
    let resp = svc.oneshot(chat(&server, true)).await.unwrap();
    let a = resp.extensions().get::<Attempts>().unwrap().clone();
    assert_eq!(a.failures(), &[FailureClass::Timeout]);
    assert_eq!(a.count(), 2);
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none(), "{err:?}");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("Echo: hello") || text.contains("Echo"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(
        !text.contains("keep-alive"),
        "the cut attempt's bytes never reach the caller"
    );
    assert_eq!(server.chat_count(), 2);
    // cut at the first-token timeout, not after the whole second of keep-alives
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        start.elapsed() < Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn blank_lines_then_empty_200_is_retried() {
    let server = MockServer::start().await;
    server.enqueue(Fault::blank_lines(3, Duration::from_millis(10)).then_empty());
    let svc = ServiceBuilder::new().layer(retry()).service(client());
    let resp = svc.oneshot(chat(&server, false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.extensions().get::<Attempts>().unwrap().failures(),
        &[FailureClass::EmptyBody]
    );
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    assert_eq!(server.chat_count(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn reset_after_the_first_byte_reached_the_caller_is_not_retried() {
    let server = MockServer::start().await;
    server.enqueue(Fault::reset_mid_stream(2));
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .retry_after_send(true)
                .build()
                .unwrap(),
        )
        .service(client());
    let resp = svc.oneshot(chat(&server, true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_body(resp.into_body()).await;
    assert!(String::from_utf8_lossy(&body).contains("data: {"));
    assert!(err.is_some(), "the caller's body must end with an error");
    assert_eq!(
        server.chat_count(),
        1,
        "never retried once bytes were forwarded"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn stream_cut_without_done_ends_with_an_error() {
    let server = MockServer::start().await;
    server.enqueue(Fault::cut_without_done(2));
    let svc = ServiceBuilder::new().layer(retry()).service(client());
    let resp = svc.oneshot(chat(&server, true)).await.unwrap();
    let (_, err) = read_body(resp.into_body()).await;
    assert!(
        err.expect("not a silent truncation")
            .is::<IncompleteResponse>()
    );
    assert_eq!(server.chat_count(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn status_codes_over_the_wire() {
    let server = MockServer::start().await;
    // 402 is never retried
    server.enqueue(Fault::status(402));
    let svc = ServiceBuilder::new().layer(retry()).service(client());
    let resp = svc.clone().oneshot(chat(&server, false)).await.unwrap();
    assert_eq!(resp.status(), 402);
    assert_eq!(
        resp.extensions().get::<Attempts>().unwrap().stop_reason(),
        StopReason::NotRetryable
    );
    assert_eq!(server.chat_count(), 1);

    // 502 twice, then the answer; 429 with Retry-After: 0 (backoff at most 1 s)
    server.clear_requests();
    server.enqueue(Fault::status(502));
    server.enqueue(Fault::status(502));
    let resp = svc.clone().oneshot(chat(&server, false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(server.chat_count(), 3);
    // the same body was sent each time
    let bodies: Vec<_> = server
        .requests_to("/chat/completions")
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));

    // a reset before headers (after sending) is not retried by default
    server.clear_requests();
    server.enqueue(Fault::reset_before_headers());
    let err = svc.clone().oneshot(chat(&server, false)).await.unwrap_err();
    assert_eq!(
        tower_deepseek_core::classify::Classifier::new().classify_error(&*err),
        FailureClass::Transport
    );
    assert_eq!(server.chat_count(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn connect_refused_is_retried_then_typed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .on_connect_error(Schedule::new(Backoff::Immediate))
                .build()
                .unwrap(),
        )
        .service(client());
    let req = http::Request::post(format!("http://127.0.0.1:{port}/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let e = err
        .downcast_ref::<tower_deepseek_retry::RetriesExhausted>()
        .expect("typed");
    assert_eq!(e.attempts(), 3);
    assert_eq!(e.reason(), StopReason::MaxAttempts);
    assert_eq!(e.last_class(), &FailureClass::Connect);
}
