//! [`ReviewLayer`]: the guide's quality metrics. A sampled share of calls is written, masked,
//! to a review sink with the request id that links it to its audit record; people score
//! calls ([`ReviewHandle::feedback`]) and [`Evaluator`]s score sampled calls automatically;
//! every score goes to a metrics histogram and to the same sink.
//!
//! # Order
//!
//! ```text
//! AuditLayer
//!   RedactLayer
//!     ReviewLayer      sees the masked request and the answer before placeholders are restored
//!       CacheLayer     (so cache hits are sampled too), RateLimitLayer, RetryLayer, ...
//! ```
//!
//! Below [`RedactLayer`](crate::RedactLayer), the review holds only masked text: the request
//! as the redactor sent it on, and the answer as it came from below, its placeholders still
//! placeholders. Above the cache, a cached answer is reviewed like any other. The layer also
//! works alone, but then it records what it sees: without a redactor above it, raw text.
//!
//! # Sampling
//!
//! [`SamplingRule`]s (route, model, tenant, each optional; first match wins; no match: not
//! sampled) give a fraction. A call is sampled when a point computed from its request id
//! (the first 53 bits of the id's SHA-256, in `[0, 1)`) is below that fraction, so every
//! instance of a fleet samples the same calls, and a retried call sent with the same id is
//! sampled alike. The request id is core's [`RequestId`] (set by the audit layer above, or
//! here, from `x-request-id` or new, and sent upstream).
//!
//! The request is read from the bytes the inner service reads (`Bytes` handles, no copy);
//! its model is read at the response head with a scan for `model` (or from core's
//! [`ModelHint`]), and a sampled request is parsed once with core's
//! [`ChatRequest`](tower_deepseek_core::chat::ChatRequest).
//!
//! # The answer
//!
//! Frames are forwarded as they come: the first byte is never delayed. A sampled answer is
//! assembled in passing: a JSON completion at its end, a stream event by event with core's
//! SSE parser (per choice: `content`, `reasoning_content`, tool calls with their arguments
//! joined, `finish_reason`; `usage`). What cannot be read is recorded as seen, with a
//! [`ReviewOutcome`]: `incomplete` (no `[DONE]`, a JSON body cut short), `not_json`, `error`
//! (an error status or in-band error, its text kept), `too_large` (over `max_body_bytes`),
//! `failed`, `cancelled`. A request body that is not a chat request is not kept (it may not
//! have been masked): the record says `request_outcome: "not_chat"`.
//!
//! # Records
//!
//! One JSON object per line, to any [`AuditSink`](crate::audit::AuditSink) (the audit
//! module's sinks: [`JsonlFileSink`](crate::audit::JsonlFileSink) with rotation, or the
//! user's own), written by a background thread: a call pays one enqueue into a bounded queue
//! (`queue_capacity`; when full, the record is dropped and counted, never waited for).
//!
//! - `{"type":"call","timestamp","request_id","tenant","route","model","status","outcome","latency_ms","request":{…},"answer":{"model","choices":[…],"usage"},"answer_text"}`
//! - `{"type":"score","timestamp","request_id","tenant","model","source":"human"|"evaluator","evaluator","score","label","comment"}`
//!
//! # Feedback
//!
//! [`ReviewHandle::feedback`] takes a [`Feedback`] (request id, a score on the 0–1 or 1–5
//! scale, a label, a comment) and the caller's tenant. The layer remembers every call that
//! passes it, sampled or not (request id → tenant and model, in a bounded index with a time
//! to live: `recent_calls`, `recent_call_ttl_ms`), so that a tenant may score only its own
//! recent calls ([`FeedbackError::UnknownCall`], [`FeedbackError::OtherTenant`]). Label and
//! comment are redacted like a prompt.
//!
//! # Metrics
//!
//! `deepseek_review_score{model,tenant,source}` (a histogram, 0 to 1; `source` is `human` or
//! `evaluator`), `deepseek_review_records_total{kind}`, `deepseek_review_dropped_total{what}`
//! (`record`, `evaluation`), `deepseek_review_sink_errors_total`,
//! `deepseek_review_invalid_scores_total`. Labels carry names, never keys or text.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_core::protocol::TenantId;
//! use tower_deepseek_redact::audit::WriterSink;
//! use tower_deepseek_redact::review::{Feedback, ReviewLayer, SamplingRule};
//! use tower_deepseek_redact::RedactLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let file = WriterSink::new(Vec::<u8>::new());
//! let review = ReviewLayer::builder()
//!     .rule(SamplingRule::new(1.0).tenant("team-a")) // every call of team-a
//!     .sink(file.clone())
//!     .build()?;
//! let handle = review.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(RedactLayer::new())
//!     .layer(review)
//!     .service_fn(|_req| async {
//!         let answer = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Noted: <CN_MOBILE_1>"},"finish_reason":"stop"}]}"#;
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(answer))))
//!     });
//! let mut req = Request::post("/chat/completions")
//!     .header("x-request-id", "call-1")
//!     .body(Full::new(Bytes::from(r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"call 13800138000"}]}"#)))?;
//! req.extensions_mut().insert(TenantId::new("team-a"));
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! let body = res.into_body().collect().await?.to_bytes();
//! assert!(body.ends_with(br#"13800138000"},"finish_reason":"stop"}]}"#)); // restored for the caller
//!
//! handle.feedback(Some(&TenantId::new("team-a")), &Feedback::new("call-1", 5.0).label("helpful"))?;
//! handle.flush().await?;
//! let lines = String::from_utf8(file.with_inner(|v| v.clone()))?;
//! assert!(lines.contains(r#""request_id":"call-1""#) && lines.contains("<CN_MOBILE_1>"));
//! assert!(!lines.contains("13800138000")); // the review holds masked text only
//! assert!(lines.contains(r#""type":"score""#) && lines.contains(r#""score":1.0"#));
//! # Ok(())
//! # }
//! ```

#[cfg(doc)]
use tower_deepseek_core::protocol::{ModelHint, RequestId};

mod answer;
mod body;
mod config;
mod evaluate;
mod future;
mod handle;
mod layer;
mod recent;
mod record;
mod sampler;
mod service;
mod writer;

pub use answer::{Answer, AnsweredChoice, AnsweredToolCall, ReviewOutcome};
pub use body::ResponseBody;
pub use config::{
    DEFAULT_EVALUATION_CONCURRENCY, DEFAULT_EVALUATION_QUEUE, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_RECENT_CALL_TTL, DEFAULT_RECENT_CALLS, ReviewConfig,
    SamplingRule,
};
pub use evaluate::{Evaluation, EvaluationFuture, Evaluator, JsonModeEvaluator};
pub use future::ResponseFuture;
pub use handle::{
    Feedback, FeedbackError, FeedbackReceipt, MAX_COMMENT_CHARS, MAX_LABEL_CHARS, ReviewHandle,
    ScoreScale,
};
pub use layer::{ReviewLayer, ReviewLayerBuilder};
pub use record::ReviewedCall;
pub use service::{RequestTap, Review, ReviewRequestBody};
