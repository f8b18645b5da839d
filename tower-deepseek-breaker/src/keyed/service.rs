//! The keyed service: one circuit breaker per key in front of the inner service.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_deepseek_core::BoxError;
use tower_service::Service;

use super::key::{DefaultKey, MakeKey, RequestHead};
use super::layer::KeyedCircuitBreakerLayer;
use crate::circuit_breaker::{Asks, ResponseBody, ResponseFuture};

/// A service guarded by one circuit breaker per key. See [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, M: MakeKey = DefaultKey> {
    inner: S,
    layer: KeyedCircuitBreakerLayer<M>,
}

impl<S: Clone, M: MakeKey> Clone for KeyedCircuitBreaker<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, M: MakeKey> fmt::Debug for KeyedCircuitBreaker<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M: MakeKey> KeyedCircuitBreaker<S, M> {
    pub(super) fn new(inner: S, layer: KeyedCircuitBreakerLayer<M>) -> Self {
        Self { inner, layer }
    }

    /// The layer (for handles).
    pub fn layer_ref(&self) -> &KeyedCircuitBreakerLayer<M> {
        &self.layer
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

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for KeyedCircuitBreaker<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    M: MakeKey,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let key = self.layer.make_key.make_key(&RequestHead::of(&req));
        match self.layer.registry.get(&key).try_acquire_owned() {
            Ok(permit) => {
                let asks = Asks::of(req.extensions());
                ResponseFuture::called(self.inner.call(req), permit, asks)
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
