//! Shared helpers of the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_deepseek_auth::oauth2::ReplayBody;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;

pub const SECRET: &str = "cs-very-secret-3f9a1c";
pub const CLIENT: &str = "it-client";

pub type TokenClient = Client<HttpConnector, BufferedBody>;
pub type ApiClient = Client<HttpConnector, ReplayBody<Full<Bytes>>>;

pub fn token_client() -> TokenClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn api_client() -> ApiClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn chat_request(uri: http::Uri, text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": text}],
    });
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn body_string<B>(resp: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(Into::into)
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A `MakeWriter` that keeps every formatted tracing line.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[cfg(feature = "redis")]
/// The Redis URL, or `None` (with a notice) when no Redis answers; under `CI=true` a missing
/// Redis fails the test.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let ok = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ok).await {
        Ok(Some(())) => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("no Redis answers at {url} and CI=true")
        }
        _ => {
            eprintln!("notice: no Redis at {url}; skipping this Redis test");
            None
        }
    }
}

#[cfg(feature = "redis")]
pub fn unique_prefix(test: &str) -> String {
    format!("tdauth-test:{test}:{:016x}:", fastrand::u64(..))
}
