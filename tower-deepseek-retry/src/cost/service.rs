//! The [`Cost`](crate::Cost) service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::protocol::ShareVerdict;
use tower_deepseek_core::trace::InSpan;
use tower_service::Service;

use super::body::ResponseBody;
#[cfg(feature = "redis")]
use super::future::Ahead;
use super::future::{Kind, ResponseFuture};
use super::state::Shared;

/// Prices each call and enforces budgets. See the [module docs](super).
#[derive(Debug)]
pub struct Cost<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for Cost<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> Cost<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cost<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future, ResB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The layer's span (`tower_deepseek_core::trace`), entered around the work below.
        let span = tracing::debug_span!(target: "tower_deepseek_retry", "deepseek.cost", deepseek.layer = "cost", deepseek.outcome = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            let call = self.shared.start(&req);
            // The usage is read from the verdict the lowest classifying layer shares, when there is
            // one, so that the answer is parsed once in the stack.
            req.extensions_mut().insert(ShareVerdict);
            #[cfg(feature = "redis")]
            if self.shared.checks_fleet(&call) {
                // A round trip to Redis first: the ready service goes into the future.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let shared = self.shared.clone();
                return ResponseFuture {
                    kind: Kind::Fleet {
                        fut: Box::pin(async move {
                            shared.check_fleet(&call).await?;
                            let resp = inner.call(req).await.map_err(Into::into)?;
                            Ok(match shared.finish(call, resp) {
                                (resp, None) => resp.map(ResponseBody::direct),
                                (resp, Some(slot)) => {
                                    let mut ahead = Ahead::new(resp, slot);
                                    std::future::poll_fn(|cx| ahead.poll(cx)).await
                                }
                            })
                        }),
                    },
                };
            }
            if let Err(e) = self.shared.check(&call) {
                return ResponseFuture {
                    kind: Kind::Refused {
                        err: Some(Box::new(e)),
                        _body: std::marker::PhantomData,
                    },
                };
            }
            ResponseFuture {
                kind: Kind::Call {
                    fut: self.inner.call(req),
                    call: Some(call),
                },
            }
        });
        InSpan::new(fut, span)
    }
}
