//! Stream-safe timeouts: response headers per attempt, time to first token, idle gap, total.
//!
//! [`TimeoutLayer`] bounds one attempt. Every timeout fails with core's
//! [`UpstreamTimeout`](tower_deepseek_core::error::UpstreamTimeout) (its [`phase`](tower_deepseek_core::error::UpstreamTimeout::phase) says which), which the shared
//! classifier maps to [`FailureClass::Timeout`](tower_deepseek_core::classify::FailureClass):
//!
//! - **headers**: from the call until the response head arrives (the future fails);
//! - **first token**: from the call until the first SSE `data:` event, or the first
//!   non-whitespace byte of a JSON body. DeepSeek's `: keep-alive` comments and blank lines do
//!   not count: they keep a queued request alive without producing anything;
//! - **idle**: the longest gap between two chunks once content flows;
//! - **total**: from the call until the body ends.
//!
//! The body timeouts fire inside the response body, as an error frame. Below a
//! [`RetryLayer`](crate::RetryLayer), a first-token timeout hit before any byte reached
//! the caller is a retryable attempt failure; after that, it ends the caller's body with the
//! error (never a silent truncation).
//!
//! Per request, an [`AttemptTimeout`] extension overrides the headers timeout, and a
//! [`TimeoutScale`] (set by the retry layer after a 504 or a timeout) multiplies the headers,
//! first-token and idle timeouts. Connect timeouts belong to the connector
//! (`HttpConnector::set_connect_timeout`).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = TimeoutLayer::builder()
//!     .headers(Duration::from_secs(30))
//!     .first_token(Duration::from_secs(60))
//!     .idle(Duration::from_secs(30))
//!     .total(Duration::from_secs(600))
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let resp = svc.ready().await?.call(http::Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
mod extensions;
mod future;
mod layer;
mod service;

pub use body::ResponseBody;
pub use config::TimeoutConfig;
pub use extensions::{AttemptTimeout, TimeoutScale};
pub use future::ResponseFuture;
pub use layer::{TimeoutLayer, TimeoutLayerBuilder};
pub use service::Timeout;
