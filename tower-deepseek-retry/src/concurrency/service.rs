//! The [`AdaptiveConcurrency`](crate::AdaptiveConcurrency) service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_deepseek_core::BoxError;
use tower_service::Service;

use super::body::{Held, PermitGuard, ResponseBody};
use super::future::ResponseFuture;
use super::state::Shared;

/// Limits requests in flight, adapting to 429s. See the [module docs](super).
#[derive(Debug)]
pub struct AdaptiveConcurrency<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for AdaptiveConcurrency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AdaptiveConcurrency<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<ResponseBody<ResB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let mut held = shared.acquire().await;
                let epoch = shared.epoch.load(Ordering::Acquire);
                let resp = inner.call(req).await.map_err(Into::into);
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        // A fleet lease goes back when dropped.
                        #[allow(irrefutable_let_patterns)] // without the `redis` feature
                        if let Held::Local(permit) = held {
                            shared.release(permit);
                        }
                        return Err(e);
                    }
                };
                let s = resp.status();
                let overload = s == StatusCode::TOO_MANY_REQUESTS
                    || (s == StatusCode::SERVICE_UNAVAILABLE && shared.cfg.decrease_on_overloaded);
                match &mut held {
                    Held::Local(_) if overload => shared.on_overload(epoch),
                    Held::Local(_) if s.is_success() => shared.on_success(),
                    Held::Local(_) => {}
                    #[cfg(feature = "redis")]
                    Held::Lease(lease) => {
                        use super::fleet::Outcome;
                        lease.set_outcome(if overload {
                            Outcome::Overload
                        } else if s.is_success() {
                            Outcome::Success
                        } else {
                            Outcome::Neutral
                        });
                    }
                }
                Ok(resp.map(|inner| ResponseBody {
                    inner,
                    permit: Some(PermitGuard {
                        shared,
                        permit: Some(held),
                    }),
                }))
            }),
        }
    }
}
