//! The one classification of upstream outcomes, shared by retry, breaker, cache and audit.
//!
//! No layer decides on its own what a 503, a reset or an empty 200 means: they all ask the
//! [`Classifier`], in the spirit of tower-http's `classify` module. Classification has two steps:
//!
//! 1. [`Classifier::classify_head`] looks at the status and headers. Errors (4xx, 5xx) are
//!    classified at once ([`ClassifiedResponse::Ready`]). A 2xx chat answer is not yet a
//!    success: DeepSeek sends its 200 before it knows the outcome, pads with blank lines or
//!    `: keep-alive` comments, and sometimes ends with nothing, with a truncated body, an
//!    in-band `{"error":…}` or `finish_reason: insufficient_system_resource`. So a 2xx returns
//!    [`ClassifiedResponse::RequiresEos`] with an [`EosClassifier`] that reads the body as it
//!    passes (never holding it back) and decides at its end.
//! 2. [`Classifier::classify_error`] classifies a transport error, telling apart failures where
//!    the request was surely not sent (connect errors: safe to retry) from those after it may
//!    have been (a reset or read timeout: retrying may bill twice).
//!
//! The result, a [`FailureClass`], carries facts; each layer maps it to a decision, with these
//! defaults (DESIGN.md's table):
//!
//! | outcome | class | retry (default) | breaker (default) |
//! |---|---|---|---|
//! | 2xx, complete | `Ok(())` | done | success |
//! | 429 | [`RateLimited`](FailureClass::RateLimited) | exponential 1 s → 32 s, `Retry-After` honoured | ignored |
//! | 502 | [`BadGateway`](FailureClass::BadGateway) | immediately, at most 3 times | failure |
//! | 503 | [`Overloaded`](FailureClass::Overloaded) | random 5-15 s or `Retry-After` | failure |
//! | 504, attempt timeout | [`GatewayTimeout`](FailureClass::GatewayTimeout), [`Timeout`](FailureClass::Timeout) | with a longer timeout | failure |
//! | 500, other 5xx | [`Server`](FailureClass::Server) | exponential | failure |
//! | connect error | [`Connect`](FailureClass::Connect) | immediately, then exponential | failure |
//! | reset / read timeout after sending | [`Transport`](FailureClass::Transport) | only where configured | failure |
//! | 400, 401, 402, 403, 404, 422 | [`Client`](FailureClass::Client) | never | ignored |
//! | empty 200, cut stream, in-band error, insufficient resources | [`EmptyBody`](FailureClass::EmptyBody), [`Incomplete`](FailureClass::Incomplete), [`InBandError`](FailureClass::InBandError), [`InsufficientResources`](FailureClass::InsufficientResources) | as 5xx, only before a byte reached the caller | failure |
//!
//! [`FailureClass::default_verdict`] gives the breaker column; [`FailureClass::is_transient`]
//! says whether trying again can help.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, StatusCode};
//! use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, FailureClass};
//!
//! let classifier = Classifier::new();
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! let ClassifiedResponse::RequiresEos(mut eos) = classifier.classify_head(StatusCode::OK, &headers)
//! else { unreachable!() };
//! eos.on_data(&Bytes::from_static(b"\n\n\n")); // keep-alive blank lines, then nothing
//! assert_eq!(eos.finish(), Err(FailureClass::EmptyBody));
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use memchr::memmem;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::body::{BodyEnd, BodyObserver};
use crate::chat::{CompletionTokensDetails, FinishReason, PromptTokensDetails, Usage};
use crate::error::{
    BodyTooLarge, BreakerOpen, IncompleteResponse, RequestNotSent, RequestRefused, TimeoutPhase,
    UpstreamTimeout,
};
use crate::sse::SseParser;

/// Why an attempt did not succeed. Facts only; layers decide what to do about them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureClass {
    /// 429: rate limited (DeepSeek: the account-wide concurrency cap).
    RateLimited {
        /// The `Retry-After` header, if the upstream sent one.
        retry_after: Option<Duration>,
    },
    /// 502 Bad Gateway.
    BadGateway,
    /// 503: server overloaded.
    Overloaded {
        /// The `Retry-After` header, if the upstream sent one.
        retry_after: Option<Duration>,
    },
    /// 504 Gateway Timeout from the upstream.
    GatewayTimeout,
    /// One of our own deadlines passed (response headers, first token, idle gap), or 408.
    Timeout,
    /// 500, and every other 5xx.
    Server {
        /// The status.
        status: StatusCode,
    },
    /// The connection could not be made: the request was not sent.
    Connect,
    /// The transport failed after the request was (or may have been) sent: reset, read error.
    Transport,
    /// A 4xx (other than 408 and 429) that will not change on retry: 400, 401, 402 (insufficient
    /// balance), 403, 404, 422, ...
    Client {
        /// The status.
        status: StatusCode,
    },
    /// A 2xx whose body was empty or only whitespace (DeepSeek's keep-alive blank lines, then
    /// nothing), or a stream that closed without a single event.
    EmptyBody,
    /// A 2xx body that ended early: a stream without `data: [DONE]`, or truncated/malformed JSON.
    Incomplete,
    /// A 2xx whose body (or one of whose events) was an `{"error":…}` object.
    InBandError,
    /// `finish_reason: insufficient_system_resource`: DeepSeek cut inference short.
    InsufficientResources,
    /// A circuit breaker refused the call; it was not sent.
    BreakerOpen {
        /// When the breaker admits a probe again.
        retry_after: Duration,
    },
    /// A layer refused the request locally (too large, invalid); it was not sent.
    Rejected,
}

/// What a circuit breaker does with an outcome by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Counts as neither (client errors, rate limits, cancellations, local rejections).
    Ignored,
}

impl FailureClass {
    /// A stable snake_case name, usable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            FailureClass::RateLimited { .. } => "rate_limited",
            FailureClass::BadGateway => "bad_gateway",
            FailureClass::Overloaded { .. } => "overloaded",
            FailureClass::GatewayTimeout => "gateway_timeout",
            FailureClass::Timeout => "timeout",
            FailureClass::Server { .. } => "server_error",
            FailureClass::Connect => "connect_error",
            FailureClass::Transport => "transport_error",
            FailureClass::Client { .. } => "client_error",
            FailureClass::EmptyBody => "empty_body",
            FailureClass::Incomplete => "incomplete",
            FailureClass::InBandError => "in_band_error",
            FailureClass::InsufficientResources => "insufficient_resources",
            FailureClass::BreakerOpen { .. } => "breaker_open",
            FailureClass::Rejected => "rejected",
        }
    }

    /// The HTTP status behind this class, when it came from one.
    pub fn status(&self) -> Option<StatusCode> {
        Some(match self {
            FailureClass::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            FailureClass::BadGateway => StatusCode::BAD_GATEWAY,
            FailureClass::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            FailureClass::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            FailureClass::Server { status } | FailureClass::Client { status } => *status,
            _ => return None,
        })
    }

    /// The wait the upstream (or breaker) asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FailureClass::RateLimited { retry_after }
            | FailureClass::Overloaded { retry_after } => *retry_after,
            FailureClass::BreakerOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether trying the same request again can succeed.
    ///
    /// `false` for client errors and local rejections. `Transport` is transient but may bill
    /// twice; the retry layer retries it only when configured to.
    pub fn is_transient(&self) -> bool {
        !matches!(self, FailureClass::Client { .. } | FailureClass::Rejected)
    }

    /// Whether the request surely never reached the upstream.
    pub fn was_not_sent(&self) -> bool {
        matches!(
            self,
            FailureClass::Connect | FailureClass::BreakerOpen { .. } | FailureClass::Rejected
        )
    }

    /// The breaker's default verdict (DESIGN.md): 429, client errors and local rejections are
    /// ignored, everything else is a failure.
    pub fn default_verdict(&self) -> Verdict {
        match self {
            FailureClass::RateLimited { .. }
            | FailureClass::Client { .. }
            | FailureClass::BreakerOpen { .. }
            | FailureClass::Rejected => Verdict::Ignored,
            _ => Verdict::Failure,
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status() {
            Some(s) => write!(f, "{} ({})", self.as_str(), s.as_u16()),
            None => f.write_str(self.as_str()),
        }
    }
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date, relative to `now`.
///
/// A date in the past gives zero. Anything else gives `None`.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurdly long delays rather than failing.
        return Some(Duration::from_secs(s.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of `headers`, relative to the current time.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// Whether `headers` announce a `text/event-stream` body.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_sse_type)
}

fn is_sse_type(v: &HeaderValue) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    let v = v.as_bytes().trim_ascii_start();
    v.len() >= SSE.len() && v[..SSE.len()].eq_ignore_ascii_case(SSE)
}

fn is_json_or_unknown(content_type: Option<&HeaderValue>) -> bool {
    match content_type {
        None => true,
        // `application/json`, `application/problem+json`, `text/json`, any case, no allocation.
        Some(v) => v
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json")),
    }
}

/// The result of looking at a response head.
// The EOS variant is large, but it is built once per response and moved straight into the body
// observer; boxing it would cost an allocation on every 2xx.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ClassifiedResponse {
    /// The outcome is known from the head alone.
    Ready(Result<(), FailureClass>),
    /// A 2xx body that must be read (as it passes) before the outcome is known.
    RequiresEos(EosClassifier),
}

/// The shared classifier. Cheap to copy; holds only its limits.
#[derive(Debug, Clone, Copy)]
pub struct Classifier {
    max_json_inspect: usize,
    summary: bool,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier {
    /// The default classifier: inspects JSON bodies up to 8 MiB.
    pub const fn new() -> Self {
        Self {
            max_json_inspect: 8 * 1024 * 1024,
            summary: true,
        }
    }

    /// Sets how many bytes of a JSON 2xx body are kept (as shared `Bytes`, not copies) to
    /// inspect it at its end. A longer body is judged only on being non-empty.
    #[must_use]
    pub const fn max_json_inspect(mut self, bytes: usize) -> Self {
        self.max_json_inspect = bytes;
        self
    }

    /// Whether the [`EosClassifier`]s it makes fill in `usage`, `model` and
    /// `system_fingerprint` of their [`ResponseSummary`] (default `true`).
    ///
    /// A layer that needs only the verdict (retry, a breaker) turns it off: every verdict
    /// stays the same (the body is read and type-checked exactly as before), and a JSON answer
    /// is then classified without allocating. `finish_reason`, the error flag and the counters
    /// are kept either way.
    #[must_use]
    pub const fn summary(mut self, fill: bool) -> Self {
        self.summary = fill;
        self
    }

    /// Classifies a response head. See the [module docs](self).
    pub fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> ClassifiedResponse {
        let class = match status.as_u16() {
            200..=299 => {
                if status == StatusCode::NO_CONTENT || status == StatusCode::RESET_CONTENT {
                    return ClassifiedResponse::Ready(Ok(()));
                }
                // One header lookup for both checks.
                let content_type = headers.get(header::CONTENT_TYPE);
                let mode = if content_type.is_some_and(is_sse_type) {
                    Mode::Sse(Box::default())
                } else if is_json_or_unknown(content_type) {
                    Mode::Json {
                        first: None,
                        more: Vec::new(),
                        kept: 0,
                        non_ws: false,
                        overflow: false,
                    }
                } else {
                    return ClassifiedResponse::Ready(Ok(()));
                };
                return ClassifiedResponse::RequiresEos(EosClassifier {
                    mode,
                    summary: ResponseSummary::default(),
                    max_json: self.max_json_inspect,
                    fill_summary: self.summary,
                    model_seen: false,
                    ended: None,
                });
            }
            100..=199 | 300..=399 => return ClassifiedResponse::Ready(Ok(())),
            408 => FailureClass::Timeout,
            429 => FailureClass::RateLimited {
                retry_after: retry_after(headers),
            },
            400..=499 => FailureClass::Client { status },
            502 => FailureClass::BadGateway,
            503 => FailureClass::Overloaded {
                retry_after: retry_after(headers),
            },
            504 => FailureClass::GatewayTimeout,
            _ => FailureClass::Server { status },
        };
        ClassifiedResponse::Ready(Err(class))
    }

    /// Classifies an error from the inner service (or from a response body), walking its
    /// `source()` chain.
    ///
    /// Recognised: [`UpstreamTimeout`], tower's `Elapsed`, [`RequestNotSent`], hyper-util's
    /// legacy client errors with `is_connect()`, connection-refused I/O errors, [`BreakerOpen`],
    /// [`BodyTooLarge`], [`IncompleteResponse`]. Anything else is a [`FailureClass::Transport`]
    /// failure: the request may have been sent.
    pub fn classify_error(&self, err: &(dyn StdError + 'static)) -> FailureClass {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<UpstreamTimeout>() {
                return if t.phase() == TimeoutPhase::Connect {
                    FailureClass::Connect
                } else {
                    FailureClass::Timeout
                };
            }
            if e.is::<tower::timeout::error::Elapsed>() {
                return FailureClass::Timeout;
            }
            if e.is::<RequestNotSent>() {
                return FailureClass::Connect;
            }
            if let Some(b) = e.downcast_ref::<BreakerOpen>() {
                return FailureClass::BreakerOpen {
                    retry_after: b.retry_after(),
                };
            }
            if e.is::<BodyTooLarge>() || e.is::<RequestRefused>() {
                return FailureClass::Rejected;
            }
            if e.is::<IncompleteResponse>() {
                return FailureClass::Incomplete;
            }
            if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                if h.is_connect() {
                    return FailureClass::Connect;
                }
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable => {
                        return FailureClass::Connect;
                    }
                    TimedOut => return FailureClass::Timeout,
                    _ => {}
                }
            }
            cur = e.source();
        }
        FailureClass::Transport
    }
}

/// What the classifier learned from a 2xx body.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ResponseSummary {
    /// The last `usage` seen (the final usage chunk of a stream, or the JSON answer's).
    pub usage: Option<Usage>,
    /// The model that answered.
    pub model: Option<String>,
    /// The backend fingerprint.
    pub system_fingerprint: Option<String>,
    /// The last non-null `finish_reason` seen.
    pub finish_reason: Option<FinishReason>,
    /// SSE events dispatched (`[DONE]` included); 0 for JSON.
    pub events: u64,
    /// SSE comments (`: keep-alive`) skipped.
    pub comments: u64,
    /// Whether the stream reached `data: [DONE]`.
    pub done: bool,
    /// Body bytes seen.
    pub bytes: u64,
    /// Whether an `{"error":…}` body or event was seen.
    pub in_band_error: bool,
}

/// How a response body ended, as the layer that classified it saw it: the verdict and what
/// was learned on the way. Read from a [`SharedOutcome`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BodyOutcome {
    /// The end-of-body verdict ([`EosClassifier::finish`] or [`EosClassifier::fail`]).
    pub result: Result<(), FailureClass>,
    /// What the classifier learned (usage, model, finish reason, counters).
    pub summary: ResponseSummary,
}

/// One response body's classification, shared by the layers that need it, so that the body
/// is parsed once however many layers classify it.
///
/// A response extension. The innermost layer that classifies the body puts an empty slot in
/// the response's extensions when it sees the head, and fills it when the body ends (complete
/// or failed), before that end reaches the layers above it; a layer above that finds the slot
/// reads it at the end instead of running a classifier of its own. A body dropped before its
/// end leaves the slot empty. Only the layer that inserted the slot sets it. A layer between
/// that may change the verdict (one that rewrites or cuts the body, like a content filter)
/// removes the slot from the response, so that the layers above classify what it sends.
///
/// Layers publish it when a layer above asks for call facts
/// ([`CollectCallFacts`](crate::meta::CollectCallFacts)), so that a layer alone pays nothing
/// for it. The verdict is the publisher's: with classifiers configured differently (say a
/// smaller [`Classifier::max_json_inspect`]) the layers above get the publisher's judgement.
///
/// ```
/// use tower_deepseek_core::classify::{FailureClass, ResponseSummary, SharedOutcome};
///
/// let slot = SharedOutcome::new();
/// let seen_above = slot.clone(); // what a layer above finds in the response's extensions
/// assert!(seen_above.get().is_none()); // the body has not ended yet
/// slot.set(Err(FailureClass::InBandError), ResponseSummary::default());
/// assert_eq!(seen_above.get().unwrap().result, Err(FailureClass::InBandError));
/// ```
#[derive(Clone, Default)]
pub struct SharedOutcome(Arc<OnceLock<BodyOutcome>>);

impl SharedOutcome {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome, once the body has ended.
    pub fn get(&self) -> Option<&BodyOutcome> {
        self.0.get()
    }

    /// Fills the slot; `false` if it was already filled (the first outcome stays).
    pub fn set(&self, result: Result<(), FailureClass>, summary: ResponseSummary) -> bool {
        self.0.set(BodyOutcome { result, summary }).is_ok()
    }
}

impl fmt::Debug for SharedOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedOutcome").field(&self.get()).finish()
    }
}

#[derive(Debug)]
enum Mode {
    Sse(Box<SseParser>),
    Json {
        // The body kept for the final parse: most answers come in one chunk, kept without
        // allocating a `Vec`.
        first: Option<Bytes>,
        more: Vec<Bytes>,
        kept: usize,
        non_ws: bool,
        overflow: bool,
    },
}

/// Reads a 2xx body as it passes and classifies it at its end. Never holds data back: it only
/// looks (SSE events are parsed in passing; a JSON body is kept as shared `Bytes` handles and
/// parsed once at the end).
#[derive(Debug)]
pub struct EosClassifier {
    mode: Mode,
    summary: ResponseSummary,
    max_json: usize,
    /// Whether usage, model and fingerprint are copied into the summary.
    fill_summary: bool,
    /// Whether a `model` was seen (SSE events are probed until one is, summary or not, so
    /// that the verdict never depends on `fill_summary`).
    model_seen: bool,
    ended: Option<Result<(), FailureClass>>,
}

/// What the classifier reads from a JSON answer or event. Nothing here allocates for a normal
/// answer: strings are borrowed from the body (owned only when they hold escapes), and of the
/// `choices` only the last non-null `finish_reason` is kept, without collecting a `Vec`.
///
/// The shape (and so which bodies are "valid JSON of another shape") is the one the classifier
/// always had: a `Vec` of choices and owned strings accept and refuse exactly the same input.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    choices: Option<LastFinish>,
    #[serde(default)]
    usage: Option<UsageProbe>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    system_fingerprint: Option<Cow<'a, str>>,
}

/// The `choices` array, reduced to its last non-null `finish_reason` as it is read. Accepts
/// and refuses what `Vec<ChoiceProbe>` would.
struct LastFinish(Option<FinishReason>);

impl<'de> Deserialize<'de> for LastFinish {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LastFinish;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LastFinish, A::Error> {
                let mut last = None;
                while let Some(c) = seq.next_element::<ChoiceProbe>()? {
                    if c.finish_reason.is_some() {
                        last = c.finish_reason;
                    }
                }
                Ok(LastFinish(last))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `usage` without `Usage`'s catch-all map: `#[serde(flatten)]` makes serde buffer every field,
/// which would slow the classification of every answer. Unknown usage fields are dropped from
/// the summary (it is for accounting).
#[derive(Deserialize)]
struct UsageProbe {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    prompt_cache_miss_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<DetailsProbe>,
    #[serde(default)]
    completion_tokens_details: Option<DetailsProbe>,
}

#[derive(Deserialize)]
struct DetailsProbe {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<UsageProbe> for Usage {
    fn from(u: UsageProbe) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_cache_hit_tokens: u.prompt_cache_hit_tokens,
            prompt_cache_miss_tokens: u.prompt_cache_miss_tokens,
            prompt_tokens_details: u.prompt_tokens_details.map(|d| PromptTokensDetails {
                cached_tokens: d.cached_tokens,
                ..Default::default()
            }),
            completion_tokens_details: u.completion_tokens_details.map(|d| {
                CompletionTokensDetails {
                    reasoning_tokens: d.reasoning_tokens,
                    ..Default::default()
                }
            }),
            extra: Default::default(),
        }
    }
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    finish_reason: Option<FinishReason>,
}

static USAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static ERROR: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));
static FINISH: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"finish_reason\""));

/// Whether an event's JSON can carry usage, an error, or a non-null finish reason. A false
/// positive only costs a parse; a false negative is impossible for valid JSON, since those
/// keys must appear literally.
/// Whether `data` (which starts with `{`) closes the object it opens, outside strings, and ends
/// there: one pass that tells a whole event from a cut or garbled one without parsing it
/// (content deltas are most events, and are not probed). A cut anywhere leaves the outer `{`
/// open, so arrays need no count of their own. A byte table keeps the loop to a load and a
/// compare for the bytes that mean nothing here (most of them).
fn balanced_object(data: &[u8]) -> bool {
    const QUOTE: u8 = 1;
    const ESCAPE: u8 = 2;
    const OPEN: u8 = 3;
    const CLOSE: u8 = 4;
    static CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        t[b'"' as usize] = QUOTE;
        t[b'\\' as usize] = ESCAPE;
        t[b'{' as usize] = OPEN;
        t[b'}' as usize] = CLOSE;
        t
    };
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < data.len() {
        let class = CLASS[data[i] as usize];
        i += 1;
        if class == 0 {
            continue;
        }
        if in_string {
            match class {
                QUOTE => in_string = false,
                ESCAPE => i += 1,
                _ => {}
            }
            continue;
        }
        match class {
            QUOTE => in_string = true,
            OPEN => depth += 1,
            CLOSE => {
                let Some(d) = depth.checked_sub(1) else {
                    return false;
                };
                depth = d;
                if depth == 0 {
                    return data[i..].iter().all(u8::is_ascii_whitespace);
                }
            }
            _ => {}
        }
    }
    false
}

fn worth_probing(data: &[u8]) -> bool {
    if USAGE.find(data).is_some() || ERROR.find(data).is_some() {
        return true;
    }
    let mut rest = data;
    while let Some(i) = FINISH.find(rest) {
        rest = &rest[i + b"\"finish_reason\"".len()..];
        let value = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace() && *b != b':')
            .map(|p| rest[p]);
        if value.is_some_and(|b| b != b'n') {
            return true;
        }
    }
    false
}

impl ResponseSummary {
    /// Takes what `probe` found; usage, model and fingerprint only when `fill`.
    fn absorb(&mut self, probe: Probe<'_>, fill: bool) {
        if probe.error.is_some() {
            self.in_band_error = true;
        }
        if let Some(LastFinish(Some(r))) = probe.choices {
            self.finish_reason = Some(r);
        }
        if !fill {
            return;
        }
        if let Some(u) = probe.usage {
            self.usage = Some(u.into());
        }
        if let Some(m) = probe.model {
            self.model = Some(m.into_owned());
        }
        if let Some(fp) = probe.system_fingerprint {
            self.system_fingerprint = Some(fp.into_owned());
        }
    }
}

impl EosClassifier {
    /// Whether the body is an SSE stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Sse(_))
    }

    /// What was learned so far (usage, model, finish reason, event counts).
    pub fn summary(&self) -> &ResponseSummary {
        &self.summary
    }

    /// Takes the summary out, leaving an empty one.
    pub fn take_summary(&mut self) -> ResponseSummary {
        self.model_seen = false;
        std::mem::take(&mut self.summary)
    }

    /// Whether the body has carried its first real content: an SSE event (comments and blank
    /// lines do not count), or a non-whitespace JSON byte. What a time-to-first-token timeout
    /// waits for.
    pub fn has_content(&self) -> bool {
        match &self.mode {
            Mode::Sse(_) => self.summary.events > 0,
            Mode::Json { non_ws, .. } => *non_ws,
        }
    }

    /// Feeds one data chunk as it passes.
    pub fn on_data(&mut self, chunk: &Bytes) {
        if self.ended.is_some() {
            return;
        }
        self.summary.bytes += chunk.len() as u64;
        match &mut self.mode {
            Mode::Sse(parser) => {
                let summary = &mut self.summary;
                let fill = self.fill_summary;
                let model_seen = &mut self.model_seen;
                let mut malformed = false;
                let res = parser.push(chunk, |event| {
                    summary.events += 1;
                    if event.is_done() {
                        summary.done = true;
                        return;
                    }
                    if event.event() == Some(b"error") {
                        summary.in_band_error = true;
                        return;
                    }
                    let data = event.data();
                    let starts_obj = data
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        .is_some_and(|b| *b == b'{');
                    // Most events are content deltas; parse only those that can tell us
                    // something (the first one for the model, usage, errors, finish reasons).
                    if !starts_obj {
                        // Every data event of a chat stream is a JSON object.
                        malformed = true;
                    } else if !*model_seen || worth_probing(data) {
                        match serde_json::from_slice::<Probe<'_>>(data) {
                            Ok(probe) => {
                                *model_seen |= probe.model.is_some();
                                summary.absorb(probe, fill);
                            }
                            // An object of another shape is not ours to judge; broken JSON is.
                            Err(_) => {
                                if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
                                    malformed = true;
                                }
                            }
                        }
                    } else if !balanced_object(data) {
                        malformed = true;
                    }
                });
                self.summary.comments = parser.comments_seen();
                if res.is_err() || malformed {
                    // A cut or garbled event: the stream is not a whole answer.
                    self.ended = Some(Err(FailureClass::Incomplete));
                }
            }
            Mode::Json {
                first,
                more,
                kept,
                non_ws,
                overflow,
            } => {
                if !*non_ws && chunk.iter().any(|b| !b.is_ascii_whitespace()) {
                    *non_ws = true;
                }
                if !*overflow {
                    if *kept + chunk.len() > self.max_json {
                        *overflow = true;
                        *first = None;
                        *more = Vec::new();
                    } else if chunk.is_empty() {
                        // Nothing to keep.
                    } else {
                        *kept += chunk.len();
                        if first.is_none() {
                            *first = Some(chunk.clone());
                        } else {
                            more.push(chunk.clone());
                        }
                    }
                }
            }
        }
    }

    /// The body reached its end: the final classification. Idempotent.
    pub fn finish(&mut self) -> Result<(), FailureClass> {
        if let Some(r) = &self.ended {
            return r.clone();
        }
        let result = match &mut self.mode {
            Mode::Sse(_) => {
                let s = &self.summary;
                if s.in_band_error {
                    Err(FailureClass::InBandError)
                } else if s.finish_reason == Some(FinishReason::InsufficientSystemResource) {
                    Err(FailureClass::InsufficientResources)
                } else if s.events == 0 {
                    Err(FailureClass::EmptyBody)
                } else if !s.done {
                    Err(FailureClass::Incomplete)
                } else {
                    Ok(())
                }
            }
            Mode::Json {
                first,
                more,
                non_ws,
                overflow,
                ..
            } => {
                if !*non_ws {
                    Err(FailureClass::EmptyBody)
                } else if *overflow {
                    Ok(())
                } else {
                    let joined;
                    let bytes: &[u8] = match (first.as_ref(), more.is_empty()) {
                        (Some(one), true) => one,
                        (first, _) => {
                            let mut buf = BytesMut::new();
                            for c in first.into_iter().chain(more.iter()) {
                                buf.extend_from_slice(c);
                            }
                            joined = buf.freeze();
                            &joined
                        }
                    };
                    let object = bytes
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        .is_some_and(|b| *b == b'{');
                    if !object {
                        // Not an object (an array, a string): not an answer of ours to judge,
                        // only whether it arrived whole. (Probing it would read an array's
                        // elements as the probe's fields in order.)
                        let r = complete_json(bytes);
                        self.ended = Some(r.clone());
                        return r;
                    }
                    match serde_json::from_slice::<Probe<'_>>(bytes) {
                        Ok(probe) => {
                            self.summary.absorb(probe, self.fill_summary);
                            if self.summary.in_band_error {
                                Err(FailureClass::InBandError)
                            } else if self.summary.finish_reason
                                == Some(FinishReason::InsufficientSystemResource)
                            {
                                Err(FailureClass::InsufficientResources)
                            } else {
                                Ok(())
                            }
                        }
                        // A field of another type: an object of another shape, not ours to
                        // judge; but serde stopped at that field, so whether the rest arrived
                        // whole is still to be checked.
                        Err(e) if e.classify() == serde_json::error::Category::Data => {
                            complete_json(bytes)
                        }
                        Err(_) => Err(FailureClass::Incomplete),
                    }
                }
            }
        };
        self.ended = Some(result.clone());
        result
    }

    /// Reading the body failed with `err`: the final classification. A timeout stays a
    /// timeout; anything else means the response was cut ([`FailureClass::Incomplete`] for our
    /// own incomplete marker, [`FailureClass::Transport`] otherwise).
    pub fn fail(&mut self, err: &(dyn StdError + 'static)) -> FailureClass {
        if let Some(Err(c)) = &self.ended {
            return c.clone();
        }
        let class = match Classifier::new().classify_error(err) {
            FailureClass::Connect => FailureClass::Transport,
            other => other,
        };
        self.ended = Some(Err(class.clone()));
        class
    }
}

/// Whether `bytes` is one whole JSON document: `Ok`, or [`FailureClass::Incomplete`] when it is
/// cut or malformed.
fn complete_json(bytes: &[u8]) -> Result<(), FailureClass> {
    serde_json::from_slice::<IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|_| FailureClass::Incomplete)
}

/// How an observed response body ended, for [`OnEos`] callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The body ended (completely or with an error) and was classified.
    Finished(Result<(), FailureClass>),
    /// The caller dropped the body before its end: nothing is known about the upstream.
    Cancelled,
}

/// A [`BodyObserver`] that feeds an [`EosClassifier`] and calls `callback` once, at the end,
/// with the classification and the summary. Wrap a body in
/// [`ObservedBody`](crate::body::ObservedBody) with it to learn a stream's outcome without
/// delaying it.
pub struct OnEos<F> {
    classifier: EosClassifier,
    callback: Option<F>,
}

impl<F> OnEos<F>
where
    F: FnOnce(StreamEnd, &ResponseSummary),
{
    /// Feeds `classifier`; calls `callback` once when the body ends.
    pub fn new(classifier: EosClassifier, callback: F) -> Self {
        Self {
            classifier,
            callback: Some(callback),
        }
    }

    /// The classifier, for progress checks (e.g. [`EosClassifier::has_content`]).
    pub fn classifier(&self) -> &EosClassifier {
        &self.classifier
    }
}

impl<F> fmt::Debug for OnEos<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnEos")
            .field("classifier", &self.classifier)
            .field("called", &self.callback.is_none())
            .finish()
    }
}

impl<F> BodyObserver for OnEos<F>
where
    F: FnOnce(StreamEnd, &ResponseSummary),
{
    fn on_data(&mut self, chunk: &Bytes) {
        self.classifier.on_data(chunk);
    }

    fn on_end(&mut self, end: BodyEnd<'_>) {
        let result = match end {
            BodyEnd::Complete => StreamEnd::Finished(self.classifier.finish()),
            BodyEnd::Error(e) => StreamEnd::Finished(Err(self.classifier.fail(e))),
            BodyEnd::Dropped => StreamEnd::Cancelled,
        };
        if let Some(cb) = self.callback.take() {
            cb(result, self.classifier.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> ClassifiedResponse {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Classifier::new().classify_head(StatusCode::from_u16(status).unwrap(), &h)
    }

    fn ready(status: u16, headers: &[(&str, &str)]) -> Result<(), FailureClass> {
        match head(status, headers) {
            ClassifiedResponse::Ready(r) => r,
            ClassifiedResponse::RequiresEos(_) => panic!("{status} should be ready"),
        }
    }

    fn body(content_type: &str, chunks: &[&str]) -> Result<(), FailureClass> {
        let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", content_type)])
        else {
            panic!("2xx needs eos")
        };
        for c in chunks {
            eos.on_data(&Bytes::copy_from_slice(c.as_bytes()));
        }
        eos.finish()
    }

    const SSE: &str = "text/event-stream";
    const JSON: &str = "application/json";
    const DONE_OK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    #[test]
    fn a_cut_or_garbled_event_makes_the_stream_incomplete_even_with_done() {
        let first =
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
        for bad in [
            // cut inside an object (the testkit's malformed event)
            "data: {\"id\": \"malformed\", \"choices\": [{\"delta\": {\"content\": oops}\n\n",
            // cut inside a string
            "data: {\"choices\":[{\"delta\":{\"content\":\"hel\n\n",
            // not an object at all
            "data: oops\n\n",
            // trailing garbage after the object
            "data: {\"choices\":[]} x\n\n",
        ] {
            assert_eq!(
                body(SSE, &[first, bad, DONE_OK]),
                Err(FailureClass::Incomplete),
                "{bad}"
            );
        }
        // Braces and quotes inside strings, escapes, nesting: whole events.
        let tricky = "data: {\"choices\":[{\"delta\":{\"content\":\"a } ] \\\" { [ b\"}}]}\n\n";
        assert_eq!(body(SSE, &[first, tricky, DONE_OK]), Ok(()));
    }

    #[test]
    fn balanced_object_tells_whole_events_from_cut_ones() {
        assert!(balanced_object(br#"{"a":[1,{"b":"}"}]}"#));
        assert!(balanced_object(b"{\"a\":\"\\\\\"}  \n"));
        assert!(!balanced_object(br#"{"a":[1,{"b":"}"}]"#));
        assert!(!balanced_object(br#"{"a":"\"}"#));
        assert!(!balanced_object(br#"{"a":1}}"#));
        assert!(!balanced_object(br#"{"a":1} {"#));
    }

    // --- one test per row of DESIGN.md's table ---

    #[test]
    fn row_2xx_complete_is_success() {
        assert_eq!(
            body(JSON, &[r#"{"choices":[{"finish_reason":"stop"}]}"#]),
            Ok(())
        );
        assert_eq!(body(SSE, &[DONE_OK]), Ok(()));
    }

    #[test]
    fn row_429_rate_limited_with_and_without_retry_after() {
        assert_eq!(
            ready(429, &[("retry-after", "7")]),
            Err(FailureClass::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            })
        );
        let c = ready(429, &[]).unwrap_err();
        assert_eq!(c, FailureClass::RateLimited { retry_after: None });
        assert_eq!(c.default_verdict(), Verdict::Ignored);
        assert!(c.is_transient());
    }

    #[test]
    fn row_502_bad_gateway() {
        let c = ready(502, &[]).unwrap_err();
        assert_eq!(c, FailureClass::BadGateway);
        assert_eq!(c.default_verdict(), Verdict::Failure);
    }

    #[test]
    fn row_503_overloaded_with_retry_after() {
        assert_eq!(
            ready(503, &[("retry-after", "12")]),
            Err(FailureClass::Overloaded {
                retry_after: Some(Duration::from_secs(12))
            })
        );
        assert_eq!(
            ready(503, &[]).unwrap_err().default_verdict(),
            Verdict::Failure
        );
    }

    #[test]
    fn row_504_and_attempt_timeout() {
        assert_eq!(ready(504, &[]), Err(FailureClass::GatewayTimeout));
        let t = UpstreamTimeout::new(TimeoutPhase::Headers, Duration::from_secs(1));
        let c = Classifier::new().classify_error(&t);
        assert_eq!(c, FailureClass::Timeout);
        assert_eq!(c.default_verdict(), Verdict::Failure);
        let elapsed: crate::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            Classifier::new().classify_error(&*elapsed),
            FailureClass::Timeout
        );
    }

    #[test]
    fn row_500_and_other_5xx() {
        for s in [500, 501, 505, 599] {
            let c = ready(s, &[]).unwrap_err();
            assert_eq!(
                c,
                FailureClass::Server {
                    status: StatusCode::from_u16(s).unwrap()
                }
            );
            assert_eq!(c.default_verdict(), Verdict::Failure);
        }
    }

    #[test]
    fn row_connect_error_before_sending() {
        let c = Classifier::new();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(c.classify_error(&refused), FailureClass::Connect);
        let marked = RequestNotSent::new(std::io::Error::other("dns"));
        assert_eq!(c.classify_error(&marked), FailureClass::Connect);
        let connect_timeout = UpstreamTimeout::new(TimeoutPhase::Connect, Duration::from_secs(1));
        assert_eq!(c.classify_error(&connect_timeout), FailureClass::Connect);
        assert!(FailureClass::Connect.was_not_sent());
        assert_eq!(FailureClass::Connect.default_verdict(), Verdict::Failure);
    }

    #[tokio::test]
    async fn row_connect_error_from_hyper_util_client() {
        use hyper_util::client::legacy::Client;
        // Bind then drop a listener: connecting to that port is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client: Client<_, http_body_util::Empty<Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let err = client
            .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            Classifier::new().classify_error(&err),
            FailureClass::Connect
        );
    }

    #[test]
    fn row_reset_after_sending_is_transport() {
        let c = Classifier::new();
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let class = c.classify_error(&reset);
        assert_eq!(class, FailureClass::Transport);
        assert!(!class.was_not_sent());
        assert_eq!(class.default_verdict(), Verdict::Failure);
        let read_timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(c.classify_error(&read_timeout), FailureClass::Timeout);
    }

    #[test]
    fn row_client_errors_are_never_retried_and_ignored() {
        for s in [400, 401, 402, 403, 404, 422] {
            let c = ready(s, &[]).unwrap_err();
            assert_eq!(
                c,
                FailureClass::Client {
                    status: StatusCode::from_u16(s).unwrap()
                }
            );
            assert!(!c.is_transient(), "{s}");
            assert_eq!(c.default_verdict(), Verdict::Ignored, "{s}");
        }
    }

    #[test]
    fn row_stream_broken_after_first_byte() {
        // events went through, then the connection broke
        let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", SSE)]) else {
            panic!()
        };
        eos.on_data(&Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        assert!(eos.has_content());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let class = eos.fail(&reset);
        assert_eq!(class, FailureClass::Transport);
        assert_eq!(class.default_verdict(), Verdict::Failure);
        assert_eq!(eos.finish(), Err(FailureClass::Transport), "sticky");
    }

    // --- DeepSeek's special 2xx cases ---

    #[test]
    fn empty_and_whitespace_200_are_failures() {
        assert_eq!(body(JSON, &[]), Err(FailureClass::EmptyBody));
        assert_eq!(
            body(JSON, &["\n", "\n\n", " \r\n"]),
            Err(FailureClass::EmptyBody)
        );
        assert_eq!(
            body(SSE, &[": keep-alive\n\n", ": keep-alive\n\n"]),
            Err(FailureClass::EmptyBody)
        );
        assert_eq!(FailureClass::EmptyBody.default_verdict(), Verdict::Failure);
    }

    #[test]
    fn blank_lines_then_json_is_success() {
        assert_eq!(
            body(
                JSON,
                &["\n\n", "\n{\"choices\":[", "{\"finish_reason\":\"stop\"}]}"]
            ),
            Ok(())
        );
    }

    #[test]
    fn stream_without_done_is_incomplete() {
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(
            body(SSE, &[": keep-alive\n\n", cut]),
            Err(FailureClass::Incomplete)
        );
        // cut inside an event
        assert_eq!(
            body(SSE, &[cut, "data: {\"cho"]),
            Err(FailureClass::Incomplete)
        );
    }

    #[test]
    fn truncated_or_malformed_json_is_incomplete() {
        assert_eq!(
            body(JSON, &["{\"choices\":[{\"fin"]),
            Err(FailureClass::Incomplete)
        );
        assert_eq!(body(JSON, &["{not json}"]), Err(FailureClass::Incomplete));
        // valid JSON of another shape is not judged
        assert_eq!(body(JSON, &["[1,2,3]"]), Ok(()));
        // ... even an array as long as the probe's field list (not read as its fields)
        assert_eq!(
            body(JSON, &[r#"[{"message":"x"},null,null,null,null]"#]),
            Ok(())
        );
        assert_eq!(body(JSON, &["[1,2"]), Err(FailureClass::Incomplete));
        // a field of another type does not hide a cut further on
        assert_eq!(body(JSON, &[r#"{"choices":5,"id":"x"}"#]), Ok(()));
        assert_eq!(
            body(JSON, &[r#"{"choices":5,"id":"x","usage":{"prompt_tok"#]),
            Err(FailureClass::Incomplete)
        );
    }

    #[test]
    fn in_band_errors() {
        let e =
            r#"{"error":{"message":"Server Error","type":"server_error","param":null,"code":"x"}}"#;
        assert_eq!(body(JSON, &[e]), Err(FailureClass::InBandError));
        let ev = format!("data: {{\"choices\":[]}}\n\ndata: {e}\n\n");
        assert_eq!(body(SSE, &[&ev]), Err(FailureClass::InBandError));
        assert_eq!(
            body(SSE, &["event: error\ndata: boom\n\ndata: [DONE]\n\n"]),
            Err(FailureClass::InBandError)
        );
        // "error": null is no error
        assert_eq!(body(JSON, &[r#"{"error":null,"choices":[]}"#]), Ok(()));
    }

    #[test]
    fn insufficient_system_resource_is_a_failure() {
        let j = r#"{"choices":[{"message":{"content":"par"},"finish_reason":"insufficient_system_resource"}]}"#;
        assert_eq!(body(JSON, &[j]), Err(FailureClass::InsufficientResources));
        let s = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"insufficient_system_resource\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(body(SSE, &[s]), Err(FailureClass::InsufficientResources));
    }

    #[test]
    fn usage_is_read_from_a_stream_in_passing() {
        let ClassifiedResponse::RequiresEos(mut eos) = head(200, &[("content-type", SSE)]) else {
            panic!()
        };
        let stream = "data: {\"model\":\"deepseek-v4-flash\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"prompt_cache_hit_tokens\":8,\"prompt_cache_miss_tokens\":1}}\n\n\
            data: [DONE]\n\n";
        for b in stream.as_bytes().chunks(7) {
            eos.on_data(&Bytes::copy_from_slice(b));
        }
        assert_eq!(eos.finish(), Ok(()));
        let s = eos.summary();
        assert_eq!(s.usage.as_ref().unwrap().total_tokens, 11);
        assert_eq!(s.usage.as_ref().unwrap().cache_hit_tokens(), 8);
        assert_eq!(s.model.as_deref(), Some("deepseek-v4-flash"));
        assert_eq!(s.system_fingerprint.as_deref(), Some("fp_1"));
        assert_eq!(s.finish_reason, Some(FinishReason::Stop));
        assert_eq!(s.events, 4);
        assert!(s.done);
    }

    #[test]
    fn non_json_bodies_and_204_are_ready() {
        assert_eq!(ready(204, &[]), Ok(()));
        assert_eq!(ready(200, &[("content-type", "text/plain")]), Ok(()));
        assert_eq!(ready(301, &[]), Ok(()));
    }

    #[test]
    fn breaker_and_local_rejections() {
        let c = Classifier::new();
        let open = BreakerOpen::new(Duration::from_secs(3));
        let class = c.classify_error(&open);
        assert_eq!(class.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(class.default_verdict(), Verdict::Ignored);
        assert!(class.was_not_sent());
        let big = BodyTooLarge::new(1);
        assert_eq!(c.classify_error(&big), FailureClass::Rejected);
        assert!(!FailureClass::Rejected.is_transient());
    }

    #[test]
    fn refusals_are_local_rejections() {
        let c = Classifier::new().classify_error(&RequestRefused::new("quota"));
        assert_eq!(c, FailureClass::Rejected);
        assert_eq!(c.default_verdict(), Verdict::Ignored);
        assert!(!c.is_transient());
    }

    #[test]
    fn content_types_are_matched_without_case() {
        let sse = [("content-type", "Text/Event-Stream; charset=utf-8")];
        assert!(matches!(head(200, &sse), ClassifiedResponse::RequiresEos(e) if e.is_stream()));
        let json = [("content-type", "application/problem+JSON")];
        assert!(matches!(head(200, &json), ClassifiedResponse::RequiresEos(e) if !e.is_stream()));
        let none: [(&str, &str); 0] = [];
        assert!(matches!(
            head(200, &none),
            ClassifiedResponse::RequiresEos(_)
        ));
    }

    #[test]
    fn errors_are_found_in_the_source_chain() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl fmt::Display for Wrap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(Classifier::new().classify_error(&e), FailureClass::Connect);
    }

    // --- Retry-After ---

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("0"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static(" 30 "), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("-1"), now),
            None
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("1.5"), now),
            None
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static(""), now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let v = HeaderValue::from_static("Wed, 21 Oct 2026 07:28:45 GMT");
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(45)));
        let past = HeaderValue::from_static("Wed, 21 Oct 2026 07:27:00 GMT");
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let garbage = HeaderValue::from_static("tomorrow");
        assert_eq!(parse_retry_after(&garbage, now), None);
    }

    #[test]
    fn on_eos_reports_once_and_cancellation() {
        use crate::body::ObservedBody;
        use http_body_util::BodyExt;
        use std::sync::{Arc, Mutex};

        let seen = Arc::new(Mutex::new(Vec::new()));
        let ClassifiedResponse::RequiresEos(eos) = head(200, &[("content-type", SSE)]) else {
            panic!()
        };
        let s2 = seen.clone();
        let body = ObservedBody::new(
            http_body_util::Full::new(Bytes::from_static(DONE_OK.as_bytes())),
            OnEos::new(eos, move |end, summary: &ResponseSummary| {
                s2.lock().unwrap().push((end, summary.done));
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { body.collect().await.unwrap() });
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(StreamEnd::Finished(Ok(())), true)]
        );

        let seen = Arc::new(Mutex::new(Vec::new()));
        let ClassifiedResponse::RequiresEos(eos) = head(200, &[("content-type", SSE)]) else {
            panic!()
        };
        let s2 = seen.clone();
        let body = ObservedBody::new(
            http_body_util::Full::new(Bytes::from_static(DONE_OK.as_bytes())),
            OnEos::new(eos, move |end, _: &ResponseSummary| {
                s2.lock().unwrap().push(end)
            }),
        );
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![StreamEnd::Cancelled]);
    }
}
