//! [`ResponseFuture`]: prepares (buffers and masks) the request, calls the inner service, and
//! wraps the answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::classify::is_event_stream;
use tower_service::Service;

use super::body::{Kind, ResponseBody};
#[cfg(doc)]
use super::service::Redact;
use crate::redactor::Vault;

/// A request ready for the inner service, and the vault of its placeholders.
pub(super) type Prepared = (Request<BufferedBody>, Vault);
/// A failed preparation (its own type: see `prepare_boxed`).
pub(super) struct PrepError(pub(super) BoxError);

type PrepFuture = Pin<Box<dyn Future<Output = Result<Prepared, PrepError>> + Send>>;

pin_project! {
    /// The future of [`Redact`].
    pub struct ResponseFuture<S: Service<Request<BufferedBody>>> {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<BufferedBody>>> {
        Preparing { fut: PrepFuture, inner: Option<S> },
        Calling { #[pin] fut: S::Future, vault: Option<Vault> },
    }
}

impl<S: Service<Request<BufferedBody>>> ResponseFuture<S> {
    pub(super) fn new(fut: PrepFuture, inner: S) -> Self {
        ResponseFuture {
            state: State::Preparing {
                fut,
                inner: Some(inner),
            },
        }
    }
}

impl<S: Service<Request<BufferedBody>>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Preparing { fut, inner } => {
                    let (req, vault) = match ready!(fut.as_mut().poll(cx)) {
                        Ok(p) => p,
                        Err(PrepError(e)) => return Poll::Ready(Err(e)),
                    };
                    let mut svc = inner.take().expect("polled after completion");
                    let fut = svc.call(req);
                    this.state.set(State::Calling {
                        fut,
                        vault: Some(vault),
                    });
                }
                StateProj::Calling { fut, vault } => {
                    let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let vault = vault.take().unwrap_or_default();
                    let kind = if vault.is_empty() {
                        Kind::Plain
                    } else if is_event_stream(res.headers()) {
                        Kind::Sse
                    } else {
                        let json = res
                            .headers()
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_none_or(|v| v.contains("json"));
                        Kind::Text(json)
                    };
                    if kind != Kind::Plain {
                        res.headers_mut().remove(CONTENT_LENGTH);
                    }
                    return Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, vault, kind))));
                }
            }
        }
    }
}
