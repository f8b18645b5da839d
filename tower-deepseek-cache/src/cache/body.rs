//! [`ResponseBody`]: what the cache answers with.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::EndJudge;
use tower_deepseek_core::error::IncompleteResponse;

use super::service::Shared;
use crate::flight::{End, Flight, FlightKey, Follower};
use crate::record::Recorder;

pub(crate) type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + 'static>>;

pin_project! {
    /// The response body of [`Cache`](crate::Cache): the upstream body passed through (and
    /// recorded on a miss), an answer in flight for another identical request, or a cached
    /// answer replayed.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Passthrough { #[pin] body: B },
        Leader { body: LeaderBody },
        Follower { body: FollowerBody },
        Replay { frames: VecDeque<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        ResponseBody {
            inner: Inner::Passthrough { body },
        }
    }
    pub(crate) fn leader(body: LeaderBody) -> Self {
        ResponseBody {
            inner: Inner::Leader { body },
        }
    }
    pub(crate) fn follower(body: FollowerBody) -> Self {
        ResponseBody {
            inner: Inner::Follower { body },
        }
    }
    pub(crate) fn replay(frames: impl Into<VecDeque<Bytes>>) -> Self {
        ResponseBody {
            inner: Inner::Replay {
                frames: frames.into(),
            },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Passthrough { .. } => "passthrough",
            Inner::Leader { .. } => "upstream",
            Inner::Follower { .. } => "in-flight",
            Inner::Replay { .. } => "cached",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Passthrough { body } => match ready!(body.poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => Poll::Ready(None),
            },
            InnerProj::Leader { body } => Pin::new(body).poll_frame(cx),
            InnerProj::Follower { body } => Pin::new(body).poll_frame(cx),
            InnerProj::Replay { frames } => {
                Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Passthrough { body } => body.is_end_stream(),
            Inner::Leader { body } => body.is_end_stream(),
            Inner::Follower { .. } => false,
            Inner::Replay { frames } => frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Passthrough { body } => body.size_hint(),
            Inner::Leader { body } => body.size_hint(),
            Inner::Follower { .. } => SizeHint::default(),
            Inner::Replay { frames } => {
                SizeHint::with_exact(frames.iter().map(|f| f.len() as u64).sum())
            }
        }
    }
}

/// Who judges whether a recorded answer ended whole (and so may be stored): core's
/// [`EndJudge`], which takes the verdict a layer below shares only when it is about the very
/// frames this layer records, else classifies them itself.
pub(crate) type Judge = EndJudge;

/// Records the upstream answer of a miss while forwarding it, and fans it out to followers.
pub(crate) struct LeaderBody {
    body: Option<BoxBody>,
    flight: Arc<Flight>,
    fkey: FlightKey,
    /// Whether the flight is registered in the shared map (not for `no-cache` refreshes).
    registered: bool,
    recording: Option<(Recorder, Judge)>,
    shared: Arc<Shared>,
}

impl LeaderBody {
    pub(crate) fn new(
        body: BoxBody,
        flight: Arc<Flight>,
        fkey: FlightKey,
        registered: bool,
        recording: Option<(Recorder, Judge)>,
        shared: Arc<Shared>,
    ) -> Self {
        LeaderBody {
            body: Some(body),
            flight,
            fkey,
            registered,
            recording,
            shared,
        }
    }

    fn finish(&mut self, end: End) {
        self.body = None;
        if end == End::Complete {
            if let Some((recorder, mut judge)) = self.recording.take() {
                if judge.finish().is_ok() {
                    if let Some(entry) = recorder.finish() {
                        self.shared.store(&self.fkey.key, entry);
                    }
                }
            }
        }
        self.recording = None;
        self.flight.end(end);
        if self.registered {
            self.shared.flights.remove(&self.fkey, &self.flight);
        }
    }

    /// Reads (and publishes) the frames the upstream body has ready, without waiting for
    /// more: whether the body ended (whole or failed).
    pub(crate) fn read_ready(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match Pin::new(&mut *self).poll_frame(cx) {
                Poll::Pending => return false,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None | Some(Err(_))) => return true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Body for LeaderBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some((recorder, judge)) = &mut this.recording {
                        judge.on_data(data);
                        recorder.on_data(data);
                    }
                    this.flight.publish_chunk(data.clone());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                if let Some((_, judge)) = &mut this.recording {
                    let class = judge.fail(&*e);
                    tracing::debug!(target: "tower_deepseek_cache", key = %this.fkey.key, class = class.as_str(), "upstream body failed; not stored");
                }
                this.finish(End::Failed);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for LeaderBody {
    fn drop(&mut self) {
        if self.body.is_some() {
            // Dropped unfinished: every subscriber left, or (without a runtime to drive it)
            // the caller did. The answer is incomplete: never stored.
            self.finish(End::Failed);
        }
    }
}

/// Drives `body` to its end in the background, publishing to its flight, until it ends or every
/// subscriber has left.
pub(crate) async fn drive(mut body: LeaderBody) {
    std::future::poll_fn(|cx| {
        loop {
            if body.flight.poll_cancelled(cx) {
                tracing::debug!(target: "tower_deepseek_cache", key = %body.fkey.key, "every caller left; upstream answer cancelled");
                return Poll::Ready(());
            }
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
            }
        }
    })
    .await;
}

/// Receives the answer of an identical request in flight.
pub(crate) struct FollowerBody {
    follower: Follower,
}

impl FollowerBody {
    pub(crate) fn new(follower: Follower) -> Self {
        FollowerBody { follower }
    }
}

impl Body for FollowerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.follower.poll_chunk(cx)) {
            Some(Ok(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(Err(())) => Poll::Ready(Some(Err(Box::new(IncompleteResponse::new(
                "the upstream answer this request shared broke off",
            ))))),
            None => Poll::Ready(None),
        }
    }
}
