//! A tour of every tower-deepseek layer, offline, in under a minute.
//!
//! ```sh
//! cargo run -p example-tour
//! ```
//!
//! Without `DEEPSEEK_API_KEY` it starts the testkit's DeepSeek-compatible mock server in this
//! process and shows, step by step, what each layer does: the credential it injects, a 429
//! backed off and a 502 retried, the breaker opening and recovering, a cache hit, PII masked
//! upstream and restored in the answer, audit records, and a streamed answer printed as it is
//! produced. With `DEEPSEEK_API_KEY` set, it sends one streamed chat through the full stack to
//! the real API instead.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::auth::BearerAuthLayer;
use tower_deepseek::breaker::{CircuitBreakerLayer, State};
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::{BaseUrlLayer, ClientConfig, UpstreamClient, upstream_client};
use tower_deepseek::core::sse::SseParser;
use tower_deepseek::redact::audit::WriterSink;
use tower_deepseek::redact::{AuditLayer, RedactLayer};
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::{Attempts, RetryLayer};
use tower_deepseek_testkit::{Fault, MockServer};

const TOUR_KEY: &str = "sk-tour-0123456789abcdef";

fn client<B>() -> UpstreamClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    upstream_client(&ClientConfig::default())
}

fn chat(content: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": stream},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content}
        ]
    });
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request")
}

async fn text<B>(res: Response<B>) -> Result<String, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn answer_of(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| json.to_owned())
}

fn section(n: u32, title: &str) {
    println!("\n── {n}. {title} ──────────────────────────────────────────");
}

/// Shows only the first characters of a credential.
fn masked(secret: &str) -> String {
    let head: String = secret.chars().take(7).collect();
    format!("{head}…({} chars)", secret.len())
}

/// An in-memory audit sink the tour can print from.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn take_lines(&self) -> Vec<String> {
        let mut buf = self.0.lock().expect("not poisoned");
        let text = String::from_utf8_lossy(&buf).into_owned();
        buf.clear();
        text.lines().map(str::to_owned).collect()
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    match std::env::var("DEEPSEEK_API_KEY") {
        Ok(key) if !key.trim().is_empty() => live(key.trim().to_owned()).await,
        _ => offline().await,
    }
}

async fn offline() -> Result<(), BoxError> {
    let started = Instant::now();
    println!(
        "tower-deepseek tour (offline: no DEEPSEEK_API_KEY, using the in-process mock server)"
    );
    let server = MockServer::builder().api_key(TOUR_KEY).start().await;
    println!("mock DeepSeek API listening on {}", server.url());
    let base = BaseUrlLayer::new(&server.url())?;

    // 1. Credentials.
    section(1, "BearerAuthLayer injects the API key");
    let auth = BearerAuthLayer::new(TOUR_KEY)?;
    println!("layer: {auth:?}");
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(base.clone())
        .service(client::<Full<Bytes>>());
    let res = svc
        .oneshot(Request::get("/models").body(Full::new(Bytes::new()))?)
        .await?;
    let seen = server
        .requests()
        .last()
        .and_then(|r| r.bearer().map(str::to_owned));
    println!("GET /models -> {}", res.status());
    println!(
        "the upstream received `Authorization: Bearer {}` (marked sensitive, never logged)",
        masked(seen.as_deref().unwrap_or("<none>"))
    );

    // 2. Retries.
    section(
        2,
        "RetryLayer: a 429 backed off, then a 502 retried at once",
    );
    server.enqueue(Fault::status(429).header("retry-after", "1"));
    server.enqueue(Fault::status(502));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().build()?)
        .layer(auth.clone())
        .layer(base.clone())
        .service(client());
    let t = Instant::now();
    let res = svc.oneshot(chat("What is tower?", false)).await?;
    let attempts = res.extensions().get::<Attempts>().cloned();
    println!(
        "POST /chat/completions -> {} after {:.1} s",
        res.status(),
        t.elapsed().as_secs_f64()
    );
    if let Some(a) = attempts {
        let failures: Vec<&str> = a.failures().iter().map(|f| f.as_str()).collect();
        println!(
            "attempts: {} (failed: {}); the 429 said Retry-After: 1, so the layer waited at least 1 s",
            a.count(),
            failures.join(", ")
        );
    }
    println!("answer: {}", answer_of(&text(res).await?));

    // 3. Circuit breaker.
    section(3, "CircuitBreakerLayer opens on failures and recovers");
    let breaker = CircuitBreakerLayer::builder()
        .name("tour")
        .count_based_window(4)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(50.0)
        .wait_duration_in_open(Duration::from_millis(800))
        .permitted_calls_in_half_open(2)
        .build()?;
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(auth.clone())
        .layer(base.clone())
        .service(client::<Full<Bytes>>());
    for _ in 0..4 {
        server.enqueue(Fault::status(503));
    }
    for i in 1..=4 {
        let res = svc.ready().await?.call(chat("hello", false)).await?;
        let _ = text(res).await?;
        println!("call {i}: upstream 503 -> breaker {:?}", handle.state());
    }
    let before = server.chat_count();
    match svc.ready().await?.call(chat("hello", false)).await {
        Ok(res) => println!("unexpected: {}", res.status()),
        Err(e) => println!("call 5: rejected without reaching the upstream: {e}"),
    }
    assert_eq!(server.chat_count(), before, "an open breaker sends nothing");
    tokio::time::sleep(Duration::from_millis(850)).await;
    println!("after the 0.8 s wait: breaker {:?}", handle.state());
    for i in 6..=7 {
        let res = svc.ready().await?.call(chat("hello", false)).await?;
        let status = res.status();
        let _ = text(res).await?;
        println!("call {i} (probe): {status} -> breaker {:?}", handle.state());
    }
    assert_eq!(handle.state(), State::Closed);

    // 4. Cache.
    section(4, "CacheLayer answers a repeated prompt from memory");
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::builder().build()?)
        .layer(auth.clone())
        .layer(base.clone())
        .service(client());
    for i in 1..=2 {
        let before = server.chat_count();
        let t = Instant::now();
        let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
            .await?
            .call(chat("Name three rivers.", false))
            .await?;
        let x_cache = res.headers().get("x-cache").cloned();
        let body = text(res).await?;
        println!(
            "request {i}: x-cache: {}, {} upstream call(s), {:.2} ms: {}",
            x_cache
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            server.chat_count() - before,
            t.elapsed().as_secs_f64() * 1000.0,
            answer_of(&body)
        );
    }

    // 5. Redaction, 6. audit.
    section(
        5,
        "RedactLayer masks PII upstream and restores it in the answer",
    );
    let audit_buf = SharedBuf::default();
    let audit = AuditLayer::builder()
        .hmac_key(b"tour-audit-hmac-key-0123456789".to_vec())
        .hash_chain(true)
        .sink(WriterSink::new(audit_buf.clone()))
        .build()?;
    // Records are buffered and flushed in batches (and on shutdown); the tour flushes to show them.
    let audit_handle = audit.handle();
    let mut svc = ServiceBuilder::new()
        .layer(audit.clone())
        .layer(RedactLayer::new())
        .layer(auth.clone())
        .layer(base.clone())
        .service(client());
    let prompt = "My phone is 138-0013-8000 and my ID is 11010519491231002X.";
    println!("caller sends:      {prompt}");
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await?
        .call(chat(prompt, false))
        .await?;
    let body = text(res).await?;
    let upstream_saw = server
        .requests()
        .last()
        .and_then(|r| r.json())
        .and_then(|v| v["messages"][1]["content"].as_str().map(str::to_owned))
        .unwrap_or_default();
    println!("upstream receives: {upstream_saw}");
    println!("caller gets back:  {}", answer_of(&body));

    section(
        6,
        "AuditLayer writes one record per call (no prompt, no PII)",
    );
    audit_handle.flush()?;
    for line in audit_buf.take_lines() {
        println!("{line}");
    }

    // 7. Streaming through the full stack.
    section(7, "The full stack streams an answer as it is produced");
    let slow = MockServer::builder()
        .api_key(TOUR_KEY)
        .stream_chunk_delay(Duration::from_millis(120))
        .start()
        .await;
    let breaker = CircuitBreakerLayer::builder().name("deepseek").build()?;
    let svc = ServiceBuilder::new()
        .layer(audit.clone())
        .layer(RedactLayer::new())
        .layer(CacheLayer::builder().build()?)
        .layer(RateLimitLayer::builder().build()?)
        .layer(RetryLayer::builder().build()?)
        .layer(breaker)
        .layer(auth.clone())
        .layer(BaseUrlLayer::new(&slow.url())?)
        .service(client());
    let t = Instant::now();
    let res = svc
        .oneshot(chat(
            "Stream a short greeting to 138-0013-8000 please",
            true,
        ))
        .await?;
    println!(
        "head after {:.0} ms: {} (x-cache: {})",
        t.elapsed().as_secs_f64() * 1000.0,
        res.status(),
        res.headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    );
    let mut body = res.into_body();
    let mut parser = SseParser::new();
    let mut first_token: Option<Duration> = None;
    print!("tokens:");
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let mut pieces = Vec::new();
        parser.push(data, |event| {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(event.data()) {
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    pieces.push(c.to_owned());
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    pieces.push(format!(" [usage: {} tokens]", u["total_tokens"]));
                }
            }
        })?;
        for p in pieces {
            first_token.get_or_insert_with(|| t.elapsed());
            print!("{p}");
            std::io::stdout().flush()?;
        }
    }
    println!(
        "\nfirst token after {:.0} ms, stream complete after {:.0} ms: tokens were forwarded as produced",
        first_token.unwrap_or_default().as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    audit_handle.flush()?;
    for line in audit_buf.take_lines() {
        println!("audit: {line}");
    }

    println!(
        "\ntour finished in {:.1} s. Next: `cargo run -p tower-deepseek-gateway -- --help`.",
        started.elapsed().as_secs_f64()
    );
    slow.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// With a real key: one streamed chat through the recommended stack to api.deepseek.com.
async fn live(key: String) -> Result<(), BoxError> {
    println!("tower-deepseek tour (live: DEEPSEEK_API_KEY is set, talking to api.deepseek.com)");
    let audit_buf = SharedBuf::default();
    let svc = ServiceBuilder::new()
        .layer(
            AuditLayer::builder()
                .hmac_key(b"tour-audit-hmac-key-0123456789".to_vec())
                .sink(WriterSink::new(audit_buf.clone()))
                .build()?,
        )
        .layer(RedactLayer::new())
        .layer(CacheLayer::builder().build()?)
        .layer(RetryLayer::builder().build()?)
        .layer(CircuitBreakerLayer::builder().name("deepseek").build()?)
        .layer(BearerAuthLayer::new(key)?)
        .layer(BaseUrlLayer::new("https://api.deepseek.com")?)
        .service(client());
    let res = svc
        .oneshot(chat("In one sentence: what is a tower Layer?", true))
        .await?;
    println!("status: {}", res.status());
    let mut body = res.into_body();
    let mut parser = SseParser::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        parser.push(data, |event| {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(event.data()) {
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    print!("{c}");
                }
            }
        })?;
        std::io::stdout().flush()?;
    }
    println!();
    for line in audit_buf.take_lines() {
        println!("audit: {line}");
    }
    Ok(())
}
