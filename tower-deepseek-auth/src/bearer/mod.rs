//! Injects a static API key as `Authorization: Bearer <key>` on every request.
//!
//! The header value is built once, when the layer is made, and marked
//! [sensitive](http::HeaderValue::set_sensitive) so that HTTP/2 never indexes it and
//! tracing layers that honour the flag (tower-http's `SetSensitiveHeaders`) hide it. The key
//! itself lives in a [`SecretString`](secrecy::SecretString) and every `Debug` prints
//! `[REDACTED]`.
//!
//! The service does nothing else: its future is the inner service's future, so the only cost
//! per request is one header insert (a `HeaderValue` clone, which shares its bytes).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_auth::BearerAuthLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! // In a real program: BearerAuthLayer::from_env("DEEPSEEK_API_KEY")?
//! let layer = BearerAuthLayer::new("sk-example")?;
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<Full<Bytes>>| async move {
//!     let sent = req.headers()[AUTHORIZATION].clone();
//!     assert!(sent.is_sensitive());
//!     assert_eq!(sent, "Bearer sk-example");
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let request = Request::new(Full::new(Bytes::from_static(b"{}")));
//! let _response = svc.ready().await?.call(request).await?;
//! # Ok(()) }
//! ```
//!
//! # Order
//!
//! Put it below retry and the circuit breaker, right above the HTTP client, so that every
//! attempt carries the header and no layer above ever sees it (audit and trace layers above
//! log the caller's request, not the credential).

mod layer;
mod service;

pub use self::layer::BearerAuthLayer;
pub use self::service::BearerAuth;
