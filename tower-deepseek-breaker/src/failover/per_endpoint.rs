//! One inner service per endpoint: [`PerEndpoint`] and the [`EndpointIndex`] it routes by.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_service::Service;

/// The index (in the order they were added) of the endpoint a [`Failover`](super::Failover)
/// chose for an attempt, in the extensions of the request it sends below. [`PerEndpoint`]
/// routes by it; an inner service may read it too (e.g. for per-endpoint metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointIndex(pub usize);

/// Routes each attempt of a [`Failover`](super::Failover) to the inner service of the endpoint
/// it chose (by the request's [`EndpointIndex`]), so that each endpoint can have its own
/// client (connection pool), credential and request rewriting. Made by
/// [`FailoverLayer::layer_each`](super::FailoverLayer::layer_each).
///
/// Always ready: each call waits for its own endpoint's service (a clone of it) to be ready,
/// so that a busy endpoint does not hold up the others.
pub struct PerEndpoint<S> {
    services: Arc<[S]>,
}

impl<S> Clone for PerEndpoint<S> {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
        }
    }
}

impl<S> fmt::Debug for PerEndpoint<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerEndpoint")
            .field("endpoints", &self.services.len())
            .finish()
    }
}

impl<S> PerEndpoint<S> {
    /// One service per endpoint, in the order the endpoints were added.
    pub fn new(services: Vec<S>) -> Self {
        Self {
            services: services.into(),
        }
    }

    /// The services, in endpoint order.
    pub fn services(&self) -> &[S] {
        &self.services
    }
}

/// The future of [`PerEndpoint`]: boxed (it waits for readiness, then calls).
pub type PerEndpointFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S> Service<Request<BufferedBody>> for PerEndpoint<S>
where
    S: Service<Request<BufferedBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PerEndpointFuture<S::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BufferedBody>) -> Self::Future {
        let index = req.extensions().get::<EndpointIndex>().map(|i| i.0);
        let svc = index.and_then(|i| self.services.get(i)).cloned();
        Box::pin(async move {
            let Some(mut svc) = svc else {
                return Err(BoxError::from(format!(
                    "PerEndpoint: no service for endpoint {index:?} (is it below a Failover with as many endpoints?)"
                )));
            };
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            svc.call(req).await.map_err(Into::into)
        })
    }
}
