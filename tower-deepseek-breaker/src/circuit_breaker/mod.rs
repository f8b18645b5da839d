//! The circuit breaker: one Resilience4j breaker shared by every clone of the service.
//!
//! - [`CircuitBreakerLayer`] and its [`CircuitBreakerLayerBuilder`] (layer.rs);
//! - [`CircuitBreaker`], the service (service.rs);
//! - [`ResponseFuture`] (future.rs) and [`ResponseBody`] (body.rs), which the keyed breaker
//!   and the failover share;
//! - [`CircuitBreakerConfig`], the serde configuration (config.rs).
//!
//! See the [crate docs](crate) for the semantics.

mod body;
mod config;
mod future;
mod layer;
mod service;

pub use self::body::ResponseBody;
pub use self::config::{CircuitBreakerConfig, SlidingWindowType};
pub use self::future::ResponseFuture;
pub(crate) use self::future::{Asks, complete};
pub use self::layer::{CircuitBreakerLayer, CircuitBreakerLayerBuilder, DEFAULT_MAX_KEYS};
pub use self::service::CircuitBreaker;
