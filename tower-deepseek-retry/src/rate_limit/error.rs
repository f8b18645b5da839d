use std::fmt;
use std::time::Duration;

use tower_deepseek_core::error::RequestRefused;

/// The rate limiter would have to wait longer than `max_wait`: the request was not sent and
/// consumed no quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Option<Duration>,
}

impl RateLimited {
    pub(crate) fn new(retry_after: Option<Duration>) -> Self {
        Self { retry_after }
    }

    /// When the quota would admit it (`None` when it timed out in the queue behind others).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(
                f,
                "local rate limit reached; the request was not sent, try again in {d:?} or raise max_wait"
            ),
            None => f.write_str(
                "local rate limit reached: the queue did not clear within max_wait; the request was not sent",
            ),
        }
    }
}

static RATE_LIMITED: RequestRefused = RequestRefused::new("local rate limit");
static TOO_LARGE: RequestRefused = RequestRefused::new("token estimate over the burst");

// The source is core's marker, so that the shared classifier (breaker, audit) sees a local
// refusal rather than a transport failure.
impl std::error::Error for RateLimited {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&RATE_LIMITED)
    }
}

/// The request's token estimate is larger than the token burst: it could never be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTooLarge {
    tokens: u64,
    burst: u64,
}

impl RequestTooLarge {
    pub(crate) fn new(tokens: u64, burst: u64) -> Self {
        Self { tokens, burst }
    }

    /// The request's estimate.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The token burst it exceeds.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

impl fmt::Display for RequestTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request's token estimate ({}) is larger than the rate limiter's token burst ({}); lower max_tokens, shorten the prompt or raise the burst",
            self.tokens, self.burst
        )
    }
}

impl std::error::Error for RequestTooLarge {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&TOO_LARGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_deepseek_core::classify::{Classifier, FailureClass};

    #[test]
    fn limiter_errors_classify_as_local_rejections() {
        let c = Classifier::new();
        assert_eq!(
            c.classify_error(&RateLimited::new(None)),
            FailureClass::Rejected
        );
        assert_eq!(
            c.classify_error(&RequestTooLarge::new(10, 5)),
            FailureClass::Rejected
        );
    }
}
