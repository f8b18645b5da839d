//! `GET /readyz` and the per-upstream metrics.
//!
//! | metric | labels | |
//! |---|---|---|
//! | `deepseek_gateway_upstream_up` | `upstream` | 1 while calls can reach it (not out) |
//! | `deepseek_gateway_upstream_state` | `upstream`, `state` | 1 for its state (`up`, `standby`, `slow`, `recovering`, `out`), 0 for the others |
//! | `deepseek_gateway_upstream_weight` | `upstream` | the weight it gets now (0 when slow or out) |
//! | `deepseek_gateway_upstream_latency_seconds` | `upstream` | its latency average (time to the first content) |
//! | `deepseek_gateway_upstream_calls_total` | `upstream`, `outcome` | attempts sent to it: `ok` or the failure class (`connect`, `server_error`, `rate_limited`, ...) |
//! | `deepseek_gateway_upstream_probes_total` | `upstream`, `outcome` | active probes: `ok`, `failed` |
//! | `deepseek_gateway_upstreams_usable` | | upstreams not out |
//!
//! The gauges are brought up to date when `/metrics` or `/readyz` is read. The `upstream`
//! label is the upstream's name (`[[upstreams]] name`, default `upstream-N`), never its URL.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::{UpstreamState, Upstreams};

impl Upstreams {
    /// Sets the gauges; returns how many upstreams are usable.
    pub(crate) fn refresh_metrics(&self) -> usize {
        let mut usable = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let s = self.snapshot(i);
            let name = e.name.clone();
            if s.state.usable() {
                usable += 1;
            }
            metrics::gauge!("deepseek_gateway_upstream_up", "upstream" => name.clone())
                .set(if s.state.usable() { 1.0 } else { 0.0 });
            for state in UpstreamState::ALL {
                metrics::gauge!(
                    "deepseek_gateway_upstream_state",
                    "upstream" => name.clone(),
                    "state" => state.as_str()
                )
                .set(if state == s.state { 1.0 } else { 0.0 });
            }
            metrics::gauge!("deepseek_gateway_upstream_weight", "upstream" => name.clone())
                .set(f64::from(s.weight));
            if let Some(l) = s.latency {
                metrics::gauge!("deepseek_gateway_upstream_latency_seconds", "upstream" => name)
                    .set(l.as_secs_f64());
            }
        }
        metrics::gauge!("deepseek_gateway_upstreams_usable").set(usable as f64);
        usable
    }

    /// The `/readyz` answer: 200 while at least one upstream is usable and the audit sink
    /// (when on) takes records (`audit_ok`: `AuditHandle::check`); 503 otherwise. The body lists
    /// every upstream.
    pub(crate) fn readiness(&self, audit_ok: Option<bool>) -> (StatusCode, serde_json::Value) {
        let usable = {
            let _one = PAGE.lock().unwrap_or_else(|p| p.into_inner());
            self.refresh_metrics()
        };
        let audit = match audit_ok {
            None => "off",
            Some(true) => "ok",
            Some(false) => "failing",
        };
        let ready = usable > 0 && audit != "failing";
        let upstreams: Vec<_> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let s = self.snapshot(i);
                json!({
                    "name": e.name,
                    "state": s.state.as_str(),
                    "weight": s.weight,
                    "configured_weight": s.configured,
                    "breaker": s.breaker.map(|b| b.as_str()),
                    "latency_ms": s.latency.map(|l| l.as_millis() as u64),
                    "probe": e.probe.as_ref().map(|p| p.as_json()),
                })
            })
            .collect();
        let body = json!({
            "status": if ready { "ready" } else { "unavailable" },
            "usable_upstreams": usable,
            "audit": audit,
            "upstreams": upstreams,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(s): State<Arc<crate::Shared>>) -> Response<Body> {
    // A check probes and flushes the sinks (a write, an fsync): off the request threads.
    let audit_ok = match s.upstreams.audit.clone() {
        Some(a) => Some(
            tokio::task::spawn_blocking(move || a.check().is_ok())
                .await
                .unwrap_or(false),
        ),
        None => None,
    };
    let (status, body) = s.upstreams.readiness(audit_ok);
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /metrics`, with the upstream gauges brought up to date first.
pub(crate) async fn metrics_page(State(s): State<Arc<crate::Shared>>) -> Response<Body> {
    // The recorder is the process's: with two gateways in one process (embedding, tests), the
    // page shows the gauges this gateway just set, not another's set in between.
    let page = {
        let _one = PAGE.lock().unwrap_or_else(|p| p.into_inner());
        s.upstreams.refresh_metrics();
        crate::telemetry::render()
    };
    let mut res = Response::new(Body::from(page));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// One refresh-and-render of the upstream gauges at a time.
static PAGE: std::sync::Mutex<()> = std::sync::Mutex::new(());
