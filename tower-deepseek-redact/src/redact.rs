//! [`RedactLayer`]: masks PII in requests before they leave, restores placeholders in answers.
//!
//! # What is inspected, by endpoint
//!
//! The request body is buffered, on every endpoint, with a limit ([`DEFAULT_BODY_LIMIT`] by
//! default; over it the request fails with
//! [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) and nothing reaches the inner
//! service). Then:
//!
//! | request | what happens |
//! |---|---|
//! | a chat or FIM endpoint: a path ending in `/completions` (`/chat/completions`, `/v1/chat/completions`, `/beta/completions`, `/v1/completions`, behind any prefix; letter case, percent-encoding and a trailing `/` ignored), any method, a non-empty body | **parsed whatever its `Content-Type` says** (`application/json`, `text/plain`, a form, none, anything) and masked. A body that cannot be parsed is refused ([Refusals](#refusals)): it is never forwarded raw, unless [`UnparseablePolicy::PassThroughUnsafe`] says so |
//! | another endpoint (or method), a body labelled JSON (`application/json`, `…+json`) or not labelled | parsed and masked by the same field rules; a body that cannot be parsed passes untouched ([`NonJsonPolicy::PassThrough`], the default) or is refused ([`NonJsonPolicy::Reject`]) |
//! | another endpoint, a body labelled otherwise (`multipart/form-data`, `text/plain`, audio) | passes untouched ([`NonJsonPolicy::PassThrough`]); with [`NonJsonPolicy::Reject`] it is handled as on a chat endpoint: parsed whatever its label, refused if it cannot be |
//! | an empty body (`GET /models`, `GET /user/balance`) | passes |
//!
//! Headers, the URI and its query string are neither inspected nor changed (only
//! `Content-Length`, kept right when the body changes). The body's `Content-Type` is
//! forwarded as the client sent it.
//!
//! # Which fields are masked
//!
//! The parser is one pass over the raw bytes. **Every string value is scanned, except the
//! structural fields listed below**: a field it does not know (`metadata`, a field of a newer
//! API version) is treated as text, so that a new route for personal data fails closed. An
//! entity found is replaced according to its [`Mode`], the string re-escaped and spliced into
//! the raw bytes; every byte outside a changed value stays identical, and a body with nothing
//! to mask is forwarded as the very same bytes (so DeepSeek's prefix cache and its
//! thinking-mode checks see what the client sent).
//!
//! Scanned as text, because they carry what people and models write:
//!
//! | field | why |
//! |---|---|
//! | `messages[].content` (a string), text parts `messages[].content[].text` | the conversation |
//! | `messages[].name` | a participant's name, often a person's handle or address |
//! | `messages[].reasoning_content`, `messages[].prefix` (of earlier turns and of the prefix-completion turn) | the model's own words, which repeat what the user wrote |
//! | `messages[].tool_calls[].function.arguments`, `messages[].function_call.arguments` | the model's calls carry values from the conversation |
//! | `user` | an end-user id: often an e-mail address or a phone number |
//! | `tools[].function.description` and every string in `tools[].function.parameters` (each `description` at any depth, `title`, `enum`, `examples`, `default`, ...); the same in legacy `functions[]` | tool docs can quote real contact data, examples and allowed values |
//! | `response_format.json_schema.description` and every string in its `schema` | the same |
//! | FIM and completion `prompt` (a string or a list), `suffix` | the text or code to complete |
//! | `stop`, and every string not listed as structural below | fail closed |
//! | numbers, except top-level ones and `logit_bias` (a phone number sent as `"phone": 13800138000` in `metadata` or a schema's `enum`) | a number that holds an entity is replaced by a JSON string with the entity masked |
//!
//! Scanned as URLs: `image_url.url` (and `image_url` sent as a string), `video_url.url` and
//! `file.file_data` of content parts. A URL is percent-decoded (`%40` is `@`; `+` is a space
//! in its query) and scanned as text. If it holds an entity, the decoded URL is sent with the
//! entity masked where it stands: in the query string, the path, the user info or the
//! fragment (`https://img.example/a.png?phone=<CN_MOBILE_1>`), by its mode as in any text
//! (restored in the answer, counted, a blocked type refused). Masking only the query string
//! would miss paths such as `/users/13800138000/avatar.png`; replacing the whole URL by one
//! `URL` entity would bypass the mode of what was found and hide the host, which is no
//! personal data. The upstream cannot fetch such an image: that is the point, its fetcher
//! would have carried the value. A URL without an entity stays byte-identical, so signed URLs
//! keep working (unless a detected secret is part of the signature, such as an AWS access key
//! id in `X-Amz-Credential`: it is masked too). A `data:` URL whose payload is base64 (an
//! image, audio, a PDF) is not inspected: this layer masks text; it does not read images,
//! audio or files. Refuse such parts in the application if they may carry personal data.
//! Other `data:` URLs are text and are scanned.
//!
//! Left byte-identical, because the API matches them exactly (identifiers and names) or they
//! are enumerated values; masking one would break the call:
//!
//! - `model`, `messages[].role`, `messages[].tool_call_id`;
//! - `messages[].tool_calls[].id`, `.type` and `.function.name`, `messages[].function_call.name`;
//! - content part `type`s, `image_url.detail`, `input_audio.format`;
//! - `tools[].type`, `tools[].function.name`, `functions[].name`;
//! - `tool_choice` and `function_call` (a string, or `type` and `function.name`/`name`);
//! - `response_format.type`, `response_format.json_schema.name`, `thinking.type`,
//!   `reasoning_effort`, `service_tier`;
//! - top-level numbers (`temperature`, `top_p`, `max_tokens`, `seed`, ...), `logit_bias`,
//!   booleans and `null`;
//! - object keys (field names, and property names of JSON schemas).
//!
//! A client that hides personal data in one of these (a function named after a phone number)
//! sends it as it is. [`RedactLayer::extra_path`] puts a structural string back to scanning.
//!
//! # Refusals
//!
//! A chat or FIM body the layer cannot read is refused before anything is sent; the error
//! names the cause, never a byte of the body. `tower_deepseek::error` (and the gateway)
//! answers it in the OpenAI shape `{"error":{"message","type":"invalid_request_error","code"}}`:
//!
//! | cause | error | status, `code` |
//! |---|---|---|
//! | over the body limit | [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) | 413 `request_too_large` |
//! | not valid JSON (one document, nothing after it) | [`InvalidJsonBody`], [`InvalidJsonReason::Syntax`] | 400 `invalid_json` |
//! | not valid UTF-8 | [`InvalidJsonBody`], [`InvalidJsonReason::NotUtf8`] | 400 `invalid_json` |
//! | objects and arrays nested more than 256 levels deep | [`InvalidJsonBody`], [`InvalidJsonReason::TooDeep`] | 400 `invalid_json` |
//! | an entity of a type in [`Mode::Block`] | [`PiiBlocked`] | 422 `pii_blocked` |
//!
//! Forwarding such bodies raw is possible only by naming it:
//! [`UnparseablePolicy::PassThroughUnsafe`] (`unparseable = "pass_through_unsafe"` in a
//! [`RedactConfig`]). Each body passed that way is logged (`warn`) and counted in
//! `deepseek_redact_unparseable_total{action="passed"}`; refusals count as
//! `action="refused"`. The size limit and blocked types refuse whatever the policy.
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

use std::borrow::Cow;
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
use crate::json::{Invalid, JsonPath, SpanKind, escape_into, find_request_strings, span_text};
use crate::redactor::{Mode, PiiBlocked, PiiCounts, RedactContext, Redactor, Vault};
use crate::restore::{SseRestorer, TextRestorer};

/// What to do, on endpoints other than chat and FIM, with a body that is not JSON (see
/// [the table](self#what-is-inspected-by-endpoint)). Chat and FIM bodies follow
/// [`UnparseablePolicy`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NonJsonPolicy {
    /// Forward it untouched: a body labelled other than JSON, or one that cannot be parsed
    /// (default: uploads and other APIs pass).
    #[default]
    PassThrough,
    /// Parse every body whatever its label, and refuse one that cannot be parsed with
    /// [`InvalidJsonBody`] (a gateway answers 400): every endpoint is handled like chat.
    Reject,
}

/// What to do with a chat or FIM body that cannot be parsed (invalid JSON, not UTF-8,
/// nested too deep), and therefore cannot be checked for personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnparseablePolicy {
    /// Refuse it with [`InvalidJsonBody`] (a gateway answers 400). The default: redaction
    /// fails closed.
    #[default]
    Reject,
    /// Forward it raw, unmasked, to the inner service, with a `warn` log and
    /// `deepseek_redact_unparseable_total{action="passed"}`. Whatever personal data it holds
    /// leaves as it is: only for an upstream that is itself trusted with it.
    PassThroughUnsafe,
}

/// Why a request body could not be parsed ([`InvalidJsonBody::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidJsonReason {
    /// Not valid JSON: a syntax error, an invalid escape, or anything after the document.
    #[default]
    Syntax,
    /// Not valid UTF-8 (JSON must be).
    NotUtf8,
    /// Objects and arrays nested more than 256 levels deep.
    TooDeep,
}

impl InvalidJsonReason {
    /// `syntax`, `not_utf8` or `too_deep` (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidJsonReason::Syntax => "syntax",
            InvalidJsonReason::NotUtf8 => "not_utf8",
            InvalidJsonReason::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for InvalidJsonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request body could not be parsed, so it could not be checked for personal data, and
/// it was refused: always on the chat and FIM endpoints (unless
/// [`UnparseablePolicy::PassThroughUnsafe`]), and on the others with [`NonJsonPolicy::Reject`].
///
/// The message names the reason, never a byte of the body. A gateway answers 400.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InvalidJsonBody {
    reason: InvalidJsonReason,
}

impl InvalidJsonBody {
    /// An error for `reason`.
    pub fn new(reason: InvalidJsonReason) -> Self {
        Self { reason }
    }

    /// Why the body could not be parsed.
    pub fn reason(&self) -> InvalidJsonReason {
        self.reason
    }
}

impl fmt::Display for InvalidJsonBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            InvalidJsonReason::Syntax => "the body is not valid JSON",
            InvalidJsonReason::NotUtf8 => "the body is not valid UTF-8",
            InvalidJsonReason::TooDeep => {
                "the body nests objects or arrays more than 256 levels deep"
            }
        };
        write!(
            f,
            "request refused: {why}, so it cannot be checked for personal data; send one JSON object in UTF-8"
        )
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
/// # chat and FIM bodies that cannot be parsed: "reject" (default) or "pass_through_unsafe"
/// unparseable = "reject"
/// # other endpoints: "pass_through" (default) or "reject"
/// non_json = "reject"
/// disabled = ["IPV4"]
/// extra_paths = ["tools[].function.name"]
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
    /// Structural fields to scan anyway (every other string is scanned already).
    pub extra_paths: Vec<String>,
    /// Request body limit in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
    /// Chat and FIM bodies that cannot be parsed (default `reject`).
    pub unparseable: UnparseablePolicy,
    /// Non-JSON bodies on other endpoints (default `pass_through`).
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
    /// Structural fields scanned anyway.
    extra_paths: Vec<JsonPath>,
    limit: usize,
    unparseable: UnparseablePolicy,
    non_json: NonJsonPolicy,
}

impl fmt::Debug for RedactLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactLayer")
            .field("redactor", &self.shared.redactor)
            .field("extra_paths", &self.shared.extra_paths)
            .field("limit", &self.shared.limit)
            .field("unparseable", &self.shared.unparseable)
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
                extra_paths: Vec::new(),
                limit: DEFAULT_BODY_LIMIT,
                unparseable: UnparseablePolicy::Reject,
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
        Ok(layer
            .unparseable(config.unparseable)
            .non_json(config.non_json))
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &*self.shared;
        let mut new = Shared {
            redactor: s.redactor.clone(),
            extra_paths: s.extra_paths.clone(),
            limit: s.limit,
            unparseable: s.unparseable,
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

    /// What to do with chat and FIM bodies that cannot be parsed (default
    /// [`UnparseablePolicy::Reject`]).
    #[must_use]
    pub fn unparseable(self, policy: UnparseablePolicy) -> Self {
        self.edit(|s| s.unparseable = policy)
    }

    /// What to do with non-JSON bodies on other endpoints (default
    /// [`NonJsonPolicy::PassThrough`]).
    #[must_use]
    pub fn non_json(self, policy: NonJsonPolicy) -> Self {
        self.edit(|s| s.non_json = policy)
    }

    /// Scans a structural field anyway (see [`JsonPath::parse`]), e.g. `model` or
    /// `tools[].function.name`. Every other string value is scanned already.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid path.
    pub fn extra_path(self, path: &str) -> Result<Self, ConfigError> {
        let p = JsonPath::parse(path)?;
        Ok(self.edit(|s| s.extra_paths.push(p)))
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

/// Whether `path` is a chat or FIM endpoint, whose bodies are always parsed: it ends with
/// `/completions` (`/chat/completions`, `/v1/chat/completions`, `/beta/completions`,
/// `/v1/completions`), ignoring ASCII case, percent-encoding and trailing slashes.
pub(crate) fn is_completion_path(path: &str) -> bool {
    const TAIL: &[u8] = b"/completions";
    let decoded = percent_decode(path.as_bytes(), false);
    let mut p: &[u8] = &decoded;
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p.len() >= TAIL.len() && p[p.len() - TAIL.len()..].eq_ignore_ascii_case(TAIL)
}

/// `%XX` decoded (and `+` as a space when `plus_is_space`); borrowed when there is nothing to
/// decode. A `%` not followed by two hex digits stays as it is.
fn percent_decode(b: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if !b.iter().any(|&c| c == b'%' || (plus_is_space && c == b'+')) {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether `url` is a `data:` URL with a base64 payload (binary: an image, audio, a file).
fn is_base64_data_url(url: &str) -> bool {
    let b = url.as_bytes();
    if b.len() < 5 || !b[..5].eq_ignore_ascii_case(b"data:") {
        return false;
    }
    let head = match memchr::memchr(b',', b) {
        Some(i) => &b[..i],
        None => return false,
    };
    head.len() >= 7 && head[head.len() - 7..].eq_ignore_ascii_case(b";base64")
}

/// Redacts a URL field: percent-decoded (`+` as a space in the query), scanned as text; when
/// an entity is found, the decoded URL with the entity masked. Base64 `data:` URLs are not
/// inspected (binary).
fn redact_url(
    redactor: &Redactor,
    url: &str,
    ctx: &mut RedactContext,
) -> Result<Option<String>, PiiBlocked> {
    if is_base64_data_url(url) {
        return Ok(None);
    }
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let (head, query) = (
        percent_decode(head.as_bytes(), false),
        percent_decode(query.as_bytes(), true),
    );
    if let (Cow::Borrowed(_), Cow::Borrowed(_)) = (&head, &query) {
        return redactor.redact(url, ctx);
    }
    let decoded = [&*head, &*query].concat();
    redactor.redact(&String::from_utf8_lossy(&decoded), ctx)
}

/// Redacts a buffered request body (see the module docs for the fields). `Ok(None)`: nothing
/// changed.
pub(crate) fn redact_body(
    redactor: &Redactor,
    extra_paths: &[JsonPath],
    body: &[u8],
    ctx: &mut RedactContext,
) -> Result<Option<Vec<u8>>, BodyError> {
    // Validated once, whole: every span is then a `&str` slice, and no byte that is not
    // UTF-8 can pass in a field left as it is.
    let doc =
        std::str::from_utf8(body).map_err(|_| BodyError::Invalid(InvalidJsonReason::NotUtf8))?;
    let invalid = |e: Invalid| {
        BodyError::Invalid(match e {
            Invalid::Syntax => InvalidJsonReason::Syntax,
            Invalid::TooDeep => InvalidJsonReason::TooDeep,
        })
    };
    let spans = find_request_strings(doc, extra_paths).map_err(invalid)?;
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for span in spans {
        let text = span_text(doc, span).map_err(invalid)?;
        let new = match span.kind {
            SpanKind::Url => redact_url(redactor, &text, ctx),
            SpanKind::Text | SpanKind::Number => redactor.redact(&text, ctx),
        }
        .map_err(BodyError::Blocked)?;
        if let Some(new) = new {
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
    Invalid(InvalidJsonReason),
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
    // Chat and FIM bodies are parsed whatever their label; so are all bodies under
    // `NonJsonPolicy::Reject`.
    let strict = is_completion_path(parts.uri.path());
    let pass_unparseable = if strict {
        shared.unparseable == UnparseablePolicy::PassThroughUnsafe
    } else {
        shared.non_json == NonJsonPolicy::PassThrough
    };
    if !strict && pass_unparseable && !is_json_content_type(&parts.headers) {
        return pass(parts, bytes);
    }
    let tenant = parts
        .extensions
        .get::<TenantId>()
        .map(|t| t.as_str().to_owned());
    let mut ctx = RedactContext::new(tenant.as_deref());
    let new = match redact_body(&shared.redactor, &shared.extra_paths, &raw, &mut ctx) {
        Ok(n) => n,
        Err(BodyError::Invalid(reason)) if pass_unparseable => {
            if strict {
                metrics::counter!("deepseek_redact_unparseable_total", "action" => "passed", "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(target: "tower_deepseek_redact", %reason, "chat or FIM body that cannot be parsed forwarded unmasked (unparseable = pass_through_unsafe)");
            }
            return pass(parts, bytes);
        }
        Err(BodyError::Invalid(reason)) => {
            metrics::counter!("deepseek_redact_unparseable_total", "action" => "refused", "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(target: "tower_deepseek_redact", %reason, "request body that cannot be parsed refused");
            return Err(Box::new(InvalidJsonBody::new(reason)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_paths() {
        for p in [
            "/chat/completions",
            "/v1/chat/completions",
            "/beta/completions",
            "/v1/completions",
            "/completions",
            "/openai/deployments/x/chat/completions",
            "/chat/completions/",
            "/chat/completions//",
            "/CHAT/Completions",
            "/chat%2Fcompletions",
            "/chat/completion%73",
        ] {
            assert!(is_completion_path(p), "{p}");
        }
        for p in [
            "/",
            "/models",
            "/v1/embeddings",
            "/chat/completions/x",
            "/chatcompletions",
            "completions",
            "/user/balance",
        ] {
            assert!(!is_completion_path(p), "{p}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert!(matches!(percent_decode(b"abc", true), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode(b"a%40b%2d+c", true), b"a@b- c");
        assert_eq!(&*percent_decode(b"a+b", false), b"a+b");
        // Not two hex digits: kept as they are.
        assert_eq!(&*percent_decode(b"%zz%4%", false), b"%zz%4%");
        assert_eq!(&*percent_decode(b"%e4%bd%a0", false), "你".as_bytes());
    }

    #[test]
    fn base64_data_urls() {
        assert!(is_base64_data_url("data:image/png;base64,AAAA"));
        assert!(is_base64_data_url("DATA:application/pdf;BASE64,AAAA"));
        assert!(!is_base64_data_url("data:text/plain,13800138000"));
        assert!(!is_base64_data_url(
            "data:text/plain;charset=utf-8,x;base64,"
        ));
        assert!(!is_base64_data_url("data:image/png;base64"));
        assert!(!is_base64_data_url("https://x/a.png?data:;base64,"));
    }
}
