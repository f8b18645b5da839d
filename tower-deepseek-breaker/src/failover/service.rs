//! The failover service: each request to one endpoint, failed attempts moved to the next.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferedBody, buffer};
use tower_deepseek_core::classify::ClassifiedResponse;
use tower_service::Service;

use super::balance::{Pick, Shared};
use super::error::AllEndpointsUnavailable;
use super::future::ResponseFuture;
use crate::circuit_breaker::{Asks, ResponseBody};
use crate::state::State;

/// Sends each request to one of several endpoints through one inner client. See the
/// [module docs](crate::failover).
pub struct Failover<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Failover<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner client, consuming the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Failover<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::new(Box::pin(attempts(shared, inner, req)))
    }
}

async fn ready<S, R>(svc: &mut S) -> Result<(), BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(Into::into)
}

async fn attempts<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = buffer(Box::pin(body), shared.body_limit)
        .await?
        .into_complete()?;
    let mut tried = 0u64;
    let mut soonest = None;
    let mut last: Option<Result<Response<ResponseBody<ResBody>>, BoxError>> = None;
    let mut previous: Option<usize> = None;
    loop {
        let (i, permit) = match shared.pick(&mut tried, &mut soonest) {
            Pick::Go(i, permit) => (i, permit),
            Pick::Exhausted => break,
        };
        if let Some(p) = previous {
            tracing::debug!(
                target: "tower_deepseek_breaker",
                from = %shared.endpoints[p].breaker.breaker().label(),
                to = %shared.endpoints[i].breaker.breaker().label(),
                "failing over to the next endpoint"
            );
        }
        previous = Some(i);
        let request = shared.rewrite(i, &parts, body.replay())?;
        // A permit dropped here (readiness failed) records nothing.
        ready(&mut inner).await?;
        let classifier = *permit.breaker().classifier();
        let asks = Asks::of(request.extensions());
        let result = crate::circuit_breaker::complete(inner.call(request).await, permit, asks);
        let class = match &result {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => match classifier.classify_head(resp.status(), resp.headers()) {
                ClassifiedResponse::Ready(Err(class)) => Some(class),
                _ => None,
            },
            Err(e) => Some(classifier.classify_error(&**e)),
        };
        match class {
            Some(class) if (shared.failover_on)(&class) => {
                if shared.eject_on.as_ref().is_some_and(|eject| eject(&class)) {
                    let breaker = shared.endpoints[i].breaker.breaker();
                    if !matches!(breaker.state(), State::Open | State::ForcedOpen) {
                        tracing::warn!(
                            target: "tower_deepseek_breaker",
                            endpoint = %breaker.label(),
                            class = class.as_str(),
                            "ejecting the endpoint: its breaker opens"
                        );
                        breaker.force(State::Open);
                    }
                }
                metrics::counter!(
                    "deepseek_breaker_failovers_total",
                    "breaker" => shared.endpoints[i].breaker.breaker().label().to_string(),
                    "class" => class.as_str()
                )
                .increment(1);
                last = Some(result);
                inner = inner.clone();
            }
            _ => return result,
        }
    }
    if shared.eject_on.is_some() {
        if let Some(retry_after) = shared.all_open() {
            return Err(AllEndpointsUnavailable::new(retry_after).into());
        }
    }
    match last {
        Some(result) => result,
        None => Err(AllEndpointsUnavailable::new(soonest.unwrap_or_default()).into()),
    }
}
