//! Over real loopback HTTP: a hyper-util client behind the breaker, against the testkit.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_breaker::{BreakerOpen, CircuitBreakerLayer, State};
use tower_deepseek_testkit::{Fault, MockServer};

const STREAM: &str = r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hello there"}],"stream":true}"#;
const PLAIN: &str = r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hello"}]}"#;

fn chat(server: &MockServer, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(server.uri("/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn broken_streams_after_a_200_count_as_failures_client_errors_do_not() {
    let server = MockServer::start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(4)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(client);

    for code in [400, 401, 402, 422] {
        server.enqueue(Fault::status(code));
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(chat(&server, PLAIN))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(h.metrics().buffered_calls, 0, "client errors move nothing");

    // A good stream is a success, recorded at its end.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&server, STREAM))
        .await
        .unwrap();
    assert_eq!(h.metrics().buffered_calls, 0);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let m = h.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (1, 0));

    // Reset after two events: the caller sees the error and the breaker a failure.
    server.enqueue(Fault::reset_mid_stream(2));
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&server, STREAM))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err());
    let m = h.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (2, 1));

    // Clean end without [DONE]: also a failure.
    server.enqueue(Fault::cut_without_done(2));
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&server, STREAM))
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let m = h.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (3, 2));

    // A 200 with nothing in it.
    server.enqueue(Fault::empty_200());
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&server, PLAIN))
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(h.state(), State::Open, "3 failures of 4");
    let chats = server.chat_count();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&server, PLAIN))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<BreakerOpen>().is_some());
    assert_eq!(server.chat_count(), chats, "a rejected call is not sent");
    server.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_a_failure() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(1)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(client);
    let req = Request::post(format!("http://{addr}/chat/completions"))
        .body(Full::new(Bytes::from_static(PLAIN.as_bytes())))
        .unwrap();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(err.downcast_ref::<BreakerOpen>().is_none());
    assert_eq!(h.state(), State::Open);
}

mod failover {
    use std::time::Duration;

    use super::*;
    use tower_deepseek_breaker::{Endpoint, FailoverLayer};
    use tower_deepseek_core::body::BufferedBody;
    use tower_deepseek_testkit::Match;

    fn relative_chat() -> Request<Full<Bytes>> {
        Request::post("/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(PLAIN.as_bytes())))
            .unwrap()
    }

    fn layer(a: &MockServer, b: &MockServer) -> FailoverLayer {
        FailoverLayer::builder()
            .endpoint(Endpoint::new(a.url().parse().unwrap()))
            .endpoint(Endpoint::new(b.url().parse().unwrap()))
            .breaker(
                CircuitBreakerLayer::builder()
                    .count_based_window(2)
                    .permitted_calls_in_half_open(1)
                    .wait_duration_in_open(Duration::from_millis(300)),
            )
            .build()
            .unwrap()
    }

    async fn ok<S>(svc: &mut S)
    where
        S: Service<
                Request<Full<Bytes>>,
                Response = http::Response<
                    tower_deepseek_breaker::ResponseBody<hyper::body::Incoming>,
                >,
                Error = tower_deepseek_breaker::BoxError,
            >,
    {
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(relative_chat())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("Echo: hello"));
    }

    #[tokio::test]
    async fn an_overloaded_zone_loses_its_traffic_and_gets_it_back() {
        let (a, b) = (MockServer::start().await, MockServer::start().await);
        let layer = layer(&a, &b);
        let handles = layer.handles();
        let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
        let mut svc = layer.layer(client);
        a.always(Match::chat(), Fault::status(503));
        for _ in 0..6 {
            ok(&mut svc).await;
        }
        assert_eq!(handles[0].1.state(), State::Open);
        assert_eq!(a.chat_count(), 2, "two 503s opened a's breaker");
        assert_eq!(b.chat_count(), 6, "every call was answered by b");
        a.clear_faults();
        tokio::time::sleep(Duration::from_millis(350)).await;
        for _ in 0..6 {
            ok(&mut svc).await;
        }
        assert_eq!(handles[0].1.state(), State::Closed);
        assert!(a.chat_count() >= 4, "traffic came back to a");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_dead_zone_is_skipped_without_the_caller_noticing() {
        let (a, b) = (MockServer::start().await, MockServer::start().await);
        let layer = layer(&a, &b);
        let handles = layer.handles();
        a.shutdown().await;
        let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
        let mut svc = layer.layer(client);
        for _ in 0..5 {
            ok(&mut svc).await;
        }
        assert_eq!(handles[0].1.state(), State::Open);
        assert_eq!(b.chat_count(), 5);
        b.shutdown().await;
    }
}

mod slow_failover {
    use std::time::Duration;

    use super::*;
    use tower_deepseek_breaker::{Endpoint, FailoverLayer};
    use tower_deepseek_core::body::BufferedBody;
    use tower_deepseek_testkit::Match;

    #[tokio::test]
    async fn a_slow_zone_loses_its_traffic_and_gets_it_back() {
        let (a, b) = (MockServer::start().await, MockServer::start().await);
        let layer = FailoverLayer::builder()
            .endpoint(Endpoint::new(a.url().parse().unwrap()))
            .endpoint(Endpoint::new(b.url().parse().unwrap()))
            .latency_threshold(Duration::from_millis(200))
            // Long enough that the six fast calls below finish well inside it even on a loaded
            // CI machine (a probe to the slow zone would count as its traffic).
            .probe_interval(Duration::from_millis(3000))
            .build()
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
        let mut svc = layer.layer(client);
        let mut call = async || {
            let req = Request::post("/chat/completions")
                .body(Full::new(Bytes::from_static(PLAIN.as_bytes())))
                .unwrap();
            let resp = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                .await
                .unwrap()
                .call(req)
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        };
        a.always(Match::chat(), Fault::ok().delay(Duration::from_millis(400)));
        call().await; // a (slow)
        call().await; // b
        assert_eq!(a.chat_count(), 1);
        for _ in 0..6 {
            call().await;
        }
        assert_eq!(a.chat_count(), 1, "a slow endpoint gets no traffic");
        assert_eq!(b.chat_count(), 7);
        // a is fast again; after the probe interval a probe finds out and restores it.
        a.clear_faults();
        tokio::time::sleep(Duration::from_millis(3100)).await;
        for _ in 0..6 {
            call().await;
        }
        assert!(a.chat_count() >= 3, "traffic came back: {}", a.chat_count());
        a.shutdown().await;
        b.shutdown().await;
    }
}
