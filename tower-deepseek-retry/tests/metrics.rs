//! Metrics through the `metrics` facade.

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::*;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_retry::RetryLayer;

#[test]
fn retries_and_budget_exhaustion_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let script = Script::new([status(502), status(429), ok()]);
            let mut svc = RetryLayer::builder()
                .rng_seed(5)
                .build()
                .unwrap()
                .layer(script.clone());
            svc.ready().await.unwrap().call(req("{}")).await.unwrap();

            // a budget of one retry: the second retry is refused
            let script = Script::new([status(502), status(502)]);
            let mut svc = RetryLayer::builder()
                .budget(std::time::Duration::from_secs(1), 1, 0.0)
                .build()
                .unwrap()
                .layer(script.clone());
            svc.ready().await.unwrap().call(req("{}")).await.unwrap();
        });
    });
    let mut counters = std::collections::HashMap::new();
    let mut delays = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        match value {
            DebugValue::Counter(n) => {
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                counters.insert(format!("{}{:?}", key.name(), labels), n);
            }
            DebugValue::Histogram(v) if key.name() == "deepseek_retry_delay_seconds" => {
                delays += v.len()
            }
            _ => {}
        }
    }
    assert_eq!(
        counters.get("deepseek_retry_attempts_total[\"reason=bad_gateway\"]"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("deepseek_retry_attempts_total[\"reason=rate_limited\"]"),
        Some(&1)
    );
    assert_eq!(
        counters.get("deepseek_retry_budget_exhausted_total[]"),
        Some(&1)
    );
    assert_eq!(delays, 3);
}
