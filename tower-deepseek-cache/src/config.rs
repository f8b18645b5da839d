//! Configuration: [`CacheConfig`] (serde) and the errors of [`CacheLayer::builder`].
//!
//! [`CacheLayer::builder`]: crate::CacheLayer::builder

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;

/// The cache's settings, as read from a file (TOML, JSON, ...). Durations are milliseconds in
/// `*_ms` fields. Every field has the default shown, so `{}` is a valid config (L1 only).
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
/// let layer = CacheLayer::from_config(&config).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long an entry lives in L1. Default 300 000 (5 minutes, the guide's hot prompts).
    pub l1_ttl_ms: u64,
    /// L1 capacity in bytes, weighed per entry. Default 64 MiB. 0 disables L1.
    pub l1_max_bytes: u64,
    /// How long an entry lives in Redis. Default 3 600 000 (60 minutes).
    pub l2_ttl_ms: u64,
    /// `redis://`, `rediss://` (TLS) or `redis+unix://` URL of the L2 Redis; user and password
    /// in the URL for AUTH. None (the default) disables L2.
    pub redis_url: Option<String>,
    /// Seed node URLs of a Redis Cluster, instead of `redis_url`.
    pub redis_cluster_urls: Vec<String>,
    /// Prefix of every Redis key (`<prefix>:v1:<hex digest>`). Default `deepseek:cache`.
    pub key_prefix: String,
    /// Time limit of each Redis operation, connection included. Default 100 ms.
    pub redis_timeout_ms: u64,
    /// After a failed Redis connection, how long L2 is skipped before trying again.
    /// Default 1 000 ms.
    pub redis_retry_ms: u64,
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
            l1_ttl_ms: 300_000,
            l1_max_bytes: 64 * 1024 * 1024,
            l2_ttl_ms: 3_600_000,
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            key_prefix: "deepseek:cache".to_owned(),
            redis_timeout_ms: 100,
            redis_retry_ms: 1_000,
            cache_nonzero_temperature: false,
            max_request_bytes: DEFAULT_BODY_LIMIT,
            max_entry_bytes: 4 * 1024 * 1024,
        }
    }
}

impl CacheConfig {
    pub(crate) fn l1_ttl(&self) -> Duration {
        Duration::from_millis(self.l1_ttl_ms)
    }
    pub(crate) fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.l1_max_bytes > 0 && self.l1_ttl_ms == 0 {
            return Err(ConfigError::new(ErrorKind::Invalid(
                "l1_ttl_ms must be > 0",
            )));
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::new(ErrorKind::Invalid(
                "max_request_bytes must be > 0",
            )));
        }
        if self.max_entry_bytes == 0 {
            return Err(ConfigError::new(ErrorKind::Invalid(
                "max_entry_bytes must be > 0",
            )));
        }
        let has_l2 = self.redis_url.is_some() || !self.redis_cluster_urls.is_empty();
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err(ConfigError::new(ErrorKind::Invalid(
                "set either redis_url or redis_cluster_urls, not both",
            )));
        }
        if has_l2 {
            if self.l2_ttl_ms == 0 {
                return Err(ConfigError::new(ErrorKind::Invalid(
                    "l2_ttl_ms must be > 0",
                )));
            }
            if self.redis_timeout_ms == 0 {
                return Err(ConfigError::new(ErrorKind::Invalid(
                    "redis_timeout_ms must be > 0",
                )));
            }
            if self.key_prefix.is_empty() {
                return Err(ConfigError::new(ErrorKind::Invalid(
                    "key_prefix must not be empty",
                )));
            }
            if !cfg!(feature = "redis") {
                return Err(ConfigError::new(ErrorKind::RedisDisabled));
            }
        }
        Ok(())
    }
}

/// A cache configuration that cannot work, returned by
/// [`CacheBuilder::build`](crate::CacheBuilder::build).
#[derive(Debug)]
pub struct ConfigError {
    kind: ErrorKind,
}

#[derive(Debug)]
pub(crate) enum ErrorKind {
    Invalid(&'static str),
    RedisDisabled,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    RedisUrl,
}

impl ConfigError {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        ConfigError { kind }
    }

    /// Whether a Redis URL could not be parsed.
    pub fn is_redis_url(&self) -> bool {
        matches!(self.kind, ErrorKind::RedisUrl)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Invalid(what) => write!(f, "invalid cache config: {what}"),
            ErrorKind::RedisDisabled => f.write_str(
                "invalid cache config: a Redis URL is set but the `redis` feature of \
                 tower-deepseek-cache is disabled",
            ),
            ErrorKind::RedisUrl => f.write_str(
                "invalid cache config: a Redis URL does not parse (expected redis://, rediss:// \
                 or redis+unix:// with host, port, optional user:password@ and /db)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
