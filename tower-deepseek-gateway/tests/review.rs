//! Quality review through the gateway, in-process over loopback: `[review]` samples every
//! call of one tenant and none of another; the review file holds exactly that tenant's calls,
//! masked, streams whole; `POST /v1/feedback` refuses unknown calls (404), another tenant's
//! calls (403), malformed bodies (400) and unknown keys (401), and records accepted scores
//! in `/metrics` and in the review file.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tower_deepseek_testkit::MockServer;

const EMAIL: &str = "li.si@example.cn";
const PHONE: &str = "13912345678";
const SECRET: &str = "sk-9c1b3d5e7f9a0b2c4d6e8f0a1b4f8e2a";

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-review-{name}-{}-{}",
        std::process::id(),
        tower_deepseek::core::meta::RequestId::generate().as_str()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("review.jsonl")
}

fn feedback(url: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn error_code(res: hyper::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = res.status().as_u16();
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    (status, v["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn one_tenant_sampled_masked_and_feedback_checked() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let path = temp_file("tenants");
    let cfg = config_with_keys(&format!(
        r#"
[review]
path = "{}"
fsync_interval_ms = 0
[[review.rules]]
tenant = "acme"
fraction = 1.0
[[review.rules]]
fraction = 0.0
"#,
        path.display()
    ));
    let gw = start(&upstream.url(), cfg, None).await;
    let client = client();
    let prompt = format!("mail {EMAIL} or call {PHONE}; my key is {SECRET}");
    let mut sampled = BTreeSet::new();
    let mut other_ids = Vec::new();
    for (key, n) in [(CLIENT_KEY, 3), (OTHER_KEY, 3)] {
        for i in 0..n {
            let stream = i % 2 == 1;
            let body = json!({"model": "deepseek-chat", "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": prompt}]});
            let res = send(
                &client,
                chat_request(&gw.url("/v1/chat/completions"), Some(key), body),
            )
            .await;
            assert_eq!(res.status(), 200);
            let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
            let text = body_string(res).await;
            assert!(text.contains(EMAIL), "restored for the caller: {text}");
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"));
            }
            if key == CLIENT_KEY {
                sampled.insert(id);
            } else {
                other_ids.push(id);
            }
        }
    }
    let url = gw.url("/v1/feedback");
    let first = sampled.iter().next().unwrap().clone();
    // Unknown request id, another tenant's call, malformed, out of range, no key.
    let (s, c) = error_code(
        send(
            &client,
            feedback(&url, Some(CLIENT_KEY), r#"{"request_id":"nope","score":1}"#),
        )
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (404, "unknown_request_id"));
    let body = format!(r#"{{"request_id":"{first}","score":1}}"#);
    let (s, c) = error_code(send(&client, feedback(&url, Some(OTHER_KEY), &body)).await).await;
    assert_eq!((s, c.as_str()), (403, "not_your_call"));
    let (s, _) =
        error_code(send(&client, feedback(&url, Some(CLIENT_KEY), "{not json")).await).await;
    assert_eq!(s, 400);
    let body = format!(r#"{{"request_id":"{first}","score":9}}"#);
    let (s, c) = error_code(send(&client, feedback(&url, Some(CLIENT_KEY), &body)).await).await;
    assert_eq!((s, c.as_str()), (400, "invalid_feedback"));
    let (s, _) = error_code(send(&client, feedback(&url, Some("sk-unknown"), &body)).await).await;
    assert_eq!(s, 401);
    // Accepted: a five-point score with a comment holding a phone number; and a score for
    // the other tenant's own (unsampled) call.
    let body = json!({"request_id": first, "score": 2, "label": "too_long",
        "comment": format!("call me back on {PHONE}")});
    let res = send(&client, feedback(&url, Some(CLIENT_KEY), &body.to_string())).await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
    assert_eq!(v["score"], 0.25);
    let body = json!({"request_id": other_ids[0], "score": 0.9});
    let res = send(&client, feedback(&url, Some(OTHER_KEY), &body.to_string())).await;
    assert_eq!(res.status(), 200);

    let metrics = body_string(get(&client, &gw.url("/metrics"), None).await).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("deepseek_review_score_count")
                && l.contains(r#"tenant="acme""#)
                && l.contains(r#"source="human""#)
        })
        .unwrap_or_else(|| panic!("no acme human score in /metrics:\n{metrics}"));
    assert!(
        line.contains(r#"model="deepseek-chat""#) && line.ends_with(" 1"),
        "{line}"
    );
    assert!(!metrics.contains(CLIENT_KEY) && !metrics.contains(&sha256_hex(CLIENT_KEY)));

    gw.stop().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for raw in [EMAIL, PHONE, SECRET] {
        assert!(!text.contains(raw), "the review file holds {raw:?}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["type"] == "call")
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(calls, sampled, "exactly acme's calls");
    for l in lines.iter().filter(|l| l["type"] == "call") {
        assert_eq!(l["tenant"], "acme");
        assert_eq!(l["outcome"], "complete", "{l}");
        let content = l["answer"]["choices"][0]["content"].as_str().unwrap();
        assert!(content.starts_with("Echo: mail <EMAIL_1>"), "{content}");
        assert!(
            l["request"]["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("<CN_MOBILE_1>")
        );
    }
    let scores: Vec<&Value> = lines.iter().filter(|l| l["type"] == "score").collect();
    assert_eq!(scores.len(), 2, "{scores:?}");
    assert_eq!(scores[0]["request_id"], first.as_str());
    assert_eq!(scores[0]["score"], 0.25);
    assert!(scores[0]["comment"].as_str().unwrap().contains("CN_MOBILE"));
    assert_eq!(scores[1]["request_id"], other_ids[0].as_str());
    upstream.shutdown().await;
}

#[tokio::test]
async fn without_a_review_table_feedback_is_not_served() {
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = start(&upstream.url(), config_with_keys(""), None).await;
    let client = client();
    let res = send(
        &client,
        feedback(
            &gw.url("/v1/feedback"),
            Some(CLIENT_KEY),
            r#"{"request_id":"x","score":1}"#,
        ),
    )
    .await;
    assert_eq!(res.status(), 404);
    gw.stop().await.unwrap();
    upstream.shutdown().await;
}
