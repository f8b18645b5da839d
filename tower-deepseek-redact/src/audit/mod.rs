//! [`AuditLayer`]: one structured, tamper-evident record per call.
//!
//! # The record
//!
//! [`AuditRecord`] has, in this order: `timestamp` (RFC 3339, UTC, milliseconds), `request_id`,
//! `client_ip`, `tenant` and `key_id` (keyed hashes, never the raw id or key), `method`,
//! `endpoint` (the path, never the query), `model`, `prompt_hash` (HMAC-SHA-256 of the body
//! sent upstream), `status`, `outcome` (`ok`, a [`FailureClass`] label such as `rate_limited`,
//! or `cancelled`), `latency_ms`, `prompt_tokens`, `completion_tokens`, `cache_hit_tokens`,
//! `pii` (counts by type), `cache`, `retries`, `breaker`, then `cost` and `currency` when a cost
//! layer below priced the call, then `prev_hash` and `hash` when the hash chain is on. It never holds a prompt, an answer, a PII value or a secret.
//!
//! Where the values come from:
//!
//! - request id, client IP, tenant: core's [`RequestId`], [`ClientIp`] (else [`PeerAddr`]) and
//!   [`TenantId`] extensions; the request id also from the `x-request-id` header.
//! - key id: the `Authorization` header, hashed.
//! - prompt hash and PII counts: [`crate::RedactLayer`] below hands over the masked body it
//!   sent and its counts through a [`PromptRecorder`] in the request's extensions; without
//!   it, the body as this layer saw it is hashed (read in passing, not buffered twice).
//! - model, tokens, outcome: core's shared classifier ([`Classifier`] and its
//!   [`EosClassifier`] summary, streams included), falling back to the request's `model`.
//!   When a layer below classifies the same body and shares its outcome (core's
//!   [`SharedOutcome`]: the breaker does when this layer asks for call facts), that outcome is
//!   read at the body's end instead of the body being parsed a second time.
//! - cache status: the `x-cache` response header (the cache layer sets it for the caller too);
//!   retry count (retries, i.e. attempts − 1): core's [`Attempts`] response extension, set
//!   by the retry layer; breaker state: core's [`BreakerStatus`] extension, set by the breaker
//!   layer when this layer asks for it by inserting core's [`CollectCallFacts`] into the
//!   request; cost: core's [`CallCost`](tower_deepseek_core::protocol::CallCost) slot, filled
//!   by a cost layer below when the answer ends. Headers never carry these facts (see `tower_deepseek_core::protocol`).
//!
//! # When a record is written
//!
//! When the response body ends (a JSON answer read to its end, or a stream's last event),
//! when the inner service fails, or when the caller goes away first (the body or the future is
//! dropped: outcome `cancelled`). Exactly one record per call.
//!
//! An answer is never complete before its record is written: the record goes to the sinks
//! *before* the frame that completes the body is handed on (core's [`ObservedBody`] reports
//! the end as soon as the body below says it is ending, so a body with a `Content-Length` is
//! recorded before its last byte goes out, and a chunked or SSE body before its terminating
//! chunk), and for a call that fails before its response (an error a gateway turns into its
//! own answer), before the error is returned, so before any head exists.
//!
//! # Sinks, durability and failures
//!
//! Records go to every configured [`AuditSink`]: [`TracingSink`] (an event with target
//! `deepseek_audit`), [`JsonlFileSink`] (JSON Lines with size-based rotation), or
//! [`WriterSink`] around any [`std::io::Write`]. No sink keeps a record in a buffer: each
//! record is handed to the OS in one write of the whole line. [`JsonlFileSink`] then `fsync`s
//! on a background thread at an interval (default 1 s, `Duration::ZERO` for every record),
//! repairs a line torn by a crash when it opens, and carries the hash chain over restarts and
//! rotations: see its docs for the guarantees after `kill -9` and power loss.
//! [`AuditHandle::flush`] syncs at once (call it on shutdown).
//!
//! A sink that cannot take a record follows [`SinkFailurePolicy`]:
//!
//! - fail closed (default): the call fails. If its response has not begun, the layer returns
//!   [`AuditUnavailable`] (a gateway answers 503 with `Retry-After`); if the body is under
//!   way, it ends with [`AuditUnavailable`] in place of the frame that would have completed
//!   it, so the caller never receives the whole answer. New calls are refused with
//!   [`AuditUnavailable`] (counted in `deepseek_audit_refused_total`) until
//!   [`AuditSink::probe`] succeeds (for the file: a 4 KiB probe file can be written; one
//!   probe at a time, on the task of the call that probes).
//! - fail open: the answer is delivered; the loss is counted
//!   (`deepseek_audit_sink_errors_total`, [`AuditHandle::failed_writes`]) and logged with the
//!   error kind (never the record).
//!
//! # Hash chain
//!
//! With [`AuditLayerBuilder::hash_chain`], each record carries the hash of the previous one
//! (`prev_hash`) and its own `hash`: SHA-256 over the record's JSON line without its `hash`
//! member. Each sink has its own chain, which moves on only when the sink took the record (a
//! failed write leaves no gap), and starts from the sink's [`AuditSink::chain_tail`] (for
//! the file: the last record an earlier process wrote), else from zeros. [`verify_chain`]
//! reads a log and reports the first line that was edited, removed or reordered;
//! [`verify_chain_files`] checks one chain across rotated files, oldest first (the gateway
//! binary has it as `deepseek-gateway audit verify FILE...`).
//!
//! # Order
//!
//! Outermost: it measures the whole call and sees the final outcome. Put
//! [`RedactLayer`](crate::RedactLayer) right below it so that the prompt hash is the hash of
//! what really left.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_redact::audit::{AuditLayer, WriterSink};
//! use tower_deepseek_redact::RedactLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let log = WriterSink::new(Vec::<u8>::new());
//! let audit = AuditLayer::builder()
//!     .hmac_key(b"a secret of at least 16 bytes".to_vec())
//!     .sink(log.clone())
//!     .hash_chain(true)
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(audit)
//!     .layer(RedactLayer::new())
//!     .service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//!     });
//! let req = Request::post("/chat/completions")
//!     .body(Full::new(Bytes::from(r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"13800138000"}]}"#)))?;
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! res.into_body().collect().await?;
//! let line = String::from_utf8(log.with_inner(|v| v.clone()))?;
//! assert!(line.contains(r#""pii":{"CN_MOBILE":1}"#) && !line.contains("13800138000"));
//! # Ok(())
//! # }
//! ```

#[cfg(doc)]
use tower_deepseek_core::body::ObservedBody;
#[cfg(doc)]
use tower_deepseek_core::classify::{Classifier, EosClassifier, FailureClass, SharedOutcome};
#[cfg(doc)]
use tower_deepseek_core::protocol::{
    Attempts, BreakerStatus, ClientIp, CollectCallFacts, PeerAddr, RequestId, TenantId,
};

mod body;
mod chain;
mod config;
mod date;
mod error;
mod file;
mod future;
mod json;
mod layer;
mod record;
mod recorder;
mod service;
mod sink;

pub use body::ResponseBody;
pub use chain::{ChainError, VerifyFilesError, verify_chain, verify_chain_files};
pub use config::SinkFailurePolicy;
pub use date::rfc3339;
pub use error::AuditUnavailable;
pub use file::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_KEEP, DEFAULT_MAX_BYTES, JsonlFileSink, JsonlFileSinkBuilder,
};
pub use future::ResponseFuture;
pub use layer::{AuditHandle, AuditLayer, AuditLayerBuilder};
pub use record::AuditRecord;
pub use recorder::{AuditRequestBody, PromptRecorder, RequestTap};
pub use service::Audit;
pub use sink::{AuditSink, TracingSink, WriterSink};
