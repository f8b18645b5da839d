//! The error of a failover whose every endpoint rejects.

use std::fmt;
use std::time::Duration;

use tower_deepseek_core::error::BreakerOpen;

/// Every endpoint's breaker rejects calls: nothing was sent.
///
/// Its [`source`](std::error::Error::source) is a [`BreakerOpen`] with the same `retry_after`,
/// so a retry layer that knows only core's errors still sees a breaker rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllEndpointsUnavailable {
    /// When the first endpoint admits a probe again.
    pub retry_after: Duration,
    source: BreakerOpen,
}

impl AllEndpointsUnavailable {
    /// An error for `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self {
            retry_after,
            source: BreakerOpen::new(retry_after),
        }
    }
}

impl fmt::Display for AllEndpointsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every upstream endpoint is unavailable (all circuit breakers open); the request was not sent, try again in {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for AllEndpointsUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
