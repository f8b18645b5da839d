//! A failsafe policy as the trip rule, with our half-open rule kept.
#![cfg(feature = "failsafe")]

mod support;

use std::time::Duration;

use failsafe::backoff;
use failsafe::failure_policy::consecutive_failures;
use tokio::time::advance;
use tower::Layer;
use tower_deepseek_breaker::{CircuitBreakerLayer, State};

use support::{Answer, answer};

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_half_open_stays_resilience4j() {
    let layer = CircuitBreakerLayer::builder()
        .permitted_calls_in_half_open(2)
        .failure_policy(|| consecutive_failures(3, backoff::constant(Duration::from_secs(10))))
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(support::scripted());
    // The 50 % rate over 100 calls would never trip here; 3 in a row does.
    for _ in 0..2 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    answer(&mut svc, Answer::Ok).await.unwrap();
    for _ in 0..2 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    assert_eq!(h.state(), State::Closed);
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.state(), State::Open);
    assert_eq!(
        h.retry_after(),
        Some(Duration::from_secs(10)),
        "the policy's backoff"
    );
    advance(Duration::from_secs(10)).await;
    assert_eq!(h.state(), State::HalfOpen);
    // failsafe would close on the first success; we wait for both probes.
    answer(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(h.state(), State::HalfOpen);
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.state(), State::Open, "1 of 2 probes failed: 50 %");
}
