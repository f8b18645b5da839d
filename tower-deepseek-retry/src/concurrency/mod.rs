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
