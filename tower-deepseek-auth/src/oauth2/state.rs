//! The shared token state: a lock-free current token, a single-flight slow path, refresh-ahead.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_service::Service;

use super::fetch::{Fetched, TokenRequest};
use crate::error::{TokenFetchErrorKind, TokenFetchFailed};
use crate::store::{StoredToken, TokenStore};

const TARGET: &str = "tower_deepseek_auth";
/// A token is not sent in its last moments (at most this much, at most a tenth of its life).
const EXPIRY_LEEWAY: Duration = Duration::from_secs(5);
/// After a failed background refresh, try again after at most this long.
const REFRESH_RETRY: Duration = Duration::from_secs(30);

/// The token in use.
///
/// Its [`Phase`] is moved along by a timer task armed when it is installed
/// ([`Shared::install_current`]), so that the hot path reads one atomic instead of the
/// clock (~24 ns a read on the project's VM). That timer also starts the refresh ahead at
/// `refresh_at`, with or without traffic. Where no timer runs (no runtime at install, or the
/// runtime that ran it shut down), the phase is [`Phase::UNTIMED`] and the hot path compares
/// the clock as before; requests start the refresh then.
pub(crate) struct Current {
    pub(crate) header: HeaderValue,
    pub(crate) usable_until: Instant,
    pub(crate) refresh_at: Instant,
    pub(crate) generation: u64,
    phase: AtomicU8,
}

/// Where a [`Current`] token is in its life, as its timer set it.
struct Phase;

impl Phase {
    /// Before `refresh_at`.
    const FRESH: u8 = 0;
    /// From `refresh_at`: the refresh ahead has been started.
    const DUE: u8 = 1;
    /// From `usable_until`: not sent any more.
    const EXPIRED: u8 = 2;
    /// No timer: the hot path reads the clock.
    const UNTIMED: u8 = 3;
}

impl Current {
    /// Whether the token may be sent (`None`: expired) and whether a request should start
    /// its refresh (only without a timer: the timer starts it).
    #[inline]
    fn check(&self) -> Option<bool> {
        match self.phase.load(Ordering::Relaxed) {
            Phase::FRESH | Phase::DUE => Some(false),
            Phase::EXPIRED => None,
            _ => {
                let now = Instant::now();
                (now < self.usable_until).then_some(now >= self.refresh_at)
            }
        }
    }
}

/// Moves a token's phase along at its times and starts its refresh. It holds the token and
/// the state weakly (a replaced token is dropped, and its timer ends at the next wake-up); if
/// the task is dropped before it finished (its runtime shut down), the token falls back to
/// the clock.
struct PhaseTimer<T> {
    current: Weak<Current>,
    shared: Weak<Shared<T>>,
}

impl<T> PhaseTimer<T> {
    fn set(&self, from: u8, to: u8) -> bool {
        self.current.upgrade().is_some_and(|cur| {
            cur.phase
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }
}

impl<T> Drop for PhaseTimer<T> {
    fn drop(&mut self) {
        // Finished: EXPIRED stays. Cut short: back to the clock.
        if !self.set(Phase::FRESH, Phase::UNTIMED) {
            self.set(Phase::DUE, Phase::UNTIMED);
        }
    }
}

pub(crate) struct Tuning {
    pub(crate) margin: Duration,
    pub(crate) jitter: Duration,
    pub(crate) store_wait: Duration,
    pub(crate) deadline: Duration,
    pub(crate) body_limit: usize,
    pub(crate) replay: bool,
}

pub(crate) struct Shared<T> {
    /// This state's own `Arc`, weakly: for the timers of the tokens it installs.
    me: Weak<Self>,
    current: ArcSwapOption<Current>,
    refreshing: AtomicBool,
    fetch_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// Finished slow-path fetches, and the failure of the last one (shared with its waiters).
    epoch: AtomicU64,
    last_failure: StdMutex<Option<(u64, TokenFetchFailed)>>,
    /// The last token refused with a 401: never adopted again from a store.
    rejected: StdMutex<Option<HeaderValue>>,
    request: TokenRequest,
    token_service: T,
    store: Arc<dyn TokenStore>,
    store_key: String,
    pub(crate) tuning: Tuning,
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("OAuth2State")
            .field("token", &current.as_ref().map(|_| "[REDACTED]"))
            .field(
                "generation",
                &current.as_ref().map(|c| c.generation).unwrap_or(0),
            )
            .field("request", &self.request)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn bearer_header(token: &SecretString) -> Result<HeaderValue, TokenFetchErrorKind> {
    let mut h = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
        .map_err(|_| TokenFetchErrorKind::InvalidResponse)?;
    h.set_sensitive(true);
    Ok(h)
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Store errors never fail a request: count, log the operation and error kind, go on.
fn store_error(op: &'static str, err: &BoxError) {
    metrics::counter!("deepseek_auth_token_store_errors_total", "op" => op).increment(1);
    tracing::warn!(target: TARGET, op, error = %err, "token store failed; fetching locally (fail open)");
}

impl<T, RB> Shared<T>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    pub(crate) fn new(
        me: Weak<Self>,
        request: TokenRequest,
        token_service: T,
        store: Arc<dyn TokenStore>,
        store_key: String,
        tuning: Tuning,
    ) -> Self {
        Self {
            me,
            current: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            last_failure: StdMutex::new(None),
            rejected: StdMutex::new(None),
            request,
            token_service,
            store,
            store_key,
            tuning,
        }
    }

    /// The hot path: the current token if it is usable, without any lock (nor, while its
    /// timer runs, a clock read). Without a timer, starts one background refresh when the
    /// token is due for it.
    #[inline]
    pub(crate) fn fresh(self: &Arc<Self>) -> Option<(HeaderValue, u64)> {
        let guard = self.current.load();
        let cur = guard.as_ref()?;
        if cur.check()? {
            self.start_refresh(cur.generation);
        }
        Some((cur.header.clone(), cur.generation))
    }

    /// Makes `header` the current token, its timer armed on the current runtime if there is
    /// one.
    fn install_current(
        &self,
        header: HeaderValue,
        usable_until: Instant,
        refresh_at: Instant,
        generation: u64,
    ) -> Arc<Current> {
        let cur = Arc::new(Current {
            header,
            usable_until,
            refresh_at,
            generation,
            phase: AtomicU8::new(Phase::UNTIMED),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            cur.phase.store(Phase::FRESH, Ordering::Release);
            let timer = PhaseTimer {
                current: Arc::downgrade(&cur),
                shared: self.me.clone(),
            };
            handle.spawn(async move {
                // A refresh time past the expiry (a margin under the expiry leeway) is due at
                // expiry.
                tokio::time::sleep_until(refresh_at.min(usable_until)).await;
                if timer.set(Phase::FRESH, Phase::DUE)
                    && let Some(shared) = timer.shared.upgrade()
                {
                    shared.start_refresh(generation);
                }
                tokio::time::sleep_until(usable_until).await;
                timer.set(Phase::DUE, Phase::EXPIRED);
            });
        }
        self.current.store(Some(Arc::clone(&cur)));
        cur
    }

    fn start_refresh(self: &Arc<Self>, generation: u64) {
        if self.refreshing.load(Ordering::Relaxed)
            || self
                .refreshing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let me = Arc::clone(self);
        handle.spawn(async move {
            me.refresh_ahead(generation).await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    async fn refresh_ahead(&self, generation: u64) {
        let _guard = self.fetch_lock.lock().await;
        let Some(cur) = self.current.load_full() else {
            return;
        };
        if cur.generation != generation {
            return; // someone already replaced it
        }
        tracing::debug!(target: TARGET, generation, "refreshing the token ahead of expiry");
        match self.acquire(Some(&cur.header)).await {
            Ok(next) => {
                metrics::counter!("deepseek_auth_token_refreshes_total", "trigger" => "ahead")
                    .increment(1);
                self.install(next);
            }
            Err(err) => {
                tracing::warn!(
                    target: TARGET,
                    kind = err.kind().as_str(),
                    status = err.status().map(|s| s.as_u16()),
                    "background token refresh failed; the current token serves until it expires"
                );
                // Try again later, not on every request.
                let now = Instant::now();
                let left = cur.usable_until.saturating_duration_since(now);
                let retry_at = now + REFRESH_RETRY.min(left / 2);
                self.install_current(
                    cur.header.clone(),
                    cur.usable_until,
                    retry_at,
                    cur.generation,
                );
            }
        }
    }

    /// Drops the current token if it is still the one of `generation` (after a 401).
    pub(crate) fn invalidate(&self, generation: u64) {
        let cur = self.current.load();
        if let Some(c) = cur.as_ref()
            && c.generation == generation
        {
            *lock(&self.rejected) = Some(c.header.clone());
            let _ = self.current.compare_and_swap(&*cur, None);
            tracing::debug!(target: TARGET, generation, "token refused by the upstream (401); invalidated");
        }
    }

    /// The slow path: waits for (or makes) the one fetch. With `rejected`, a token of that
    /// generation or older is not accepted (it was refused with a 401), nor the refused header
    /// when given (the last invalidated one is never adopted from the store either way).
    pub(crate) async fn obtain(
        &self,
        rejected: Option<(u64, Option<&HeaderValue>)>,
    ) -> Result<(HeaderValue, u64), TokenFetchFailed> {
        let rejected_header = rejected.and_then(|(_, h)| h);
        let rejected = rejected.map(|(g, _)| g);
        let epoch = self.epoch.load(Ordering::Acquire);
        let _guard = self.fetch_lock.lock().await;
        if let Some(cur) = self.current.load_full()
            && Instant::now() < cur.usable_until
            && rejected.is_none_or(|g| cur.generation > g)
        {
            return Ok((cur.header.clone(), cur.generation));
        }
        // A fetch finished while this request waited, and failed: share its error rather than
        // queueing one more full deadline behind it.
        if self.epoch.load(Ordering::Acquire) != epoch {
            let failure = match self.last_failure.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            if let Some((at, err)) = failure
                && at > epoch
            {
                return Err(err);
            }
        }
        let result = self.acquire(rejected_header).await;
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let mut failure = match self.last_failure.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(next) => {
                *failure = None;
                drop(failure);
                let trigger = if rejected.is_some() {
                    "unauthorized"
                } else {
                    "missing"
                };
                metrics::counter!("deepseek_auth_token_refreshes_total", "trigger" => trigger)
                    .increment(1);
                let cur = self.install(next);
                Ok((cur.header.clone(), cur.generation))
            }
            Err(err) => {
                *failure = Some((epoch, err.clone()));
                tracing::warn!(
                    target: TARGET,
                    kind = err.kind().as_str(),
                    status = err.status().map(|s| s.as_u16()),
                    attempts = err.attempts(),
                    "could not obtain an access token"
                );
                Err(err)
            }
        }
    }

    fn install(&self, next: Next) -> Arc<Current> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let cur = self.install_current(next.header, next.usable_until, next.refresh_at, generation);
        tracing::info!(
            target: TARGET,
            generation,
            valid_for_secs = next.usable_until.saturating_duration_since(Instant::now()).as_secs(),
            "access token installed"
        );
        cur
    }

    /// The effective margin and the refresh time for a token valid for `lifetime` from `now`.
    fn schedule(&self, now: Instant, lifetime: Duration, jitter: bool) -> (Instant, Instant) {
        let leeway = EXPIRY_LEEWAY.min(lifetime / 10);
        let usable_until = now + lifetime - leeway;
        let margin = self.effective_margin(lifetime);
        let mut refresh_in = lifetime - margin;
        if jitter && !self.tuning.jitter.is_zero() {
            let max = self.tuning.jitter.min(refresh_in / 2);
            refresh_in -= max.mul_f64(fastrand::f64());
        }
        (usable_until, now + refresh_in)
    }

    fn effective_margin(&self, lifetime: Duration) -> Duration {
        if self.tuning.margin.saturating_mul(2) > lifetime {
            lifetime / 2
        } else {
            self.tuning.margin
        }
    }

    fn adopt(&self, stored: &StoredToken, skip: Option<&HeaderValue>) -> Option<Next> {
        let header = bearer_header(stored.access_token()).ok()?;
        if skip.is_some_and(|s| *s == header) || lock(&self.rejected).as_ref() == Some(&header) {
            return None;
        }
        let remaining = stored.remaining();
        if remaining < Duration::from_secs(2) {
            return None;
        }
        let now = Instant::now();
        let (usable_until, refresh_at) = self.schedule(now, remaining, true);
        tracing::debug!(target: TARGET, "adopted a token from the shared store");
        Some(Next {
            header,
            usable_until,
            refresh_at,
        })
    }

    /// A token from the store, or fetched here (under the store's lock when it has one).
    async fn acquire(&self, skip: Option<&HeaderValue>) -> Result<Next, TokenFetchFailed> {
        let key = self.store_key.as_str();
        match self.store.get(key).await {
            Ok(Some(stored)) => {
                if let Some(next) = self.adopt(&stored, skip) {
                    return Ok(next);
                }
            }
            Ok(None) => {}
            Err(e) => {
                store_error("get", &e);
                return self.fetch_here(false).await;
            }
        }
        let lock_ttl = self.tuning.deadline + Duration::from_secs(1);
        match self.store.try_lock(key, lock_ttl).await {
            Ok(Some(lock)) => {
                let result = self.fetch_here(true).await;
                if let Err(e) = self.store.unlock(key, lock).await {
                    store_error("unlock", &e);
                }
                result
            }
            Ok(None) => {
                // Another instance is fetching: wait for its token, within bounds.
                let until = Instant::now() + self.tuning.store_wait;
                let mut pause = Duration::from_millis(25);
                while Instant::now() < until {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                    match self.store.get(key).await {
                        Ok(Some(stored)) => {
                            if let Some(next) = self.adopt(&stored, skip) {
                                return Ok(next);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            store_error("get", &e);
                            break;
                        }
                    }
                }
                tracing::debug!(target: TARGET, "no token from the shared store in time; fetching here");
                self.fetch_here(true).await
            }
            Err(e) => {
                store_error("lock", &e);
                self.fetch_here(false).await
            }
        }
    }

    async fn fetch_here(&self, share: bool) -> Result<Next, TokenFetchFailed> {
        let result = self.request.fetch(&self.token_service).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.kind().as_str(),
        };
        metrics::counter!("deepseek_auth_token_fetches_total", "outcome" => outcome).increment(1);
        let Fetched { token, lifetime } = result?;
        let header = bearer_header(&token).map_err(TokenFetchFailed::new)?;
        let now = Instant::now();
        let (usable_until, refresh_at) = self.schedule(now, lifetime, true);
        tracing::debug!(target: TARGET, lifetime_secs = lifetime.as_secs(), "token endpoint issued a token");
        if share {
            let ttl = lifetime - self.effective_margin(lifetime);
            let stored = StoredToken::new(token, SystemTime::now() + lifetime);
            if let Err(e) = self.store.put(&self.store_key, &stored, ttl).await {
                store_error("put", &e);
            }
        }
        Ok(Next {
            header,
            usable_until,
            refresh_at,
        })
    }
}

/// A token about to be installed.
struct Next {
    header: HeaderValue,
    usable_until: Instant,
    refresh_at: Instant,
}
