//! The layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_deepseek_core::classify::Classifier;
use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::config::{CircuitBreakerConfig, SlidingWindowType};
use super::service::CircuitBreaker;
use crate::keyed::{DefaultKey, KeyedCircuitBreakerLayer, Registry};
use crate::policy::{DefaultOutcomePolicy, OutcomePolicy};
use crate::state::{Breaker, BreakerHandle, Spec, Striped};

/// The default number of keys a keyed breaker keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000;

/// Builds a [`CircuitBreakerLayer`] (or a [`KeyedCircuitBreakerLayer`]); every setting defaults
/// as in [`CircuitBreakerConfig`]. See the [crate docs](crate).
#[must_use]
pub struct CircuitBreakerLayerBuilder {
    config: CircuitBreakerConfig,
    policy: Arc<dyn OutcomePolicy>,
    classifier: Classifier,
    max_keys: u64,
    #[cfg(feature = "failsafe")]
    trip_rule: Option<crate::state::TripRuleFactory>,
}

impl fmt::Debug for CircuitBreakerLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayerBuilder")
            .field("config", &self.config)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl Default for CircuitBreakerLayerBuilder {
    fn default() -> Self {
        Self {
            config: CircuitBreakerConfig::default(),
            policy: Arc::new(DefaultOutcomePolicy::new()),
            classifier: Classifier::new(),
            max_keys: DEFAULT_MAX_KEYS,
            #[cfg(feature = "failsafe")]
            trip_rule: None,
        }
    }
}

impl CircuitBreakerLayerBuilder {
    /// Starts from `config` (e.g. read from TOML), keeping the other settings.
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// The name: metric label `breaker` and event field (default `"deepseek"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Open at or above this failure rate, in percent (default 50).
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Open at or above this slow-call rate, in percent (default 100).
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// A call slower than this (to its first content) is slow (default 60 s).
    pub fn slow_call_duration_threshold(mut self, d: Duration) -> Self {
        self.config.slow_call_duration_threshold = d;
        self
    }

    /// Turn slow-call detection off (default on): no slow-call rule, no latency average, and
    /// no clock read per call with a count-based window. For the leanest hot path.
    pub fn slow_call_detection(mut self, yes: bool) -> Self {
        self.config.slow_call_detection = yes;
        self
    }

    /// A count-based window of the last `calls` calls (the default, with 100).
    pub fn count_based_window(mut self, calls: u32) -> Self {
        self.config.sliding_window_type = SlidingWindowType::CountBased;
        self.config.sliding_window_size = calls;
        self
    }

    /// A time-based window of the last `seconds` seconds.
    pub fn time_based_window(mut self, seconds: u32) -> Self {
        self.config.sliding_window_type = SlidingWindowType::TimeBased;
        self.config.sliding_window_size = seconds;
        self
    }

    /// Calls needed before a rate is evaluated (default 100; a count window caps it).
    pub fn minimum_number_of_calls(mut self, calls: u32) -> Self {
        self.config.minimum_number_of_calls = calls;
        self
    }

    /// Probes admitted in half-open (default 5).
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.permitted_calls_in_half_open = calls;
        self
    }

    /// How long to stay open (default 30 s).
    pub fn wait_duration_in_open(mut self, d: Duration) -> Self {
        self.config.wait_duration_in_open = d;
        self
    }

    /// Multiply the wait by `multiplier` on each consecutive open, up to `max`.
    pub fn growing_wait(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.wait_multiplier = multiplier;
        self.config.max_wait_duration_in_open = max;
        self
    }

    /// Reopen a half-open breaker whose probes have not decided within `d` (default: wait).
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(d);
        self
    }

    /// Move from open to half-open on a timer task (default true); the move also happens
    /// lazily on the next call or read either way.
    pub fn automatic_transition(mut self, yes: bool) -> Self {
        self.config.automatic_transition = yes;
        self
    }

    /// What each failure class means (default [`DefaultOutcomePolicy`]).
    pub fn outcome_policy(mut self, policy: impl OutcomePolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The shared classifier to use (default [`Classifier::new`]).
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// How many keys a keyed breaker keeps (least recently used ones are dropped; default
    /// 1,000).
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = n;
        self
    }

    /// Replaces the failure-rate rule of the closed state with a failsafe
    /// [`FailurePolicy`](failsafe::FailurePolicy), made fresh for each breaker by `make`. See
    /// [the crate docs](crate#failsafe).
    ///
    /// The policy sees every recorded success and failure of the closed state; when its
    /// `mark_dead_on_failure` returns a duration, the breaker opens for that long. Half-open
    /// stays ours (exactly `permitted_calls_in_half_open` probes, decided by their failure
    /// rate); on closing, the policy's `revived` is called. The slow-call rule stays active.
    #[cfg(feature = "failsafe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "failsafe")))]
    pub fn failure_policy<P, F>(mut self, make: F) -> Self
    where
        F: Fn() -> P + Send + Sync + 'static,
        P: failsafe::FailurePolicy + Send + 'static,
    {
        self.trip_rule = Some(Arc::new(move || {
            Box::new(make()) as Box<dyn crate::state::TripRule>
        }));
        self
    }

    fn spec(self) -> Result<(Arc<Spec>, u64), ConfigError> {
        self.config.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        let min_calls = self.config.effective_minimum_calls();
        let timed = self.config.slow_call_detection
            || self.config.sliding_window_type == SlidingWindowType::TimeBased;
        Ok((
            Arc::new(Spec {
                timed,
                config: self.config,
                min_calls,
                policy: self.policy,
                classifier: self.classifier,
                #[cfg(feature = "failsafe")]
                trip_rule: self.trip_rule,
            }),
            self.max_keys,
        ))
    }

    /// Validates the settings and builds the layer (and its one shared breaker).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<CircuitBreakerLayer, ConfigError> {
        let (spec, _) = self.spec()?;
        let label: Arc<str> = spec.config.name.as_str().into();
        Ok(CircuitBreakerLayer {
            breaker: Arc::new(Striped::new(Breaker::new(spec, label))),
        })
    }

    /// Validates the settings and builds a keyed layer: one breaker per key, the default key
    /// being the upstream authority plus the model hint (see [`DefaultKey`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build_keyed(self) -> Result<KeyedCircuitBreakerLayer<DefaultKey>, ConfigError> {
        let (spec, max_keys) = self.spec()?;
        Ok(KeyedCircuitBreakerLayer::from_registry(
            Arc::new(Registry::new(spec, max_keys)),
            DefaultKey,
        ))
    }

    pub(crate) fn build_spec(self) -> Result<Arc<Spec>, ConfigError> {
        Ok(self.spec()?.0)
    }
}

/// Applies a [`CircuitBreaker`] to services. Every service it makes, and every clone of them,
/// shares one breaker. See the [crate docs](crate).
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Striped>,
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl CircuitBreakerLayer {
    /// A builder with the defaults of [`CircuitBreakerConfig`].
    pub fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder::default()
    }

    /// The layer with the defaults (Resilience4j's, with the guide's 30 s wait and 5 probes).
    pub fn new() -> Self {
        CircuitBreakerLayerBuilder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Builds the layer from a deserialized configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn from_config(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        CircuitBreakerLayerBuilder::default().config(config).build()
    }

    /// A handle on the shared breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.breaker.breaker().clone(),
        }
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_shared(inner, self.breaker.clone())
    }
}
