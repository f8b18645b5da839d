//! Rewriting the data frames of a response body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

/// Rewrites the data frames of a stream, one at a time.
pub trait ChunkTransform {
    /// Transforms one chunk. The result may be empty (bytes held back for later), or carry bytes
    /// held back from earlier chunks.
    fn transform(&mut self, chunk: Bytes) -> Bytes;

    /// The stream ended: release whatever is still held back.
    fn finish(&mut self) -> Bytes {
        Bytes::new()
    }

    /// Whether the transform wants the stream to end now (after what it already returned), for
    /// example because it blocked the output. Checked after each chunk.
    fn is_finished(&self) -> bool {
        false
    }
}

pin_project! {
    /// A response body whose data frames pass through a [`ChunkTransform`].
    ///
    /// Empty results are skipped, never sent as empty frames. Trailers pass through unchanged,
    /// after the transform's final bytes.
    pub struct TransformBody<B, T> {
        #[pin]
        inner: B,
        transform: T,
        pending_trailers: Option<HeaderMap>,
        state: TransformState,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransformState {
    Streaming,
    Flushed,
    Done,
}

impl<B, T> TransformBody<B, T> {
    /// Wraps `inner`, rewriting its data with `transform`.
    pub fn new(inner: B, transform: T) -> Self {
        Self {
            inner,
            transform,
            pending_trailers: None,
            state: TransformState::Streaming,
        }
    }

    /// The transform.
    pub fn transform_ref(&self) -> &T {
        &self.transform
    }
}

impl<B, T> fmt::Debug for TransformBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransformBody")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B, T> Body for TransformBody<B, T>
where
    B: Body<Data = Bytes>,
    T: ChunkTransform,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            match *this.state {
                TransformState::Done => return Poll::Ready(None),
                TransformState::Flushed => {
                    *this.state = TransformState::Done;
                    return Poll::Ready(
                        this.pending_trailers.take().map(|t| Ok(Frame::trailers(t))),
                    );
                }
                TransformState::Streaming => {}
            }
            if this.transform.is_finished() {
                *this.state = TransformState::Flushed;
                let tail = this.transform.finish();
                if !tail.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                continue;
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.transform.transform(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            *this.pending_trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => {
                    *this.state = TransformState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    *this.state = TransformState::Flushed;
                    let tail = this.transform.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == TransformState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::buffer::tests::chunks;
    use http_body_util::BodyExt;

    struct HoldLast;
    impl ChunkTransform for HoldLast {
        fn transform(&mut self, chunk: Bytes) -> Bytes {
            chunk.to_ascii_uppercase().into()
        }
        fn finish(&mut self) -> Bytes {
            Bytes::from_static(b"!")
        }
    }

    #[tokio::test]
    async fn transform_rewrites_and_flushes() {
        let body = TransformBody::new(chunks(&["ab", "cd"]), HoldLast);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.as_ref(), b"ABCD!");
    }
}
