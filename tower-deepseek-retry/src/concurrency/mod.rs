//! Adaptive concurrency (AIMD): fewer requests in flight after a 429, more after successes.
//!
//! DeepSeek's 429 is an account-wide cap on concurrent requests (that shrinks with the
//! balance), so the real cure for 429s is sending fewer requests at once, not only waiting.
//! [`AdaptiveConcurrencyLayer`] keeps a limit on requests in flight, shared by every clone:
//!
//! - it starts at `initial` (default 32);
//! - a **429** multiplies it by `decrease_factor` (default 0.5), down to `min` (default 1).
//!   Only the first 429 of a wave counts: a 429 for a request sent before the last decrease
//!   says nothing new, so a burst of 429s halves the limit once, not down to `min`;
//! - each **success** (2xx) adds `1 / limit`, so the limit grows by about one per round trip
//!   of the whole window, up to `max` (default 256): additive increase;
//! - other outcomes leave it unchanged (optionally a 503 decreases it too).
//!
//! A permit is taken before the request is sent (waiting in FIFO order when the limit is
//! reached) and held **until the response body ends** (or is dropped): a stream in progress
//! counts as in flight.
//!
//! # Shared by a fleet (Redis)
//!
//! DeepSeek's cap is per account, not per process. With a [`Fleet`](crate::fleet::Fleet)
//! ([`AdaptiveConcurrencyLayerBuilder::fleet`], or a `redis` table in
//! [`AdaptiveConcurrencyConfig`]; feature `redis`), every instance with the same Redis, key
//! prefix and `account` shares one limit and one count of requests in flight:
//!
//! - a permit is a **lease** in a sorted set scored by its expiry: one script purges the expired
//!   leases, counts the rest and adds the new one if fewer than the limit are held. A held lease
//!   is renewed every third of `lease_ttl_ms` (default 10 s) and given back when the body ends;
//!   the leases of an instance that dies (SIGKILL) are not renewed and come back after their
//!   TTL, so a crash never leaks capacity for longer;
//! - the AIMD limit lives in Redis beside the leases (one hash tag: one cluster slot); a lease
//!   given back applies its response's outcome (success: + 1/limit; 429: × `decrease_factor`,
//!   once per wave across the fleet), so one instance's 429 lowers every instance's limit;
//! - a request waits for a lease by polling (2 ms, doubling up to 50 ms, with jitter): FIFO
//!   order holds within the local semaphore only.
//!
//! While Redis is unavailable, each instance takes permits of its **local share** (the
//! configured limits divided by `expected_instances`, at least 1), with its own AIMD; leases are
//! taken again as soon as Redis answers.
//!
//! # Order
//!
//! Above the retry layer if retries should queue like new requests; below it if each
//! attempt should take its own permit (then a retry after a 429 waits for the lowered limit).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::concurrency::AdaptiveConcurrencyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = AdaptiveConcurrencyLayer::builder().initial(16).min(2).max(128).build()?;
//! let handle = layer.clone();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::builder().status(429).body(Full::new(Bytes::new()))?)
//! });
//! let resp = svc.ready().await?.call(http::Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(resp.status(), 429);
//! assert_eq!(handle.limit(), 8);
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
#[cfg(feature = "redis")]
mod fleet;
mod future;
mod layer;
mod service;
mod state;

pub use body::ResponseBody;
pub use config::AdaptiveConcurrencyConfig;
pub use future::ResponseFuture;
pub use layer::{AdaptiveConcurrencyLayer, AdaptiveConcurrencyLayerBuilder};
pub use service::AdaptiveConcurrency;
