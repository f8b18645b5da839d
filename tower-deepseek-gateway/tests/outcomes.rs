//! The outcome of every kind of answer, judged through the real hyper server.
//!
//! hyper's server stops polling a body once it has written the `Content-Length` it announced,
//! and drops it without asking for its end. Every layer that judges the end of a body (the
//! breaker's window, the audit record, the gateway's outcome metric) must count such a body as
//! ended, not as cancelled by the client.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_deepseek_testkit::{Fault, MockServer};

async fn metrics_text(client: &TestClient, gw: &Running) -> String {
    body_string(get(client, &gw.url("/metrics"), None).await).await
}

/// The value of the metric line that starts with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn chat(gw: &Running, body: Value) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body)
}

/// 60 successful non-streaming calls (served with a `Content-Length`) and then 25 failures
/// (and an empty 200, a failure too),
/// with the retry layer off, so that nothing between the breaker and the server reads the
/// answer to its end. Minimum 20 calls, window 100: 25 failures in 85 calls is under the 50 %
/// threshold, and the breaker stays closed. Counted as cancelled, the 60 successes would leave
/// a window of failures alone, and the breaker would open after the 20th failure.
// One test, its scenarios in turn: the metrics recorder is one per process.
#[tokio::test]
async fn every_layer_judges_the_end_of_every_kind_of_answer() {
    breaker_counts_content_length_answers_as_successes_with_retry_off().await;
    audit_outcome_is_right_for_every_kind_of_answer().await;
    answers_the_gateway_makes_itself_are_audited().await;
}

/// A missing key, an unknown key and headers too large are answered by the gateway before the
/// stack: each has its audit record, with its status, its request id and a failure outcome.
async fn answers_the_gateway_makes_itself_are_audited() {
    let upstream = MockServer::start().await;
    let dir = tempdir("refusals");
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config_with_keys(""), Some(&log)).await;
    let client = client();
    let body = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]});
    let url = gw.url("/v1/chat/completions");
    let mut big = chat_request(&url, Some(CLIENT_KEY), body.clone());
    big.headers_mut()
        .insert("x-padding", "x".repeat(40 * 1024).parse().unwrap());
    let mut seen = Vec::new();
    for (req, status) in [
        (chat_request(&url, None, body.clone()), 401),
        (
            chat_request(&url, Some("sk-not-a-key-of-ours"), body.clone()),
            401,
        ),
        (big, 431),
    ] {
        let res = send(&client, req).await;
        assert_eq!(res.status(), status);
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        body_string(res).await;
        seen.push((id, status));
    }
    gw.stop().await.unwrap();
    assert_eq!(upstream.chat_count(), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("sk-not-a-key-of-ours"), "no key in the log");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    for ((id, status), r) in seen.iter().zip(&records) {
        assert_eq!(r["request_id"], id.as_str(), "{r}");
        assert_eq!(r["status"], *status, "{r}");
        assert_ne!(r["outcome"], "ok", "{r}");
        assert_ne!(r["outcome"], "cancelled", "{r}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn breaker_counts_content_length_answers_as_successes_with_retry_off() {
    let upstream = MockServer::start().await;
    let gw = start(
        &upstream.url(),
        config_with_keys(
            r#"
[layers]
retry = false
cache = false
audit = false

[breaker]
sliding_window_size = 100
minimum_number_of_calls = 20

[rate_limit]
requests_per_minute = 100000
tokens_per_minute = 1000000000
"#,
        ),
        None,
    )
    .await;
    let client = client();
    for i in 0..60 {
        let res = send(
            &client,
            chat(
                &gw,
                json!({"model": "deepseek-chat",
                       "messages": [{"role": "user", "content": format!("call {i}")}]}),
            ),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers().contains_key("content-length"),
            "the case under test: a non-streaming answer with a Content-Length"
        );
        body_string(res).await;
    }
    for i in 0..25 {
        upstream.enqueue(Fault::status(500));
        let res = send(
            &client,
            chat(
                &gw,
                json!({"model": "deepseek-chat",
                       "messages": [{"role": "user", "content": format!("failing {i}")}]}),
            ),
        )
        .await;
        assert_eq!(
            res.status(),
            500,
            "call {i}: the breaker must still be closed"
        );
        body_string(res).await;
    }
    // An empty 200 (`Content-Length: 0`): a server never polls it, and it is a failure.
    upstream.enqueue(Fault::empty_200());
    let res = send(
        &client,
        chat(
            &gw,
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "empty"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(body_string(res).await, "");
    assert_eq!(upstream.chat_count(), 86);
    let text = metrics_text(&client, &gw).await;
    let calls = |outcome: &str| {
        metric(
            &text,
            &format!("deepseek_breaker_calls_total{{breaker=\"deepseek\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("success"), 60.0, "{text}");
    assert_eq!(calls("failure"), 26.0, "{text}");
    assert_eq!(calls("cancelled"), 0.0, "{text}");
    let ok = metric(
        &text,
        "deepseek_gateway_responses_total{route=\"/chat/completions\",outcome=\"ok\"}",
    );
    assert_eq!(ok, 60.0, "{text}");
    gw.stop().await.unwrap();
}

/// Every kind of answer gets the right `outcome` in its audit record and in the gateway's
/// outcome metric: chunked JSON, JSON with a `Content-Length` (an L1 cache hit), JSON dripped
/// in pieces, SSE; only a stream the client walks away from is `cancelled`.
async fn audit_outcome_is_right_for_every_kind_of_answer() {
    let upstream = MockServer::start().await;
    let dir = tempdir("outcomes");
    let log = dir.join("audit.jsonl");
    let gw = start(
        &upstream.url(),
        config_with_keys(
            r#"
[rate_limit]
requests_per_minute = 100000
tokens_per_minute = 1000000000
"#,
        ),
        Some(&log),
    )
    .await;
    let client = client();
    let before = metrics_text(&client, &gw).await;
    let plain = json!({"model": "deepseek-chat", "temperature": 0,
                       "messages": [{"role": "user", "content": "cache me"}]});

    // 1. JSON (a miss, stored; the restoring redactor sends it chunked), 2. the same again:
    // an L1 hit, with a `Content-Length`.
    for expect in ["miss", "hit-l1"] {
        let res = send(&client, chat(&gw, plain.clone())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-cache"], expect, "{:?}", res.headers());
        if expect == "hit-l1" {
            assert!(res.headers().contains_key("content-length"));
        }
        body_string(res).await;
    }
    // 3. JSON the upstream drips in pieces under its `Content-Length`.
    upstream.enqueue(Fault::slow_drip(Duration::from_millis(1)));
    let res = send(
        &client,
        chat(
            &gw,
            json!({"model": "deepseek-chat",
                   "messages": [{"role": "user", "content": "drip"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    body_string(res).await;
    // 4. SSE.
    let res = send(
        &client,
        chat(
            &gw,
            json!({"model": "deepseek-chat", "stream": true,
                   "messages": [{"role": "user", "content": "stream"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(body_string(res).await.ends_with("data: [DONE]\n\n"));
    // 5. A stream the client walks away from after its first bytes.
    upstream.enqueue(Fault::slow_drip(Duration::from_millis(300)));
    let res = send(
        &client,
        chat(
            &gw,
            json!({"model": "deepseek-chat", "stream": true,
                   "messages": [{"role": "user", "content": "walk away"}]}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);

    // Five records; wait until the fifth (the walk-away) is counted, then stop to flush.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&client, &gw).await;
        if metric(&text, "deepseek_audit_records_total")
            - metric(&before, "deepseek_audit_records_total")
            >= 5.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "five audit records within 10 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics_text(&client, &gw).await;
    gw.stop().await.unwrap();

    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|r| (r["outcome"].as_str().unwrap(), r["cache"].as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("ok", Some("miss")),
            ("ok", Some("hit-l1")),
            ("ok", Some("bypass")),
            ("ok", Some("bypass")),
            ("cancelled", Some("bypass")),
        ],
        "{records:#?}"
    );
    let by = |outcome: &str| {
        let series = format!(
            "deepseek_gateway_responses_total{{route=\"/chat/completions\",outcome=\"{outcome}\"}}"
        );
        metric(&text, &series) - metric(&before, &series)
    };
    assert_eq!(by("ok"), 4.0, "{text}");
    assert_eq!(by("cancelled"), 1.0, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-{name}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
