//! The failover's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tower_deepseek_core::BoxError;

use crate::circuit_breaker::ResponseBody;

/// The response future of [`Failover`](super::Failover). Boxed: it buffers the body and may make several
/// attempts; one allocation is small next to a network call.
pub struct ResponseFuture<B> {
    inner: BoxedAttempts<B>,
}

impl<B> ResponseFuture<B> {
    pub(super) fn new(inner: BoxedAttempts<B>) -> Self {
        Self { inner }
    }
}

pub(super) type BoxedAttempts<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
