//! What the fleet backends count and log when Redis goes away and comes back: one line each
//! way, counters for every failed round trip and every local decision, and never a URL,
//! password, tenant or key in a log line or a Redis key.
//!
//! The only test of its binary, so the process-wide subscriber sees every event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use redis::AsyncCommands;
use tower::{Layer, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_retry::KeyBy;
use tower_deepseek_retry::fleet::Fleet;
use tower_deepseek_retry::rate_limit::RateLimitLayer;
use tower_deepseek_testkit::RedisServer;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const TENANT: &str = "tenant-acme-private";

fn call() -> http::Request<Full<Bytes>> {
    let mut r = http::Request::post("http://upstream/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    r.extensions_mut().insert(TenantId::new(TENANT));
    r
}

#[test]
fn redis_going_away_and_back_is_counted_and_logged_without_secrets() {
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(sub).unwrap();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };

    // A password in a URL is never shown.
    let secret = Fleet::builder()
        .redis_url("redis://:pass-s3cret@127.0.0.1:1")
        .build()
        .unwrap();
    assert!(!format!("{secret:?}").contains("s3cret"));

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let prefix = format!("tdr-test:observe:{}", std::process::id());
            let fleet = Fleet::builder()
                .redis_url(redis.url())
                .key_prefix(&prefix)
                .retry(Duration::from_millis(50))
                .timeout(Duration::from_millis(500))
                .expected_instances(2)
                .build()
                .unwrap();
            let svc = RateLimitLayer::builder()
                .requests_per_minute(600)
                .request_burst(100)
                .key_by(KeyBy::Tenant)
                .fleet(fleet.clone())
                .build()
                .unwrap()
                .layer(tower::service_fn(|_req| async {
                    Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::new())))
                }));
            svc.clone().oneshot(call()).await.unwrap();
            let mut conn = redis::Client::open(redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let keys: Vec<String> = conn.keys(format!("{{{prefix}:*")).await.unwrap();
            assert_eq!(keys.len(), 1);
            assert!(!keys[0].contains(TENANT), "{keys:?}");

            redis.kill();
            for _ in 0..3 {
                svc.clone().oneshot(call()).await.unwrap();
            }
            assert!(!fleet.is_up());
            redis.spawn().unwrap();
            let start = tokio::time::Instant::now();
            while !fleet.is_up() {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "never shared again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                svc.clone().oneshot(call()).await.unwrap();
            }
        });
    });

    let mut counters = std::collections::HashMap::new();
    let mut up = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        if let DebugValue::Gauge(v) = &value {
            if key.name() == "deepseek_fleet_redis_up" {
                up = Some(v.into_inner());
            }
        }
        if let DebugValue::Counter(n) = value {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            counters.insert(format!("{}{:?}", key.name(), labels), n);
        }
    }
    assert_eq!(up, Some(1.0), "Redis answers again at the end");
    let fallbacks = counters
        .get("deepseek_fleet_fallback_total[\"limit=rate_limit\"]")
        .copied();
    assert!(fallbacks >= Some(3), "{counters:?}");
    assert!(
        counters
            .iter()
            .any(|(k, n)| k.starts_with("deepseek_fleet_redis_errors_total") && *n >= 1),
        "{counters:?}"
    );

    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        out.matches("fleet limits fall back to local shares")
            .count(),
        1,
        "one line when Redis goes away: {out}"
    );
    assert_eq!(
        out.matches("fleet limits are shared again").count(),
        1,
        "one line when it is back: {out}"
    );
    for secret in [TENANT, "s3cret", "127.0.0.1", "redis://"] {
        assert!(!out.contains(secret), "{secret} in the logs: {out}");
    }
}
