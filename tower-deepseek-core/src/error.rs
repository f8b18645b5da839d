//! Small, public, downcastable error types shared by the layers.
//!
//! Client-side layers return [`BoxError`]; callers find the cause with
//! `err.downcast_ref::<BodyTooLarge>()` and friends. Messages say what happened and what to do,
//! and never contain a body, a prompt or a credential.

use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// A request body was larger than the configured limit. A gateway answers 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    limit: usize,
}

impl BodyTooLarge {
    /// An error for a body over `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        Self { limit }
    }

    /// The limit that was passed, in bytes.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body is larger than the {} byte limit; send a smaller request or raise the layer's body limit",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// The request never left this process: the connection could not be made.
///
/// Wrap a connector's error in this type when it is certain that no byte of the request was
/// written; the classifier then treats the failure as safe to retry at once. Errors from
/// hyper-util's legacy client with `is_connect()` are recognised without it.
#[derive(Debug)]
pub struct RequestNotSent {
    source: BoxError,
}

impl RequestNotSent {
    /// Marks `source` as a failure before the request was sent.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for RequestNotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not connect to the upstream; the request was not sent")
    }
}

impl std::error::Error for RequestNotSent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Which deadline of an upstream call passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Establishing the connection (the request was not sent).
    Connect,
    /// Waiting for the response head of one attempt.
    Headers,
    /// Waiting for the first SSE `data:` event (keep-alive comments do not count).
    FirstToken,
    /// The gap between two events (or body chunks) of a response.
    Idle,
    /// The whole call, all attempts included.
    Total,
}

impl TimeoutPhase {
    /// A stable name, usable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::Headers => "headers",
            TimeoutPhase::FirstToken => "first_token",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        }
    }
}

/// An upstream call took longer than one of its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeout {
    phase: TimeoutPhase,
    after: Duration,
}

impl UpstreamTimeout {
    /// The `phase` deadline of `after` passed.
    pub const fn new(phase: TimeoutPhase, after: Duration) -> Self {
        Self { phase, after }
    }

    /// Which deadline passed.
    pub const fn phase(&self) -> TimeoutPhase {
        self.phase
    }

    /// The deadline's length.
    pub const fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for UpstreamTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.phase {
            TimeoutPhase::Connect => "connecting to the upstream",
            TimeoutPhase::Headers => "waiting for the upstream's response headers",
            TimeoutPhase::FirstToken => "waiting for the first token of the stream",
            TimeoutPhase::Idle => "waiting for the next part of the response",
            TimeoutPhase::Total => "completing the call",
        };
        write!(f, "timed out after {:?} {what}", self.after)
    }
}

impl std::error::Error for UpstreamTimeout {}

/// A streamed response ended before it was complete (no `data: [DONE]`, a broken connection,
/// or an in-band error event). Its content so far reached the caller; the rest never will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteResponse {
    reason: &'static str,
}

impl IncompleteResponse {
    /// An incomplete response, with a short static reason (no content).
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the response is incomplete.
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for IncompleteResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the upstream response ended before it was complete ({}); the answer is truncated and must not be used as a whole",
            self.reason
        )
    }
}

impl std::error::Error for IncompleteResponse {}

/// A circuit breaker refused the call without sending it: the upstream is failing.
///
/// Defined here, not in the breaker crate, so that every layer (retry above all) recognises it
/// without depending on the breaker. `retry_after` is when the breaker will next let a probe
/// through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    retry_after: Duration,
}

impl BreakerOpen {
    /// A rejection; the breaker admits probes again in `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// How long until the breaker admits a probe.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker is open after repeated upstream failures; the request was not sent, try again in {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for BreakerOpen {}

/// A layer refused the request before sending it: a quota, a policy, a validation.
///
/// Layer crates expose their own, more specific errors (a rate limiter's, a PII block); those
/// return a `RequestRefused` from [`source`](std::error::Error::source), so that the shared
/// classifier sees a local refusal ([`FailureClass::Rejected`](crate::classify::FailureClass::Rejected):
/// never retried, ignored by breakers) without depending on the layer's crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRefused {
    reason: &'static str,
}

impl RequestRefused {
    /// A refusal, with a short static reason (no content).
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// Why the request was refused.
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for RequestRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused before sending: {}", self.reason)
    }
}

impl std::error::Error for RequestRefused {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        assert!(BodyTooLarge::new(10).to_string().contains("10 byte limit"));
        let t = UpstreamTimeout::new(TimeoutPhase::FirstToken, Duration::from_secs(3));
        assert!(t.to_string().contains("first token"));
        let e = RequestNotSent::new(std::io::Error::other("refused"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
