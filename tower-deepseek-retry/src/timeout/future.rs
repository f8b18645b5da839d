//! The response future of [`Timeout`](super::Timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::body::{Mode, ResponseBody};
use super::layer::Limits;
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::is_event_stream;
use tower_deepseek_core::error::{TimeoutPhase, UpstreamTimeout};

pin_project! {
    /// Response future of [`Timeout`](crate::Timeout).
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        #[pin]
        pub(crate) sleep: Option<Sleep>,
        pub(crate) head: Option<(TimeoutPhase, Duration)>,
        pub(crate) limits: Limits,
        pub(crate) start: Instant,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let mode = if !resp.status().is_success() {
                    Mode::Flowing
                } else if is_event_stream(resp.headers()) {
                    Mode::AwaitSse(Box::default())
                } else {
                    Mode::AwaitJson
                };
                let limits = *this.limits;
                let start = *this.start;
                return Poll::Ready(Ok(resp.map(|b| ResponseBody::new(b, limits, start, mode))));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => {}
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            let (phase, after) = this.head.expect("a sleep has a phase");
            return Poll::Ready(Err(Box::new(UpstreamTimeout::new(phase, after))));
        }
        Poll::Pending
    }
}
