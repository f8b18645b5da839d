//! A Resilience4j-grade circuit breaker for DeepSeek and OpenAI-compatible APIs, per key and
//! stream-aware, with active-active failover across endpoints.
//!
//! - [`CircuitBreakerLayer`]: one breaker shared by every clone of the service, with
//!   Resilience4j's semantics (failure-rate and slow-call-rate thresholds over a true sliding
//!   window, a minimum number of calls, a timed open state, exactly N half-open probes), plus
//!   disabled, forced-open and metrics-only states and a [`BreakerHandle`] to read and steer it.
//! - [`KeyedCircuitBreakerLayer`]: one breaker per key (default: upstream authority + model)
//!   in a bounded registry.
//! - [`FailoverLayer`]: several endpoints (the guide's two availability zones), each behind its
//!   own breaker, smooth weighted round-robin, slow endpoints at weight 0, failed attempts moved
//!   to the next endpoint. See the [`failover`] module.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_breaker::{BreakerOpen, CircuitBreakerLayer, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_breaker::BoxError> {
//! // The guide's settings: 50 % failures, 30 s open, 5 probes in half-open.
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("deepseek")
//!     .failure_rate_threshold(50.0)
//!     .wait_duration_in_open(Duration::from_secs(30))
//!     .permitted_calls_in_half_open(5)
//!     .count_based_window(10)
//!     .build()?;
//! let handle = breaker.handle();
//!
//! // In a real client the inner service is a hyper-util `Client`.
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|_req: Request<Full<Bytes>>| async {
//!         let resp = Response::builder().status(503).body(Full::new(Bytes::new()))?;
//!         Ok::<_, tower_deepseek_breaker::BoxError>(resp)
//!     });
//!
//! for _ in 0..10 {
//!     let req = Request::post("https://api.deepseek.com/chat/completions")
//!         .body(Full::new(Bytes::from_static(b"{}")))?;
//!     let resp = svc.ready().await?.call(req).await?;
//!     assert_eq!(resp.status(), 503);
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! let req = Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let err = svc.ready().await?.call(req).await.unwrap_err();
//! assert!(err.downcast_ref::<BreakerOpen>().is_some());
//! # Ok(()) }
//! ```
//!
//! # Semantics (Resilience4j's)
//!
//! - **Closed.** Every call passes. Its outcome goes into the sliding window: the last
//!   `sliding_window_size` calls (count-based, a ring) or the calls of the last
//!   `sliding_window_size` seconds (time-based, one bucket per second). Once the window holds
//!   at least `minimum_number_of_calls` (capped at the size of a count window), the breaker
//!   opens when the failure rate is ≥ `failure_rate_threshold` or the slow-call rate is ≥
//!   `slow_call_rate_threshold`. With a window of 10 after 1,000 successes, it opens at exactly
//!   the 5th failure in a row.
//! - **Open.** Calls fail at once with [`BreakerOpen`] (`retry_after` = time left) and are not
//!   sent. After `wait_duration_in_open` (30 s; optionally growing by `wait_multiplier` up to
//!   `max_wait_duration_in_open` while opens follow each other) the breaker is half-open. The
//!   move needs no traffic: it is applied on every read and call, and a timer task (spawned on
//!   each open when a tokio runtime is present) performs it at the deadline, so the state gauge
//!   and the transition event are on time.
//! - **Half-open.** Exactly `permitted_calls_in_half_open` (5) calls pass, concurrently or not;
//!   others are rejected. When all of them have finished, their failure (or slow-call) rate
//!   decides: at or above the threshold → open again, else closed with an empty window. A probe
//!   whose caller goes away, or whose outcome is ignored (a 429, a 4xx), gives its slot back.
//! - **Disabled** (everything passes, nothing recorded), **forced open** (everything
//!   rejected) and **metrics only** (recorded, never opens) are set with the handle and last
//!   until another transition.
//!
//! Outcomes of calls admitted before a transition (a slow call that started while closed and
//! ends in half-open) are counted in the metrics but not in the new state's window.
//!
//! # What counts as a failure
//!
//! Outcomes come only from the shared classifier of `tower-deepseek-core`
//! ([`Classifier`](tower_deepseek_core::classify::Classifier)), mapped by an
//! [`OutcomePolicy`] (default [`DefaultOutcomePolicy`]):
//!
//! | outcome | default |
//! |---|---|
//! | 2xx whose body ended complete | success |
//! | 5xx, 408, timeouts, connect and transport errors | failure |
//! | 2xx whose body was empty, cut (no `data: [DONE]`, a reset mid-stream), an in-band error, `insufficient_system_resource` | failure, recorded when the body ends |
//! | 429 | ignored (configurable) |
//! | 400, 401, 402, 403, 404, 422 | ignored (a 402 can open the breaker for a long wait: [`DefaultOutcomePolicy::open_on_insufficient_balance`]) |
//! | the caller dropped the future or the body before the end | nothing recorded |
//!
//! A 2xx response's body is wrapped in [`ResponseBody`], which passes every frame through at
//! once and records the outcome at the end; the first byte is never delayed.
//!
//! # What counts as the duration of a call
//!
//! A call is slow when the time from `call` to its **first content** is above
//! `slow_call_duration_threshold`: the first SSE event or non-blank JSON byte of a 2xx
//! (DeepSeek's `: keep-alive` comments and blank lines do not count), or the head of any other
//! response, or the error. A long answer streamed quickly is not slow; a request stuck in
//! DeepSeek's queue is. The same measure feeds [`BreakerMetrics::latency`] and the failover's
//! latency weighting.
//!
//! # Order
//!
//! In the recommended stack the breaker sits below the retry layer and above auth and the
//! HTTP client: every attempt is recorded, and a retry sees [`BreakerOpen`] (core's type, so
//! retry recognises it without depending on this crate): by default the retry layer stops and
//! the caller gets it at once; only with its `wait_for_open_breaker` option (batch callers) does
//! it wait `retry_after`, within its deadline. It reads
//! no request body, so it may sit anywhere; above a cache it would count cache hits as
//! successes.
//!
//! `poll_ready` delegates to the inner service; an open breaker never makes it pending (as
//! tower's `LoadShed`), so it is safe under axum, which ignores backpressure. Its error type is
//! [`BoxError`]: in an axum router, wrap it with `HandleErrorLayer` and map
//! [`BreakerOpen`] to a 503 with `Retry-After`.
//!
//! # Clone
//!
//! The layer creates the breaker; every service the layer makes, and every clone, shares it.
//! No `Clone` bound on bodies.
//!
//! # Per key
//!
//! [`CircuitBreakerLayerBuilder::build_keyed`] gives a [`KeyedCircuitBreakerLayer`]: a breaker
//! per key over a bounded registry (moka, least recently used keys dropped beyond
//! [`CircuitBreakerLayerBuilder::max_keys`], default 1,000). The default key is the upstream authority, plus
//! `/<model>` when the request carries a [`ModelHint`] extension: the breaker never buffers
//! the body to find the model. [`KeyedCircuitBreakerLayer::key_fn`] takes any
//! `Fn(&RequestHead<'_>) -> K` (a tenant id, a route). A key dropped from the registry starts
//! again closed when it comes back; its gauges keep their last values meanwhile.
//!
//! # failsafe
//!
//! With the `failsafe` feature, `CircuitBreakerLayerBuilder::failure_policy` lets any
//! `failsafe::FailurePolicy` (consecutive failures, success-rate EMA, `or_else`) replace the
//! failure-rate rule of the closed state; when it declares the upstream dead, the breaker opens
//! for the duration the policy's backoff returns. The state machine stays ours, because
//! failsafe's cannot express Resilience4j's half-open rule: it lets every call through while
//! half-open and closes on the first success, so one lucky call re-admits full traffic to a
//! sick upstream. Here half-open still admits exactly `permitted_calls_in_half_open` probes and
//! decides on their failure rate; on closing, the policy's `revived` resets it.
//!
//! # Metrics and events
//!
//! Through the `metrics` facade (install the recorder before building the layer: handles are
//! registered once, at construction):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `deepseek_breaker_state` | `breaker`, `state` | gauge: 1 for the current state, 0 for the five others |
//! | `deepseek_breaker_calls_total` | `breaker`, `outcome` = `success`, `failure`, `ignored`, `cancelled` | finished calls |
//! | `deepseek_breaker_rejections_total` | `breaker` | calls refused while open or half-open-full |
//! | `deepseek_breaker_transitions_total` | `breaker`, `from`, `to` | state changes |
//! | `deepseek_breaker_failovers_total` | `breaker`, `class` | failover attempts moved on |
//!
//! Every transition is an event (`WARN` when it opens, `INFO` otherwise) with target `tower_deepseek_breaker` and fields
//! `breaker`, `from`, `to`, `buffered_calls`, `failed_calls`, `slow_calls`. Nothing from the
//! request (no header, no body, no prompt) ever reaches an event, a label or an error message.
//!
//! # Configuration
//!
//! [`CircuitBreakerConfig`] implements `serde::Deserialize` (durations as `*_ms` integers);
//! its docs list every setting with its default and Resilience4j name. Settings are validated
//! at `build()` ([`ConfigError`], core's: it names the field and the reason).
//!
//! # Feature flags
//!
//! - `failsafe`: `CircuitBreakerLayerBuilder::failure_policy` (see above).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod circuit_breaker;
pub mod failover;
mod keyed;
mod policy;
mod state;
mod window;

pub use crate::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerLayerBuilder,
    DEFAULT_MAX_KEYS, ResponseBody, ResponseFuture, SlidingWindowType,
};
pub use crate::failover::{
    AllEndpointsUnavailable, Endpoint, EndpointConfig, EndpointIndex, Failover, FailoverConfig,
    FailoverLayer, FailoverLayerBuilder, PerEndpoint, PerEndpointFuture,
};
pub use crate::keyed::{
    DefaultKey, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, MakeKey, ModelHint, RequestHead,
};
pub use crate::policy::{Accrual, DefaultOutcomePolicy, OutcomePolicy};
pub use crate::state::{BreakerHandle, BreakerMetrics, State};
pub use tower_deepseek_core::BoxError;
pub use tower_deepseek_core::config::ConfigError;
pub use tower_deepseek_core::error::{BodyTooLarge, BreakerOpen};
