//! Start-up rules and graceful shutdown, in-process and through the real binary (SIGTERM).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::process::Command;
use tower_deepseek_testkit::MockServer;

fn stream_body() -> serde_json::Value {
    json!({"model": "deepseek-chat", "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "a b c d e f g h i j k l"}]})
}

#[tokio::test]
async fn shutdown_during_a_stream_lets_it_finish() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(40))
        .start()
        .await;
    let mut gw = start(&upstream.url(), config_with_keys(""), None).await;
    let res = send(
        &client(),
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            stream_body(),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = first_frame(&mut body).await;

    gw.trigger_shutdown();
    let stopped_at = Instant::now();
    // No new connections once shutdown began.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());

    let text = rest(body, first).await;
    assert!(text.contains("\"usage\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once the stream is done")
        .unwrap()
        .unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn drain_deadline_bounds_shutdown() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(500))
        .start()
        .await;
    let text = format!(
        "[server]\ndrain_timeout_ms = 200\n[[keys]]\nsha256 = \"{}\"\n",
        sha256_hex(CLIENT_KEY)
    );
    let cfg = tower_deepseek_gateway::GatewayConfig::from_toml(&text).unwrap();
    let mut gw = start(&upstream.url(), cfg, None).await;
    let res = send(
        &client(),
        chat_request(
            &gw.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            stream_body(),
        ),
    )
    .await;
    let mut body = res.into_body();
    first_frame(&mut body).await;
    gw.trigger_shutdown();
    let t = Instant::now();
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("the drain deadline ends serve")
        .unwrap()
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    drop(body);
}

#[tokio::test]
async fn binary_drains_a_stream_on_sigterm() {
    let upstream = MockServer::builder()
        .api_key(UPSTREAM_KEY)
        .stream_chunk_delay(Duration::from_millis(40))
        .start()
        .await;
    let rust_log = "info,tower_deepseek_gateway=trace,tower_deepseek_auth=trace,tower_deepseek_cache=trace,\
                    tower_deepseek_retry=trace,tower_deepseek_breaker=trace,tower_deepseek_redact=trace,\
                    deepseek_audit=trace";
    let mut gw = GatewayProcess::spawn(&upstream.url(), "", &[], &[("RUST_LOG", rust_log)]).await;

    let res = send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), None, stream_body()),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = first_frame(&mut body).await;

    gw.signal("-TERM");

    let text = rest(body, first).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let exit = gw.exit().await;
    assert!(exit.success(), "{exit:?}");
    assert_eq!(gw.next_stdout_line().await, None, "exactly one stdout line");
    let stderr = gw.logs();
    assert!(stderr.contains("no client keys configured"), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    for secret in [UPSTREAM_KEY, CLIENT_KEY, "13800138000", "reach me"] {
        assert!(!stderr.contains(secret), "{secret} in the logs: {stderr}");
    }
}

#[tokio::test]
async fn binary_refuses_a_public_address_without_keys() {
    let out = Command::new(GATEWAY_BIN)
        .args(["--listen", "0.0.0.0:0", "--upstream", "http://127.0.0.1:9"])
        .env_remove("DEEPSEEK_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no `listening on` line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without client keys"),
        "{stderr}"
    );
}

#[tokio::test]
async fn binary_rejects_a_broken_config_file() {
    let path =
        std::env::temp_dir().join(format!("deepseek-gateway-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[retry]\nmax_atempts = 3\n").unwrap();
    let out = Command::new(GATEWAY_BIN)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_atempts"), "{stderr}");
}
