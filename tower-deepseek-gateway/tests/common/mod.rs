//! Helpers shared by the gateway's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_deepseek_gateway::{Gateway, GatewayConfig, Options, StartError};

pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0001";
pub const CLIENT_KEY: &str = "sk-client-acme-0001";
pub const OTHER_KEY: &str = "sk-client-beta-0002";

pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A config with two client keys (`acme`, and an unnamed one), short retries.
pub fn config_with_keys(extra: &str) -> GatewayConfig {
    let text = format!(
        r#"
[server]
drain_timeout_ms = 5000

[[keys]]
sha256 = "{}"
tenant = "acme"

[[keys]]
sha256 = "{}"

[retry]
max_attempts = 2

{extra}
"#,
        sha256_hex(CLIENT_KEY),
        sha256_hex(OTHER_KEY)
    );
    GatewayConfig::from_toml(&text).unwrap()
}

pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), StartError>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers the graceful shutdown.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers the shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.trigger_shutdown();
        self.task.take().unwrap().await.unwrap()
    }
}

/// Starts the gateway in-process on 127.0.0.1:0 in front of `upstream`.
pub async fn start(
    upstream: &str,
    config: GatewayConfig,
    audit: Option<&std::path::Path>,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = Options::new()
        .listen(addr)
        .upstream(upstream)
        .config(config)
        .api_key(UPSTREAM_KEY);
    if let Some(p) = audit {
        options = options.audit_log(p);
    }
    let gateway = Gateway::new(options).unwrap();
    Running::spawn(gateway, listener)
}

impl Running {
    /// Serves `gateway` on `listener` in a task.
    pub fn spawn(gateway: Gateway, listener: tokio::net::TcpListener) -> Running {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listener, async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn chat_request(url: &str, key: Option<&str>, body: serde_json::Value) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the gateway answers within 10 s")
        .unwrap()
}

pub async fn body_string(res: Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("the body ends within 10 s")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub async fn get(client: &TestClient, url: &str, key: Option<&str>) -> Response<Incoming> {
    let mut b = Request::get(url);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}
