//! The failover layer and its builder.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;
use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_deepseek_core::classify::FailureClass;
use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::balance::{Balance, EndpointState, FailoverOn, Shared};
use super::config::FailoverConfig;
use super::endpoint::Endpoint;
use super::per_endpoint::PerEndpoint;
use super::service::Failover;
use crate::circuit_breaker::CircuitBreakerLayerBuilder;
use crate::state::{Breaker, BreakerHandle, Spec, Striped};

/// The most endpoints one failover accepts.
pub const MAX_ENDPOINTS: usize = 64;

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
pub struct FailoverLayerBuilder {
    endpoints: Vec<Endpoint>,
    breaker: CircuitBreakerLayerBuilder,
    latency_threshold: Option<Duration>,
    probe_interval: Duration,
    body_limit: usize,
    failover_on: FailoverOn,
    eject_on: Option<FailoverOn>,
}

impl fmt::Debug for FailoverLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverLayerBuilder")
            .field("endpoints", &self.endpoints)
            .field("breaker", &self.breaker)
            .field("latency_threshold", &self.latency_threshold)
            .field("probe_interval", &self.probe_interval)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl FailoverLayerBuilder {
    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The settings of every endpoint's breaker (its name becomes `name/<authority><path>`).
    pub fn breaker(mut self, builder: CircuitBreakerLayerBuilder) -> Self {
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

    /// Failures that open the endpoint's breaker at once (default: none, the breaker's window
    /// decides), e.g. [`FailureClass::Connect`]: an endpoint that refuses connections is then
    /// skipped by the next calls instead of being tried first by each. It comes back when its
    /// breaker half-opens and a trial call succeeds, or when its breaker is closed through
    /// [`FailoverLayer::handles`]. With this set, a call whose every endpoint failed and is
    /// now open fails with [`AllEndpointsUnavailable`](super::AllEndpointsUnavailable) (nothing
    /// left to retry on) rather than with the last attempt's error.
    pub fn eject_on(
        mut self,
        predicate: impl Fn(&FailureClass) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.eject_on = Some(Arc::new(predicate));
        self
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on field `endpoints` without endpoints, with more than
    /// [`MAX_ENDPOINTS`] or with a base URI lacking a scheme or authority, on
    /// `probe_interval_ms` with a zero probe interval; the breaker's own errors.
    pub fn build(self) -> Result<FailoverLayer, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new(
                "endpoints",
                "must hold at least one endpoint",
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(ConfigError::new(
                "endpoints",
                "must hold at most 64 endpoints",
            ));
        }
        if self.probe_interval.is_zero() {
            return Err(ConfigError::new("probe_interval_ms", "must be positive"));
        }
        let spec: Arc<Spec> = self.breaker.build_spec()?;
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for e in self.endpoints {
            let (Some(scheme), Some(authority)) = (e.base.scheme(), e.base.authority()) else {
                return Err(ConfigError::new(
                    "endpoints",
                    "has a base URI without a scheme or an authority",
                ));
            };
            let prefix = e.base.path().trim_end_matches('/').to_owned();
            let label: Arc<str> = match &e.name {
                Some(name) => format!("{}/{}", spec.config.name, name).into(),
                None => format!("{}/{}{}", spec.config.name, authority, prefix).into(),
            };
            endpoints.push(EndpointState {
                scheme: scheme.clone(),
                authority: authority.clone(),
                prefix,
                weight: AtomicU32::new(e.weight),
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
                eject_on: self.eject_on,
            }),
        })
    }
}

/// Applies [`Failover`]. Every service it makes shares the endpoints' breakers and balancer.
/// See the [module docs](crate::failover).
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
    pub fn builder() -> FailoverLayerBuilder {
        FailoverLayerBuilder {
            endpoints: Vec::new(),
            breaker: CircuitBreakerLayerBuilder::default(),
            latency_threshold: Some(Duration::from_secs(10)),
            probe_interval: Duration::from_secs(5),
            body_limit: DEFAULT_BODY_LIMIT,
            failover_on: Arc::new(default_failover_on),
            eject_on: None,
        }
    }

    /// Builds the layer from a deserialized configuration (see [`FailoverConfig::into_layer`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn from_config(config: FailoverConfig) -> Result<Self, ConfigError> {
        config.into_layer()
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

impl FailoverLayer {
    /// A [`Failover`] over one inner service per endpoint (`services[i]` for the `i`-th
    /// endpoint added), through [`PerEndpoint`]: each endpoint its own client, credential or
    /// request rewriting. The URI is rewritten as with [`Layer::layer`].
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceExt};
    /// use tower_deepseek_breaker::{BoxError, Endpoint, FailoverLayer};
    /// use tower_deepseek_core::body::BufferedBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
    /// let layer = FailoverLayer::builder()
    ///     .endpoint(Endpoint::new("http://az1.test".parse()?).name("az1"))
    ///     .endpoint(Endpoint::new("http://az2.test".parse()?).name("az2"))
    ///     .build()?;
    /// // Stand-ins for two clients, each with its own pool and credential.
    /// let client = |name: &'static str| {
    ///     tower::service_fn(move |req: http::Request<BufferedBody>| async move {
    ///         assert!(req.uri().to_string().starts_with("http://az"));
    ///         Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::from(name))))
    ///     })
    /// };
    /// let mut svc = layer.layer_each(vec![client("one"), client("two")])?;
    /// let req = http::Request::post("/chat/completions").body(Full::new(Bytes::new()))?;
    /// let resp = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
    /// assert_eq!(resp.status(), 200);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on field `endpoints` when the number of services is not the number
    /// of endpoints.
    pub fn layer_each<S>(&self, services: Vec<S>) -> Result<Failover<PerEndpoint<S>>, ConfigError> {
        if services.len() != self.shared.endpoints.len() {
            return Err(ConfigError::new(
                "endpoints",
                "needs one service per endpoint",
            ));
        }
        Ok(Failover::new(
            PerEndpoint::new(services),
            self.shared.clone(),
        ))
    }

    /// Each endpoint's latency threshold: above it, weight 0 (`None`: latency ejection off).
    pub fn latency_threshold(&self) -> Option<Duration> {
        self.shared.latency_threshold.map(Duration::from_secs_f64)
    }

    /// The endpoints' configured weights, in the order they were added.
    pub fn weights(&self) -> Vec<u32> {
        self.shared
            .endpoints
            .iter()
            .map(|e| e.weight.load(Ordering::Relaxed))
            .collect()
    }

    /// Sets the endpoints' weights (in the order they were added), for every service made
    /// from this layer, at once for the next pick: e.g. on a configuration reload. Breakers,
    /// latency averages and connections go on.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on field `endpoints` when `weights` does not hold one weight per
    /// endpoint; nothing is changed then.
    pub fn set_weights(&self, weights: &[u32]) -> Result<(), ConfigError> {
        if weights.len() != self.shared.endpoints.len() {
            return Err(ConfigError::new(
                "endpoints",
                "needs one weight per endpoint",
            ));
        }
        for (e, w) in self.shared.endpoints.iter().zip(weights) {
            e.weight.store(*w, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover::new(inner, self.shared.clone())
    }
}
