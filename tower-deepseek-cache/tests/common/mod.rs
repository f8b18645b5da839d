//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::sse::SseParser;
use tower_deepseek_testkit::MockServer;

/// A hyper-util client that sends each request to `server`, keeping the path.
///
/// Its error is the client's own error type: with `BoxError` as the inner error, rustc cannot
/// prove the spawned futures `Send` (a known higher-ranked lifetime limitation that
/// `tower::util::MapErr` shares).
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, BufferedBody>,
    base: String,
}

pub fn upstream(server: &MockServer) -> Upstream {
    Upstream {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: server.url(),
    }
}

impl tower::Service<Request<BufferedBody>> for Upstream {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BufferedBody>) -> Self::Future {
        let uri: http::Uri = format!("{}{}", self.base, req.uri().path())
            .parse()
            .unwrap();
        *req.uri_mut() = uri;
        self.client.request(req)
    }
}

pub fn chat_body(text: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "deepseek-chat",
        "temperature": 0,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

pub fn post(body: &Value) -> Request<BufferedBody> {
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(BufferedBody::from(body.to_string()))
        .unwrap()
}

pub async fn read_all<B>(body: B) -> Result<Bytes, BoxError>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    body.collect().await.map(|c| c.to_bytes())
}

/// What a stream (or a JSON answer) says, independent of chunking.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: BTreeMap<u64, (String, String, String)>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub done: bool,
    pub events: usize,
}

pub fn sse_answer(bytes: &Bytes) -> Answer {
    let mut parser = SseParser::new();
    let mut a = Answer::default();
    for ev in parser.feed(bytes).unwrap() {
        a.events += 1;
        if ev.is_done() {
            a.done = true;
            continue;
        }
        let v: Value = serde_json::from_slice(ev.data()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            a.usage = Some(u.clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let d = &c["delta"];
            if let Some(s) = d["content"].as_str() {
                a.content.push_str(s);
            }
            if let Some(s) = d["reasoning_content"].as_str() {
                a.reasoning.push_str(s);
            }
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let slot = a
                    .tool_calls
                    .entry(t["index"].as_u64().unwrap())
                    .or_default();
                if let Some(id) = t["id"].as_str() {
                    slot.0 = id.to_owned();
                }
                slot.1
                    .push_str(t["function"]["name"].as_str().unwrap_or(""));
                slot.2
                    .push_str(t["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                a.finish_reason = Some(f.to_owned());
            }
        }
    }
    a
}

pub fn json_answer(bytes: &Bytes) -> Answer {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let c = &v["choices"][0];
    let m = &c["message"];
    let mut a = Answer {
        content: m["content"].as_str().unwrap_or("").to_owned(),
        reasoning: m["reasoning_content"].as_str().unwrap_or("").to_owned(),
        finish_reason: c["finish_reason"].as_str().map(str::to_owned),
        usage: v.get("usage").cloned(),
        done: true,
        ..Answer::default()
    };
    for (i, t) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
        a.tool_calls.insert(
            t.get("index").and_then(Value::as_u64).unwrap_or(i as u64),
            (
                t["id"].as_str().unwrap_or("").to_owned(),
                t["function"]["name"].as_str().unwrap_or("").to_owned(),
                t["function"]["arguments"].as_str().unwrap_or("").to_owned(),
            ),
        );
    }
    a
}

/// The same answer, ignoring what only a stream has.
pub fn same_answer(a: &Answer, b: &Answer) -> bool {
    a.content == b.content
        && a.reasoning == b.reasoning
        && a.tool_calls == b.tool_calls
        && a.finish_reason == b.finish_reason
        && a.usage == b.usage
}

pub fn x_cache<B>(resp: &Response<B>) -> String {
    resp.headers()["x-cache"].to_str().unwrap().to_owned()
}

pub async fn call<S>(svc: &S, req: Request<BufferedBody>) -> (String, Bytes)
where
    S: tower::Service<
            Request<BufferedBody>,
            Response = Response<tower_deepseek_cache::ResponseBody<hyper::body::Incoming>>,
            Error = BoxError,
        > + Clone,
{
    let resp = svc.clone().oneshot(req).await.unwrap();
    let xc = x_cache(&resp);
    let bytes = read_all(resp.into_body()).await.unwrap();
    (xc, bytes)
}

/// A Redis key prefix of its own for one test run.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tdc-test:{test}:{}:{nanos}", std::process::id())
}

/// The L2 write is in the background: wait (bounded) until `key` exists, on one node or a
/// cluster.
pub async fn wait_for_key<C>(conn: &mut C, key: &str)
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    use redis::AsyncCommands;
    let start = std::time::Instant::now();
    loop {
        let exists: bool = conn.exists(key).await.unwrap();
        if exists {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "L2 write never landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
