//! The limiter's serde configuration.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::config::duration_ms;
#[allow(unused_imports)] // doc links
use tower_deepseek_core::meta::TenantId;

#[allow(unused_imports)] // doc links
use super::RateLimited;

/// What a quota is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyBy {
    /// One quota for everything.
    #[default]
    Global,
    /// One quota per `model` of the request body.
    Model,
    /// One quota per [`TenantId`](tower_deepseek_core::meta::TenantId) extension.
    Tenant,
    /// One quota per model and tenant.
    ModelAndTenant,
}

/// The limiter's configuration (serde; durations in milliseconds, in `*_ms` fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Requests per minute (per `window`) per key; `null` for no request limit.
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once after a quiet period (default: a sixtieth of the quota, at
    /// least 1: one second's worth with the default window).
    pub request_burst: Option<u32>,
    /// Tokens per minute (per `window`) per key; `null` for no token limit.
    pub tokens_per_minute: Option<u64>,
    /// Tokens allowed at once (default: the per-minute quota).
    pub token_burst: Option<u64>,
    /// What quotas are kept per (default global).
    pub key_by: KeyBy,
    /// Longest wait before a request fails with [`RateLimited`](crate::RateLimited) (default 30 s; serde
    /// `max_wait_ms`, in milliseconds).
    #[serde(rename = "max_wait_ms", with = "duration_ms")]
    pub max_wait: Duration,
    /// Completion tokens assumed for a request without `max_tokens` (default 4096).
    pub default_max_tokens: u64,
    /// Largest request body read for the model and the estimate (default 8 MiB); a larger body
    /// is estimated at this size and passed on unread.
    pub body_limit: usize,
    /// The period the quotas are given for (default a minute; serde `window_ms`). Shorter
    /// windows are for tests and demonstrations: the quotas keep their names.
    #[serde(rename = "window_ms", with = "duration_ms")]
    pub window: Duration,
    /// The Redis backend (feature `redis`): when set, the quotas are shared by every instance
    /// with the same Redis and key prefix; each instance falls back to its share
    /// (quota / `expected_instances`) while Redis is unavailable. Unset (default): in memory.
    #[cfg(feature = "redis")]
    pub redis: Option<crate::fleet::FleetConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            request_burst: None,
            tokens_per_minute: None,
            token_burst: None,
            key_by: KeyBy::Global,
            max_wait: Duration::from_millis(30_000),
            default_max_tokens: 4096,
            body_limit: tower_deepseek_core::body::DEFAULT_BODY_LIMIT,
            window: Duration::from_secs(60),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}
