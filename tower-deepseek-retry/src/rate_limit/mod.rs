//! Requests-per-minute and tokens-per-minute limits, keyed per model or tenant, with fair
//! bounded waits.
//!
//! [`RateLimitLayer`] paces what goes upstream:
//!
//! - **requests per minute** on [governor](https://docs.rs/governor) (GCRA): one direct
//!   (un-keyed) governor limiter in each key's state, so that the key is looked up once (in
//!   the map that also holds the key's turnstile) and an admission is governor's one
//!   compare-and-swap; driven by tokio's clock so that paused-time tests see it;
//! - **tokens per minute** in a token bucket on the same GCRA arithmetic, because a token
//!   budget must be *settled*: before sending, a request takes an
//!   estimate (`request body bytes / 4 + max_tokens`, or `default_max_tokens` when the request
//!   has none: a deliberate over-estimate); when the response ends, the real `usage.total_tokens`
//!   replaces it (the difference is taken or given back). Governor cannot give cells back,
//!   hence the own bucket. A response that is an HTTP error gives the whole estimate back (the
//!   upstream billed nothing); a cancelled or broken one keeps it. The usage is read from the
//!   summary a layer below shares when there is one (core's [`SharedOutcome`]: the breaker
//!   publishes it when audit asks for call facts), so that the body is not parsed twice;
//!   otherwise this layer classifies the body itself as it passes.
//!
//! Keys ([`KeyBy`]): one global quota, per model (read from the request body), per tenant
//! (core's [`TenantId`] extension; requests without one
//! share a quota), or per model and tenant.
//!
//! # Waiting, not rejecting
//!
//! A request over its quota **waits** its turn: per key, requests are admitted in arrival order
//! (a FIFO turnstile: a later request never overtakes one that waits). When the wait would pass
//! `max_wait` (30 s), the request fails at once with [`RateLimited`] and its `retry_after`,
//! without consuming quota; a request whose token estimate is larger than the token burst can
//! never pass and fails at once with [`RequestTooLarge`].
//!
//! # 429 pauses everyone
//!
//! DeepSeek's 429 is account-wide. A 429 with `Retry-After` seen by this layer pauses the whole
//! limiter (every key) until then. A [`RetryLayer`](crate::retry::RetryLayer) below it sees the
//! 429s first: give it [`RateLimitLayer::pause_handle`] with
//! [`RetryLayerBuilder::pause_on_rate_limit`](crate::retry::RetryLayerBuilder::pause_on_rate_limit)
//! so that every 429 it retries pauses the limiter too.
//!
//! # Order
//!
//! Above the retry layer (a retry does not take a second slot: the retry layer's own budget and
//! schedule bound retries) and below the cache (a cache hit costs no quota).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer};
//! use tower_deepseek_core::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let limiter = RateLimitLayer::builder()
//!     .requests_per_minute(600)
//!     .tokens_per_minute(1_000_000)
//!     .key_by(KeyBy::Model)
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(limiter).service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","max_tokens":100,"messages":[]}"#)))?;
//! let resp = svc.ready().await?.call(req).await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(())
//! # }
//! ```

mod bucket;
mod error;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, Buffered, ObservedBody, ReplayBody};
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, EosClassifier, SharedOutcome};
use tower_deepseek_core::meta::TenantId;
use tower_layer::Layer;
use tower_service::Service;

use crate::ConfigError;
use bucket::TokenBucket;
pub use error::{RateLimited, RequestTooLarge};

/// The keys are already hashes (of the model and tenant, with a random seed): use them as is.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key states are pruned once there are at least this many.
const PRUNE_FLOOR: usize = 1024;

/// What a quota is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyBy {
    /// One quota for everything.
    #[default]
    Global,
    /// One quota per `model` of the request body.
    Model,
    /// One quota per [`TenantId`] extension.
    Tenant,
    /// One quota per model and tenant.
    ModelAndTenant,
}

/// The limiter's configuration (serde; durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Requests per minute per key; `null` for no request limit.
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once after a quiet period (default: one second's worth, at least 1).
    pub request_burst: Option<u32>,
    /// Tokens per minute per key; `null` for no token limit.
    pub tokens_per_minute: Option<u64>,
    /// Tokens allowed at once (default: the per-minute quota).
    pub token_burst: Option<u64>,
    /// What quotas are kept per (default global).
    pub key_by: KeyBy,
    /// Longest wait before a request fails with [`RateLimited`] (default 30 000).
    pub max_wait_ms: u64,
    /// Completion tokens assumed for a request without `max_tokens` (default 4096).
    pub default_max_tokens: u64,
    /// Largest request body read for the model and the estimate (default 8 MiB); a larger body
    /// is estimated at this size and passed on unread.
    pub body_limit: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            request_burst: None,
            tokens_per_minute: None,
            token_burst: None,
            key_by: KeyBy::Global,
            max_wait_ms: 30_000,
            default_max_tokens: 4096,
            body_limit: tower_deepseek_core::body::DEFAULT_BODY_LIMIT,
        }
    }
}

/// Governor clock on tokio's time (so paused time drives it), as nanoseconds since the layer
/// was built.
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    fn nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.nanos())
    }
}

/// One key's requests-per-minute limiter: governor's direct GCRA on tokio's clock.
type Rpm = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// The requests-per-minute state of a key: governor's direct limiter.
struct RequestQuota {
    limiter: Rpm,
    burst: NonZeroU32,
}

impl RequestQuota {
    fn new(per_minute: u64, burst: u64, clock: TokioClock) -> Self {
        let per_minute = NonZeroU32::new(u32::try_from(per_minute).unwrap_or(u32::MAX))
            .expect("validated: more than 0");
        let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX))
            .expect("validated: more than 0");
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            burst,
        }
    }

    /// Takes one request now (governor reads the clock), or says how long to wait.
    fn try_take(&self, clock: &TokioClock) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    /// For pruning: takes the whole burst if the quota has refilled completely (its state is
    /// then the same as a fresh one, and the key is about to be forgotten); takes nothing
    /// otherwise (governor consumes nothing from a refused check).
    fn take_all_if_full(&self) -> bool {
        matches!(self.limiter.check_n(self.burst), Ok(Ok(())))
    }
}

struct KeyState {
    turnstile: Semaphore,
    rpm: Option<RequestQuota>,
    tokens: Option<TokenBucket>,
}

struct Shared {
    cfg: RateLimitConfig,
    rpm_quota: Option<(u64, u64)>,   // (per minute, burst)
    token_quota: Option<(u64, u64)>, // (per minute, burst)
    keys: RwLock<HashMap<u64, Arc<KeyState>, BuildHasherDefault<KeyHasher>>>,
    prune_at: std::sync::atomic::AtomicUsize,
    hasher: RandomState,
    clock: TokioClock,
    pause: PauseHandle,
    max_wait: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Pauses the whole limiter; cheap to clone. Get one from [`RateLimitLayer::pause_handle`].
#[derive(Clone)]
pub struct PauseHandle {
    until: Arc<AtomicU64>,
    clock: TokioClock,
}

impl fmt::Debug for PauseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PauseHandle")
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl PauseHandle {
    /// Admits nothing for `d` from now (a longer pause already set is kept).
    pub fn pause_for(&self, d: Duration) {
        let until = self.clock.nanos().saturating_add(d.as_nanos() as u64);
        let prev = self.until.fetch_max(until, Ordering::AcqRel);
        if until > prev {
            metrics::counter!("deepseek_ratelimit_paused_total").increment(1);
            tracing::info!(
                target: "tower_deepseek_retry",
                pause_ms = d.as_millis() as u64,
                "rate limiter paused by an upstream 429"
            );
        }
    }

    /// What is left of the current pause.
    pub fn remaining(&self) -> Duration {
        let until = self.until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.clock.nanos()))
    }
}

/// Paces requests and tokens per minute. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A builder; without a quota set, the layer admits everything.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            cfg: RateLimitConfig::default(),
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts.
    pub fn from_config(cfg: RateLimitConfig) -> Result<Self, ConfigError> {
        let bad = |field, reason| Err(ConfigError::Invalid { field, reason });
        let rpm = match cfg.requests_per_minute {
            None => None,
            Some(0) => return bad("requests_per_minute", "must be more than 0"),
            Some(n) => {
                let burst = cfg.request_burst.unwrap_or((n / 60).max(1));
                if burst == 0 {
                    return bad("request_burst", "must be more than 0");
                }
                Some((u64::from(n), u64::from(burst)))
            }
        };
        let token_quota = match cfg.tokens_per_minute {
            None => None,
            Some(0) => return bad("tokens_per_minute", "must be more than 0"),
            Some(n) if n > 60_000_000_000 => {
                return bad("tokens_per_minute", "is too large");
            }
            Some(n) => {
                let burst = cfg.token_burst.unwrap_or(n);
                if burst == 0 {
                    return bad("token_burst", "must be more than 0");
                }
                Some((n, burst))
            }
        };
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                rpm_quota: rpm,
                token_quota,
                keys: RwLock::default(),
                prune_at: std::sync::atomic::AtomicUsize::new(PRUNE_FLOOR),
                hasher: RandomState::new(),
                pause: PauseHandle {
                    until: Arc::default(),
                    clock,
                },
                clock,
                max_wait: Duration::from_millis(cfg.max_wait_ms),
                cfg,
            }),
        })
    }

    /// How many keys the limiter currently keeps state for.
    pub fn tracked_keys(&self) -> usize {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// A handle that pauses this limiter; give it to the retry layer below
    /// ([`RetryLayerBuilder::pause_on_rate_limit`](crate::retry::RetryLayerBuilder::pause_on_rate_limit)).
    pub fn pause_handle(&self) -> PauseHandle {
        self.shared.pause.clone()
    }
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayerBuilder {
    cfg: RateLimitConfig,
}

impl RateLimitLayerBuilder {
    /// Requests per minute per key.
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.cfg.requests_per_minute = Some(n);
        self
    }

    /// Requests allowed at once (default one second's worth, at least 1).
    pub fn request_burst(mut self, n: u32) -> Self {
        self.cfg.request_burst = Some(n);
        self
    }

    /// Tokens per minute per key.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.cfg.tokens_per_minute = Some(n);
        self
    }

    /// Tokens allowed at once (default the per-minute quota).
    pub fn token_burst(mut self, n: u64) -> Self {
        self.cfg.token_burst = Some(n);
        self
    }

    /// What quotas are kept per.
    pub fn key_by(mut self, k: KeyBy) -> Self {
        self.cfg.key_by = k;
        self
    }

    /// Longest wait before [`RateLimited`] (default 30 s).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.cfg.max_wait_ms = d.as_millis() as u64;
        self
    }

    /// Completion tokens assumed without `max_tokens` (default 4096).
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.cfg.default_max_tokens = n;
        self
    }

    /// Largest body read for the estimate (default 8 MiB).
    pub fn body_limit(mut self, n: usize) -> Self {
        self.cfg.body_limit = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        RateLimitLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Paces requests and tokens per minute. See the [module docs](self).
#[derive(Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

/// What admission decided for one request.
struct Admitted {
    key: Option<Arc<KeyState>>,
    estimate: u64,
}

impl Shared {
    fn needs_body(&self) -> bool {
        self.token_quota.is_some()
            || matches!(self.cfg.key_by, KeyBy::Model | KeyBy::ModelAndTenant)
    }

    fn key(&self, model: Option<&str>, tenant: Option<&TenantId>) -> u64 {
        match self.cfg.key_by {
            KeyBy::Global => 0,
            KeyBy::Model => self.hasher.hash_one((1u8, model.unwrap_or(""))),
            KeyBy::Tenant => self
                .hasher
                .hash_one((2u8, tenant.map_or("", TenantId::as_str))),
            KeyBy::ModelAndTenant => self.hasher.hash_one((
                3u8,
                model.unwrap_or(""),
                tenant.map_or("", TenantId::as_str),
            )),
        }
    }

    fn state(&self, key: u64) -> Arc<KeyState> {
        if let Some(s) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.prune(&mut map);
        }
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(KeyState {
                    turnstile: Semaphore::new(1),
                    rpm: self
                        .rpm_quota
                        .map(|(per_min, burst)| RequestQuota::new(per_min, burst, self.clock)),
                    tokens: self
                        .token_quota
                        .map(|(per_min, burst)| TokenBucket::new(per_min, burst)),
                })
            })
            .clone()
    }

    /// Drops the state of keys that are idle (no request holds it, nobody queues, both buckets
    /// are full again, i.e. the state is the same as a fresh one), so that many tenants or
    /// models do not grow memory without bound.
    /// Runs when the map doubles past the last size, so its cost is amortised.
    fn prune(&self, map: &mut HashMap<u64, Arc<KeyState>, BuildHasherDefault<KeyHasher>>) {
        let now = self.clock.nanos();
        map.retain(|_, state| {
            // The request quota last: checking it spends it when it is full, which is only
            // right for a key that is being forgotten.
            Arc::strong_count(state) > 1
                || state.turnstile.available_permits() == 0
                || state.tokens.as_ref().is_some_and(|b| !b.is_full(now))
                || state.rpm.as_ref().is_some_and(|q| !q.take_all_if_full())
        });
        self.prune_at
            .store((map.len() * 2).max(PRUNE_FLOOR), Ordering::Relaxed);
    }

    /// Admits `tokens` under the key of `state` now (taking the request and the tokens), or
    /// says how long to wait. The caller holds the key's turnstile, or (fast path, no token
    /// quota) saw it free: the request cell is taken by one compare-and-swap either way.
    fn try_now(&self, state: &KeyState, tokens: u64) -> Result<(), Duration> {
        let paused_until = self.pause.until.load(Ordering::Acquire);
        // Requests only and never paused: governor's check reads the clock itself.
        let now = (paused_until != 0 || state.tokens.is_some()).then(|| self.clock.nanos());
        if let Some(now) = now {
            let mut wait = Duration::from_nanos(paused_until.saturating_sub(now));
            if let Some(b) = &state.tokens {
                wait = wait.max(b.wait(tokens, now));
            }
            if !wait.is_zero() {
                return Err(wait);
            }
        }
        if let Some(r) = &state.rpm {
            r.try_take(&self.clock)?;
        }
        if let (Some(b), Some(now)) = (&state.tokens, now) {
            b.take(tokens, now);
        }
        Ok(())
    }

    /// Admission without waiting, for the fast path (no token quota): `None` when the request
    /// must queue, because another one waits for this key (FIFO) or the quota is spent.
    fn admit_now(&self, key: u64) -> Option<Admitted> {
        if self.rpm_quota.is_none() && self.token_quota.is_none() {
            return Some(Admitted {
                key: None,
                estimate: 0,
            });
        }
        debug_assert!(self.token_quota.is_none(), "the fast path takes no tokens");
        // Without tokens nothing is settled afterwards, so the admission keeps no handle on
        // the key's state: a known key is admitted under the map's read lock, with no
        // reference count taken.
        let admit = |state: &KeyState| {
            // A request waiting for this key holds its turnstile: queue behind it. Not taking
            // the turnstile here saves its lock; the admission itself is governor's one atomic.
            if state.turnstile.available_permits() == 0 {
                return None;
            }
            self.try_now(state, 0).ok()?;
            Some(Admitted {
                key: None,
                estimate: 0,
            })
        };
        if let Some(state) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return admit(state);
        }
        admit(&self.state(key))
    }

    fn finish<B, E: Into<BoxError>>(
        &self,
        admitted: Admitted,
        result: Result<Response<B>, E>,
    ) -> Result<Response<ResponseBody<B>>, BoxError> {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(k) = &admitted.key {
                    if Classifier::new().classify_error(&*e).was_not_sent() {
                        k.refund(admitted.estimate, self.clock.nanos());
                    }
                }
                return Err(e);
            }
        };
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            if let Some(ra) = tower_deepseek_core::classify::retry_after(resp.headers()) {
                self.pause.pause_for(ra);
            }
        }
        let observer = match &admitted.key {
            Some(k) if k.tokens.is_some() => {
                match Classifier::new().classify_head(resp.status(), resp.headers()) {
                    ClassifiedResponse::RequiresEos(eos) => Some(Settle {
                        key: k.clone(),
                        estimate: admitted.estimate,
                        // A layer below that classifies the same body (the breaker, when audit
                        // asks for call facts) shares its summary: read it at the end instead of
                        // parsing the body a second time.
                        usage: match resp.extensions().get::<SharedOutcome>() {
                            Some(shared) => UsageFrom::Shared(shared.clone()),
                            None => UsageFrom::Own(eos),
                        },
                        clock: self.clock,
                    }),
                    ClassifiedResponse::Ready(Ok(())) => None,
                    ClassifiedResponse::Ready(Err(_)) => {
                        // An HTTP error: nothing was generated.
                        k.refund(admitted.estimate, self.clock.nanos());
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(resp.map(|b| ResponseBody {
            inner: ObservedBody::new(b, SettleSlot(observer)),
        }))
    }

    /// Waits for (or refuses) admission of `tokens` under `key`.
    async fn admit(&self, key: u64, tokens: u64) -> Result<Admitted, BoxError> {
        if self.rpm_quota.is_none() && self.token_quota.is_none() {
            return Ok(Admitted {
                key: None,
                estimate: 0,
            });
        }
        if let Some((_, burst)) = self.token_quota {
            if tokens > burst {
                metrics::counter!("deepseek_ratelimit_rejected_total", "reason" => "too_large")
                    .increment(1);
                return Err(Box::new(RequestTooLarge::new(tokens, burst)));
            }
        }
        let state = self.state(key);
        let start = tokio::time::Instant::now();
        let deadline = start + self.max_wait;
        let _turn = match state.turnstile.try_acquire() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout_at(deadline, state.turnstile.acquire()).await {
                Ok(p) => p.expect("the turnstile is never closed"),
                Err(_) => {
                    metrics::counter!("deepseek_ratelimit_rejected_total", "reason" => "max_wait")
                        .increment(1);
                    return Err(Box::new(RateLimited::new(None)));
                }
            },
        };
        loop {
            let mut wait = match self.try_now(&state, tokens) {
                Ok(()) => {
                    let waited = start.elapsed();
                    if !waited.is_zero() {
                        metrics::histogram!("deepseek_ratelimit_wait_seconds")
                            .record(waited.as_secs_f64());
                    }
                    return Ok(Admitted {
                        key: Some(state.clone()),
                        estimate: tokens,
                    });
                }
                Err(wait) => wait,
            };
            wait = wait.max(Duration::from_nanos(1));
            let wake = tokio::time::Instant::now() + wait;
            if wake > deadline {
                metrics::counter!("deepseek_ratelimit_rejected_total", "reason" => "max_wait")
                    .increment(1);
                tracing::debug!(
                    target: "tower_deepseek_retry",
                    wait_ms = wait.as_millis() as u64,
                    "rate limit wait would pass max_wait; rejecting"
                );
                return Err(Box::new(RateLimited::new(Some(wait))));
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Body + Unpin + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        if !shared.needs_body() {
            // Fast path: no body to read; admitted at once unless the key must queue.
            let key = shared.key(None, req.extensions().get::<TenantId>());
            if let Some(admitted) = shared.admit_now(key) {
                let fut = inner.call(req.map(ReplayBody::passthrough));
                return ResponseFuture {
                    kind: Kind::Fast {
                        fut,
                        shared,
                        admitted: Some(admitted),
                    },
                };
            }
        }
        ResponseFuture {
            kind: Kind::Slow {
                fut: Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let tenant = parts.extensions.get::<TenantId>();
                    let (body, key, estimate) = if shared.needs_body() {
                        let limit = shared.cfg.body_limit;
                        match tower_deepseek_core::body::buffer(body, limit).await? {
                            Buffered::Complete(b) => {
                                let probe = serde_json::from_slice::<Probe<'_>>(b.bytes()).ok();
                                let model = probe.as_ref().and_then(|p| p.model.as_deref());
                                let max_tokens = probe
                                    .as_ref()
                                    .and_then(|p| p.max_tokens.or(p.max_completion_tokens))
                                    .unwrap_or(shared.cfg.default_max_tokens);
                                let est = b.bytes().len() as u64 / 4 + max_tokens;
                                let key = shared.key(model, tenant);
                                (ReplayBody::buffered(b), key, est)
                            }
                            Buffered::Overflow(o) => {
                                let est = limit as u64 / 4 + shared.cfg.default_max_tokens;
                                let key = shared.key(None, tenant);
                                (ReplayBody::overflow(o), key, est)
                            }
                        }
                    } else {
                        (ReplayBody::passthrough(body), shared.key(None, tenant), 0)
                    };
                    let admitted = shared.admit(key, estimate).await?;
                    let result = inner.call(Request::from_parts(parts, body)).await;
                    shared.finish(admitted, result)
                }),
            },
        }
    }
}

impl KeyState {
    fn refund(&self, tokens: u64, now: u64) {
        if let Some(b) = &self.tokens {
            b.adjust(-(tokens as i64), now);
        }
    }
}

/// Settles the token estimate against the real usage at the end of the body.
struct Settle {
    key: Arc<KeyState>,
    estimate: u64,
    usage: UsageFrom,
    clock: TokioClock,
}

/// Where the real usage is read at the end of the body. Not boxed: the own classifier is the
/// case of a layer alone, which should not pay an allocation for the shared case's sake.
#[allow(clippy::large_enum_variant)]
enum UsageFrom {
    /// This layer's own classifier, fed as the body passes.
    Own(EosClassifier),
    /// The summary a layer below shares (core's [`SharedOutcome`]), filled before the end
    /// reaches this layer; empty if the body below did not end.
    Shared(SharedOutcome),
}

struct SettleSlot(Option<Settle>);

impl BodyObserver for SettleSlot {
    fn on_data(&mut self, chunk: &Bytes) {
        if let Some(Settle {
            usage: UsageFrom::Own(eos),
            ..
        }) = &mut self.0
        {
            eos.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let Some(mut s) = self.0.take() else { return };
        let total = match &mut s.usage {
            UsageFrom::Own(eos) => {
                if let BodyEnd::Complete = end {
                    let _ = eos.finish();
                }
                eos.summary().usage.as_ref().map(|u| u.total_tokens)
            }
            UsageFrom::Shared(shared) => shared
                .get()
                .and_then(|o| o.summary.usage.as_ref())
                .map(|u| u.total_tokens),
        };
        if let Some(total) = total {
            let delta = total as i64 - s.estimate as i64;
            if let Some(b) = &s.key.tokens {
                b.adjust(delta, s.clock.nanos());
            }
            metrics::counter!("deepseek_ratelimit_tokens_settled_total").increment(total);
        }
    }
}

pin_project! {
    /// Response body of [`RateLimit`]: passes the upstream body through and settles the token
    /// estimate when it ends.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<B, SettleSlot>,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type SlowFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        // Admitted at once: the inner future, unboxed.
        Fast { #[pin] fut: F, shared: Arc<Shared>, admitted: Option<Admitted> },
        // Reads the body or waits its turn.
        Slow { fut: SlowFuture<B> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Fast {
                fut,
                shared,
                admitted,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                let admitted = admitted.take().expect("polled after completion");
                Poll::Ready(shared.finish(admitted, result))
            }
            KindProj::Slow { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning may only forget a key whose request quota is as fresh: `take_all_if_full` takes
    /// nothing before the quota has refilled, and then exactly a whole burst.
    #[tokio::test(start_paused = true)]
    async fn request_quota_is_forgotten_only_when_it_is_as_fresh() {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        for (per_minute, burst, spent) in [(60, 1, 1), (60, 5, 3), (600, 10, 10), (7, 2, 1)] {
            let q = RequestQuota::new(per_minute, burst, clock);
            for _ in 0..spent {
                q.try_take(&clock).unwrap();
            }
            let interval = Duration::from_nanos(60_000_000_000 / per_minute);
            let start = tokio::time::Instant::now();
            while start.elapsed() + Duration::from_millis(1) < interval * spent as u32 {
                assert!(!q.take_all_if_full(), "full too early");
                tokio::time::advance(Duration::from_millis(1)).await;
            }
            // A refused check took nothing: what was left of the burst is still there.
            if burst > spent {
                for _ in 0..burst - spent {
                    q.try_take(&clock).unwrap();
                }
                tokio::time::advance(interval * (burst - spent) as u32).await;
            }
            tokio::time::advance(Duration::from_millis(2)).await;
            assert!(q.take_all_if_full(), "full once refilled");
            assert!(q.try_take(&clock).is_err(), "the whole burst was taken");
        }
    }
}
