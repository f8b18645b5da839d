//! The configuration conventions every layer of this crate follows: core's `ConfigError`
//! naming the serde field, `Duration`s in Rust written as the same `*_ms` fields in serde.

use std::time::Duration;

use tower_deepseek_retry::{
    AdaptiveConcurrencyConfig, AdaptiveConcurrencyLayer, ConfigError, RateLimitConfig,
    RateLimitLayer, RetryConfig, RetryLayer, TimeoutConfig, TimeoutLayer,
};

#[test]
fn config_errors_name_the_serde_field() {
    let e: ConfigError = RetryLayer::builder().max_attempts(0).build().unwrap_err();
    assert_eq!(e.field(), "max_attempts");
    assert_eq!(e.reason(), "must be at least 1");
    assert_eq!(
        e.to_string(),
        "invalid configuration: `max_attempts` must be at least 1"
    );
    let e = RetryLayer::builder()
        .budget(Duration::from_millis(999), 10, 0.2)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "budget.ttl_ms");

    let e = RateLimitLayer::builder()
        .requests_per_minute(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "requests_per_minute");
    assert_eq!(e.reason(), "must be more than 0");

    let e = TimeoutLayer::builder()
        .idle(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "idle_ms");
    assert_eq!(e.reason(), "must be more than 0 (null for no timeout)");

    let e = AdaptiveConcurrencyLayer::builder()
        .min(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "initial");
}

#[test]
fn durations_keep_their_ms_field_names_and_defaults() {
    let retry: RetryConfig = serde_json::from_str(
        r#"{"total_deadline_ms":5000,"max_retry_after_ms":2000,"budget":{"ttl_ms":3000}}"#,
    )
    .unwrap();
    assert_eq!(retry.total_deadline, Some(Duration::from_secs(5)));
    assert_eq!(retry.max_retry_after, Duration::from_secs(2));
    assert_eq!(retry.budget.ttl, Duration::from_secs(3));
    let retry = RetryConfig::default();
    assert_eq!(retry.total_deadline, Some(Duration::from_secs(60)));
    assert_eq!(retry.max_retry_after, Duration::from_secs(60));
    assert_eq!(retry.budget.ttl, Duration::from_secs(10));

    let limit: RateLimitConfig = serde_json::from_str(r#"{"max_wait_ms":1500}"#).unwrap();
    assert_eq!(limit.max_wait, Duration::from_millis(1500));
    assert_eq!(RateLimitConfig::default().max_wait, Duration::from_secs(30));

    // Absent: the default; null: off.
    let t: TimeoutConfig = serde_json::from_str(r#"{"headers_ms":1000,"total_ms":null}"#).unwrap();
    assert_eq!(t.headers, Some(Duration::from_secs(1)));
    assert_eq!(t.first_token, Some(TimeoutConfig::DEFAULT_FIRST_TOKEN));
    assert_eq!(t.total, None);
    assert!(TimeoutLayer::from_config(t).is_ok());

    let c: AdaptiveConcurrencyConfig = serde_json::from_str("{}").unwrap();
    assert!(AdaptiveConcurrencyLayer::from_config(c).is_ok());
}
