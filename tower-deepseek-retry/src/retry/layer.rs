use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_deepseek_core::classify::Classifier;
use tower_layer::Layer;

use super::Retry;
use super::schedule::{Schedule, Schedules};
use crate::ConfigError;

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
    /// How long a deposit counts, in milliseconds (1 000 to 60 000).
    pub ttl_ms: u64,
    /// Retries allowed per second whatever the traffic (the reserve).
    pub min_per_sec: u32,
    /// Retries allowed per request, on top of the reserve (0.2 = one retry per five requests).
    pub retry_percent: f32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: 10_000,
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
    /// [`Schedules`]).
    pub max_attempts: u32,
    /// No attempt starts (and no wait is begun that would end) after this long since the call
    /// began. Default 60 000 (1 min); `null` for none. An attempt already in flight is bounded
    /// by the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below, not cut by this.
    pub total_deadline_ms: Option<u64>,
    /// The longest `Retry-After` (or, with `wait_for_open_breaker`, breaker wait) the layer is
    /// willing to sleep; a longer one stops the retries and returns the response. Default
    /// 60 000 (the total deadline bounds it too).
    pub max_retry_after_ms: u64,
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
    /// [`ReplayOn401`](tower_deepseek_core::meta::ReplayOn401), and a 401 marked
    /// [`CredentialRefreshed`](tower_deepseek_core::meta::CredentialRefreshed) is sent again
    /// once, at once, outside the budget, `max_attempts` and the total deadline. Default `true`.
    pub credential_replay: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 7,
            total_deadline_ms: Some(60_000),
            max_retry_after_ms: 60_000,
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
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError::Invalid { field, reason });
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if !(self.timeout_multiplier.is_finite() && self.timeout_multiplier >= 1.0) {
            return bad("timeout_multiplier", "must be a finite number >= 1.0");
        }
        if self.budget.enabled {
            if !(1_000..=60_000).contains(&self.budget.ttl_ms) {
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

pub(crate) struct Shared {
    pub(crate) cfg: RetryConfig,
    pub(crate) budget: Option<super::budget::RetryBudget>,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) classifier: Classifier,
    pub(crate) total_deadline: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) pause: Option<crate::rate_limit::PauseHandle>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Retries requests on the outcomes the shared classifier calls transient, with the guide's
/// per-status schedule. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    pub(crate) shared: Arc<Shared>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A layer with the default configuration (the guide's table).
    pub fn new() -> Self {
        Self::from_config(RetryConfig::default()).expect("the default config is valid")
    }

    /// A builder starting from the defaults.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            cfg: RetryConfig::default(),
            pause: None,
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a value is out of range.
    pub fn from_config(cfg: RetryConfig) -> Result<Self, ConfigError> {
        Self::build(cfg, None)
    }

    fn build(
        cfg: RetryConfig,
        pause: Option<crate::rate_limit::PauseHandle>,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let budget = cfg.budget.enabled.then(|| {
            super::budget::RetryBudget::new(
                Duration::from_millis(cfg.budget.ttl_ms),
                cfg.budget.min_per_sec,
                cfg.budget.retry_percent,
            )
        });
        let rng = match cfg.rng_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                budget,
                rng: Mutex::new(rng),
                // The retry decides on the verdict alone: no usage or model copied out.
                classifier: Classifier::new()
                    .max_json_inspect(cfg.json_inspect_limit)
                    .summary(false),
                total_deadline: cfg.total_deadline_ms.map(Duration::from_millis),
                max_retry_after: Duration::from_millis(cfg.max_retry_after_ms),
                pause,
                cfg,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.cfg
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`RetryLayer`]; every setter defaults to the guide's value (see [`RetryConfig`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayerBuilder {
    cfg: RetryConfig,
    pause: Option<crate::rate_limit::PauseHandle>,
}

impl RetryLayerBuilder {
    /// Attempts in total, the first included (default 7).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.cfg.max_attempts = n;
        self
    }

    /// No attempt starts after this long since the call began (default 1 min).
    pub fn total_deadline(mut self, d: Duration) -> Self {
        self.cfg.total_deadline_ms = Some(d.as_millis() as u64);
        self
    }

    /// No total deadline.
    pub fn no_total_deadline(mut self) -> Self {
        self.cfg.total_deadline_ms = None;
        self
    }

    /// The longest `Retry-After` honoured (default 60 s); a longer one stops retrying.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.cfg.max_retry_after_ms = d.as_millis() as u64;
        self
    }

    /// Wait for an open circuit breaker below and try again, within `max_retry_after` and the
    /// total deadline (default off: fail fast; see [`RetryConfig::wait_for_open_breaker`]).
    pub fn wait_for_open_breaker(mut self, yes: bool) -> Self {
        self.cfg.wait_for_open_breaker = yes;
        self
    }

    /// Retry transport errors after the request may have been sent (default off: may bill
    /// twice).
    pub fn retry_after_send(mut self, yes: bool) -> Self {
        self.cfg.retry_after_send = yes;
        self
    }

    /// Factor applied to the attempt timeouts after a 504 or an attempt timeout (default 2).
    pub fn timeout_multiplier(mut self, f: f64) -> Self {
        self.cfg.timeout_multiplier = f;
        self
    }

    /// Largest request body buffered for replay (default 8 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.cfg.body_limit = bytes;
        self
    }

    /// How much of a JSON 2xx is read before deciding (default 1 MiB).
    pub fn json_inspect_limit(mut self, bytes: usize) -> Self {
        self.cfg.json_inspect_limit = bytes;
        self
    }

    /// The retry budget (see [`BudgetConfig`]).
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.cfg.budget = BudgetConfig {
            enabled: true,
            ttl_ms: ttl.as_millis() as u64,
            min_per_sec,
            retry_percent,
        };
        self
    }

    /// No retry budget (only `max_attempts` and the deadline bound retries).
    pub fn no_budget(mut self) -> Self {
        self.cfg.budget.enabled = false;
        self
    }

    /// Whether to offer the credential layer below the replay after a 401 (default `true`;
    /// see [`RetryConfig::credential_replay`]).
    pub fn credential_replay(mut self, yes: bool) -> Self {
        self.cfg.credential_replay = yes;
        self
    }

    /// Seeds the jitter (for reproducible schedules in tests).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.cfg.rng_seed = Some(seed);
        self
    }

    /// Replaces all the schedules.
    pub fn schedules(mut self, s: Schedules) -> Self {
        self.cfg.schedules = s;
        self
    }

    /// Schedule for 429.
    pub fn on_rate_limited(mut self, s: Schedule) -> Self {
        self.cfg.schedules.rate_limited = s;
        self
    }

    /// Schedule for 502.
    pub fn on_bad_gateway(mut self, s: Schedule) -> Self {
        self.cfg.schedules.bad_gateway = s;
        self
    }

    /// Schedule for 503.
    pub fn on_overloaded(mut self, s: Schedule) -> Self {
        self.cfg.schedules.overloaded = s;
        self
    }

    /// Schedule for 504, 408 and attempt timeouts.
    pub fn on_timeout(mut self, s: Schedule) -> Self {
        self.cfg.schedules.timeout = s;
        self
    }

    /// Schedule for 500 and other 5xx.
    pub fn on_server_error(mut self, s: Schedule) -> Self {
        self.cfg.schedules.server = s;
        self
    }

    /// Schedule for empty, cut, in-band-error and out-of-resources 2xx bodies.
    pub fn on_bad_body(mut self, s: Schedule) -> Self {
        self.cfg.schedules.body = s;
        self
    }

    /// Schedule for connect errors.
    pub fn on_connect_error(mut self, s: Schedule) -> Self {
        self.cfg.schedules.connect = s;
        self
    }

    /// Schedule for transport errors after sending (used only with `retry_after_send`).
    pub fn on_transport_error(mut self, s: Schedule) -> Self {
        self.cfg.schedules.transport = s;
        self
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a value is out of range.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        RetryLayer::build(self.cfg, self.pause)
    }

    /// Starts from a (deserialized) configuration.
    pub fn config(mut self, cfg: RetryConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Every 429 with `Retry-After` pauses this rate limiter (usually the
    /// [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) above), so that other requests
    /// stop hitting the account-wide limit too, not only the one that got the 429.
    pub fn pause_on_rate_limit(mut self, handle: crate::rate_limit::PauseHandle) -> Self {
        self.pause = Some(handle);
        self
    }
}
