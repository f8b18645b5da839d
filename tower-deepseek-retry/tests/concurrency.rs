//! Adaptive concurrency (AIMD).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::{TestBody, read_body};
use tokio::sync::mpsc::UnboundedSender;
use tower::{Layer, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer;

type Senders = Arc<Mutex<Vec<UnboundedSender<Result<Bytes, BoxError>>>>>;

/// Answers `status` with a body that stays open until its sender is dropped.
fn upstream(
    status: u16,
    senders: Senders,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<TestBody>,
    Error = BoxError,
    Future = std::future::Ready<Result<http::Response<TestBody>, BoxError>>,
> + Clone {
    tower::service_fn(move |_req: http::Request<()>| {
        let (tx, body) = TestBody::channel();
        senders.lock().unwrap().push(tx);
        std::future::ready(Ok(http::Response::builder()
            .status(status)
            .body(body)
            .unwrap()))
    })
}

#[tokio::test(start_paused = true)]
async fn permits_are_held_until_the_body_ends() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .initial(2)
        .min(1)
        .max(2)
        .build()
        .unwrap();
    let senders: Senders = Arc::default();
    let svc = layer.layer(upstream(200, senders.clone()));
    let r1 = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    let r2 = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(layer.in_flight(), 2);
    let third = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "a third request waits while two bodies are open"
    );
    // ending one body (not dropping it) releases its permit
    senders.lock().unwrap().remove(0);
    let (_, err) = read_body(r1.into_body()).await;
    assert!(err.is_none());
    let r3 = third.await.unwrap().unwrap();
    drop(r2);
    drop(r3);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wave_of_429s_halves_the_limit_once() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .initial(8)
        .min(1)
        .max(16)
        .build()
        .unwrap();
    let senders: Senders = Arc::default();
    let gate = Arc::new(tokio::sync::Barrier::new(4));
    let s2 = senders.clone();
    let inner = tower::service_fn(move |_req: http::Request<()>| {
        let gate = gate.clone();
        let (tx, body) = TestBody::channel();
        s2.lock().unwrap().push(tx);
        async move {
            gate.wait().await; // all four were sent before any 429 came back
            Ok::<_, BoxError>(http::Response::builder().status(429).body(body).unwrap())
        }
    });
    let svc = layer.layer(inner);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(()))))
        .collect();
    for t in tasks {
        drop(t.await.unwrap().unwrap());
    }
    assert_eq!(layer.limit(), 4, "halved once for the wave, not four times");
    // a new 429 (sent after the decrease) halves again, down to min
    for expected in [2, 1, 1] {
        let svc = layer.layer(upstream(429, senders.clone()));
        drop(svc.oneshot(http::Request::new(())).await.unwrap());
        assert_eq!(layer.limit(), expected);
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn successes_raise_the_limit_additively_up_to_max() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .initial(2)
        .min(1)
        .max(4)
        .build()
        .unwrap();
    let senders: Senders = Arc::default();
    let svc = layer.layer(upstream(200, senders.clone()));
    let mut limits = Vec::new();
    for _ in 0..12 {
        drop(svc.clone().oneshot(http::Request::new(())).await.unwrap());
        limits.push(layer.limit());
    }
    // 2 -> 2.5 -> 2.9 -> 3.24 ...: about +1 per window of successes
    assert_eq!(&limits[..3], &[2, 2, 3]);
    assert_eq!(*limits.last().unwrap(), 4, "capped at max");
    // four can now be in flight at once
    let open: Vec<_> = futures_join(&svc, 4).await;
    assert_eq!(layer.in_flight(), 4);
    drop(open);
    assert_eq!(layer.in_flight(), 0);
}

async fn futures_join<S>(
    svc: &S,
    n: usize,
) -> Vec<http::Response<tower_deepseek_retry::concurrency::ResponseBody<TestBody>>>
where
    S: tower::Service<
            http::Request<()>,
            Response = http::Response<tower_deepseek_retry::concurrency::ResponseBody<TestBody>>,
            Error = BoxError,
        > + Clone,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(svc.clone().oneshot(http::Request::new(())).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_decrease_while_permits_are_out_takes_them_back_as_they_return() {
    let layer = AdaptiveConcurrencyLayer::builder()
        .initial(4)
        .min(1)
        .max(8)
        .build()
        .unwrap();
    let senders: Senders = Arc::default();
    let ok = layer.layer(upstream(200, senders.clone()));
    let open = futures_join(&ok, 3).await;
    let limited = layer.layer(upstream(429, senders.clone()));
    let r = limited.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(layer.limit(), 2);
    drop(r);
    drop(open);
    assert_eq!(layer.in_flight(), 0);
    // only two fit now (500s leave the limit as it is)
    let neutral = layer.layer(upstream(500, senders.clone()));
    let two = futures_join(&neutral, 2).await;
    assert_eq!(layer.limit(), 2);
    let third = tokio::spawn(neutral.clone().oneshot(http::Request::new(())));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished());
    drop(two);
    drop(third.await.unwrap().unwrap());
}

#[test]
fn config_is_validated() {
    assert!(
        AdaptiveConcurrencyLayer::builder()
            .initial(0)
            .build()
            .is_err()
    );
    assert!(
        AdaptiveConcurrencyLayer::builder()
            .min(10)
            .initial(5)
            .build()
            .is_err()
    );
    assert!(
        AdaptiveConcurrencyLayer::builder()
            .decrease_factor(1.0)
            .build()
            .is_err()
    );
    let cfg: tower_deepseek_retry::concurrency::AdaptiveConcurrencyConfig =
        serde_json::from_str(r#"{"initial":10,"min":2,"max":50,"decrease_on_overloaded":true}"#)
            .unwrap();
    assert!(AdaptiveConcurrencyLayer::from_config(cfg).is_ok());
}
