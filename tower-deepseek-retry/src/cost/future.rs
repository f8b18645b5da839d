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

#[cfg(feature = "redis")]
pub(crate) type FleetFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`Cost`](crate::cost::Cost).
    pub struct ResponseFuture<F, B> {
        #[pin]
        pub(crate) kind: Kind<F, B>,
    }
}

#[cfg(not(feature = "redis"))]
pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F, B> {
        Call { #[pin] fut: F, call: Option<Call> },
        Refused { err: Option<BoxError>, _body: std::marker::PhantomData<fn() -> B> },
    }
}

#[cfg(feature = "redis")]
pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F, B> {
        Call { #[pin] fut: F, call: Option<Call> },
        Refused { err: Option<BoxError>, _body: std::marker::PhantomData<fn() -> B> },
        // Checks the fleet's budget first, then calls.
        Fleet { fut: FleetFuture<B> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
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
            KindProj::Refused { err, .. } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
            #[cfg(feature = "redis")]
            KindProj::Fleet { fut } => fut.as_mut().poll(cx),
        }
    }
}
