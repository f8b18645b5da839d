//! tower-deepseek: tower middleware that makes calls to the DeepSeek API (and any
//! OpenAI-compatible chat API) reliable and compliant.
//!
//! This facade re-exports each layer crate behind a feature of the same name, and adds what a
//! user needs around them: [`ServiceBuilderExt`] (one method per layer on tower's
//! `ServiceBuilder`), a pooled HTTPS [`client`] for the upstream with [`BaseUrlLayer`],
//! [`RequestMetadataLayer`] for request ids and client IPs, and an [`error`] mapper that turns
//! any layer's error into an OpenAI-style JSON response for servers.
//!
//! Every layer is at the root (`tower_deepseek::RetryLayer`); each crate's module docs say
//! more. The design, with the protocol between layers, is the repository's `ARCHITECTURE.md`;
//! "the guide" in these docs is the integration guide whose figures are the defaults
//! (`docs/guide-defaults.md`).
//!
//! # The recommended stack
//!
//! Outermost first: request metadata, audit, redact, review (quality sampling), cache, rate limit, retry, circuit breaker,
//! auth, base URL, client. Each layer also works alone; each crate's docs say what it expects
//! around it. [`stack::RecommendedStack`] composes them, each optional, as one
//! layer (from code or from a [`stack::StackConfig`] file); `cargo run -p example-tour`
//! shows them all at work.
//!
//! # Feature Flags
//!
//! All on by default.
//!
//! | feature | crate |
//! |---|---|
//! | `auth` | `tower-deepseek-auth`: API key and OAuth2 client-credentials layers |
//! | `retry` | `tower-deepseek-retry`: retries, timeouts, rate limits |
//! | `cache` | `tower-deepseek-cache`: two-level response cache |
//! | `breaker` | `tower-deepseek-breaker`: circuit breaker and failover |
//! | `redact` | `tower-deepseek-redact`: PII masking, audit records, output filtering |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod builder;
pub mod client;
pub mod error;
pub mod meta;
#[cfg(all(
    feature = "auth",
    feature = "retry",
    feature = "cache",
    feature = "breaker",
    feature = "redact"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(
        feature = "auth",
        feature = "retry",
        feature = "cache",
        feature = "breaker",
        feature = "redact"
    )))
)]
pub mod stack;

pub use builder::ServiceBuilderExt;

pub use tower_deepseek_core as core;
pub use tower_deepseek_core::BoxError;

#[cfg(feature = "auth")]
pub use tower_deepseek_auth as auth;
#[cfg(feature = "breaker")]
pub use tower_deepseek_breaker as breaker;
#[cfg(feature = "cache")]
pub use tower_deepseek_cache as cache;
#[cfg(feature = "redact")]
pub use tower_deepseek_redact as redact;
#[cfg(feature = "retry")]
pub use tower_deepseek_retry as retry;

// Every layer at the root, as `tower_deepseek::RetryLayer`.
pub use client::BaseUrlLayer;
pub use meta::RequestMetadataLayer;
#[cfg(feature = "auth")]
pub use tower_deepseek_auth::{BearerAuthLayer, OAuth2Layer};
#[cfg(feature = "breaker")]
pub use tower_deepseek_breaker::{CircuitBreakerLayer, FailoverLayer, KeyedCircuitBreakerLayer};
#[cfg(feature = "cache")]
pub use tower_deepseek_cache::CacheLayer;
#[cfg(feature = "redact")]
pub use tower_deepseek_redact::{AuditLayer, ContentFilterLayer, RedactLayer, ReviewLayer};
#[cfg(feature = "retry")]
pub use tower_deepseek_retry::{
    AdaptiveConcurrencyLayer, CostLayer, RateLimitLayer, RetryLayer, TimeoutLayer,
};

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
