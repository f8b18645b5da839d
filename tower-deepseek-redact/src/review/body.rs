//! [`ResponseBody`]: the answer, observed; a sampled call's answer is assembled as it
//! passes and its record written when it ends.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};

#[cfg(doc)]
use super::Review;
use super::answer::{Answer, Assembler, ReviewOutcome};
use super::record::{ReviewedCall, SeenRequest};
use super::service::Pending;

/// A sampled call whose answer is on its way.
pub(super) struct Sampled {
    pub(super) pending: Box<Pending>,
    pub(super) model: Option<String>,
    pub(super) request: SeenRequest,
    pub(super) status: Option<u16>,
    pub(super) assembler: Option<Assembler>,
}

impl Sampled {
    /// Writes the record (an enqueue) and queues the call for the evaluators.
    pub(super) fn finish(self, end: Option<ReviewOutcome>) {
        let Sampled {
            pending: p,
            model,
            request,
            status,
            assembler,
        } = self;
        let (answer, answer_text, outcome) = match (assembler, end) {
            (Some(a), None) => a.finish(true),
            (Some(a), Some(o)) => {
                let (answer, text, _) = a.finish(false);
                (answer, text, o)
            }
            (None, o) => (Answer::default(), None, o.unwrap_or(ReviewOutcome::Failed)),
        };
        let call = Arc::new(ReviewedCall {
            timestamp: p.timestamp,
            request_id: p.request_id,
            tenant: p.tenant,
            route: p.route,
            model,
            status,
            outcome,
            latency_ms: p
                .started
                .elapsed()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            request,
            answer,
            answer_text,
        });
        p.shared.writer.enqueue(call.to_line(), "call");
        p.shared.eval.submit(&p.shared, call);
    }
}

/// Feeds a sampled answer to its assembler; nothing for a call that is not sampled.
pub(super) struct ReviewObserver {
    pub(super) sampled: Option<Box<Sampled>>,
}

impl fmt::Debug for ReviewObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReviewObserver")
            .field("sampled", &self.sampled.is_some())
            .finish()
    }
}

impl BodyObserver for ReviewObserver {
    #[inline]
    fn on_data(&mut self, chunk: &Bytes) {
        if let Some(s) = &mut self.sampled
            && let Some(a) = &mut s.assembler
        {
            a.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        if let Some(s) = self.sampled.take() {
            let end = match end {
                BodyEnd::Complete => None,
                BodyEnd::Error(_) => Some(ReviewOutcome::Failed),
                BodyEnd::Dropped => Some(ReviewOutcome::Cancelled),
                _ => Some(ReviewOutcome::Failed),
            };
            s.finish(end);
        }
    }
}

pin_project! {
    /// The response body of [`Review`]: the inner body, forwarded frame by frame as it comes
    /// (never held back); a sampled call's answer is assembled in passing.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<B, ReviewObserver>,
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(body: B, observer: ReviewObserver) -> Self {
        Self {
            inner: ObservedBody::new(body, observer),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
