//! Status-aware retries driven by the shared classifier, safe for streams.
//!
//! [`RetryLayer`] retries what [`Classifier`](tower_deepseek_core::classify::Classifier) calls
//! transient, with one [`Schedule`] per kind of outcome. The defaults are the integration
//! guide's table:
//!
//! | outcome | default schedule |
//! |---|---|
//! | 429 | exponential 1 s doubling to 32 s, full jitter; with `Retry-After` (seconds or HTTP-date) the larger of the two, never earlier |
//! | 502 | at once, at most 3 retries |
//! | 503 | uniform 5 to 15 s, or exactly `Retry-After` when sent; at most 1 retry |
//! | 504, 408, attempt timeout | at once, with the attempt timeouts of the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below multiplied by `timeout_multiplier` (2); at most 2 retries |
//! | 500, other 5xx | exponential 500 ms doubling (cap 8 s), full jitter; at most 3 retries |
//! | empty / cut / in-band-error / out-of-resources 2xx, before a byte reached the caller | as 500 |
//! | connect error (not sent) | at once, then exponential 500 ms to 8 s; at most 3 retries |
//! | reset or read error after sending | never, unless `retry_after_send(true)` (it may bill twice) |
//! | 400, 401, 402, 403, 404, 422, local rejections | never |
//! | 401 marked [`CredentialRefreshed`](tower_deepseek_core::meta::CredentialRefreshed) by the auth layer below | once, at once, outside the budget, `max_attempts` and the deadline (see below) |
//! | breaker open ([`BreakerOpen`](tower_deepseek_core::error::BreakerOpen) from below) | never: the caller gets the breaker's error at once ([`StopReason::BreakerOpen`]); with `wait_for_open_breaker(true)` (batch callers), after its wait, if that fits `max_retry_after` and the total deadline |
//!
//! All retries are bounded by `max_attempts` (7 in total), each outcome's own number of
//! retries, a total deadline (1 min: no attempt starts, and no wait ends, later),
//! `max_retry_after` (60 s: a longer `Retry-After` stops retrying rather than waking early)
//! and a retry budget (the semantics of tower's
//! [`TpsBudget`](tower::retry::budget::TpsBudget), lock-free: 20 % of the requests of the
//! last 10 s plus 10 per second), so an outage cannot become a retry storm.
//!
//! # Worst cases with the defaults
//!
//! How long the layer can hold a caller in its waits between attempts (each attempt's own
//! time comes on top, bounded by the [`TimeoutLayer`](crate::timeout::TimeoutLayer) below):
//!
//! | the upstream answers every attempt with | attempts | waits, at most |
//! |---|---|---|
//! | 500 or another 5xx (a dead upstream), or a bad 2xx | 4 | 0.5 + 1 + 2 = **3.5 s** (full jitter: 1.75 s on average) |
//! | 502 | 4 | **0 s** |
//! | connection refused | 4 | 0 + 0.5 + 1 = **1.5 s** |
//! | 504, or an attempt timeout | 3 | **0 s** (attempt timeouts ×1, ×2, ×4) |
//! | 503 | 2 | **15 s**, or its `Retry-After` up to 60 s |
//! | 429 | 7 | 1 + 2 + 4 + 8 + 16 + 32 s, cut by the total deadline: **60 s** |
//! | anything, mixed | 7 | **60 s** (the total deadline) |
//! | an open circuit breaker below | 1, not sent | **0 s**: its error at once |
//!
//! Under an outage seen by many callers, the budget ends retries early (the caller gets the
//! failed answer at once), and the circuit breaker below, once open, answers in microseconds.
//!
//! # Stream safety
//!
//! A retry decision is taken only before any byte of the response reaches the caller:
//!
//! - an SSE 2xx is read up to its first `data:` event (keep-alive comments and blank lines do
//!   not count). A stream that ends, breaks or times out (first-token timeout of the
//!   [`TimeoutLayer`](crate::timeout::TimeoutLayer) below) before it is retried; so is a first
//!   event that is an in-band error;
//! - a JSON 2xx is read to its end (up to `json_inspect_limit`, 1 MiB), so an empty answer
//!   after keep-alive blank lines, a truncated body, an in-band `{"error":…}` or
//!   `insufficient_system_resource` is retried. The caller does not lose the first byte of a
//!   non-streaming answer by this: it would read the whole body anyway.
//!
//! What was read while deciding is handed to the caller first, in order, then the rest of the
//! stream ([`ResponseBody`]). After that nothing is retried (it would duplicate output): a
//! stream that breaks ends the caller's body with the transport error, and one that ends
//! without `data: [DONE]` ends with an
//! [`IncompleteResponse`](tower_deepseek_core::error::IncompleteResponse) error, never a
//! silent truncation.
//!
//! # When retries stop
//!
//! The caller gets the last outcome: a failed **response** (the last 429, a 402) is returned
//! as it is, since that is what a user of hyper expects to inspect; an **error** is returned
//! as it is when it was never retryable, and wrapped in [`RetriesExhausted`] (with its
//! [`StopReason`]: budget exhausted, deadline, max attempts, ...) when retries were attempted
//! or cut short. Every response carries an [`Attempts`] extension with the attempt count, the
//! class of each failed attempt and why retrying stopped.
//!
//! # Bodies
//!
//! The request body is buffered once (up to `body_limit`, 8 MiB) with core's `buffer`, and
//! each attempt sends a clone of the same [`Bytes`](bytes::Bytes), without copying. A larger
//! body is streamed through once and never retried ([`StopReason::BodyNotReplayable`]). The
//! inner service therefore receives a
//! [`ReplayBody<B>`](tower_deepseek_core::body::ReplayBody), core's one replayable body. Request and response bodies must be
//! `Unpin`, as every hyper and http-body-util body is (box others).
//!
//! # Replays after a 401 for the auth layer
//!
//! Each attempt whose body is kept carries
//! [`ReplayOn401::Offered`](tower_deepseek_core::meta::ReplayOn401) (then `Replaying` once the
//! offer is used): an `OAuth2Layer` below then keeps no copy of the request for its own 401
//! replay, since this layer has one already. It answers a 401 for which it obtained a new token
//! with the [`CredentialRefreshed`](tower_deepseek_core::meta::CredentialRefreshed) mark, and
//! this layer sends the request again, once per call. `credential_replay(false)` turns this off.
//!
//! # Order
//!
//! Put it below the rate limiter and the cache, and above the circuit breaker, auth and the
//! [`TimeoutLayer`](crate::timeout::TimeoutLayer): each attempt then passes the breaker, gets a
//! fresh credential, and has its own timeouts (which the retry layer lengthens after a 504).
//!
//! # Events and metrics
//!
//! Target `tower_deepseek_retry`: an `INFO` event per retry with `attempt`, `next_attempt`,
//! `delay_ms` and `reason` (the class label, never request content), `DEBUG` when it stops.
//! Metrics: `deepseek_retry_attempts_total{reason}`, `deepseek_retry_budget_exhausted_total`,
//! `deepseek_retry_delay_seconds` (histogram).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_core::body::ReplayBody;
//! use tower_deepseek_retry::retry::{Attempts, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().max_attempts(4).total_deadline(Duration::from_secs(60)).build()?)
//!     .service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
//!         let resp = http::Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from_static(br#"{"choices":[{"finish_reason":"stop"}]}"#)))?;
//!         Ok::<_, tower::BoxError>(resp)
//!     });
//! let req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","messages":[]}"#)))?;
//! let resp = svc.ready().await?.call(req).await?;
//! assert_eq!(resp.extensions().get::<Attempts>().unwrap().count(), 1);
//! # Ok(())
//! # }
//! ```

mod body;
mod budget;
mod error;
mod future;
mod layer;
mod schedule;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::ReplayBody;
use tower_deepseek_core::classify::FailureClass;
use tower_service::Service;

pub use body::ResponseBody;
pub use error::{RetriesExhausted, StopReason};
pub use future::ResponseFuture;
pub use layer::{BudgetConfig, RetryConfig, RetryLayer, RetryLayerBuilder};
pub use schedule::{Backoff, Jitter, RetryAfterPolicy, Schedule, Schedules};

/// Response extension: the attempts the retry layer made for this response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    count: u32,
    classes: Vec<FailureClass>,
    stop: StopReason,
}

impl Attempts {
    /// Attempts made, the first included.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The class of each failed attempt, in order (empty when the first attempt succeeded).
    pub fn failures(&self) -> &[FailureClass] {
        &self.classes
    }

    /// Why no further attempt was made ([`StopReason::Success`] for a success).
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }
}

/// Retries requests with the guide's per-status schedule. See the [module docs](self).
#[derive(Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<layer::Shared>,
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &RetryLayer) -> Self {
        Self {
            inner,
            shared: layer.shared.clone(),
        }
    }

    /// A default [`RetryLayer`].
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Retry<S>
where
    S: Service<Request<ReplayBody<ReqB>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body + Unpin + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Unpin,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(service, self.shared.clone(), req)
    }
}
