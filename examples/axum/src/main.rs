//! Adding tower-deepseek layers to an existing axum application.
//!
//! ```sh
//! cargo run -p example-axum            # offline: an in-process mock stands in for DeepSeek
//! DEEPSEEK_API_KEY=sk-... cargo run -p example-axum
//! curl -s localhost:3000/ask -H 'content-type: application/json' -d '{"question":"Hi, I am at 138-0013-8000"}'
//! ```
//!
//! Two ways to use the layers in an app you already have:
//!
//! 1. **As a client** in your handlers: build the stack once around the upstream client, box it
//!    (`BoxCloneSyncService`), keep it in the router's state, and call it from any handler
//!    (`POST /ask`).
//! 2. **As a route**: mount the stack itself as a route service (`POST /v1/chat/completions`),
//!    so that your app also serves an OpenAI-compatible endpoint. Layers return errors
//!    (`BoxError`); axum routes must be infallible, so `HandleErrorLayer` turns each error into
//!    an OpenAI-style JSON response with [`tower_deepseek::error::error_response`].

use std::net::SocketAddr;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::auth::BearerAuthLayer;
use tower_deepseek::breaker::CircuitBreakerLayer;
use tower_deepseek::cache::CacheLayer;
use tower_deepseek::client::{BaseUrlLayer, ClientConfig, upstream_client};
use tower_deepseek::core::meta::MetadataConfig;
use tower_deepseek::meta::RequestMetadataLayer;
use tower_deepseek::redact::RedactLayer;
use tower_deepseek::retry::RetryLayer;
use tower_deepseek::{BoxError, ServiceBuilderExt};

/// The DeepSeek client kept in the app's state: any request body in, an axum body out.
type DeepSeek = BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Body>, BoxError>;

#[derive(Clone)]
struct AppState {
    deepseek: DeepSeek,
}

/// The client stack: redaction, cache, retries, breaker, credential, base URL, pooled client.
fn deepseek_client(base_url: &str, api_key: String) -> Result<DeepSeek, BoxError> {
    let svc = ServiceBuilder::new()
        .map_response(|res: http::Response<_>| res.map(Body::new))
        .redact_layer(RedactLayer::new())
        .cache_layer(CacheLayer::builder().build()?)
        .retry_layer(RetryLayer::builder().build()?)
        .circuit_breaker_layer(CircuitBreakerLayer::builder().name("deepseek").build()?)
        .bearer_auth_layer(BearerAuthLayer::new(api_key)?)
        .base_url_layer(BaseUrlLayer::new(base_url)?)
        .service(upstream_client(&ClientConfig::default()));
    Ok(BoxCloneSyncService::new(svc))
}

/// Your application: its own routes, plus the two ways of using the layers.
fn app(base_url: &str, api_key: String) -> Result<Router, BoxError> {
    let deepseek = deepseek_client(base_url, api_key.clone())?;

    // 2. The stack as an OpenAI-compatible route (the same layers, over axum's body type).
    let proxy = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            tower_deepseek::error::error_response(&*err).map(Body::new)
        }))
        .map_response(|res: http::Response<_>| res.map(Body::new))
        .request_metadata_layer(RequestMetadataLayer::new(MetadataConfig::new()))
        .redact_layer(RedactLayer::new())
        .retry_layer(RetryLayer::builder().build()?)
        .circuit_breaker_layer(
            CircuitBreakerLayer::builder()
                .name("deepseek-route")
                .build()?,
        )
        .bearer_auth_layer(BearerAuthLayer::new(api_key)?.overwrite(true))
        .base_url_layer(BaseUrlLayer::new(base_url)?.replace_absolute(true))
        .service(upstream_client(&ClientConfig::default()));

    Ok(Router::new()
        .route("/", get(|| async { "my existing app" }))
        .route("/ask", post(ask))
        .route_service("/v1/chat/completions", proxy)
        .with_state(AppState { deepseek }))
}

#[derive(serde::Deserialize)]
struct Ask {
    question: String,
}

/// 1. A handler of your own that calls DeepSeek through the layered client.
async fn ask(State(state): State<AppState>, Json(ask): Json<Ask>) -> impl IntoResponse {
    let body = serde_json::json!({
        "model": "deepseek-chat",
        "temperature": 0,
        "messages": [{"role": "user", "content": ask.question}],
    });
    let req = http::Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    match state.deepseek.oneshot(req).await {
        Ok(res) if res.status().is_success() => {
            let bytes = match res.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let answer = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Json(serde_json::json!({ "answer": answer })).into_response()
        }
        Ok(res) => res.into_response(),
        Err(err) => tower_deepseek::error::error_response(&*err)
            .map(Body::new)
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (base, key, _mock) = match std::env::var("DEEPSEEK_API_KEY") {
        Ok(key) if !key.trim().is_empty() => (
            "https://api.deepseek.com".to_owned(),
            key.trim().to_owned(),
            None,
        ),
        _ => {
            let mock = tower_deepseek_testkit::MockServer::builder()
                .api_key("sk-axum-example")
                .start()
                .await;
            eprintln!(
                "(no DEEPSEEK_API_KEY: using the mock server at {})",
                mock.url()
            );
            (mock.url(), "sk-axum-example".to_owned(), Some(mock))
        }
    };
    let app = app(&base, key)?;
    let addr: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_deepseek_testkit::{Fault, MockServer};

    async fn call(app: &Router, req: http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn handler_uses_the_layered_client() {
        let mock = MockServer::builder().api_key("sk-test-axum").start().await;
        let app = app(&mock.url(), "sk-test-axum".into()).unwrap();
        let req = http::Request::post("/ask")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"question":"call me at 138-0013-8000"}"#))
            .unwrap();
        let (status, v) = call(&app, req).await;
        assert_eq!(status, 200);
        // The model only saw a placeholder; the answer has the number back.
        assert_eq!(v["answer"], "Echo: call me at 138-0013-8000");
        let upstream = mock.requests_to("/chat/completions")[0].json().unwrap();
        assert_eq!(
            upstream["messages"][0]["content"],
            "call me at <CN_MOBILE_1>"
        );
    }

    #[tokio::test]
    async fn route_proxies_and_maps_errors() {
        let mock = MockServer::builder().api_key("sk-test-axum").start().await;
        let app = app(&mock.url(), "sk-test-axum".into()).unwrap();
        let body = r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}"#;
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("authorization", "Bearer client-key-never-forwarded")
            .body(Body::from(body))
            .unwrap();
        let (status, v) = call(&app, req).await;
        assert_eq!(status, 200);
        assert_eq!(v["choices"][0]["message"]["content"], "Echo: hi");
        let seen = &mock.requests_to("/v1/chat/completions")[0];
        assert_eq!(seen.bearer(), Some("sk-test-axum"));
        assert!(seen.header("x-request-id").is_some());

        // 402 is never retried and comes back as the upstream said it.
        mock.enqueue(Fault::status(402));
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, v) = call(&app, req).await;
        assert_eq!(status, 402);
        assert_eq!(v["error"]["message"], "Insufficient Balance");
        assert_eq!(mock.requests_to("/v1/chat/completions").len(), 2);

        // A connection reset after the request was sent is not retried (it may bill twice):
        // HandleErrorLayer turns the error into an OpenAI-style 502.
        mock.enqueue(Fault::reset_before_headers());
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, v) = call(&app, req).await;
        assert_eq!(status, 502);
        assert_eq!(v["error"]["code"], "bad_gateway");
    }
}
