//! [`RequestMetadata`], the service of [`RequestMetadataLayer`].

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_deepseek_core::meta::MetadataConfig;
use tower_service::Service;

#[cfg(doc)]
use super::layer::RequestMetadataLayer;

/// The service of [`RequestMetadataLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetadata<S> {
    pub(super) inner: S,
    pub(super) config: Arc<MetadataConfig>,
}

impl<S> RequestMetadata<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for RequestMetadata<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        self.config.apply(&mut req);
        self.inner.call(req)
    }
}
