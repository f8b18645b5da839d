//! The acceptance scenarios of issue 6, in Resilience4j terms, with paused time.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_breaker::{BreakerOpen, CircuitBreakerLayer, DefaultOutcomePolicy, State};
use tower_deepseek_core::protocol::CollectCallFacts;

use support::{Answer, answer, call, is_breaker_open, scripted, slow_request};

type Mock = tower_test::mock::Mock<Request<Full<Bytes>>, Response<Full<Bytes>>>;
type MockHandle = tower_test::mock::Handle<Request<Full<Bytes>>, Response<Full<Bytes>>>;

fn ok_json() -> Response<Full<Bytes>> {
    support::response("ok").unwrap()
}

fn status(code: u16) -> Response<Full<Bytes>> {
    support::response(&code.to_string()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn window_10_opens_at_exactly_the_5th_consecutive_failure_after_1000_successes() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(scripted());
    for _ in 0..1000 {
        answer(&mut svc, Answer::Ok).await.unwrap();
    }
    assert_eq!(handle.metrics().buffered_calls, 10);
    for i in 1..=4 {
        assert_eq!(
            answer(&mut svc, Answer::Status(500))
                .await
                .unwrap()
                .as_u16(),
            500
        );
        assert_eq!(handle.state(), State::Closed, "still closed after {i}");
        assert_eq!(handle.metrics().failed_calls, i);
    }
    answer(&mut svc, Answer::Status(503)).await.unwrap();
    assert_eq!(handle.state(), State::Open, "open at the 5th failure");
    let err = answer(&mut svc, Answer::Ok).await.unwrap_err();
    let open = err.downcast_ref::<BreakerOpen>().expect("typed rejection");
    assert_eq!(open.retry_after(), Duration::from_secs(30));
    assert_eq!(handle.metrics().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn window_100_minimum_5_evaluates_from_the_5th_call() {
    let build = || {
        let layer = CircuitBreakerLayer::builder()
            .count_based_window(100)
            .minimum_number_of_calls(5)
            .build()
            .unwrap();
        let h = layer.handle();
        (layer.layer(scripted()), h)
    };
    // Four failures: 100 %, but not evaluated yet.
    let (mut svc, h) = build();
    for _ in 0..4 {
        answer(&mut svc, Answer::Status(502)).await.unwrap();
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.metrics().failure_rate, None);
    answer(&mut svc, Answer::Status(502)).await.unwrap();
    assert_eq!(h.state(), State::Open);

    // F F F S (75 % unevaluated) then S: 60 % at the 5th call opens.
    let (mut svc, h) = build();
    for a in [Answer::Reset, Answer::Reset, Answer::Reset, Answer::Ok] {
        let _ = answer(&mut svc, a).await;
    }
    assert_eq!(h.state(), State::Closed);
    answer(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.metrics().state, State::Open);

    // S S S F F: 40 % at the 5th stays closed; one more failure is 50 %.
    let (mut svc, h) = build();
    for a in [Answer::Ok, Answer::Ok, Answer::Ok] {
        answer(&mut svc, a).await.unwrap();
    }
    for _ in 0..2 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    assert_eq!(h.metrics().failure_rate, Some(40.0));
    assert_eq!(h.state(), State::Closed);
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.state(), State::Open);
}

/// A breaker already half-open, over a tower-test mock.
fn half_open_breaker() -> (
    tower_deepseek_breaker::CircuitBreaker<Mock>,
    MockHandle,
    tower_deepseek_breaker::BreakerHandle,
) {
    let layer = CircuitBreakerLayer::builder()
        .automatic_transition(false)
        .build()
        .unwrap();
    let h = layer.handle();
    let (mock, handle) = tower_test::mock::pair();
    h.transition_to_open();
    (layer.layer(mock), handle, h)
}

fn req() -> Request<Full<Bytes>> {
    support::request(Answer::Ok)
}

/// Readies the service, then calls it (the mock insists on `poll_ready` first).
async fn start(
    svc: &mut tower_deepseek_breaker::CircuitBreaker<Mock>,
) -> tower_deepseek_core::trace::InSpan<
    tower_deepseek_breaker::ResponseFuture<<Mock as Service<Request<Full<Bytes>>>>::Future>,
> {
    svc.ready().await.unwrap().call(req())
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_5_probes_and_2_of_5_failures_close() {
    let (mut svc, mut upstream, h) = half_open_breaker();
    advance(Duration::from_secs(30)).await;
    assert_eq!(h.state(), State::HalfOpen);
    let mut probes = Vec::new();
    for _ in 0..5 {
        probes.push(task::spawn(start(&mut svc).await));
    }
    for p in probes.iter_mut() {
        assert_pending!(p.poll());
    }
    // The 6th is rejected at once, with a typed error.
    let err = start(&mut svc).await.await.unwrap_err();
    assert!(is_breaker_open(&err));
    assert_eq!(h.metrics().half_open_in_flight, 5);
    // 2 failures, 3 successes.
    for i in 0..5 {
        let (_, send) = upstream.next_request().await.unwrap();
        send.send_response(if i < 2 { status(500) } else { ok_json() });
    }
    for p in probes.iter_mut() {
        let resp = assert_ready!(p.poll()).unwrap();
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_3_of_5_failures_reopen() {
    let (mut svc, mut upstream, h) = half_open_breaker();
    advance(Duration::from_secs(30)).await;
    let mut probes = Vec::new();
    for _ in 0..5 {
        probes.push(task::spawn(start(&mut svc).await));
    }
    for i in 0..5 {
        let (_, send) = upstream.next_request().await.unwrap();
        send.send_response(if i < 3 { status(503) } else { ok_json() });
    }
    for (i, p) in probes.iter_mut().enumerate() {
        let resp = assert_ready!(p.poll()).unwrap();
        resp.into_body().collect().await.unwrap();
        if i < 4 {
            assert_eq!(h.state(), State::HalfOpen, "decided only at the 5th");
        }
    }
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_permit() {
    let (mut svc, mut upstream, h) = half_open_breaker();
    advance(Duration::from_secs(30)).await;
    let mut probes = Vec::new();
    for _ in 0..5 {
        probes.push(task::spawn(start(&mut svc).await));
    }
    for p in probes.iter_mut() {
        assert_pending!(p.poll());
    }
    assert!(is_breaker_open(&start(&mut svc).await.await.unwrap_err()));
    // The caller goes away before the head arrives.
    drop(probes.pop());
    assert_eq!(h.metrics().half_open_in_flight, 4);
    let mut sixth = task::spawn(start(&mut svc).await);
    assert_pending!(sixth.poll());
    // A probe whose 2xx body is dropped unread also gives its permit back, recording nothing.
    // 4 live probes, the cancelled one (already sent), the 6th.
    for _ in 0..6 {
        let (_, send) = upstream.next_request().await.unwrap();
        send.send_response(ok_json());
    }
    let resp = assert_ready!(probes[0].poll()).unwrap();
    drop(resp);
    assert_eq!(h.metrics().buffered_calls, 0);
    assert_eq!(h.metrics().half_open_in_flight, 4);
    let mut seventh = task::spawn(start(&mut svc).await);
    assert_pending!(seventh.poll());
    let (_, send) = upstream.next_request().await.unwrap();
    send.send_response(ok_json());
    for p in probes[1..].iter_mut().chain([&mut sixth, &mut seventh]) {
        let resp = assert_ready!(p.poll()).unwrap();
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_moves_to_half_open_after_exactly_the_wait_without_traffic() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(2)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    for _ in 0..2 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    assert_eq!(h.state(), State::Open);
    advance(Duration::from_millis(29_999)).await;
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.retry_after(), Some(Duration::from_millis(1)));
    advance(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_its_head_is_a_failure_and_client_errors_move_nothing() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(4)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    for code in [400, 401, 402, 422, 429, 404, 403] {
        answer(&mut svc, Answer::Status(code)).await.unwrap();
    }
    let m = h.metrics();
    assert_eq!((m.buffered_calls, m.state), (0, State::Closed));
    // The head says 200; the outcome waits for the body's end.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(support::request(Answer::CutStream))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.body().is_observed());
    assert_eq!(h.metrics().buffered_calls, 0);
    resp.into_body().collect().await.unwrap();
    let m = h.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (1, 1));
    answer(&mut svc, Answer::Stream).await.unwrap();
    assert_eq!(h.metrics().failed_calls, 1);
    assert_eq!(h.metrics().buffered_calls, 2);
    answer(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(h.state(), State::Closed, "1 of 3 failed");
    answer(&mut svc, Answer::CutStream).await.unwrap();
    assert_eq!(h.state(), State::Open, "2 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_by_slow_call_rate() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(4)
        .slow_call_duration_threshold(Duration::from_secs(2))
        .slow_call_rate_threshold(75.0)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    call(&mut svc, slow_request(Answer::Ok, Duration::from_secs(1)))
        .await
        .unwrap();
    for _ in 0..2 {
        call(&mut svc, slow_request(Answer::Ok, Duration::from_secs(3)))
            .await
            .unwrap();
    }
    call(&mut svc, slow_request(Answer::Ok, Duration::from_secs(1)))
        .await
        .unwrap();
    let m = h.metrics();
    assert_eq!((m.slow_calls, m.failed_calls), (2, 0));
    assert_eq!(m.slow_call_rate, Some(50.0));
    assert_eq!(h.state(), State::Closed);
    call(&mut svc, slow_request(Answer::Ok, Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(h.state(), State::Open, "3 of 4 slow");
    assert!(h.metrics().latency.unwrap() > Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn insufficient_balance_can_trip_a_long_open() {
    let layer = CircuitBreakerLayer::builder()
        .outcome_policy(
            DefaultOutcomePolicy::new().open_on_insufficient_balance(Duration::from_secs(600)),
        )
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    answer(&mut svc, Answer::Status(402)).await.unwrap();
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.retry_after(), Some(Duration::from_secs(600)));
}

#[tokio::test(start_paused = true)]
async fn waits_grow_on_consecutive_opens_and_reset_on_close() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(1)
        .permitted_calls_in_half_open(1)
        .growing_wait(2.0, Duration::from_secs(100))
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.retry_after(), Some(Duration::from_secs(30)));
    advance(Duration::from_secs(30)).await;
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.retry_after(), Some(Duration::from_secs(60)));
    advance(Duration::from_secs(60)).await;
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.retry_after(), Some(Duration::from_secs(100)));
    advance(Duration::from_secs(100)).await;
    answer(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(h.state(), State::Closed);
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(h.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn forced_states_disabled_and_metrics_only() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(2)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    h.force_open();
    assert!(is_breaker_open(
        &answer(&mut svc, Answer::Ok).await.unwrap_err()
    ));
    advance(Duration::from_secs(3600)).await;
    assert_eq!(h.state(), State::ForcedOpen);
    h.disable();
    for _ in 0..5 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    assert_eq!(h.state(), State::Disabled);
    assert_eq!(h.metrics().buffered_calls, 0);
    h.metrics_only();
    for _ in 0..5 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    let m = h.metrics();
    assert_eq!((m.state, m.failure_rate), (State::MetricsOnly, Some(100.0)));
    h.reset();
    let m = h.metrics();
    assert_eq!(
        (m.state, m.buffered_calls, m.not_permitted_calls),
        (State::Closed, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn time_based_window_forgets_old_failures() {
    let layer = CircuitBreakerLayer::builder()
        .time_based_window(10)
        .minimum_number_of_calls(4)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    for _ in 0..3 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    advance(Duration::from_secs(10)).await;
    assert_eq!(h.metrics().buffered_calls, 0);
    answer(&mut svc, Answer::Status(500)).await.unwrap();
    assert_eq!(
        h.state(),
        State::Closed,
        "the 3 old failures left the window"
    );
    for _ in 0..3 {
        answer(&mut svc, Answer::Status(500)).await.unwrap();
    }
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_admitted_before_a_transition_do_not_count_after_it() {
    let (mock, mut upstream) = tower_test::mock::pair();
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(2)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(mock);
    let mut slow = task::spawn(start(&mut svc).await);
    let (_, slow_send) = upstream.next_request().await.unwrap();
    h.transition_to_open();
    advance(Duration::from_secs(30)).await;
    assert_eq!(h.state(), State::HalfOpen);
    slow_send.send_response(status(500));
    let _ = assert_ready!(slow.poll());
    let m = h.metrics();
    assert_eq!((m.state, m.buffered_calls), (State::HalfOpen, 0));
}

#[test]
fn services_are_clone_without_a_clone_body() {
    struct NotClone;
    fn assert_clone<T: Clone>(_: &T) {}
    let svc = CircuitBreakerLayer::new().layer(tower::service_fn(|_: Request<NotClone>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    assert_clone(&svc);
    let keyed = tower_deepseek_breaker::CircuitBreakerLayer::builder()
        .build_keyed()
        .unwrap()
        .layer(tower::service_fn(|_: Request<NotClone>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    assert_clone(&keyed);
}

#[tokio::test(start_paused = true)]
async fn without_slow_call_detection_slow_calls_are_just_calls() {
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(2)
        .slow_call_duration_threshold(Duration::from_secs(1))
        .slow_call_detection(false)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    for _ in 0..4 {
        call(&mut svc, slow_request(Answer::Ok, Duration::from_secs(3)))
            .await
            .unwrap();
    }
    let m = h.metrics();
    assert_eq!((m.state, m.slow_calls, m.latency), (State::Closed, 0, None));
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_outcome_gives_the_slot_back() {
    let layer = CircuitBreakerLayer::builder()
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(scripted());
    h.transition_to_half_open();
    // A 429 says nothing about the upstream's health: the probe slot is free again.
    answer(&mut svc, Answer::Status(429)).await.unwrap();
    assert_eq!(h.state(), State::HalfOpen);
    assert_eq!(h.metrics().half_open_in_flight, 0);
    answer(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(h.state(), State::Closed);
}

/// A request as a stack with an audit layer sends it: asking for the call's facts.
fn asking_for_facts(answer: Answer) -> Request<Full<Bytes>> {
    let mut req = support::request(answer);
    req.extensions_mut().insert(CollectCallFacts);
    req
}

#[tokio::test(start_paused = true)]
async fn responses_carry_the_breaker_state_for_outer_layers_that_ask() {
    use tower::ServiceExt;
    use tower_deepseek_core::protocol::BreakerStatus;

    let layer = CircuitBreakerLayer::builder()
        .count_based_window(3)
        .minimum_number_of_calls(3)
        .build()
        .unwrap();
    let mut svc = layer.layer(scripted());
    // Not asked: no extension (no allocation for a stack without audit).
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(support::request(Answer::Status(500)))
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<BreakerStatus>(), None);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(asking_for_facts(Answer::Status(500)))
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<BreakerStatus>(),
        Some(&BreakerStatus("closed"))
    );
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(asking_for_facts(Answer::Status(500)))
        .await
        .unwrap();
    // The failure that tripped it: the state after recording it.
    assert_eq!(
        res.extensions().get::<BreakerStatus>(),
        Some(&BreakerStatus("open"))
    );
}

/// Asked for call facts, the breaker shares its classification of a body with the layers
/// above (core's `SharedOutcome`): the slot is empty until the body ends, then holds the
/// verdict and the summary. Not asked, it adds nothing.
#[tokio::test(start_paused = true)]
async fn a_classified_body_is_shared_with_outer_layers_that_ask() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_deepseek_core::classify::{FailureClass, FrameTrace, SharedOutcome};

    let layer = CircuitBreakerLayer::builder().build().unwrap();
    let mut svc = layer.layer(scripted());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(support::request(Answer::Ok))
        .await
        .unwrap();
    assert!(res.extensions().get::<SharedOutcome>().is_none());

    for (answer, expected) in [
        (Answer::Ok, Ok(())),
        (Answer::Stream, Ok(())),
        (Answer::CutStream, Err(FailureClass::Incomplete)),
    ] {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(asking_for_facts(answer))
            .await
            .unwrap();
        let slot = res.extensions().get::<SharedOutcome>().cloned().unwrap();
        assert!(!slot.is_published(), "filled only at the end of the body");
        // The verdict is about the very frames the caller received.
        let mut seen = FrameTrace::new();
        let mut body = res.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen.record(d);
            }
        }
        let outcome = slot.verdict_for(&seen).expect("filled at the end");
        assert_eq!(outcome.result, expected, "{answer:?}");
        if answer == Answer::Ok {
            assert_eq!(outcome.summary.model.as_deref(), Some("deepseek-chat"));
        }
        if answer == Answer::Stream {
            assert_eq!(outcome.summary.events, 2);
            assert!(outcome.summary.done);
        }
    }
    // A head that decides the outcome (an error status) needs no body classification.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(asking_for_facts(Answer::Status(400)))
        .await
        .unwrap();
    assert!(res.extensions().get::<SharedOutcome>().is_none());
}

/// The lock-free closed-state path, used by several threads through clones of one service:
/// the window holds exactly its size in calls, and failures from every thread open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_several_threads_share_one_exact_window() {
    const TASKS: usize = 4;
    let layer = CircuitBreakerLayer::builder()
        .count_based_window(50)
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = layer.layer(scripted());
    let run = |answer_with: Answer, calls: usize| {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let mut rejected = 0;
                    for _ in 0..calls {
                        match answer(&mut svc, answer_with).await {
                            Ok(_) => {}
                            Err(e) if is_breaker_open(&e) => rejected += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    rejected
                })
            })
            .collect();
        async move {
            let mut rejected = 0;
            for t in tasks {
                rejected += t.await.unwrap();
            }
            rejected
        }
    };
    assert_eq!(run(Answer::Ok, 250).await, 0);
    let m = h.metrics();
    assert_eq!(
        (m.state, m.buffered_calls, m.failed_calls),
        (State::Closed, 50, 0)
    );
    // 25 failures in a full window of 50 reach the 50 % threshold: with 4 × 25 failures sent,
    // the breaker opens and rejects the rest.
    let rejected = run(Answer::Status(500), 25).await;
    let m = h.metrics();
    assert_eq!(m.state, State::Open);
    assert_eq!(m.buffered_calls, 50);
    assert!((25..=50).contains(&m.failed_calls), "{m:?}");
    assert!(rejected > 0 && rejected <= 75, "{rejected}");
    assert_eq!(m.not_permitted_calls, rejected as u64);
}
