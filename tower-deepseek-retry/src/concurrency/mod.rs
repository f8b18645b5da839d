//! Adaptive concurrency (AIMD): fewer requests in flight after a 429, more after successes.
//!
//! DeepSeek's 429 is an account-wide cap on concurrent requests (that shrinks with the
//! balance), so the real cure for 429s is sending fewer requests at once, not only waiting.
//! [`AdaptiveConcurrencyLayer`] keeps a limit on requests in flight, shared by every clone:
//!
//! - it starts at `initial` (default 32);
//! - a **429** multiplies it by `decrease_factor` (default 0.5), down to `min` (default 1).
//!   Only the first 429 of a wave counts: a 429 for a request sent before the last decrease
//!   says nothing new, so a burst of 429s halves the limit once, not down to `min`;
//! - each **success** (2xx) adds `1 / limit`, so the limit grows by about one per round trip
//!   of the whole window, up to `max` (default 256): additive increase;
//! - other outcomes leave it unchanged (optionally a 503 decreases it too).
//!
//! A permit is taken before the request is sent (waiting in FIFO order when the limit is
//! reached) and held **until the response body ends** (or is dropped): a stream in progress
//! counts as in flight.
//!
//! # Order
//!
//! Above the retry layer if retries should queue like new requests; below it if each
//! attempt should take its own permit (then a retry after a 429 waits for the lowered limit).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = AdaptiveConcurrencyLayer::builder().initial(16).min(2).max(128).build()?;
//! let handle = layer.clone();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::builder().status(429).body(Full::new(Bytes::new()))?)
//! });
//! let resp = svc.ready().await?.call(http::Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(resp.status(), 429);
//! assert_eq!(handle.limit(), 8);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_deepseek_core::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use tower_deepseek_core::config::ConfigError;

/// The configuration (serde).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveConcurrencyConfig {
    /// The starting limit (default 32).
    pub initial: u32,
    /// The lowest limit (default 1).
    pub min: u32,
    /// The highest limit (default 256).
    pub max: u32,
    /// The factor applied on a 429 (default 0.5, in `(0, 1)`).
    pub decrease_factor: f64,
    /// Whether a 503 decreases the limit too (default false).
    pub decrease_on_overloaded: bool,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            initial: 32,
            min: 1,
            max: 256,
            decrease_factor: 0.5,
            decrease_on_overloaded: false,
        }
    }
}

struct Limit {
    /// The exact limit (fractional between whole steps).
    value: f64,
    /// Permits to take out of circulation when they come back (a decrease while they were
    /// in flight).
    debt: usize,
}

struct Shared {
    cfg: AdaptiveConcurrencyConfig,
    semaphore: Arc<Semaphore>,
    limit: Mutex<Limit>,
    /// Incremented on each decrease; a 429 for a request sent before it is ignored.
    epoch: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn whole(v: f64) -> usize {
        v.floor() as usize
    }

    fn on_overload(&self, epoch: u64) {
        if self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // someone already decreased for this wave
        }
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        let before = Self::whole(l.value);
        l.value = (l.value * self.cfg.decrease_factor).max(f64::from(self.cfg.min));
        let drop = before - Self::whole(l.value);
        if drop > 0 {
            let forgotten = self.semaphore.forget_permits(drop);
            l.debt += drop - forgotten;
        }
        metrics::gauge!("deepseek_concurrency_limit").set(l.value.floor());
        tracing::info!(
            target: "tower_deepseek_retry",
            limit = Self::whole(l.value) as u64,
            "upstream 429: concurrency limit lowered"
        );
    }

    fn on_success(&self) {
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if l.value >= f64::from(self.cfg.max) {
            return;
        }
        let before = Self::whole(l.value);
        l.value = (l.value + 1.0 / l.value).min(f64::from(self.cfg.max));
        let mut grow = Self::whole(l.value) - before;
        if grow > 0 {
            let paid = grow.min(l.debt);
            l.debt -= paid;
            grow -= paid;
            if grow > 0 {
                self.semaphore.add_permits(grow);
            }
            metrics::gauge!("deepseek_concurrency_limit").set(l.value.floor());
        }
    }

    fn release(&self, permit: OwnedSemaphorePermit) {
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if l.debt > 0 {
            l.debt -= 1;
            permit.forget();
        }
    }
}

/// Limits requests in flight, adapting to 429s. Clones share one limit; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyLayer {
    shared: Arc<Shared>,
}

impl AdaptiveConcurrencyLayer {
    /// A builder with the defaults.
    pub fn builder() -> AdaptiveConcurrencyLayerBuilder {
        AdaptiveConcurrencyLayerBuilder {
            cfg: AdaptiveConcurrencyConfig::default(),
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] unless `1 <= min <= initial <= max` and `0 < decrease_factor < 1`.
    pub fn from_config(cfg: AdaptiveConcurrencyConfig) -> Result<Self, ConfigError> {
        if !(1 <= cfg.min && cfg.min <= cfg.initial && cfg.initial <= cfg.max) {
            return Err(ConfigError::new(
                "initial",
                "must satisfy 1 <= min <= initial <= max",
            ));
        }
        if cfg.max as usize > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("max", "is too large"));
        }
        if !(cfg.decrease_factor > 0.0 && cfg.decrease_factor < 1.0) {
            return Err(ConfigError::new(
                "decrease_factor",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(cfg.initial as usize)),
                limit: Mutex::new(Limit {
                    value: f64::from(cfg.initial),
                    debt: 0,
                }),
                epoch: AtomicU64::new(0),
                cfg,
            }),
        })
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> usize {
        Shared::whole(
            self.shared
                .limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .value,
        )
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        let l = self.shared.limit.lock().unwrap_or_else(|p| p.into_inner());
        (Shared::whole(l.value) + l.debt).saturating_sub(self.shared.semaphore.available_permits())
    }
}

/// Builds an [`AdaptiveConcurrencyLayer`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct AdaptiveConcurrencyLayerBuilder {
    cfg: AdaptiveConcurrencyConfig,
}

impl AdaptiveConcurrencyLayerBuilder {
    /// The starting limit.
    pub fn initial(mut self, n: u32) -> Self {
        self.cfg.initial = n;
        self
    }

    /// The lowest limit.
    pub fn min(mut self, n: u32) -> Self {
        self.cfg.min = n;
        self
    }

    /// The highest limit.
    pub fn max(mut self, n: u32) -> Self {
        self.cfg.max = n;
        self
    }

    /// The factor applied on a 429.
    pub fn decrease_factor(mut self, f: f64) -> Self {
        self.cfg.decrease_factor = f;
        self
    }

    /// Whether a 503 decreases the limit too.
    pub fn decrease_on_overloaded(mut self, yes: bool) -> Self {
        self.cfg.decrease_on_overloaded = yes;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// See [`AdaptiveConcurrencyLayer::from_config`].
    pub fn build(self) -> Result<AdaptiveConcurrencyLayer, ConfigError> {
        AdaptiveConcurrencyLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrency<S>;

    fn layer(&self, inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Limits requests in flight, adapting to 429s. See the [module docs](self).
#[derive(Debug)]
pub struct AdaptiveConcurrency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for AdaptiveConcurrency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AdaptiveConcurrency<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<ResponseBody<ResB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let permit = shared
                    .semaphore
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let epoch = shared.epoch.load(Ordering::Acquire);
                let resp = inner.call(req).await.map_err(Into::into);
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        shared.release(permit);
                        return Err(e);
                    }
                };
                let s = resp.status();
                if s == StatusCode::TOO_MANY_REQUESTS
                    || (s == StatusCode::SERVICE_UNAVAILABLE && shared.cfg.decrease_on_overloaded)
                {
                    shared.on_overload(epoch);
                } else if s.is_success() {
                    shared.on_success();
                }
                Ok(resp.map(|inner| ResponseBody {
                    inner,
                    permit: Some(PermitGuard {
                        shared,
                        permit: Some(permit),
                    }),
                }))
            }),
        }
    }
}

struct PermitGuard {
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.shared.release(p);
        }
    }
}

pin_project! {
    /// Response body of [`AdaptiveConcurrency`]: holds the permit until the body ends or is
    /// dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<PermitGuard>,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &r {
            *this.permit = None; // the body ended: release now, not when it is dropped
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Response future of [`AdaptiveConcurrency`].
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
