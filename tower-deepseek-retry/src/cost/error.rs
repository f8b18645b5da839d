use std::fmt;
use std::time::{Duration, SystemTime};

use tower_deepseek_core::error::RequestRefused;

/// The period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BudgetPeriod {
    /// A day, where the budgets' time zone begins it.
    Day,
    /// A calendar month.
    Month,
}

impl BudgetPeriod {
    /// `day` or `month`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BudgetKind {
    /// Money, in the price table's currency.
    Cost,
    /// Tokens, input and output.
    Tokens,
}

impl BudgetKind {
    /// `cost` or `tokens`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Cost => "cost",
            BudgetKind::Tokens => "tokens",
        }
    }
}

/// The call's budget is spent: it was not sent. A server answers 429 with code
/// `budget_exceeded` and `Retry-After` set to [`retry_after`](Self::retry_after) (the
/// facade's `error_response` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    period: BudgetPeriod,
    kind: BudgetKind,
    retry_after: Duration,
    resets_at: SystemTime,
}

impl BudgetExceeded {
    pub(crate) fn new(
        period: BudgetPeriod,
        kind: BudgetKind,
        retry_after: Duration,
        resets_at: SystemTime,
    ) -> Self {
        Self {
            period,
            kind,
            retry_after,
            resets_at,
        }
    }

    /// The budget's period.
    pub fn period(&self) -> BudgetPeriod {
        self.period
    }

    /// What the budget counts.
    pub fn kind(&self) -> BudgetKind {
        self.kind
    }

    /// How long until the budget's period ends and it is available again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// When the budget's period ends.
    pub fn resets_at(&self) -> SystemTime {
        self.resets_at
    }
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = match self.period {
            BudgetPeriod::Day => "daily",
            BudgetPeriod::Month => "monthly",
        };
        let at = jiff::Timestamp::try_from(self.resets_at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        write!(
            f,
            "the {period} {} budget is spent; the request was not sent; it resets at {at} (in {} s)",
            self.kind.as_str(),
            self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
        )
    }
}

static BUDGET: RequestRefused = RequestRefused::new("budget spent");

// The source is core's marker, so that the shared classifier (breaker, audit) sees a local
// refusal rather than a transport failure.
impl std::error::Error for BudgetExceeded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&BUDGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_deepseek_core::classify::{Classifier, FailureClass};

    #[test]
    fn says_which_budget_and_when_it_resets() {
        let e = BudgetExceeded::new(
            BudgetPeriod::Day,
            BudgetKind::Cost,
            Duration::from_millis(3_600_500),
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
        );
        assert_eq!(
            e.to_string(),
            "the daily cost budget is spent; the request was not sent; it resets at 1970-01-02T00:00:00Z (in 3601 s)"
        );
        assert_eq!(Classifier::new().classify_error(&e), FailureClass::Rejected);
    }
}
