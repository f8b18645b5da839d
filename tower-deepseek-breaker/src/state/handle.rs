//! The public handle on a breaker and the snapshot it reads.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Breaker, State};

/// A snapshot of a breaker's state and counts, from [`BreakerHandle::metrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state.
    pub state: State,
    /// Failure rate in percent over the window (or the half-open probes), once the minimum
    /// number of calls is reached; `None` before.
    pub failure_rate: Option<f32>,
    /// Slow-call rate in percent, as above.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window (closed, metrics-only) or probes recorded (half-open).
    pub buffered_calls: u32,
    /// Failed calls among them.
    pub failed_calls: u32,
    /// Slow calls among them.
    pub slow_calls: u32,
    /// Calls rejected since the breaker was built or reset.
    pub not_permitted_calls: u64,
    /// Exponentially weighted moving average of the call latency (to the first content).
    pub latency: Option<Duration>,
    /// How long until a probe is admitted, while open or forced open.
    pub retry_after: Option<Duration>,
    /// Half-open probes admitted and not finished.
    pub half_open_in_flight: u32,
}

/// A cheap handle on one breaker: read its state and metrics, force or reset it.
///
/// Every clone (and every service the breaker guards) sees the same breaker.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.breaker.label)
            .field("state", &self.state())
            .finish()
    }
}

impl BreakerHandle {
    /// The breaker's name (for a keyed breaker, `name/key`), as in its metric labels.
    pub fn name(&self) -> &str {
        &self.breaker.label
    }

    /// The current state. Time-driven transitions (open → half-open) are applied on read, so
    /// this is exact even when no timer task runs.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// A snapshot of the rates and counts.
    pub fn metrics(&self) -> BreakerMetrics {
        self.breaker.snapshot()
    }

    /// How long until a probe may pass, while the breaker rejects calls.
    pub fn retry_after(&self) -> Option<Duration> {
        self.breaker.retry_after()
    }

    /// Moves to closed with an empty window.
    pub fn transition_to_closed(&self) {
        self.breaker.force(State::Closed);
    }

    /// Opens the breaker for the configured wait (then half-open as usual).
    pub fn transition_to_open(&self) {
        self.breaker.force(State::Open);
    }

    /// Moves to half-open: the next probes decide.
    pub fn transition_to_half_open(&self) {
        self.breaker.force(State::HalfOpen);
    }

    /// Rejects every call until another transition.
    pub fn force_open(&self) {
        self.breaker.force(State::ForcedOpen);
    }

    /// Lets every call pass, recording nothing, until another transition.
    pub fn disable(&self) {
        self.breaker.force(State::Disabled);
    }

    /// Records calls but never opens, until another transition.
    pub fn metrics_only(&self) {
        self.breaker.force(State::MetricsOnly);
    }

    /// Back to closed, forgetting the window, the growing wait and the rejection count.
    pub fn reset(&self) {
        self.breaker.reset();
    }
}

impl Breaker {
    /// The rates and counts now, with time-driven transitions applied first.
    pub(super) fn snapshot(self: &Arc<Self>) -> BreakerMetrics {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh_locked(&mut inner, now);
        let (state, _) = self.word();
        let (totals, min) = match state {
            State::HalfOpen => (
                inner.half_open.totals,
                self.spec.config.permitted_calls_in_half_open,
            ),
            _ => (self.totals_locked(&mut inner, now), self.head.min_calls),
        };
        let retry_after = match state {
            State::Open => Some(self.open_deadline().saturating_duration_since(now)),
            State::ForcedOpen => Some(self.spec.config.wait_duration_in_open),
            _ => None,
        };
        BreakerMetrics {
            state,
            failure_rate: totals.failure_rate(min),
            slow_call_rate: totals.slow_rate(min),
            buffered_calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
            latency: self.latency_ewma().map(Duration::from_secs_f64),
            retry_after,
            half_open_in_flight: if state == State::HalfOpen {
                inner.half_open.admitted
                    - inner.half_open.totals.calls.min(inner.half_open.admitted)
            } else {
                0
            },
        }
    }
}
