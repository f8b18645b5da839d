//! What the breaker does with each classified outcome.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use tower_deepseek_core::classify::{FailureClass, Verdict};

/// What one finished call means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accrual {
    /// Recorded as a success.
    Success,
    /// Recorded as a failure.
    Failure,
    /// Not recorded; a half-open probe gives its permit back.
    Ignored,
    /// Open the breaker at once, for this long, whatever the rates say (e.g. 402 insufficient
    /// balance: nothing will succeed until someone pays).
    OpenFor(Duration),
}

impl From<Verdict> for Accrual {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Success => Accrual::Success,
            Verdict::Failure => Accrual::Failure,
            Verdict::Ignored => Accrual::Ignored,
        }
    }
}

/// Maps a [`FailureClass`] from the shared classifier to an [`Accrual`].
///
/// Successes (a complete 2xx) are always [`Accrual::Success`]; only failures go through the
/// policy. Implemented for closures `Fn(&FailureClass) -> Accrual` and by
/// [`DefaultOutcomePolicy`].
pub trait OutcomePolicy: Send + Sync + 'static {
    /// What the failure `class` means to the breaker.
    fn accrue(&self, class: &FailureClass) -> Accrual;
}

impl<F> OutcomePolicy for F
where
    F: Fn(&FailureClass) -> Accrual + Send + Sync + 'static,
{
    fn accrue(&self, class: &FailureClass) -> Accrual {
        self(class)
    }
}

/// The default policy: [`FailureClass::default_verdict`] (ARCHITECTURE.md's classifier table, breaker column: 429 and
/// client errors ignored, 5xx, timeouts, connect and transport errors, empty and cut 2xx bodies
/// failures), with two switches.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultOutcomePolicy {
    rate_limited_is_failure: bool,
    insufficient_balance_open: Option<Duration>,
}

impl fmt::Debug for DefaultOutcomePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultOutcomePolicy")
            .field("rate_limited_is_failure", &self.rate_limited_is_failure)
            .field("insufficient_balance_open", &self.insufficient_balance_open)
            .finish()
    }
}

impl DefaultOutcomePolicy {
    /// The default policy.
    pub const fn new() -> Self {
        Self {
            rate_limited_is_failure: false,
            insufficient_balance_open: None,
        }
    }

    /// Count 429 as a failure (default: ignored, since DeepSeek's 429 is an account-wide
    /// concurrency cap, not a sick upstream; lower your concurrency instead).
    #[must_use]
    pub const fn rate_limited_is_failure(mut self, yes: bool) -> Self {
        self.rate_limited_is_failure = yes;
        self
    }

    /// Open the breaker for `wait` at the first 402 (insufficient balance), instead of ignoring
    /// it. Every call fails until the account is topped up, so calling on is only noise.
    #[must_use]
    pub const fn open_on_insufficient_balance(mut self, wait: Duration) -> Self {
        self.insufficient_balance_open = Some(wait);
        self
    }
}

impl OutcomePolicy for DefaultOutcomePolicy {
    fn accrue(&self, class: &FailureClass) -> Accrual {
        match class {
            FailureClass::RateLimited { .. } if self.rate_limited_is_failure => Accrual::Failure,
            FailureClass::Client { status } if *status == StatusCode::PAYMENT_REQUIRED => {
                match self.insufficient_balance_open {
                    Some(d) => Accrual::OpenFor(d),
                    None => Accrual::Ignored,
                }
            }
            other => other.default_verdict().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_follows_the_design_table() {
        let p = DefaultOutcomePolicy::new();
        for s in [400u16, 401, 402, 403, 404, 422] {
            let class = FailureClass::Client {
                status: StatusCode::from_u16(s).unwrap(),
            };
            assert_eq!(p.accrue(&class), Accrual::Ignored, "{s}");
        }
        assert_eq!(
            p.accrue(&FailureClass::RateLimited { retry_after: None }),
            Accrual::Ignored
        );
        assert_eq!(p.accrue(&FailureClass::BadGateway), Accrual::Failure);
        assert_eq!(p.accrue(&FailureClass::Incomplete), Accrual::Failure);
        assert_eq!(p.accrue(&FailureClass::Connect), Accrual::Failure);
        let p = p
            .rate_limited_is_failure(true)
            .open_on_insufficient_balance(Duration::from_secs(600));
        assert_eq!(
            p.accrue(&FailureClass::RateLimited { retry_after: None }),
            Accrual::Failure
        );
        assert_eq!(
            p.accrue(&FailureClass::Client {
                status: StatusCode::PAYMENT_REQUIRED
            }),
            Accrual::OpenFor(Duration::from_secs(600))
        );
    }
}
