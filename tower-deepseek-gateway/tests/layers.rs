//! The gateway's own layers around each route: one request id everywhere (tower-http's
//! request-id layers in agreement with core's `RequestId`), and the response clean-up.

mod common;

use common::*;
use serde_json::{Value, json};
use tower_deepseek_testkit::MockServer;

fn body() -> Value {
    json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]})
}

/// The id the client gets back, the one the upstream sees and the one in the audit record are
/// the same: the caller's when core accepts it, else a fresh one (never the refused one).
#[tokio::test]
async fn one_request_id_for_the_client_the_upstream_and_the_audit_record() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dir = std::env::temp_dir().join(format!(
        "deepseek-gateway-layers-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let gw = start(&upstream.url(), config_with_keys(""), Some(&log)).await;
    let url = gw.url("/v1/chat/completions");
    let client = client();

    let too_long = "r".repeat(200);
    let mut seen = Vec::new();
    for (sent, key) in [
        (Some("req-abc-123"), Some(CLIENT_KEY)),
        (Some(too_long.as_str()), Some(CLIENT_KEY)),
        (Some("has space"), Some(CLIENT_KEY)),
        (None, Some(CLIENT_KEY)),
        (Some("req-refused-1"), None),
    ] {
        let mut req = chat_request(&url, key, body());
        if let Some(id) = sent {
            req.headers_mut()
                .insert("x-request-id", id.parse().unwrap());
        }
        let res = send(&client, req).await;
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(
            res.headers().get_all("x-request-id").iter().count(),
            1,
            "one id"
        );
        body_string(res).await;
        match sent {
            Some(s) if s == "req-abc-123" || s == "req-refused-1" => assert_eq!(id, s),
            Some(s) => assert_ne!(id, s, "an id core refuses is replaced"),
            None => assert!(!id.is_empty()),
        }
        assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
        seen.push(id);
    }
    gw.stop().await.unwrap();

    // The upstream saw the same ids (the refused request never reached it).
    let upstream_ids: Vec<String> = upstream
        .requests_to("/chat/completions")
        .iter()
        .map(|r| r.headers["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(upstream_ids, seen[..4]);
    // And the audit records, the refusal's included.
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let audited: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(audited, seen.iter().map(String::as_str).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(dir);
}

/// The upstream's own request id and hop-by-hop headers do not reach the client.
#[tokio::test]
async fn the_upstreams_request_id_and_hop_by_hop_headers_stay_behind() {
    use tower_deepseek_testkit::{Fault, Match};
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    upstream.always(
        Match::path("/chat/completions"),
        Fault::status(400)
            .header("x-request-id", "upstream-own-id")
            .header("keep-alive", "timeout=5")
            .header("content-type", "application/json")
            .body(r#"{"error":{"message":"bad","type":"invalid_request_error","code":"x"}}"#),
    );
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let mut req = chat_request(&gw.url("/v1/chat/completions"), Some(CLIENT_KEY), body());
    req.headers_mut()
        .insert("x-request-id", "req-mine".parse().unwrap());
    let res = send(&client(), req).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-request-id"], "req-mine");
    assert!(res.headers().get("keep-alive").is_none());
    body_string(res).await;
    gw.stop().await.unwrap();
}
