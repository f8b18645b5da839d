//! [`ResponseFuture`]: takes the facts of the response head, and wraps the body whose end
//! writes the record.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, EndJudge};
use tower_deepseek_core::protocol::{Attempts, BreakerStatus, CallCost};

use super::body::{AuditObserver, Eos, ResponseBody};
use super::error::AuditUnavailable;
use super::record::Guard;
#[cfg(doc)]
use super::service::Audit;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A short `[A-Za-z0-9_-]` token header, lower-cased. `name` is a `HeaderName` (not a `&str`,
/// which `HeaderMap::get` would parse again on every call).
fn token_header(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v = h.get(name)?.to_str().ok()?;
    (v.len() <= 32
        && !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| v.to_ascii_lowercase())
}

pin_project! {
    /// The future of [`Audit`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: Option<F>,
        guard: Guard,
        classifier: Classifier,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: Option<F>, guard: Guard, classifier: Classifier) -> Self {
        ResponseFuture {
            fut,
            guard,
            classifier,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(AuditUnavailable {})));
        };
        match ready!(fut.poll(cx)) {
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(p) = this.guard.0.take() {
                    let class = this.classifier.classify_error(&*e);
                    if !p.finish(None, class.as_str(), None) {
                        // Fail closed: the caller gets no answer whose record is missing,
                        // not even an error of the layers below.
                        return Poll::Ready(Err(Box::new(AuditUnavailable {})));
                    }
                }
                Poll::Ready(Err(e))
            }
            Ok(res) => {
                let mut pending = this.guard.0.take().expect("polled after completion");
                let h = res.headers();
                pending.record.cache = token_header(h, &X_CACHE);
                // Facts from the layers below, in core's protocol types (set by the retry and
                // breaker layers; the PII counts came through the prompt recorder).
                let ext = res.extensions();
                pending.record.retries = ext.get::<Attempts>().map(|a| a.count().saturating_sub(1));
                pending.record.breaker = ext.get::<BreakerStatus>().map(|b| Cow::Borrowed(b.0));
                pending.cost = ext.get::<CallCost>().cloned();
                let status = res.status();
                // The head first (a layer between may have changed the status); when the
                // outcome depends on the body and a layer below (the breaker) classifies it,
                // that layer's shared outcome is read at the end rather than the same body
                // parsed again.
                let state = match this.classifier.classify_head(status, res.headers()) {
                    ClassifiedResponse::Ready(r) => Eos::Ready(r),
                    ClassifiedResponse::RequiresEos(c) => {
                        Eos::Body(Box::new(EndJudge::from_extensions(c, res.extensions())))
                    }
                };
                let watch = pending
                    .shared
                    .fail_closed()
                    .then(|| pending.recorder.clone());
                let observer = AuditObserver {
                    pending: Some(pending),
                    status: status.as_u16(),
                    eos: state,
                };
                Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, observer, watch))))
            }
        }
    }
}
