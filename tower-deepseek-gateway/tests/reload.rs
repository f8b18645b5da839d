//! Reloading the client keys and limits with a request in flight: in-process through
//! `Gateway::reloader`, and through the real binary on SIGHUP.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tower_deepseek_gateway::{Gateway, GatewayConfig, Options};
use tower_deepseek_testkit::MockServer;

fn stream_body() -> serde_json::Value {
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    json!({"model": "deepseek-chat", "stream": true,
           "messages": [{"role": "user", "content": words.join(" ")}]})
}

fn plain_body() -> serde_json::Value {
    json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]})
}

/// Only `OTHER_KEY` is allowed, one request a minute, refused at once beyond.
fn only_other_key() -> String {
    format!(
        "[rate_limit]\nmax_wait_ms = 0\n\n[[keys]]\nsha256 = \"{}\"\ntenant = \"beta\"\nrequests_per_minute = 1\n",
        sha256_hex(OTHER_KEY)
    )
}

fn only_client_key() -> String {
    format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
        sha256_hex(CLIENT_KEY)
    )
}

async fn chat_status(url: &str, key: &str) -> u16 {
    let res = send(&client(), chat_request(url, Some(key), plain_body())).await;
    let status = res.status().as_u16();
    let _ = body_string(res).await;
    status
}

#[tokio::test]
async fn a_reload_swaps_keys_and_limits_and_the_request_in_flight_completes() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(20))
        .start()
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::new(
        Options::new()
            .listen(listener.local_addr().unwrap())
            .upstream(upstream.url())
            .config(GatewayConfig::from_toml(&only_client_key()).unwrap())
            .api_key(UPSTREAM_KEY),
    )
    .unwrap();
    let reloader = gateway.reloader();
    let gw = Running::spawn(gateway, listener);
    let url = gw.url("/v1/chat/completions");

    // A stream with the old key is in flight ...
    let res = send(
        &client(),
        chat_request(&url, Some(CLIENT_KEY), stream_body()),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = first_frame(&mut body).await;

    // ... while the keys and limits change.
    reloader
        .reload(&GatewayConfig::from_toml(&only_other_key()).unwrap())
        .unwrap();
    assert_eq!(
        chat_status(&url, CLIENT_KEY).await,
        401,
        "the old key is out"
    );
    assert_eq!(chat_status(&url, OTHER_KEY).await, 200, "the new key is in");
    assert_eq!(
        chat_status(&url, OTHER_KEY).await,
        429,
        "with its new limit"
    );

    // A broken configuration changes nothing.
    let broken = GatewayConfig::from_toml("[[keys]]\nsha256 = \"not-a-hash\"\n").unwrap();
    let err = reloader.reload(&broken).unwrap_err();
    assert!(err.to_string().contains("keys[0].sha256"), "{err}");
    assert_eq!(chat_status(&url, CLIENT_KEY).await, 401);
    assert_eq!(
        chat_status(&url, OTHER_KEY).await,
        429,
        "the same limiter goes on"
    );

    // A reload with the limiter's settings unchanged keeps its window.
    reloader
        .reload(&GatewayConfig::from_toml(&only_other_key()).unwrap())
        .unwrap();
    assert_eq!(chat_status(&url, OTHER_KEY).await, 429);

    let text = rest(body, first).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        text.matches("chat.completion.chunk").count() >= 40,
        "{text}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_without_dropping_a_stream() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(30))
        .start()
        .await;
    let mut gw = GatewayProcess::spawn(
        &upstream.url(),
        &only_client_key(),
        &[],
        &[("RUST_LOG", "info")],
    )
    .await;
    let path = gw.config_path().to_owned();
    let url = gw.url("/v1/chat/completions");

    let res = send(
        &client(),
        chat_request(&url, Some(CLIENT_KEY), stream_body()),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = first_frame(&mut body).await;

    std::fs::write(&path, only_other_key()).unwrap();
    gw.signal("-HUP");
    let seen = gw.wait_for_log("configuration reloaded", 0).await;
    assert_eq!(chat_status(&url, CLIENT_KEY).await, 401);
    assert_eq!(chat_status(&url, OTHER_KEY).await, 200);

    // A broken file (with a secret in it): the running configuration stays, the log says
    // why without the secret.
    std::fs::write(
        &path,
        "[oauth2]\ntoken_url = \"https://auth.example/token\"\nclient_id = \"gw\"\nclient_secret = \"sk-oauth-secret-0042\"\nscope = [\n",
    )
    .unwrap();
    gw.signal("-HUP");
    gw.wait_for_log("reload failed", seen).await;
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(gw.logs().contains(&format!("{file}:")), "{}", gw.logs());
    assert_eq!(chat_status(&url, CLIENT_KEY).await, 401);
    assert_eq!(
        chat_status(&url, OTHER_KEY).await,
        429,
        "the reloaded limit holds"
    );

    let text = rest(body, first).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    gw.signal("-TERM");
    let exit = gw.exit().await;
    assert!(exit.success(), "{exit:?}");
    let seen = gw.logs();
    for secret in ["sk-oauth-secret-0042", UPSTREAM_KEY, CLIENT_KEY, OTHER_KEY] {
        assert!(!seen.contains(secret), "{secret} in the logs: {seen}");
    }
}
