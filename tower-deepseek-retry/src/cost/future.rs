//! The response future of [`Cost`](super::Cost).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;

use super::body::ResponseBody;
use super::state::Call;

pin_project! {
    /// Response future of [`Cost`](crate::Cost).
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F> {
        Call { #[pin] fut: F, call: Option<Call> },
        Refused { err: Option<BoxError> },
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
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Call { fut, call } => {
                let resp = ready!(fut.poll(cx)).map_err(Into::into)?;
                let call = call.take().expect("polled after completion");
                let shared = call.shared.clone();
                Poll::Ready(Ok(shared.finish(call, resp)))
            }
            KindProj::Refused { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}
