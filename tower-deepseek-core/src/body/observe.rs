//! Observing a response body as it passes.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

/// How an observed body ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyEnd<'a> {
    /// The body reached its end: `poll_frame` returned `None`, or the body reported
    /// `is_end_stream()` after a frame (it was read to its declared length). In the second case
    /// `on_end` runs before that last frame is forwarded.
    Complete,
    /// Reading the body failed with this error.
    Error(&'a (dyn std::error::Error + Send + Sync + 'static)),
    /// The body was dropped before its end: the caller went away.
    Dropped,
}

/// Sees a response body as it passes. Each method is called on the polling task, so keep it
/// cheap: the frame is forwarded right after the call returns.
pub trait BodyObserver {
    /// A data frame is about to be forwarded.
    fn on_data(&mut self, chunk: &Bytes);

    /// A trailers frame is about to be forwarded.
    fn on_trailers(&mut self, _trailers: &HeaderMap) {}

    /// The body ended. Called exactly once per body, also when it is dropped unfinished.
    ///
    /// A body read to its declared length (`is_end_stream()` after its last frame) ends
    /// [`Complete`](BodyEnd::Complete) before that frame is forwarded, and an empty body that
    /// reported `is_end_stream()` before any frame ends `Complete` when it is dropped: servers
    /// do not poll such bodies to their `None`, so the end is never left to a poll that may not
    /// come.
    fn on_end(&mut self, end: BodyEnd<'_>);
}

impl BodyObserver for () {
    fn on_data(&mut self, _chunk: &Bytes) {}
    fn on_end(&mut self, _end: BodyEnd<'_>) {}
}

/// Holds the observer and calls `on_end` if the body goes away before it was told: `Dropped`,
/// or `Complete` for a body that reported its end to [`Body::is_end_stream`] without a frame
/// (an empty body, which a server never polls).
struct ObserverSlot<O: BodyObserver> {
    observer: Option<O>,
    /// Set by `is_end_stream` (which has only `&self`) when the inner body is at its end.
    at_end: AtomicBool,
}

impl<O: BodyObserver> Drop for ObserverSlot<O> {
    fn drop(&mut self) {
        if let Some(mut o) = self.observer.take() {
            o.on_end(if *self.at_end.get_mut() {
                BodyEnd::Complete
            } else {
                BodyEnd::Dropped
            });
        }
    }
}

pin_project! {
    /// A response body that reports every frame to a [`BodyObserver`] as it passes.
    ///
    /// The observer learns how the body ended exactly once: complete, failed, or dropped.
    pub struct ObservedBody<B, O: BodyObserver> {
        #[pin]
        inner: B,
        observer: ObserverSlot<O>,
    }
}

impl<B, O: BodyObserver> ObservedBody<B, O> {
    /// Wraps `inner`, reporting to `observer`.
    pub fn new(inner: B, observer: O) -> Self {
        Self {
            inner,
            observer: ObserverSlot {
                observer: Some(observer),
                at_end: AtomicBool::new(false),
            },
        }
    }

    /// The observer, while the body has not ended.
    pub fn observer(&self) -> Option<&O> {
        self.observer.observer.as_ref()
    }
}

impl<B, O: BodyObserver> fmt::Debug for ObservedBody<B, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBody")
            .field("ended", &self.observer.observer.is_none())
            .finish_non_exhaustive()
    }
}

impl<B, O> Body for ObservedBody<B, O>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: BodyObserver,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(observer) = this.observer.observer.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    observer.on_data(data);
                } else if let Some(t) = frame.trailers_ref() {
                    observer.on_trailers(t);
                }
                // A body read to its declared end (its `Content-Length`, say) has ended, even
                // though nobody polls it for the `None`: hyper's server stops polling once it
                // has written that many bytes, and drops the body. Report the end now, before
                // the last frame goes up, so that the observer runs before the caller has it.
                if this.inner.is_end_stream() {
                    let mut observer = this.observer.observer.take().expect("checked above");
                    observer.on_end(BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                let mut observer = this.observer.observer.take().expect("checked above");
                observer.on_end(BodyEnd::Error(&*e));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                let mut observer = this.observer.observer.take().expect("checked above");
                observer.on_end(BodyEnd::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.observer.observer.is_none() {
            return true;
        }
        // An inner body at its end before any frame passed (an empty answer): the caller will
        // drop this body unpolled, and the drop then reports it complete.
        let end = self.inner.is_end_stream();
        if end {
            self.observer.at_end.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::buffer::tests::chunks;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl BodyObserver for Log {
        fn on_data(&mut self, chunk: &Bytes) {
            self.0.lock().unwrap().push(format!("data:{}", chunk.len()));
        }
        fn on_end(&mut self, end: BodyEnd<'_>) {
            let s = match end {
                BodyEnd::Complete => "complete",
                BodyEnd::Error(_) => "error",
                BodyEnd::Dropped => "dropped",
            };
            self.0.lock().unwrap().push(s.into());
        }
    }

    #[tokio::test]
    async fn observer_sees_frames_and_end_once() {
        let log = Log::default();
        let body = ObservedBody::new(chunks(&["ab", "cde"]), log.clone());
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.as_ref(), b"abcde");
        assert_eq!(*log.0.lock().unwrap(), vec!["data:2", "data:3", "complete"]);
    }

    #[tokio::test]
    async fn observer_hears_drop_and_error() {
        let log = Log::default();
        let mut body = ObservedBody::new(chunks(&["ab", "cde"]), log.clone());
        let _ = body.frame().await;
        drop(body);
        assert_eq!(*log.0.lock().unwrap(), vec!["data:2", "dropped"]);

        let log = Log::default();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Err(std::io::Error::other("reset")),
        ];
        let body = ObservedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            log.clone(),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(*log.0.lock().unwrap(), vec!["data:1", "error"]);
    }

    #[tokio::test]
    async fn body_read_to_its_declared_length_ends_before_its_last_frame_goes_up() {
        // `Full` reports its end after its one frame, as hyper's `Incoming` does once its
        // `Content-Length` is read. A server stops there and drops the body without polling
        // for the `None`: the observer must have heard `complete`, not `dropped`.
        let log = Log::default();
        let mut body = ObservedBody::new(Full::new(Bytes::from_static(b"{}")), log.clone());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().as_ref(), b"{}");
        assert_eq!(*log.0.lock().unwrap(), vec!["data:2", "complete"]);
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*log.0.lock().unwrap(), vec!["data:2", "complete"]);
    }

    #[tokio::test]
    async fn empty_body_that_said_so_ends_complete_when_dropped_unpolled() {
        let log = Log::default();
        let body = ObservedBody::new(Full::new(Bytes::new()), log.clone());
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*log.0.lock().unwrap(), vec!["complete"]);

        // Not asked, not at its end: a drop is a drop.
        let log = Log::default();
        drop(ObservedBody::new(Full::new(Bytes::new()), log.clone()));
        assert_eq!(*log.0.lock().unwrap(), vec!["dropped"]);
    }
}
