//! Metrics and tracing: the exclusive state gauge, call and transition counters, events.

mod support;

use std::time::Duration;

use tokio::time::advance;
use tower::Layer;
use tower_deepseek_breaker::CircuitBreakerLayer;

use support::{Answer, TestRecorder, answer, with_recorder};

async fn settle() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_state_gauge_flips_to_half_open_after_exactly_30s_with_no_traffic_and_no_reads() {
    let rec = TestRecorder::default();
    with_recorder(&rec, async {
        let layer = CircuitBreakerLayer::builder()
            .name("flip")
            .count_based_window(2)
            .build()
            .unwrap();
        let mut svc = layer.layer(support::scripted());
        assert_eq!(rec.states_at_one("flip"), (vec!["closed".to_owned()], 6));
        for _ in 0..2 {
            answer(&mut svc, Answer::Status(500)).await.unwrap();
        }
        assert_eq!(rec.states_at_one("flip").0, ["open"]);
        advance(Duration::from_millis(29_999)).await;
        settle().await;
        assert_eq!(rec.states_at_one("flip").0, ["open"]);
        advance(Duration::from_millis(1)).await;
        settle().await;
        // Nobody called or read the breaker: the timer task moved it.
        assert_eq!(rec.states_at_one("flip").0, ["half_open"]);
        assert_eq!(
            rec.counter(
                "deepseek_breaker_transitions_total",
                &[("breaker", "flip"), ("from", "open"), ("to", "half_open")]
            ),
            1
        );
    });
}

#[test]
fn the_state_gauge_is_1_for_exactly_one_state_after_any_sequence() {
    for seed in 0..12u64 {
        let rec = TestRecorder::default();
        let name = format!("random-{seed}");
        with_recorder(&rec, async {
            let mut rng = fastrand::Rng::with_seed(seed);
            let layer = CircuitBreakerLayer::builder()
                .name(name.clone())
                .count_based_window(rng.u32(1..6))
                .permitted_calls_in_half_open(rng.u32(1..4))
                .minimum_number_of_calls(rng.u32(1..4))
                .wait_duration_in_open(Duration::from_secs(rng.u64(1..5)))
                .build()
                .unwrap();
            let h = layer.handle();
            let mut svc = layer.layer(support::scripted());
            for step in 0..300 {
                match rng.u8(0..20) {
                    0..=5 => {
                        let _ = answer(&mut svc, Answer::Ok).await;
                    }
                    6..=10 => {
                        let _ = answer(&mut svc, Answer::Status(500)).await;
                    }
                    11 => {
                        let _ = answer(&mut svc, Answer::Status(429)).await;
                    }
                    12 => {
                        let _ = answer(&mut svc, Answer::CutStream).await;
                    }
                    13..=15 => {
                        advance(Duration::from_millis(rng.u64(0..3000))).await;
                        settle().await;
                    }
                    16 => h.force_open(),
                    17 => h.reset(),
                    18 => match rng.u8(0..4) {
                        0 => h.disable(),
                        1 => h.metrics_only(),
                        2 => h.transition_to_half_open(),
                        _ => h.transition_to_open(),
                    },
                    _ => {
                        // a call cancelled before its head
                        use tower::{Service, ServiceExt};
                        let f = svc
                            .ready()
                            .await
                            .unwrap()
                            .call(support::request(Answer::Ok));
                        drop(f);
                    }
                }
                let (ones, seen) = rec.states_at_one(&name);
                assert_eq!(seen, 6, "seed {seed} step {step}");
                assert_eq!(ones.len(), 1, "seed {seed} step {step}: {ones:?}");
                let state = h.state();
                let (ones, _) = rec.states_at_one(&name);
                assert_eq!(ones, [state.as_str()], "seed {seed} step {step}");
            }
        });
    }
}

#[test]
fn calls_rejections_and_transitions_are_counted() {
    let rec = TestRecorder::default();
    with_recorder(&rec, async {
        let layer = CircuitBreakerLayer::builder()
            .name("counted")
            .count_based_window(2)
            .build()
            .unwrap();
        let mut svc = layer.layer(support::scripted());
        answer(&mut svc, Answer::Ok).await.unwrap();
        answer(&mut svc, Answer::Status(400)).await.unwrap();
        answer(&mut svc, Answer::Status(500)).await.unwrap();
        assert!(answer(&mut svc, Answer::Ok).await.is_err());
        let c = |outcome| {
            rec.counter(
                "deepseek_breaker_calls_total",
                &[("breaker", "counted"), ("outcome", outcome)],
            )
        };
        assert_eq!((c("success"), c("failure"), c("ignored")), (1, 1, 1));
        assert_eq!(
            rec.counter(
                "deepseek_breaker_rejections_total",
                &[("breaker", "counted")]
            ),
            1
        );
        assert_eq!(
            rec.counter(
                "deepseek_breaker_transitions_total",
                &[("breaker", "counted"), ("from", "closed"), ("to", "open")]
            ),
            1
        );
    });
}

#[test]
fn debugging_recorder_sees_the_gauge_and_counters() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let _layer = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let layer = CircuitBreakerLayer::builder()
                .name("debugging")
                .count_based_window(1)
                .build()
                .unwrap();
            let mut svc = layer.layer(support::scripted());
            answer(&mut svc, Answer::Status(502)).await.unwrap();
            layer
        })
    });
    let mut gauges = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() == "deepseek_breaker_state" {
            let state = key
                .key()
                .labels()
                .find(|l| l.key() == "state")
                .unwrap()
                .value()
                .to_owned();
            if value == DebugValue::Gauge(1.0.into()) {
                gauges.push(state);
            }
        }
    }
    assert_eq!(gauges, ["open"]);
}
