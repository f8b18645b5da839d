//! Transition events. In its own test binary: tracing caches per-callsite interest, and a
//! test thread without a subscriber hitting the callsite first could hide the events from a
//! scoped subscriber here.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::advance;
use tower::Layer;
use tower_deepseek_breaker::{CircuitBreakerLayer, State};

use support::{Answer, TestRecorder, answer, with_recorder};

async fn settle() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

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

#[test]
fn every_transition_is_a_tracing_event_without_request_data() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let rec = TestRecorder::default();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    with_recorder(&rec, async {
        let layer = CircuitBreakerLayer::builder()
            .name("traced")
            .count_based_window(1)
            .permitted_calls_in_half_open(1)
            .build()
            .unwrap();
        let h = layer.handle();
        let mut svc = layer.layer(support::scripted());
        let mut req = support::request(Answer::Status(500));
        req.headers_mut()
            .insert("authorization", "Bearer sk-secret-key".parse().unwrap());
        support::call(&mut svc, req).await.unwrap();
        advance(Duration::from_secs(30)).await;
        settle().await;
        answer(&mut svc, Answer::Ok).await.unwrap();
        assert_eq!(h.state(), State::Closed);
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, (from, to)) in lines.iter().zip([
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]) {
        assert!(line.contains("tower_deepseek_breaker"), "{line}");
        assert!(line.contains("breaker=traced"), "{line}");
        assert!(line.contains(&format!("from=\"{from}\"")), "{line}");
        assert!(line.contains(&format!("to=\"{to}\"")), "{line}");
    }
    assert!(!out.contains("sk-secret"));
}
