//! `--redis`: a second gateway (empty L1) answers from the first one's L2 entry.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tower_deepseek_gateway::{Gateway, Options};
use tower_deepseek_testkit::MockServer;

async fn start_with_redis(
    upstream: &str,
    prefix: &str,
    audit: Option<&std::path::Path>,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = config_with_keys(&format!(
        "[cache]\nkey_prefix = \"{prefix}\"\nredis_timeout_ms = 500\n"
    ));
    let mut options = Options::new()
        .listen(addr)
        .upstream(upstream)
        .config(cfg)
        .api_key(UPSTREAM_KEY)
        .redis(redis_url());
    if let Some(path) = audit {
        options = options.audit_log(path);
    }
    let gateway = Gateway::new(options).unwrap();
    assert!(
        gateway.layers().contains(&"cache_l1_l2"),
        "{:?}",
        gateway.layers()
    );
    Running::spawn(gateway, listener)
}

#[tokio::test]
async fn a_second_gateway_hits_the_shared_l2() {
    if !redis_available().await {
        return;
    }
    let upstream = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let prefix = format!(
        "deepseek-gateway-test-{}-{}",
        std::process::id(),
        fastrand_u64()
    );
    let dir = std::env::temp_dir().join(format!("{prefix}-audit"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("b.jsonl");
    let a = start_with_redis(&upstream.url(), &prefix, None).await;
    let b = start_with_redis(&upstream.url(), &prefix, Some(&log)).await;
    let client = client();
    let body = json!({"model": "deepseek-chat", "temperature": 0,
        "messages": [{"role": "user", "content": "shared across the fleet"}]});
    let call = |gw: &Running| {
        send(
            &client,
            chat_request(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                body.clone(),
            ),
        )
    };
    let res = call(&a).await;
    assert_eq!(res.headers()["x-cache"], "miss");
    body_string(res).await;
    // The L2 write happens in the background: wait for it (bounded).
    let mut seen = String::new();
    for _ in 0..100 {
        let res = call(&b).await;
        seen = res.headers()["x-cache"].to_str().unwrap().to_owned();
        let v: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Echo: shared across the fleet"
        );
        if seen == "hit-l2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "hit-l2");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // The L2 hit's audit record says `ok`, not `cancelled` (it is served with a
    // `Content-Length`, which hyper's server stops reading at).
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let l2: Vec<&Value> = records.iter().filter(|r| r["cache"] == "hit-l2").collect();
    assert_eq!(l2.len(), 1, "{records:#?}");
    assert_eq!(l2[0]["outcome"], "ok", "{records:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
