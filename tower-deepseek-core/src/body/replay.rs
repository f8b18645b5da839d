//! The one replayable request body that buffering layers hand to their inner service.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

use super::buffer::{Buffered, BufferedBody, Overflow};
use crate::BoxError;

/// The request body a layer that reads or replays requests hands to its inner service.
///
/// One of three, decided by the layer:
///
/// - **buffered**: the whole body (a [`BufferedBody`]), within the layer's limit. Each send is
///   a cheap clone of the same [`Bytes`] ([`ReplayBody::replay`]), so it can be sent again
///   (retry, a replay after a 401). A later layer that buffers it again ([`buffer`](super::buffer))
///   keeps that same `Bytes`, without copying.
/// - **overflow**: a body over the limit: the bytes read so far, then the rest of the original
///   body ([`Overflow`]). Every byte, in order; sent once, never replayed.
/// - **passthrough**: the caller's body, untouched, when the layer did not need to read it.
///
/// The retry layer, the rate limiter and the OAuth2 layer all hand this type down, so a stack of
/// them nests `ReplayBody<ReplayBody<B>>`. Data is [`Bytes`] and errors are boxed.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_deepseek_core::body::{buffer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = Full::new(Bytes::from_static(b"{\"model\":\"deepseek-chat\"}"));
/// let body = ReplayBody::from(buffer(body, 1024).await.unwrap());
/// let again = body.replay().expect("buffered: it can be sent again");
/// assert_eq!(body.collect().await.unwrap().to_bytes(), again.collect().await.unwrap().to_bytes());
/// # }
/// ```
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Buffered(BufferedBody),
    // Boxed: rare, and it keeps the common (buffered) body small to move.
    Overflow(Box<Overflow<B>>),
    Passthrough(B),
}

impl<B> ReplayBody<B> {
    /// A buffered body, which can be sent again.
    pub fn buffered(body: BufferedBody) -> Self {
        Self {
            kind: Kind::Buffered(body),
        }
    }

    /// A body over the buffering limit: sent once, every byte in order.
    pub fn overflow(body: Overflow<B>) -> Self {
        Self {
            kind: Kind::Overflow(Box::new(body)),
        }
    }

    /// The caller's body, passed on unread.
    pub fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough(body),
        }
    }

    /// Whether the body is buffered (and so can be sent again).
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered(_))
    }

    /// The buffered bytes, when the body was within the limit.
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered(b) => Some(b.bytes()),
            Kind::Overflow(_) | Kind::Passthrough(_) => None,
        }
    }

    /// A fresh copy of a buffered body, polled from its start (it shares the same memory);
    /// `None` for a body that is sent once.
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered(b) => Some(Self::buffered(b.replay())),
            Kind::Overflow(_) | Kind::Passthrough(_) => None,
        }
    }
}

impl<B> From<Buffered<B>> for ReplayBody<B> {
    fn from(buffered: Buffered<B>) -> Self {
        match buffered {
            Buffered::Complete(b) => Self::buffered(b),
            Buffered::Overflow(o) => Self::overflow(o),
        }
    }
}

impl<B> From<BufferedBody> for ReplayBody<B> {
    fn from(body: BufferedBody) -> Self {
        Self::buffered(body)
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    // Bodies carry prompts: sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Buffered(b) => f.debug_tuple("ReplayBody").field(b).finish(),
            Kind::Overflow(o) => f.debug_tuple("ReplayBody").field(o).finish(),
            Kind::Passthrough(_) => f.write_str("ReplayBody(Passthrough)"),
        }
    }
}

impl<B> Body for ReplayBody<B>
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
        match &mut self.get_mut().kind {
            Kind::Buffered(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            Kind::Overflow(o) => Pin::new(&mut **o).poll_frame(cx).map_err(Into::into),
            Kind::Passthrough(b) => Pin::new(b)
                .poll_frame(cx)
                .map_ok(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                .map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered(b) => b.is_end_stream(),
            Kind::Overflow(o) => o.is_end_stream(),
            Kind::Passthrough(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered(b) => b.size_hint(),
            Kind::Overflow(o) => o.size_hint(),
            Kind::Passthrough(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::buffer;
    use crate::body::buffer::tests::chunks;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_body_buffered_once_is_never_copied_again() {
        // Several chunks: the first buffering joins them into one new allocation ...
        let first = buffer(chunks(&["{\"model\":", "\"deepseek-chat\"}"]), 1024)
            .await
            .unwrap();
        let layer1 = ReplayBody::from(first);
        let ptr = layer1.buffered_bytes().unwrap().as_ptr();
        // ... which a second and a third buffering layer keep as it is.
        let layer2 = ReplayBody::from(buffer(layer1, 1024).await.unwrap());
        assert_eq!(layer2.buffered_bytes().unwrap().as_ptr(), ptr, "not copied");
        let layer3 = ReplayBody::from(buffer(layer2, 1024).await.unwrap());
        assert_eq!(layer3.buffered_bytes().unwrap().as_ptr(), ptr, "not copied");
        let out = layer3.collect().await.unwrap().to_bytes();
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out.as_ref(), b"{\"model\":\"deepseek-chat\"}");
    }

    #[tokio::test]
    async fn replays_share_the_same_bytes() {
        let original = Bytes::from(vec![b'x'; 64]);
        let ptr = original.as_ptr();
        let body: ReplayBody<Full<Bytes>> =
            ReplayBody::from(buffer(Full::new(original), 1024).await.unwrap());
        assert!(body.is_buffered());
        assert_eq!(body.size_hint().exact(), Some(64));
        let again = body.replay().unwrap();
        assert_eq!(again.collect().await.unwrap().to_bytes().as_ptr(), ptr);
        assert_eq!(body.collect().await.unwrap().to_bytes().as_ptr(), ptr);
    }

    #[tokio::test]
    async fn overflow_and_passthrough_send_every_byte_once() {
        let over = ReplayBody::from(buffer(chunks(&["abc", "def", "ghi"]), 4).await.unwrap());
        assert!(!over.is_buffered());
        assert!(over.buffered_bytes().is_none() && over.replay().is_none());
        assert_eq!(
            format!("{over:?}"),
            "ReplayBody(Overflow { limit: 4, buffered: 6, .. })"
        );
        let all = over.collect().await.unwrap().to_bytes();
        assert_eq!(all.as_ref(), b"abcdefghi");

        let plain = ReplayBody::passthrough(chunks(&["ab", "cd"]));
        assert!(!plain.is_buffered() && plain.replay().is_none());
        assert_eq!(format!("{plain:?}"), "ReplayBody(Passthrough)");
        assert_eq!(plain.collect().await.unwrap().to_bytes().as_ref(), b"abcd");
    }

    #[tokio::test]
    async fn a_first_frame_read_ahead_is_kept_in_front() {
        let mut body = chunks(&["ab", "cd"]);
        let first = body.frame().await.unwrap().map_err(|e| match e {});
        let Buffered::Complete(b) = buffer::buffer_after(first, body, 16).await.unwrap() else {
            panic!("fits")
        };
        assert_eq!(b.bytes().as_ref(), b"abcd");

        let mut body = chunks(&["abc", "def"]);
        let first = body.frame().await.unwrap().map_err(|e| match e {});
        let Buffered::Overflow(o) = buffer::buffer_after(first, body, 4).await.unwrap() else {
            panic!("over")
        };
        assert_eq!(o.collect().await.unwrap().to_bytes().as_ref(), b"abcdef");

        let Err(err) = buffer::buffer_after(Err("reset".into()), chunks(&["x"]), 4).await else {
            panic!("the error read ahead")
        };
        assert_eq!(err.to_string(), "reset");
    }
}
