//! The failover layer and its builder.

use std::fmt;
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

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover::new(inner, self.shared.clone())
    }
}
