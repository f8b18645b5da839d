//! [`ResponseBody`]: the answer, observed; its end (or its drop) writes the record.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Body;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::classify::{Classifier, EndJudge, FailureClass};

use super::error::AuditUnavailable;
use super::record::{Pending, outcome_of};
use super::recorder::PromptRecorder;
#[cfg(doc)]
use super::{Audit, SinkFailurePolicy};

pub(super) enum Eos {
    Ready(Result<(), FailureClass>),
    /// Judged at the end: by the verdict a layer below shares when it is about the very frames
    /// this layer saw, else by this layer's own classifier.
    Body(Box<EndJudge>),
}

/// Watches the response body and writes the record at its end.
pub(super) struct AuditObserver {
    pub(super) pending: Option<Box<Pending>>,
    pub(super) status: u16,
    pub(super) eos: Eos,
}

impl fmt::Debug for AuditObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditObserver").finish_non_exhaustive()
    }
}

impl BodyObserver for AuditObserver {
    fn on_data(&mut self, chunk: &Bytes) {
        if let Eos::Body(c) = &mut self.eos {
            c.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let status = Some(self.status);
        match (&mut self.eos, end) {
            (Eos::Body(c), BodyEnd::Dropped) => {
                p.finish(status, "cancelled", Some(Cow::Owned(c.take_summary())))
            }
            (Eos::Ready(_), BodyEnd::Dropped) => p.finish(status, "cancelled", None),
            (Eos::Ready(r), BodyEnd::Complete) => p.finish(status, outcome_of(r), None),
            (Eos::Ready(_), BodyEnd::Error(e)) => {
                let c = Classifier::new().classify_error(e);
                p.finish(status, c.as_str(), None)
            }
            (Eos::Body(c), BodyEnd::Complete) => {
                let r = c.finish();
                p.finish(status, outcome_of(&r), Some(Cow::Owned(c.take_summary())))
            }
            (Eos::Body(c), BodyEnd::Error(e)) => {
                let class = c.fail(e);
                p.finish(status, class.as_str(), Some(Cow::Owned(c.take_summary())))
            }
            (_, _) => p.finish(status, "unknown", None),
        };
    }
}

pin_project! {
    /// The response body of [`Audit`]: the inner body, observed; the record is written when it
    /// ends (before its last frame is returned, when the body below says it is ending) or is
    /// dropped. Under [`SinkFailurePolicy::FailClosed`], a record that cannot be written ends
    /// the body with [`AuditUnavailable`] in place of the frame that would have completed it.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<B, AuditObserver>,
        // Fail closed: the call's slot, read once the observer has written the record.
        watch: Option<PromptRecorder>,
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(body: B, observer: AuditObserver, watch: Option<PromptRecorder>) -> Self {
        ResponseBody {
            inner: ObservedBody::new(body, observer),
            watch,
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

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        // The observer is gone once the body ended: the record was written (or not) before
        // this frame goes on.
        if this.watch.is_some() && this.inner.observer().is_none() {
            let rec = this.watch.take().expect("checked above");
            if std::mem::take(&mut rec.lock().unwritten) {
                return Poll::Ready(Some(Err(Box::new(AuditUnavailable {}))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
