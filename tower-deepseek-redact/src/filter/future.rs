//! [`ResponseFuture`]: checks a JSON answer whole, or wraps a stream in the filtering body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{TransformBody, buffer};
use tower_deepseek_core::classify::is_event_stream;

use super::body::{RBody, ResponseBody, SseFilter, error_json};
use super::config::FilterAction;
use super::layer::FilterShared;
#[cfg(doc)]
use super::service::ContentFilter;
use crate::json::{escape_into, find_strings, string_text};

type Collect = Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>>;

pin_project! {
    /// The future of [`ContentFilter`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: FState<F, B>,
        shared: Arc<FilterShared>,
    }
}

pin_project! {
    #[project = FStateProj]
    enum FState<F, B> {
        Calling { #[pin] fut: F },
        Collecting { fut: Collect, parts: Option<http::response::Parts>, _b: std::marker::PhantomData<fn() -> B> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(super) fn new(fut: F, shared: Arc<FilterShared>) -> Self {
        ResponseFuture {
            state: FState::Calling { fut },
            shared,
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                FStateProj::Calling { fut } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if !res.status().is_success() {
                        return Poll::Ready(Ok(res.map(|b| ResponseBody::plain(b))));
                    }
                    // This layer may rewrite the answer (block it, end a stream early); a
                    // verdict shared from below then stays where it is: the layers above take
                    // it only for the very frames it is about (core's `EndJudge`), so they
                    // judge what this layer sends.
                    let mut res = res;
                    if is_event_stream(res.headers()) {
                        res.headers_mut().remove(CONTENT_LENGTH);
                        let t = SseFilter::new(this.shared.clone());
                        return Poll::Ready(Ok(res.map(|b| ResponseBody {
                            inner: RBody::Sse {
                                body: TransformBody::new(b, t),
                            },
                        })));
                    }
                    let (parts, body) = res.into_parts();
                    let limit = this.shared.limit;
                    let fut: Collect = Box::pin(async move {
                        let b = buffer(Box::pin(body), limit).await?;
                        Ok(b.into_complete()?.into_bytes())
                    });
                    this.state.set(FState::Collecting {
                        fut,
                        parts: Some(parts),
                        _b: std::marker::PhantomData,
                    });
                }
                FStateProj::Collecting { fut, parts, .. } => {
                    let bytes = ready!(fut.as_mut().poll(cx))?;
                    let mut parts = parts.take().expect("polled after completion");
                    let body = match filter_json(this.shared, &bytes) {
                        JsonVerdict::Clean => bytes,
                        JsonVerdict::Masked(b) => {
                            metrics::counter!("deepseek_content_filter_total", "action" => "mask")
                                .increment(1);
                            Bytes::from(b)
                        }
                        JsonVerdict::Blocked => {
                            metrics::counter!("deepseek_content_filter_total", "action" => "block")
                                .increment(1);
                            tracing::info!(target: "tower_deepseek_redact", "answer withheld by the content filter");
                            parts.status = this.shared.block_status;
                            parts.headers.insert(
                                CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Bytes::from(error_json())
                        }
                    };
                    parts.headers.insert(CONTENT_LENGTH, body.len().into());
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody {
                            inner: RBody::Full {
                                body: Full::new(body),
                            },
                        },
                    )));
                }
            }
        }
    }
}

enum JsonVerdict {
    Clean,
    Masked(Vec<u8>),
    Blocked,
}

fn filter_json(shared: &FilterShared, b: &[u8]) -> JsonVerdict {
    // Skip DeepSeek's leading keep-alive blank lines: the scanner accepts whitespace.
    let Ok(spans) = find_strings(b, &shared.paths) else {
        return JsonVerdict::Clean;
    };
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for span in spans {
        let Ok(text) = string_text(b, span) else {
            continue;
        };
        if !shared.regex.is_match(&text) {
            continue;
        }
        if shared.action == FilterAction::Block {
            return JsonVerdict::Blocked;
        }
        let masked = shared.regex.replace_all(&text, "***");
        let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
        o.extend_from_slice(&b[last..span.start]);
        o.push(b'"');
        escape_into(o, &masked);
        o.push(b'"');
        last = span.end;
    }
    match out {
        None => JsonVerdict::Clean,
        Some(mut o) => {
            o.extend_from_slice(&b[last..]);
            JsonVerdict::Masked(o)
        }
    }
}
