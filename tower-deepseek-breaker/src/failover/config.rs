//! The failover's serde configuration.

use std::time::Duration;

use http::Uri;
use tower_deepseek_core::config::ConfigError;

use super::endpoint::Endpoint;
use super::layer::FailoverLayer;
use crate::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayerBuilder};

/// A failover configuration read with serde (e.g. from a gateway's TOML).
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek_breaker::{FailoverConfig, FailoverLayer};
///
/// let config: FailoverConfig = serde_json::from_str(r#"{
///     "endpoints": [
///         {"base": "https://az1.example.com", "weight": 2},
///         {"base": "https://az2.example.com"}
///     ],
///     "latency_threshold_ms": 8000,
///     "breaker": {"name": "deepseek", "sliding_window_size": 20}
/// }"#).unwrap();
/// assert_eq!(config.latency_threshold, Some(Duration::from_secs(8)));
/// assert_eq!(config.probe_interval, None, "the builder's 5 s");
/// let layer = FailoverLayer::from_config(config).unwrap();
/// assert_eq!(layer.handles().len(), 2);
/// assert_eq!(layer.handles()[0].1.name(), "deepseek/az1.example.com");
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailoverConfig {
    /// The endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// The settings of every endpoint's breaker.
    pub breaker: CircuitBreakerConfig,
    /// Latency threshold (default 10 s); zero turns latency ejection off. In serde,
    /// `latency_threshold_ms`, in milliseconds.
    #[serde(
        rename = "latency_threshold_ms",
        with = "tower_deepseek_core::config::option_duration_ms"
    )]
    pub latency_threshold: Option<Duration>,
    /// Probe interval for endpoints dropped for latency (default 5 s). In serde,
    /// `probe_interval_ms`, in milliseconds.
    #[serde(
        rename = "probe_interval_ms",
        with = "tower_deepseek_core::config::option_duration_ms"
    )]
    pub probe_interval: Option<Duration>,
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
    /// A [`ConfigError`] on field `endpoints` for an unparsable base URI; everything
    /// [`FailoverLayerBuilder::build`](crate::FailoverLayerBuilder::build) checks.
    pub fn into_layer(self) -> Result<FailoverLayer, ConfigError> {
        let mut b = FailoverLayer::builder()
            .breaker(CircuitBreakerLayerBuilder::default().config(self.breaker));
        for e in self.endpoints {
            let base: Uri = e
                .base
                .parse()
                .map_err(|_| ConfigError::new("endpoints", "has a base that is not a valid URI"))?;
            b = b.endpoint(Endpoint::new(base).weight(e.weight));
        }
        match self.latency_threshold {
            Some(d) if d.is_zero() => b = b.no_latency_threshold(),
            Some(d) => b = b.latency_threshold(d),
            None => {}
        }
        if let Some(d) = self.probe_interval {
            b = b.probe_interval(d);
        }
        if let Some(limit) = self.body_limit {
            b = b.body_limit(limit);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_ms_names_and_zero_turns_latency_ejection_off() {
        let c: FailoverConfig = serde_json::from_str(
            r#"{"endpoints":[{"base":"http://a.test"}],
                "latency_threshold_ms":0,"probe_interval_ms":250}"#,
        )
        .unwrap();
        assert_eq!(c.latency_threshold, Some(Duration::ZERO));
        assert_eq!(c.probe_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.endpoints[0].weight, 1);
        FailoverLayer::from_config(c).unwrap();

        let c: FailoverConfig =
            serde_json::from_str(r#"{"endpoints":[{"base":"http://a.test"}]}"#).unwrap();
        assert_eq!((c.latency_threshold, c.probe_interval), (None, None));
        assert!(serde_json::from_str::<FailoverConfig>(r#"{"latency_threshold":5}"#).is_err());

        let c: FailoverConfig = serde_json::from_str(
            r#"{"endpoints":[{"base":"http://a.test"}],"probe_interval_ms":0}"#,
        )
        .unwrap();
        assert_eq!(
            FailoverLayer::from_config(c).unwrap_err().field(),
            "probe_interval_ms"
        );
    }
}
