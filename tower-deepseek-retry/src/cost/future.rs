//! The response future of [`Cost`](super::Cost).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::protocol::CallCost;

use super::body::{Observed, ResponseBody};
use super::state::Call;

/// The cost header of a non-streaming answer.
pub(crate) static X_DS_COST: HeaderName = HeaderName::from_static("x-ds-cost");

/// The most of an answer read ahead for the cost header; a larger answer goes on without it.
const READ_AHEAD_LIMIT: usize = tower_deepseek_core::body::DEFAULT_BODY_LIMIT;

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

/// An answer read ahead to price it before its head goes up.
pub(crate) struct Ahead<B> {
    head: Option<http::response::Parts>,
    body: Option<Pin<Box<Observed<B>>>>,
    slot: CallCost,
    frames: VecDeque<Frame<Bytes>>,
    size: usize,
}

impl<B> Ahead<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(resp: Response<Observed<B>>, slot: CallCost) -> Self {
        let (head, body) = resp.into_parts();
        Ahead {
            head: Some(head),
            body: Some(Box::pin(body)),
            slot,
            frames: VecDeque::new(),
            size: 0,
        }
    }

    /// Reads the answer to its end (or the limit), then gives it back with the header.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<ResponseBody<B>>> {
        let mut err = None;
        if let Some(body) = self.body.as_mut() {
            while self.size <= READ_AHEAD_LIMIT && !body.is_end_stream() {
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(f)) => {
                        self.size += f.data_ref().map_or(0, Bytes::len);
                        self.frames.push_back(f);
                    }
                    Some(Err(e)) => {
                        err = Some(e);
                        break;
                    }
                    None => break,
                }
            }
        }
        let mut head = self.head.take().expect("polled after completion");
        if let Some(c) = self.slot.get() {
            if let Ok(v) = HeaderValue::from_str(&format!("{} {}", c.amount, c.currency)) {
                head.headers.insert(X_DS_COST.clone(), v);
            }
        }
        // What is left: nothing once the body ended or failed; the rest past the limit.
        let rest = self
            .body
            .take()
            .filter(|b| err.is_none() && self.size > READ_AHEAD_LIMIT && !b.is_end_stream());
        let body = ResponseBody::collected(std::mem::take(&mut self.frames), err, rest);
        Poll::Ready(Response::from_parts(head, body))
    }
}

#[cfg(not(feature = "redis"))]
pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F, B> {
        Call { #[pin] fut: F, call: Option<Call> },
        Ahead { ahead: Ahead<B> },
        Refused { err: Option<BoxError>, _body: std::marker::PhantomData<fn() -> B> },
    }
}

#[cfg(feature = "redis")]
pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<F, B> {
        Call { #[pin] fut: F, call: Option<Call> },
        Ahead { ahead: Ahead<B> },
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
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Call { fut, call } => {
                    let resp = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let call = call.take().expect("polled after completion");
                    let shared = call.shared.clone();
                    match shared.finish(call, resp) {
                        (resp, None) => return Poll::Ready(Ok(resp.map(ResponseBody::direct))),
                        (resp, Some(slot)) => Ahead::new(resp, slot),
                    }
                }
                KindProj::Ahead { ahead } => return ahead.poll(cx).map(Ok),
                KindProj::Refused { err, .. } => {
                    return Poll::Ready(Err(err.take().expect("polled after completion")));
                }
                #[cfg(feature = "redis")]
                KindProj::Fleet { fut } => return fut.as_mut().poll(cx),
            };
            self.as_mut()
                .project()
                .kind
                .set(Kind::Ahead { ahead: next });
        }
    }
}
