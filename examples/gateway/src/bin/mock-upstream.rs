//! A DeepSeek-compatible mock upstream, for the load benchmark and local trials.
//!
//! - `mock-upstream`: the workspace's testkit (`MockServer`: answers derived from the request,
//!   every request recorded, scripted faults).
//! - `mock-upstream --fast`: a minimal fast upstream: a fixed chat completion for any
//!   `POST /chat/completions`, nothing recorded (to measure the gateway, not the mock).
//!
//! Prints `listening on http://127.0.0.1:PORT` (a free port), serves until Ctrl-C or SIGTERM.

use std::io::Write;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;

const ANSWER: &str = r#"{"id":"fast-1","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! I am fine, thank you."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":8,"total_tokens":16,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":8},"system_fingerprint":"fp_fast"}"#;

fn announce(url: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {url}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--fast") {
        let app = Router::new().route(
            "/chat/completions",
            post(|_body: Bytes| async { ([(CONTENT_TYPE, "application/json")], ANSWER) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        announce(&format!(
            "http://{}",
            listener.local_addr().expect("address")
        ));
        axum::serve(listener, app)
            .with_graceful_shutdown(example_gateway::shutdown_signal())
            .await
            .expect("serve");
        return;
    }
    let server = tower_deepseek_testkit::MockServer::start().await;
    announce(&server.url());
    example_gateway::shutdown_signal().await;
    server.shutdown().await;
}
