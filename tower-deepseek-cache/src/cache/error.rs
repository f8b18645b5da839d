//! The cache's errors.
//!
//! Building a [`CacheLayer`](crate::CacheLayer) refuses a setting that cannot work with core's
//! [`ConfigError`], which names the field as [`CacheConfig`](crate::CacheConfig) spells it
//! (`redis_url`, `l1_ttl_ms`, ...) and why; it never repeats a Redis URL (it may hold a
//! password).
//!
//! A request fails with a `BoxError`: the inner service's error unchanged, or
//! [`BodyTooLarge`](tower_deepseek_core::error::BodyTooLarge) and the request body's own
//! errors. Redis never causes an error (it is fail-open).

pub use tower_deepseek_core::config::ConfigError;
