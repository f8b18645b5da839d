//! Status-aware retries, stream-safe timeouts, rate limits and adaptive concurrency for the
//! DeepSeek API and any OpenAI-compatible chat API.
//!
//! - [`retry`]: [`RetryLayer`](retry::RetryLayer), the integration guide's per-status schedule
//!   (429, 502, 503, 504, 5xx, connect errors), `Retry-After`, a retry budget, a total deadline,
//!   request-body replay without copying, and retry decisions taken only before any byte of
//!   the response reached the caller.
//! - [`timeout`]: [`TimeoutLayer`](timeout::TimeoutLayer): response headers per attempt,
//!   time to first token (keep-alives ignored), idle gap and total.
//! - [`concurrency`]: [`AdaptiveConcurrencyLayer`](concurrency::AdaptiveConcurrencyLayer): AIMD
//!   limit on requests in flight, lowered on 429 (DeepSeek's account-wide concurrency cap),
//!   raised on success.
//! - [`rate_limit`]: [`RateLimitLayer`](rate_limit::RateLimitLayer): requests and tokens per
//!   minute, keyed per model or tenant, fair bounded waits, paused by a 429's `Retry-After`.
//!
//! Every layer classifies outcomes with the one shared classifier of `tower-deepseek-core`.
//!
//! # Order
//!
//! Outermost first: `RateLimitLayer` (paces only what goes upstream), `RetryLayer`, then the
//! circuit breaker and auth layers, then `TimeoutLayer` right above the HTTP client (so each
//! attempt has its own timeouts, lengthened by the retry layer after a 504). Connect timeouts
//! belong to the connector (hyper-util's `HttpConnector::set_connect_timeout`); a connect
//! timeout reported as `UpstreamTimeout { phase: Connect }` is classified as a connect error.
//!
//! # Example: the whole stack
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer;
//! use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer};
//! use tower_deepseek_core::body::ReplayBody;
//! use tower_deepseek_retry::retry::{Attempts, RetryLayer};
//! use tower_deepseek_retry::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let limiter = RateLimitLayer::builder()
//!     .requests_per_minute(3_000)
//!     .tokens_per_minute(2_000_000)
//!     .key_by(KeyBy::Model)
//!     .build()?;
//! let retry = RetryLayer::builder()
//!     .pause_on_rate_limit(limiter.pause_handle()) // a 429 pauses every request
//!     .build()?;
//! let timeouts = TimeoutLayer::builder()
//!     .headers(Duration::from_secs(30))
//!     .first_token(Duration::from_secs(60))
//!     .idle(Duration::from_secs(30))
//!     .build()?;
//! let mut client = ServiceBuilder::new()
//!     .layer(limiter)
//!     .layer(AdaptiveConcurrencyLayer::builder().build()?)
//!     .layer(retry)
//!     .layer(timeouts)
//!     // in a real program: a hyper-util client taking `ReplayBody<ReplayBody<Full<Bytes>>>`
//!     .service_fn(|_req: http::Request<ReplayBody<ReplayBody<Full<Bytes>>>>| async {
//!         let body = r#"{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}]}"#;
//!         Ok::<_, tower::BoxError>(
//!             http::Response::builder()
//!                 .header("content-type", "application/json")
//!                 .body(Full::new(Bytes::from_static(body.as_bytes())))?,
//!         )
//!     });
//! let req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"deepseek-chat","max_tokens":512,"messages":[{"role":"user","content":"Hi"}]}"#,
//!     )))?;
//! let resp = client.ready().await?.call(req).await?;
//! assert_eq!(resp.extensions().get::<Attempts>().map(Attempts::count), Some(1));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;

pub mod concurrency;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` is invalid for `reason`.
    Invalid {
        /// The field (as in the serde config).
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid { field, reason } => {
                write!(f, "invalid configuration: `{field}` {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
