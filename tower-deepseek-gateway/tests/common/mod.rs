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

/// A `deepseek-gateway` binary running as a child process (killed when dropped): the one
/// helper the tests that run the real binary share.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Everything the process wrote to stderr so far (read in the background, so that the
    /// pipe never fills up).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// stdout after the `listening on` line.
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    config: Option<std::path::PathBuf>,
}

/// The `deepseek-gateway` binary of this build.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_deepseek-gateway");

impl GatewayProcess {
    /// Starts the binary on 127.0.0.1:0 in front of `upstream`, with `config` (TOML text,
    /// written to a temporary file; empty for none), the extra `args` and `env` (`RUST_LOG` is
    /// `warn` unless given), the upstream key in `DEEPSEEK_API_KEY`, and waits for its
    /// `listening on` line (at most 30 s).
    pub async fn spawn(upstream: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::process::Stdio;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

        let mut cmd = tokio::process::Command::new(GATEWAY_BIN);
        cmd.args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(args)
            .env("DEEPSEEK_API_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "warn")
            .env_remove("DEEPSEEK_GATEWAY_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut path = None;
        if !config.is_empty() {
            let p = std::env::temp_dir().join(format!(
                "deepseek-gateway-proc-{}-{:x}.toml",
                std::process::id(),
                rand_u64()
            ));
            std::fs::write(&p, config).unwrap();
            cmd.arg("--config").arg(&p);
            path = Some(p);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the gateway binary starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the gateway starts within 30 s")
            .unwrap();
        let Some(line) = line else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "the gateway exited before listening: {}",
                stderr.lock().unwrap()
            );
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        GatewayProcess {
            child,
            addr,
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout,
            config: path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The configuration file it was started with (to change it before a reload).
    pub fn config_path(&self) -> &std::path::Path {
        self.config
            .as_deref()
            .expect("started with a configuration")
    }

    /// Sends a signal with `kill` (`"-HUP"`, `"-TERM"`).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Waits (at most 10 s) for the process to exit and for the rest of its stderr.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the gateway exits within 10 s")
            .unwrap();
        if let Some(r) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        status
    }

    /// The next stdout line after `listening on` (`None` at its end).
    pub async fn next_stdout_line(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .expect("stdout ends or goes on")
            .unwrap()
    }

    /// What the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until stderr holds `what` after its first `from` bytes; returns
    /// where that occurrence ends, to wait for the next one from there.
    pub async fn wait_for_log(&self, what: &str, from: usize) -> usize {
        let start = std::time::Instant::now();
        loop {
            {
                let logs = self.stderr.lock().unwrap();
                if let Some(at) = logs.get(from..).and_then(|rest| rest.find(what)) {
                    return from + at + what.len();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no {what:?} in the log: {logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A random number (per call), for unique names.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A chat answer with a known usage: 10 prompt tokens (all cache misses) and 5 completion
/// tokens, 15 in all.
pub const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":10}}"#;

/// The test upstream: answers every request with [`ANSWER`] after `hold`, and records when
/// each call started and how many were in flight then (itself included).
#[derive(Clone)]
pub struct CountingUpstream {
    pub addr: SocketAddr,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    starts: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, usize)>>>,
}

/// Decrements the count when the call ends, or when its connection is dropped mid-call.
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl CountingUpstream {
    pub async fn start(hold: Duration) -> CountingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = CountingUpstream {
            addr: listener.local_addr().unwrap(),
            in_flight: std::sync::Arc::default(),
            starts: std::sync::Arc::default(),
        };
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let state = state.clone();
                        async move {
                            let now = state
                                .in_flight
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                + 1;
                            state
                                .starts
                                .lock()
                                .unwrap()
                                .push((std::time::Instant::now(), now));
                            let guard = InFlight(state.in_flight.clone());
                            tokio::time::sleep(hold).await;
                            drop(guard);
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        up
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    /// The most calls in flight at once among the calls that started in `from..to`.
    pub fn peak(&self, from: std::time::Instant, to: std::time::Instant) -> usize {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether something answers on the Redis address (skip locally when not, fail under CI).
pub async fn redis_available() -> bool {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://")
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let ok = matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(&hostport)
        )
        .await,
        Ok(Ok(_))
    );
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis is required under CI (REDIS_URL={url})"
        );
        eprintln!("notice: no Redis at {url}; skipping");
    }
    ok
}

/// Reads the rest of a body (with a bound), returning the text.
pub async fn rest(mut body: Incoming, mut text: String) -> String {
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("frames keep coming")
    {
        if let Ok(d) = frame.expect("the stream is not cut").into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    text
}

/// Waits for the first data frame of `body`.
pub async fn first_frame(body: &mut Incoming) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            return String::from_utf8(d.to_vec()).unwrap();
        }
    }
}
