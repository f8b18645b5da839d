//! Failure classes: why an attempt did not succeed, and what a breaker does with it by default.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

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

    /// The breaker's default verdict (ARCHITECTURE.md's classifier table): 429, client errors and local rejections are
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
