//! The fleet's serde configuration and its builder.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::config::{ConfigError, duration_ms};

use super::Fleet;

/// The default key prefix: keys are `{<prefix>:<quota>}:<part>`.
pub const DEFAULT_KEY_PREFIX: &str = "tower-deepseek:fleet";

/// The default bound on one Redis round trip (connect included): 50 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default time Redis is left alone after a failure: 1 s.
pub const DEFAULT_RETRY: Duration = Duration::from_millis(1_000);

/// Where the fleet's shared state lives (serde; durations in milliseconds, in `*_ms` fields).
///
/// Exactly one of `redis_url` and `redis_cluster_urls` is set. URLs are `redis://`,
/// `rediss://` (TLS) or `redis+unix://`, with `user:password@` for AUTH and `/db`; they are
/// never logged or printed (`Debug` leaves them out).
///
/// ```
/// use tower_deepseek_retry::fleet::FleetConfig;
///
/// let cfg: FleetConfig = serde_json::from_str(
///     r#"{"redis_url": "redis://127.0.0.1:6379", "key_prefix": "gw", "timeout_ms": 50, "expected_instances": 3}"#,
/// ).unwrap();
/// assert_eq!(cfg.expected_instances, 3);
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetConfig {
    /// One Redis (`redis://`, `rediss://`; AUTH as `redis://:password@host`).
    pub redis_url: Option<String>,
    /// The seed nodes of a Redis Cluster.
    pub redis_cluster_urls: Vec<String>,
    /// The prefix of every key (default [`DEFAULT_KEY_PREFIX`]); it may not hold `{` or `}`
    /// (the keys of one quota are put in one cluster slot with a hash tag around the prefix
    /// and the quota's name).
    pub key_prefix: String,
    /// The bound on one Redis round trip, connecting included (default 50 ms; serde
    /// `timeout_ms`). A slower answer counts as Redis unavailable.
    #[serde(rename = "timeout_ms", with = "duration_ms")]
    pub timeout: Duration,
    /// How long Redis is left alone after a failure before it is tried again (default 1 s;
    /// serde `retry_ms`). Meanwhile every limit uses its local share.
    #[serde(rename = "retry_ms", with = "duration_ms")]
    pub retry: Duration,
    /// How many instances share the quotas (default 1): while Redis is unavailable each
    /// instance admits `quota / expected_instances` (at least 1) on its own.
    pub expected_instances: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            retry: DEFAULT_RETRY,
            expected_instances: 1,
        }
    }
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URLs: they may hold a password.
        f.debug_struct("FleetConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_cluster_urls", &self.redis_cluster_urls.len())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("expected_instances", &self.expected_instances)
            .finish()
    }
}

impl FleetConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.redis_url, self.redis_cluster_urls.is_empty()) {
            (None, true) => {
                return Err(ConfigError::new(
                    "redis_url",
                    "or redis_cluster_urls must be set",
                ));
            }
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "redis_url",
                    "and redis_cluster_urls cannot both be set",
                ));
            }
            _ => {}
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "key_prefix",
                "must be non-empty and hold no `{` or `}`",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout_ms", "must be more than 0"));
        }
        if self.expected_instances == 0 {
            return Err(ConfigError::new("expected_instances", "must be at least 1"));
        }
        Ok(())
    }
}

/// Builds a [`Fleet`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FleetBuilder {
    pub(crate) cfg: FleetConfig,
}

impl FleetBuilder {
    /// One Redis.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.cfg.redis_url = Some(url.into());
        self
    }

    /// The seed nodes of a Redis Cluster.
    pub fn redis_cluster<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.cfg.redis_cluster_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The prefix of every key (default [`DEFAULT_KEY_PREFIX`]).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.cfg.key_prefix = prefix.into();
        self
    }

    /// The bound on one Redis round trip (default 50 ms).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.cfg.timeout = d;
        self
    }

    /// How long Redis is left alone after a failure (default 1 s).
    pub fn retry(mut self, d: Duration) -> Self {
        self.cfg.retry = d;
        self
    }

    /// How many instances share the quotas (default 1), for the local shares.
    pub fn expected_instances(mut self, n: u32) -> Self {
        self.cfg.expected_instances = n;
        self
    }

    /// Validates and builds. No I/O: the connection is made on first use.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a missing or unparseable URL (never repeated), a prefix with braces,
    /// a zero timeout or zero instances.
    pub fn build(self) -> Result<Fleet, ConfigError> {
        Fleet::from_config(&self.cfg)
    }
}
