//! Request-body buffering with a limit, and response-body wrappers that observe or transform a
//! stream without delaying it.
//!
//! # Buffering requests
//!
//! A layer that must read a request body (to redact it, key a cache, estimate tokens or replay
//! it on retry) calls [`buffer`] once. The result is either a [`BufferedBody`], a cheap-to-clone
//! [`Bytes`] body that later layers and retries reuse without copying, or, when the body is larger
//! than the limit, an [`Overflow`] that still holds every byte read so far followed by the rest of
//! the original body: nothing is lost, the layer decides whether to send it once or refuse it
//! with [`BodyTooLarge`].
//!
//! A body that arrives as one chunk (the common case, and always the case for a body that an
//! earlier layer already buffered) is taken as-is: the returned [`Bytes`] is that chunk.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_deepseek_core::body::{buffer, Buffered, DEFAULT_BODY_LIMIT};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = Full::new(Bytes::from_static(b"{\"model\":\"deepseek-chat\"}"));
//! match buffer(body, DEFAULT_BODY_LIMIT).await.unwrap() {
//!     Buffered::Complete(body) => assert_eq!(body.bytes().len(), 25),
//!     Buffered::Overflow(_) => unreachable!(),
//! }
//! # }
//! ```
//!
//! # Observing and transforming responses
//!
//! [`ObservedBody`] hands every data frame to a [`BodyObserver`] as it passes and tells it how
//! the body ended ([`BodyEnd`]), including when the caller dropped it early. [`TransformBody`]
//! passes every data frame through a [`ChunkTransform`], which may hold back bytes (e.g. a
//! partial placeholder) and release them later. Neither waits for more than the frame at hand,
//! so the first byte of a stream is never delayed.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::error::BodyTooLarge;

/// The default request-body limit: 8 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A fully buffered body: one [`Bytes`] (and optional trailers), cheap to clone and replay.
///
/// Cloning shares the same memory; polling yields the bytes as a single frame.
#[derive(Clone, Default)]
pub struct BufferedBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
    /// Whether the data frame (and trailers) were already yielded.
    data_sent: bool,
    trailers_sent: bool,
}

impl BufferedBody {
    /// A body holding `data`.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            trailers: None,
            data_sent: false,
            trailers_sent: false,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Attaches trailers, sent after the data.
    #[must_use]
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.trailers = Some(trailers);
        self
    }

    /// The whole body.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// The trailers, if the original body had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Consumes the body, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.data
    }

    /// A fresh copy that can be polled from the start (shares memory).
    pub fn replay(&self) -> Self {
        Self::new(self.data.clone()).with_trailers_opt(self.trailers.clone())
    }

    fn with_trailers_opt(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers;
        self
    }
}

impl fmt::Debug for BufferedBody {
    // Bodies carry prompts: print the size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedBody")
            .field("len", &self.data.len())
            .field("trailers", &self.trailers.is_some())
            .finish()
    }
}

impl From<Bytes> for BufferedBody {
    fn from(data: Bytes) -> Self {
        Self::new(data)
    }
}

impl From<String> for BufferedBody {
    fn from(data: String) -> Self {
        Self::new(data)
    }
}

impl From<&'static str> for BufferedBody {
    fn from(data: &'static str) -> Self {
        Self::new(Bytes::from_static(data.as_bytes()))
    }
}

impl From<Vec<u8>> for BufferedBody {
    fn from(data: Vec<u8>) -> Self {
        Self::new(data)
    }
}

impl Body for BufferedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if !this.data_sent {
            this.data_sent = true;
            if !this.data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.data.clone()))));
            }
        }
        if !this.trailers_sent {
            this.trailers_sent = true;
            if let Some(t) = &this.trailers {
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        (self.data_sent || self.data.is_empty()) && (self.trailers_sent || self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.data_sent {
            SizeHint::with_exact(0)
        } else {
            SizeHint::with_exact(self.data.len() as u64)
        }
    }
}

/// The outcome of [`buffer`].
#[derive(Debug)]
pub enum Buffered<B> {
    /// The whole body, within the limit.
    Complete(BufferedBody),
    /// The body is larger than the limit. The value still yields every byte of the original body.
    Overflow(Overflow<B>),
}

impl<B> Buffered<B> {
    /// The buffered body, or a [`BodyTooLarge`] error (dropping the rest of the body).
    ///
    /// # Errors
    ///
    /// [`BodyTooLarge`] when the body was over the limit.
    pub fn into_complete(self) -> Result<BufferedBody, BodyTooLarge> {
        match self {
            Buffered::Complete(b) => Ok(b),
            Buffered::Overflow(o) => Err(BodyTooLarge::new(o.limit)),
        }
    }
}

pin_project! {
    /// A body that was too large to buffer: the chunks read so far, then the rest of the
    /// original body. Polling it yields every byte of the original, in order.
    pub struct Overflow<B> {
        prefix: std::collections::VecDeque<Bytes>,
        limit: usize,
        #[pin]
        rest: B,
    }
}

impl<B> Overflow<B> {
    /// The limit that the body passed.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes already read from the original body.
    pub fn buffered_len(&self) -> usize {
        self.prefix.iter().map(Bytes::len).sum()
    }
}

impl<B> fmt::Debug for Overflow<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overflow")
            .field("limit", &self.limit)
            .field("buffered", &self.buffered_len())
            .finish_non_exhaustive()
    }
}

impl<B> Body for Overflow<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match ready!(this.rest.poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(
                frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
            ))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let pre = self.buffered_len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + pre);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + pre);
        }
        hint
    }
}

/// Reads `body` to its end if it fits in `limit` bytes.
///
/// A body whose size hint already says it is larger than `limit` is not read at all. A body
/// made of one chunk is returned without copying (for `Bytes` data, [`Buf::copy_to_bytes`] is a
/// move); several chunks are joined into one buffer once, at the end.
///
/// The future is named ([`BufferFuture`]), so layers can hold it in their own response futures
/// without boxing.
///
/// # Errors
///
/// The body's own error, boxed, if reading it fails. Bytes read before the error are lost with
/// it: a request whose body cannot be read cannot be sent either.
pub fn buffer<B>(body: B, limit: usize) -> BufferFuture<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let over = body.size_hint().lower() > limit as u64;
    BufferFuture {
        body: Some(body),
        limit,
        over,
        first: None,
        more: Vec::new(),
        total: 0,
        trailers: None,
    }
}

/// The future of [`buffer`].
pub struct BufferFuture<B> {
    body: Option<B>,
    limit: usize,
    over: bool,
    // The first chunk is kept on its own: a one-chunk body allocates nothing here.
    first: Option<Bytes>,
    more: Vec<Bytes>,
    total: usize,
    trailers: Option<HeaderMap>,
}

impl<B> fmt::Debug for BufferFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture")
            .field("limit", &self.limit)
            .field("read", &self.total)
            .finish_non_exhaustive()
    }
}

impl<B> BufferFuture<B> {
    fn overflow(&mut self, rest: B) -> Buffered<B> {
        let prefix = self
            .first
            .take()
            .into_iter()
            .chain(std::mem::take(&mut self.more))
            .collect();
        Buffered::Overflow(Overflow {
            prefix,
            limit: self.limit,
            rest,
        })
    }
}

impl<B> Future for BufferFuture<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Buffered<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let body = this
            .body
            .as_mut()
            .expect("BufferFuture polled after completion");
        if this.over {
            let rest = this.body.take().expect("checked above");
            return Poll::Ready(Ok(this.overflow(rest)));
        }
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Err(e)) => {
                    this.body = None;
                    return Poll::Ready(Err(e.into()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        if chunk.is_empty() {
                            continue;
                        }
                        this.total += chunk.len();
                        if this.first.is_none() {
                            this.first = Some(chunk);
                        } else {
                            this.more.push(chunk);
                        }
                        if this.total > this.limit {
                            let rest = this.body.take().expect("still reading");
                            return Poll::Ready(Ok(this.overflow(rest)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            match &mut this.trailers {
                                None => this.trailers = Some(t),
                                Some(existing) => existing.extend(t),
                            }
                        }
                    }
                },
                None => {
                    this.body = None;
                    let data = match (this.first.take(), this.more.is_empty()) {
                        (None, _) => Bytes::new(),
                        (Some(only), true) => only,
                        (Some(head), false) => {
                            let mut buf = BytesMut::with_capacity(this.total);
                            buf.extend_from_slice(&head);
                            for c in this.more.drain(..) {
                                buf.extend_from_slice(&c);
                            }
                            buf.freeze()
                        }
                    };
                    let mut out = BufferedBody::new(data);
                    out.trailers = this.trailers.take();
                    return Poll::Ready(Ok(Buffered::Complete(out)));
                }
            }
        }
    }
}

/// Buffers `body` within `limit`, or fails with a downcastable [`BodyTooLarge`].
///
/// For layers that refuse oversized requests; a layer that must still send them (retry) uses
/// [`buffer`] and keeps the [`Overflow`].
///
/// # Errors
///
/// [`BodyTooLarge`] (boxed) over the limit; the body's own error if reading fails.
pub async fn buffer_or_reject<B>(body: B, limit: usize) -> Result<BufferedBody, BoxError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    Ok(buffer(body, limit).await?.into_complete()?)
}

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
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::{Arc, Mutex};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn one_chunk_is_taken_without_copy() {
        let original = Bytes::from(vec![7u8; 4096]);
        let ptr = original.as_ptr();
        let Buffered::Complete(b) = buffer(Full::new(original), 1 << 20).await.unwrap() else {
            panic!("fits")
        };
        assert_eq!(b.bytes().as_ptr(), ptr, "same memory: not copied");
        assert_eq!(b.bytes().len(), 4096);
    }

    #[tokio::test]
    async fn several_chunks_are_joined() {
        let Buffered::Complete(b) = buffer(chunks(&["ab", "", "cd", "e"]), 10).await.unwrap()
        else {
            panic!("fits")
        };
        assert_eq!(b.bytes().as_ref(), b"abcde");
    }

    #[tokio::test]
    async fn overflow_keeps_every_byte() {
        let out = buffer(chunks(&["abc", "def", "ghi"]), 4).await.unwrap();
        let Buffered::Overflow(o) = out else {
            panic!("over limit")
        };
        assert_eq!(o.limit(), 4);
        let all = o.collect().await.unwrap().to_bytes();
        assert_eq!(all.as_ref(), b"abcdefghi");
    }

    #[tokio::test]
    async fn size_hint_over_limit_is_not_read() {
        let out = buffer(Full::new(Bytes::from_static(b"0123456789")), 4)
            .await
            .unwrap();
        let Buffered::Overflow(o) = out else {
            panic!("over limit")
        };
        assert_eq!(o.buffered_len(), 0);
        let err = buffer_or_reject(Full::new(Bytes::from_static(b"0123456789")), 4)
            .await
            .unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTooLarge>().unwrap().limit(), 4);
    }

    #[tokio::test]
    async fn buffered_body_replays_and_keeps_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        let b = BufferedBody::new("hello").with_trailers(t);
        let first = b.replay().collect().await.unwrap();
        assert_eq!(first.trailers().unwrap()["x-t"], "1");
        let second = b.clone().collect().await.unwrap().to_bytes();
        assert_eq!(second.as_ref(), b"hello");
        assert_eq!(b.size_hint().exact(), Some(5));
    }

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
