//! [`CacheConfig`]: the cache's settings (serde), and their validation.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_deepseek_core::config::duration_ms;

use super::error::ConfigError;

/// The cache's settings, as read from a file (TOML, JSON, ...). Durations are [`Duration`]s in
/// Rust and integer milliseconds in serde, in `*_ms` fields. Every field has the default shown, so `{}` is a valid config (L1 only).
///
/// ```
/// # use tower_deepseek_cache::{CacheConfig, CacheLayer};
/// let config: CacheConfig = serde_json::from_str(r#"{
///     "l1_ttl_ms": 300000,
///     "l1_max_bytes": 67108864,
///     "l2_ttl_ms": 3600000,
///     "key_prefix": "deepseek:cache",
///     "redis_timeout_ms": 100,
///     "cache_nonzero_temperature": false
/// }"#).unwrap();
/// let layer = CacheLayer::from_config(config).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long an entry lives in L1 (serde: `l1_ttl_ms`). Default 300 000 ms (5 minutes, the
    /// guide's hot prompts).
    #[serde(rename = "l1_ttl_ms", with = "duration_ms")]
    pub l1_ttl: Duration,
    /// L1 capacity in bytes, weighed per entry. Default 64 MiB. 0 disables L1.
    pub l1_max_bytes: u64,
    /// How long an entry lives in Redis (serde: `l2_ttl_ms`). Default 3 600 000 ms
    /// (60 minutes).
    #[serde(rename = "l2_ttl_ms", with = "duration_ms")]
    pub l2_ttl: Duration,
    /// `redis://`, `rediss://` (TLS) or `redis+unix://` URL of the L2 Redis; user and password
    /// in the URL for AUTH. None (the default) disables L2.
    pub redis_url: Option<String>,
    /// Seed node URLs of a Redis Cluster, instead of `redis_url`.
    pub redis_cluster_urls: Vec<String>,
    /// Prefix of every Redis key (`<prefix>:v1:<hex digest>`). Default `deepseek:cache`.
    pub key_prefix: String,
    /// Time limit of each Redis operation, connection included (serde: `redis_timeout_ms`).
    /// Default 100 ms.
    #[serde(rename = "redis_timeout_ms", with = "duration_ms")]
    pub redis_timeout: Duration,
    /// After a failed Redis connection, how long L2 is skipped before trying again (serde:
    /// `redis_retry_ms`). Default 1 000 ms.
    #[serde(rename = "redis_retry_ms", with = "duration_ms")]
    pub redis_retry: Duration,
    /// Cache answers to requests with a temperature other than 0 (or none: DeepSeek's default
    /// is 1). Default false.
    pub cache_nonzero_temperature: bool,
    /// Largest request body read, in bytes. Default 8 MiB (core's `DEFAULT_BODY_LIMIT`).
    pub max_request_bytes: usize,
    /// Largest answer recorded, in bytes on the wire; larger answers are forwarded, not stored.
    /// Default 4 MiB.
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1_ttl: Duration::from_millis(300_000),
            l1_max_bytes: 64 * 1024 * 1024,
            l2_ttl: Duration::from_millis(3_600_000),
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            key_prefix: "deepseek:cache".to_owned(),
            redis_timeout: Duration::from_millis(100),
            redis_retry: Duration::from_millis(1_000),
            cache_nonzero_temperature: false,
            max_request_bytes: DEFAULT_BODY_LIMIT,
            max_entry_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Whether `d` is shorter than the millisecond it is counted in (in serde, and in Redis `PX`).
fn under_a_millisecond(d: Duration) -> bool {
    d.as_millis() == 0
}

impl CacheConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.l1_max_bytes > 0 && under_a_millisecond(self.l1_ttl) {
            return Err(ConfigError::new("l1_ttl_ms", "must be at least 1 ms"));
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::new("max_request_bytes", "must be at least 1"));
        }
        if self.max_entry_bytes == 0 {
            return Err(ConfigError::new("max_entry_bytes", "must be at least 1"));
        }
        let has_l2 = self.redis_url.is_some() || !self.redis_cluster_urls.is_empty();
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err(ConfigError::new(
                "redis_cluster_urls",
                "must be empty when redis_url is set (one or the other, not both)",
            ));
        }
        if has_l2 {
            if under_a_millisecond(self.l2_ttl) {
                return Err(ConfigError::new("l2_ttl_ms", "must be at least 1 ms"));
            }
            if under_a_millisecond(self.redis_timeout) {
                return Err(ConfigError::new(
                    "redis_timeout_ms",
                    "must be at least 1 ms",
                ));
            }
            if self.key_prefix.is_empty() {
                return Err(ConfigError::new("key_prefix", "must not be empty"));
            }
            if !cfg!(feature = "redis") {
                let field = if self.redis_url.is_some() {
                    "redis_url"
                } else {
                    "redis_cluster_urls"
                };
                return Err(ConfigError::new(
                    field,
                    "needs the `redis` feature of tower-deepseek-cache, which is disabled",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheLayer;

    fn refused(config: CacheConfig) -> ConfigError {
        CacheLayer::from_config(config).unwrap_err()
    }

    #[test]
    fn durations_keep_their_ms_names_in_serde() {
        let c: CacheConfig = serde_json::from_str(
            r#"{"l1_ttl_ms": 1500, "l2_ttl_ms": 2000, "redis_timeout_ms": 30, "redis_retry_ms": 40}"#,
        )
        .unwrap();
        assert_eq!(c.l1_ttl, Duration::from_millis(1500));
        assert_eq!(c.l2_ttl, Duration::from_millis(2000));
        assert_eq!(c.redis_timeout, Duration::from_millis(30));
        assert_eq!(c.redis_retry, Duration::from_millis(40));
        let d: CacheConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(d, CacheConfig::default());
        assert!(serde_json::from_str::<CacheConfig>(r#"{"l1_ttl": 1}"#).is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let redis = || Some("redis://127.0.0.1:6379".to_owned());
        let c = CacheConfig {
            l1_ttl: Duration::ZERO,
            ..CacheConfig::default()
        };
        assert_eq!(refused(c).field(), "l1_ttl_ms");
        let c = CacheConfig {
            max_request_bytes: 0,
            ..CacheConfig::default()
        };
        assert_eq!(refused(c).field(), "max_request_bytes");
        let c = CacheConfig {
            redis_url: redis(),
            redis_cluster_urls: vec!["redis://127.0.0.1:7000".into()],
            ..CacheConfig::default()
        };
        assert_eq!(refused(c).field(), "redis_cluster_urls");
        let c = CacheConfig {
            redis_url: redis(),
            redis_timeout: Duration::from_micros(500),
            ..CacheConfig::default()
        };
        assert_eq!(refused(c).field(), "redis_timeout_ms");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_bad_redis_url_is_named_never_repeated() {
        let c = CacheConfig {
            redis_url: Some("nope://user:hunter2-secret@host".into()),
            ..CacheConfig::default()
        };
        let err = refused(c);
        assert_eq!(err.field(), "redis_url");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
