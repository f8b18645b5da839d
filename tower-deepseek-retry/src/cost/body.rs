//! The response body of [`Cost`](super::Cost): observed; its end prices the call.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::classify::EndJudge;
use tower_deepseek_core::protocol::CallCost;

use super::state::Call;

/// Prices the call when the body ends.
pub(crate) struct Pricing {
    pub(crate) call: Call,
    pub(crate) judge: EndJudge,
    pub(crate) slot: CallCost,
}

pub(crate) struct PriceSlot(pub(crate) Option<Box<Pricing>>);

impl BodyObserver for PriceSlot {
    fn on_data(&mut self, chunk: &Bytes) {
        if let Some(p) = &mut self.0 {
            p.judge.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let Some(mut p) = self.0.take() else { return };
        match end {
            BodyEnd::Complete => {
                let _ = p.judge.finish();
            }
            BodyEnd::Error(e) => {
                let _ = p.judge.fail(e);
            }
            // Dropped: whatever usage was seen so far (none, for an answer cut before its end).
            _ => {}
        }
        let summary = p.judge.summary();
        if let Some(usage) = &summary.usage {
            if let Some(cost) = p.call.settle(usage, summary.model.as_deref()) {
                p.slot.set(cost);
            }
        }
    }
}

/// What a body observed by the cost layer is.
pub(crate) type Observed<B> = ObservedBody<B, PriceSlot>;

pin_project! {
    /// Response body of [`Cost`](super::Cost): the answer, passed through unchanged; its end
    /// prices the call.
    pub struct ResponseBody<B> {
        #[pin]
        pub(crate) inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    pub(crate) enum Inner<B> {
        // As it comes.
        Direct { #[pin] body: Observed<B> },
        // Read ahead to price it before the head went up (`x-ds-cost`): the frames read, the
        // error that ended the reading, and the rest of the body (when the read stopped at the
        // limit).
        Collected {
            prefix: VecDeque<Frame<Bytes>>,
            err: Option<BoxError>,
            rest: Option<Pin<Box<Observed<B>>>>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn direct(body: Observed<B>) -> Self {
        ResponseBody {
            inner: Inner::Direct { body },
        }
    }

    pub(crate) fn collected(
        prefix: VecDeque<Frame<Bytes>>,
        err: Option<BoxError>,
        rest: Option<Pin<Box<Observed<B>>>>,
    ) -> Self {
        ResponseBody {
            inner: Inner::Collected { prefix, err, rest },
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
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Direct { body } => body.poll_frame(cx),
            InnerProj::Collected { prefix, err, rest } => {
                if let Some(f) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                if let Some(e) = err.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(r) => r.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Direct { body } => body.is_end_stream(),
            Inner::Collected { prefix, err, rest } => {
                prefix.is_empty()
                    && err.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct { body } => body.size_hint(),
            Inner::Collected { prefix, rest, .. } => {
                let known: u64 = prefix
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                match rest {
                    None => SizeHint::with_exact(known),
                    Some(r) => {
                        let h = r.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(known + h.lower());
                        if let Some(u) = h.upper() {
                            out.set_upper(known + u);
                        }
                        out
                    }
                }
            }
        }
    }
}
