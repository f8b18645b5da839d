//! The response future of [`Cache`](crate::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tower_deepseek_core::BoxError;

use super::body::ResponseBody;

type Inner<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send + 'static>>;

/// Response future of [`Cache`](crate::Cache).
///
/// Boxed: a request goes through buffering, L1, single-flight, L2 and upstream steps, and
/// the box costs one allocation next to the body buffering it already does. The name stays,
/// so the box can go without an API break.
pub struct ResponseFuture<B> {
    inner: Inner<B>,
}

impl<B> ResponseFuture<B> {
    pub(crate) fn new(inner: Inner<B>) -> Self {
        ResponseFuture { inner }
    }
}

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
