//! [`RedactLayer`]: the layer and its settings.

use std::fmt;
use std::sync::Arc;

use tower_deepseek_core::body::DEFAULT_BODY_LIMIT;
use tower_layer::Layer;

use super::config::{NonJsonPolicy, RedactConfig, UnparseablePolicy};
use super::service::Redact;
use crate::ConfigError;
use crate::json::JsonPath;
use crate::redactor::Redactor;
#[cfg(doc)]
use crate::{InvalidJsonBody, InvalidJsonReason, Mode, PiiBlocked, PiiCounts};

/// Masks PII in requests before they leave, restores placeholders in answers.
///
/// # What is inspected, by endpoint
///
/// The request body is buffered, on every endpoint, with a limit ([`DEFAULT_BODY_LIMIT`] by
/// default; over it the request fails with
/// [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) and nothing reaches the inner
/// service). Then:
///
/// | request | what happens |
/// |---|---|
/// | a chat or FIM endpoint: a path ending in `/completions` (`/chat/completions`, `/v1/chat/completions`, `/beta/completions`, `/v1/completions`, behind any prefix; letter case, percent-encoding and a trailing `/` ignored), any method, a non-empty body | **parsed whatever its `Content-Type` says** (`application/json`, `text/plain`, a form, none, anything) and masked. A body that cannot be parsed is refused ([Refusals](#refusals)): it is never forwarded raw, unless [`UnparseablePolicy::PassThroughUnsafe`] says so |
/// | another endpoint (or method), a body labelled JSON (`application/json`, `…+json`) or not labelled | parsed and masked by the same field rules; a body that cannot be parsed passes untouched ([`NonJsonPolicy::PassThrough`], the default) or is refused ([`NonJsonPolicy::Reject`]) |
/// | another endpoint, a body labelled otherwise (`multipart/form-data`, `text/plain`, audio) | passes untouched ([`NonJsonPolicy::PassThrough`]); with [`NonJsonPolicy::Reject`] it is handled as on a chat endpoint: parsed whatever its label, refused if it cannot be |
/// | an empty body (`GET /models`, `GET /user/balance`) | passes |
///
/// Headers, the URI and its query string are neither inspected nor changed (only
/// `Content-Length`, kept right when the body changes). The body's `Content-Type` is
/// forwarded as the client sent it.
///
/// # Which fields are masked
///
/// The parser is one pass over the raw bytes. **Every string value is scanned, except the
/// structural fields listed below**: a field it does not know (`metadata`, a field of a newer
/// API version) is treated as text, so that a new route for personal data fails closed. An
/// entity found is replaced according to its [`Mode`], the string re-escaped and spliced into
/// the raw bytes; every byte outside a changed value stays identical, and a body with nothing
/// to mask is forwarded as the very same bytes (so DeepSeek's prefix cache and its
/// thinking-mode checks see what the client sent).
///
/// Scanned as text, because they carry what people and models write:
///
/// | field | why |
/// |---|---|
/// | `messages[].content` (a string), text parts `messages[].content[].text` | the conversation |
/// | `messages[].name` | a participant's name, often a person's handle or address |
/// | `messages[].reasoning_content`, `messages[].prefix` (of earlier turns and of the prefix-completion turn) | the model's own words, which repeat what the user wrote |
/// | `messages[].tool_calls[].function.arguments`, `messages[].function_call.arguments` | the model's calls carry values from the conversation |
/// | `user` | an end-user id: often an e-mail address or a phone number |
/// | `tools[].function.description` and every string in `tools[].function.parameters` (each `description` at any depth, `title`, `enum`, `examples`, `default`, ...); the same in legacy `functions[]` | tool docs can quote real contact data, examples and allowed values |
/// | `response_format.json_schema.description` and every string in its `schema` | the same |
/// | FIM and completion `prompt` (a string or a list), `suffix` | the text or code to complete |
/// | `stop`, and every string not listed as structural below | fail closed |
/// | numbers, except top-level ones and `logit_bias` (a phone number sent as `"phone": 13800138000` in `metadata` or a schema's `enum`) | a number that holds an entity is replaced by a JSON string with the entity masked |
///
/// Scanned as URLs: `image_url.url` (and `image_url` sent as a string), `video_url.url` and
/// `file.file_data` of content parts. A URL is percent-decoded (`%40` is `@`; `+` is a space
/// in its query) and scanned as text. If it holds an entity, the decoded URL is sent with the
/// entity masked where it stands: in the query string, the path, the user info or the
/// fragment (`https://img.example/a.png?phone=<CN_MOBILE_1>`), by its mode as in any text
/// (restored in the answer, counted, a blocked type refused). Masking only the query string
/// would miss paths such as `/users/13800138000/avatar.png`; replacing the whole URL by one
/// `URL` entity would bypass the mode of what was found and hide the host, which is no
/// personal data. The upstream cannot fetch such an image: that is the point, its fetcher
/// would have carried the value. A URL without an entity stays byte-identical, so signed URLs
/// keep working (unless a detected secret is part of the signature, such as an AWS access key
/// id in `X-Amz-Credential`: it is masked too). A `data:` URL whose payload is base64 (an
/// image, audio, a PDF) is not inspected: this layer masks text; it does not read images,
/// audio or files. Refuse such parts in the application if they may carry personal data.
/// Other `data:` URLs are text and are scanned.
///
/// Left byte-identical, because the API matches them exactly (identifiers and names) or they
/// are enumerated values; masking one would break the call:
///
/// - `model`, `messages[].role`, `messages[].tool_call_id`;
/// - `messages[].tool_calls[].id`, `.type` and `.function.name`, `messages[].function_call.name`;
/// - content part `type`s, `image_url.detail`, `input_audio.format`;
/// - `tools[].type`, `tools[].function.name`, `functions[].name`;
/// - `tool_choice` and `function_call` (a string, or `type` and `function.name`/`name`);
/// - `response_format.type`, `response_format.json_schema.name`, `thinking.type`,
///   `reasoning_effort`, `service_tier`;
/// - top-level numbers (`temperature`, `top_p`, `max_tokens`, `seed`, ...), `logit_bias`,
///   booleans and `null`;
/// - object keys (field names, and property names of JSON schemas).
///
/// A client that hides personal data in one of these (a function named after a phone number)
/// sends it as it is. [`RedactLayer::extra_path`] puts a structural string back to scanning.
///
/// # Refusals
///
/// A chat or FIM body the layer cannot read is refused before anything is sent; the error
/// names the cause, never a byte of the body. `tower_deepseek::error` (and the gateway)
/// answers it in the OpenAI shape `{"error":{"message","type":"invalid_request_error","code"}}`:
///
/// | cause | error | status, `code` |
/// |---|---|---|
/// | over the body limit | [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) | 413 `request_too_large` |
/// | not valid JSON (one document, nothing after it) | [`InvalidJsonBody`], [`InvalidJsonReason::Syntax`] | 400 `invalid_json` |
/// | not valid UTF-8 | [`InvalidJsonBody`], [`InvalidJsonReason::NotUtf8`] | 400 `invalid_json` |
/// | objects and arrays nested more than 256 levels deep | [`InvalidJsonBody`], [`InvalidJsonReason::TooDeep`] | 400 `invalid_json` |
/// | an entity of a type in [`Mode::Block`] | [`PiiBlocked`] | 422 `pii_blocked` |
///
/// Forwarding such bodies raw is possible only by naming it:
/// [`UnparseablePolicy::PassThroughUnsafe`] (`unparseable = "pass_through_unsafe"` in a
/// [`RedactConfig`]). Each body passed that way is logged (`warn`) and counted in
/// `deepseek_redact_unparseable_total{action="passed"}`; refusals count as
/// `action="refused"`. The size limit and blocked types refuse whatever the policy.
///
/// # Restore
///
/// Entities in [`Mode::Placeholder`] become `<CN_MOBILE_1>`; the vault lives in the request's
/// future and then in its response body, never anywhere shared. In the answer, placeholders are
/// put back: in JSON answers as JSON-escaped text, in SSE streams inside each event's string
/// deltas (`content`, `reasoning_content`, tool-call `arguments`, FIM `text`), also when one is
/// split across chunks or across two events (`<CN_MO` + `BILE_1>`). Only the bytes of a possible
/// partial placeholder are held back; an SSE event is forwarded as soon as its blank line
/// arrives, as its original bytes unless a placeholder in it was restored.
///
/// Upstreams that escape `<` and `>` in JSON strings (`\u003cCN_MOBILE_1\u003e`, as Go's
/// `encoding/json` does; either hex case, or only one of the two escaped) are restored too; an
/// escaped backslash before `u003c` is text, not a `<`, and is left alone. Plain-text answers
/// (not JSON) are restored only in the raw form, with the raw value.
///
/// Cost: a request without placeholders gets its response body back unwrapped (only a
/// branch). With a vault, a frame of whole SSE events without `<` or `\` is one `memchr2`
/// and is forwarded as the very same `Bytes`; events with a placeholder are rewritten in their
/// raw bytes without parsing; only a placeholder fragment that ends one event's string (to be
/// joined with the next event's) makes the restorer parse events.
///
/// # Order
///
/// Put it right under [`AuditLayer`](crate::AuditLayer) and above the cache, retry and the
/// client: nothing below (cache keys, logs, the network) sees a raw value, and the cache stores
/// masked answers that are restored per request. It puts [`PiiCounts`] in the request's
/// extensions (for your own layers below), and hands the masked body and the counts to the
/// audit layer above through its `PromptRecorder` (the one route by which they reach it).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt, Service};
/// use tower_deepseek_core::body::BufferedBody;
/// use tower_deepseek_redact::RedactLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
/// let mut svc = ServiceBuilder::new()
///     .layer(RedactLayer::new())
///     .service_fn(|req: Request<BufferedBody>| async move {
///         // The upstream sees a placeholder, never the number.
///         let body = req.into_body().into_bytes();
///         assert!(!body.windows(11).any(|w| w == b"13800138000"));
///         Ok::<_, tower_deepseek_core::BoxError>(Response::new(Full::new(body)))
///     });
/// let req = Request::post("/chat/completions")
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from(r#"{"messages":[{"role":"user","content":"call 13800138000"}]}"#)))?;
/// let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
/// let body = res.into_body().collect().await?.to_bytes();
/// // ... and the caller gets it back.
/// assert_eq!(&body[..], br#"{"messages":[{"role":"user","content":"call 13800138000"}]}"#);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedactLayer {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) redactor: Redactor,
    /// Structural fields scanned anyway.
    pub(super) extra_paths: Vec<JsonPath>,
    pub(super) limit: usize,
    pub(super) unparseable: UnparseablePolicy,
    pub(super) non_json: NonJsonPolicy,
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
        config: RedactConfig,
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
        let p = JsonPath::parse(path)
            .map_err(|e| ConfigError::new("extra_paths", e.reason().to_owned()))?;
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
