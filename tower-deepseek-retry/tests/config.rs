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

/// The Redis backends' settings: a `redis` table in either layer's config, validated when the
/// layer is built; the URL (which may hold a password) is never repeated in an error.
#[cfg(feature = "redis")]
#[test]
fn fleet_backends_are_configured_and_validated() {
    use tower_deepseek_retry::fleet::{Fleet, FleetConfig};

    let limit: RateLimitConfig = serde_json::from_str(
        r#"{"requests_per_minute":100,"window_ms":2000,"redis":{"redis_url":"rediss://:pw@cache:6380/2",
            "key_prefix":"gw","timeout_ms":30,"retry_ms":500,"expected_instances":3}}"#,
    )
    .unwrap();
    assert_eq!(limit.window, Duration::from_secs(2));
    let redis = limit.redis.clone().unwrap();
    assert_eq!(redis.timeout, Duration::from_millis(30));
    assert_eq!(redis.retry, Duration::from_millis(500));
    assert_eq!(redis.expected_instances, 3);
    assert!(!format!("{redis:?}").contains("pw"));
    assert!(
        RateLimitLayer::from_config(limit).is_ok(),
        "no I/O at build"
    );
    assert_eq!(RateLimitConfig::default().window, Duration::from_secs(60));
    assert_eq!(RateLimitConfig::default().redis, None);
    let d = FleetConfig::default();
    assert_eq!(
        (
            d.timeout,
            d.retry,
            d.expected_instances,
            d.key_prefix.as_str()
        ),
        (
            Duration::from_millis(50),
            Duration::from_secs(1),
            1,
            "tower-deepseek:fleet"
        )
    );

    let c: AdaptiveConcurrencyConfig = serde_json::from_str(
        r#"{"redis":{"redis_cluster_urls":["redis://a:7000","redis://b:7001"]},"account":"main","lease_ttl_ms":5000}"#,
    )
    .unwrap();
    assert_eq!(c.account, "main");
    assert_eq!(c.lease_ttl, Duration::from_secs(5));
    assert!(AdaptiveConcurrencyLayer::from_config(c).is_ok());
    let c = AdaptiveConcurrencyConfig::default();
    assert_eq!(
        (c.account.as_str(), c.lease_ttl, c.redis),
        ("default", Duration::from_secs(10), None)
    );

    let refused = |json: &str| {
        let cfg: RateLimitConfig = serde_json::from_str(json).unwrap();
        RateLimitLayer::from_config(cfg).unwrap_err()
    };
    let e = refused(r#"{"redis":{}}"#);
    assert_eq!(
        (e.field(), e.reason()),
        ("redis_url", "or redis_cluster_urls must be set")
    );
    let e = refused(r#"{"redis":{"redis_url":"redis://a","redis_cluster_urls":["redis://b"]}}"#);
    assert_eq!(e.field(), "redis_url");
    let e = refused(r#"{"redis":{"redis_url":"http://user:pw-9@host"}}"#);
    assert_eq!(e.field(), "redis_url");
    assert!(!e.to_string().contains("pw-9"), "{e}");
    let e = refused(r#"{"redis":{"redis_url":"redis://a","key_prefix":"{gw}"}}"#);
    assert_eq!(e.field(), "key_prefix");
    let e = refused(r#"{"redis":{"redis_url":"redis://a","timeout_ms":0}}"#);
    assert_eq!(e.field(), "timeout_ms");
    let e = refused(r#"{"redis":{"redis_url":"redis://a","expected_instances":0}}"#);
    assert_eq!(e.field(), "expected_instances");
    let e = refused(r#"{"window_ms":0}"#);
    assert_eq!(e.field(), "window_ms");
    assert!(
        serde_json::from_str::<RateLimitConfig>(r#"{"redis":{"redis_url":"redis://a","ttl":1}}"#)
            .is_err(),
        "unknown fields are refused"
    );
    let e = AdaptiveConcurrencyLayer::builder()
        .lease_ttl(Duration::from_millis(10))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "lease_ttl_ms");
    let e = Fleet::builder().build().unwrap_err();
    assert_eq!(e.field(), "redis_url");
}
