//! Prometheus: one process-wide recorder, gateway request metrics, and the process's own
//! metrics from the `metrics-process` crate.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `deepseek_gateway_requests_total{route,status}`: responses by route and status, counted at
/// the response head (errors answered by the gateway included).
pub const REQUESTS_TOTAL: &str = "deepseek_gateway_requests_total";
/// `deepseek_gateway_request_duration_seconds{route}`: histogram of the time from the request
/// to the response head.
pub const REQUEST_DURATION: &str = "deepseek_gateway_request_duration_seconds";
/// `deepseek_gateway_responses_total{route,outcome}`: calls by final outcome, classified when
/// the body ends (`ok`, a core failure class such as `incomplete`, `server_error`, or
/// `cancelled` when the client went away).
pub const RESPONSES_TOTAL: &str = "deepseek_gateway_responses_total";
/// `deepseek_gateway_tokens_total{kind}`: tokens of the answers (`prompt`, `completion`,
/// `prompt_cache_hit`, `prompt_cache_miss`), read from `usage` (streams included).
pub const TOKENS_TOTAL: &str = "deepseek_gateway_tokens_total";
/// `deepseek_gateway_in_flight`: requests being answered (gauge).
pub const IN_FLIGHT: &str = "deepseek_gateway_in_flight";
/// `deepseek_gateway_websocket_connections`: WebSocket connections open (gauge).
pub const WEBSOCKET_CONNECTIONS: &str = "deepseek_gateway_websocket_connections";
/// `deepseek_gateway_websocket_upgrades_total{outcome}`: upgrade requests by outcome
/// (`accepted`, `unauthorized`, `refused` (503: at the cap or shutting down), `invalid`).
pub const WEBSOCKET_UPGRADES_TOTAL: &str = "deepseek_gateway_websocket_upgrades_total";
/// `deepseek_gateway_websocket_closed_total{code}`: WebSocket connections closed, by the close
/// code the gateway sent (`1000`, `1001`, `1003`, `1009`, `1011`, ...) or `peer` when the
/// client closed or went away.
pub const WEBSOCKET_CLOSED_TOTAL: &str = "deepseek_gateway_websocket_closed_total";

/// `deepseek_review_score{model,tenant,source}`: the review layer's quality scores (0 to 1,
/// `source` `human` or `evaluator`), with buckets of a tenth.
pub const REVIEW_SCORE: &str = "deepseek_review_score";

const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (layers register their
/// metrics when built, so call this before building them).
pub(crate) fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(REVIEW_SCORE.to_owned()),
                SCORE_BUCKETS,
            )
            .expect("the bucket list is not empty");
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is already installed (an embedding program's): render ours
            // anyway; it just stays empty (the process metrics go to that recorder too).
            Err(e) => {
                tracing::warn!(target: "tower_deepseek_gateway", error = %e, "a metrics recorder is already installed; /metrics stays empty (every metric goes to that recorder)");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let h = handle.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
        }
        handle
    })
}

fn describe() {
    metrics::describe_counter!(REQUESTS_TOTAL, "Gateway responses by route and status");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from the request to the response head"
    );
    metrics::describe_counter!(RESPONSES_TOTAL, "Gateway calls by final outcome");
    metrics::describe_counter!(TOKENS_TOTAL, "Tokens of the answers by kind");
    metrics::describe_gauge!(IN_FLIGHT, "Requests being answered");
    metrics::describe_histogram!(
        REVIEW_SCORE,
        "Quality scores of calls, 0 to 1, from people (feedback) and evaluators"
    );
    metrics::describe_gauge!(WEBSOCKET_CONNECTIONS, "WebSocket connections open");
    metrics::describe_counter!(
        WEBSOCKET_UPGRADES_TOTAL,
        "WebSocket upgrade requests by outcome"
    );
    metrics::describe_counter!(
        WEBSOCKET_CLOSED_TOTAL,
        "WebSocket connections closed, by close code (or peer)"
    );
}

/// The process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_start_time_seconds`, `process_threads`, ...) from the `metrics-process` crate,
/// which reads them from the OS (Linux, macOS, Windows, FreeBSD), described once.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// The Prometheus text: the process metrics, refreshed now, and every recorded metric.
pub(crate) fn render() -> String {
    let handle = handle();
    process_collector().collect();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_rendered() {
        let s = render();
        if cfg!(target_os = "linux") {
            assert!(s.contains("process_cpu_seconds_total "), "{s}");
            assert!(s.contains("process_open_fds "), "{s}");
            let rss: f64 = s
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(rss > 1024.0 * 1024.0);
        }
    }
}
