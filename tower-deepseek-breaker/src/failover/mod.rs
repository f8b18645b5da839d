//! Active-active failover across upstream endpoints, each behind its own circuit breaker.
//!
//! [`Failover`] wraps **one** HTTP client (any `Service<Request<BufferedBody>>`, typically a
//! hyper-util legacy client) and a list of [`Endpoint`] base URIs, such as the guide's two
//! availability zones. For every request it:
//!
//! 1. buffers the request body once (core's `buffer`,
//!    limit 8 MiB by default; over the limit is a [`BodyTooLarge`](crate::BodyTooLarge) error,
//!    nothing is sent), so that it can be replayed on another endpoint without copying;
//! 2. picks an endpoint by smooth weighted round-robin (nginx's algorithm: with weights 5, 1, 1
//!    the order is `a a b a c a a`, never a burst), skipping endpoints whose breaker rejects and
//!    giving weight 0 to endpoints whose latency (an EWMA of the time to the first content)
//!    is above [`FailoverLayerBuilder::latency_threshold`];
//! 3. rewrites the request URI: scheme and authority from the endpoint, the endpoint's path
//!    prepended to the request's path and query (`https://az2.example.com/v1` +
//!    `/chat/completions` → `https://az2.example.com/v1/chat/completions`). The `Host` header is
//!    removed so that the client sets the endpoint's;
//! 4. sends it through that endpoint's breaker (the same Resilience4j breaker as
//!    [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), built from
//!    [`FailoverLayerBuilder::breaker`]);
//! 5. on a failed attempt that surely did not reach a model (by default: connect errors, 502,
//!    503, a `BreakerOpen` from below), moves to the next endpoint, each endpoint at most once.
//!    A 2xx is never retried elsewhere: its stream goes to the caller as it comes.
//!
//! # One service per endpoint
//!
//! [`FailoverLayer::layer_each`] takes one inner service per endpoint instead of one shared
//! client: each attempt goes to the chosen endpoint's own service (through [`PerEndpoint`],
//! which routes by the [`EndpointIndex`] every attempt carries), so that each endpoint has its
//! own connection pool, credential and request rewriting (e.g. model names). The URI is
//! rewritten as above either way.
//!
//! # Ejection
//!
//! [`FailoverLayerBuilder::eject_on`] names failures that open an endpoint's breaker at once
//! (like Nginx's `max_fails=1`; e.g. a refused connection), rather than after the breaker's
//! window fills. The endpoint then gets no traffic until its breaker half-opens (or is closed
//! through its [`BreakerHandle`](crate::BreakerHandle), e.g. by an active health check). With
//! it set, a call whose every endpoint failed and is now open fails with
//! [`AllEndpointsUnavailable`] rather than the last attempt's error.
//!
//! When every endpoint's breaker rejects, the call fails at once with
//! [`AllEndpointsUnavailable`], whose `retry_after` is the soonest any endpoint admits a probe.
//! When every endpoint was tried and failed, the caller gets the last attempt's response or
//! error.
//!
//! # Recovery
//!
//! An endpoint whose breaker opened comes back through its own half-open probes. An endpoint
//! dropped for latency gets one probe request every [`FailoverLayerBuilder::probe_interval`]
//! (default 5 s); the probe's latency replaces its average, so a fast probe restores its
//! weight at once.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_breaker::{CircuitBreakerLayer, Endpoint, FailoverLayer};
//! use tower_deepseek_core::body::BufferedBody;
//!
//! # #[tokio::main] async fn main() -> Result<(), tower_deepseek_breaker::BoxError> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<BufferedBody>();
//! let failover = FailoverLayer::builder()
//!     .endpoint(Endpoint::new("http://az1.internal:8080".parse()?))
//!     .endpoint(Endpoint::new("http://az2.internal:8080".parse()?))
//!     .breaker(CircuitBreakerLayer::builder().name("deepseek"))
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(failover).service(client);
//! let req = http::Request::post("/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","messages":[]}"#)))?;
//! let resp = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! # let _ = resp; Ok(()) }
//! ```
//!
//! # Layout
//!
//! [`FailoverLayer`] and its [`FailoverLayerBuilder`] (layer.rs), the [`Failover`] service
//! (service.rs), its [`ResponseFuture`] (future.rs), [`Endpoint`] (endpoint.rs),
//! [`FailoverConfig`] (config.rs), [`AllEndpointsUnavailable`] (error.rs), and the balancer the
//! services share (balance.rs).

mod balance;
mod config;
mod endpoint;
mod error;
mod future;
mod layer;
mod per_endpoint;
mod service;

pub use self::config::{EndpointConfig, FailoverConfig};
pub use self::endpoint::Endpoint;
pub use self::error::AllEndpointsUnavailable;
pub use self::future::ResponseFuture;
pub use self::layer::{FailoverLayer, FailoverLayerBuilder, MAX_ENDPOINTS};
pub use self::per_endpoint::{EndpointIndex, PerEndpoint, PerEndpointFuture};
pub use self::service::Failover;
