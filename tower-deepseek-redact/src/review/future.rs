//! [`ResponseFuture`]: decides at the response head whether the call is sampled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http::header::CONTENT_TYPE;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;

#[cfg(doc)]
use super::Review;
use super::answer::{Assembler, ReviewOutcome};
use super::body::{ResponseBody, ReviewObserver, Sampled};
use super::service::Pending;

pin_project! {
    /// The future of [`Review`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        pending: Option<Box<Pending>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: F, pending: Box<Pending>) -> Self {
        Self {
            fut,
            pending: Some(pending),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
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
        let result = ready!(this.fut.poll(cx));
        let pending = this.pending.take().expect("polled after completion");
        let resolved = pending.resolve();
        match result {
            Err(e) => {
                if let Some(request) = resolved.sampled {
                    Sampled {
                        pending,
                        model: resolved.model,
                        request,
                        status: None,
                        assembler: None,
                    }
                    .finish(Some(ReviewOutcome::Failed));
                }
                Poll::Ready(Err(e.into()))
            }
            Ok(res) => {
                let sampled = resolved.sampled.map(|request| {
                    let event_stream = res
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| {
                            v.trim_start()
                                .to_ascii_lowercase()
                                .starts_with("text/event-stream")
                        });
                    let limit = pending.shared.max_body_bytes;
                    Box::new(Sampled {
                        status: Some(res.status().as_u16()),
                        assembler: Some(Assembler::new(
                            event_stream,
                            !res.status().is_success(),
                            limit,
                        )),
                        pending,
                        model: resolved.model,
                        request,
                    })
                });
                let observer = ReviewObserver { sampled };
                Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, observer))))
            }
        }
    }
}
