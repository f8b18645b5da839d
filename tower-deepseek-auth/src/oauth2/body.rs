use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek_core::body::{BufferedBody, Overflow};

pin_project! {
    /// The request body [`OAuth2`](super::OAuth2) hands to its inner service: the caller's body,
    /// buffered so that it can be sent again after a 401, or, when it was larger than the
    /// limit or replays are off ([`OAuth2Config::replay_on_401`](super::OAuth2Config::replay_on_401)),
    /// streamed once (every byte, in order).
    pub struct ReplayBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Buffered { #[pin] body: BufferedBody },
        Overflow { #[pin] body: Overflow<B> },
        Passthrough { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    pub(crate) fn buffered(body: BufferedBody) -> Self {
        Self {
            inner: Inner::Buffered { body },
        }
    }

    pub(crate) fn overflow(body: Overflow<B>) -> Self {
        Self {
            inner: Inner::Overflow { body },
        }
    }

    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            inner: Inner::Passthrough { body },
        }
    }

    /// Whether the body was buffered (and so a 401 to it can be replayed).
    pub fn is_buffered(&self) -> bool {
        matches!(self.inner, Inner::Buffered { .. })
    }

    /// The buffered bytes, when the body was within the limit.
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Buffered { body } => Some(body.bytes()),
            Inner::Overflow { .. } | Inner::Passthrough { .. } => None,
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Buffered { body } => f.debug_tuple("ReplayBody").field(body).finish(),
            Inner::Overflow { body } => f.debug_tuple("ReplayBody").field(body).finish(),
            Inner::Passthrough { .. } => f.write_str("ReplayBody(Passthrough)"),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Buffered { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            InnerProj::Overflow { body } => body.poll_frame(cx),
            InnerProj::Passthrough { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Buffered { body } => body.is_end_stream(),
            Inner::Overflow { body } => body.is_end_stream(),
            Inner::Passthrough { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Buffered { body } => body.size_hint(),
            Inner::Overflow { body } => body.size_hint(),
            Inner::Passthrough { body } => body.size_hint(),
        }
    }
}
