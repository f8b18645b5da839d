//! The response future of [`AdaptiveConcurrency`](super::AdaptiveConcurrency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_deepseek_core::BoxError;

/// Response future of [`AdaptiveConcurrency`](crate::AdaptiveConcurrency).
pub struct ResponseFuture<T> {
    pub(crate) inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
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
