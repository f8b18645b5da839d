//! The response body the caller receives.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::{EndJudge, FailureClass};
use tower_deepseek_core::error::IncompleteResponse;

/// The response body the caller receives.
///
/// It yields the bytes the retry layer read while deciding (in order, none lost), then the rest
/// of the upstream body. A 2xx chat body keeps being watched by the shared classifier: a stream
/// that ends without `data: [DONE]`, or a JSON body that ends truncated, ends with an
/// [`IncompleteResponse`] error instead of a clean end, so a cut answer is never mistaken for a
/// whole one. Transport errors pass through as they are.
pub struct ResponseBody<B> {
    prefix: Prefix,
    inner: Option<B>,
    eos: Option<Watch>,
    pending_error: Option<BoxError>,
}

/// How the rest of a handed-over body is judged at its end: core's [`EndJudge`], by the
/// verdict a layer below shares when it is about these very frames, else by this layer's
/// classifier (a cut body below that never ended is judged here: incomplete).
pub(crate) type Watch = Box<EndJudge>;

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            prefix: Prefix::default(),
            inner: Some(inner),
            eos: None,
            pending_error: None,
        }
    }

    pub(crate) fn with_parts(
        prefix: Prefix,
        inner: Option<B>,
        eos: Option<Watch>,
        pending_error: Option<BoxError>,
    ) -> Self {
        Self {
            prefix,
            inner,
            eos,
            pending_error,
        }
    }
}

impl<B> ResponseBody<B> {
    /// The error this body would end with after its prefix, taken out of it.
    pub(crate) fn take_pending_error(&mut self) -> Option<BoxError> {
        self.pending_error.take()
    }

    /// At the end of the inner body: the error for a watched answer that ended incomplete.
    fn judge_end(&mut self) -> Option<BoxError> {
        let class = self.eos.take()?.finish().err()?;
        let e = incomplete_error(&class)?;
        tracing::warn!(
            target: "tower_deepseek_retry",
            class = class.as_str(),
            "response body ended incomplete after it reached the caller"
        );
        Some(e)
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("prefix_frames", &self.prefix.len())
            .field("ended", &self.inner.is_none())
            .field("watching", &self.eos.is_some())
            .finish()
    }
}

/// The frames the retry layer read while deciding, handed to the caller first, in order. A
/// non-streaming answer usually arrives in one data frame: that one is kept inline (as its
/// `Bytes`, so the response body stays small), without allocating a queue.
#[derive(Default)]
pub(crate) struct Prefix {
    first: Option<Bytes>,
    rest: VecDeque<Frame<Bytes>>,
}

impl Prefix {
    pub(crate) fn push(&mut self, frame: Frame<Bytes>) {
        if self.first.is_none() && self.rest.is_empty() {
            match frame.into_data() {
                Ok(data) => self.first = Some(data),
                Err(frame) => self.rest.push_back(frame),
            }
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame<Bytes>> {
        match self.first.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.rest.pop_front(),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// The bytes of the data frames, in order.
    fn data_len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len)
            + self
                .rest
                .iter()
                .filter_map(|f| f.data_ref().map(Bytes::len))
                .sum::<usize>()
    }

    fn all_data(&self) -> bool {
        self.rest.iter().all(Frame::is_data)
    }
}

pub(crate) fn incomplete_error(class: &FailureClass) -> Option<BoxError> {
    match class {
        FailureClass::Incomplete => Some(Box::new(IncompleteResponse::new(
            "the body ended without data: [DONE] or with truncated JSON",
        ))),
        FailureClass::EmptyBody => Some(Box::new(IncompleteResponse::new(
            "the body ended before any content",
        ))),
        _ => None,
    }
}

pub(crate) fn to_bytes_frame<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B> Body for ResponseBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = this.prefix.pop() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = this.pending_error.take() {
            this.inner = None;
            this.eos = None;
            return Poll::Ready(Some(Err(e)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut inner = Pin::new(inner);
        match ready!(inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = to_bytes_frame(frame);
                if let (Some(judge), Some(data)) = (this.eos.as_mut(), frame.data_ref()) {
                    judge.on_data(data);
                }
                // Read to its declared length: a server will not poll for the `None` (see core's
                // `ObservedBody`), so judge the end now. An incomplete verdict goes up after
                // this frame, to a caller still reading.
                if inner.is_end_stream() {
                    this.inner = None;
                    this.pending_error = this.judge_end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.inner = None;
                this.eos = None;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.inner = None;
                Poll::Ready(this.judge_end().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.pending_error.is_none()
            && match &self.inner {
                None => true,
                Some(b) => self.eos.is_none() && b.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) if self.prefix.is_empty() && self.eos.is_none() => b.size_hint(),
            Some(_) => SizeHint::default(),
            None => {
                let n = self.prefix.data_len();
                if self.pending_error.is_some() {
                    let mut h = SizeHint::new();
                    h.set_lower(n as u64);
                    h
                } else if self.prefix.all_data() {
                    SizeHint::with_exact(n as u64)
                } else {
                    SizeHint::default()
                }
            }
        }
    }
}
