//! The limiter's shared state: per-key quotas on tokio's clock, admission, the pause, and
//! the settling of token estimates at the end of a body.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, EndJudge};
use tower_deepseek_core::meta::TenantId;

use super::body::ResponseBody;
use super::bucket::TokenBucket;
use super::config::{KeyBy, RateLimitConfig};
use super::error::{RateLimited, RequestTooLarge};

/// The keys are already hashes (of the model and tenant, with a random seed): use them as is.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

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
pub(crate) const PRUNE_FLOOR: usize = 1024;

/// Governor clock on tokio's time (so paused time drives it), as nanoseconds since the layer
/// was built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    pub(crate) origin: tokio::time::Instant,
}

impl TokioClock {
    pub(crate) fn nanos(&self) -> u64 {
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
pub(crate) type Rpm = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// The requests-per-minute state of a key: governor's direct limiter.
pub(crate) struct RequestQuota {
    pub(crate) limiter: Rpm,
    pub(crate) burst: NonZeroU32,
}

impl RequestQuota {
    /// `per_window` requests per `window`, `burst` at once.
    pub(crate) fn new(per_window: u64, burst: u64, window: Duration, clock: TokioClock) -> Self {
        let per_window = per_window.max(1);
        let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX))
            .expect("validated: more than 0");
        let period = Duration::from_nanos((window.as_nanos() as u64 / per_window).max(1));
        let quota = Quota::with_period(period)
            .expect("a period of at least 1 ns")
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            burst,
        }
    }

    /// Takes one request now (governor reads the clock), or says how long to wait.
    pub(crate) fn try_take(&self, clock: &TokioClock) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    /// For pruning: takes the whole burst if the quota has refilled completely (its state is
    /// then the same as a fresh one, and the key is about to be forgotten); takes nothing
    /// otherwise (governor consumes nothing from a refused check).
    pub(crate) fn take_all_if_full(&self) -> bool {
        matches!(self.limiter.check_n(self.burst), Ok(Ok(())))
    }
}

pub(crate) struct KeyState {
    pub(crate) turnstile: Semaphore,
    pub(crate) rpm: Option<RequestQuota>,
    pub(crate) tokens: Option<TokenBucket>,
}

pub(crate) struct Shared {
    pub(crate) cfg: RateLimitConfig,
    /// (per window, burst) of this process: the whole quota, or its local share with a
    /// fleet backend.
    pub(crate) rpm_quota: Option<(u64, u64)>,
    /// (per window, burst), as `rpm_quota`.
    pub(crate) token_quota: Option<(u64, u64)>,
    /// The Redis backend: quotas shared by a fleet (the ones above are then the local shares,
    /// used while Redis is unavailable).
    #[cfg(feature = "redis")]
    pub(crate) fleet: Option<Arc<super::fleet::FleetQuotas>>,
    pub(crate) keys: RwLock<HashMap<u64, Arc<KeyState>, BuildHasherDefault<KeyHasher>>>,
    pub(crate) prune_at: std::sync::atomic::AtomicUsize,
    pub(crate) hasher: RandomState,
    pub(crate) clock: TokioClock,
    pub(crate) pause: PauseHandle,
    pub(crate) max_wait: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Pauses the whole limiter; cheap to clone. Get one from [`RateLimitLayer::pause_handle`](crate::RateLimitLayer::pause_handle).
#[derive(Clone)]
pub struct PauseHandle {
    pub(crate) until: Arc<AtomicU64>,
    pub(crate) clock: TokioClock,
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

#[derive(Deserialize)]
pub(crate) struct Probe<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub(crate) max_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<u64>,
}

/// What admission decided for one request.
pub(crate) struct Admitted {
    /// Where the token estimate was taken (to settle it); `None` without a token quota.
    pub(crate) ticket: Option<Ticket>,
    pub(crate) estimate: u64,
}

/// Where a request's tokens were taken: this process's bucket, or the fleet's in Redis.
pub(crate) enum Ticket {
    Local(Arc<KeyState>),
    #[cfg(feature = "redis")]
    Fleet(Arc<super::fleet::FleetQuotas>, Arc<str>),
}

impl Ticket {
    fn settles_tokens(&self) -> bool {
        match self {
            Ticket::Local(k) => k.tokens.is_some(),
            #[cfg(feature = "redis")]
            Ticket::Fleet(q, _) => q.has_tokens(),
        }
    }

    /// Takes (`delta > 0`) or gives back (`delta < 0`) tokens.
    fn adjust(&self, delta: i64, clock: &TokioClock) {
        match self {
            Ticket::Local(k) => {
                if let Some(b) = &k.tokens {
                    b.adjust(delta, clock.nanos());
                }
            }
            #[cfg(feature = "redis")]
            Ticket::Fleet(q, name) => q.settle(name.clone(), delta),
        }
    }
}

/// A quota's key: its hash in this process, and its name in the fleet (with a fleet backend).
pub(crate) struct QuotaKey {
    pub(crate) hash: u64,
    #[cfg(feature = "redis")]
    pub(crate) fleet: Option<Arc<str>>,
}

impl Shared {
    pub(crate) fn needs_body(&self) -> bool {
        self.token_quota.is_some()
            || matches!(self.cfg.key_by, KeyBy::Model | KeyBy::ModelAndTenant)
    }

    /// Whether the quotas are shared by a fleet (no fast path: admission is a round trip).
    pub(crate) fn is_fleet(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.fleet.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    pub(crate) fn key(&self, model: Option<&str>, tenant: Option<&TenantId>) -> QuotaKey {
        QuotaKey {
            hash: self.key_hash(model, tenant),
            #[cfg(feature = "redis")]
            fleet: self
                .fleet
                .as_ref()
                .map(|_| super::fleet::FleetQuotas::name(self.cfg.key_by, model, tenant)),
        }
    }

    pub(crate) fn key_hash(&self, model: Option<&str>, tenant: Option<&TenantId>) -> u64 {
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

    pub(crate) fn state(&self, key: u64) -> Arc<KeyState> {
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
                    rpm: self.rpm_quota.map(|(per_window, burst)| {
                        RequestQuota::new(per_window, burst, self.cfg.window, self.clock)
                    }),
                    tokens: self.token_quota.map(|(per_window, burst)| {
                        TokenBucket::new(per_window, burst, self.cfg.window.as_nanos() as u64)
                    }),
                })
            })
            .clone()
    }

    /// Drops the state of keys that are idle (no request holds it, nobody queues, both buckets
    /// are full again, i.e. the state is the same as a fresh one), so that many tenants or
    /// models do not grow memory without bound.
    /// Runs when the map doubles past the last size, so its cost is amortised.
    pub(crate) fn prune(
        &self,
        map: &mut HashMap<u64, Arc<KeyState>, BuildHasherDefault<KeyHasher>>,
    ) {
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
    pub(crate) fn try_now(&self, state: &KeyState, tokens: u64) -> Result<(), Duration> {
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
    pub(crate) fn admit_now(&self, key: u64) -> Option<Admitted> {
        if self.rpm_quota.is_none() && self.token_quota.is_none() {
            return Some(Admitted {
                ticket: None,
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
                ticket: None,
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

    pub(crate) fn finish<B, E: Into<BoxError>>(
        &self,
        admitted: Admitted,
        result: Result<Response<B>, E>,
    ) -> Result<Response<ResponseBody<B>>, BoxError> {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(t) = &admitted.ticket {
                    if Classifier::new().classify_error(&*e).was_not_sent() {
                        t.adjust(-(admitted.estimate as i64), &self.clock);
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
        let observer = match admitted.ticket {
            Some(t) if t.settles_tokens() => {
                match Classifier::new().classify_head(resp.status(), resp.headers()) {
                    ClassifiedResponse::RequiresEos(eos) => Some(Settle {
                        ticket: t,
                        estimate: admitted.estimate,
                        // A layer below that classifies the same body (the breaker, when audit
                        // asks for call facts) shares its summary: read at the end when it is
                        // about these very frames, instead of parsing the body a second time.
                        usage: EndJudge::from_extensions(eos, resp.extensions()),
                        clock: self.clock,
                    }),
                    ClassifiedResponse::Ready(Ok(())) => None,
                    ClassifiedResponse::Ready(Err(_)) => {
                        // An HTTP error: nothing was generated.
                        t.adjust(-(admitted.estimate as i64), &self.clock);
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
    pub(crate) async fn admit(&self, key: QuotaKey, tokens: u64) -> Result<Admitted, BoxError> {
        if self.rpm_quota.is_none() && self.token_quota.is_none() {
            return Ok(Admitted {
                ticket: None,
                estimate: 0,
            });
        }
        #[cfg(feature = "redis")]
        let burst = match &self.fleet {
            Some(f) => f.token_burst(),
            None => self.token_quota.map(|(_, b)| b),
        };
        #[cfg(not(feature = "redis"))]
        let burst = self.token_quota.map(|(_, b)| b);
        if let Some(burst) = burst {
            if tokens > burst {
                metrics::counter!("deepseek_ratelimit_rejected_total", "reason" => "too_large")
                    .increment(1);
                return Err(Box::new(RequestTooLarge::new(tokens, burst)));
            }
        }
        let state = self.state(key.hash);
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
            let mut wait = match self.try_shared_or_local(&key, &state, tokens).await {
                Ok(admitted) => {
                    let waited = start.elapsed();
                    if !waited.is_zero() {
                        metrics::histogram!("deepseek_ratelimit_wait_seconds")
                            .record(waited.as_secs_f64());
                    }
                    return Ok(admitted);
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

    /// One admission try: on the fleet's shared quota when there is one and Redis answers,
    /// otherwise on this process's quota (with a fleet: its local share).
    async fn try_shared_or_local(
        &self,
        key: &QuotaKey,
        state: &Arc<KeyState>,
        tokens: u64,
    ) -> Result<Admitted, Duration> {
        #[cfg(feature = "redis")]
        if let (Some(f), Some(name)) = (&self.fleet, &key.fleet) {
            let paused = self.pause.remaining();
            if !paused.is_zero() {
                return Err(paused);
            }
            match f.try_admit(name, tokens).await {
                Ok(Ok(())) => {
                    return Ok(Admitted {
                        ticket: Some(Ticket::Fleet(f.clone(), name.clone())),
                        estimate: tokens,
                    });
                }
                Ok(Err(wait)) => return Err(wait),
                Err(_) => f.fleet().count_fallback("rate_limit"),
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = key;
        // The local share's burst may be smaller than the fleet's: an estimate above it is
        // taken as the whole burst (and settled from the usage as usual).
        let tokens = self.token_quota.map_or(tokens, |(_, b)| tokens.min(b));
        self.try_now(state, tokens)?;
        Ok(Admitted {
            ticket: Some(Ticket::Local(state.clone())),
            estimate: tokens,
        })
    }
}

/// Settles the token estimate against the real usage at the end of the body.
pub(crate) struct Settle {
    pub(crate) ticket: Ticket,
    pub(crate) estimate: u64,
    /// Where the real usage is read at the end of the body.
    pub(crate) usage: EndJudge,
    pub(crate) clock: TokioClock,
}

pub(crate) struct SettleSlot(pub(crate) Option<Settle>);

impl BodyObserver for SettleSlot {
    fn on_data(&mut self, chunk: &Bytes) {
        if let Some(s) = &mut self.0 {
            s.usage.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let Some(mut s) = self.0.take() else { return };
        match end {
            BodyEnd::Complete => {
                let _ = s.usage.finish();
            }
            BodyEnd::Error(e) => {
                let _ = s.usage.fail(e);
            }
            _ => {}
        }
        let total = s.usage.summary().usage.as_ref().map(|u| u.total_tokens);
        if let Some(total) = total {
            let delta = total as i64 - s.estimate as i64;
            s.ticket.adjust(delta, &s.clock);
            metrics::counter!("deepseek_ratelimit_tokens_settled_total").increment(total);
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
            let q = RequestQuota::new(per_minute, burst, Duration::from_secs(60), clock);
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
