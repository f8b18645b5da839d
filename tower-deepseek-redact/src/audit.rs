//! [`AuditLayer`]: one structured, tamper-evident record per call.
//!
//! # The record
//!
//! [`AuditRecord`] has, in this order: `timestamp` (RFC 3339, UTC, milliseconds), `request_id`,
//! `client_ip`, `tenant` and `key_id` (keyed hashes, never the raw id or key), `method`,
//! `endpoint` (the path, never the query), `model`, `prompt_hash` (HMAC-SHA-256 of the body
//! sent upstream), `status`, `outcome` (`ok`, a [`FailureClass`] label such as `rate_limited`,
//! or `cancelled`), `latency_ms`, `prompt_tokens`, `completion_tokens`, `cache_hit_tokens`,
//! `pii` (counts by type), `cache`, `retries`, `breaker`, then `prev_hash` and `hash` when the
//! hash chain is on. It never holds a prompt, an answer, a PII value or a secret.
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
//!   retry count (retries, i.e. attempts − 1): core's
//!   [`UpstreamAttempts`] response extension, set
//!   by the retry layer; breaker state: core's
//!   [`BreakerStatus`] extension, set by the breaker
//!   layer. This layer asks for both by inserting core's [`CollectCallFacts`] into the request
//!   (without it those layers skip the work). Without them, the `x-retry-attempts` and `x-breaker-state` response headers of an
//!   upstream gateway are read (values are kept only if they are short tokens of
//!   `[A-Za-z0-9_-]`).
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
//! binary has it as `example-gateway audit verify FILE...`).
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};
use tower_deepseek_core::classify::{
    ClassifiedResponse, Classifier, EosClassifier, FailureClass, ResponseSummary, SharedOutcome,
};
use tower_deepseek_core::meta::{
    BreakerStatus, ClientIp, CollectCallFacts, PeerAddr, RequestId, TenantId, UpstreamAttempts,
    X_REQUEST_ID,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::ConfigError;
use crate::redactor::PiiCounts;

mod chain;
mod file;

pub use chain::{ChainError, VerifyFilesError, verify_chain, verify_chain_files};
pub use file::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_KEEP, DEFAULT_MAX_BYTES, JsonlFileSink, JsonlFileSinkBuilder,
};

/// Where audit records go. Implementations must be cheap and must not block for long: `write`
/// runs when a response ends, on the task that polls it, before the caller gets the last byte.
///
/// A sink that returns `Ok` from [`write`](Self::write) has taken the record: it must not hold
/// it in a buffer that nothing flushes (the layer's promise is that an answer is never
/// complete before its record was written; see the [module docs](self)).
pub trait AuditSink: Send + Sync + 'static {
    /// Writes one record: a JSON object on one line, without the trailing newline.
    ///
    /// # Errors
    ///
    /// Any I/O error; the layer applies its [`SinkFailurePolicy`]. A sink that fails must not
    /// keep part of the record (no torn line).
    fn write(&self, record: &[u8]) -> io::Result<()>;

    /// Makes the records written so far durable (for a file: `fsync`).
    ///
    /// # Errors
    ///
    /// Any I/O error.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// After a failure, whether the sink can take records again: under
    /// [`SinkFailurePolicy::FailClosed`] the layer refuses calls until this succeeds. Default:
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    ///
    /// The sink still cannot take records.
    fn probe(&self) -> io::Result<()> {
        self.flush()
    }

    /// The `hash` of the last record the sink already holds (written by an earlier process),
    /// so that a hash-chained layer links its first record to it and one chain spans restarts.
    /// Default: none (the chain starts from zeros).
    fn chain_tail(&self) -> Option<[u8; 32]> {
        None
    }
}

/// Emits each record as a `tracing` event (target `deepseek_audit`, level INFO, field
/// `record`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        let record = std::str::from_utf8(record).map_err(io::Error::other)?;
        tracing::info!(target: "deepseek_audit", record = %record);
        Ok(())
    }
}

/// Writes JSON Lines to any [`Write`]: each record is written whole (one `write_all` of the
/// line and its newline) and the writer flushed, so nothing waits in a buffer. Cheap to clone
/// (shared).
pub struct WriterSink<W: Write> {
    inner: Arc<Mutex<WriterState<W>>>,
}

struct WriterState<W> {
    writer: W,
    line: Vec<u8>,
}

impl<W: Write> Clone for WriterSink<W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<W: Write> fmt::Debug for WriterSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterSink").finish_non_exhaustive()
    }
}

impl<W: Write> WriterSink<W> {
    /// Wraps `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            inner: Arc::new(Mutex::new(WriterState {
                writer,
                line: Vec::new(),
            })),
        }
    }

    /// Runs `f` on the writer.
    pub fn with_inner<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.writer)
    }
}

impl<W: Write + Send + 'static> AuditSink for WriterSink<W> {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let WriterState { writer, line } = &mut *g;
        line.clear();
        line.extend_from_slice(record);
        line.push(b'\n');
        writer.write_all(line)?;
        writer.flush()
    }

    fn flush(&self) -> io::Result<()> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writer
            .flush()
    }
}

/// What to do when a sink cannot take a record (a full disk, an I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SinkFailurePolicy {
    /// No answer without its record (default). The call whose record could not be written
    /// fails: with [`AuditUnavailable`] if it ended before its response (a gateway answers
    /// 503), else its response body ends with [`AuditUnavailable`] in place of its last frame,
    /// so the answer is never completed. New calls are then refused with [`AuditUnavailable`]
    /// until [`AuditSink::probe`] succeeds.
    #[default]
    FailClosed,
    /// Serve: the answer is delivered without its record. The loss is counted
    /// (`deepseek_audit_sink_errors_total`, [`AuditHandle::failed_writes`]) and logged (the
    /// error kind, never the record).
    FailOpen,
}

/// The audit record of a call cannot be written and [`SinkFailurePolicy::FailClosed`] is set:
/// the call was refused, or its answer was cut before its end. A gateway answers 503 with
/// `Retry-After` ([`AuditUnavailable::retry_after`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuditUnavailable {}

impl AuditUnavailable {
    /// When to try again: 5 s (the sink is probed again on the next call).
    pub fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
}

impl fmt::Display for AuditUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request refused: the audit log cannot be written, and calls are not made without an audit record; retry later")
    }
}

static AUDIT_UNAVAILABLE: tower_deepseek_core::error::RequestRefused =
    tower_deepseek_core::error::RequestRefused::new("audit sink failing (fail closed)");

// Core's marker as the source: the shared classifier (audit, breaker) sees a local refusal.
impl std::error::Error for AuditUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&AUDIT_UNAVAILABLE)
    }
}

/// One audit record: the schema of the JSON lines the layer writes (it writes them directly,
/// byte for byte what serde writes for this type), and the type to read them back into. See the
/// [module docs](self) for where each field comes from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// RFC 3339 UTC time the call started.
    pub timestamp: String,
    /// The request id.
    pub request_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// Keyed hash (16 hex digits) of the tenant id.
    pub tenant: Option<String>,
    /// Keyed hash (16 hex digits) of the `Authorization` header.
    pub key_id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub endpoint: String,
    /// The model that answered (or was asked for).
    pub model: Option<String>,
    /// HMAC-SHA-256 (hex) of the request body sent upstream.
    pub prompt_hash: Option<String>,
    /// Response status, if a response came.
    pub status: Option<u16>,
    /// `ok`, a failure class label, or `cancelled`.
    pub outcome: String,
    /// Milliseconds from the call to the end of the response.
    pub latency_ms: u64,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// Prompt tokens served from DeepSeek's cache.
    pub cache_hit_tokens: Option<u64>,
    /// PII entities masked, by type.
    pub pii: BTreeMap<String, u32>,
    /// The `x-cache` response header (`hit`, `miss`, ...).
    pub cache: Option<String>,
    /// The `x-retry-attempts` response header.
    pub retries: Option<u32>,
    /// The `x-breaker-state` response header.
    pub breaker: Option<String>,
    /// Hash of the previous record (hash chain only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// Hash of this record (hash chain only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A record as it is gathered during the call, in the forms the call has its facts (the
/// request id shared, the method, the time and the hashes as bytes, the outcome as a static
/// label): no owned copy of each value per call. [`to_json`] writes it once as the JSON line of
/// the equivalent [`AuditRecord`].
struct Facts {
    timestamp: [u8; 24],
    request_id: Option<RequestId>,
    client_ip: Option<IpAddr>,
    tenant: Option<[u8; 8]>,
    key_id: Option<[u8; 8]>,
    method: http::Method,
    endpoint: String,
    model: Option<String>,
    prompt_hash: Option<[u8; 32]>,
    status: Option<u16>,
    outcome: &'static str,
    latency_ms: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_hit_tokens: Option<u64>,
    pii: Option<PiiCounts>,
    cache: Option<String>,
    retries: Option<u32>,
    breaker: Option<Cow<'static, str>>,
}

/// A record as one JSON line's bytes: exactly what `serde_json::to_vec` gives for the
/// equivalent [`AuditRecord`] (a test checks this on arbitrary records), written by hand into a
/// buffer sized for a typical record. Member names are literals here, not escaped at run time,
/// and values are escaped only when they hold a byte that needs it; serde's generic path over
/// an [`AuditRecord`] of owned strings cost several times as much. With `prev`, the record
/// carries `prev_hash` (the hash chain), without its own `hash`.
fn to_json(f: &Facts, prev: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(640);
    out.extend_from_slice(b"{\"timestamp\":\"");
    out.extend_from_slice(&f.timestamp);
    out.extend_from_slice(b"\",\"request_id\":");
    json_opt_str(&mut out, f.request_id.as_ref().map(RequestId::as_str));
    out.extend_from_slice(b",\"client_ip\":");
    match f.client_ip {
        Some(ip) => {
            use std::io::Write as _;
            out.push(b'"');
            write!(out, "{ip}").expect("writing to a Vec");
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"tenant\":");
    json_opt_hex(&mut out, f.tenant.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"key_id\":");
    json_opt_hex(&mut out, f.key_id.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"method\":");
    json_str(&mut out, f.method.as_str());
    out.extend_from_slice(b",\"endpoint\":");
    json_str(&mut out, &f.endpoint);
    out.extend_from_slice(b",\"model\":");
    json_opt_str(&mut out, f.model.as_deref());
    out.extend_from_slice(b",\"prompt_hash\":");
    json_opt_hex(&mut out, f.prompt_hash.as_ref().map(|h| &h[..]));
    out.extend_from_slice(b",\"status\":");
    json_opt_u64(&mut out, f.status.map(u64::from));
    out.extend_from_slice(b",\"outcome\":");
    json_str(&mut out, f.outcome);
    out.extend_from_slice(b",\"latency_ms\":");
    json_u64(&mut out, f.latency_ms);
    out.extend_from_slice(b",\"prompt_tokens\":");
    json_opt_u64(&mut out, f.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    json_opt_u64(&mut out, f.completion_tokens);
    out.extend_from_slice(b",\"cache_hit_tokens\":");
    json_opt_u64(&mut out, f.cache_hit_tokens);
    out.extend_from_slice(b",\"pii\":{");
    // In the order of the record's `BTreeMap<String, u32>`: entity types order by their names.
    for (i, (k, v)) in f.pii.iter().flat_map(PiiCounts::iter).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, k.as_str());
        out.push(b':');
        json_u64(&mut out, u64::from(v));
    }
    out.extend_from_slice(b"},\"cache\":");
    json_opt_str(&mut out, f.cache.as_deref());
    out.extend_from_slice(b",\"retries\":");
    json_opt_u64(&mut out, f.retries.map(u64::from));
    out.extend_from_slice(b",\"breaker\":");
    json_opt_str(&mut out, f.breaker.as_deref());
    if let Some(p) = prev {
        out.extend_from_slice(b",\"prev_hash\":");
        json_opt_hex(&mut out, Some(p));
    }
    out.push(b'}');
    out
}

/// Lower-case hex in a JSON string, or `null`.
fn json_opt_hex(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.push(b'"');
            hex_into(out, b);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as `serde_json` escapes it (`\"`, `\\`, `\b\f\n\r\t`, other control
/// characters as `\u00xx`; everything else, non-ASCII included, as it is).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut last = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                0x0c => b"\\f",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..0x20 => {
                    out.extend_from_slice(&bytes[last..i]);
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                    last = i + 1;
                    continue;
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[last..i]);
            out.extend_from_slice(esc);
            last = i + 1;
        }
        out.extend_from_slice(&bytes[last..]);
    }
    out.push(b'"');
}

/// Whether `bytes` holds a control character, `"` or `\\`: eight bytes at a time (the
/// classic "has a zero byte" / "has a byte less than n" word tests, exact for this question).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        // Below 0x20: `v - 0x20..20` borrows into a byte's high bit only for such a byte
        // (bytes of 0x80 and above are excluded by `!v`).
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH != 0;
        if control
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn json_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => json_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends lower-case hex (formatted on the stack, appended at once: the hashes here are at
/// most 32 bytes).
fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (pair, b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        out.extend_from_slice(&buf[..chunk.len() * 2]);
    }
}

/// Lower-case hex.
fn hex_lower(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut out, bytes);
    String::from_utf8(out).expect("ASCII")
}

/// Formats a time as RFC 3339 in UTC with milliseconds (`2026-11-26T11:28:08.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    String::from_utf8(rfc3339_bytes(t).to_vec()).expect("ASCII")
}

/// [`rfc3339`] as its 24 bytes.
fn rfc3339_bytes(t: SystemTime) -> [u8; 24] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 24];
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, rem / 3600, 2);
    put(14, rem % 3600 / 60, 2);
    put(17, rem % 60, 2);
    put(20, u64::from(d.subsec_millis()), 3);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[23] = b'Z';
    out
}

/// A slot in the request's extensions through which [`crate::RedactLayer`] hands the body it
/// sent upstream (masked) and its PII counts to [`AuditLayer`] above it.
#[derive(Clone, Default)]
pub struct PromptRecorder {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    upstream: Option<Bytes>,
    pii: Option<PiiCounts>,
    /// The record of the call could not be written (fail closed: the answer must not
    /// complete).
    unwritten: bool,
    /// The body as this layer's inner service read it: its first chunk (most bodies are
    /// one), then the others; kept as shared handles, never copied.
    seen_first: Option<Bytes>,
    seen_more: Vec<Bytes>,
    seen_len: usize,
    overflow: bool,
}

const MAX_SEEN: usize = 8 * 1024 * 1024;

impl fmt::Debug for PromptRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptRecorder").finish_non_exhaustive()
    }
}

impl PromptRecorder {
    /// Records the body as sent upstream.
    pub fn record(&self, body: Bytes) {
        self.lock().upstream = Some(body);
    }

    /// Records the PII counts of the request.
    pub fn record_pii(&self, counts: &PiiCounts) {
        self.lock().pii = Some(counts.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Observes the request body as the inner service reads it (no copy: `Bytes` handles).
#[derive(Debug)]
pub struct RequestTap {
    recorder: PromptRecorder,
}

impl BodyObserver for RequestTap {
    fn on_data(&mut self, chunk: &Bytes) {
        let mut g = self.recorder.lock();
        if g.overflow {
            return;
        }
        g.seen_len += chunk.len();
        if g.seen_len > MAX_SEEN {
            g.overflow = true;
            g.seen_first = None;
            g.seen_more = Vec::new();
        } else if g.seen_first.is_none() {
            g.seen_first = Some(chunk.clone());
        } else {
            g.seen_more.push(chunk.clone());
        }
    }

    fn on_end(&mut self, _end: BodyEnd<'_>) {}
}

/// The request body the inner service of [`Audit`] receives.
pub type AuditRequestBody<B> = ObservedBody<B, RequestTap>;

struct AuditShared {
    sinks: Vec<Arc<dyn AuditSink>>,
    /// The HMAC keyed once (its pads computed); cloned per use.
    mac: Hmac<Sha256>,
    chain: bool,
    policy: SinkFailurePolicy,
    failed: AtomicBool,
    /// Records a sink could not take.
    failed_writes: AtomicU64,
    /// Held while the sinks are probed after a failure.
    probing: Mutex<()>,
    /// The hash of the last record written to each sink (one chain per sink); the lock
    /// also keeps records in the same order in every sink.
    writer: Mutex<Vec<[u8; 32]>>,
    classifier: Classifier,
}

impl AuditShared {
    fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }

    /// A keyed hash's first 8 bytes (16 hex digits in the record).
    fn short_hash(&self, domain: &[u8], value: &[u8]) -> [u8; 8] {
        let mut m = self.mac();
        m.update(domain);
        m.update(value);
        let mut h = [0; 8];
        h.copy_from_slice(&m.finalize().into_bytes()[..8]);
        h
    }

    /// Writes the record to every sink; whether every sink took it. A sink's chain moves on
    /// only when it took the record, so a failed write leaves no gap in the chain.
    fn write(&self, facts: &Facts) -> bool {
        let mut prevs = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut ok = true;
        let plain = (!self.chain).then(|| to_json(facts, None));
        for (s, prev) in self.sinks.iter().zip(prevs.iter_mut()) {
            let result = match &plain {
                Some(line) => s.write(line),
                None => {
                    let mut line = to_json(facts, Some(prev));
                    let h: [u8; 32] = Sha256::digest(&line).into();
                    line.pop();
                    line.extend_from_slice(b",\"hash\":\"");
                    hex_into(&mut line, &h);
                    line.extend_from_slice(b"\"}");
                    let r = s.write(&line);
                    if r.is_ok() {
                        *prev = h;
                    }
                    r
                }
            };
            if let Err(e) = result {
                ok = false;
                self.failed_writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("deepseek_audit_sink_errors_total").increment(1);
                match self.policy {
                    SinkFailurePolicy::FailOpen => {
                        tracing::error!(target: "tower_deepseek_redact", error_kind = ?e.kind(), policy = ?self.policy, "audit record could not be written; the call is served without it (fail open)");
                    }
                    _ => {
                        tracing::error!(target: "tower_deepseek_redact", error_kind = ?e.kind(), policy = ?self.policy, "audit record could not be written; the call fails and new calls are refused until the sink recovers (fail closed)");
                    }
                }
            }
        }
        drop(prevs);
        if ok {
            metrics::counter!("deepseek_audit_records_total").increment(1);
        } else {
            self.failed.store(true, Ordering::Release);
        }
        ok
    }

    /// Whether a call whose record was not written must fail.
    fn fail_closed(&self) -> bool {
        self.policy != SinkFailurePolicy::FailOpen
    }

    fn flush(&self) -> io::Result<()> {
        let mut first_err = None;
        for s in &self.sinks {
            if let Err(e) = s.flush() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Fail closed: whether calls must be refused now.
    fn refuse(&self) -> bool {
        if self.policy == SinkFailurePolicy::FailOpen || !self.failed.load(Ordering::Acquire) {
            return false;
        }
        // Probe: a sink that can take records again is back. One probe at a time: calls that
        // arrive meanwhile are refused rather than each paying for a probe.
        let recovered = match self.probing.try_lock() {
            Ok(_probing) => self.sinks.iter().all(|s| s.probe().is_ok()),
            Err(_) => false,
        };
        if recovered {
            self.failed.store(false, Ordering::Release);
            false
        } else {
            metrics::counter!("deepseek_audit_refused_total").increment(1);
            true
        }
    }
}

/// Flushes the audit sinks; get it from [`AuditLayer::handle`] and call it on shutdown.
#[derive(Clone)]
pub struct AuditHandle {
    shared: Arc<AuditShared>,
}

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle").finish_non_exhaustive()
    }
}

impl AuditHandle {
    /// Flushes every sink.
    ///
    /// # Errors
    ///
    /// The first sink error.
    pub fn flush(&self) -> io::Result<()> {
        self.shared.flush()
    }

    /// Flushes every sink before shutdown (same as [`flush`](Self::flush)).
    ///
    /// # Errors
    ///
    /// The first sink error.
    pub fn shutdown(&self) -> io::Result<()> {
        self.shared.flush()
    }

    /// Records that a sink could not take, since the layer was built (under either policy).
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }
}

/// Writes one audit record per call. See the [module docs](self).
#[derive(Clone)]
pub struct AuditLayer {
    shared: Arc<AuditShared>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("sinks", &self.shared.sinks.len())
            .field("chain", &self.shared.chain)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AuditLayer`]. Defaults: a [`TracingSink`], no hash chain, fail closed.
#[must_use]
pub struct AuditLayerBuilder {
    sinks: Vec<Arc<dyn AuditSink>>,
    key: Option<SecretSlice<u8>>,
    chain: bool,
    policy: SinkFailurePolicy,
}

impl fmt::Debug for AuditLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayerBuilder").finish_non_exhaustive()
    }
}

impl AuditLayerBuilder {
    /// Adds a sink (records go to every sink).
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// The secret (at least 16 bytes) that keys the prompt, tenant and key hashes. Required.
    pub fn hmac_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(SecretSlice::from(key.into()));
        self
    }

    /// Chains records with `prev_hash`/`hash`.
    pub fn hash_chain(mut self, on: bool) -> Self {
        self.chain = on;
        self
    }

    /// What to do when a sink fails.
    pub fn on_sink_failure(mut self, policy: SinkFailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] without an HMAC key of at least 16 bytes.
    pub fn build(mut self) -> Result<AuditLayer, ConfigError> {
        let key = self
            .key
            .filter(|k| k.expose_secret().len() >= 16)
            .ok_or_else(|| ConfigError::new("hmac_key", "must be at least 16 bytes"))?;
        if self.sinks.is_empty() {
            self.sinks.push(Arc::new(TracingSink));
        }
        // Each sink's chain goes on from the last record it already holds.
        let tails = self
            .sinks
            .iter()
            .map(|s| s.chain_tail().unwrap_or([0; 32]))
            .collect();
        Ok(AuditLayer {
            shared: Arc::new(AuditShared {
                sinks: self.sinks,
                mac: Hmac::<Sha256>::new_from_slice(key.expose_secret()).expect("any key length"),
                chain: self.chain,
                policy: self.policy,
                failed: AtomicBool::new(false),
                failed_writes: AtomicU64::new(0),
                probing: Mutex::new(()),
                writer: Mutex::new(tails),
                classifier: Classifier::new(),
            }),
        })
    }
}

impl AuditLayer {
    /// A builder.
    pub fn builder() -> AuditLayerBuilder {
        AuditLayerBuilder {
            sinks: Vec::new(),
            key: None,
            chain: false,
            policy: SinkFailurePolicy::FailClosed,
        }
    }

    /// A handle to flush the sinks on shutdown.
    pub fn handle(&self) -> AuditHandle {
        AuditHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AuditLayer`]. See the [module docs](self).
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    shared: Arc<AuditShared>,
}

impl<S> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl<S> Audit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static X_RETRY_ATTEMPTS: HeaderName = HeaderName::from_static("x-retry-attempts");
static X_BREAKER_STATE: HeaderName = HeaderName::from_static("x-breaker-state");

/// A short `[A-Za-z0-9_-]` token header, lower-cased. `name` is a `HeaderName` (not a `&str`,
/// which `HeaderMap::get` would parse again on every call).
fn token_header(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v = h.get(name)?.to_str().ok()?;
    (v.len() <= 32
        && !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| v.to_ascii_lowercase())
}

/// What is known when the call starts.
struct Pending {
    shared: Arc<AuditShared>,
    record: Facts,
    started: Instant,
    recorder: PromptRecorder,
}

impl Pending {
    /// Writes the record; `false` when it could not be written and the policy is fail closed
    /// (the call must fail).
    fn finish(
        mut self: Box<Self>,
        status: Option<u16>,
        outcome: &'static str,
        summary: Option<Cow<'_, ResponseSummary>>,
    ) -> bool {
        // Borrowed in place: moving the record out of the box would copy it.
        let Pending {
            shared,
            record,
            started,
            recorder,
        } = &mut *self;
        let r = &mut *record;
        r.status = status;
        r.outcome = outcome;
        r.latency_ms = started.elapsed().as_millis() as u64;
        if let Some(s) = summary {
            if let Some(u) = &s.usage {
                r.prompt_tokens = Some(u.prompt_tokens);
                r.completion_tokens = Some(u.completion_tokens);
                r.cache_hit_tokens = u.prompt_cache_hit_tokens.or_else(|| {
                    u.prompt_tokens_details
                        .as_ref()
                        .and_then(|d| d.cached_tokens)
                });
            }
            if s.model.is_some() {
                // Moved when this layer classified the body itself; copied from a shared one.
                r.model = match s {
                    Cow::Owned(s) => s.model,
                    Cow::Borrowed(s) => s.model.clone(),
                };
            }
        }
        let (upstream, seen, pii) = {
            let mut g = recorder.lock();
            let upstream = g.upstream.take();
            let seen = match (&upstream, g.overflow) {
                (None, false) => g
                    .seen_first
                    .take()
                    .map(|first| (first, std::mem::take(&mut g.seen_more))),
                _ => None,
            };
            (upstream, seen, g.pii.take())
        };
        // The body sent upstream (recorded by the redact layer), else the chunks this layer's
        // inner service read: hashed chunk by chunk, joined only for the model fallback.
        let body: Option<(Bytes, Vec<Bytes>)> = upstream.map(|b| (b, Vec::new())).or(seen);
        if let Some((first, more)) = body {
            let mut m = shared.mac();
            m.update(&first);
            for c in &more {
                m.update(c);
            }
            r.prompt_hash = Some(m.finalize().into_bytes().into());
            if r.model.is_none() {
                #[derive(serde::Deserialize)]
                struct ModelProbe {
                    model: Option<String>,
                }
                let joined = if more.is_empty() {
                    first
                } else {
                    let mut all = BytesMut::with_capacity(
                        first.len() + more.iter().map(Bytes::len).sum::<usize>(),
                    );
                    all.extend_from_slice(&first);
                    for c in &more {
                        all.extend_from_slice(c);
                    }
                    all.freeze()
                };
                r.model = serde_json::from_slice::<ModelProbe>(&joined)
                    .ok()
                    .and_then(|p| p.model)
                    .filter(|m| m.len() <= 128);
            }
        }
        r.pii = pii;
        if shared.write(record) || !shared.fail_closed() {
            return true;
        }
        recorder.lock().unwritten = true;
        false
    }
}

/// Writes a `cancelled` record if dropped while still holding the pending record.
struct Guard(Option<Box<Pending>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Nobody is left to fail.
            let _ = p.finish(None, "cancelled", None);
        }
    }
}

fn outcome_of(r: &Result<(), FailureClass>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(c) => c.as_str(),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<AuditRequestBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> ResponseFuture<S::Future> {
        let shared = &self.shared;
        if shared.refuse() {
            return ResponseFuture {
                fut: None,
                guard: Guard(None),
                classifier: shared.classifier,
            };
        }
        // Every record has a request id: the caller's (extension or `x-request-id`), or a new
        // one, which is also sent upstream so that both sides log the same id.
        let mut req = req;
        if req.extensions().get::<RequestId>().is_none() {
            let id = req
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .and_then(RequestId::parse)
                .unwrap_or_else(RequestId::generate);
            req.headers_mut()
                .insert(X_REQUEST_ID.clone(), id.to_header_value());
            req.extensions_mut().insert(id);
        }
        let ext = req.extensions();
        let h = req.headers();
        let request_id = ext.get::<RequestId>().cloned();
        let client_ip = ext
            .get::<ClientIp>()
            .map(|c| c.0)
            .or_else(|| ext.get::<PeerAddr>().map(|p| p.0.ip()));
        let tenant = ext
            .get::<TenantId>()
            .map(|t| shared.short_hash(b"tenant:", t.as_str().as_bytes()));
        let key_id = h
            .get(http::header::AUTHORIZATION)
            .map(|v| shared.short_hash(b"key:", v.as_bytes()));
        let recorder = PromptRecorder::default();
        let record = Facts {
            timestamp: rfc3339_bytes(SystemTime::now()),
            request_id,
            client_ip,
            tenant,
            key_id,
            method: req.method().clone(),
            endpoint: req.uri().path().to_owned(),
            model: None,
            prompt_hash: None,
            status: None,
            outcome: "",
            latency_ms: 0,
            prompt_tokens: None,
            completion_tokens: None,
            cache_hit_tokens: None,
            pii: None,
            cache: None,
            retries: None,
            breaker: None,
        };
        let pending = Pending {
            shared: shared.clone(),
            record,
            started: Instant::now(),
            recorder: recorder.clone(),
        };
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(recorder.clone());
        // Ask the retry and breaker layers below for their facts (attempts, breaker state).
        parts.extensions.insert(CollectCallFacts);
        let body = ObservedBody::new(body, RequestTap { recorder });
        let fut = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture {
            fut: Some(fut),
            guard: Guard(Some(Box::new(pending))),
            classifier: shared.classifier,
        }
    }
}

pin_project! {
    /// The future of [`Audit`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: Option<F>,
        guard: Guard,
        classifier: Classifier,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(AuditUnavailable {})));
        };
        match ready!(fut.poll(cx)) {
            Err(e) => {
                let e: BoxError = e.into();
                if let Some(p) = this.guard.0.take() {
                    let class = this.classifier.classify_error(&*e);
                    if !p.finish(None, class.as_str(), None) {
                        // Fail closed: the caller gets no answer whose record is missing,
                        // not even an error of the layers below.
                        return Poll::Ready(Err(Box::new(AuditUnavailable {})));
                    }
                }
                Poll::Ready(Err(e))
            }
            Ok(mut res) => {
                let mut pending = this.guard.0.take().expect("polled after completion");
                let h = res.headers();
                pending.record.cache = token_header(h, &X_CACHE);
                // Facts from the layers below: core's response extensions first (set by the
                // retry and breaker layers), then headers (an upstream gateway's).
                let ext = res.extensions();
                pending.record.retries = ext
                    .get::<UpstreamAttempts>()
                    .map(|a| a.0.saturating_sub(1))
                    .or_else(|| {
                        h.get(&X_RETRY_ATTEMPTS)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                    });
                pending.record.breaker = ext
                    .get::<BreakerStatus>()
                    .map(|b| Cow::Borrowed(b.0))
                    .or_else(|| token_header(h, &X_BREAKER_STATE).map(Cow::Owned));
                if let Some(c) = res.extensions_mut().get::<PiiCounts>() {
                    pending.recorder.record_pii(c);
                }
                let status = res.status();
                // The head first (a layer between may have changed the status); when the
                // outcome depends on the body and a layer below (the breaker) classifies it,
                // that layer's shared outcome is read at the end rather than the same body
                // parsed again.
                let state = match this.classifier.classify_head(status, res.headers()) {
                    ClassifiedResponse::Ready(r) => Eos::Ready(r),
                    ClassifiedResponse::RequiresEos(c) => {
                        match res.extensions().get::<SharedOutcome>() {
                            Some(shared) => Eos::Shared(shared.clone()),
                            None => Eos::Body(Box::new(c)),
                        }
                    }
                };
                let watch = pending
                    .shared
                    .fail_closed()
                    .then(|| pending.recorder.clone());
                let observer = AuditObserver {
                    pending: Some(pending),
                    status: status.as_u16(),
                    eos: state,
                };
                Poll::Ready(Ok(res.map(|b| ResponseBody {
                    inner: ObservedBody::new(b, observer),
                    watch,
                })))
            }
        }
    }
}

enum Eos {
    Ready(Result<(), FailureClass>),
    Body(Box<EosClassifier>),
    /// Classified by a layer below, which fills the slot before the end reaches this layer.
    Shared(SharedOutcome),
}

/// Watches the response body and writes the record at its end.
struct AuditObserver {
    pending: Option<Box<Pending>>,
    status: u16,
    eos: Eos,
}

impl fmt::Debug for AuditObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditObserver").finish_non_exhaustive()
    }
}

impl BodyObserver for AuditObserver {
    fn on_data(&mut self, chunk: &Bytes) {
        if let Eos::Body(c) = &mut self.eos {
            c.on_data(chunk);
        }
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let status = Some(self.status);
        match (&mut self.eos, end) {
            (Eos::Shared(s), end) => match (s.get(), end) {
                (Some(o), BodyEnd::Complete) => p.finish(
                    status,
                    outcome_of(&o.result),
                    Some(Cow::Borrowed(&o.summary)),
                ),
                (Some(o), BodyEnd::Error(_)) if o.result.is_err() => p.finish(
                    status,
                    outcome_of(&o.result),
                    Some(Cow::Borrowed(&o.summary)),
                ),
                // An error from a layer between (the body below ended well, or not at all).
                (o, BodyEnd::Error(e)) => {
                    let c = Classifier::new().classify_error(e);
                    p.finish(status, c.as_str(), o.map(|o| Cow::Borrowed(&o.summary)))
                }
                (o, BodyEnd::Dropped) => {
                    p.finish(status, "cancelled", o.map(|o| Cow::Borrowed(&o.summary)))
                }
                // Ended by a layer between before the body below ended: no verdict.
                (_, _) => p.finish(status, "unknown", None),
            },
            (Eos::Body(c), BodyEnd::Dropped) => {
                p.finish(status, "cancelled", Some(Cow::Owned(c.take_summary())))
            }
            (Eos::Ready(_), BodyEnd::Dropped) => p.finish(status, "cancelled", None),
            (Eos::Ready(r), BodyEnd::Complete) => p.finish(status, outcome_of(r), None),
            (Eos::Ready(_), BodyEnd::Error(e)) => {
                let c = Classifier::new().classify_error(e);
                p.finish(status, c.as_str(), None)
            }
            (Eos::Body(c), BodyEnd::Complete) => {
                let r = c.finish();
                p.finish(status, outcome_of(&r), Some(Cow::Owned(c.take_summary())))
            }
            (Eos::Body(c), BodyEnd::Error(e)) => {
                let class = c.fail(e);
                p.finish(status, class.as_str(), Some(Cow::Owned(c.take_summary())))
            }
            (_, _) => p.finish(status, "unknown", None),
        };
    }
}

pin_project! {
    /// The response body of [`Audit`]: the inner body, observed; the record is written when it
    /// ends (before its last frame is returned, when the body below says it is ending) or is
    /// dropped. Under [`SinkFailurePolicy::FailClosed`], a record that cannot be written ends
    /// the body with [`AuditUnavailable`] in place of the frame that would have completed it.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<B, AuditObserver>,
        // Fail closed: the call's slot, read once the observer has written the record.
        watch: Option<PromptRecorder>,
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        // The observer is gone once the body ended: the record was written (or not) before
        // this frame goes on.
        if this.watch.is_some() && this.inner.observer().is_none() {
            let rec = this.watch.take().expect("checked above");
            if std::mem::take(&mut rec.lock().unwritten) {
                return Poll::Ready(Some(Err(Box::new(AuditUnavailable {}))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            "[ -~]{0,12}",
            proptest::collection::vec(
                prop_oneof![
                    (0u8..0x20).prop_map(char::from),
                    Just('"'),
                    Just('\\'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('字'),
                    Just('a')
                ],
                0..12
            )
            .prop_map(|v| v.into_iter().collect()),
        ]
    }

    /// The record that `facts` stand for, as serde would write it.
    fn to_record(f: &Facts, prev: Option<&[u8; 32]>) -> AuditRecord {
        AuditRecord {
            timestamp: String::from_utf8(f.timestamp.to_vec()).unwrap(),
            request_id: f.request_id.as_ref().map(|r| r.as_str().to_owned()),
            client_ip: f.client_ip.map(|ip| ip.to_string()),
            tenant: f.tenant.map(hex::encode),
            key_id: f.key_id.map(hex::encode),
            method: f.method.as_str().to_owned(),
            endpoint: f.endpoint.clone(),
            model: f.model.clone(),
            prompt_hash: f.prompt_hash.map(hex::encode),
            status: f.status,
            outcome: f.outcome.to_owned(),
            latency_ms: f.latency_ms,
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            cache_hit_tokens: f.cache_hit_tokens,
            pii: f
                .pii
                .iter()
                .flat_map(PiiCounts::iter)
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            cache: f.cache.clone(),
            retries: f.retries,
            breaker: f.breaker.as_deref().map(str::to_owned),
            prev_hash: prev.map(hex::encode),
            hash: None,
        }
    }

    proptest::proptest! {
        /// The hand-written serializer gives exactly serde_json's bytes for the equivalent
        /// record, escapes included.
        #[test]
        fn to_json_is_serde_json_of_the_record(
            texts in proptest::collection::vec(any_text(), 5),
            id in "[!-~]{1,40}",
            some in proptest::collection::vec(proptest::prelude::any::<bool>(), 16),
            nums in proptest::collection::vec(proptest::prelude::any::<u64>(), 6),
            bytes in proptest::prelude::any::<[u8; 32]>(),
            ip in proptest::prelude::any::<std::net::IpAddr>(),
            pii in proptest::collection::vec(0usize..13, 0..6),
            method in proptest::sample::select(vec!["GET", "POST", "PATCH", "X-CUSTOM"]),
            secs in 0u64..=253_402_300_799,
        ) {
            let short: [u8; 8] = bytes[..8].try_into().unwrap();
            let mut counts = PiiCounts::default();
            for i in &pii {
                counts.add(&crate::EntityType::builtin()[*i]);
            }
            let facts = Facts {
                timestamp: rfc3339_bytes(UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + nums[5] % 1000)),
                request_id: some[0].then(|| RequestId::parse(&id).unwrap()),
                client_ip: some[1].then_some(ip),
                tenant: some[2].then_some(short),
                key_id: some[3].then_some(short),
                method: http::Method::from_bytes(method.as_bytes()).unwrap(),
                endpoint: texts[0].clone(),
                model: some[4].then(|| texts[1].clone()),
                prompt_hash: some[5].then_some(bytes),
                status: some[6].then_some(nums[0] as u16),
                outcome: if some[7] { "ok" } else { "rate_limited" },
                latency_ms: nums[1],
                prompt_tokens: some[8].then_some(nums[2]),
                completion_tokens: some[9].then_some(nums[3]),
                cache_hit_tokens: some[10].then_some(0),
                pii: some[11].then_some(counts),
                cache: some[12].then(|| texts[2].clone()),
                retries: some[13].then_some(nums[4] as u32),
                breaker: some[14].then(|| Cow::Owned(texts[3].clone())),
            };
            let prev = some[15].then_some(&bytes);
            proptest::prop_assert_eq!(
                String::from_utf8(to_json(&facts, prev)).unwrap(),
                serde_json::to_string(&to_record(&facts, prev)).unwrap()
            );
        }
    }

    #[test]
    fn needs_escape_finds_every_such_byte_at_every_offset() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    let want = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&v), want, "byte {b:#x} at {at} of {len}");
                    // Neighbours that are high or just above the control range change nothing.
                    for n in [0x20u8, 0x21, 0x7f, 0x80, 0xff] {
                        let mut w = vec![n; len];
                        w[at] = b;
                        assert_eq!(needs_escape(&w), want, "byte {b:#x} among {n:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex_lower(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert_eq!(hex_lower(&[]), "");
        let long: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&long), hex::encode(&long));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_692_488)),
            "2026-11-26T11:28:08.000Z"
        );
    }
}
