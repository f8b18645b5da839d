//! [`RequestMetadataLayer`]: fills in the request id and client IP of every request.
//!
//! `tower-deepseek-core` defines the metadata ([`RequestId`](crate::core::meta::RequestId),
//! [`ClientIp`](crate::core::meta::ClientIp), [`TenantId`](crate::core::meta::TenantId)) and
//! how to derive it ([`MetadataConfig`]); this layer applies it once, at the edge of a stack, so
//! that audit records, logs and the upstream (through `x-request-id`) all see the same id.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek::core::meta::{MetadataConfig, RequestId};
//! use tower_deepseek::meta::RequestMetadataLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RequestMetadataLayer::new(MetadataConfig::new()))
//!     .service_fn(|req: http::Request<Full<Bytes>>| async move {
//!         let id = req.extensions().get::<RequestId>().expect("set by the layer");
//!         assert_eq!(req.headers()["x-request-id"], id.as_str());
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//!     });
//! let res = svc.ready().await?.call(http::Request::new(Full::new(Bytes::new()))).await?;
//! # let _ = res; Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_deepseek_core::meta::MetadataConfig;
use tower_layer::Layer;
use tower_service::Service;

/// Applies a [`MetadataConfig`] to every request. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RequestMetadataLayer {
    config: Arc<MetadataConfig>,
}

impl RequestMetadataLayer {
    /// A layer applying `config`.
    pub fn new(config: MetadataConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for RequestMetadataLayer {
    type Service = RequestMetadata<S>;

    fn layer(&self, inner: S) -> RequestMetadata<S> {
        RequestMetadata {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`RequestMetadataLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetadata<S> {
    inner: S,
    config: Arc<MetadataConfig>,
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
