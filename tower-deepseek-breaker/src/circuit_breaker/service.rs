//! The service: a circuit breaker in front of the inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::trace::InSpan;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::{Asks, ResponseFuture};
use super::layer::CircuitBreakerLayer;
use crate::state::{BreakerHandle, Striped};

/// A service guarded by a circuit breaker. See the [crate docs](crate).
///
/// `poll_ready` delegates to the inner service (an open breaker does not make it pending);
/// `call` fails at once with [`BreakerOpen`](crate::BreakerOpen) while the breaker rejects.
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Striped>,
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl<S> CircuitBreaker<S> {
    pub(super) fn from_shared(inner: S, breaker: Arc<Striped>) -> Self {
        Self { inner, breaker }
    }

    /// Wraps `inner` in the breaker of `layer`.
    pub fn new(inner: S, layer: &CircuitBreakerLayer) -> Self {
        layer.layer(inner)
    }

    /// A handle on the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.breaker.breaker().clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let span = tracing::debug_span!(
            target: "tower_deepseek_breaker",
            "deepseek.circuit_breaker",
            deepseek.layer = "circuit_breaker",
            deepseek.outcome = tracing::field::Empty,
            deepseek.breaker.state = tracing::field::Empty,
        );
        if !span.is_disabled() {
            // The state the call met (read once more: only when someone listens).
            span.record(
                "deepseek.breaker.state",
                self.breaker.breaker().state().as_str(),
            );
        }
        let fut = match self.breaker.try_acquire() {
            Ok(permit) => {
                let asks = Asks::of(req.extensions());
                let inner = tower_deepseek_core::trace::in_scope(&span, || self.inner.call(req));
                ResponseFuture::called(inner, permit, asks)
            }
            Err(open) => ResponseFuture::rejected(open),
        };
        InSpan::new(fut, span)
    }
}
