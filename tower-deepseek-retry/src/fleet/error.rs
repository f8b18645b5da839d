//! [`FleetUnavailable`].

use std::fmt;

/// Redis did not answer a fleet round trip in time (or is left alone after a failure): the
/// caller decides on its local share. Carries a category only, never a key, value or URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetUnavailable {
    kind: &'static str,
}

impl FleetUnavailable {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self { kind }
    }

    /// The category: `timeout`, `connection`, `io`, `redis` or `left alone after a failure`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl fmt::Display for FleetUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fleet redis unavailable ({})", self.kind)
    }
}

impl std::error::Error for FleetUnavailable {}
