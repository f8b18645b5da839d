//! The second step: a 2xx body, read as it passes and judged at its end.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::LazyLock;

use memchr::memmem;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::body::{BodyEnd, BodyObserver};
use crate::chat::{CompletionTokensDetails, FinishReason, PromptTokensDetails, Usage};
use crate::sse::SseParser;

use super::*;

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

#[derive(Debug)]
pub(super) enum Mode {
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
    pub(super) mode: Mode,
    pub(super) summary: ResponseSummary,
    pub(super) max_json: usize,
    /// Whether usage, model and fingerprint are copied into the summary.
    pub(super) fill_summary: bool,
    /// Whether a `model` was seen (SSE events are probed until one is, summary or not, so
    /// that the verdict never depends on `fill_summary`).
    pub(super) model_seen: bool,
    pub(super) ended: Option<Result<(), FailureClass>>,
}

/// What the classifier reads from a JSON answer or event. Nothing here allocates for a normal
/// answer: strings are borrowed from the body (owned only when they hold escapes), and of the
/// `choices` only the last non-null `finish_reason` is kept, without collecting a `Vec`.
///
/// The shape (and so which bodies are "valid JSON of another shape") is the one the classifier
/// always had: a `Vec` of choices and owned strings accept and refuse exactly the same input.
#[derive(Deserialize)]
pub(super) struct Probe<'a> {
    #[serde(default)]
    pub(super) error: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) choices: Option<LastFinish>,
    #[serde(default)]
    pub(super) usage: Option<UsageProbe>,
    #[serde(borrow, default)]
    pub(super) model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) system_fingerprint: Option<Cow<'a, str>>,
}

/// The `choices` array, reduced to its last non-null `finish_reason` as it is read. Accepts
/// and refuses what `Vec<ChoiceProbe>` would.
pub(super) struct LastFinish(pub(super) Option<FinishReason>);

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
#[derive(Deserialize, Default)]
pub(super) struct UsageProbe {
    #[serde(default)]
    pub(super) prompt_tokens: u64,
    #[serde(default)]
    pub(super) completion_tokens: u64,
    #[serde(default)]
    pub(super) total_tokens: u64,
    #[serde(default)]
    pub(super) prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    pub(super) prompt_cache_miss_tokens: Option<u64>,
    #[serde(default)]
    pub(super) prompt_tokens_details: Option<DetailsProbe>,
    #[serde(default)]
    pub(super) completion_tokens_details: Option<DetailsProbe>,
}

#[derive(Deserialize, Default)]
pub(super) struct DetailsProbe {
    #[serde(default)]
    pub(super) cached_tokens: Option<u64>,
    #[serde(default)]
    pub(super) reasoning_tokens: Option<u64>,
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
pub(super) fn balanced_object(data: &[u8]) -> bool {
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

pub(super) fn worth_probing(data: &[u8]) -> bool {
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
                scanned(chunk.len());
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
                    scanned(bytes.len());
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
                    // The light check reads what the verdict needs; on anything it does not
                    // accept, the full probe decides (and classifies the error).
                    let probe = match super::light::light_probe(bytes, self.fill_summary) {
                        Some(p) => Ok(p),
                        None => serde_json::from_slice::<Probe<'_>>(bytes),
                    };
                    match probe {
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
pub(super) fn complete_json(bytes: &[u8]) -> Result<(), FailureClass> {
    if super::light::light_complete(bytes) {
        return Ok(());
    }
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

#[cfg(feature = "scan-counter")]
static SCANNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Notes `n` answer bytes scanned by a classifier (SSE events as they pass, a JSON answer at
/// its end). Nothing without the `scan-counter` feature.
#[inline(always)]
fn scanned(n: usize) {
    #[cfg(feature = "scan-counter")]
    SCANNED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "scan-counter"))]
    let _ = n;
}

/// The answer bytes the end-of-body classifiers of this process have scanned so far (feature
/// `scan-counter`): a test reads it before and after a call to check that an answer is parsed
/// once however many layers judge it.
#[cfg(feature = "scan-counter")]
#[cfg_attr(docsrs, doc(cfg(feature = "scan-counter")))]
pub fn bytes_scanned() -> u64 {
    SCANNED.load(std::sync::atomic::Ordering::Relaxed)
}
