//! One breaker per key (upstream, model, tenant...), over a bounded registry.
//!
//! - [`KeyedCircuitBreakerLayer`] (layer.rs), built with
//!   [`CircuitBreakerLayerBuilder::build_keyed`](crate::CircuitBreakerLayerBuilder::build_keyed);
//! - [`KeyedCircuitBreaker`], the service (service.rs);
//! - the key of a request: [`MakeKey`], [`DefaultKey`], [`RequestHead`] and the [`ModelHint`]
//!   extension (key.rs);
//! - the bounded registry of breakers (registry.rs).
//!
//! The response future and body are the circuit breaker's
//! ([`ResponseFuture`](crate::ResponseFuture), [`ResponseBody`](crate::ResponseBody)).

mod key;
mod layer;
mod registry;
mod service;

pub use self::key::{DefaultKey, MakeKey, ModelHint, RequestHead};
pub use self::layer::KeyedCircuitBreakerLayer;
pub(crate) use self::registry::Registry;
pub use self::service::KeyedCircuitBreaker;
