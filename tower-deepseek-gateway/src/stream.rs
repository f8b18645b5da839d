//! Clean ends for event streams that fail after their head was sent.
//!
//! Once a `200 text/event-stream` head has gone to the caller, a failure of the upstream stream
//! (a reset, a stall cut by a timeout, an end without `data: [DONE]`) can no longer change the
//! status. Left alone, the server would abort the response: the caller sees a correct prefix,
//! then a transport error ("connection closed without response" in some clients). Instead,
//! [`SseGuard`] ends such a stream with one last event in the OpenAI error shape and a clean
//! end of the body (the chunked terminator, or the end of the HTTP/2 stream):
//!
//! ```text
//! data: {"error":{"message":"...","type":"api_error","param":null,"code":"stream_interrupted"}}
//!
//! ```
//!
//! The OpenAI SDKs raise an `APIError` on such an event, so a caller never mistakes the prefix
//! for a whole answer. The guard wraps the body outermost: every layer and observer below still
//! sees the failure itself (the audit record and the metrics say `incomplete`, `transport` or
//! `timeout`, never `ok`).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek::core::BoxError;
use tower_deepseek::core::chat::ApiError;
use tower_deepseek::core::classify::FailureClass;

/// How the observed stream ended, set by the observer below before the guard sees the end.
pub(crate) type Verdict = Arc<OnceLock<Result<(), FailureClass>>>;

pin_project! {
    /// Turns the failure of an event stream into a final error event and a clean end. See the
    /// [module docs](self).
    pub(crate) struct SseGuard<B> {
        #[pin]
        inner: B,
        verdict: Verdict,
        // The error event still to send.
        pending: Option<Bytes>,
        // The inner body has ended (or failed): nothing more is read from it.
        done: bool,
        // The last bytes forwarded end an event (`\n\n`), or nothing was forwarded yet.
        at_boundary: bool,
        // A `data: [DONE]` event that ended the last chunk, held back until the verdict: a
        // caller that reads `[DONE]` stops there and takes the answer for whole, so a stream
        // judged failed at its end (an `insufficient_system_resource` finish, a garbled event)
        // gets the error event in its place.
        held_done: Option<Bytes>,
    }
}

/// Where a `data: [DONE]` event that ends `chunk` starts (at a line start, nothing but line
/// ends after it).
fn done_at_end(chunk: &[u8]) -> Option<usize> {
    let end = chunk.len()
        - chunk
            .iter()
            .rev()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
    if end == chunk.len() {
        return None; // the event is not terminated yet
    }
    let body = &chunk[..end];
    let at = [&b"data: [DONE]"[..], &b"data:[DONE]"[..]]
        .iter()
        .find_map(|d| body.ends_with(d).then(|| end - d.len()))?;
    (at == 0 || chunk[at - 1] == b'\n').then_some(at)
}

impl<B> SseGuard<B> {
    /// Guards `inner`; `verdict` is set by an observer below when the stream ends.
    pub(crate) fn new(inner: B, verdict: Verdict) -> Self {
        Self {
            inner,
            verdict,
            pending: None,
            done: false,
            at_boundary: true,
            held_done: None,
        }
    }
}

/// The final event for a stream that failed with `class`; `None` when the caller already has
/// an error event (an in-band error) or nothing failed.
fn error_event(class: &FailureClass, at_boundary: bool) -> Option<Bytes> {
    let (code, message) = match class {
        FailureClass::InBandError => return None,
        FailureClass::Timeout => (
            "upstream_timeout",
            "the upstream stream stalled and was cut by the gateway's timeout; the answer is incomplete, retry the request",
        ),
        FailureClass::EmptyBody => (
            "stream_interrupted",
            "the upstream stream ended without any event; retry the request",
        ),
        _ => (
            "stream_interrupted",
            "the upstream stream was interrupted before its end; the answer is incomplete, retry the request",
        ),
    };
    let json = ApiError::new(message, "api_error", code).to_bytes();
    let mut out = Vec::with_capacity(json.len() + 10);
    if !at_boundary {
        // Close a partial line first, so that the error is an event of its own.
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Some(Bytes::from(out))
}

impl<B> SseGuard<B> {
    /// The inner body ended: the error event if the observer judged it failed, else the held
    /// `[DONE]`.
    fn judge(verdict: &Verdict, at_boundary: bool, held_done: Option<Bytes>) -> Option<Bytes> {
        match verdict.get() {
            Some(Err(class)) => {
                let event = error_event(class, at_boundary);
                if event.is_some() {
                    tracing::warn!(
                        target: "tower_deepseek_gateway",
                        class = class.as_str(),
                        "event stream failed after its head was sent: ending it with an error event"
                    );
                }
                event.or(held_done)
            }
            _ => held_done,
        }
    }
}

impl<B> Body for SseGuard<B>
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
        let mut this = self.project();
        if let Some(event) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(d) = frame.data_mut() {
                    if let Some(held) = this.held_done.take() {
                        // More came after `[DONE]`: it goes out in its place, in order.
                        let mut joined = Vec::with_capacity(held.len() + d.len());
                        joined.extend_from_slice(&held);
                        joined.extend_from_slice(d);
                        *d = Bytes::from(joined);
                    }
                    if let Some(at) = done_at_end(d) {
                        *this.held_done = Some(d.split_off(at));
                    }
                    if !d.is_empty() {
                        *this.at_boundary = d.ends_with(b"\n\n") || d.ends_with(b"\r\n\r\n");
                    }
                }
                if this.inner.is_end_stream() {
                    *this.done = true;
                    *this.pending =
                        Self::judge(this.verdict, *this.at_boundary, this.held_done.take());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.done = true;
                this.held_done.take();
                let e: BoxError = e.into();
                // The observer below has seen the error; judge by its verdict, else as a cut.
                let class = match this.verdict.get() {
                    Some(Err(c)) => c.clone(),
                    _ => FailureClass::Incomplete,
                };
                tracing::warn!(
                    target: "tower_deepseek_gateway",
                    class = class.as_str(),
                    "event stream failed after its head was sent: ending it with an error event"
                );
                drop(e);
                match error_event(&class, *this.at_boundary) {
                    Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                    None => Poll::Ready(None),
                }
            }
            None => {
                *this.done = true;
                match Self::judge(this.verdict, *this.at_boundary, this.held_done.take()) {
                    Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // One more event may follow.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;

    fn body(
        chunks: Vec<Result<&'static str, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = chunks.into_iter().map(|c| match c {
            Ok(s) => Ok(Frame::data(Bytes::from_static(s.as_bytes()))),
            Err(e) => Err(BoxError::from(e)),
        });
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read(g: SseGuard<impl Body<Data = Bytes, Error = BoxError> + Unpin>) -> String {
        let bytes = g.collect().await.expect("never an error").to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_error_after_the_first_event_becomes_a_final_error_event() {
        let v = Verdict::default();
        v.set(Err(FailureClass::Transport)).unwrap();
        let g = SseGuard::new(body(vec![Ok("data: {\"a\":1}\n\n"), Err("reset")]), v);
        let out = read(g).await;
        let (head, last) = out.split_at("data: {\"a\":1}\n\n".len());
        assert_eq!(head, "data: {\"a\":1}\n\n");
        let json: serde_json::Value = serde_json::from_str(
            last.strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["error"]["type"], "api_error");
        assert_eq!(json["error"]["code"], "stream_interrupted");
        assert!(json["error"]["message"].is_string());
    }

    #[tokio::test]
    async fn an_end_judged_incomplete_gets_the_event_a_whole_stream_does_not() {
        let v = Verdict::default();
        v.set(Err(FailureClass::Incomplete)).unwrap();
        let out = read(SseGuard::new(body(vec![Ok("data: {}\n\n")]), v)).await;
        assert!(
            out.ends_with("\"code\":\"stream_interrupted\"}}\n\n"),
            "{out}"
        );

        let v = Verdict::default();
        v.set(Ok(())).unwrap();
        let out = read(SseGuard::new(
            body(vec![Ok("data: {}\n\n"), Ok("data: [DONE]\n\n")]),
            v,
        ))
        .await;
        assert_eq!(out, "data: {}\n\ndata: [DONE]\n\n");

        // An in-band error event already told the caller.
        let v = Verdict::default();
        v.set(Err(FailureClass::InBandError)).unwrap();
        let out = read(SseGuard::new(body(vec![Ok("data: {\"error\":{}}\n\n")]), v)).await;
        assert_eq!(out, "data: {\"error\":{}}\n\n");
    }

    #[tokio::test]
    async fn done_is_held_until_the_verdict_and_replaced_by_the_error_on_a_failure() {
        // A finish the classifier judges a failure, then [DONE] in the same chunk: the caller
        // gets the error event instead of [DONE], never after it.
        let v = Verdict::default();
        v.set(Err(FailureClass::InsufficientResources)).unwrap();
        let out = read(SseGuard::new(
            body(vec![
                Ok("data: {\"a\":1}\n\n"),
                Ok("data: {\"b\":2}\n\ndata: [DONE]\n\n"),
            ]),
            v,
        ))
        .await;
        assert!(!out.contains("[DONE]"), "{out}");
        assert!(
            out.starts_with("data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: {\"error\""),
            "{out}"
        );

        // A whole stream: [DONE] goes out at the end, unchanged, even split from its chunk.
        let v = Verdict::default();
        v.set(Ok(())).unwrap();
        let out = read(SseGuard::new(
            body(vec![Ok("data: {}\n\ndata:[DONE]\r\n\r\n")]),
            v,
        ))
        .await;
        assert_eq!(out, "data: {}\n\ndata:[DONE]\r\n\r\n");

        // Something after [DONE] keeps its order.
        let v = Verdict::default();
        v.set(Ok(())).unwrap();
        let out = read(SseGuard::new(
            body(vec![Ok("data: [DONE]\n\n"), Ok(": bye\n\n")]),
            v,
        ))
        .await;
        assert_eq!(out, "data: [DONE]\n\n: bye\n\n");
        assert_eq!(done_at_end(b"data: [DONE]"), None);
        assert_eq!(done_at_end(b"xdata: [DONE]\n\n"), None);
        assert_eq!(done_at_end(b"data: {}\n\ndata: [DONE]\n\n"), Some(10));
    }

    #[tokio::test]
    async fn a_cut_inside_an_event_closes_it_first() {
        let v = Verdict::default();
        v.set(Err(FailureClass::Timeout)).unwrap();
        let out = read(SseGuard::new(body(vec![Ok("data: {\"a\""), Err("t")]), v)).await;
        assert!(out.starts_with("data: {\"a\"\n\ndata: {\"error\""), "{out}");
        assert!(out.contains("upstream_timeout"));
    }
}
