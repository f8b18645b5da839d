//! Helpers shared by the integration tests: a hyper-util legacy client over loopback.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_deepseek_testkit::MockServer;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh HTTP/1.1 client (its own connection pool).
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A fresh HTTP/2 (prior knowledge) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn chat_body(text: &str) -> Value {
    json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]})
}

pub fn stream_body(text: &str) -> Value {
    json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": text}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

pub fn request(
    server: &MockServer,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(server.uri(path))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

pub fn post_json(server: &MockServer, path: &str, body: &Value) -> Request<Full<Bytes>> {
    request(server, Method::POST, path, body.to_string())
}

pub fn get(server: &MockServer, path: &str) -> Request<Full<Bytes>> {
    request(server, Method::GET, path, Bytes::new())
}

pub fn with_bearer(mut req: Request<Full<Bytes>>, token: &str) -> Request<Full<Bytes>> {
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    req
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    client.request(req).await.expect("request failed")
}

pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body()
        .collect()
        .await
        .expect("body failed")
        .to_bytes()
}

pub async fn body_json(resp: Response<Incoming>) -> Value {
    let bytes = body_bytes(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Every data frame with its arrival time, and the body error if the body failed.
pub async fn read_frames(
    resp: Response<Incoming>,
) -> (Vec<(Instant, Bytes)>, Option<hyper::Error>) {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            None => return (out, None),
            Some(Err(err)) => return (out, Some(err)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.push((Instant::now(), data));
                }
            }
        }
    }
}

pub fn concat(frames: &[(Instant, Bytes)]) -> String {
    let mut all = Vec::new();
    for (_, f) in frames {
        all.extend_from_slice(f);
    }
    String::from_utf8(all).unwrap()
}

/// The payloads of the `data:` events of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The JSON chunks of an SSE body (without `[DONE]`); panics on invalid JSON.
pub fn sse_chunks(body: &str) -> Vec<Value> {
    sse_data(body)
        .into_iter()
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}")))
        .collect()
}

/// The concatenated `delta.content` of chat chunks.
pub fn streamed_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect()
}

pub fn assert_error_shape(v: &Value, message: &str) {
    let e = &v["error"];
    assert_eq!(e["message"], message, "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e["param"].is_null(), "{v}");
    assert!(e["code"].is_string(), "{v}");
}
