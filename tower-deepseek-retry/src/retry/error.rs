//! Errors of the retry layer, to downcast a [`BoxError`] to.

use std::fmt;

use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::FailureClass;

pub use tower_deepseek_core::protocol::StopReason;

/// The retry layer gave up on a request whose last attempt failed with an error (not a
/// response: a failed response is returned as it is, with an [`Attempts`](super::Attempts)
/// extension saying why retries stopped).
///
/// Its [`source`](std::error::Error::source) is the last attempt's error, so the shared
/// classifier still finds the underlying class through it.
#[derive(Debug)]
pub struct RetriesExhausted {
    attempts: u32,
    reason: StopReason,
    last: FailureClass,
    source: BoxError,
}

impl RetriesExhausted {
    pub(crate) fn new(
        attempts: u32,
        reason: StopReason,
        last: FailureClass,
        source: BoxError,
    ) -> Self {
        Self {
            attempts,
            reason,
            last,
            source,
        }
    }

    /// Attempts made (the first one included).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why no further attempt was made.
    pub fn reason(&self) -> StopReason {
        self.reason
    }

    /// Whether the retry budget stopped the retries.
    pub fn is_budget_exhausted(&self) -> bool {
        self.reason == StopReason::BudgetExhausted
    }

    /// Whether the total deadline stopped the retries.
    pub fn is_deadline(&self) -> bool {
        self.reason == StopReason::Deadline
    }

    /// The class of the last attempt's failure.
    pub fn last_class(&self) -> &FailureClass {
        &self.last
    }

    /// The last attempt's error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            StopReason::BudgetExhausted => {
                "the retry budget is exhausted (the upstream is failing for many requests); wait for it to recover"
            }
            StopReason::Deadline => {
                "the next retry would pass the total deadline; raise it or try later"
            }
            StopReason::MaxAttempts => "the maximum number of attempts was reached",
            StopReason::RetryAfterTooLong => {
                "the upstream asked to wait longer than max_retry_after allows"
            }
            StopReason::BodyNotReplayable => {
                "the request body was too large to buffer, so it was sent only once; raise the retry layer's body limit to make it retryable"
            }
            StopReason::BreakerOpen => {
                "the circuit breaker is open, so the call failed fast; try again after its Retry-After (or set wait_for_open_breaker for batch work)"
            }
            _ => "no retry was possible",
        };
        write!(
            f,
            "request failed after {} attempt(s), last with {}: {why}",
            self.attempts, self.last
        )
    }
}

impl std::error::Error for RetriesExhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
