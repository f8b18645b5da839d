//! A custom DeepSeek client with the full tower-deepseek stack, printing a streamed chat as it
//! arrives.
//!
//! ```sh
//! cargo run -p example-client -- "Write a haiku about tower middleware"
//! ```
//!
//! With `DEEPSEEK_API_KEY` set it talks to `https://api.deepseek.com` (or `DEEPSEEK_BASE_URL`);
//! without it, it starts the testkit's mock server in-process, so it runs offline.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::auth::BearerAuthLayer;
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
use tower_deepseek::core::classify::{ClassifiedResponse, Classifier};
use tower_deepseek::core::meta::MetadataConfig;
use tower_deepseek::core::sse::SseParser;
use tower_deepseek::meta::RequestMetadataLayer;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::retry::RetryLayer;
use tower_deepseek::retry::rate_limit::RateLimitLayer;
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::{BoxError, ServiceBuilderExt};
use tower_deepseek_testkit::MockServer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();

    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.is_empty() {
        "Explain in two sentences why retries must stop once a stream has started.".to_owned()
    } else {
        prompt
    };

    // Where to send: the real API with a key, else an in-process mock.
    let (key, base, _mock) = match std::env::var("DEEPSEEK_API_KEY") {
        Ok(key) if !key.trim().is_empty() => {
            let base = std::env::var("DEEPSEEK_BASE_URL")
                .unwrap_or_else(|_| "https://api.deepseek.com".to_owned());
            (key.trim().to_owned(), base, None)
        }
        _ => {
            let mock = MockServer::builder()
                .api_key("sk-offline-example")
                .stream_chunk_delay(Duration::from_millis(60))
                .start()
                .await;
            eprintln!(
                "(no DEEPSEEK_API_KEY: using the mock server at {})",
                mock.url()
            );
            ("sk-offline-example".to_owned(), mock.url(), Some(mock))
        }
    };

    // The recommended stack, outermost first.
    let client = ServiceBuilder::new()
        .request_metadata_layer(RequestMetadataLayer::new(MetadataConfig::new()))
        .redact_layer(RedactLayer::new())
        .cache_layer(CacheLayer::builder().build()?)
        .rate_limit_layer(RateLimitLayer::builder().build()?)
        .retry_layer(RetryLayer::builder().build()?)
        .timeout_layer(
            TimeoutLayer::builder()
                .first_token(Duration::from_secs(120))
                .idle(Duration::from_secs(60))
                .build()?,
        )
        .circuit_breaker_layer(CircuitBreakerLayer::builder().name("deepseek").build()?)
        .bearer_auth_layer(BearerAuthLayer::new(key)?)
        .base_url_layer(BaseUrlLayer::new(&base)?)
        .service(upstream_client(&ClientConfig::default()));

    let body = serde_json::json!({
        "model": std::env::var("DEEPSEEK_MODEL").unwrap_or_else(|_| "deepseek-chat".to_owned()),
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": prompt}],
    });
    let req = http::Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;

    let started = Instant::now();
    let res = client.oneshot(req).await?;
    let status = res.status();
    if !status.is_success() {
        let text = res.into_body().collect().await?.to_bytes();
        return Err(format!(
            "upstream answered {status}: {}",
            String::from_utf8_lossy(&text)
        )
        .into());
    }

    // Print content as it arrives; the classifier tells at the end whether the stream was complete.
    let ClassifiedResponse::RequiresEos(mut outcome) =
        Classifier::new().classify_head(status, res.headers())
    else {
        return Err("expected a streamed answer".into());
    };
    let mut parser = SseParser::new();
    let mut body = res.into_body();
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        outcome.on_data(chunk);
        parser.push(chunk, |event| {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(event.data()) else {
                return;
            };
            let delta = &v["choices"][0]["delta"];
            if let Some(r) = delta["reasoning_content"].as_str() {
                let _ = write!(stdout, "\x1b[2m{r}\x1b[0m");
            }
            if let Some(c) = delta["content"].as_str() {
                let _ = write!(stdout, "{c}");
            }
            let _ = stdout.flush();
        })?;
    }
    println!();
    match outcome.finish() {
        Ok(()) => {
            let usage = outcome.summary().usage.clone().unwrap_or_default();
            eprintln!(
                "done in {:.2} s: {} prompt tokens ({} from DeepSeek's cache), {} completion tokens",
                started.elapsed().as_secs_f64(),
                usage.prompt_tokens,
                usage.cache_hit_tokens(),
                usage.completion_tokens
            );
            Ok(())
        }
        Err(class) => Err(format!("the stream ended badly: {class}").into()),
    }
}
