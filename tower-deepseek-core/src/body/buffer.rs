//! Buffering a request body once, within a limit.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
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
/// move); several chunks are joined into one buffer once, at the end. A body that reports its
/// end ([`Body::is_end_stream`]) right after a frame is not polled again: a body that an earlier
/// layer buffered (a [`BufferedBody`], a buffered [`ReplayBody`](super::ReplayBody)) yields its
/// one [`Bytes`] and says so, and that same `Bytes` is kept, never copied.
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
    BufferFuture::start(None, body, limit)
}

/// [`buffer`] for a body whose first frame the caller already read (to look at it before
/// deciding to buffer): `first` is taken as the body's first frame, then the rest is read from
/// `body`. A first frame that is an error is the future's error.
///
/// # Errors
///
/// As [`buffer`].
pub fn buffer_after<B>(
    first: Result<Frame<Bytes>, BoxError>,
    body: B,
    limit: usize,
) -> BufferFuture<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    BufferFuture::start(Some(first), body, limit)
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
    // A first frame read ahead by the caller that was an error.
    error: Option<BoxError>,
}

impl<B> fmt::Debug for BufferFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture")
            .field("limit", &self.limit)
            .field("read", &self.total)
            .finish_non_exhaustive()
    }
}

impl<B> BufferFuture<B>
where
    B: Body,
{
    fn start(first: Option<Result<Frame<Bytes>, BoxError>>, body: B, limit: usize) -> Self {
        let mut fut = BufferFuture {
            body: None,
            limit,
            over: false,
            first: None,
            more: Vec::new(),
            total: 0,
            trailers: None,
            error: None,
        };
        match first {
            None => {}
            Some(Err(e)) => fut.error = Some(e),
            Some(Ok(frame)) => fut.push(frame),
        }
        fut.over = fut.total as u64 + body.size_hint().lower() > limit as u64;
        fut.body = Some(body);
        fut
    }
}

impl<B> BufferFuture<B> {
    /// Takes one frame read from the body.
    fn push(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(chunk) => {
                if chunk.is_empty() {
                    return;
                }
                self.total += chunk.len();
                if self.first.is_none() {
                    self.first = Some(chunk);
                } else {
                    self.more.push(chunk);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    match &mut self.trailers {
                        None => self.trailers = Some(t),
                        Some(existing) => existing.extend(t),
                    }
                }
            }
        }
    }

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

    /// The body ended within the limit: one chunk is kept as it is, several are joined once.
    fn complete(&mut self) -> Buffered<B> {
        self.body = None;
        let data = match (self.first.take(), self.more.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(only), true) => only,
            (Some(head), false) => {
                let mut buf = BytesMut::with_capacity(self.total);
                buf.extend_from_slice(&head);
                for c in self.more.drain(..) {
                    buf.extend_from_slice(&c);
                }
                buf.freeze()
            }
        };
        let mut out = BufferedBody::new(data);
        out.trailers = self.trailers.take();
        Buffered::Complete(out)
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
        if let Some(e) = this.error.take() {
            this.body = None;
            return Poll::Ready(Err(e));
        }
        if this.body.is_none() {
            panic!("BufferFuture polled after completion");
        }
        if this.over {
            let rest = this.body.take().expect("checked above");
            return Poll::Ready(Ok(this.overflow(rest)));
        }
        loop {
            let body = this.body.as_mut().expect("still reading");
            // A body that says it has ended is not polled for its `None`: a buffered body
            // yields its one frame, says so, and is done.
            if body.is_end_stream() {
                return Poll::Ready(Ok(this.complete()));
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Err(e)) => {
                    this.body = None;
                    return Poll::Ready(Err(e.into()));
                }
                Some(Ok(frame)) => {
                    this.push(frame.map_data(|mut d| d.copy_to_bytes(d.remaining())));
                    if this.total > this.limit {
                        let rest = this.body.take().expect("still reading");
                        return Poll::Ready(Ok(this.overflow(rest)));
                    }
                }
                None => return Poll::Ready(Ok(this.complete())),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    /// A body of these chunks, one frame each.
    pub(crate) fn chunks(
        parts: &[&'static str],
    ) -> impl Body<Data = Bytes, Error = Infallible> + Unpin + use<> {
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
}
