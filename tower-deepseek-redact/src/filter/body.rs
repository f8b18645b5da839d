//! [`ResponseBody`]: the answer, filtered; SSE streams through the crate's shared delta
//! rewriter.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::TransformBody;
use tower_deepseek_core::sse::SseEvent;

use super::config::FilterAction;
use super::layer::FilterShared;
#[cfg(doc)]
use super::service::ContentFilter;
use crate::delta::{Blocked, DeltaEdit, DeltaRewriter};

pub(super) const BLOCK_MESSAGE: &str = "The answer was withheld by the content filter.";

pub(super) fn error_json() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"error": {
        "message": BLOCK_MESSAGE, "type": "content_filter", "param": null, "code": "content_filter"
    }}))
    .expect("serializes")
}

/// Filters the string deltas of an SSE stream.
pub(super) type SseFilter = DeltaRewriter<FilterEdit>;

impl SseFilter {
    pub(super) fn new(shared: Arc<FilterShared>) -> Self {
        DeltaRewriter::with_edit(FilterEdit { shared })
    }
}

/// The [`DeltaEdit`] of the content filter: matches masked, or the stream blocked.
pub(super) struct FilterEdit {
    shared: Arc<FilterShared>,
}

impl DeltaEdit for FilterEdit {
    fn wants(&self, delta: &str) -> bool {
        !delta.is_empty()
    }

    /// Filters `text` (held + new delta); returns what may be sent now and keeps the last
    /// `hold` characters.
    fn edit(&mut self, text: String, last: bool) -> Result<(String, String), Blocked> {
        let mut text = if self.shared.regex.is_match(&text) {
            if self.shared.action == FilterAction::Block {
                return Err(Blocked);
            }
            metrics::counter!("deepseek_content_filter_total", "action" => "mask").increment(1);
            self.shared.regex.replace_all(&text, "***").into_owned()
        } else {
            text
        };
        let split = if last || self.shared.hold == 0 {
            text.len()
        } else {
            // Keep the last `hold` characters.
            text.char_indices()
                .rev()
                .nth(self.shared.hold.saturating_sub(1))
                .map_or(0, |(i, _)| i)
                .min(text.len())
        };
        let keep = text.split_off(split);
        Ok((text, keep))
    }

    fn flush(&mut self, text: String) -> Result<String, Blocked> {
        if self.shared.regex.is_match(&text) && self.shared.action == FilterAction::Block {
            return Err(Blocked);
        }
        Ok(self.shared.regex.replace_all(&text, "***").into_owned())
    }

    fn blocked(&mut self, out: &mut BytesMut) {
        metrics::counter!("deepseek_content_filter_total", "action" => "block").increment(1);
        tracing::info!(target: "tower_deepseek_redact", "stream ended by the content filter");
        SseEvent::new(error_json()).encode(out);
    }
}

pin_project! {
    /// The response body of [`ContentFilter`].
    pub struct ResponseBody<B> {
        #[pin]
        pub(super) inner: RBody<B>,
    }
}

pin_project! {
    #[project = RBodyProj]
    pub(super) enum RBody<B> {
        Plain { #[pin] body: B },
        Sse { #[pin] body: TransformBody<B, SseFilter> },
        Full { #[pin] body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn plain(body: B) -> Self {
        Self {
            inner: RBody::Plain { body },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
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
        match self.project().inner.project() {
            RBodyProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            RBodyProj::Sse { body } => body.poll_frame(cx).map_err(Into::into),
            RBodyProj::Full { body } => body.poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RBody::Plain { body } => body.is_end_stream(),
            RBody::Sse { body } => body.is_end_stream(),
            RBody::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RBody::Plain { body } => body.size_hint(),
            RBody::Sse { .. } => SizeHint::default(),
            RBody::Full { body } => body.size_hint(),
        }
    }
}
