//! RedisTokenStore against the real Redis (REDIS_URL, default redis://127.0.0.1:6379), and
//! against Redis that is down or never answers.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, ServiceExt};
use tower_deepseek_auth::OAuth2Config;
use tower_deepseek_auth::OAuth2Layer;
use tower_deepseek_auth::store::{RedisTokenStore, StoredToken, TokenStore};
use tower_deepseek_testkit::MockServer;

use support::*;

async fn server() -> MockServer {
    MockServer::builder()
        .oauth_client(CLIENT, SECRET)
        .require_auth(true)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_sharing_redis_cause_one_fetch() {
    let Some(url) = redis_url().await else { return };
    let server = server().await;
    let prefix = unique_prefix("shared");
    let layer = |_: u8| {
        let store = RedisTokenStore::open(&url)
            .unwrap()
            .key_prefix(prefix.clone());
        OAuth2Layer::builder(
            OAuth2Config::new(server.token_url(), CLIENT, SECRET),
            token_client(),
        )
        .store(store)
        .build()
        .unwrap()
    };
    let (a, b) = (layer(1), layer(2));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svc = if i % 2 == 0 {
            a.layer(api_client())
        } else {
            b.layer(api_client())
        };
        let uri = server.uri("/chat/completions");
        tasks.push(tokio::spawn(async move {
            svc.oneshot(chat_request(uri, "hi")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(server.token_fetches(), 1, "one fetch for both instances");

    // The stored token's TTL follows expires_in − margin (7200 − 600 s).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}token:{CLIENT}||");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 6_500_000 && ttl <= 6_600_000, "ttl {ttl}");
    let lock: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}lock:{CLIENT}||"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(lock.is_none(), "the fetch lock was released");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_store_round_trip_and_lock() {
    let Some(url) = redis_url().await else { return };
    let store = RedisTokenStore::open(&url)
        .unwrap()
        .key_prefix(unique_prefix("roundtrip"));
    assert!(store.get("k").await.unwrap().is_none());
    let token = StoredToken::new(
        SecretString::from("tok-redis"),
        std::time::SystemTime::now() + Duration::from_secs(60),
    );
    store
        .put("k", &token, Duration::from_secs(5))
        .await
        .unwrap();
    let back = store.get("k").await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), "tok-redis");
    let lock = store
        .try_lock("k", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .try_lock("k", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    store.unlock("k", lock).await.unwrap();
    let again = store.try_lock("k", Duration::from_secs(5)).await.unwrap();
    store.unlock("k", again.unwrap()).await.unwrap();
}

async fn serves_with_broken_redis(url: &str, label: &str) {
    let server = server().await;
    let store = RedisTokenStore::open(url)
        .unwrap()
        .key_prefix(unique_prefix(label));
    let layer = OAuth2Layer::builder(
        OAuth2Config::new(server.token_url(), CLIENT, SECRET),
        token_client(),
    )
    .store(store)
    .build()
    .unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        let resp = layer
            .layer(api_client())
            .oneshot(chat_request(server.uri("/chat/completions"), "hi"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(server.token_fetches(), 1, "fetched locally, once");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_redis_down_requests_are_still_served() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    serves_with_broken_redis(&format!("redis://127.0.0.1:{port}"), "down").await;
}

#[tokio::test]
async fn with_redis_accepting_but_silent_requests_are_still_served() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    serves_with_broken_redis(&format!("redis://{addr}"), "silent").await;
    hold.abort();
}
