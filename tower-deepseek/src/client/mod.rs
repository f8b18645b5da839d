//! A pooled HTTPS client for the upstream API, and [`BaseUrlLayer`] to point requests at it.
//!
//! [`upstream_client`] builds a hyper-util legacy client over rustls (`ring`, Mozilla roots):
//! HTTP/1.1 and HTTP/2 negotiated by ALPN, pooled connections, TCP keep-alive and no Nagle, and a
//! connect timeout. Plain `http://` is accepted too (a local mock, or a sidecar proxy).
//!
//! Requests in a tower stack carry relative URIs (`/chat/completions`): [`BaseUrlLayer`] joins
//! them onto the upstream's base URL just before the client, and drops the caller's `Host`
//! header so that the client writes the upstream's.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
//!
//! # #[tokio::main] async fn main() -> Result<(), tower_deepseek::BoxError> {
//! let client = upstream_client::<Full<Bytes>>(&ClientConfig::default());
//! let svc = ServiceBuilder::new()
//!     .layer(BaseUrlLayer::new("https://api.deepseek.com")?)
//!     .service(client);
//! let res = svc
//!     .oneshot(http::Request::get("/models").body(Full::new(Bytes::new()))?)
//!     .await?;
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

mod base_url;
mod config;
mod error;
mod future;
mod layer;
mod service;

pub use self::config::{
    ClientConfig, HttpsConnector, UpstreamClient, https_connector, upstream_client,
};
pub use self::error::InvalidBaseUrl;
pub use self::future::ResponseFuture;
pub use self::layer::BaseUrlLayer;
pub use self::service::BaseUrl;
