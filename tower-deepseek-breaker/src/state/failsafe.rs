//! A failsafe [`FailurePolicy`](failsafe::FailurePolicy) as the closed state's trip rule.

use std::sync::Arc;
use std::time::Duration;

/// A failsafe trip rule factory: one fresh policy per breaker.
pub(crate) type TripRuleFactory = Arc<dyn Fn() -> Box<dyn TripRule> + Send + Sync>;

/// A failsafe policy, made object-safe and `Send`.
pub(crate) trait TripRule: Send {
    fn record_success(&mut self);
    fn mark_dead_on_failure(&mut self) -> Option<Duration>;
    fn revived(&mut self);
}

impl<P: failsafe::FailurePolicy + Send> TripRule for P {
    fn record_success(&mut self) {
        failsafe::FailurePolicy::record_success(self)
    }
    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        failsafe::FailurePolicy::mark_dead_on_failure(self)
    }
    fn revived(&mut self) {
        failsafe::FailurePolicy::revived(self)
    }
}
