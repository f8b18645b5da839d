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

mod layer;
mod service;

pub use self::layer::RequestMetadataLayer;
pub use self::service::RequestMetadata;
#[cfg(doc)]
use tower_deepseek_core::meta::MetadataConfig;
