//! The adaptive concurrency limit's serde configuration.

use serde::Deserialize;

/// The configuration (serde).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveConcurrencyConfig {
    /// The starting limit (default 32).
    pub initial: u32,
    /// The lowest limit (default 1).
    pub min: u32,
    /// The highest limit (default 256).
    pub max: u32,
    /// The factor applied on a 429 (default 0.5, in `(0, 1)`).
    pub decrease_factor: f64,
    /// Whether a 503 decreases the limit too (default false).
    pub decrease_on_overloaded: bool,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            initial: 32,
            min: 1,
            max: 256,
            decrease_factor: 0.5,
            decrease_on_overloaded: false,
        }
    }
}
