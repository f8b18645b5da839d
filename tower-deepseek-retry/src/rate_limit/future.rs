//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;

use super::body::ResponseBody;
use super::state::*;

pub(crate) type SlowFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<F, B> {
        #[pin]
        pub(crate) kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F, B> {
        // Admitted at once: the inner future, unboxed.
        Fast { #[pin] fut: F, shared: Arc<Shared>, admitted: Option<Admitted> },
        // Reads the body or waits its turn.
        Slow { fut: SlowFuture<B> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Fast {
                fut,
                shared,
                admitted,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                let admitted = admitted.take().expect("polled after completion");
                Poll::Ready(shared.finish(admitted, result))
            }
            KindProj::Slow { fut } => fut.as_mut().poll(cx),
        }
    }
}
