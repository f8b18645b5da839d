//! [`OAuth2`]: the service, a token on every request (see [`future`](super::future) for the
//! 401 replay).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::OAuth2Layer;
use super::state::Shared;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::trace::InSpan;

/// The service made by [`OAuth2Layer`]. See the [module docs](crate::oauth2).
pub struct OAuth2<S, T> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared<T>>,
}

impl<S: Clone, T> Clone for OAuth2<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for OAuth2<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("inner", &self.inner)
            .field("state", &self.shared)
            .finish()
    }
}

impl<S, T> OAuth2<S, T> {
    /// Wraps `inner` with the token state of `layer`.
    pub fn new(inner: S, layer: &OAuth2Layer<T>) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, B, ResBody, RB> Service<Request<B>> for OAuth2<S, T>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S, B, T>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fresh = self.shared.fresh();
        let shared = Arc::clone(&self.shared);
        let span = tracing::debug_span!(target: "tower_deepseek_auth", "deepseek.auth", deepseek.layer = "auth", deepseek.outcome = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            ResponseFuture::start(shared, &mut self.inner, req, fresh)
        });
        InSpan::new(fut, span)
    }
}
