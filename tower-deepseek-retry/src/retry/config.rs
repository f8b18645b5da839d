//! The retry layer's serde configuration.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_deepseek_core::config::{ConfigError, duration_ms, option_duration_ms};

use super::schedule::Schedules;

/// The retry budget: how many retries the layer may make compared to the requests it sees,
/// with the semantics of tower's [`TpsBudget`](tower::retry::budget::TpsBudget) (Finagle's
/// design), lock-free. An outage then costs at most `retry_percent` extra load plus a small
/// reserve, instead of a retry storm.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Whether the budget applies at all.
    pub enabled: bool,
    /// How long a deposit counts, 1 to 60 s (serde `ttl_ms`, in milliseconds).
    #[serde(rename = "ttl_ms", with = "duration_ms")]
    pub ttl: Duration,
    /// Retries allowed per second whatever the traffic (the reserve).
    pub min_per_sec: u32,
    /// Retries allowed per request, on top of the reserve (0.2 = one retry per five requests).
    pub retry_percent: f32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_millis(10_000),
            min_per_sec: 10,
            retry_percent: 0.2,
        }
    }
}

/// The retry layer's configuration, readable from TOML/JSON with `serde`. Durations are
/// milliseconds in `*_ms` fields. Every field has the default shown in its docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in total, the first included. Default 7 (room for the guide's 429 schedule:
    /// 1, 2, 4, 8, 16, 32 s). Each outcome's own `max_retries` bounds it further (see
    /// [`Schedules`](crate::Schedules)).
    pub max_attempts: u32,
    /// No attempt starts (and no wait is begun that would end) after this long since the call
    /// began. Default 60 000 (1 min); `null` for none. An attempt already in flight is bounded
    /// by the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below, not cut by this. (Serde
    /// `total_deadline_ms`, in milliseconds.)
    #[serde(rename = "total_deadline_ms", with = "option_duration_ms")]
    pub total_deadline: Option<Duration>,
    /// The longest `Retry-After` (or, with `wait_for_open_breaker`, breaker wait) the layer is
    /// willing to sleep; a longer one stops the retries and returns the response. Default
    /// 60 s (the total deadline bounds it too). (Serde `max_retry_after_ms`, in milliseconds.)
    #[serde(rename = "max_retry_after_ms", with = "duration_ms")]
    pub max_retry_after: Duration,
    /// Wait for an open circuit breaker below (its [`BreakerOpen`] error's `retry_after`) and
    /// try again, within `max_retry_after` and the total deadline, instead of failing fast.
    /// For batch callers that prefer a late answer to an error. Default `false`: a caller gets
    /// the breaker's error at once, without an upstream call (the point of a breaker).
    ///
    /// [`BreakerOpen`]: tower_deepseek_core::error::BreakerOpen
    pub wait_for_open_breaker: bool,
    /// Retry transport errors after the request may have been sent (reset, read timeout).
    /// DeepSeek may then bill twice. Default `false`.
    pub retry_after_send: bool,
    /// Each retry after a 504 or an attempt timeout multiplies the attempt timeouts of the
    /// timeout layer below by this. Default 2.0.
    pub timeout_multiplier: f64,
    /// Largest request body buffered for replay, in bytes. A larger body is sent once and never
    /// retried. Default 8 MiB.
    pub body_limit: usize,
    /// How much of a non-streaming (JSON) 2xx body is read before deciding, in bytes, so that an
    /// empty, truncated or in-band-error answer can be retried. A longer body is handed over
    /// after this much and watched to its end. Default 1 MiB. (SSE streams are only read to
    /// their first event.)
    pub json_inspect_limit: usize,
    /// The retry budget.
    pub budget: BudgetConfig,
    /// The per-outcome schedules.
    pub schedules: Schedules,
    /// Seed of the jitter's random generator (tests); random when `None`.
    pub rng_seed: Option<u64>,
    /// Offer the credential layer below (`OAuth2Layer`) to replay a request after a 401 for
    /// it, so that it keeps no copy of its own: each attempt whose body is kept carries
    /// [`ReplayOn401`](tower_deepseek_core::protocol::ReplayOn401), and a 401 marked
    /// [`CredentialRefreshed`](tower_deepseek_core::protocol::CredentialRefreshed) is sent again
    /// once, at once, outside the budget, `max_attempts` and the total deadline. Default `true`.
    pub credential_replay: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 7,
            total_deadline: Some(Duration::from_millis(60_000)),
            max_retry_after: Duration::from_millis(60_000),
            wait_for_open_breaker: false,
            retry_after_send: false,
            timeout_multiplier: 2.0,
            body_limit: DEFAULT_BODY_LIMIT,
            json_inspect_limit: 1024 * 1024,
            budget: BudgetConfig::default(),
            schedules: Schedules::default(),
            rng_seed: None,
            credential_replay: true,
        }
    }
}

impl RetryConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError::new(field, reason));
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if !(self.timeout_multiplier.is_finite() && self.timeout_multiplier >= 1.0) {
            return bad("timeout_multiplier", "must be a finite number >= 1.0");
        }
        if self.budget.enabled {
            if !(1_000..=60_000).contains(&self.budget.ttl.as_millis()) {
                return bad("budget.ttl_ms", "must be between 1000 and 60000");
            }
            if !(0.0..=1000.0).contains(&self.budget.retry_percent) {
                return bad("budget.retry_percent", "must be between 0 and 1000");
            }
            if self.budget.min_per_sec >= i32::MAX as u32 {
                return bad("budget.min_per_sec", "is too large");
            }
        }
        if let Err(reason) = self.schedules.validate() {
            return bad("schedules", reason);
        }
        Ok(())
    }
}
