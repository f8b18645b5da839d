//! What the retry layer logs: reasons and delays, never request content.
//!
//! The only test of its binary, so the process-wide subscriber sees every event.

mod support;

use support::*;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_retry::RetryLayer;

#[tokio::test(start_paused = true)]
async fn logs_hold_no_request_content() {
    use std::sync::{Arc, Mutex};
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
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    // Process-wide on purpose: a thread-local subscriber races with tracing's
    // per-callsite interest cache, which another thread can pin to "never".
    tracing::subscriber::set_global_default(sub).unwrap();
    let script = Script::new([status(502), status(429), ok()]);
    let mut svc = RetryLayer::builder()
        .rng_seed(42)
        .no_budget()
        .build()
        .unwrap()
        .layer(script.clone());
    let r = http::Request::post("http://upstream/chat/completions")
        .header("authorization", "Bearer sk-secret-key")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"my SSN is 123-45-6789"}]}"#,
        )))
        .unwrap();
    svc.ready().await.unwrap().call(r).await.unwrap();
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("retrying request"), "{out}");
    assert!(out.contains(r#"reason="bad_gateway""#), "{out}");
    assert!(out.contains(r#"reason="rate_limited""#), "{out}");
    for secret in ["sk-secret", "123-45-6789", "SSN", "Bearer"] {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
}
