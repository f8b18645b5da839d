//! Tests for mutants of `retry/schedule.rs` that `cargo mutants` found alive (see
//! BENCHMARKS.md, "Mutation testing"): the range of equal jitter, the validation of backoffs
//! (equal bounds allowed, inverted bounds refused), and the default `max_retries` of a
//! deserialized schedule.

use std::time::Duration;

use tower_deepseek_retry::{Backoff, Jitter, RetryConfig, RetryLayer, Schedule};

#[test]
fn equal_jitter_spans_the_upper_half_of_the_ceiling() {
    let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(1))
        .with_jitter(Jitter::Equal);
    let cap = b.ceiling(1);
    assert_eq!(cap, Duration::from_secs(1));
    let mut rng = fastrand::Rng::with_seed(7);
    let delays: Vec<Duration> = (0..400).map(|_| b.delay(1, &mut rng)).collect();
    assert!(
        delays.iter().all(|d| *d >= cap / 2 && *d <= cap),
        "{delays:?}"
    );
    let (lo, hi) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
    assert!(*hi > cap * 9 / 10, "the upper end is reached: max {hi:?}");
    assert!(*lo < cap * 6 / 10, "the lower end is reached: min {lo:?}");
}

fn with_server(backoff: Backoff) -> RetryConfig {
    let mut cfg = RetryConfig::default();
    cfg.schedules.server = Schedule::new(backoff);
    cfg
}

#[test]
fn backoff_bounds_are_validated() {
    let s = Duration::from_secs;
    // Inverted bounds are refused.
    assert!(RetryLayer::from_config(with_server(Backoff::exponential(s(2), s(1)))).is_err());
    assert!(RetryLayer::from_config(with_server(Backoff::uniform(s(2), s(1)))).is_err());
    // Equal bounds are a constant delay: allowed.
    assert!(RetryLayer::from_config(with_server(Backoff::exponential(s(1), s(1)))).is_ok());
    assert!(RetryLayer::from_config(with_server(Backoff::uniform(s(1), s(1)))).is_ok());
    // Ordered bounds: allowed.
    assert!(RetryLayer::from_config(with_server(Backoff::exponential(s(1), s(2)))).is_ok());
    assert!(RetryLayer::from_config(with_server(Backoff::uniform(s(1), s(2)))).is_ok());
}

#[test]
fn a_deserialized_schedule_without_max_retries_is_bounded_only_by_the_layer() {
    let s: Schedule = serde_json::from_str(r#"{"backoff": {"kind": "immediate"}}"#).unwrap();
    assert_eq!(s.max_retries, u32::MAX);
    assert_eq!(Schedule::new(Backoff::Immediate).max_retries, u32::MAX);
}
