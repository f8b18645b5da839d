//! The response body: the inner body, observed until its end when its outcome depends on it.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::classify::{EosClassifier, FrameTrace, SharedOutcome};

use crate::state::Permit;

/// Feeds the shared classifier as the body passes, notes when the first real content arrives
/// (the end of the call's latency), and records the outcome at the end. A body dropped before
/// its end drops the permit unrecorded.
///
/// Boxed: the classifier's state is large, and an unboxed observer would make every
/// `ResponseBody` (also the plain ones) as large, and every move of a response a memcpy of it.
pub(crate) struct EndObserver(Box<ObserverState>);

struct ObserverState {
    eos: EosClassifier,
    permit: Option<Permit>,
    first_content: Option<Instant>,
    /// The slot this breaker published for the layers above (see [`SharedOutcome`]), and the
    /// frames it passed up, which its verdict is about.
    share: Option<(SharedOutcome, FrameTrace)>,
}

impl EndObserver {
    pub(crate) fn new(eos: EosClassifier, permit: Permit, share: Option<SharedOutcome>) -> Self {
        Self(Box::new(ObserverState {
            eos,
            permit: Some(permit),
            first_content: None,
            share: share.map(|slot| (slot, FrameTrace::new())),
        }))
    }
}

impl BodyObserver for EndObserver {
    fn on_data(&mut self, chunk: &Bytes) {
        let s = &mut *self.0;
        s.eos.on_data(chunk);
        if let Some((_, frames)) = &mut s.share {
            frames.record(chunk);
        }
        if s.first_content.is_none() && s.eos.has_content() {
            s.first_content = s.permit.as_ref().map(|p| p.breaker().now());
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let s = &mut *self.0;
        let result = match end {
            BodyEnd::Complete => s.eos.finish(),
            BodyEnd::Error(e) => Err(s.eos.fail(e)),
            // Dropped (or anything new): the caller went away; record nothing.
            _ => {
                s.permit.take();
                return;
            }
        };
        // Before the end goes up: the layers above read the outcome when they see it.
        if let Some((slot, frames)) = s.share.take() {
            slot.publish(result.clone(), s.eos.take_summary(), frames);
        }
        if let Some(permit) = s.permit.take() {
            let now = permit.breaker().now();
            permit.record(
                result.as_ref().map(|_| ()),
                s.first_content.unwrap_or(now),
                now,
            );
        }
    }
}

pin_project! {
    /// The response body of [`CircuitBreaker`](crate::CircuitBreaker),
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker) and [`Failover`](crate::Failover).
    ///
    /// Yields the inner body's frames unchanged, as they arrive. When the outcome of a call
    /// depends on its body (a 2xx: DeepSeek may still cut the stream, send an in-band error or
    /// nothing at all), the breaker records the outcome when the body ends; if the body is
    /// dropped first, nothing is recorded and a half-open probe slot is given back.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Plain { #[pin] body: B },
        Observed { #[pin] body: ObservedBody<B, EndObserver> },
    }
}

impl<B> ResponseBody<B> {
    #[inline]
    pub(crate) fn plain(body: B) -> Self {
        Self {
            kind: Kind::Plain { body },
        }
    }

    pub(crate) fn observed(body: B, observer: EndObserver) -> Self {
        Self {
            kind: Kind::Observed {
                body: ObservedBody::new(body, observer),
            },
        }
    }

    /// Whether the breaker is still waiting for this body's end to record its outcome.
    pub fn is_observed(&self) -> bool {
        match &self.kind {
            Kind::Plain { .. } => false,
            Kind::Observed { body } => body.observer().is_some(),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("observed", &self.is_observed())
            .finish_non_exhaustive()
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
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Observed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Observed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Observed { body } => body.size_hint(),
        }
    }
}
