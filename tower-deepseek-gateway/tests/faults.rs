//! The gateway under upstream faults, over loopback: a dead upstream with the default
//! configuration (fail fast once the breaker is open), and streams that fail after their
//! first byte (a final error event and a clean end, never a reset).

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_deepseek_gateway::GatewayConfig;
use tower_deepseek_testkit::{Fault, Match, MockServer};

fn hello(content: &str) -> Value {
    json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": content}]})
}

fn streaming(content: &str) -> Value {
    json!({"model": "deepseek-chat", "stream": true,
           "messages": [{"role": "user", "content": content}]})
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn a_dead_upstream_opens_the_breaker_then_callers_fail_fast_without_upstream_calls() {
    // Every chat answer is a 500; the gateway runs its default configuration (no keys, so
    // loopback only): default retries, breaker, budget.
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    upstream.always(Match::chat(), Fault::status(500));
    let gw = start(&upstream.url(), GatewayConfig::default(), None).await;
    let client = client();

    // Enough failing calls at once for the breaker's window (100 calls by default). Before it
    // opens, no caller waits longer than the retry layer's documented worst case for 500s
    // (3.5 s of waits over 4 attempts), plus slack for a loaded machine.
    let started = Instant::now();
    let callers: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            let url = gw.url("/v1/chat/completions");
            tokio::spawn(async move {
                let t = Instant::now();
                let res = send(&client, chat_request(&url, None, hello(&format!("q{i}")))).await;
                let status = res.status();
                body_string(res).await;
                (status, t.elapsed())
            })
        })
        .collect();
    for c in callers {
        let (status, took) = c.await.unwrap();
        assert!(status == 500 || status == 503, "{status}");
        assert!(took < Duration::from_secs(8), "a caller waited {took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(upstream.chat_count() >= 100, "{}", upstream.chat_count());

    // The breaker is open now: callers get 503 + Retry-After at once, and the upstream sees
    // nothing more.
    let calls = upstream.chat_count();
    let mut times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let res = send(
            &client,
            chat_request(
                &gw.url("/v1/chat/completions"),
                None,
                hello(&format!("again {i}")),
            ),
        )
        .await;
        assert_eq!(res.status(), 503);
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&wait), "{wait}");
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(v["error"]["code"], "upstream_unavailable");
        times.push(t.elapsed());
    }
    assert_eq!(upstream.chat_count(), calls, "no upstream call while open");
    times.sort();
    // Milliseconds (the bug held each caller 30 s); generous for a loaded CI machine.
    assert!(
        times[times.len() / 2] < Duration::from_millis(100),
        "{times:?}"
    );
    assert!(times[times.len() - 1] < Duration::from_secs(1), "{times:?}");
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}

/// Reads a whole response body: it must end cleanly (no transport error).
async fn read_clean(res: http::Response<hyper::body::Incoming>) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("the stream ends within 10 s")
        .expect("the stream ends cleanly, not with a reset")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn streams_that_fail_after_the_first_byte_end_with_an_error_event_and_a_clean_end() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-faults-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    // A short idle-gap timeout for the stalled stream below.
    let cfg = config_with_keys("[timeout]\nidle_ms = 300\n");
    let gw = start(&upstream.url(), cfg, Some(&log)).await;
    let client = client();

    let cases: [(&str, Fault, &str); 4] = [
        ("reset", Fault::reset_mid_stream(2), "stream_interrupted"),
        ("cut", Fault::cut_without_done(2), "stream_interrupted"),
        (
            "stall",
            // two events, then a gap longer than the idle timeout
            Fault::slow_drip(Duration::from_secs(3)),
            "upstream_timeout",
        ),
        ("in-band", Fault::in_band_error(), ""),
    ];
    for (name, fault, code) in cases {
        upstream.enqueue_when(Match::chat(), fault);
        let res = send(
            &client,
            chat_request(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                streaming(&format!("tell me a long story {name}")),
            ),
        )
        .await;
        assert_eq!(res.status(), 200, "{name}");
        let body = read_clean(res).await;
        let data = sse_data(&body);
        assert!(!data.iter().any(|d| d == "[DONE]"), "{name}: {body}");
        let last: Value = serde_json::from_str(data.last().unwrap())
            .unwrap_or_else(|e| panic!("{name}: the last event is JSON ({e}): {body}"));
        assert!(last["error"]["message"].is_string(), "{name}: {body}");
        if !code.is_empty() {
            assert_eq!(last["error"]["type"], "api_error", "{name}");
            assert_eq!(last["error"]["code"], code, "{name}: {body}");
            // exactly one error event, after the content that did arrive
            assert_eq!(
                data.iter().filter(|d| d.contains("\"error\"")).count(),
                1,
                "{name}: {body}"
            );
        }
    }
    gw.stop().await.unwrap();

    // The audit says how each ended: never `ok`.
    let audit = std::fs::read_to_string(&log).unwrap();
    let outcomes: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["outcome"].to_string())
        .collect();
    assert_eq!(outcomes.len(), 4, "{audit}");
    for o in &outcomes {
        assert_ne!(o, "\"ok\"", "{outcomes:?}");
    }
    assert!(
        outcomes.iter().any(|o| o == "\"incomplete\""),
        "{outcomes:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
    upstream.shutdown().await;
}
