//! The active health check of an upstream (`[upstreams.probe]`): `GET <url><path>` (default
//! `/models`) through the upstream's own client and credential, every `interval_ms`.
//!
//! `unhealthy_after` failures in a row (no 2xx within `timeout_ms`) open the upstream's breaker
//! and keep it open (forced: no half-open trial calls reach it); `healthy_after` successes in a
//! row close a breaker that is open (for any reason: the probe's own, errors, a refused
//! connection), so an ejected upstream comes back as soon as it answers again rather than
//! after the breaker's wait. The probe does not count in the calls metric, nor in the
//! breaker's window.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;
use tower_deepseek::breaker::{BreakerHandle, State};
use tower_deepseek::core::body::BufferedBody;

use super::Upstreams;
use super::pool::EndpointSvc;
use crate::config::ProbeConfig;

/// The last results of one upstream's probe.
#[derive(Debug, Default)]
pub(crate) struct ProbeStatus {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures in a row (0 after a success).
    failing: AtomicU32,
    /// Successes in a row (0 after a failure).
    passing: AtomicU32,
}

impl ProbeStatus {
    pub(crate) fn as_json(&self) -> serde_json::Value {
        json!({
            "ok": self.ok.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "failing_in_a_row": self.failing.load(Ordering::Relaxed),
            "passing_in_a_row": self.passing.load(Ordering::Relaxed),
        })
    }
}

/// What one probe task needs.
pub(crate) struct Probe {
    pub(crate) name: String,
    pub(crate) uri: http::Uri,
    pub(crate) config: ProbeConfig,
    pub(crate) service: EndpointSvc,
    pub(crate) breaker: BreakerHandle,
    pub(crate) status: Arc<ProbeStatus>,
}

/// Starts the probe; it stops when the gateway (its `Upstreams`) is dropped.
pub(crate) fn spawn(probe: Probe, owner: Weak<Upstreams>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(probe.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: wait one interval before the first probe.
        tick.tick().await;
        loop {
            tick.tick().await;
            if owner.strong_count() == 0 {
                break;
            }
            let ok = probe.once().await;
            probe.record(ok);
        }
    });
}

impl Probe {
    async fn once(&self) -> bool {
        let Ok(req) = Request::get(self.uri.clone()).body(BufferedBody::empty()) else {
            return false;
        };
        let service = self.service.clone();
        // The answer is read whole (within the timeout), so its connection goes back to the pool.
        let call = async move {
            let res = service.oneshot(req).await.ok()?;
            let ok = res.status().is_success();
            res.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(self.config.timeout, call).await,
            Ok(Some(true))
        )
    }

    fn record(&self, ok: bool) {
        let s = &self.status;
        let out = matches!(self.breaker.state(), State::Open | State::ForcedOpen);
        if ok {
            s.ok.fetch_add(1, Ordering::Relaxed);
            s.failing.store(0, Ordering::Relaxed);
            let passing = s.passing.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("deepseek_gateway_upstream_probes_total", "upstream" => self.name.clone(), "outcome" => "ok").increment(1);
            if out && passing >= self.config.healthy_after {
                tracing::info!(target: "tower_deepseek_gateway", upstream = %self.name, "probe passed: the upstream is back");
                self.breaker.transition_to_closed();
            }
        } else {
            s.failed.fetch_add(1, Ordering::Relaxed);
            s.passing.store(0, Ordering::Relaxed);
            let failing = s.failing.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("deepseek_gateway_upstream_probes_total", "upstream" => self.name.clone(), "outcome" => "failed").increment(1);
            if failing >= self.config.unhealthy_after && self.breaker.state() != State::ForcedOpen {
                tracing::warn!(target: "tower_deepseek_gateway", upstream = %self.name, failing, "probe failed: the upstream is out");
                self.breaker.force_open();
            }
        }
    }
}
