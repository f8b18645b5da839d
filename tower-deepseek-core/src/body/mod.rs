//! Request-body buffering with a limit, and response-body wrappers that observe or transform a
//! stream without delaying it.
//!
//! # Buffering requests
//!
//! A layer that must read a request body (to redact it, key a cache, estimate tokens or replay
//! it on retry) calls [`buffer`] once. The result is either a [`BufferedBody`], a cheap-to-clone
//! [`Bytes`](bytes::Bytes) body that later layers and retries reuse without copying, or, when the body is larger
//! than the limit, an [`Overflow`] that still holds every byte read so far followed by the rest of
//! the original body: nothing is lost, the layer decides whether to send it once or refuse it
//! with [`BodyTooLarge`](crate::error::BodyTooLarge).
//!
//! A body that arrives as one chunk (the common case, and always the case for a body that an
//! earlier layer already buffered) is taken as-is: the returned [`Bytes`](bytes::Bytes) is that chunk.
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
//! # Replaying requests
//!
//! A layer that may send a request more than once (retry, the OAuth2 layer's replay after a
//! 401) or that reads it before passing it on (the rate limiter's token estimate) hands its
//! inner service a [`ReplayBody`]: the [`BufferedBody`] (each send a cheap clone of the same
//! [`Bytes`](bytes::Bytes)), the [`Overflow`] of a body over the limit (sent once), or the caller's body
//! untouched when the layer did not need to read it. Every such layer uses this one type, and a
//! buffered `ReplayBody` that reaches another buffering layer is taken over as it is: [`buffer`]
//! keeps its one `Bytes` without copying, so a request body is buffered once, however many
//! layers read it.
//!
//! # Observing and transforming responses
//!
//! [`ObservedBody`] hands every data frame to a [`BodyObserver`] as it passes and tells it how
//! the body ended ([`BodyEnd`]), including when the caller dropped it early. [`TransformBody`]
//! passes every data frame through a [`ChunkTransform`], which may hold back bytes (e.g. a
//! partial placeholder) and release them later. Neither waits for more than the frame at hand,
//! so the first byte of a stream is never delayed.

mod buffer;
mod observe;
mod replay;
mod transform;

pub use buffer::{
    BufferFuture, Buffered, BufferedBody, DEFAULT_BODY_LIMIT, Overflow, buffer, buffer_after,
    buffer_or_reject,
};
pub use observe::{BodyEnd, BodyObserver, ObservedBody};
pub use replay::ReplayBody;
pub use transform::{ChunkTransform, TransformBody};
