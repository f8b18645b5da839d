//! Credential layers for DeepSeek and any OpenAI-compatible chat API.
//!
//! - [`BearerAuthLayer`]: a static API key as `Authorization: Bearer <key>` (what DeepSeek
//!   uses today). Built once, marked sensitive, no allocation per request.
//! - [`OAuth2Layer`]: OAuth2 client credentials as in the integration guide: one token
//!   fetch for any number of concurrent requests, refresh ahead of expiry in the background,
//!   one replay after a 401, typed token-endpoint errors within a deadline.
//! - [`store`]: where tokens are shared: in memory, or in Redis for a whole fleet
//!   ([`RedisTokenStore`](store::RedisTokenStore), feature `redis`).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_auth::BearerAuthLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new("sk-example")?)
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         assert!(req.headers()["authorization"].is_sensitive());
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//!     });
//! let response = svc.ready().await?.call(Request::new(Full::new(Bytes::new()))).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! # Order
//!
//! In the recommended stack these layers sit lowest, right above the HTTP client: retry,
//! breaker and rate limiting above them see each attempt, and every attempt carries the
//! current credential. Layers above never see the credential, so audit and trace records
//! cannot leak it.
//!
//! # Secrets
//!
//! Keys, client secrets and tokens live in [`secrecy`] types, their headers are marked
//! sensitive, every `Debug` prints `[REDACTED]`, and no error, log line or metric label carries
//! one (the test suite captures all of them to check).
//!
//! # Feature flags
//!
//! - `redis` (default): [`RedisTokenStore`](store::RedisTokenStore).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bearer;
pub mod error;
pub mod oauth2;
pub mod store;

pub use bearer::{BearerAuth, BearerAuthLayer};
pub use error::{ConfigError, KeyError, TokenFetchErrorKind, TokenFetchFailed};
pub use oauth2::{OAuth2, OAuth2Config, OAuth2Layer, OAuth2LayerBuilder};
