//! Status-aware retries, stream-safe timeouts, rate limits and adaptive concurrency for the
//! DeepSeek API and any OpenAI-compatible chat API.
//!
//! - [`RetryLayer`], the integration guide's per-status schedule
//!   (429, 502, 503, 504, 5xx, connect errors), `Retry-After`, a retry budget, a total deadline,
//!   request-body replay without copying, and retry decisions taken only before any byte of
//!   the response reached the caller.
//! - [`timeout`]: [`TimeoutLayer`]: response headers per attempt,
//!   time to first token (keep-alives ignored), idle gap and total.
//! - [`concurrency`]: [`AdaptiveConcurrencyLayer`]: AIMD
//!   limit on requests in flight, lowered on 429 (DeepSeek's account-wide concurrency cap),
//!   raised on success.
//! - [`rate_limit`]: [`RateLimitLayer`]: requests and tokens per
//!   minute, keyed per model or tenant, fair bounded waits, paused by a 429's `Retry-After`.
//!
//! - [`fleet`] (feature `redis`, on by default): the Redis backends of the rate limiter and
//!   the concurrency limit, shared by a fleet of instances, with a local share of each quota
//!   while Redis is unavailable.
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
//! use tower_deepseek_core::body::ReplayBody;
//! use tower_deepseek_retry::{AdaptiveConcurrencyLayer, Attempts, KeyBy, RateLimitLayer, RetryLayer, TimeoutLayer};
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

pub mod concurrency;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
pub mod rate_limit;
mod retry;
pub mod timeout;

pub use concurrency::{
    AdaptiveConcurrency, AdaptiveConcurrencyConfig, AdaptiveConcurrencyLayer,
    AdaptiveConcurrencyLayerBuilder,
};
pub use rate_limit::{
    KeyBy, PauseHandle, RateLimit, RateLimitConfig, RateLimitLayer, RateLimitLayerBuilder,
    RateLimited, RequestTooLarge,
};
pub use retry::{
    Attempts, Backoff, BudgetConfig, Jitter, ResponseBody, ResponseFuture, RetriesExhausted, Retry,
    RetryAfterPolicy, RetryConfig, RetryLayer, RetryLayerBuilder, Schedule, Schedules, StopReason,
};
pub use timeout::{
    AttemptTimeout, Timeout, TimeoutConfig, TimeoutLayer, TimeoutLayerBuilder, TimeoutScale,
};
pub use tower_deepseek_core::config::ConfigError;
