//! L2 against a real Redis Cluster (`REDIS_CLUSTER_URLS`, comma-separated seed nodes, default
//! the three masters `.ci/run` starts on 127.0.0.1:7000-7002). Without one, these tests print a
//! notice and pass, unless `CI=true`.

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use serde_json::{Value, json};
use tower::Layer;
use tower_deepseek_cache::{CacheKey, CacheLayer};
use tower_deepseek_testkit::MockServer;

fn cluster_urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_owned()
        })
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

async fn cluster() -> Option<ClusterConnection> {
    let conn = async {
        let client = ClusterClient::new(cluster_urls()).ok()?;
        let mut conn = client.get_async_connection().await.ok()?;
        // A reachable node that is not (yet) a working cluster fails here.
        let _: Option<String> = conn.get("tdc-cluster-probe").await.ok()?;
        Some(conn)
    };
    match tokio::time::timeout(Duration::from_secs(3), conn).await {
        Ok(Some(c)) => Some(c),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("no Redis Cluster at {:?} and CI=true", cluster_urls());
            }
            eprintln!(
                "notice: no Redis Cluster at {:?}; cluster test skipped",
                cluster_urls()
            );
            None
        }
    }
}

fn layer(prefix: &str) -> CacheLayer {
    CacheLayer::builder()
        .redis_cluster(cluster_urls())
        .key_prefix(prefix)
        .redis_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn redis_key(prefix: &str, body: &Value) -> String {
    format!(
        "{prefix}:v1:{}",
        CacheKey::for_request(&post(body), body).to_hex()
    )
}

#[tokio::test]
async fn answers_spread_over_the_cluster_are_shared_by_instances() {
    let Some(mut conn) = cluster().await else {
        return;
    };
    let server = MockServer::start().await;
    let prefix = unique_prefix("cluster-shared");
    // Enough distinct keys that they land in slots of every master.
    let bodies: Vec<Value> = (0..24)
        .map(|i| chat_body(&format!("cluster prompt {i}"), json!({})))
        .collect();

    let a = layer(&prefix).layer(upstream(&server));
    for body in &bodies {
        assert_eq!(call(&a, post(body)).await.0, "miss");
    }
    let mut slots = std::collections::BTreeSet::new();
    for body in &bodies {
        let key = redis_key(&prefix, body);
        wait_for_key(&mut conn, &key).await;
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(
            ttl > 3_500_000 && ttl <= 3_600_000,
            "default L2 TTL is 60 min, got {ttl} ms"
        );
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        slots.insert(slot / (16384 / 3 + 1));
    }
    assert!(
        slots.len() >= 2,
        "the keys should fall in the slot ranges of several masters: {slots:?}"
    );

    // A second instance (its own, empty L1) is served every answer from the cluster.
    let b = layer(&prefix).layer(upstream(&server));
    for body in &bodies {
        let (xc, bytes) = call(&b, post(body)).await;
        assert_eq!(xc, "hit-l2");
        let text = body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap();
        assert_eq!(json_answer(&bytes).content, format!("Echo: {text}"));
    }
    assert_eq!(server.chat_count(), bodies.len());
    for body in &bodies {
        let _: () = conn.del(redis_key(&prefix, body)).await.unwrap();
    }
}

#[tokio::test]
async fn a_cut_stream_is_never_stored_in_the_cluster() {
    let Some(mut conn) = cluster().await else {
        return;
    };
    let server = MockServer::start().await;
    server.enqueue(tower_deepseek_testkit::Fault::cut_without_done(2));
    let prefix = unique_prefix("cluster-cut");
    let body = chat_body(
        "cut me",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let svc = layer(&prefix).layer(upstream(&server));
    let resp = tower::ServiceExt::oneshot(svc.clone(), post(&body))
        .await
        .unwrap();
    assert_eq!(x_cache(&resp), "miss");
    let _ = read_all(resp.into_body()).await; // ends early, maybe with an error
    // Give a (wrong) background write every chance to land before checking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exists: bool = conn.exists(redis_key(&prefix, &body)).await.unwrap();
    assert!(!exists, "an incomplete stream reached L2");
    // The complete answer that follows is stored.
    let (xc, _) = call(&svc, post(&body)).await;
    assert_eq!(xc, "miss");
    wait_for_key(&mut conn, &redis_key(&prefix, &body)).await;
    let _: () = conn.del(redis_key(&prefix, &body)).await.unwrap();
}
