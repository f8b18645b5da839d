//! `[concurrency]`: the adaptive concurrency limit around the upstream client.
//!
//! DeepSeek's 429 is mostly an account-wide cap on requests in flight, so the limit belongs to
//! the upstream account, not to a client or a stack stage: [`capped`] wraps the upstream
//! client itself (below the recommended stack, so every attempt of a call, retries included,
//! holds one permit while it is in flight). With `[concurrency.redis]`, every gateway with the
//! same Redis, key prefix and `account` shares one cap and one AIMD limit through leases
//! (`tower_deepseek_retry::concurrency`); without it the cap is this process's.
//!
//! The wrapper is a plain function of a service, so whatever the upstream service becomes (one
//! client, a pool of upstreams), it can be capped the same way. Absent table: the service is
//! passed through untouched (`Capped::Off`), with no permit, no lock and no allocation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};
use tower_deepseek::retry::concurrency::{
    self, AdaptiveConcurrency, AdaptiveConcurrencyConfig, AdaptiveConcurrencyLayer,
};

/// The layer of a `[concurrency]` table (validated by its own builder).
pub(crate) fn layer(cfg: &AdaptiveConcurrencyConfig) -> Result<AdaptiveConcurrencyLayer, String> {
    AdaptiveConcurrencyLayer::from_config(cfg.clone()).map_err(|e| e.to_string())
}

/// `inner` under the concurrency limit of `layer`, or untouched without one.
pub(crate) fn capped<S>(layer: Option<&AdaptiveConcurrencyLayer>, inner: S) -> Capped<S> {
    match layer {
        Some(l) => Capped::On(l.layer(inner)),
        None => Capped::Off(inner),
    }
}

/// A service under the `[concurrency]` limit, or passed through.
pub(crate) enum Capped<S> {
    /// Each request holds a permit (a fleet lease with Redis) until its response body ends.
    On(AdaptiveConcurrency<S>),
    /// No limit.
    Off(S),
}

impl<S: Clone> Clone for Capped<S> {
    fn clone(&self) -> Self {
        match self {
            Capped::On(s) => Capped::On(s.clone()),
            Capped::Off(s) => Capped::Off(s.clone()),
        }
    }
}

impl<S> fmt::Debug for Capped<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capped::On(_) => "Capped::On",
            Capped::Off(_) => "Capped::Off",
        })
    }
}

/// The response body: the limit's (holding the permit) or the service's own.
pub(crate) type CappedBody<B> = Either<concurrency::ResponseBody<B>, B>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Capped<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = Response<CappedBody<ResB>>;
    type Error = BoxError;
    type Future = CappedFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Capped::On(s) => s.poll_ready(cx),
            Capped::Off(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self {
            Capped::On(s) => CappedFuture::On { fut: s.call(req) },
            Capped::Off(s) => CappedFuture::Off { fut: s.call(req) },
        }
    }
}

pin_project! {
    /// The future of [`Capped`].
    #[project = CappedProj]
    pub(crate) enum CappedFuture<F, B> {
        On { #[pin] fut: concurrency::ResponseFuture<Response<concurrency::ResponseBody<B>>> },
        Off { #[pin] fut: F },
    }
}

impl<F, B, E> Future for CappedFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<CappedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CappedProj::On { fut } => fut.poll(cx).map_ok(|r| r.map(Either::Left)),
            CappedProj::Off { fut } => fut
                .poll(cx)
                .map(|r| r.map(|r| r.map(Either::Right)).map_err(Into::into)),
        }
    }
}
