//! [`RedactLayer`]: masks PII in requests before they leave, restores placeholders in answers.
//!
//! # What is touched
//!
//! The request body is buffered (with a limit, [`DEFAULT_BODY_LIMIT`] by default) and scanned
//! as raw JSON. Only the strings at the configured [`JsonPath`]s are rewritten (by default the
//! user text of chat and FIM requests: `messages[].content`, text parts, tool-call arguments,
//! `prompt`, `suffix`); every other byte, `reasoning_content` of earlier turns included, stays
//! byte-identical, so DeepSeek's prefix cache and its thinking-mode checks are unaffected. A
//! body with nothing to mask is forwarded as the very same bytes.
//!
//! A body that is not JSON (by `Content-Type` or by content) is forwarded untouched, or refused
//! with [`InvalidJsonBody`] ([`NonJsonPolicy`]); it is never half-processed. An empty body (a
//! `GET`) always passes.
//!
//! # Restore
//!
//! Entities in [`Mode::Placeholder`] become `<CN_MOBILE_1>`; the vault lives in the request's
//! future and then in its response body, never anywhere shared. In the answer, placeholders are
//! put back: in JSON answers as JSON-escaped text, in SSE streams inside each event's string
//! deltas (`content`, `reasoning_content`, tool-call `arguments`, FIM `text`), also when one is
//! split across chunks or across two events (`<CN_MO` + `BILE_1>`). Only the bytes of a possible
//! partial placeholder are held back; an SSE event is forwarded as soon as its blank line
//! arrives, as its original bytes unless a placeholder in it was restored.
//!
//! Upstreams that escape `<` and `>` in JSON strings (`\u003cCN_MOBILE_1\u003e`, as Go's
//! `encoding/json` does; either hex case, or only one of the two escaped) are restored too; an
//! escaped backslash before `u003c` is text, not a `<`, and is left alone. Plain-text answers
//! (not JSON) are restored only in the raw form, with the raw value.
//!
//! Cost: a request without placeholders gets its response body back unwrapped (only a
//! branch). With a vault, a frame of whole SSE events without `<` or `\` is one `memchr2`
//! and is forwarded as the very same `Bytes`; events with a placeholder are rewritten in their
//! raw bytes without parsing; only a placeholder fragment that ends one event's string (to be
//! joined with the next event's) makes the restorer parse events.
//!
//! # Order
//!
//! Put it right under [`AuditLayer`](crate::AuditLayer) and above the cache, retry and the
//! client: nothing below (cache keys, logs, the network) sees a raw value, and the cache stores
//! masked answers that are restored per request. It puts [`PiiCounts`] in the request's
//! extensions (for layers below) and in the response's extensions (for the audit layer above),
//! and hands the masked body to the audit layer's prompt hash.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_core::body::BufferedBody;
//! use tower_deepseek_redact::RedactLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RedactLayer::new())
//!     .service_fn(|req: Request<BufferedBody>| async move {
//!         // The upstream sees a placeholder, never the number.
//!         let body = req.into_body().into_bytes();
//!         assert!(!body.windows(11).any(|w| w == b"13800138000"));
//!         Ok::<_, tower_deepseek_core::BoxError>(Response::new(Full::new(body)))
//!     });
//! let req = Request::post("/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"messages":[{"role":"user","content":"call 13800138000"}]}"#)))?;
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! let body = res.into_body().collect().await?.to_bytes();
//! // ... and the caller gets it back.
//! assert_eq!(&body[..], br#"{"messages":[{"role":"user","content":"call 13800138000"}]}"#);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{
    BufferedBody, ChunkTransform, DEFAULT_BODY_LIMIT, buffer_or_reject,
};
use tower_deepseek_core::classify::is_event_stream;
use tower_deepseek_core::meta::TenantId;
use tower_layer::Layer;
use tower_service::Service;

use crate::audit::PromptRecorder;
use crate::detect::ConfigError;
use crate::json::{JsonPath, escape_into, find_strings, string_text};
use crate::redactor::{Mode, PiiBlocked, PiiCounts, RedactContext, Redactor, Vault};
use crate::restore::{SseRestorer, TextRestorer};

/// What to do with a request body that is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NonJsonPolicy {
    /// Forward it untouched (default: `GET`s, uploads and other APIs pass).
    #[default]
    PassThrough,
    /// Refuse it with [`InvalidJsonBody`] (a gateway answers 400).
    Reject,
}

/// The request body is not valid JSON and [`NonJsonPolicy::Reject`] is set.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InvalidJsonBody {}

impl fmt::Display for InvalidJsonBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request refused: the body is not valid UTF-8 JSON, so it cannot be checked for personal data; send application/json")
    }
}

static INVALID_JSON: tower_deepseek_core::error::RequestRefused =
    tower_deepseek_core::error::RequestRefused::new("request body is not JSON");

// Core's marker as the source: the shared classifier (audit, breaker) sees a local refusal.
impl std::error::Error for InvalidJsonBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&INVALID_JSON)
    }
}

/// A serde configuration for [`RedactLayer`] (e.g. from TOML).
///
/// ```toml
/// default_mode = "placeholder"
/// body_limit = 8388608
/// non_json = "reject"
/// disabled = ["IPV4"]
/// extra_paths = ["metadata.note"]
/// min_score = 0.5
/// [modes]
/// CN_ID_CARD = "block"
/// IPV4 = "allow"
/// [context_words.US_SSN]
/// zh = ["社保卡号"]
/// en = ["tax number"]
/// [negative_context_words.BANK_CARD]
/// zh = ["会员卡"]
/// [[custom]]
/// name = "EMPLOYEE_ID"
/// pattern = "EMP-[0-9]{6}"
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedactConfig {
    /// Mode for personal data (default `placeholder`).
    pub default_mode: Option<Mode>,
    /// Mode for secrets (default `label`).
    pub secret_mode: Option<Mode>,
    /// Modes per type.
    pub modes: std::collections::HashMap<crate::EntityType, Mode>,
    /// Built-in detectors to turn off.
    pub disabled: Vec<crate::EntityType>,
    /// Custom detectors.
    pub custom: Vec<CustomDetectorConfig>,
    /// The score a detection needs (default 0.5; see [`crate::detect`]).
    pub min_score: Option<f32>,
    /// More words that raise a built-in type's score, per type and language (the language
    /// key only groups them: every word counts in any text).
    pub context_words: std::collections::HashMap<
        crate::EntityType,
        std::collections::BTreeMap<String, Vec<String>>,
    >,
    /// More words that lower a built-in type's score, per type and language.
    pub negative_context_words: std::collections::HashMap<
        crate::EntityType,
        std::collections::BTreeMap<String, Vec<String>>,
    >,
    /// More JSON paths to scan.
    pub extra_paths: Vec<String>,
    /// Request body limit in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
    /// Non-JSON bodies.
    pub non_json: NonJsonPolicy,
}

/// A custom detector in a [`RedactConfig`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CustomDetectorConfig {
    /// The type name (`A-Z0-9_`).
    pub name: String,
    /// The regex.
    pub pattern: String,
}

/// Masks PII in request bodies and restores placeholders in responses. See the
/// [module docs](self).
#[derive(Clone)]
pub struct RedactLayer {
    shared: Arc<Shared>,
}

struct Shared {
    redactor: Redactor,
    paths: Vec<JsonPath>,
    limit: usize,
    non_json: NonJsonPolicy,
}

impl fmt::Debug for RedactLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactLayer")
            .field("redactor", &self.shared.redactor)
            .field("paths", &self.shared.paths)
            .field("limit", &self.shared.limit)
            .field("non_json", &self.shared.non_json)
            .finish()
    }
}

impl Default for RedactLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RedactLayer {
    /// Every built-in detector, personal data as restored placeholders, secrets labelled.
    pub fn new() -> Self {
        Self::with_redactor(Redactor::default())
    }

    /// With a configured [`Redactor`].
    pub fn with_redactor(redactor: Redactor) -> Self {
        Self {
            shared: Arc::new(Shared {
                redactor,
                paths: JsonPath::defaults(),
                limit: DEFAULT_BODY_LIMIT,
                non_json: NonJsonPolicy::PassThrough,
            }),
        }
    }

    /// From a serde configuration; `hash_key` is needed when a mode is `hash`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid regex, name, path, or a missing hash key.
    pub fn from_config(
        config: &RedactConfig,
        hash_key: Option<Vec<u8>>,
    ) -> Result<Self, ConfigError> {
        let mut d = crate::Detectors::builder();
        for e in &config.disabled {
            d = d.disable(e);
        }
        for c in &config.custom {
            d = d.custom(&c.name, &c.pattern);
        }
        if let Some(s) = config.min_score {
            d = d.min_score(s);
        }
        for (e, langs) in &config.context_words {
            d = d.context_words(e, langs.values().flatten());
        }
        for (e, langs) in &config.negative_context_words {
            d = d.negative_context_words(e, langs.values().flatten());
        }
        let mut r = Redactor::builder().detectors(d.build()?);
        if let Some(m) = config.default_mode {
            r = r.default_mode(m);
        }
        if let Some(m) = config.secret_mode {
            r = r.secret_mode(m);
        }
        for (e, m) in &config.modes {
            r = r.mode(e.clone(), *m);
        }
        if let Some(k) = hash_key {
            r = r.hash_key(k);
        }
        let mut layer = Self::with_redactor(r.build()?);
        for p in &config.extra_paths {
            layer = layer.extra_path(p)?;
        }
        if let Some(l) = config.body_limit {
            layer = layer.body_limit(l);
        }
        Ok(layer.non_json(config.non_json))
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &*self.shared;
        let mut new = Shared {
            redactor: s.redactor.clone(),
            paths: s.paths.clone(),
            limit: s.limit,
            non_json: s.non_json,
        };
        f(&mut new);
        self.shared = Arc::new(new);
        self
    }

    /// The request body limit (default 8 MiB); over it the request fails with
    /// [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge).
    #[must_use]
    pub fn body_limit(self, limit: usize) -> Self {
        self.edit(|s| s.limit = limit)
    }

    /// What to do with non-JSON bodies.
    #[must_use]
    pub fn non_json(self, policy: NonJsonPolicy) -> Self {
        self.edit(|s| s.non_json = policy)
    }

    /// Scans one more JSON path (see [`JsonPath::parse`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid path.
    pub fn extra_path(self, path: &str) -> Result<Self, ConfigError> {
        let p = JsonPath::parse(path)?;
        Ok(self.edit(|s| s.paths.push(p)))
    }

    /// The redactor.
    pub fn redactor(&self) -> &Redactor {
        &self.shared.redactor
    }
}

impl<S> Layer<S> for RedactLayer {
    type Service = Redact<S>;

    fn layer(&self, inner: S) -> Redact<S> {
        Redact {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RedactLayer`]. See the [module docs](self).
#[derive(Clone)]
pub struct Redact<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Redact<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redact").finish_non_exhaustive()
    }
}

impl<S> Redact<S> {
    /// Wraps `inner` with the default layer.
    pub fn new(inner: S) -> Self {
        RedactLayer::new().layer(inner)
    }

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

fn is_json_content_type(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/json") || v.contains("+json")
        }
    }
}

/// Redacts a buffered JSON body. `Ok(None)`: nothing changed (or passed as non-JSON).
pub(crate) fn redact_body(
    redactor: &Redactor,
    paths: &[JsonPath],
    body: &[u8],
    ctx: &mut RedactContext,
) -> Result<Option<Vec<u8>>, BodyError> {
    let spans = find_strings(body, paths).map_err(|_| BodyError::NotJson)?;
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for span in spans {
        let text = string_text(body, span).map_err(|_| BodyError::NotJson)?;
        if let Some(new) = redactor.redact(&text, ctx).map_err(BodyError::Blocked)? {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            o.extend_from_slice(&body[last..span.start]);
            o.push(b'"');
            escape_into(o, &new);
            o.push(b'"');
            last = span.end;
        }
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(&body[last..]);
        o
    }))
}

pub(crate) enum BodyError {
    NotJson,
    Blocked(PiiBlocked),
}

type Prepared = (Request<BufferedBody>, Vault);
struct PrepError(BoxError);

type PrepFuture = Pin<Box<dyn Future<Output = Result<Prepared, PrepError>> + Send>>;

async fn prepare<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Prepared, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    // Boxed: `buffer_or_reject` needs `Unpin`, and a stack pin would tie the error type to a
    // local lifetime, which makes the future lose `Send` in generic callers.
    let body = Box::pin(body);
    let bytes = buffer_or_reject(body, shared.limit).await?;
    let raw = bytes.bytes().clone();
    let pass = |parts: http::request::Parts, bytes: BufferedBody| {
        if let Some(r) = parts.extensions.get::<PromptRecorder>() {
            r.record(bytes.bytes().clone());
        }
        Ok((Request::from_parts(parts, bytes), Vault::new()))
    };
    if raw.is_empty() {
        return pass(parts, bytes);
    }
    let not_json = |parts, bytes| match shared.non_json {
        NonJsonPolicy::PassThrough => pass(parts, bytes),
        NonJsonPolicy::Reject => {
            tracing::debug!(target: "tower_deepseek_redact", "non-JSON request body refused");
            Err(Box::new(InvalidJsonBody {}) as BoxError)
        }
    };
    if !is_json_content_type(&parts.headers) {
        return not_json(parts, bytes);
    }
    let tenant = parts
        .extensions
        .get::<TenantId>()
        .map(|t| t.as_str().to_owned());
    let mut ctx = RedactContext::new(tenant.as_deref());
    let new = match redact_body(&shared.redactor, &shared.paths, &raw, &mut ctx) {
        Ok(n) => n,
        Err(BodyError::NotJson) => return not_json(parts, bytes),
        Err(BodyError::Blocked(b)) => {
            metrics::counter!("deepseek_redact_blocked_total", "entity" => b.entity.to_string())
                .increment(1);
            tracing::info!(target: "tower_deepseek_redact", entity = %b.entity, "request refused: blocked entity type");
            return Err(Box::new(b));
        }
    };
    for (entity, n) in ctx.counts.iter() {
        metrics::counter!("deepseek_redact_entities_total", "entity" => entity.to_string())
            .increment(n as u64);
    }
    if !ctx.counts.is_empty() {
        tracing::debug!(target: "tower_deepseek_redact", entities = ctx.counts.total(), placeholders = ctx.vault.len(), "request redacted");
    }
    let body = match new {
        Some(v) => {
            if parts.headers.contains_key(CONTENT_LENGTH) {
                parts.headers.insert(CONTENT_LENGTH, v.len().into());
            }
            BufferedBody::new(Bytes::from(v))
        }
        None => bytes,
    };
    if let Some(r) = parts.extensions.get::<PromptRecorder>() {
        r.record(body.bytes().clone());
        r.record_pii(&ctx.counts);
    }
    parts.extensions.insert(ctx.counts);
    Ok((Request::from_parts(parts, body), ctx.vault))
}

async fn prepare_boxed<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Prepared, PrepError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    prepare(shared, req).await.map_err(PrepError)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Redact<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> ResponseFuture<S> {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Preparing {
                fut: Box::pin(prepare_boxed(self.shared.clone(), req)),
                inner: Some(inner),
            },
        }
    }
}

pin_project! {
    /// The future of [`Redact`].
    pub struct ResponseFuture<S: Service<Request<BufferedBody>>> {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<BufferedBody>>> {
        Preparing { fut: PrepFuture, inner: Option<S> },
        Calling { #[pin] fut: S::Future, vault: Option<Vault>, counts: Option<PiiCounts> },
    }
}

impl<S: Service<Request<BufferedBody>>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ResBody> Future for ResponseFuture<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Preparing { fut, inner } => {
                    let (req, vault) = match ready!(fut.as_mut().poll(cx)) {
                        Ok(p) => p,
                        Err(PrepError(e)) => return Poll::Ready(Err(e)),
                    };
                    let counts = req.extensions().get::<PiiCounts>().cloned();
                    let mut svc = inner.take().expect("polled after completion");
                    let fut = svc.call(req);
                    this.state.set(State::Calling {
                        fut,
                        vault: Some(vault),
                        counts,
                    });
                }
                StateProj::Calling { fut, vault, counts } => {
                    let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let vault = vault.take().unwrap_or_default();
                    if let Some(c) = counts.take() {
                        res.extensions_mut().insert(c);
                    }
                    let kind = if vault.is_empty() {
                        Kind::Plain
                    } else if is_event_stream(res.headers()) {
                        Kind::Sse
                    } else {
                        let json = res
                            .headers()
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_none_or(|v| v.contains("json"));
                        Kind::Text(json)
                    };
                    if kind != Kind::Plain {
                        res.headers_mut().remove(CONTENT_LENGTH);
                    }
                    return Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, vault, kind))));
                }
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Kind {
    Plain,
    Text(bool),
    Sse,
}

pin_project! {
    /// The response body of [`Redact`]: the inner body, with placeholders restored when the
    /// request had any.
    ///
    /// Without placeholders (no vault) it is the inner body and a null pointer: polling it
    /// checks the pointer and polls the inner body, whose frame goes straight to the caller.
    /// With a vault, the restorer is boxed behind that pointer, and a frame that needs nothing
    /// restored is handed on as the very same frame (see [`RestoreState::poll_frame`]).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        restore: Option<Box<RestoreState>>,
    }
}

/// The restorer of a response body and where its stream is: core's `TransformBody`, but with
/// the frame that needs no change forwarded as it is (not taken apart and rebuilt), and boxed
/// so that a body without a vault stays the inner body plus a pointer.
#[derive(Debug)]
struct RestoreState {
    restorer: Restorer,
    /// Trailers from the inner body, sent after the restorer's held-back bytes.
    pending_trailers: Option<HeaderMap>,
    phase: Phase,
}

#[derive(Debug)]
enum Restorer {
    Text(TextRestorer),
    Sse(SseRestorer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The inner body ended and the held-back bytes went out: the trailers (if any) are next.
    Flushed,
    Done,
}

impl Restorer {
    /// Whether `chunk` goes out as it is (the restorer's inlined fast check).
    #[inline(always)]
    fn passes(&self, chunk: &[u8]) -> bool {
        match self {
            Restorer::Text(r) => r.passes(chunk),
            Restorer::Sse(r) => r.passes(chunk),
        }
    }

    /// A chunk that did not pass.
    fn transform_failed(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Restorer::Text(r) => r.transform_failed(chunk),
            Restorer::Sse(r) => r.transform_failed(chunk),
        }
    }

    fn finish(&mut self) -> Bytes {
        match self {
            Restorer::Text(r) => r.finish(),
            Restorer::Sse(r) => r.finish(),
        }
    }
}

impl RestoreState {
    /// Polls `inner` through the restorer. Empty results are skipped, never sent as empty
    /// frames; trailers pass through unchanged after the restorer's final bytes; an error ends
    /// the stream. Not inlined into [`ResponseBody::poll_frame`], which thus stays small enough
    /// to be inlined into the caller's loop when there is no vault; this function inlines the
    /// inner body's poll and the fast check instead.
    #[inline(never)]
    fn poll_frame<B: Body<Data = Bytes>>(
        &mut self,
        mut inner: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if self.phase != Phase::Streaming {
                return Poll::Ready(self.after_end());
            }
            match ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // The common frame: data that needs nothing restored, the same `Bytes`.
                    // (Taken out of the frame and put in a new one: moving only the `Bytes`
                    // saves LLVM copies of the whole `Frame`, which is sized for trailers.)
                    let out = match frame.into_data() {
                        Ok(data) if !data.is_empty() && self.restorer.passes(&data) => data,
                        Ok(data) => self.restorer.transform_failed(data),
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                self.pending_trailers = Some(t);
                            }
                            continue;
                        }
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    self.phase = Phase::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    self.phase = Phase::Flushed;
                    let tail = self.restorer.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                }
            }
        }
    }

    #[cold]
    fn after_end<E>(&mut self) -> Option<Result<Frame<Bytes>, E>> {
        match self.phase {
            Phase::Flushed => {
                self.phase = Phase::Done;
                self.pending_trailers.take().map(|t| Ok(Frame::trailers(t)))
            }
            _ => None,
        }
    }
}

impl<B> ResponseBody<B> {
    fn new(inner: B, vault: Vault, kind: Kind) -> Self {
        let restorer = match kind {
            Kind::Plain => None,
            Kind::Text(json) => Some(Restorer::Text(TextRestorer::new(vault, json))),
            Kind::Sse => Some(Restorer::Sse(SseRestorer::new(vault))),
        };
        Self {
            inner,
            restore: restorer.map(|restorer| {
                Box::new(RestoreState {
                    restorer,
                    pending_trailers: None,
                    phase: Phase::Streaming,
                })
            }),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.restore.as_deref().map(|r| &r.restorer) {
            None => "plain",
            Some(Restorer::Text(_)) => "restore",
            Some(Restorer::Sse(_)) => "restore-sse",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.restore {
            None => match ready!(this.inner.poll_frame(cx)) {
                // Rebuilt around its `Bytes`: see `RestoreState::poll_frame`.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => Poll::Ready(other),
            },
            Some(r) => r.poll_frame(this.inner, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.restore {
            None => self.inner.is_end_stream(),
            Some(r) => r.phase == Phase::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.restore {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}
