//! The [`Attempts`](crate::Attempts) response extension.

use tower_deepseek_core::classify::FailureClass;

use super::error::StopReason;

/// Response extension: the attempts the retry layer made for this response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    pub(crate) count: u32,
    pub(crate) classes: Vec<FailureClass>,
    pub(crate) stop: StopReason,
}

impl Attempts {
    /// Attempts made, the first included.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The class of each failed attempt, in order (empty when the first attempt succeeded).
    pub fn failures(&self) -> &[FailureClass] {
        &self.classes
    }

    /// Why no further attempt was made ([`StopReason::Success`](crate::StopReason::Success) for a success).
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }
}
