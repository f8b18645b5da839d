//! The [`Timeout`](crate::Timeout) service.

use std::task::{Context, Poll};
use std::time::Duration;

use super::body::ResponseBody;
use super::extensions::{AttemptTimeout, TimeoutScale};
use super::future::ResponseFuture;
use super::layer::Limits;
use http::{Request, Response};
use tokio::time::Instant;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::error::TimeoutPhase;
use tower_deepseek_core::trace::InSpan;
use tower_service::Service;

/// Applies attempt timeouts. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    pub(crate) inner: S,
    pub(crate) limits: Limits,
}

impl<S> Timeout<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pub(crate) fn scale(d: Option<Duration>, f: f64) -> Option<Duration> {
    d.map(|d| if f == 1.0 { d } else { d.mul_f64(f) })
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Timeout<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let f = req.extensions().get::<TimeoutScale>().map_or(1.0, |s| s.0);
        let headers = req
            .extensions()
            .get::<AttemptTimeout>()
            .map(|a| a.0)
            .or(self.limits.headers);
        let limits = Limits {
            headers: scale(headers, f),
            first_token: scale(self.limits.first_token, f),
            idle: scale(self.limits.idle, f),
            total: self.limits.total,
        };
        let start = Instant::now();
        // The earliest of the headers and total deadlines guards the head.
        let head = match (limits.headers, limits.total) {
            (Some(h), Some(t)) if t < h => Some((TimeoutPhase::Total, t)),
            (Some(h), _) => Some((TimeoutPhase::Headers, h)),
            (None, Some(t)) => Some((TimeoutPhase::Total, t)),
            (None, None) => None,
        };
        let span = tracing::debug_span!(target: "tower_deepseek_retry", "deepseek.timeout", deepseek.layer = "timeout", deepseek.outcome = tracing::field::Empty);
        let inner = tower_deepseek_core::trace::in_scope(&span, || self.inner.call(req));
        let fut = ResponseFuture {
            inner,
            sleep: head.map(|(_, d)| tokio::time::sleep_until(start + d)),
            head,
            limits,
            start,
        };
        InSpan::new(fut, span)
    }
}
