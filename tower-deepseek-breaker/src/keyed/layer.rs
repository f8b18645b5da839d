//! The keyed layer.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::key::{DefaultKey, MakeKey};
use super::registry::Registry;
use super::service::KeyedCircuitBreaker;
use crate::state::BreakerHandle;

/// Applies a [`KeyedCircuitBreaker`]: one breaker per key, each with the same settings, kept in
/// a bounded registry (least recently used keys are dropped beyond
/// [`CircuitBreakerLayerBuilder::max_keys`](crate::CircuitBreakerLayerBuilder::max_keys)). Build it with
/// [`CircuitBreakerLayerBuilder::build_keyed`](crate::CircuitBreakerLayerBuilder::build_keyed).
pub struct KeyedCircuitBreakerLayer<M: MakeKey = DefaultKey> {
    pub(super) registry: Arc<Registry<M::Key>>,
    pub(super) make_key: Arc<M>,
}

impl<M: MakeKey> Clone for KeyedCircuitBreakerLayer<M> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            make_key: self.make_key.clone(),
        }
    }
}

impl<M: MakeKey> fmt::Debug for KeyedCircuitBreakerLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl KeyedCircuitBreakerLayer<DefaultKey> {
    pub(crate) fn from_registry(registry: Arc<Registry<String>>, key: DefaultKey) -> Self {
        Self {
            registry,
            make_key: Arc::new(key),
        }
    }

    /// Uses `make_key` instead of [`DefaultKey`] (e.g. a tenant id). Keeps the settings; the
    /// registry starts empty.
    pub fn key_fn<M: MakeKey>(self, make_key: M) -> KeyedCircuitBreakerLayer<M> {
        let max = self.registry.breakers.policy().max_capacity().unwrap_or(1);
        KeyedCircuitBreakerLayer {
            registry: Arc::new(Registry::new(self.registry.spec.clone(), max)),
            make_key: Arc::new(make_key),
        }
    }
}

impl<M: MakeKey> KeyedCircuitBreakerLayer<M> {
    /// A handle on the breaker of `key`, if it exists.
    pub fn handle(&self, key: &M::Key) -> Option<BreakerHandle> {
        self.registry.breakers.get(key).map(|stripe| BreakerHandle {
            breaker: stripe.breaker().clone(),
        })
    }

    /// A handle on the breaker of `key`, creating it (closed) if needed.
    pub fn handle_or_create(&self, key: &M::Key) -> BreakerHandle {
        BreakerHandle {
            breaker: self.registry.get(key).breaker().clone(),
        }
    }

    /// Handles on every breaker currently in the registry.
    pub fn handles(&self) -> Vec<(Arc<M::Key>, BreakerHandle)> {
        self.registry
            .breakers
            .iter()
            .map(|(k, stripe)| {
                let breaker = stripe.breaker().clone();
                (k, BreakerHandle { breaker })
            })
            .collect()
    }
}

impl<S, M: MakeKey> Layer<S> for KeyedCircuitBreakerLayer<M> {
    type Service = KeyedCircuitBreaker<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker::new(inner, self.clone())
    }
}
