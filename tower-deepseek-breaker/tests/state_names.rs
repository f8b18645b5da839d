//! `State`'s names and `Display` (the `state` label of `deepseek_breaker_state`). Added for a
//! mutant of `state.rs` that `cargo mutants` found alive (`Display` returning nothing).

use tower_deepseek_breaker::State;

#[test]
fn every_state_displays_its_label() {
    let expected = [
        (State::Closed, "closed"),
        (State::Open, "open"),
        (State::HalfOpen, "half_open"),
        (State::Disabled, "disabled"),
        (State::ForcedOpen, "forced_open"),
        (State::MetricsOnly, "metrics_only"),
    ];
    for (state, name) in expected {
        assert_eq!(state.as_str(), name);
        assert_eq!(state.to_string(), name);
    }
}

/// An outcome of a call admitted before the breaker opened and closed again belongs to the old
/// generation: it is not counted in the new window. (Mutants of `pack`/`unpack` that lose the generation count it,
/// and a window of one call then opens on that stale failure.)
#[tokio::test(start_paused = true)]
async fn an_outcome_from_an_older_generation_is_not_counted() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, Service, ServiceExt};
    use tower_deepseek_breaker::CircuitBreakerLayer;

    let layer = CircuitBreakerLayer::builder()
        .count_based_window(1)
        .minimum_number_of_calls(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mock, mut upstream) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mut svc = layer.layer(mock);
    let fut = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::new(Bytes::new())));
    let (_, reply) = upstream.next_request().await.unwrap();
    handle.transition_to_open();
    handle.transition_to_closed();
    let answer = tokio::spawn(fut);
    reply.send_response(
        Response::builder()
            .status(500)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    let resp = answer.await.unwrap().unwrap();
    assert_eq!(resp.status(), 500);
    drop(resp);
    assert_eq!(handle.state(), State::Closed, "a stale failure opened it");
    assert_eq!(handle.metrics().failed_calls, 0);
}
