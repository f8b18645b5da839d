//! A DeepSeek-compatible mock upstream, for the gateway's load benchmark and local trials.
//!
//! - `mock-upstream`: the testkit's [`MockServer`](tower_deepseek_testkit::MockServer) (answers
//!   derived from the request, every request recorded, scripted faults).
//! - `mock-upstream --fast`: a minimal fast upstream: a fixed chat completion for any
//!   `POST .../chat/completions`, nothing recorded (to measure the gateway, not the mock).
//!
//! Prints `listening on http://127.0.0.1:PORT` (a free port), serves until Ctrl-C or SIGTERM.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"id":"fast-1","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! I am fine, thank you."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":8,"total_tokens":16,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":8},"system_fingerprint":"fp_fast"}"#;

fn announce(url: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {url}");
    let _ = out.flush();
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn fast(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_chat = req.method() == Method::POST && req.uri().path().ends_with("/chat/completions");
    // Read the request to its end, as a real upstream does.
    let _ = req.into_body().collect().await;
    let mut resp = if is_chat {
        let mut r = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
        r.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    } else {
        Response::new(Full::new(Bytes::new()))
    };
    if !is_chat {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(resp)
}

async fn serve_fast() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    announce(&format!(
        "http://{}",
        listener.local_addr().expect("address")
    ));
    let builder = auto::Builder::new(TokioExecutor::new());
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service_fn(fast))
                        .await;
                });
            }
        }
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--fast") {
        serve_fast().await;
        return;
    }
    let server = tower_deepseek_testkit::MockServer::start().await;
    announce(&server.url());
    shutdown_signal().await;
    server.shutdown().await;
}
