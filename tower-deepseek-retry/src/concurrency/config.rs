//! The adaptive concurrency limit's serde configuration.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::config::duration_ms;

/// The configuration (serde; durations in milliseconds, in `*_ms` fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// The Redis backend (feature `redis`): when set, the limit and the requests in flight
    /// are counted across every instance with the same Redis, key prefix and `account`
    /// (leases that expire after `lease_ttl_ms` if their holder dies). Unset (default): in
    /// memory.
    #[cfg(feature = "redis")]
    pub redis: Option<crate::fleet::FleetConfig>,
    /// The upstream account the fleet-wide limit is kept for (default `"default"`): instances
    /// calling with the same DeepSeek account share one. Never stored in clear (a digest).
    pub account: String,
    /// How long a fleet lease outlives its holder (default 10 s; serde `lease_ttl_ms`): held
    /// leases are renewed every third of it; the leases of a process that died come back
    /// after it.
    #[serde(rename = "lease_ttl_ms", with = "duration_ms")]
    pub lease_ttl: Duration,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            initial: 32,
            min: 1,
            max: 256,
            decrease_factor: 0.5,
            decrease_on_overloaded: false,
            #[cfg(feature = "redis")]
            redis: None,
            account: String::from("default"),
            lease_ttl: Duration::from_secs(10),
        }
    }
}
