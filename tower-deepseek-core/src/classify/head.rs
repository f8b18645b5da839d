//! The first step: a response head (status and headers) or a transport error.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::{
    BodyTooLarge, BreakerOpen, IncompleteResponse, RequestNotSent, RequestRefused, TimeoutPhase,
    UpstreamTimeout,
};

use super::*;

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

    /// Classifies a response head. See the [module docs](crate::classify).
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
