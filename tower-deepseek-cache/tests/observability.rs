//! Metrics and logs: what is counted, and that no prompt, credential or password leaks.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_deepseek_cache::CacheLayer;
use tower_deepseek_testkit::MockServer;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_count_each_outcome_and_logs_hold_no_secrets() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    let logs = Buf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = MockServer::builder()
        .stream_chunk_delay(Duration::from_millis(2))
        .start()
        .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let layer = CacheLayer::builder()
        .redis_url(format!("redis://:hunter2-password@127.0.0.1:{port}"))
        .redis_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(!format!("{layer:?}").contains("hunter2"));
    let svc = layer.layer(upstream(&server));

    let body = chat_body("my secret prompt 4242", json!({"stream": true}));
    let req = || {
        let mut r = post(&body);
        r.headers_mut()
            .insert("authorization", "Bearer sk-secret-777".parse().unwrap());
        r
    };
    // Two identical requests at once: one miss upstream, one merged follower.
    let (a, b) = tokio::join!(call(&svc, req()), call(&svc, req()));
    assert_eq!((a.0.as_str(), b.0.as_str()), ("miss", "miss"));
    assert_eq!(call(&svc, req()).await.0, "hit-l1");
    let warm = chat_body("warm secret 4242", json!({"temperature": 1.0}));
    assert_eq!(call(&svc, post(&warm)).await.0, "bypass");
    assert_eq!(server.chat_count(), 2);

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        snapshot
            .iter()
            .filter(|(k, _, _, _)| k.key().name() == name)
            .filter(|(k, _, _, _)| {
                label.is_none_or(|(n, v)| k.key().labels().any(|l| l.key() == n && l.value() == v))
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    use tower_deepseek_cache::metrics as m;
    assert_eq!(counter(m::REQUESTS_TOTAL, Some(("result", "miss"))), 2);
    assert_eq!(counter(m::REQUESTS_TOTAL, Some(("result", "hit_l1"))), 1);
    assert_eq!(counter(m::REQUESTS_TOTAL, Some(("result", "bypass"))), 1);
    assert_eq!(counter(m::SINGLEFLIGHT_MERGED_TOTAL, None), 1);
    assert!(
        counter(m::REDIS_ERRORS_TOTAL, None) >= 1,
        "the dead Redis was counted"
    );
    let l1_bytes = snapshot
        .iter()
        .find(|(k, _, _, _)| k.key().name() == m::L1_BYTES)
        .map(|(_, _, _, v)| v);
    assert!(matches!(l1_bytes, Some(DebugValue::Gauge(g)) if g.into_inner() > 0.0));

    let out = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("tower_deepseek_cache"), "{out}");
    assert!(out.contains("redis"), "{out}");
    for secret in ["4242", "sk-secret-777", "hunter2", "secret prompt"] {
        assert!(!out.contains(secret), "{secret} leaked into logs:\n{out}");
    }
    let _ = svc.oneshot(post(&body)).await;
}
