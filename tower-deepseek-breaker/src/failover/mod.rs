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
//!    is above [`FailoverBuilder::latency_threshold`];
//! 3. rewrites the request URI: scheme and authority from the endpoint, the endpoint's path
//!    prepended to the request's path and query (`https://az2.example.com/v1` +
//!    `/chat/completions` → `https://az2.example.com/v1/chat/completions`). The `Host` header is
//!    removed so that the client sets the endpoint's;
//! 4. sends it through that endpoint's breaker (the same Resilience4j breaker as
//!    [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), built from
//!    [`FailoverBuilder::breaker`]);
//! 5. on a failed attempt that surely did not reach a model (by default: connect errors, 502,
//!    503, a `BreakerOpen` from below), moves to the next endpoint, each endpoint at most once.
//!    A 2xx is never retried elsewhere: its stream goes to the caller as it comes.
//!
//! When every endpoint's breaker rejects, the call fails at once with
//! [`AllEndpointsUnavailable`], whose `retry_after` is the soonest any endpoint admits a probe.
//! When every endpoint was tried and failed, the caller gets the last attempt's response or
//! error.
//!
//! # Recovery
//!
//! An endpoint whose breaker opened comes back through its own half-open probes. An endpoint
//! dropped for latency gets one probe request every [`FailoverBuilder::probe_interval`]
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use http_body::Body;
use tokio::time::Instant;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferedBody, DEFAULT_BODY_LIMIT, buffer};
use tower_deepseek_core::classify::{ClassifiedResponse, FailureClass};
use tower_deepseek_core::error::BreakerOpen;
use tower_deepseek_core::meta::CollectCallFacts;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::config::ConfigError;
use crate::layer::Builder;
use crate::state::{Breaker, BreakerHandle, Permit, Spec, State, Striped};

/// The most endpoints one failover accepts.
pub const MAX_ENDPOINTS: usize = 64;

/// Every endpoint's breaker rejects calls: nothing was sent.
///
/// Its [`source`](std::error::Error::source) is a [`BreakerOpen`] with the same `retry_after`,
/// so a retry layer that knows only core's errors still sees a breaker rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllEndpointsUnavailable {
    /// When the first endpoint admits a probe again.
    pub retry_after: Duration,
    source: BreakerOpen,
}

impl AllEndpointsUnavailable {
    /// An error for `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self {
            retry_after,
            source: BreakerOpen::new(retry_after),
        }
    }
}

impl fmt::Display for AllEndpointsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every upstream endpoint is unavailable (all circuit breakers open); the request was not sent, try again in {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for AllEndpointsUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One upstream endpoint: a base URI (scheme, authority, optional path prefix) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    base: Uri,
    weight: u32,
}

impl Endpoint {
    /// An endpoint at `base` (e.g. `https://az1.example.com` or `http://10.0.0.7:8080/v1`),
    /// weight 1.
    pub fn new(base: Uri) -> Self {
        Self { base, weight: 1 }
    }

    /// Its share of the traffic relative to the others (default 1; 0 = standby, used only
    /// when no weighted endpoint is available).
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The base URI.
    pub fn base(&self) -> &Uri {
        &self.base
    }
}

type FailoverOn = Arc<dyn Fn(&FailureClass) -> bool + Send + Sync>;

/// A failover configuration read with serde (e.g. from a gateway's TOML).
///
/// ```
/// use tower_deepseek_breaker::failover::FailoverConfig;
///
/// let config: FailoverConfig = serde_json::from_str(r#"{
///     "endpoints": [
///         {"base": "https://az1.example.com", "weight": 2},
///         {"base": "https://az2.example.com"}
///     ],
///     "latency_threshold_ms": 8000,
///     "breaker": {"name": "deepseek", "sliding_window_size": 20}
/// }"#).unwrap();
/// let layer = config.into_layer().unwrap();
/// assert_eq!(layer.handles().len(), 2);
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailoverConfig {
    /// The endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// The settings of every endpoint's breaker.
    pub breaker: crate::CircuitBreakerConfig,
    /// Latency threshold in milliseconds (default 10 000); `0` turns latency ejection off.
    pub latency_threshold_ms: Option<u64>,
    /// Probe interval for endpoints dropped for latency, in milliseconds (default 5 000).
    pub probe_interval_ms: Option<u64>,
    /// Request-body limit in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
}

/// One endpoint of a [`FailoverConfig`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The base URI.
    pub base: String,
    /// Its weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl FailoverConfig {
    /// Validates the configuration and builds the layer (with the default failover classes).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Failover`] for an unparsable base URI; everything
    /// [`FailoverBuilder::build`] checks.
    pub fn into_layer(self) -> Result<FailoverLayer, ConfigError> {
        let mut b = FailoverLayer::builder().breaker(Builder::default().config(self.breaker));
        for e in self.endpoints {
            let base: Uri = e
                .base
                .parse()
                .map_err(|_| ConfigError::Failover("an endpoint base is not a valid URI"))?;
            b = b.endpoint(Endpoint::new(base).weight(e.weight));
        }
        match self.latency_threshold_ms {
            Some(0) => b = b.no_latency_threshold(),
            Some(ms) => b = b.latency_threshold(Duration::from_millis(ms)),
            None => {}
        }
        if let Some(ms) = self.probe_interval_ms {
            b = b.probe_interval(Duration::from_millis(ms));
        }
        if let Some(limit) = self.body_limit {
            b = b.body_limit(limit);
        }
        b.build()
    }
}

fn default_failover_on(class: &FailureClass) -> bool {
    matches!(
        class,
        FailureClass::Connect
            | FailureClass::BadGateway
            | FailureClass::Overloaded { .. }
            | FailureClass::BreakerOpen { .. }
    )
}

/// Builds a [`FailoverLayer`].
#[must_use]
pub struct FailoverBuilder {
    endpoints: Vec<Endpoint>,
    breaker: Builder,
    latency_threshold: Option<Duration>,
    probe_interval: Duration,
    body_limit: usize,
    failover_on: FailoverOn,
}

impl fmt::Debug for FailoverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverBuilder")
            .field("endpoints", &self.endpoints)
            .field("breaker", &self.breaker)
            .field("latency_threshold", &self.latency_threshold)
            .field("probe_interval", &self.probe_interval)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl FailoverBuilder {
    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The settings of every endpoint's breaker (its name becomes `name/<authority><path>`).
    pub fn breaker(mut self, builder: Builder) -> Self {
        self.breaker = builder;
        self
    }

    /// An endpoint whose latency EWMA (time to first content) is above `d` gets weight 0 until
    /// a probe comes back faster (default 10 s; DeepSeek's queue can hold a request a while).
    pub fn latency_threshold(mut self, d: Duration) -> Self {
        self.latency_threshold = Some(d);
        self
    }

    /// Never drop an endpoint for latency (only its breaker removes it).
    pub fn no_latency_threshold(mut self) -> Self {
        self.latency_threshold = None;
        self
    }

    /// How often an endpoint dropped for latency gets a probe request (default 5 s).
    pub fn probe_interval(mut self, d: Duration) -> Self {
        self.probe_interval = d;
        self
    }

    /// The request-body limit for buffering (default 8 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Which failed attempts move to the next endpoint (default: connect errors, 502, 503 and
    /// a `BreakerOpen` from below, where the request surely reached no model). Adding
    /// [`FailureClass::Timeout`] or [`FailureClass::Transport`] may bill a request twice.
    pub fn failover_on(
        mut self,
        predicate: impl Fn(&FailureClass) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.failover_on = Arc::new(predicate);
        self
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Failover`] without endpoints, with more than [`MAX_ENDPOINTS`], with a
    /// base URI lacking a scheme or authority, or with a zero probe interval; the breaker's own
    /// errors.
    pub fn build(self) -> Result<FailoverLayer, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::Failover("at least one endpoint is needed"));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(ConfigError::Failover("at most 64 endpoints"));
        }
        if self.probe_interval.is_zero() {
            return Err(ConfigError::Failover("probe_interval must be positive"));
        }
        let spec: Arc<Spec> = self.breaker.build_spec()?;
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for e in self.endpoints {
            let (Some(scheme), Some(authority)) = (e.base.scheme(), e.base.authority()) else {
                return Err(ConfigError::Failover(
                    "an endpoint base URI needs a scheme and an authority",
                ));
            };
            let prefix = e.base.path().trim_end_matches('/').to_owned();
            let label: Arc<str> = format!("{}/{}{}", spec.config.name, authority, prefix).into();
            endpoints.push(EndpointState {
                scheme: scheme.clone(),
                authority: authority.clone(),
                prefix,
                weight: e.weight,
                breaker: Striped::new(Breaker::new(spec.clone(), label)),
                base: e.base,
            });
        }
        let n = endpoints.len();
        Ok(FailoverLayer {
            shared: Arc::new(Shared {
                endpoints,
                balance: Mutex::new(Balance {
                    current: vec![0; n],
                    last_probe: vec![None; n],
                }),
                latency_threshold: self.latency_threshold.map(|d| d.as_secs_f64()),
                probe_interval: self.probe_interval,
                body_limit: self.body_limit,
                failover_on: self.failover_on,
            }),
        })
    }
}

struct EndpointState {
    base: Uri,
    scheme: Scheme,
    authority: Authority,
    prefix: String,
    weight: u32,
    breaker: Striped,
}

struct Balance {
    current: Vec<i64>,
    last_probe: Vec<Option<Instant>>,
}

struct Shared {
    endpoints: Vec<EndpointState>,
    balance: Mutex<Balance>,
    latency_threshold: Option<f64>,
    probe_interval: Duration,
    body_limit: usize,
    failover_on: FailoverOn,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| (&e.base, e.weight))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

enum Pick {
    Go(usize, Permit),
    Exhausted,
}

impl Shared {
    /// Chooses the next endpoint not yet `tried`, and takes a permit from its breaker.
    /// Endpoints whose breaker rejects are marked tried and their `retry_after` noted.
    fn pick(&self, tried: &mut u64, soonest: &mut Option<Duration>) -> Pick {
        let now = Instant::now();
        loop {
            let chosen = {
                let mut bal = self.balance.lock().unwrap_or_else(|p| p.into_inner());
                let mut weights = [0i64; MAX_ENDPOINTS];
                let mut any_weighted = false;
                let mut probe = None;
                let mut fallback: Option<(usize, f64)> = None;
                for (i, e) in self.endpoints.iter().enumerate() {
                    if *tried & (1 << i) != 0 {
                        continue;
                    }
                    let state = e.breaker.breaker().state();
                    if matches!(state, State::Open | State::ForcedOpen) {
                        *tried |= 1 << i;
                        let r = e.breaker.breaker().retry_after().unwrap_or_default();
                        *soonest = Some(soonest.map_or(r, |s| s.min(r)));
                        continue;
                    }
                    let latency = e.breaker.breaker().latency_ewma().unwrap_or(0.0);
                    let slow = self.latency_threshold.is_some_and(|t| latency > t);
                    if slow {
                        // Seeing an endpoint slow for the first time starts its probe clock.
                        let since = *bal.last_probe[i].get_or_insert(now);
                        let due = now.saturating_duration_since(since) >= self.probe_interval;
                        if due && probe.is_none() {
                            probe = Some(i);
                        }
                        if fallback.is_none_or(|(_, l)| latency < l) {
                            fallback = Some((i, latency));
                        }
                        continue;
                    }
                    bal.last_probe[i] = None;
                    if e.weight == 0 {
                        if fallback.is_none_or(|(_, l)| latency < l) {
                            fallback = Some((i, latency));
                        }
                        continue;
                    }
                    weights[i] = e.weight as i64;
                    any_weighted = true;
                }
                if let Some(i) = probe {
                    bal.last_probe[i] = Some(now);
                    self.endpoints[i]
                        .breaker
                        .breaker()
                        .replace_latency_on_next_sample();
                    Some(i)
                } else if any_weighted {
                    let total: i64 = weights.iter().sum();
                    let mut best = None::<usize>;
                    for (i, w) in weights.iter().enumerate().take(self.endpoints.len()) {
                        if *w == 0 {
                            continue;
                        }
                        bal.current[i] += w;
                        if best.is_none_or(|b| bal.current[i] > bal.current[b]) {
                            best = Some(i);
                        }
                    }
                    let b = best.expect("a weighted endpoint");
                    bal.current[b] -= total;
                    Some(b)
                } else {
                    fallback.map(|(i, _)| i)
                }
            };
            let Some(i) = chosen else {
                return Pick::Exhausted;
            };
            *tried |= 1 << i;
            match self.endpoints[i].breaker.try_acquire() {
                Ok(permit) => return Pick::Go(i, permit),
                Err(open) => {
                    let r = open.retry_after();
                    *soonest = Some(soonest.map_or(r, |s| s.min(r)));
                }
            }
        }
    }

    fn rewrite(
        &self,
        i: usize,
        parts: &http::request::Parts,
        body: BufferedBody,
    ) -> Result<Request<BufferedBody>, BoxError> {
        let e = &self.endpoints[i];
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path: PathAndQuery = if e.prefix.is_empty() {
            pq.parse()?
        } else {
            format!("{}{}", e.prefix, pq).parse()?
        };
        let uri = Uri::builder()
            .scheme(e.scheme.clone())
            .authority(e.authority.clone())
            .path_and_query(path)
            .build()?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut().remove(header::HOST);
        *req.extensions_mut() = parts.extensions.clone();
        Ok(req)
    }
}

/// Applies [`Failover`]. Every service it makes shares the endpoints' breakers and balancer.
/// See the [module docs](self).
#[derive(Clone)]
pub struct FailoverLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for FailoverLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl FailoverLayer {
    /// A builder: add endpoints, then `build()`.
    pub fn builder() -> FailoverBuilder {
        FailoverBuilder {
            endpoints: Vec::new(),
            breaker: Builder::default(),
            latency_threshold: Some(Duration::from_secs(10)),
            probe_interval: Duration::from_secs(5),
            body_limit: DEFAULT_BODY_LIMIT,
            failover_on: Arc::new(default_failover_on),
        }
    }

    /// A handle on each endpoint's breaker, in the order they were added.
    pub fn handles(&self) -> Vec<(Uri, BreakerHandle)> {
        self.shared
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.base.clone(),
                    BreakerHandle {
                        breaker: e.breaker.breaker().clone(),
                    },
                )
            })
            .collect()
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Sends each request to one of several endpoints through one inner client. See the
/// [module docs](self).
pub struct Failover<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Failover<S> {
    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner client, consuming the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`Failover`]. Boxed: it buffers the body and may make several
/// attempts; one allocation is small next to a network call.
pub struct ResponseFuture<B> {
    inner: BoxedAttempts<B>,
}

type BoxedAttempts<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Failover<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(attempts(shared, inner, req)),
        }
    }
}

async fn ready<S, R>(svc: &mut S) -> Result<(), BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(Into::into)
}

async fn attempts<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = buffer(Box::pin(body), shared.body_limit)
        .await?
        .into_complete()?;
    let mut tried = 0u64;
    let mut soonest = None;
    let mut last: Option<Result<Response<ResponseBody<ResBody>>, BoxError>> = None;
    let mut previous: Option<usize> = None;
    loop {
        let (i, permit) = match shared.pick(&mut tried, &mut soonest) {
            Pick::Go(i, permit) => (i, permit),
            Pick::Exhausted => break,
        };
        if let Some(p) = previous {
            tracing::debug!(
                target: "tower_deepseek_breaker",
                from = %shared.endpoints[p].breaker.breaker().label(),
                to = %shared.endpoints[i].breaker.breaker().label(),
                "failing over to the next endpoint"
            );
        }
        previous = Some(i);
        let request = shared.rewrite(i, &parts, body.replay())?;
        // A permit dropped here (readiness failed) records nothing.
        ready(&mut inner).await?;
        let classifier = *permit.breaker().classifier();
        let facts = request.extensions().get::<CollectCallFacts>().is_some();
        let result = crate::future::complete(inner.call(request).await, permit, facts);
        let class = match &result {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => match classifier.classify_head(resp.status(), resp.headers()) {
                ClassifiedResponse::Ready(Err(class)) => Some(class),
                _ => None,
            },
            Err(e) => Some(classifier.classify_error(&**e)),
        };
        match class {
            Some(class) if (shared.failover_on)(&class) => {
                metrics::counter!(
                    "deepseek_breaker_failovers_total",
                    "breaker" => shared.endpoints[i].breaker.breaker().label().to_string(),
                    "class" => class.as_str()
                )
                .increment(1);
                last = Some(result);
                inner = inner.clone();
            }
            _ => return result,
        }
    }
    match last {
        Some(result) => result,
        None => Err(AllEndpointsUnavailable::new(soonest.unwrap_or_default()).into()),
    }
}
