//! [`StackConfig`]: the stack's layers from a configuration file.

use std::fmt;

use serde::Deserialize;
use tower_deepseek_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use tower_deepseek_cache::{CacheConfig, CacheLayer};
use tower_deepseek_redact::{RedactConfig, RedactLayer};
use tower_deepseek_retry::rate_limit::{RateLimitConfig, RateLimitLayer};
use tower_deepseek_retry::timeout::{TimeoutConfig, TimeoutLayer};
use tower_deepseek_retry::{RetryConfig, RetryLayer};

use super::{RecommendedStack, StackBuilder};

/// The layers of the stack that a file can configure, one optional table per layer, each the
/// layer crate's own `serde` configuration.
///
/// A table that is present turns its layer on, with the integration guide's defaults for
/// every key it leaves out (an empty table is all defaults); a table that is absent leaves
/// the layer off. Unknown keys are errors. [`StackConfig::recommended`] turns every layer on
/// with the defaults. Audit (a sink) and auth (a secret, a token client) are set in code on
/// the [`StackBuilder`] that [`builder`](Self::builder) returns.
///
/// ```
/// use tower_deepseek::stack::StackConfig;
///
/// let cfg: StackConfig = serde_json::from_str(r#"{
///     "cache": {},
///     "retry": { "max_attempts": 3 },
///     "circuit_breaker": { "failure_rate_threshold": 50.0 }
/// }"#).unwrap();
/// let stack = cfg.builder(None)?.build()?;
/// assert_eq!(stack.layers(), ["cache", "retry", "circuit_breaker"]);
/// # Ok::<(), tower_deepseek::stack::StackConfigError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StackConfig {
    /// `[redact]`: PII masking ([`RedactLayer`]).
    pub redact: Option<RedactConfig>,
    /// `[cache]`: the response cache ([`CacheLayer`]).
    pub cache: Option<CacheConfig>,
    /// `[rate_limit]`: requests and tokens per minute ([`RateLimitLayer`]).
    pub rate_limit: Option<RateLimitConfig>,
    /// `[retry]`: status-aware retries ([`RetryLayer`]).
    pub retry: Option<RetryConfig>,
    /// `[circuit_breaker]`: the circuit breaker ([`CircuitBreakerLayer`]).
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// `[timeout]`: attempt timeouts ([`TimeoutLayer`]).
    pub timeout: Option<TimeoutConfig>,
}

impl StackConfig {
    /// Every layer on, with the guide's defaults.
    pub fn recommended() -> Self {
        Self {
            redact: Some(RedactConfig::default()),
            cache: Some(CacheConfig::default()),
            rate_limit: Some(RateLimitConfig::default()),
            retry: Some(RetryConfig::default()),
            circuit_breaker: Some(CircuitBreakerConfig::default()),
            timeout: Some(TimeoutConfig::default()),
        }
    }

    /// Validates every table and builds its layer, for callers' bodies `B`. With both a rate
    /// limit and retries, the retry layer pauses the limiter on every 429 it sees (DeepSeek's
    /// limits are account-wide). `redact_hash_key` is needed when a redaction mode is `hash`.
    ///
    /// # Errors
    ///
    /// [`StackConfigError`] naming the first layer whose table is invalid.
    pub fn builder(
        &self,
        redact_hash_key: Option<Vec<u8>>,
    ) -> Result<StackBuilder, StackConfigError> {
        let mut b = RecommendedStack::builder();
        if let Some(c) = &self.redact {
            b = b.redact(
                RedactLayer::from_config(c.clone(), redact_hash_key)
                    .map_err(|e| StackConfigError::new("redact", e))?,
            );
        }
        if let Some(c) = &self.cache {
            b = b.cache(
                CacheLayer::from_config(c.clone())
                    .map_err(|e| StackConfigError::new("cache", e))?,
            );
        }
        let limiter = match &self.rate_limit {
            Some(c) => Some(
                RateLimitLayer::from_config(c.clone())
                    .map_err(|e| StackConfigError::new("rate_limit", e))?,
            ),
            None => None,
        };
        if let Some(c) = &self.retry {
            let mut r = RetryLayer::builder().config(c.clone());
            if let Some(l) = &limiter {
                r = r.pause_on_rate_limit(l.pause_handle());
            }
            b = b.retry(r.build().map_err(|e| StackConfigError::new("retry", e))?);
        }
        if let Some(l) = limiter {
            b = b.rate_limit(l);
        }
        if let Some(c) = &self.circuit_breaker {
            b = b.circuit_breaker(
                CircuitBreakerLayer::from_config(c.clone())
                    .map_err(|e| StackConfigError::new("circuit_breaker", e))?,
            );
        }
        if let Some(c) = &self.timeout {
            b = b.timeout(
                TimeoutLayer::from_config(*c).map_err(|e| StackConfigError::new("timeout", e))?,
            );
        }
        Ok(b)
    }
}

/// A layer of the stack is configured wrongly.
#[derive(Debug)]
#[non_exhaustive]
pub struct StackConfigError {
    layer: &'static str,
    message: String,
}

impl StackConfigError {
    pub(crate) fn new(layer: &'static str, message: impl fmt::Display) -> Self {
        Self {
            layer,
            message: message.to_string(),
        }
    }

    /// The layer (the table's name: `cache`, `retry`, ...).
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// What is wrong, without the layer's name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StackConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid [{}] configuration: {}",
            self.layer, self.message
        )
    }
}

impl std::error::Error for StackConfigError {}
