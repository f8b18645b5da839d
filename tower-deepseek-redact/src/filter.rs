//! [`ContentFilterLayer`]: keyword lists and regexes on model output, streams included.
//!
//! The filter looks at the text of answers only: `choices[].message.content`,
//! `reasoning_content`, tool-call `arguments` and FIM `choices[].text` in JSON answers, and
//! the same fields of each delta in SSE streams. Other fields and non-2xx answers pass
//! untouched.
//!
//! Actions:
//!
//! - [`FilterAction::Mask`]: every match becomes `***`.
//! - [`FilterAction::Block`]: a JSON answer becomes an error response (status
//!   [`ContentFilterLayerBuilder::block_status`], 400 by default) with an OpenAI-style body
//!   `{"error":{"message":…,"type":"content_filter","code":"content_filter"}}`; a stream ends
//!   with an SSE event `data: {"error":{…}}` and no further content (no `[DONE]`).
//!
//! # Streams
//!
//! A match may straddle two deltas (`bad` + `word`). Per choice and field, the filter holds
//! back the last `max_match_len - 1` characters of text (the longest keyword for keyword-only
//! filters; 64 by default with regexes) until the next delta, the finish event, or `[DONE]`
//! shows they cannot start a match. This is the only delay it adds; events without text
//! pass as their original bytes.
//!
//! JSON answers are read to their end (with a limit, 8 MiB by default) before they are
//! checked, since a verdict on a half-sent answer cannot be taken back.
//!
//! # Order
//!
//! Put it above [`RedactLayer`](crate::RedactLayer) to check the text the caller will see
//! (restored), or below it to check the masked text; above the cache, so that a cached answer
//! is checked against the current lists.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_deepseek_redact::filter::{ContentFilterLayer, FilterAction};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_deepseek_core::BoxError> {
//! let filter = ContentFilterLayer::builder()
//!     .keywords(["forbidden"])
//!     .action(FilterAction::Mask)
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(filter).service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"a Forbidden word"}}]}"#;
//!     Ok::<_, tower_deepseek_core::BoxError>(
//!         Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body)))?,
//!     )
//! });
//! let req = Request::new(Full::new(Bytes::new()));
//! let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await?.call(req).await?;
//! let body = res.into_body().collect().await?.to_bytes();
//! assert!(String::from_utf8(body.to_vec())?.contains("a *** word"));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use regex::Regex;
use serde_json::Value;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{ChunkTransform, DEFAULT_BODY_LIMIT, TransformBody, buffer};
use tower_deepseek_core::classify::{SharedOutcome, is_event_stream};
use tower_deepseek_core::sse::{SseEvent, SseParser};
use tower_layer::Layer;
use tower_service::Service;

use crate::detect::ConfigError;
use crate::json::{JsonPath, escape_into, find_strings, string_text};
use crate::restore::SseRestorer;

/// What the filter does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FilterAction {
    /// Replace each match with `***` (default).
    #[default]
    Mask,
    /// Withhold the answer (JSON) or end the stream with an error event.
    Block,
}

/// Filters model output. See the [module docs](self).
#[derive(Clone)]
pub struct ContentFilterLayer {
    shared: Arc<FilterShared>,
}

struct FilterShared {
    regex: Regex,
    action: FilterAction,
    hold: usize,
    limit: usize,
    block_status: StatusCode,
    paths: Vec<JsonPath>,
}

impl fmt::Debug for ContentFilterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The lists themselves may be sensitive: not printed.
        f.debug_struct("ContentFilterLayer")
            .field("action", &self.shared.action)
            .field("hold", &self.shared.hold)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ContentFilterLayer`].
#[must_use]
#[derive(Default)]
pub struct ContentFilterLayerBuilder {
    keywords: Vec<String>,
    regexes: Vec<String>,
    action: FilterAction,
    case_insensitive: Option<bool>,
    max_match_len: Option<usize>,
    limit: Option<usize>,
    block_status: Option<StatusCode>,
}

impl fmt::Debug for ContentFilterLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentFilterLayerBuilder")
            .finish_non_exhaustive()
    }
}

/// A serde configuration for [`ContentFilterLayer`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ContentFilterConfig {
    /// Literal keywords.
    pub keywords: Vec<String>,
    /// Regexes.
    pub regexes: Vec<String>,
    /// Mask or block.
    pub action: FilterAction,
    /// Case-insensitive matching (default true).
    pub case_insensitive: Option<bool>,
    /// Longest match a regex can make, in characters (default 64).
    pub max_match_len: Option<usize>,
    /// Limit for JSON answers, in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
    /// Status of a blocked JSON answer (default 400).
    pub block_status: Option<u16>,
}

impl ContentFilterLayerBuilder {
    /// Adds keywords (matched literally).
    pub fn keywords<I, K>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.keywords
            .extend(words.into_iter().map(Into::into).filter(|w| !w.is_empty()));
        self
    }

    /// Adds a regex.
    pub fn regex(mut self, pattern: impl Into<String>) -> Self {
        self.regexes.push(pattern.into());
        self
    }

    /// Mask or block.
    pub fn action(mut self, action: FilterAction) -> Self {
        self.action = action;
        self
    }

    /// Case-insensitive matching (default true).
    pub fn case_insensitive(mut self, yes: bool) -> Self {
        self.case_insensitive = Some(yes);
        self
    }

    /// The longest text a regex can match, in characters (default 64): how much a stream
    /// holds back.
    pub fn max_match_len(mut self, chars: usize) -> Self {
        self.max_match_len = Some(chars);
        self
    }

    /// The limit for JSON answers (default 8 MiB); a longer answer fails with
    /// [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) rather than pass unchecked.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// The status of a blocked JSON answer (default 400).
    pub fn block_status(mut self, status: StatusCode) -> Self {
        self.block_status = Some(status);
        self
    }

    /// From a serde configuration.
    pub fn config(mut self, c: &ContentFilterConfig) -> Self {
        self = self.keywords(c.keywords.iter().cloned()).action(c.action);
        for r in &c.regexes {
            self = self.regex(r.clone());
        }
        if let Some(ci) = c.case_insensitive {
            self = self.case_insensitive(ci);
        }
        if let Some(m) = c.max_match_len {
            self = self.max_match_len(m);
        }
        if let Some(l) = c.body_limit {
            self = self.body_limit(l);
        }
        if let Some(s) = c.block_status.and_then(|s| StatusCode::from_u16(s).ok()) {
            self = self.block_status(s);
        }
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] with no keyword or regex, an invalid regex, or a non-error block status.
    pub fn build(self) -> Result<ContentFilterLayer, ConfigError> {
        if self.keywords.is_empty() && self.regexes.is_empty() {
            return Err(ConfigError::new(
                "a content filter needs keywords or regexes",
            ));
        }
        let status = self.block_status.unwrap_or(StatusCode::BAD_REQUEST);
        if !(status.is_client_error() || status.is_server_error()) {
            return Err(ConfigError::new("block_status must be a 4xx or 5xx status"));
        }
        let mut alts: Vec<String> = self.keywords.iter().map(|k| regex::escape(k)).collect();
        for r in &self.regexes {
            Regex::new(r).map_err(|e| ConfigError::new(format!("invalid filter regex: {e}")))?;
            alts.push(format!("(?:{r})"));
        }
        let ci = if self.case_insensitive.unwrap_or(true) {
            "(?i)"
        } else {
            ""
        };
        let regex = Regex::new(&format!("{ci}(?:{})", alts.join("|")))
            .map_err(|e| ConfigError::new(format!("invalid filter: {e}")))?;
        let longest_kw = self
            .keywords
            .iter()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        let max_len = if self.regexes.is_empty() {
            longest_kw
        } else {
            longest_kw.max(self.max_match_len.unwrap_or(64))
        };
        let p = |s: &str| JsonPath::parse(s).expect("built-in path");
        Ok(ContentFilterLayer {
            shared: Arc::new(FilterShared {
                regex,
                action: self.action,
                hold: max_len.saturating_sub(1),
                limit: self.limit.unwrap_or(DEFAULT_BODY_LIMIT),
                block_status: status,
                paths: vec![
                    p("choices[].message.content"),
                    p("choices[].message.reasoning_content"),
                    p("choices[].message.tool_calls[].function.arguments"),
                    p("choices[].text"),
                ],
            }),
        })
    }
}

impl ContentFilterLayer {
    /// A builder.
    pub fn builder() -> ContentFilterLayerBuilder {
        ContentFilterLayerBuilder::default()
    }
}

impl<S> Layer<S> for ContentFilterLayer {
    type Service = ContentFilter<S>;

    fn layer(&self, inner: S) -> ContentFilter<S> {
        ContentFilter {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ContentFilterLayer`]. See the [module docs](self).
#[derive(Clone)]
pub struct ContentFilter<S> {
    inner: S,
    shared: Arc<FilterShared>,
}

impl<S> fmt::Debug for ContentFilter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentFilter").finish_non_exhaustive()
    }
}

impl<S> ContentFilter<S> {
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

const BLOCK_MESSAGE: &str = "The answer was withheld by the content filter.";

fn error_json() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"error": {
        "message": BLOCK_MESSAGE, "type": "content_filter", "param": null, "code": "content_filter"
    }}))
    .expect("serializes")
}

impl<S, Req, B> Service<Req> for ContentFilter<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            state: FState::Calling {
                fut: self.inner.call(req),
            },
            shared: self.shared.clone(),
        }
    }
}

type Collect = Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>>;

pin_project! {
    /// The future of [`ContentFilter`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: FState<F, B>,
        shared: Arc<FilterShared>,
    }
}

pin_project! {
    #[project = FStateProj]
    enum FState<F, B> {
        Calling { #[pin] fut: F },
        Collecting { fut: Collect, parts: Option<http::response::Parts>, _b: std::marker::PhantomData<fn() -> B> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                FStateProj::Calling { fut } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if !res.status().is_success() {
                        return Poll::Ready(Ok(res.map(|b| ResponseBody::plain(b))));
                    }
                    let mut res = res;
                    // This layer may rewrite the answer (block it, end a stream early), so a
                    // classification shared from below no longer describes what goes up: the
                    // layers above classify what this layer sends.
                    res.extensions_mut().remove::<SharedOutcome>();
                    if is_event_stream(res.headers()) {
                        res.headers_mut().remove(CONTENT_LENGTH);
                        let t = SseFilter::new(this.shared.clone());
                        return Poll::Ready(Ok(res.map(|b| ResponseBody {
                            inner: RBody::Sse {
                                body: TransformBody::new(b, t),
                            },
                        })));
                    }
                    let (parts, body) = res.into_parts();
                    let limit = this.shared.limit;
                    let fut: Collect = Box::pin(async move {
                        let b = buffer(Box::pin(body), limit).await?;
                        Ok(b.into_complete()?.into_bytes())
                    });
                    this.state.set(FState::Collecting {
                        fut,
                        parts: Some(parts),
                        _b: std::marker::PhantomData,
                    });
                }
                FStateProj::Collecting { fut, parts, .. } => {
                    let bytes = ready!(fut.as_mut().poll(cx))?;
                    let mut parts = parts.take().expect("polled after completion");
                    let body = match filter_json(this.shared, &bytes) {
                        JsonVerdict::Clean => bytes,
                        JsonVerdict::Masked(b) => {
                            metrics::counter!("deepseek_content_filter_total", "action" => "mask")
                                .increment(1);
                            Bytes::from(b)
                        }
                        JsonVerdict::Blocked => {
                            metrics::counter!("deepseek_content_filter_total", "action" => "block")
                                .increment(1);
                            tracing::info!(target: "tower_deepseek_redact", "answer withheld by the content filter");
                            parts.status = this.shared.block_status;
                            parts.headers.insert(
                                CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Bytes::from(error_json())
                        }
                    };
                    parts.headers.insert(CONTENT_LENGTH, body.len().into());
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody {
                            inner: RBody::Full {
                                body: Full::new(body),
                            },
                        },
                    )));
                }
            }
        }
    }
}

enum JsonVerdict {
    Clean,
    Masked(Vec<u8>),
    Blocked,
}

fn filter_json(shared: &FilterShared, b: &[u8]) -> JsonVerdict {
    // Skip DeepSeek's leading keep-alive blank lines: the scanner accepts whitespace.
    let Ok(spans) = find_strings(b, &shared.paths) else {
        return JsonVerdict::Clean;
    };
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for span in spans {
        let Ok(text) = string_text(b, span) else {
            continue;
        };
        if !shared.regex.is_match(&text) {
            continue;
        }
        if shared.action == FilterAction::Block {
            return JsonVerdict::Blocked;
        }
        let masked = shared.regex.replace_all(&text, "***");
        let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
        o.extend_from_slice(&b[last..span.start]);
        o.push(b'"');
        escape_into(o, &masked);
        o.push(b'"');
        last = span.end;
    }
    match out {
        None => JsonVerdict::Clean,
        Some(mut o) => {
            o.extend_from_slice(&b[last..]);
            JsonVerdict::Masked(o)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Content,
    Reasoning,
    Text,
    Arguments(u64),
}

/// Filters the string deltas of an SSE stream.
struct SseFilter {
    shared: Arc<FilterShared>,
    partial: BytesMut,
    pending: HashMap<(u64, Field), String>,
    template: Option<Value>,
    blocked: bool,
}

impl fmt::Debug for SseFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseFilter")
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

/// Outcome of filtering one field.
enum Step {
    Unchanged,
    Changed,
    Block,
}

impl SseFilter {
    fn new(shared: Arc<FilterShared>) -> Self {
        Self {
            shared,
            partial: BytesMut::new(),
            pending: HashMap::new(),
            template: None,
            blocked: false,
        }
    }

    fn block(&mut self, out: &mut BytesMut) {
        self.blocked = true;
        self.pending.clear();
        metrics::counter!("deepseek_content_filter_total", "action" => "block").increment(1);
        tracing::info!(target: "tower_deepseek_redact", "stream ended by the content filter");
        SseEvent::new(error_json()).encode(out);
    }

    /// Filters `text` (pending + new delta); returns what may be emitted now and keeps the rest.
    fn field(
        &mut self,
        key: (u64, Field),
        obj: &mut serde_json::Map<String, Value>,
        name: &str,
        flush: bool,
    ) -> Step {
        let carried = self.pending.remove(&key);
        let current = obj.get(name).and_then(Value::as_str);
        if carried.is_none() && current.is_none_or(str::is_empty) {
            return Step::Unchanged;
        }
        let mut text = carried.unwrap_or_default();
        text.push_str(current.unwrap_or(""));
        let text = if self.shared.regex.is_match(&text) {
            if self.shared.action == FilterAction::Block {
                return Step::Block;
            }
            metrics::counter!("deepseek_content_filter_total", "action" => "mask").increment(1);
            self.shared.regex.replace_all(&text, "***").into_owned()
        } else {
            text
        };
        let split = if flush {
            text.len()
        } else {
            // Keep the last `hold` characters.
            text.char_indices()
                .rev()
                .nth(self.shared.hold.saturating_sub(1))
                .map_or(0, |(i, _)| i)
                .min(text.len())
        };
        let split = if self.shared.hold == 0 {
            text.len()
        } else {
            split
        };
        let (emit, keep) = text.split_at(split);
        if !keep.is_empty() {
            self.pending.insert(key, keep.to_owned());
        }
        if current == Some(emit) {
            return Step::Unchanged;
        }
        obj.insert(name.to_owned(), Value::String(emit.to_owned()));
        Step::Changed
    }

    fn rewrite(&mut self, v: &mut Value) -> Step {
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return Step::Unchanged;
        };
        let mut changed = false;
        for (pos, choice) in choices.iter_mut().enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let flush = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(obj) = choice.as_object_mut() else {
                continue;
            };
            let mut steps = Vec::new();
            if obj.contains_key("text") || self.pending.contains_key(&(idx, Field::Text)) {
                steps.push(self.field((idx, Field::Text), obj, "text", flush));
            }
            if let Some(delta) = obj.get_mut("delta").and_then(Value::as_object_mut) {
                steps.push(self.field((idx, Field::Reasoning), delta, "reasoning_content", flush));
                steps.push(self.field((idx, Field::Content), delta, "content", flush));
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for (tpos, call) in calls.iter_mut().enumerate() {
                        let t = call
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(tpos as u64);
                        if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
                            steps.push(self.field(
                                (idx, Field::Arguments(t)),
                                f,
                                "arguments",
                                flush,
                            ));
                        }
                    }
                }
            }
            for s in steps {
                match s {
                    Step::Block => return Step::Block,
                    Step::Changed => changed = true,
                    Step::Unchanged => {}
                }
            }
        }
        if changed {
            Step::Changed
        } else {
            Step::Unchanged
        }
    }

    fn flush_all(&mut self, out: &mut BytesMut) {
        let keys: Vec<(u64, Field)> = self.pending.keys().copied().collect();
        for (idx, field) in keys {
            let text = self.pending.remove(&(idx, field)).unwrap_or_default();
            if self.shared.regex.is_match(&text) && self.shared.action == FilterAction::Block {
                self.block(out);
                return;
            }
            let text = self.shared.regex.replace_all(&text, "***").into_owned();
            let mut env = self
                .template
                .clone()
                .unwrap_or_else(|| serde_json::json!({"object": "chat.completion.chunk"}));
            if let Some(o) = env.as_object_mut() {
                o.remove("usage");
            }
            let choice = match field {
                Field::Content => {
                    serde_json::json!({"index": idx, "delta": {"content": text}, "finish_reason": null})
                }
                Field::Reasoning => {
                    serde_json::json!({"index": idx, "delta": {"reasoning_content": text}, "finish_reason": null})
                }
                Field::Text => {
                    serde_json::json!({"index": idx, "text": text, "finish_reason": null})
                }
                Field::Arguments(t) => {
                    serde_json::json!({"index": idx, "delta": {"tool_calls": [{"index": t, "function": {"arguments": text}}]}, "finish_reason": null})
                }
            };
            env["choices"] = Value::Array(vec![choice]);
            SseEvent::new(serde_json::to_vec(&env).expect("serializes")).encode(out);
        }
    }

    fn process(&mut self, raw: Bytes, out: &mut BytesMut) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        if parser.push(&raw, |e| events.push(e)).is_err() || events.is_empty() {
            out.extend_from_slice(&raw);
            return;
        }
        let mut encoded = BytesMut::new();
        let mut changed = false;
        for ev in events {
            if ev.is_done() {
                self.flush_all(&mut encoded);
                if self.blocked {
                    out.extend_from_slice(&encoded);
                    return;
                }
                changed = true;
                ev.encode(&mut encoded);
                continue;
            }
            let Ok(mut v) = serde_json::from_slice::<Value>(ev.data()) else {
                ev.encode(&mut encoded);
                continue;
            };
            match self.rewrite(&mut v) {
                Step::Block => {
                    // Nothing of this event, nor anything after it, is sent.
                    out.extend_from_slice(&encoded);
                    self.block(out);
                    return;
                }
                Step::Changed => {
                    changed = true;
                    let mut ne = SseEvent::new(serde_json::to_vec(&v).expect("serializes"));
                    if let Some(name) = ev.event() {
                        ne = ne.with_event(Bytes::copy_from_slice(name));
                    }
                    ne.encode(&mut encoded);
                }
                Step::Unchanged => ev.encode(&mut encoded),
            }
            if v.get("choices").is_some() {
                self.template = Some(v);
            }
        }
        if changed {
            out.extend_from_slice(&encoded);
        } else {
            out.extend_from_slice(&raw);
        }
    }
}

impl ChunkTransform for SseFilter {
    fn transform(&mut self, chunk: Bytes) -> Bytes {
        if self.blocked {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        let data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        let n = SseRestorer::complete_len(&data);
        let mut start = 0;
        while start < n && !self.blocked {
            let len = SseRestorer::complete_len_first(&data[start..n]);
            self.process(data.slice(start..start + len), &mut out);
            start += len;
        }
        if n < data.len() && !self.blocked {
            self.partial.extend_from_slice(&data[n..]);
        }
        out.freeze()
    }

    fn finish(&mut self) -> Bytes {
        if self.blocked {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        self.flush_all(&mut out);
        if !self.blocked {
            out.extend_from_slice(&self.partial.split());
        }
        out.freeze()
    }

    fn is_finished(&self) -> bool {
        self.blocked
    }
}

pin_project! {
    /// The response body of [`ContentFilter`].
    pub struct ResponseBody<B> {
        #[pin]
        inner: RBody<B>,
    }
}

pin_project! {
    #[project = RBodyProj]
    enum RBody<B> {
        Plain { #[pin] body: B },
        Sse { #[pin] body: TransformBody<B, SseFilter> },
        Full { #[pin] body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    fn plain(body: B) -> Self {
        Self {
            inner: RBody::Plain { body },
        }
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
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            RBodyProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            RBodyProj::Sse { body } => body.poll_frame(cx).map_err(Into::into),
            RBodyProj::Full { body } => body.poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RBody::Plain { body } => body.is_end_stream(),
            RBody::Sse { body } => body.is_end_stream(),
            RBody::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RBody::Plain { body } => body.size_hint(),
            RBody::Sse { .. } => SizeHint::default(),
            RBody::Full { body } => body.size_hint(),
        }
    }
}
