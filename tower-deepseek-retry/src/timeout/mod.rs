//! Stream-safe timeouts: response headers per attempt, time to first token, idle gap, total.
//!
//! [`TimeoutLayer`] bounds one attempt. Every timeout fails with core's
//! [`UpstreamTimeout`] (its [`phase`](UpstreamTimeout::phase) says which), which the shared
//! classifier maps to [`FailureClass::Timeout`](tower_deepseek_core::classify::FailureClass):
//!
//! - **headers**: from the call until the response head arrives (the future fails);
//! - **first token**: from the call until the first SSE `data:` event, or the first
//!   non-whitespace byte of a JSON body. DeepSeek's `: keep-alive` comments and blank lines do
//!   not count: they keep a queued request alive without producing anything;
//! - **idle**: the longest gap between two chunks once content flows;
//! - **total**: from the call until the body ends.
//!
//! The body timeouts fire inside the response body, as an error frame. Below a
//! [`RetryLayer`](crate::retry::RetryLayer), a first-token timeout hit before any byte reached
//! the caller is a retryable attempt failure; after that, it ends the caller's body with the
//! error (never a silent truncation).
//!
//! Per request, an [`AttemptTimeout`] extension overrides the headers timeout, and a
//! [`TimeoutScale`] (set by the retry layer after a 504 or a timeout) multiplies the headers,
//! first-token and idle timeouts. Connect timeouts belong to the connector
//! (`HttpConnector::set_connect_timeout`).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_retry::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = TimeoutLayer::builder()
//!     .headers(Duration::from_secs(30))
//!     .first_token(Duration::from_secs(60))
//!     .idle(Duration::from_secs(30))
//!     .total(Duration::from_secs(600))
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let resp = svc.ready().await?.call(http::Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::is_event_stream;
use tower_deepseek_core::error::{TimeoutPhase, UpstreamTimeout};
use tower_deepseek_core::sse::SseParser;
use tower_layer::Layer;
use tower_service::Service;

use tower_deepseek_core::config::{ConfigError, option_duration_ms};

/// Request extension set by the retry layer: multiply the attempt timeouts (headers, first
/// token, idle) by this factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutScale(pub f64);

/// Request extension: the response-headers timeout for this request, instead of the layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub Duration);

/// The timeouts, readable with `serde` (milliseconds; absent = the default, `null` = none).
///
/// The defaults bound every wait of an attempt, with room for how an LLM API behaves
/// (DeepSeek sends its head at once and then `: keep-alive` comments or blank lines while a
/// request is queued, and closes a request whose inference has not started after 10 minutes):
///
/// | field | default | why |
/// |---|---|---|
/// | `headers_ms` | 60 000 (1 min) | DeepSeek answers its head at once, before inference; a head that takes a minute is a dead or stuck peer |
/// | `first_token_ms` | 120 000 (2 min) | queueing under load (keep-alives do not count), and a reasoning model's first reasoning token |
/// | `idle_ms` | 60 000 (1 min) | once tokens flow, they come many per second; a minute of silence is a stalled stream |
/// | `total_ms` | 1 200 000 (20 min) | the longest answer: a reasoning model's 64 K output tokens at a slow 60 tokens/s |
///
/// The connect timeout belongs to the connector (the facade's `ClientConfig`, default 10 s),
/// and the bound of a whole call with its retries to the retry layer's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutConfig {
    /// Until the response head (serde `headers_ms`).
    #[serde(rename = "headers_ms", with = "option_duration_ms")]
    pub headers: Option<Duration>,
    /// Until the first SSE event / first non-whitespace JSON byte, from the call (serde
    /// `first_token_ms`).
    #[serde(rename = "first_token_ms", with = "option_duration_ms")]
    pub first_token: Option<Duration>,
    /// Longest gap between chunks once content flows (serde `idle_ms`).
    #[serde(rename = "idle_ms", with = "option_duration_ms")]
    pub idle: Option<Duration>,
    /// Until the end of the body, from the call (serde `total_ms`).
    #[serde(rename = "total_ms", with = "option_duration_ms")]
    pub total: Option<Duration>,
}

impl TimeoutConfig {
    /// The default response-headers timeout: 1 minute.
    pub const DEFAULT_HEADERS: Duration = Duration::from_secs(60);
    /// The default first-token timeout: 2 minutes.
    pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_secs(120);
    /// The default idle gap: 1 minute.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
    /// The default total per attempt: 20 minutes.
    pub const DEFAULT_TOTAL: Duration = Duration::from_secs(20 * 60);

    /// No timeout at all (every wait unbounded): for tests, or a caller that bounds its calls
    /// by other means.
    pub fn none() -> Self {
        Self {
            headers: None,
            first_token: None,
            idle: None,
            total: None,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            headers: Some(Self::DEFAULT_HEADERS),
            first_token: Some(Self::DEFAULT_FIRST_TOKEN),
            idle: Some(Self::DEFAULT_IDLE),
            total: Some(Self::DEFAULT_TOTAL),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    headers: Option<Duration>,
    first_token: Option<Duration>,
    idle: Option<Duration>,
    total: Option<Duration>,
}

/// Applies attempt timeouts. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limits: Limits,
}

impl TimeoutLayer {
    /// A builder with the defaults of [`TimeoutConfig`] (every wait bounded); pass `None` to
    /// a setter to leave that wait unbounded.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder {
            cfg: TimeoutConfig::default(),
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a zero timeout.
    pub fn from_config(cfg: TimeoutConfig) -> Result<Self, ConfigError> {
        for (field, v) in [
            ("headers_ms", cfg.headers),
            ("first_token_ms", cfg.first_token),
            ("idle_ms", cfg.idle),
            ("total_ms", cfg.total),
        ] {
            // Zero milliseconds, as the serde config counts them.
            if v.is_some_and(|d| d.as_millis() == 0) {
                return Err(ConfigError::new(
                    field,
                    "must be more than 0 (null for no timeout)",
                ));
            }
        }
        Ok(Self {
            limits: Limits {
                headers: cfg.headers,
                first_token: cfg.first_token,
                idle: cfg.idle,
                total: cfg.total,
            },
        })
    }
}

/// Builds a [`TimeoutLayer`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct TimeoutLayerBuilder {
    cfg: TimeoutConfig,
}

impl TimeoutLayerBuilder {
    /// Timeout until the response head; `None` for no bound.
    pub fn headers(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.headers = d.into();
        self
    }

    /// Timeout until the first token (keep-alives ignored), from the call; `None` for no bound.
    pub fn first_token(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.first_token = d.into();
        self
    }

    /// Longest gap between chunks once content flows; `None` for no bound.
    pub fn idle(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.idle = d.into();
        self
    }

    /// Timeout until the body ends, from the call; `None` for no bound.
    pub fn total(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.total = d.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a zero (or sub-millisecond) timeout.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        TimeoutLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limits: self.limits,
        }
    }
}

/// Applies attempt timeouts. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limits: Limits,
}

impl<S> Timeout<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn scale(d: Option<Duration>, f: f64) -> Option<Duration> {
    d.map(|d| if f == 1.0 { d } else { d.mul_f64(f) })
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Timeout<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let f = req.extensions().get::<TimeoutScale>().map_or(1.0, |s| s.0);
        let headers = req
            .extensions()
            .get::<AttemptTimeout>()
            .map(|a| a.0)
            .or(self.limits.headers);
        let limits = Limits {
            headers: scale(headers, f),
            first_token: scale(self.limits.first_token, f),
            idle: scale(self.limits.idle, f),
            total: self.limits.total,
        };
        let start = Instant::now();
        // The earliest of the headers and total deadlines guards the head.
        let head = match (limits.headers, limits.total) {
            (Some(h), Some(t)) if t < h => Some((TimeoutPhase::Total, t)),
            (Some(h), _) => Some((TimeoutPhase::Headers, h)),
            (None, Some(t)) => Some((TimeoutPhase::Total, t)),
            (None, None) => None,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: head.map(|(_, d)| tokio::time::sleep_until(start + d)),
            head,
            limits,
            start,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        head: Option<(TimeoutPhase, Duration)>,
        limits: Limits,
        start: Instant,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let mode = if !resp.status().is_success() {
                    Mode::Flowing
                } else if is_event_stream(resp.headers()) {
                    Mode::AwaitSse(Box::default())
                } else {
                    Mode::AwaitJson
                };
                let limits = *this.limits;
                let start = *this.start;
                return Poll::Ready(Ok(resp.map(|b| ResponseBody::new(b, limits, start, mode))));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => {}
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            let (phase, after) = this.head.expect("a sleep has a phase");
            return Poll::Ready(Err(Box::new(UpstreamTimeout::new(phase, after))));
        }
        Poll::Pending
    }
}

enum Mode {
    AwaitSse(Box<SseParser>),
    AwaitJson,
    Flowing,
    Ended,
}

pin_project! {
    /// Response body of [`Timeout`]: fails with [`UpstreamTimeout`] when the first token, the
    /// next chunk or the end does not come in time.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        timer: Option<Pin<Box<Sleep>>>,
        armed: Option<(TimeoutPhase, Duration)>,
        mode: Mode,
        limits: Limits,
        start: Instant,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    fn new(inner: B, limits: Limits, start: Instant, mode: Mode) -> Self {
        let mut body = Self {
            inner,
            timer: None,
            armed: None,
            mode,
            limits,
            start,
        };
        let (timer, armed, mode) = (&mut body.timer, &mut body.armed, &body.mode);
        arm(timer, armed, mode, &body.limits, body.start);
        body
    }
}

/// Sets the timer to the earliest deadline that applies now.
fn arm(
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut Option<(TimeoutPhase, Duration)>,
    mode: &Mode,
    limits: &Limits,
    start: Instant,
) {
    let now = Instant::now();
    let waiting = matches!(mode, Mode::AwaitSse(_) | Mode::AwaitJson);
    let phase = match (waiting, limits.first_token, limits.idle) {
        (true, Some(ft), _) => Some((TimeoutPhase::FirstToken, ft, start + ft)),
        (false, _, Some(idle)) => Some((TimeoutPhase::Idle, idle, now + idle)),
        _ => None,
    };
    let total = limits.total.map(|t| (TimeoutPhase::Total, t, start + t));
    let pick = match (phase, total) {
        (Some(p), Some(t)) => Some(if t.2 < p.2 { t } else { p }),
        (p, t) => p.or(t),
    };
    match pick {
        None => {
            *timer = None;
            *armed = None;
        }
        Some((phase, after, at)) => {
            if *armed == Some((phase, after)) && phase != TimeoutPhase::Idle {
                return; // same fixed deadline
            }
            match timer {
                Some(t) => t.as_mut().reset(at),
                None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            *armed = Some((phase, after));
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if matches!(this.mode, Mode::Ended) {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                if let Some(data) = frame.data_ref() {
                    let started = match this.mode {
                        Mode::AwaitSse(parser) => {
                            let mut seen = false;
                            // A parser error (oversized event) is content too; the classifier
                            // above judges it.
                            let r = parser.push(data, |_| seen = true);
                            seen || r.is_err()
                        }
                        Mode::AwaitJson => data.iter().any(|b| !b.is_ascii_whitespace()),
                        _ => false,
                    };
                    if started {
                        *this.mode = Mode::Flowing;
                    }
                    if started || matches!(this.mode, Mode::Flowing) {
                        arm(this.timer, this.armed, this.mode, this.limits, *this.start);
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                *this.mode = Mode::Ended;
                *this.timer = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                *this.mode = Mode::Ended;
                *this.timer = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some(t) = this.timer.as_mut() {
            ready!(t.as_mut().poll(cx));
            let (phase, after) = this.armed.expect("an armed timer has a phase");
            *this.mode = Mode::Ended;
            *this.timer = None;
            tracing::debug!(
                target: "tower_deepseek_retry",
                phase = phase.as_str(),
                after_ms = after.as_millis() as u64,
                "response body timed out"
            );
            return Poll::Ready(Some(Err(Box::new(UpstreamTimeout::new(phase, after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.mode, Mode::Ended) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
