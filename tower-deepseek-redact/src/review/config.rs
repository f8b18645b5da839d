//! [`ReviewConfig`] and [`SamplingRule`]: the serde configuration of
//! [`ReviewLayer`](super::ReviewLayer).

use std::time::Duration;

use tower_deepseek_core::config::{ConfigError, duration_ms};

/// The default cap on the bytes of a request, and of an answer, kept in one review record:
/// 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default number of review records that may wait for the sink: 1024.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// The default number of calls the recent-call index remembers: 100 000.
pub const DEFAULT_RECENT_CALLS: u64 = 100_000;
/// The default time a call stays in the recent-call index (the window in which feedback is
/// accepted): 24 hours.
pub const DEFAULT_RECENT_CALL_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default number of sampled calls that may wait for the evaluators: 256.
pub const DEFAULT_EVALUATION_QUEUE: usize = 256;
/// The default number of evaluations run at once: 4.
pub const DEFAULT_EVALUATION_CONCURRENCY: usize = 4;

/// Which calls a [`SamplingRule`] applies to, and the fraction of them that is sampled.
///
/// Every matcher that is set must match (`route` is the request path, with or without a
/// leading `/v1`; `model` the request's `model`; `tenant` core's `TenantId`); a matcher left
/// out matches anything. The first matching rule wins; a call no rule matches is not sampled.
///
/// ```toml
/// [[review.rules]]
/// tenant = "team-a"
/// fraction = 1.0
/// [[review.rules]]
/// route = "/chat/completions"
/// model = "deepseek-reasoner"
/// fraction = 0.1
/// ```
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SamplingRule {
    /// The request path (`/chat/completions`; `/v1/chat/completions` matches it too).
    pub route: Option<String>,
    /// The requested model, exactly.
    pub model: Option<String>,
    /// The tenant, exactly.
    pub tenant: Option<String>,
    /// The fraction of matching calls that is sampled, 0 to 1 (default 0).
    pub fraction: f64,
}

impl SamplingRule {
    /// A rule sampling `fraction` of every call (add matchers with the setters).
    pub fn new(fraction: f64) -> Self {
        Self {
            fraction,
            ..Self::default()
        }
    }

    /// Only calls to this path.
    #[must_use]
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Only calls for this model.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only calls of this tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(ConfigError::new(
                "rules.fraction",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// A serde configuration for [`ReviewLayer`](super::ReviewLayer) (e.g. a gateway's
/// `[review]` table). The sink and the evaluators are set in code.
///
/// ```toml
/// max_body_bytes = 1048576
/// queue_capacity = 1024
/// recent_calls = 100000
/// recent_call_ttl_ms = 86400000
/// evaluation_queue = 256
/// evaluation_concurrency = 4
/// json_mode_evaluator = true
/// [[rules]]
/// tenant = "team-a"
/// fraction = 1.0
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReviewConfig {
    /// The sampling rules, first match wins (default none: nothing is sampled).
    pub rules: Vec<SamplingRule>,
    /// The bytes of a request, and of an answer, kept in one record (default
    /// [`DEFAULT_MAX_BODY_BYTES`]); what goes beyond is cut and the record says so.
    pub max_body_bytes: usize,
    /// Records that may wait for the sink (default [`DEFAULT_QUEUE_CAPACITY`]); beyond it a
    /// record is dropped and counted, never waited for.
    pub queue_capacity: usize,
    /// Calls the recent-call index of feedback remembers (default [`DEFAULT_RECENT_CALLS`]).
    pub recent_calls: u64,
    /// How long a call stays in that index (default [`DEFAULT_RECENT_CALL_TTL`]).
    #[serde(rename = "recent_call_ttl_ms", with = "duration_ms")]
    pub recent_call_ttl: Duration,
    /// Sampled calls that may wait for the evaluators (default
    /// [`DEFAULT_EVALUATION_QUEUE`]); beyond it an evaluation is skipped and counted.
    pub evaluation_queue: usize,
    /// Evaluations run at once (default [`DEFAULT_EVALUATION_CONCURRENCY`]).
    pub evaluation_concurrency: usize,
    /// Run the built-in [`JsonModeEvaluator`](super::JsonModeEvaluator) on sampled calls
    /// (default `true`).
    pub json_mode_evaluator: bool,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            recent_calls: DEFAULT_RECENT_CALLS,
            recent_call_ttl: DEFAULT_RECENT_CALL_TTL,
            evaluation_queue: DEFAULT_EVALUATION_QUEUE,
            evaluation_concurrency: DEFAULT_EVALUATION_CONCURRENCY,
            json_mode_evaluator: true,
        }
    }
}

impl ReviewConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for r in &self.rules {
            r.validate()?;
        }
        let at_least_1 = |field: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_1("max_body_bytes", self.max_body_bytes as u64)?;
        at_least_1("queue_capacity", self.queue_capacity as u64)?;
        at_least_1("recent_calls", self.recent_calls)?;
        at_least_1("evaluation_queue", self.evaluation_queue as u64)?;
        at_least_1("evaluation_concurrency", self.evaluation_concurrency as u64)?;
        if self.recent_call_ttl.is_zero() {
            return Err(ConfigError::new("recent_call_ttl_ms", "must be at least 1"));
        }
        Ok(())
    }
}
