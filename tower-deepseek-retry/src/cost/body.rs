//! The response body of [`Cost`](super::Cost): observed; its end prices the call.

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

pin_project! {
    /// Response body of [`Cost`](super::Cost): the answer, passed through unchanged; its end
    /// prices the call.
    pub struct ResponseBody<B> {
        #[pin]
        pub(crate) inner: ObservedBody<B, PriceSlot>,
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
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
