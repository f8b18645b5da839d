//! [`ReviewLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::Notify;
use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::config::{ReviewConfig, SamplingRule};
use super::evaluate::{EvalQueue, Evaluator, JsonModeEvaluator};
use super::handle::{ReviewHandle, ReviewShared};
use super::recent::RecentCalls;
use super::sampler::Sampler;
use super::service::Review;
use super::writer::Writer;
use crate::audit::AuditSink;
use crate::redactor::Redactor;

/// Samples calls into a review sink, masked, with their request ids; records feedback and
/// automatic evaluations. See the [module docs](super).
#[derive(Clone)]
pub struct ReviewLayer {
    pub(super) shared: Arc<ReviewShared>,
}

impl fmt::Debug for ReviewLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReviewLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl ReviewLayer {
    /// A builder: nothing sampled until a rule says so; a sink must be set.
    pub fn builder() -> ReviewLayerBuilder {
        ReviewLayerBuilder {
            config: ReviewConfig::default(),
            sink: None,
            evaluators: Vec::new(),
            redactor: None,
        }
    }

    /// The layer of a serde configuration, writing to `sink` (its built-in evaluator as the
    /// configuration says, the default [`Redactor`] for comments).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first invalid field.
    pub fn from_config(
        config: ReviewConfig,
        sink: impl AuditSink,
    ) -> Result<ReviewLayer, ConfigError> {
        Self::builder().config(config).sink(sink).build()
    }

    /// A handle to record feedback and to wait for the sink.
    pub fn handle(&self) -> ReviewHandle {
        ReviewHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for ReviewLayer {
    type Service = Review<S>;

    fn layer(&self, inner: S) -> Review<S> {
        Review {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`ReviewLayer`]; from [`ReviewLayer::builder`].
#[must_use]
pub struct ReviewLayerBuilder {
    config: ReviewConfig,
    sink: Option<Arc<dyn AuditSink>>,
    evaluators: Vec<Arc<dyn Evaluator>>,
    redactor: Option<Redactor>,
}

impl fmt::Debug for ReviewLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReviewLayerBuilder")
            .field("config", &self.config)
            .field("sink", &self.sink.is_some())
            .field("evaluators", &self.evaluators.len())
            .finish_non_exhaustive()
    }
}

impl ReviewLayerBuilder {
    /// Every setting of a serde configuration (replaces rules and limits set before).
    pub fn config(mut self, config: ReviewConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a sampling rule after those set before (first match wins).
    pub fn rule(mut self, rule: SamplingRule) -> Self {
        self.config.rules.push(rule);
        self
    }

    /// Where records go: any [`AuditSink`] (the same JSON Lines sinks as audit:
    /// [`JsonlFileSink`](crate::audit::JsonlFileSink) with rotation,
    /// [`WriterSink`](crate::audit::WriterSink), or the user's own). Required. The sink is
    /// written from a background thread, never from a call.
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Adds an evaluator, run on every sampled call off the request path.
    pub fn evaluator(mut self, evaluator: impl Evaluator) -> Self {
        self.evaluators.push(Arc::new(evaluator));
        self
    }

    /// Whether the built-in [`JsonModeEvaluator`] runs (default on).
    pub fn json_mode_evaluator(mut self, on: bool) -> Self {
        self.config.json_mode_evaluator = on;
        self
    }

    /// The redactor of feedback labels and comments (default: [`Redactor::default`]); give
    /// it the one of the stack's [`RedactLayer`](crate::RedactLayer) so that both mask alike.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// The bytes of a request, and of an answer, kept in one record.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.config.max_body_bytes = n;
        self
    }

    /// Records that may wait for the sink.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self
    }

    /// The size and the time window of the recent-call index of feedback.
    pub fn recent_calls(mut self, capacity: u64, ttl: Duration) -> Self {
        self.config.recent_calls = capacity;
        self.config.recent_call_ttl = ttl;
        self
    }

    /// Sampled calls that may wait for the evaluators, and evaluations run at once.
    pub fn evaluation_queue(mut self, capacity: usize, concurrency: usize) -> Self {
        self.config.evaluation_queue = capacity;
        self.config.evaluation_concurrency = concurrency;
        self
    }

    /// Validates the settings, starts the sink's writer thread, and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first invalid field, or `sink` when none was set or its
    /// writer thread could not start.
    pub fn build(self) -> Result<ReviewLayer, ConfigError> {
        let c = self.config;
        c.validate()?;
        let sink = self
            .sink
            .ok_or_else(|| ConfigError::new("sink", "must be set"))?;
        let writer = Writer::new(sink, c.queue_capacity)
            .map_err(|_| ConfigError::new("sink", "its writer thread could not start"))?;
        let mut evaluators = self.evaluators;
        if c.json_mode_evaluator {
            evaluators.insert(0, Arc::new(JsonModeEvaluator));
        }
        let recent = RecentCalls::new(c.recent_calls, c.recent_call_ttl);
        Ok(ReviewLayer {
            shared: Arc::new(ReviewShared {
                sampler: Sampler::new(c.rules),
                max_body_bytes: c.max_body_bytes,
                writer,
                recent,
                eval: EvalQueue::new(evaluators, c.evaluation_queue, c.evaluation_concurrency),
                redactor: self.redactor.unwrap_or_default(),
                pending: AtomicUsize::new(0),
                settled: Notify::new(),
            }),
        })
    }
}
