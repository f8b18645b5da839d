//! [`AuditUnavailable`]: a call refused, or an answer cut, for want of its record.

use std::fmt;

#[cfg(doc)]
use super::SinkFailurePolicy;

/// The audit record of a call cannot be written and [`SinkFailurePolicy::FailClosed`] is set:
/// the call was refused, or its answer was cut before its end. A gateway answers 503 with
/// `Retry-After` ([`AuditUnavailable::retry_after`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuditUnavailable {}

impl AuditUnavailable {
    /// When to try again: 5 s (the sink is probed again on the next call).
    pub fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
}

impl fmt::Display for AuditUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request refused: the audit log cannot be written, and calls are not made without an audit record; retry later")
    }
}

static AUDIT_UNAVAILABLE: tower_deepseek_core::error::RequestRefused =
    tower_deepseek_core::error::RequestRefused::new("audit sink failing (fail closed)");

// Core's marker as the source: the shared classifier (audit, breaker) sees a local refusal.
impl std::error::Error for AuditUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&AUDIT_UNAVAILABLE)
    }
}
