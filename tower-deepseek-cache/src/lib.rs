//! A two-level response cache for DeepSeek and OpenAI-compatible chat APIs: L1 in memory
//! (moka), L2 in Redis, canonical SHA-256 keys, single-flight, and SSE record and replay.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_deepseek_cache::CacheLayer;
//! use tower_deepseek_core::body::BufferedBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let layer = CacheLayer::builder()
//!     // .redis_url("redis://127.0.0.1:6379")   // L2, optional
//!     .build()?;
//! let upstream = service_fn(|_req: Request<BufferedBody>| async {
//!     let body = r#"{"id":"1","object":"chat.completion","created":1,"model":"deepseek-chat",
//!         "choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().header("content-type", "application/json").body(BufferedBody::from(body)).unwrap(),
//!     )
//! });
//! let mut svc = ServiceBuilder::new().layer(layer).service(upstream);
//!
//! let request = || {
//!     Request::post("https://api.deepseek.com/chat/completions")
//!         .header("content-type", "application/json")
//!         .body(BufferedBody::from(
//!             r#"{"model":"deepseek-chat","temperature":0,"messages":[{"role":"user","content":"Hi"}]}"#,
//!         ))
//!         .unwrap()
//! };
//! // (The request type names which `Service` impl `ready` is for.)
//! let first = ServiceExt::<Request<BufferedBody>>::ready(&mut svc).await?.call(request()).await?;
//! assert_eq!(first.headers()["x-cache"], "miss");
//! # use http_body_util::BodyExt;
//! let _ = first.into_body().collect().await?; // stored once the answer is complete
//! let second = ServiceExt::<Request<BufferedBody>>::ready(&mut svc).await?.call(request()).await?;
//! assert_eq!(second.headers()["x-cache"], "hit-l1");
//! # Ok(())
//! # }
//! ```
//!
//! # What is cached
//!
//! Only `POST` requests to a chat (`…/chat/completions`) or FIM/text (`…/completions`)
//! endpoint with a JSON object body, and by default only with `"temperature": 0` (an absent
//! temperature means DeepSeek's default of 1). Other temperatures opt in through
//! [`CacheLayerBuilder::cache_nonzero_temperature`] or per request with [`CacheOptions`].
//!
//! Only complete, successful answers are stored: a 2xx JSON completion where every choice has
//! a `finish_reason`, or an SSE stream that reached `data: [DONE]`, both judged by core's
//! shared classifier as well (in-band errors, `insufficient_system_resource`, empty or cut
//! bodies are never stored). Errors are never stored.
//!
//! Request `Cache-Control: no-store` (or [`CacheOptions::bypass`]) skips the cache;
//! `no-cache` (or [`CacheOptions::refresh`]) goes upstream and replaces the entry. Every
//! response carries `x-cache: hit-l1 | hit-l2 | miss | bypass`.
//!
//! # Keys
//!
//! See [`key`]: SHA-256 over a schema version, the method and path, the tenant scope and the
//! canonical body (sorted keys, no whitespace, numbers by value, `stream` and `stream_options`
//! removed). The scope is the request's [`TenantId`](tower_deepseek_core::meta::TenantId),
//! else its `Authorization` header (hashed, never stored), else anonymous: one tenant never
//! reads another's answer. Redis keys are `<prefix>:v1:<hex digest>`.
//!
//! # Streams
//!
//! A streaming miss is forwarded frame by frame as it arrives, nothing held back, and recorded
//! in passing (content, `reasoning_content`, `tool_calls` fragments by index, `finish_reason`,
//! `logprobs`, `usage`). Once it reaches `[DONE]` it is stored in one normalised form that
//! replays either as SSE (for a `stream: true` request: a role chunk, the reasoning, the
//! content, one chunk per tool call, the finish chunk, the usage chunk when
//! `stream_options.include_usage` is set, and `[DONE]`) or as a JSON completion; a stored JSON
//! answer replays as SSE too. A replay is one body frame holding these events: the original
//! delta boundaries are not kept, the text they carry is.
//!
//! # Single-flight
//!
//! Identical cacheable misses that arrive while one is in flight (same key, same response
//! shape: stream or not, usage chunk or not) do not go upstream: they follow the first one
//! (the leader) live. Once the leader's response head arrives, a background task reads the
//! upstream body and publishes each chunk as it arrives; every caller, the leader's included,
//! reads the published chunks at its own pace, and a caller that joins late first receives
//! what was already produced. Streaming followers get the stream as it is produced, not a
//! replay after the fact, and a slow caller never holds back another. If the leader's caller
//! drops its body mid-answer, the task keeps reading for the others (and stores the answer if
//! it completes); when every caller has left, the task stops and the upstream request is
//! cancelled. If the leader fails before its response head (an error from the inner service,
//! or its caller gives up), the followers start over and one of them becomes the new leader:
//! no request is lost. An error response (a 4xx/5xx head) is shared with the followers like
//! any other answer, and never stored. A caller that received part of a stream whose upstream
//! then broke gets the same break, as an
//! [`IncompleteResponse`](tower_deepseek_core::error::IncompleteResponse) body error.
//! Requests with `Cache-Control: no-cache` never join a flight. Trailers of the upstream body
//! are not passed on (chat APIs send none). Without a tokio runtime the leader's caller reads
//! the upstream body itself and followers advance at its pace.
//!
//! # L1 and L2
//!
//! L1 is a `moka` cache bounded by bytes (each entry weighed by its rendered size), with
//! TinyLFU admission and a TTL (5 minutes by default), checked on tokio's clock. L2 is Redis
//! (feature `redis`, default on): a reconnecting `ConnectionManager` for one node or a
//! `ClusterConnection` for Redis Cluster ([`CacheLayerBuilder::redis_cluster`]); `rediss://` and
//! `user:password@` work through the URL. TTL 60 minutes by default. Redis is fail-open:
//! every operation has a short time limit (100 ms by default), an error or timeout is a miss,
//! counted in `deepseek_cache_redis_errors_total`, and L2 is then skipped for
//! [`CacheLayerBuilder::redis_retry`] so that a dead Redis costs at most one time limit per retry
//! period. Writes to Redis happen in the background, never on the response path. An L2 hit
//! is promoted to L1.
//!
//! # Order
//!
//! In the recommended stack the cache sits below audit and redaction (it keys and stores
//! masked requests and answers) and above rate limiting, retry, breaker and auth: a hit
//! touches nothing below. It buffers the request body (limit [`CacheLayerBuilder::max_request_bytes`],
//! a [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) error over it), so the inner
//! service receives `Request<BufferedBody>`, cheap to replay for a retry layer below. If
//! auth is below the cache (as recommended), no `Authorization` header is seen: multi-tenant
//! gateways must set a [`TenantId`](tower_deepseek_core::meta::TenantId).
//!
//! # Errors
//!
//! `BoxError`: the inner service's errors unchanged, or [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge)
//! and the request body's own errors. Redis never causes an error.
//!
//! When the inner service's error type is itself `BoxError`, rustc may fail to prove a
//! `tokio::spawn`ed call future `Send` ("implementation of `From` is not general enough"):
//! a compiler limitation with higher-ranked lifetimes that `tower::util::MapErr` shares. An
//! inner service with a concrete error type (hyper-util's client error, for one) avoids it.
//!
//! # Metrics and logs
//!
//! See [`metrics`] for names. Tracing events use the target `tower_deepseek_cache` and carry
//! only the hex key, never a prompt, an answer or a credential.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod entry;
mod flight;
pub mod key;
#[cfg(feature = "redis")]
mod l2;
pub mod metrics;
mod options;
mod record;

pub use crate::cache::{
    Cache, CacheConfig, CacheLayer, CacheLayerBuilder, ConfigError, ResponseBody, ResponseFuture,
    X_CACHE,
};
pub use crate::key::{CacheKey, Scope};
pub use crate::options::CacheOptions;
