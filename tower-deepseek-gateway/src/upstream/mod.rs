//! Active-active upstreams and their health.
//!
//! With `[[upstreams]]` in the configuration (or `--upstream` given more than once), each
//! upstream gets its own connection pool, credential, model-name map and circuit breaker, and
//! the breaker crate's [`FailoverLayer`](tower_deepseek::breaker::FailoverLayer) spreads the
//! calls by weight over them ([`pool`]). It sits right below the retry layer, in place of the
//! stack's single breaker, auth and timeout stages (which it runs per upstream):
//!
//! ```text
//! audit, redact, cache, rate limit, retry, FAILOVER ─┬─ upstream 0: breaker, calls, models, auth, timeout, client
//!                                                    └─ upstream 1: breaker, calls, models, auth, timeout, client
//! ```
//!
//! A failed attempt that reached no caller (a refused connection, a 5xx, a 429, an open
//! breaker) moves to the next upstream at once within the same retry attempt; the retry layer's
//! schedule applies once every upstream was tried. A refused connection opens that upstream's
//! breaker at once (it is out until its breaker half-opens, or its probe succeeds); when every
//! upstream is out, the call fails at once with 503 and `Retry-After`.
//!
//! Health ([`health`]): passive (the breakers, and the latency average that sets an upstream's
//! weight to 0 above `[health] latency_threshold_ms`) and active (an optional probe per
//! upstream, [`probe`]). `GET /readyz` and the `deepseek_gateway_upstream_*` metrics show it.
//!
//! With one upstream and no setting of its own (one `--upstream`, or one `[[upstreams]]` with
//! only `url`, `name`, `weight`), the stack is the plain recommended stack with its one breaker
//! (labelled `deepseek`); `/readyz` and the metrics show that upstream all the same.

pub(crate) mod health;
pub(crate) mod pool;
pub(crate) mod probe;

use std::sync::Arc;
use std::time::Duration;

use tower_deepseek::breaker::{BreakerHandle, FailoverLayer, State};
use tower_deepseek::redact::audit::AuditHandle;

/// One upstream as `/readyz` and the metrics see it.
pub(crate) struct Entry {
    /// Its label (never its URL).
    pub(crate) name: String,
    /// Its breaker (none: the single-upstream stack without a breaker).
    pub(crate) breaker: Option<BreakerHandle>,
    /// Its active probe's last results, when it has a probe.
    pub(crate) probe: Option<Arc<probe::ProbeStatus>>,
}

/// What `/readyz` and the metrics read: every upstream, the failover (its weights and latency
/// threshold), the audit sink.
pub(crate) struct Upstreams {
    pub(crate) entries: Vec<Entry>,
    /// The failover of a pool (none: the single-upstream stack).
    pub(crate) failover: Option<FailoverLayer>,
    pub(crate) audit: Option<AuditHandle>,
}

/// The state of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamState {
    /// Taking its share of the traffic.
    Up,
    /// Weight 0 by configuration: used only when no weighted upstream is usable.
    Standby,
    /// Its latency average is above the threshold: weight 0 until a recovery call is fast.
    Slow,
    /// Its breaker is half-open: a few trial calls decide.
    Recovering,
    /// Its breaker is open (errors, a refused connection, a failing probe): no traffic.
    Out,
}

impl UpstreamState {
    pub(crate) const ALL: [UpstreamState; 5] = [
        UpstreamState::Up,
        UpstreamState::Standby,
        UpstreamState::Slow,
        UpstreamState::Recovering,
        UpstreamState::Out,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Up => "up",
            UpstreamState::Standby => "standby",
            UpstreamState::Slow => "slow",
            UpstreamState::Recovering => "recovering",
            UpstreamState::Out => "out",
        }
    }

    /// Whether calls can reach it (a slow upstream still answers, if nothing faster can).
    pub(crate) fn usable(self) -> bool {
        self != UpstreamState::Out
    }
}

/// One upstream's state now.
pub(crate) struct Snapshot {
    pub(crate) state: UpstreamState,
    /// Its configured weight (the running one, after a reload).
    pub(crate) configured: u32,
    /// The weight it gets now (0 when out or slow).
    pub(crate) weight: u32,
    pub(crate) breaker: Option<State>,
    pub(crate) latency: Option<Duration>,
}

impl Upstreams {
    pub(crate) fn snapshot(&self, i: usize) -> Snapshot {
        let e = &self.entries[i];
        let m = e.breaker.as_ref().map(BreakerHandle::metrics);
        let breaker = m.as_ref().map(|m| m.state);
        let latency = m.as_ref().and_then(|m| m.latency);
        let (configured, threshold) = match &self.failover {
            Some(f) => (
                f.weights().get(i).copied().unwrap_or(1),
                f.latency_threshold(),
            ),
            None => (1, None),
        };
        let slow = matches!((threshold, latency), (Some(t), Some(l)) if l > t);
        let state = match breaker {
            Some(State::Open | State::ForcedOpen) => UpstreamState::Out,
            Some(State::HalfOpen) => UpstreamState::Recovering,
            _ if slow => UpstreamState::Slow,
            _ if configured == 0 => UpstreamState::Standby,
            _ => UpstreamState::Up,
        };
        let weight = match state {
            UpstreamState::Out | UpstreamState::Slow => 0,
            _ => configured,
        };
        Snapshot {
            state,
            configured,
            weight,
            breaker,
            latency,
        }
    }
}
