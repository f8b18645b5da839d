//! Retry schedules and stream safety, with paused time and a seeded RNG.

mod support;

use std::time::{Duration, SystemTime};

use support::*;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::classify::FailureClass;
use tower_deepseek_core::error::{BreakerOpen, IncompleteResponse};
use tower_deepseek_retry::{
    Attempts, Backoff, RetriesExhausted, RetryLayer, RetryLayerBuilder, Schedule, Schedules,
    StopReason,
};

const SEED: u64 = 42;
const MS: Duration = Duration::from_millis(1);

fn layer() -> RetryLayerBuilder {
    RetryLayer::builder().rng_seed(SEED).no_budget()
}

async fn run(
    layer: RetryLayer,
    script: &Script,
) -> Result<http::Response<tower_deepseek_retry::ResponseBody<TestBody>>, tower::BoxError> {
    let mut svc = layer.layer(script.clone());
    svc.ready()
        .await?
        .call(req(r#"{"model":"m","messages":[]}"#))
        .await
}

fn attempts<B>(r: &http::Response<B>) -> Attempts {
    r.extensions()
        .get::<Attempts>()
        .cloned()
        .expect("Attempts extension")
}

/// Asserts that each gap equals `expected` (never earlier; at most the timer's 1 ms tick later).
fn assert_gaps(gaps: &[Duration], expected: &[Duration]) {
    assert_eq!(gaps.len(), expected.len(), "{gaps:?} vs {expected:?}");
    for (g, e) in gaps.iter().zip(expected) {
        assert!(
            *g >= *e && *g <= *e + MS,
            "gap {g:?}, expected {e:?} (all: {gaps:?})"
        );
    }
}

/// The delays a fresh RNG with `SEED` draws for the given backoffs, in order.
fn seeded(draws: &[(Backoff, u32)]) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    draws.iter().map(|(b, n)| b.delay(*n, &mut rng)).collect()
}

#[tokio::test(start_paused = true)]
async fn rate_limited_exact_exponential_schedule_with_full_jitter() {
    let script = Script::new((0..6).map(|_| status(429)).chain([ok()]));
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 200);
    let a = attempts(&resp);
    assert_eq!(a.count(), 7);
    assert_eq!(a.failures().len(), 6);
    assert_eq!(a.stop_reason(), StopReason::Success);
    let b = Schedules::default().rate_limited.backoff;
    let expected = seeded(&(1..=6).map(|n| (b, n)).collect::<Vec<_>>());
    assert_gaps(&script.gaps(), &expected);
    // jitter bounds: full jitter within [0, 1·2^(n-1) s], capped at 32 s
    for (n, d) in expected.iter().enumerate() {
        let cap = Duration::from_secs(1 << n).min(Duration::from_secs(32));
        assert!(*d <= cap);
    }
    // the draws are really random, not the ceiling
    assert!(expected.iter().zip(1..).any(|(d, n)| *d < b.ceiling(n)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_larger_than_backoff_wins() {
    let script = Script::new([status_with(429, "retry-after", "10"), ok()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_gaps(&script.gaps(), &[Duration::from_secs(10)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_smaller_than_backoff_keeps_backoff() {
    // Third 429 backoff ceiling is 4 s; a Retry-After of 0 must not shorten it.
    let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32))
        .with_jitter(tower_deepseek_retry::Jitter::None);
    let script = Script::new([
        status_with(429, "retry-after", "0"),
        status_with(429, "retry-after", "1"),
        status_with(429, "retry-after", "3"),
        ok(),
    ]);
    let l = layer().on_rate_limited(Schedule::new(b)).build().unwrap();
    run(l, &script).await.unwrap();
    assert_gaps(
        &script.gaps(),
        &[
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
        ],
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured_never_early() {
    let at = SystemTime::now() + Duration::from_secs(20);
    let date = httpdate::fmt_http_date(at);
    let script = Script::new([status_with(429, "retry-after", &date), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let gap = script.gaps()[0];
    // The date has one-second resolution; the wait ends at that instant, not before.
    let until = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let floor = Duration::from_secs(until).saturating_sub(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    assert!(gap + Duration::from_secs(1) >= floor, "{gap:?}");
    assert!(
        gap >= Duration::from_secs(18) && gap <= Duration::from_secs(20) + MS,
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_returns_the_429_without_waiting() {
    let script = Script::new([status_with(429, "retry-after", "3600")]);
    let start = tokio::time::Instant::now();
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::RetryAfterTooLong);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn bad_gateway_immediately_at_most_three_times() {
    let script = Script::new((0..4).map(|_| status(502)));
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 502, "the last upstream response is returned");
    let a = attempts(&resp);
    assert_eq!(a.count(), 4);
    assert_eq!(a.stop_reason(), StopReason::MaxAttempts);
    assert_eq!(a.failures(), &vec![FailureClass::BadGateway; 4][..]);
    assert_gaps(&script.gaps(), &[Duration::ZERO; 3]);
    // the body of the returned response is intact
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none());
    assert!(String::from_utf8(body).unwrap().contains("error"));
}

#[tokio::test(start_paused = true)]
async fn overloaded_uniform_5_to_15_or_exact_retry_after() {
    let script = Script::new([status(503), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let b = Schedules::default().overloaded.backoff;
    let expected = seeded(&[(b, 1)]);
    assert!(expected[0] >= Duration::from_secs(5) && expected[0] <= Duration::from_secs(15));
    assert_gaps(&script.gaps(), &expected);

    // Retry-After (2 s) replaces the draw
    let script = Script::new([status_with(503, "retry-after", "2"), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    assert_gaps(&script.gaps(), &[Duration::from_secs(2)]);

    // one retry by default, then the 503 goes back to the caller
    let script = Script::new([status(503), status(503), ok()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::MaxAttempts);
    assert_eq!(script.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn gateway_timeout_retries_with_a_longer_attempt_timeout() {
    let script = Script::new([status(504), status(504), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let scales: Vec<_> = script.calls().iter().map(|c| c.scale).collect();
    assert_eq!(scales, [None, Some(2.0), Some(4.0)]);
    assert_gaps(&script.gaps(), &[Duration::ZERO; 2]);

    let script = Script::new([status(504), ok()]);
    run(layer().timeout_multiplier(3.0).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(script.calls()[1].scale, Some(3.0));
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_error_is_retried_with_scale() {
    let t = tower_deepseek_core::error::UpstreamTimeout::new(
        tower_deepseek_core::error::TimeoutPhase::Headers,
        Duration::from_secs(5),
    );
    let script = Script::new([Step::Err(Box::new(t)), ok()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::Timeout]);
    assert_eq!(script.calls()[1].scale, Some(2.0));
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_exponentially() {
    let script = Script::new([status(500), status(500), status(599), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let b = Schedules::default().server.backoff;
    let expected = seeded(&[(b, 1), (b, 2), (b, 3)]);
    assert!(expected[0] <= Duration::from_millis(500));
    assert!(expected[2] <= Duration::from_secs(2));
    assert_gaps(&script.gaps(), &expected);
}

#[tokio::test(start_paused = true)]
async fn connect_errors_retry_at_once_then_exponentially() {
    let script = Script::new([
        Step::Err(refused()),
        Step::Err(refused()),
        Step::Err(refused()),
        ok(),
    ]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let b = Schedules::default().connect.backoff;
    // the first retry draws nothing (immediate)
    let expected = seeded(&[(b, 2), (b, 3)]);
    let gaps = script.gaps();
    assert_gaps(&gaps, &[Duration::ZERO, expected[0], expected[1]]);
    assert!(expected[0] <= Duration::from_millis(500) && expected[1] <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn transport_errors_after_sending_are_not_retried_unless_configured() {
    let script = Script::new([Step::Err(reset())]);
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    assert_eq!(script.calls().len(), 1);
    // returned as it was: never retryable
    assert_eq!(
        err.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionReset
    );

    let script = Script::new([Step::Err(reset()), ok()]);
    let resp = run(layer().retry_after_send(true).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::Transport]);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_sent_once() {
    for code in [400, 401, 402, 403, 404, 422] {
        let script = Script::new([status(code)]);
        let resp = run(layer().build().unwrap(), &script).await.unwrap();
        assert_eq!(resp.status(), code);
        assert_eq!(script.calls().len(), 1, "{code}");
        let a = attempts(&resp);
        assert_eq!(a.count(), 1);
        assert_eq!(a.stop_reason(), StopReason::NotRetryable);
    }
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_stops_with_a_typed_error() {
    // No deposits count (0 %) and a reserve of 1 retry per second over 1 s: exactly one retry.
    let l = RetryLayer::builder()
        .rng_seed(SEED)
        .budget(Duration::from_secs(1), 1, 0.0)
        .build()
        .unwrap();
    let script = Script::new([
        Step::Err(refused()),
        Step::Err(refused()),
        Step::Err(refused()),
    ]);
    let err = run(l, &script).await.unwrap_err();
    let e = err.downcast_ref::<RetriesExhausted>().expect("typed error");
    assert!(e.is_budget_exhausted());
    assert_eq!(e.attempts(), 2);
    assert_eq!(e.last_class(), &FailureClass::Connect);
    assert_eq!(script.calls().len(), 2);
    // the classifier still sees the cause through the source chain
    let c = tower_deepseek_core::classify::Classifier::new().classify_error(&*err);
    assert_eq!(c, FailureClass::Connect);
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_with_a_response_returns_it_marked() {
    let l = RetryLayer::builder()
        .budget(Duration::from_secs(1), 1, 0.0)
        .build()
        .unwrap();
    let script = Script::new([status(502), status(502)]);
    let resp = run(l, &script).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::BudgetExhausted);
}

#[tokio::test(start_paused = true)]
async fn total_deadline_stops_with_a_typed_error() {
    let l = layer()
        .total_deadline(Duration::from_secs(5))
        .on_connect_error(Schedule::new(Backoff::fixed(Duration::from_secs(3))))
        .build()
        .unwrap();
    let script = Script::new([Step::Err(refused()), Step::Err(refused())]);
    let start = tokio::time::Instant::now();
    let err = run(l, &script).await.unwrap_err();
    let e = err.downcast_ref::<RetriesExhausted>().expect("typed error");
    assert!(e.is_deadline());
    assert_eq!(e.attempts(), 2);
    // it gave up at once instead of sleeping past the deadline
    assert!(start.elapsed() < Duration::from_secs(3) + 2 * MS);
}

#[tokio::test(start_paused = true)]
async fn body_is_replayed_without_copying() {
    let script = Script::new([status(500), status(502), ok()]);
    run(layer().build().unwrap(), &script).await.unwrap();
    let calls = script.calls();
    let first = calls[0].body.clone().unwrap();
    assert_eq!(&first[..], br#"{"model":"m","messages":[]}"#);
    for c in &calls {
        let b = c.body.as_ref().unwrap();
        assert_eq!(b.as_ptr(), first.as_ptr(), "same memory on every attempt");
        assert_eq!(c.len, first.len());
    }
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit_is_sent_once_and_never_retried() {
    let script = Script::new([status(502)]);
    let l = layer().body_limit(4).build().unwrap();
    let resp = run(l, &script).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::BodyNotReplayable);
    let calls = script.calls();
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].replayable);
    assert_eq!(
        calls[0].len,
        r#"{"model":"m","messages":[]}"#.len(),
        "every byte sent"
    );

    let script = Script::new([Step::Err(refused())]);
    let err = run(layer().body_limit(4).build().unwrap(), &script)
        .await
        .unwrap_err();
    let e = err.downcast_ref::<RetriesExhausted>().expect("typed error");
    assert_eq!(e.reason(), StopReason::BodyNotReplayable);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_with_its_own_error() {
    // The breaker below refuses (it did not call the upstream): no wait, no second call, and
    // the caller gets the breaker's typed error itself, with its wait.
    let script = Script::new([
        Step::Err(Box::new(BreakerOpen::new(Duration::from_secs(30)))),
        ok(),
    ]);
    let start = tokio::time::Instant::now();
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(
        script.calls().len(),
        1,
        "one call into the breaker, none after"
    );
    let open = err
        .downcast_ref::<BreakerOpen>()
        .expect("the breaker's own error");
    assert_eq!(open.retry_after(), Duration::from_secs(30));

    // Also with a short wait that would fit the deadline.
    let script = Script::new([
        Step::Err(Box::new(BreakerOpen::new(Duration::from_millis(10)))),
        ok(),
    ]);
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    assert!(err.is::<BreakerOpen>());
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_that_opens_during_retries_stops_them_at_once() {
    let script = Script::new([
        status(500),
        Step::Err(Box::new(BreakerOpen::new(Duration::from_secs(30)))),
        ok(),
    ]);
    let start = tokio::time::Instant::now();
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    let e = err.downcast_ref::<RetriesExhausted>().expect("typed error");
    assert_eq!(e.reason(), StopReason::BreakerOpen);
    assert_eq!(e.attempts(), 2);
    assert!(std::error::Error::source(e).unwrap().is::<BreakerOpen>());
    assert_eq!(script.calls().len(), 2);
    // only the one backoff after the 500, never the breaker's 30 s
    let b = Schedules::default().server.backoff;
    assert!(
        start.elapsed() <= b.ceiling(1) + MS,
        "{:?}",
        start.elapsed()
    );
    // what the gateway maps to 503 + Retry-After
    let c = tower_deepseek_core::classify::Classifier::new().classify_error(&*err);
    assert_eq!(
        c,
        FailureClass::BreakerOpen {
            retry_after: Duration::from_secs(30)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_an_open_breaker_is_opt_in_and_bounded_by_the_deadline() {
    let script = Script::new([
        Step::Err(Box::new(BreakerOpen::new(Duration::from_secs(2)))),
        ok(),
    ]);
    let l = layer().wait_for_open_breaker(true).build().unwrap();
    assert!(l.config().wait_for_open_breaker);
    let resp = run(l, &script).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_gaps(&script.gaps(), &[Duration::from_secs(2)]);

    let script = Script::new([Step::Err(Box::new(BreakerOpen::new(Duration::from_secs(
        30,
    ))))]);
    let l = layer()
        .wait_for_open_breaker(true)
        .total_deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = run(l, &script).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a wait past the deadline is not begun"
    );
    let e = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert!(e.is_deadline());
    assert!(std::error::Error::source(e).unwrap().is::<BreakerOpen>());

    // The option from a config file.
    let cfg: tower_deepseek_retry::RetryConfig =
        serde_json::from_str(r#"{"wait_for_open_breaker":true}"#).unwrap();
    assert!(cfg.wait_for_open_breaker);
    assert!(
        !RetryLayer::new().config().wait_for_open_breaker,
        "off by default"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_upstream_holds_a_caller_at_most_the_documented_worst_case() {
    // Default config (no budget, so only the schedule bounds it): an upstream that answers
    // 500 to everything gets 4 attempts, with at most 0.5 + 1 + 2 = 3.5 s of waits.
    let script = Script::new((0..10).map(|_| status(500)));
    let start = tokio::time::Instant::now();
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(attempts(&resp).count(), 4);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::MaxAttempts);
    assert!(start.elapsed() <= Duration::from_millis(3500) + 3 * MS);
    // the ceilings themselves sum to the documented 3.5 s
    let b = Schedules::default().server.backoff;
    let sum: Duration = (1..=3).map(|n| b.ceiling(n)).sum();
    assert_eq!(sum, Duration::from_millis(3500));

    // 502: 4 attempts at once; connect errors: 4 attempts within 1.5 s; 503: 2 attempts
    // within 15 s; 504: 3 attempts at once.
    for (steps, n, worst) in [
        (
            (0..10).map(|_| status(502)).collect::<Vec<_>>(),
            4,
            Duration::ZERO,
        ),
        (
            (0..10).map(|_| Step::Err(refused())).collect(),
            4,
            Duration::from_millis(1500),
        ),
        (
            (0..10).map(|_| status(503)).collect(),
            2,
            Duration::from_secs(15),
        ),
        ((0..10).map(|_| status(504)).collect(), 3, Duration::ZERO),
    ] {
        let script = Script::new(steps);
        let start = tokio::time::Instant::now();
        let _ = run(layer().build().unwrap(), &script).await;
        assert_eq!(script.calls().len(), n);
        assert!(start.elapsed() <= worst + 3 * MS, "{:?}", start.elapsed());
    }

    // 429 to everything: the total deadline (1 min) cuts the 1..32 s schedule.
    let script = Script::new((0..10).map(|_| status(429)));
    let start = tokio::time::Instant::now();
    let l = RetryLayer::builder()
        .no_budget()
        .on_rate_limited(Schedule::new(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32))
                .with_jitter(tower_deepseek_retry::Jitter::None),
        ))
        .build()
        .unwrap();
    let resp = run(l, &script).await.unwrap();
    assert_eq!(attempts(&resp).stop_reason(), StopReason::Deadline);
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(
        script.calls().len(),
        6,
        "1+2+4+8+16 s, then 32 s would pass 60 s"
    );
}

#[tokio::test(start_paused = true)]
async fn max_attempts_bounds_everything() {
    let script = Script::new([status(500), status(500)]);
    let resp = run(layer().max_attempts(2).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(attempts(&resp).count(), 2);
    assert_eq!(attempts(&resp).stop_reason(), StopReason::MaxAttempts);
}

// --- stream safety ---

#[tokio::test(start_paused = true)]
async fn sse_keepalives_then_nothing_is_retried_and_the_good_stream_is_delivered_whole() {
    let script = Script::new([
        sse(TestBody::chunks([
            ": keep-alive\n\n",
            "\n",
            ": keep-alive\n\n",
        ])),
        sse(TestBody::chunks([
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n",
            "\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        ])),
    ]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::EmptyBody]);
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none());
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(": keep-alive\n\n{SSE_OK}"),
        "bytes read while deciding come first, in order"
    );
}

#[tokio::test(start_paused = true)]
async fn json_blank_lines_then_empty_200_is_retried() {
    let script = Script::new([json(TestBody::chunks(["\n", "\n\n"])), ok()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::EmptyBody]);
    let (body, _) = read_body(resp.into_body()).await;
    assert_eq!(body, JSON_OK.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn json_truncated_or_in_band_error_is_retried() {
    let script = Script::new([
        json(TestBody::chunks(["\n\n{\"choices\":[{\"mess"])),
        json(TestBody::chunks([
            r#"{"error":{"message":"Server Error","type":"server_error"}}"#,
        ])),
        ok(),
    ]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(
        attempts(&resp).failures(),
        &[FailureClass::Incomplete, FailureClass::InBandError]
    );
}

/// A layer below that classified the same JSON body (the breaker, when audit asks for call
/// facts) shares its verdict (core's `SharedOutcome`), and the retry layer decides by it
/// instead of parsing the body again: here a valid body that the layer below judged an
/// in-band error is retried.
#[tokio::test(start_paused = true)]
async fn a_verdict_shared_from_below_decides_a_json_answer() {
    use tower_deepseek_core::classify::{FrameTrace, ResponseSummary, SharedOutcome};

    let judged = |verdict: Result<(), FailureClass>| {
        // One `&'static str`, so that the body's frame and the trace name the same buffer.
        let answer: &'static str = JSON_OK;
        let Step::Resp(mut resp) = json(TestBody::chunks([answer])) else {
            unreachable!()
        };
        let slot = SharedOutcome::new();
        // Filled before the end reaches this layer, as the breaker does, and about the very
        // frame this layer reads.
        let mut frames = FrameTrace::new();
        frames.record(&bytes::Bytes::from_static(answer.as_bytes()));
        slot.publish(verdict, ResponseSummary::default(), frames);
        resp.extensions_mut().insert(slot);
        Step::Resp(resp)
    };
    let script = Script::new([judged(Err(FailureClass::InBandError)), judged(Ok(()))]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::InBandError]);
    assert_eq!(attempts(&resp).count(), 2);
}

/// A last 2xx judged failed by its body before any of it reached the caller is a typed error,
/// not a 200 head over a body that breaks (a server would abort the connection on it).
#[tokio::test(start_paused = true)]
async fn last_failed_2xx_is_a_typed_error_not_a_broken_200() {
    let script = Script::new([
        json(TestBody::chunks(["\n"])),
        json(TestBody::chunks(["\n"])),
    ]);
    let err = run(layer().max_attempts(2).build().unwrap(), &script)
        .await
        .unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().expect("typed");
    assert_eq!(exhausted.attempts(), 2);
    assert_eq!(exhausted.last_class(), &FailureClass::EmptyBody);
    assert!(
        std::error::Error::source(exhausted)
            .unwrap()
            .is::<IncompleteResponse>()
    );

    // An in-band error answer, the last allowed: typed too.
    let script = Script::new([json(TestBody::chunks([
        r#"{"error":{"message":"Server Error","type":"api_error","code":"server_error"}}"#,
    ]))]);
    let err = run(layer().max_attempts(1).build().unwrap(), &script)
        .await
        .unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().expect("typed");
    assert_eq!(exhausted.last_class(), &FailureClass::InBandError);

    // A body that breaks while it is read to decide (not retried: it may bill twice): its own
    // error, as it is.
    let script = Script::new([json(TestBody::chunks(["{\"choi"]).then_error(reset()))]);
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    assert!(err.is::<std::io::Error>(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn reset_after_the_first_event_is_not_retried_and_the_body_errors() {
    let (tx, body) = TestBody::channel();
    let script = Script::new([sse(body)]);
    tx.send(Ok(bytes::Bytes::from_static(
        b": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    )))
    .unwrap();
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    // the response reached the caller after the first event, before the stream ended
    assert_eq!(attempts(&resp).count(), 1);
    tx.send(Err(reset())).unwrap();
    let (body, err) = read_body(resp.into_body()).await;
    assert!(String::from_utf8(body).unwrap().contains("\"a\""));
    let err = err.expect("the caller's body ends with an error");
    assert_eq!(
        err.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stream_without_done_after_handover_ends_with_incomplete_error() {
    let script = Script::new([sse(TestBody::chunks([
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
    ]))]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    let (body, err) = read_body(resp.into_body()).await;
    assert!(String::from_utf8(body).unwrap().contains("\"b\""));
    assert!(err.expect("not a clean EOF").is::<IncompleteResponse>());
}

/// After the hand-over, a stream is judged at its end by the verdict a layer below shares
/// (the breaker's), not by a second parse here: a complete-looking stream that the layer below
/// judged incomplete ends with the error, and one it judged whole ends cleanly.
#[tokio::test(start_paused = true)]
async fn a_verdict_shared_from_below_judges_the_end_of_a_handed_over_stream() {
    use tower_deepseek_core::classify::{FrameTrace, ResponseSummary, SharedOutcome};

    for (verdict, events, clean) in [
        (
            Err(FailureClass::Incomplete),
            [
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "data: [DONE]\n\n",
            ],
            false,
        ),
        (
            Ok(()),
            [
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            ],
            true,
        ),
    ] {
        let Step::Resp(mut resp) = sse(TestBody::chunks(events)) else {
            unreachable!()
        };
        let slot = SharedOutcome::new();
        let mut frames = FrameTrace::new();
        for e in events {
            frames.record(&bytes::Bytes::from_static(e.as_bytes()));
        }
        slot.publish(verdict, ResponseSummary::default(), frames);
        resp.extensions_mut().insert(slot);
        let script = Script::new([Step::Resp(resp)]);
        let resp = run(layer().build().unwrap(), &script).await.unwrap();
        let (_, err) = read_body(resp.into_body()).await;
        assert_eq!(err.is_none(), clean, "{err:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn stream_broken_before_the_first_event_follows_retry_after_send() {
    // A reset after sending may bill twice: by default not retried. Nothing but a keep-alive
    // came: the caller gets the reset as a typed error, not a 200 over a broken body.
    let script = Script::new([sse(
        TestBody::chunks([": keep-alive\n\n"]).then_error(reset())
    )]);
    let err = run(layer().build().unwrap(), &script).await.unwrap_err();
    assert!(err.is::<std::io::Error>(), "{err:?}");

    let script = Script::new([
        sse(TestBody::chunks([": keep-alive\n\n"]).then_error(reset())),
        sse(TestBody::chunks([SSE_OK])),
    ]);
    let resp = run(layer().retry_after_send(true).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::Transport]);
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none());
    assert_eq!(body, SSE_OK.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn in_band_error_as_first_event_is_retried() {
    let script = Script::new([
        sse(TestBody::chunks([
            "event: error\ndata: {\"error\":{\"message\":\"boom\"}}\n\n",
        ])),
        sse(TestBody::chunks([SSE_OK])),
    ]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).failures(), &[FailureClass::InBandError]);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_budget() {
    let l = RetryLayer::builder()
        .budget(Duration::from_secs(1), 1, 0.0)
        .build()
        .unwrap();
    let script = Script::new([status(502), ok(), status(502)]);
    let mut a = l.layer(script.clone());
    let mut b = a.clone();
    let r = a.ready().await.unwrap().call(req("{}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = b.ready().await.unwrap().call(req("{}")).await.unwrap();
    assert_eq!(attempts(&r).stop_reason(), StopReason::BudgetExhausted);
}

#[test]
fn config_is_validated_and_deserializable() {
    assert!(RetryLayer::builder().max_attempts(0).build().is_err());
    assert!(
        RetryLayer::builder()
            .timeout_multiplier(0.5)
            .build()
            .is_err()
    );
    assert!(
        RetryLayer::builder()
            .budget(Duration::from_millis(10), 1, 0.2)
            .build()
            .is_err()
    );
    assert!(
        RetryLayer::builder()
            .on_overloaded(Schedule::new(Backoff::uniform(
                Duration::from_secs(9),
                Duration::from_secs(1)
            )))
            .build()
            .is_err()
    );
    let cfg: tower_deepseek_retry::RetryConfig = serde_json::from_str(
        r#"{"max_attempts":3,"total_deadline_ms":null,"budget":{"retry_percent":0.5},
            "schedules":{"bad_gateway":{"backoff":{"kind":"fixed","delay_ms":100},"max_retries":1}}}"#,
    )
    .unwrap();
    assert_eq!(cfg.max_attempts, 3);
    assert_eq!(cfg.total_deadline, None);
    let l = RetryLayer::from_config(cfg).unwrap();
    assert_eq!(l.config().schedules.bad_gateway.max_retries, 1);
    assert!(
        serde_json::from_str::<tower_deepseek_retry::RetryConfig>(r#"{"max_atempts":3}"#).is_err()
    );
}

#[test]
fn service_is_clone_without_a_clone_body() {
    fn assert_clone<T: Clone>(_: &T) {}
    let s = RetryLayer::new().layer(Script::new([]));
    assert_clone(&s);
}

#[tokio::test(start_paused = true)]
async fn streamed_request_bodies_are_buffered_then_replayed() {
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut n = 0;
    let inner = tower::service_fn(
        move |req: http::Request<tower_deepseek_core::body::ReplayBody<TestBody>>| {
            let s2 = s2.clone();
            n += 1;
            let fail = n == 1;
            async move {
                let b = req.into_body().collect().await?.to_bytes();
                s2.lock().unwrap().push(b);
                Ok::<_, tower::BoxError>(if fail {
                    http::Response::builder()
                        .status(502)
                        .body(TestBody::chunks([]))
                        .unwrap()
                } else {
                    http::Response::new(TestBody::chunks([JSON_OK]))
                })
            }
        },
    );
    let mut svc = layer().build().unwrap().layer(inner);
    // several chunks, the first one only after a while (the peek sees Pending)
    let (tx, body) = TestBody::channel();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(Ok(bytes::Bytes::from_static(b"{\"model\":")))
            .unwrap();
        tx.send(Ok(bytes::Bytes::from_static(b"\"m\"}"))).unwrap();
    });
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(body))
        .await
        .unwrap();
    assert_eq!(attempts(&resp).count(), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0][..], b"{\"model\":\"m\"}");
    assert_eq!(seen[0], seen[1]);

    // two frames available at once (the peek takes the first, buffering the rest)
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(TestBody::chunks(["ab", "cd"])))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // a request body that fails cannot be sent: its error comes back
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(
            TestBody::chunks(["ab"]).then_error(reset()),
        ))
        .await
        .unwrap_err();
    assert!(err.is::<std::io::Error>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_in_the_past_keeps_the_backoff() {
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
    let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32))
        .with_jitter(tower_deepseek_retry::Jitter::None);
    let script = Script::new([status_with(429, "retry-after", &past), ok()]);
    let l = layer().on_rate_limited(Schedule::new(b)).build().unwrap();
    run(l, &script).await.unwrap();
    assert_gaps(&script.gaps(), &[Duration::from_secs(1)]);
}

// ---- the credential replay offered to the auth layer below ----

use tower_deepseek_core::protocol::ReplayOn401;

#[tokio::test(start_paused = true)]
async fn a_401_with_a_refreshed_credential_is_replayed_once_at_once() {
    let script = Script::new([unauthorized_refreshed(), ok()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 200);
    let calls = script.calls();
    assert_eq!(
        calls.iter().map(|c| c.offer).collect::<Vec<_>>(),
        [Some(ReplayOn401::Offered), Some(ReplayOn401::Replaying)]
    );
    assert_eq!(calls[0].body, calls[1].body, "the same bytes replayed");
    assert_gaps(&script.gaps(), &[Duration::ZERO]);
    let a = attempts(&resp);
    assert_eq!(a.count(), 2);
    assert_eq!(a.failures().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_refreshed_401_goes_back_to_the_caller() {
    let script = Script::new([unauthorized_refreshed(), unauthorized_refreshed()]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(script.calls().len(), 2, "one replay, no loop");
    assert_eq!(attempts(&resp).stop_reason(), StopReason::NotRetryable);
}

#[tokio::test(start_paused = true)]
async fn a_plain_401_is_never_replayed() {
    let script = Script::new([status(401)]);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_credential_replay_is_outside_max_attempts() {
    // max 2 attempts: the 502 after the credential replay is still retried once.
    let script = Script::new([unauthorized_refreshed(), status(502), ok()]);
    let resp = run(layer().max_attempts(2).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(attempts(&resp).count(), 3);
    assert_eq!(
        script.calls().iter().map(|c| c.offer).collect::<Vec<_>>(),
        [
            Some(ReplayOn401::Offered),
            Some(ReplayOn401::Replaying),
            Some(ReplayOn401::Replaying)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn credential_replay_off_offers_nothing_and_replays_nothing() {
    let script = Script::new([unauthorized_refreshed()]);
    let resp = run(layer().credential_replay(false).build().unwrap(), &script)
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let calls = script.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].offer, None);
}

/// One fact, one route: the attempts travel as core's protocol `Attempts`, always, whether an
/// outer layer asked for call facts (audit) or not; nothing else carries them.
#[tokio::test(start_paused = true)]
async fn attempts_are_cores_protocol_type_always() {
    use tower_deepseek_core::protocol::{Attempts, CollectCallFacts, StopReason};
    let script = Script::new([status(502), ok(), ok()]);
    let mut svc = layer().build().unwrap().layer(script.clone());
    let mut asking = req(r#"{"model":"m","messages":[]}"#);
    asking.extensions_mut().insert(CollectCallFacts);
    let resp = svc.ready().await.unwrap().call(asking).await.unwrap();
    let a = resp
        .extensions()
        .get::<Attempts>()
        .expect("for outer layers");
    assert_eq!(a.count(), 2);
    assert_eq!(a.stop_reason(), StopReason::Success);
    let resp = run(layer().build().unwrap(), &script).await.unwrap();
    assert_eq!(attempts(&resp).count(), 1, "without asking too");
}
