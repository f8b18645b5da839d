//! [`RetryLayer`](crate::RetryLayer) and its builder.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_deepseek_core::classify::Classifier;
use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::config::{BudgetConfig, RetryConfig};
use super::schedule::{Schedule, Schedules};
use super::service::Retry;

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

/// Status-aware retries driven by the shared classifier, safe for streams.
///
/// [`RetryLayer`](crate::RetryLayer) retries what [`Classifier`](tower_deepseek_core::classify::Classifier) calls
/// transient, with one [`Schedule`](crate::Schedule) per kind of outcome. The defaults are the integration
/// guide's table:
///
/// | outcome | default schedule |
/// |---|---|
/// | 429 | exponential 1 s doubling to 32 s, full jitter; with `Retry-After` (seconds or HTTP-date) the larger of the two, never earlier |
/// | 502 | at once, at most 3 retries |
/// | 503 | uniform 5 to 15 s, or exactly `Retry-After` when sent; at most 1 retry |
/// | 504, 408, attempt timeout | at once, with the attempt timeouts of the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below multiplied by `timeout_multiplier` (2); at most 2 retries |
/// | 500, other 5xx | exponential 500 ms doubling (cap 8 s), full jitter; at most 3 retries |
/// | empty / cut / in-band-error / out-of-resources 2xx, before a byte reached the caller | as 500 |
/// | connect error (not sent) | at once, then exponential 500 ms to 8 s; at most 3 retries |
/// | reset or read error after sending | never, unless `retry_after_send(true)` (it may bill twice) |
/// | 400, 401, 402, 403, 404, 422, local rejections | never |
/// | 401 marked [`CredentialRefreshed`](tower_deepseek_core::protocol::CredentialRefreshed) by the auth layer below | once, at once, outside the budget, `max_attempts` and the deadline (see below) |
/// | breaker open ([`BreakerOpen`](tower_deepseek_core::error::BreakerOpen) from below) | never: the caller gets the breaker's error at once ([`StopReason::BreakerOpen`](crate::StopReason::BreakerOpen)); with `wait_for_open_breaker(true)` (batch callers), after its wait, if that fits `max_retry_after` and the total deadline |
///
/// All retries are bounded by `max_attempts` (7 in total), each outcome's own number of
/// retries, a total deadline (1 min: no attempt starts, and no wait ends, later),
/// `max_retry_after` (60 s: a longer `Retry-After` stops retrying rather than waking early)
/// and a retry budget (the semantics of tower's
/// [`TpsBudget`](tower::retry::budget::TpsBudget), lock-free: 20 % of the requests of the
/// last 10 s plus 10 per second), so an outage cannot become a retry storm.
///
/// # Worst cases with the defaults
///
/// How long the layer can hold a caller in its waits between attempts (each attempt's own
/// time comes on top, bounded by the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below):
///
/// | the upstream answers every attempt with | attempts | waits, at most |
/// |---|---|---|
/// | 500 or another 5xx (a dead upstream), or a bad 2xx | 4 | 0.5 + 1 + 2 = **3.5 s** (full jitter: 1.75 s on average) |
/// | 502 | 4 | **0 s** |
/// | connection refused | 4 | 0 + 0.5 + 1 = **1.5 s** |
/// | 504, or an attempt timeout | 3 | **0 s** (attempt timeouts ×1, ×2, ×4) |
/// | 503 | 2 | **15 s**, or its `Retry-After` up to 60 s |
/// | 429 | 7 | 1 + 2 + 4 + 8 + 16 + 32 s, cut by the total deadline: **60 s** |
/// | anything, mixed | 7 | **60 s** (the total deadline) |
/// | an open circuit breaker below | 1, not sent | **0 s**: its error at once |
///
/// Under an outage seen by many callers, the budget ends retries early (the caller gets the
/// failed answer at once), and the circuit breaker below, once open, answers in microseconds.
///
/// # Stream safety
///
/// A retry decision is taken only before any byte of the response reaches the caller:
///
/// - an SSE 2xx is read up to its first `data:` event (keep-alive comments and blank lines do
///   not count). A stream that ends, breaks or times out (first-token timeout of the
///   [`TimeoutLayer`](crate::timeout::TimeoutLayer) below) before it is retried; so is a first
///   event that is an in-band error;
/// - a JSON 2xx is read to its end (up to `json_inspect_limit`, 1 MiB), so an empty answer
///   after keep-alive blank lines, a truncated body, an in-band `{"error":…}` or
///   `insufficient_system_resource` is retried. The caller does not lose the first byte of a
///   non-streaming answer by this: it would read the whole body anyway.
///
/// What was read while deciding is handed to the caller first, in order, then the rest of the
/// stream ([`ResponseBody`](crate::ResponseBody)). After that nothing is retried (it would duplicate output): a
/// stream that breaks ends the caller's body with the transport error, and one that ends
/// without `data: [DONE]` ends with an
/// [`IncompleteResponse`](tower_deepseek_core::error::IncompleteResponse) error, never a
/// silent truncation.
///
/// # When retries stop
///
/// The caller gets the last outcome: a failed **response** (the last 429, a 402) is returned
/// as it is, since that is what a user of hyper expects to inspect; an **error** is returned
/// as it is when it was never retryable, and wrapped in [`RetriesExhausted`](crate::RetriesExhausted) (with its
/// [`StopReason`](crate::StopReason): budget exhausted, deadline, max attempts, ...) when retries were attempted
/// or cut short. Every response carries an [`Attempts`](crate::Attempts) extension with the attempt count, the
/// class of each failed attempt and why retrying stopped.
///
/// # Bodies
///
/// The request body is buffered once (up to `body_limit`, 8 MiB) with core's `buffer`, and
/// each attempt sends a clone of the same [`Bytes`](bytes::Bytes), without copying. A larger
/// body is streamed through once and never retried ([`StopReason::BodyNotReplayable`](crate::StopReason::BodyNotReplayable)). The
/// inner service therefore receives a
/// [`ReplayBody<B>`](tower_deepseek_core::body::ReplayBody), core's one replayable body. Request and response bodies must be
/// `Unpin`, as every hyper and http-body-util body is (box others).
///
/// # Replays after a 401 for the auth layer
///
/// Each attempt whose body is kept carries
/// [`ReplayOn401::Offered`](tower_deepseek_core::protocol::ReplayOn401) (then `Replaying` once the
/// offer is used): an `OAuth2Layer` below then keeps no copy of the request for its own 401
/// replay, since this layer has one already. It answers a 401 for which it obtained a new token
/// with the [`CredentialRefreshed`](tower_deepseek_core::protocol::CredentialRefreshed) mark, and
/// this layer sends the request again, once per call. `credential_replay(false)` turns this off.
///
/// # Order
///
/// Put it below the rate limiter and the cache, and above the circuit breaker, auth and the
/// [`TimeoutLayer`](crate::timeout::TimeoutLayer): each attempt then passes the breaker, gets a
/// fresh credential, and has its own timeouts (which the retry layer lengthens after a 504).
///
/// # Events and metrics
///
/// Target `tower_deepseek_retry`: an `INFO` event per retry with `attempt`, `next_attempt`,
/// `delay_ms` and `reason` (the class label, never request content), `DEBUG` when it stops.
/// Metrics: `deepseek_retry_attempts_total{reason}`, `deepseek_retry_budget_exhausted_total`,
/// `deepseek_retry_delay_seconds` (histogram).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, Service};
/// use tower_deepseek_core::body::ReplayBody;
/// use tower_deepseek_retry::{Attempts, RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let mut svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder().max_attempts(4).total_deadline(Duration::from_secs(60)).build()?)
///     .service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
///         let resp = http::Response::builder()
///             .header("content-type", "application/json")
///             .body(Full::new(Bytes::from_static(br#"{"choices":[{"finish_reason":"stop"}]}"#)))?;
///         Ok::<_, tower::BoxError>(resp)
///     });
/// let req = http::Request::post("https://api.deepseek.com/chat/completions")
///     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","messages":[]}"#)))?;
/// let resp = svc.ready().await?.call(req).await?;
/// assert_eq!(resp.extensions().get::<Attempts>().unwrap().count(), 1);
/// # Ok(())
/// # }
/// ```
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
                cfg.budget.ttl,
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
                total_deadline: cfg.total_deadline,
                max_retry_after: cfg.max_retry_after,
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

/// Builds a [`RetryLayer`](crate::RetryLayer); every setter defaults to the guide's value (see [`RetryConfig`](crate::RetryConfig)).
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
        self.cfg.total_deadline = Some(d);
        self
    }

    /// No total deadline.
    pub fn no_total_deadline(mut self) -> Self {
        self.cfg.total_deadline = None;
        self
    }

    /// The longest `Retry-After` honoured (default 60 s); a longer one stops retrying.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.cfg.max_retry_after = d;
        self
    }

    /// Wait for an open circuit breaker below and try again, within `max_retry_after` and the
    /// total deadline (default off: fail fast; see [`RetryConfig::wait_for_open_breaker`](crate::RetryConfig::wait_for_open_breaker)).
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

    /// The retry budget (see [`BudgetConfig`](crate::BudgetConfig)).
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.cfg.budget = BudgetConfig {
            enabled: true,
            ttl,
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
    /// see [`RetryConfig::credential_replay`](crate::RetryConfig::credential_replay)).
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
