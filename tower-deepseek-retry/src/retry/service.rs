//! The [`Retry`](crate::Retry) service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::trace::InSpan;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::layer::{RetryLayer, Shared};

/// Retries requests with the guide's per-status schedule. See [`RetryLayer`](crate::RetryLayer).
#[derive(Debug)]
pub struct Retry<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &RetryLayer) -> Self {
        Self {
            inner,
            shared: layer.shared.clone(),
        }
    }

    /// A default [`RetryLayer`](crate::RetryLayer).
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Retry<S>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body + Unpin + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S, ReqB, ResB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let span = tracing::debug_span!(
            target: "tower_deepseek_retry",
            "deepseek.retry",
            deepseek.layer = "retry",
            deepseek.outcome = tracing::field::Empty,
            deepseek.retry.attempts = tracing::field::Empty,
        );
        // The first attempt starts at the first poll, inside the span.
        InSpan::new(ResponseFuture::new(service, self.shared.clone(), req), span)
            .on_head(record_attempts)
    }
}

/// Records the number of attempts of a call (its answer's `Attempts`) in its span.
fn record_attempts(span: &tracing::Span, _headers: &http::HeaderMap, ext: &http::Extensions) {
    if let Some(a) = ext.get::<tower_deepseek_core::protocol::Attempts>() {
        span.record("deepseek.retry.attempts", i64::from(a.count()));
    }
}
