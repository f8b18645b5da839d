//! The bounded registry of a keyed breaker's breakers.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::state::{Breaker, Spec, Stripe};

/// One breaker per key, least recently used keys dropped beyond the capacity.
pub(crate) struct Registry<K> {
    pub(super) spec: Arc<Spec>,
    /// One stripe per key: a permit holds the `Arc` the registry hands out.
    pub(super) breakers: moka::sync::Cache<K, Arc<Stripe>>,
}

impl<K> fmt::Debug for Registry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.spec.config.name)
            .field("keys", &self.breakers.entry_count())
            .finish()
    }
}

impl<K> Registry<K>
where
    K: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
{
    pub(crate) fn new(spec: Arc<Spec>, max_keys: u64) -> Self {
        Self {
            spec,
            breakers: moka::sync::Cache::new(max_keys),
        }
    }

    pub(super) fn get(&self, key: &K) -> Arc<Stripe> {
        if let Some(b) = self.breakers.get(key) {
            return b;
        }
        self.breakers.get_with_by_ref(key, || {
            let label: Arc<str> = format!("{}/{}", self.spec.config.name, key).into();
            Stripe::new(Breaker::new(self.spec.clone(), label))
        })
    }
}
