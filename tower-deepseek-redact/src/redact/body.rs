//! [`ResponseBody`]: the answer, with placeholders put back.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek_core::body::ChunkTransform;

use super::restore::{SseRestorer, TextRestorer};
#[cfg(doc)]
use super::service::Redact;
use crate::redactor::Vault;

/// How an answer is restored.
#[derive(PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    Text(bool),
    Sse,
}

pin_project! {
    /// The response body of [`Redact`]: the inner body, with placeholders restored when the
    /// request had any.
    ///
    /// Without placeholders (no vault) it is the inner body and a null pointer: polling it
    /// checks the pointer and polls the inner body, whose frame goes straight to the caller.
    /// With a vault, the restorer is boxed behind that pointer, and a frame that needs nothing
    /// restored is handed on as the very same frame (see [`RestoreState::poll_frame`]).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        restore: Option<Box<RestoreState>>,
    }
}

/// The restorer of a response body and where its stream is: core's `TransformBody`, but with
/// the frame that needs no change forwarded as it is (not taken apart and rebuilt), and boxed
/// so that a body without a vault stays the inner body plus a pointer.
#[derive(Debug)]
struct RestoreState {
    restorer: Restorer,
    /// Trailers from the inner body, sent after the restorer's held-back bytes.
    pending_trailers: Option<HeaderMap>,
    phase: Phase,
}

#[derive(Debug)]
enum Restorer {
    Text(TextRestorer),
    Sse(SseRestorer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The inner body ended and the held-back bytes went out: the trailers (if any) are next.
    Flushed,
    Done,
}

impl Restorer {
    /// Whether `chunk` goes out as it is (the restorer's inlined fast check).
    #[inline(always)]
    fn passes(&self, chunk: &[u8]) -> bool {
        match self {
            Restorer::Text(r) => r.passes(chunk),
            Restorer::Sse(r) => r.passes(chunk),
        }
    }

    /// A chunk that did not pass.
    fn transform_failed(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Restorer::Text(r) => r.transform_failed(chunk),
            Restorer::Sse(r) => r.transform_failed(chunk),
        }
    }

    fn finish(&mut self) -> Bytes {
        match self {
            Restorer::Text(r) => r.finish(),
            Restorer::Sse(r) => r.finish(),
        }
    }
}

impl RestoreState {
    /// Polls `inner` through the restorer. Empty results are skipped, never sent as empty
    /// frames; trailers pass through unchanged after the restorer's final bytes; an error ends
    /// the stream. Not inlined into [`ResponseBody::poll_frame`], which thus stays small enough
    /// to be inlined into the caller's loop when there is no vault; this function inlines the
    /// inner body's poll and the fast check instead.
    #[inline(never)]
    fn poll_frame<B: Body<Data = Bytes>>(
        &mut self,
        mut inner: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if self.phase != Phase::Streaming {
                return Poll::Ready(self.after_end());
            }
            match ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // The common frame: data that needs nothing restored, the same `Bytes`.
                    // (Taken out of the frame and put in a new one: moving only the `Bytes`
                    // saves LLVM copies of the whole `Frame`, which is sized for trailers.)
                    let out = match frame.into_data() {
                        Ok(data) if !data.is_empty() && self.restorer.passes(&data) => data,
                        Ok(data) => self.restorer.transform_failed(data),
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                self.pending_trailers = Some(t);
                            }
                            continue;
                        }
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    self.phase = Phase::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    self.phase = Phase::Flushed;
                    let tail = self.restorer.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                }
            }
        }
    }

    #[cold]
    fn after_end<E>(&mut self) -> Option<Result<Frame<Bytes>, E>> {
        match self.phase {
            Phase::Flushed => {
                self.phase = Phase::Done;
                self.pending_trailers.take().map(|t| Ok(Frame::trailers(t)))
            }
            _ => None,
        }
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(inner: B, vault: Vault, kind: Kind) -> Self {
        let restorer = match kind {
            Kind::Plain => None,
            Kind::Text(json) => Some(Restorer::Text(TextRestorer::new(vault, json))),
            Kind::Sse => Some(Restorer::Sse(SseRestorer::new(vault))),
        };
        Self {
            inner,
            restore: restorer.map(|restorer| {
                Box::new(RestoreState {
                    restorer,
                    pending_trailers: None,
                    phase: Phase::Streaming,
                })
            }),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.restore.as_deref().map(|r| &r.restorer) {
            None => "plain",
            Some(Restorer::Text(_)) => "restore",
            Some(Restorer::Sse(_)) => "restore-sse",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.restore {
            None => match ready!(this.inner.poll_frame(cx)) {
                // Rebuilt around its `Bytes`: see `RestoreState::poll_frame`.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => Poll::Ready(other),
            },
            Some(r) => r.poll_frame(this.inner, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.restore {
            None => self.inner.is_end_stream(),
            Some(r) => r.phase == Phase::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.restore {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}
