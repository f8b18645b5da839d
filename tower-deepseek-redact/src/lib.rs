//! Compliance layers for DeepSeek and OpenAI-compatible chat APIs: PII masking with restore in
//! streamed answers, tamper-evident audit records, and output filtering.
//!
//! - [`RedactLayer`]: finds personal data and secrets in every text field of a
//!   request ([`detect`]: CN mobile and landline numbers, resident ID cards, bank cards, e-mail,
//!   IPv4/6, passports, US SSNs, API keys, AWS keys, JWTs, private keys, passwords and tokens
//!   by context, webhooks, custom regexes; full-width digits included; each with a score and
//!   context words) and masks, hashes, blocks or replaces them with placeholders
//!   (`<CN_MOBILE_1>`) that are put back in the answer, JSON or SSE, even when a placeholder
//!   is split across chunks or events. Structural fields (`model`, `role`, ids, function
//!   names) and every byte outside a masked value stay byte-identical. It fails closed: a
//!   chat or FIM body is parsed whatever its `Content-Type`, and one it cannot parse (invalid
//!   JSON, not UTF-8, too deep, too large) is refused, never forwarded raw. The field list,
//!   and what other endpoints get, are in [`RedactLayer`]'s docs.
//! - [`AuditLayer`] ([`audit`]): one structured record per call (who, what, outcome, tokens,
//!   PII counts, prompt HMAC), to tracing, JSON Lines files with rotation or any writer, with an
//!   optional hash chain and [`audit::verify_chain`]. Never a prompt, answer, PII value or secret.
//! - [`ContentFilterLayer`] ([`filter`]): keyword lists and regexes on answers, streams included:
//!   mask, or block with a clear error.
//! - [`ReviewLayer`] ([`review`]): the guide's quality metrics. A share of calls (per route,
//!   model and tenant, decided from the request id) written masked to a review sink, streams
//!   assembled in passing; feedback scores ([`ReviewHandle::feedback`]) and automatic
//!   [`Evaluator`]s (run off the request path), into a histogram and the same sink.
//!
//! # Order
//!
//! ```text
//! AuditLayer          sees the caller's request and the final outcome
//!   ContentFilterLayer checks the text the caller will see
//!     RedactLayer      masks before anything below sees the request; restores on the way out
//!       ReviewLayer    samples the masked request and answer (optional)
//!         CacheLayer, RateLimitLayer, RetryLayer, CircuitBreakerLayer, auth, the HTTP client
//! ```
//!
//! Each layer also works alone.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_core::body::BufferedBody;
//! use tower_deepseek_redact::audit::TracingSink;
//! use tower_deepseek_redact::{AuditLayer, ContentFilterLayer, EntityType, Mode, RedactLayer, Redactor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let redactor = Redactor::builder()
//!     .mode(EntityType::CN_ID_CARD, Mode::Block) // refuse ID numbers outright
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(AuditLayer::builder().hmac_key(b"0123456789abcdef-audit".to_vec()).sink(TracingSink).build()?)
//!     .layer(ContentFilterLayer::builder().keywords(["internal only"]).build()?)
//!     .layer(RedactLayer::with_redactor(redactor))
//!     .service_fn(|req: Request<BufferedBody>| async move {
//!         // Stand-in for the HTTP client: answer with the (masked) user text.
//!         let v: serde_json::Value = serde_json::from_slice(req.body().bytes())?;
//!         let answer = serde_json::json!({"choices": [{"index": 0, "message": {
//!             "role": "assistant", "content": format!("Echo: {}", v["messages"][0]["content"].as_str().unwrap_or(""))
//!         }}]});
//!         Ok::<_, tower_deepseek_core::BoxError>(
//!             Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(answer.to_string())))?,
//!         )
//!     });
//! let req = Request::post("/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"call 138-0013-8000"}]}"#)))?;
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! let body = res.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains("Echo: call 138-0013-8000"));
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Client-side style: every layer returns [`BoxError`](tower_deepseek_core::BoxError); downcast
//! to [`PiiBlocked`] (answer 422), [`InvalidJsonBody`] (400; [`InvalidJsonBody::reason`] says
//! why),
//! [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) (413) or
//! [`audit::AuditUnavailable`] (503). No message names a value.
//!
//! A known rustc limitation applies as with tower's own `Timeout`: when the inner service's
//! error type is itself `BoxError`, an `async` block that awaits these layers' futures may fail
//! a `Send` check ("implementation of `From` is not general enough"); spawn the service's
//! future directly, or give the inner service a concrete error type.
//!
//! # Metrics
//!
//! `deepseek_redact_entities_total{entity}`, `deepseek_redact_blocked_total{entity}`,
//! `deepseek_redact_unparseable_total{action,reason}` (`refused` or `passed`; `syntax`,
//! `not_utf8` or `too_deep`),
//! `deepseek_audit_records_total`, `deepseek_audit_sink_errors_total`,
//! `deepseek_content_filter_total{action}`, and the review's (`deepseek_review_score{model,tenant,source}`
//! and its counters: see [`review`]). Labels carry types and names, never values.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
mod delta;
pub mod detect;
pub mod filter;
mod json;
mod redact;
mod redactor;
pub mod review;

pub use audit::{
    Audit, AuditHandle, AuditLayer, AuditLayerBuilder, AuditUnavailable, PromptRecorder,
    SinkFailurePolicy,
};
pub use detect::{Detection, Detectors, DetectorsBuilder, EntityType};
pub use filter::{
    ContentFilter, ContentFilterConfig, ContentFilterLayer, ContentFilterLayerBuilder, FilterAction,
};
pub use json::JsonPath;
pub use redact::{
    CustomDetectorConfig, InvalidJsonBody, InvalidJsonReason, NonJsonPolicy, Redact, RedactConfig,
    RedactLayer, ResponseBody as RedactResponseBody, ResponseFuture as RedactResponseFuture,
    UnparseablePolicy,
};
pub use redactor::{Mode, PiiBlocked, PiiCounts, RedactContext, Redactor, RedactorBuilder, Vault};
pub use review::{
    Evaluator, Feedback, FeedbackError, JsonModeEvaluator, Review, ReviewConfig, ReviewHandle,
    ReviewLayer, ReviewLayerBuilder, SamplingRule,
};
pub use tower_deepseek_core::config::ConfigError;
