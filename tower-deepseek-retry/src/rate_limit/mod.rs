//! Requests-per-minute and tokens-per-minute limits, keyed per model or tenant, with fair
//! bounded waits.
//!
//! [`RateLimitLayer`] paces what goes upstream:
//!
//! - **requests per minute** on [governor](https://docs.rs/governor) (GCRA): one direct
//!   (un-keyed) governor limiter in each key's state, so that the key is looked up once (in
//!   the map that also holds the key's turnstile) and an admission is governor's one
//!   compare-and-swap; driven by tokio's clock so that paused-time tests see it;
//! - **tokens per minute** in a token bucket on the same GCRA arithmetic, because a token
//!   budget must be *settled*: before sending, a request takes an
//!   estimate (`request body bytes / 4 + max_tokens`, or `default_max_tokens` when the request
//!   has none: a deliberate over-estimate); when the response ends, the real `usage.total_tokens`
//!   replaces it (the difference is taken or given back). Governor cannot give cells back,
//!   hence the own bucket. A response that is an HTTP error gives the whole estimate back (the
//!   upstream billed nothing); a cancelled or broken one keeps it. The usage is read from the
//!   summary a layer below shares when there is one (core's [`SharedOutcome`](tower_deepseek_core::classify::SharedOutcome): the breaker
//!   publishes it when audit asks for call facts), so that the body is not parsed twice;
//!   otherwise this layer classifies the body itself as it passes.
//!
//! Keys ([`KeyBy`]): one global quota, per model (read from the request body), per tenant
//! (core's [`TenantId`](tower_deepseek_core::meta::TenantId) extension; requests without one
//! share a quota), or per model and tenant.
//!
//! # Waiting, not rejecting
//!
//! A request over its quota **waits** its turn: per key, requests are admitted in arrival order
//! (a FIFO turnstile: a later request never overtakes one that waits). When the wait would pass
//! `max_wait` (30 s), the request fails at once with [`RateLimited`] and its `retry_after`,
//! without consuming quota; a request whose token estimate is larger than the token burst can
//! never pass and fails at once with [`RequestTooLarge`].
//!
//! # 429 pauses everyone
//!
//! DeepSeek's 429 is account-wide. A 429 with `Retry-After` seen by this layer pauses the whole
//! limiter (every key) until then. A [`RetryLayer`](crate::RetryLayer) below it sees the
//! 429s first: give it [`RateLimitLayer::pause_handle`] with
//! [`RetryLayerBuilder::pause_on_rate_limit`](crate::RetryLayerBuilder::pause_on_rate_limit)
//! so that every 429 it retries pauses the limiter too.
//!
//! # Shared by a fleet (Redis)
//!
//! With a [`Fleet`](crate::fleet::Fleet) ([`RateLimitLayerBuilder::fleet`], or a `redis` table in
//! [`RateLimitConfig`]; feature `redis`), the quotas are the fleet's: every instance with the same
//! Redis and key prefix draws on one quota per key. Admission is one script in one round trip
//! (`EVALSHA`): the same GCRA for requests and tokens, on Redis' clock, taking the request and its
//! token estimate together or neither; the settlement from `usage` is a second script, sent in the
//! background when the body ends. Keys are `{<prefix>:rl:<digest>}:r` and `…:t` (the digest of
//! what the quota is kept per: no tenant or model in clear; one hash tag, so one cluster slot),
//! and expire once the quota has refilled. Waiting is as above: FIFO per key within an instance,
//! bounded by `max_wait`; the 429 pause stays per instance.
//!
//! While Redis is unavailable (an error, or no answer within the fleet's timeout, 50 ms by
//! default), each instance admits on its **local share** of each quota (quota and burst divided
//! by `expected_instances`), so traffic goes on and the fleet admits at most about the quota;
//! the quota is shared again as soon as Redis answers. A settlement lost while Redis is down is
//! not replayed. `window_ms` shortens the period of the quotas (for tests and demonstrations).
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::fleet::Fleet;
//! use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer};
//! use tower_deepseek_core::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let fleet = Fleet::builder()
//!     .redis_url("redis://127.0.0.1:1") // e.g. rediss://:password@redis:6379 in production
//!     .key_prefix("gateway")
//!     .expected_instances(3)
//!     .build()?;
//! let limiter = RateLimitLayer::builder()
//!     .requests_per_minute(3_000)
//!     .tokens_per_minute(1_000_000)
//!     .key_by(KeyBy::Tenant)
//!     .fleet(fleet.clone())
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(limiter).service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","max_tokens":100,"messages":[]}"#)))?;
//! // Nothing listens on that port: admitted on this instance's share (1 000 per minute).
//! let resp = svc.ready().await?.call(req).await?;
//! assert_eq!(resp.status(), 200);
//! assert!(!fleet.is_up());
//! # Ok(())
//! # }
//! ```
//!
//! # Order
//!
//! Above the retry layer (a retry does not take a second slot: the retry layer's own budget and
//! schedule bound retries) and below the cache (a cache hit costs no quota).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::rate_limit::{KeyBy, RateLimitLayer};
//! use tower_deepseek_core::body::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let limiter = RateLimitLayer::builder()
//!     .requests_per_minute(600)
//!     .tokens_per_minute(1_000_000)
//!     .key_by(KeyBy::Model)
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(limiter).service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","max_tokens":100,"messages":[]}"#)))?;
//! let resp = svc.ready().await?.call(req).await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(())
//! # }
//! ```

mod body;
mod bucket;
mod config;
mod error;
#[cfg(feature = "redis")]
mod fleet;
mod future;
mod layer;
mod service;
mod state;

pub use body::ResponseBody;
pub use config::{KeyBy, RateLimitConfig};
pub use error::{RateLimited, RequestTooLarge};
pub use future::ResponseFuture;
pub use layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use service::RateLimit;
pub use state::PauseHandle;
