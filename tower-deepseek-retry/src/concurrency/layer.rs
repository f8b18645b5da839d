//! [`AdaptiveConcurrencyLayer`](crate::AdaptiveConcurrencyLayer) and its builder.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::config::AdaptiveConcurrencyConfig;
use super::service::AdaptiveConcurrency;
use super::state::{Limit, Shared};
use tower_deepseek_core::config::ConfigError;

/// Limits requests in flight, adapting to 429s. Clones share one limit; see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrencyLayer {
    pub(crate) shared: Arc<Shared>,
}

impl AdaptiveConcurrencyLayer {
    /// A builder with the defaults.
    pub fn builder() -> AdaptiveConcurrencyLayerBuilder {
        AdaptiveConcurrencyLayerBuilder {
            cfg: AdaptiveConcurrencyConfig::default(),
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] unless `1 <= min <= initial <= max` and `0 < decrease_factor < 1`.
    pub fn from_config(cfg: AdaptiveConcurrencyConfig) -> Result<Self, ConfigError> {
        if !(1 <= cfg.min && cfg.min <= cfg.initial && cfg.initial <= cfg.max) {
            return Err(ConfigError::new(
                "initial",
                "must satisfy 1 <= min <= initial <= max",
            ));
        }
        if cfg.max as usize > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("max", "is too large"));
        }
        if !(cfg.decrease_factor > 0.0 && cfg.decrease_factor < 1.0) {
            return Err(ConfigError::new(
                "decrease_factor",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(cfg.initial as usize)),
                limit: Mutex::new(Limit {
                    value: f64::from(cfg.initial),
                    debt: 0,
                }),
                epoch: AtomicU64::new(0),
                cfg,
            }),
        })
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> usize {
        Shared::whole(
            self.shared
                .limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .value,
        )
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        let l = self.shared.limit.lock().unwrap_or_else(|p| p.into_inner());
        (Shared::whole(l.value) + l.debt).saturating_sub(self.shared.semaphore.available_permits())
    }
}

/// Builds an [`AdaptiveConcurrencyLayer`](crate::AdaptiveConcurrencyLayer).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct AdaptiveConcurrencyLayerBuilder {
    cfg: AdaptiveConcurrencyConfig,
}

impl AdaptiveConcurrencyLayerBuilder {
    /// The starting limit.
    pub fn initial(mut self, n: u32) -> Self {
        self.cfg.initial = n;
        self
    }

    /// The lowest limit.
    pub fn min(mut self, n: u32) -> Self {
        self.cfg.min = n;
        self
    }

    /// The highest limit.
    pub fn max(mut self, n: u32) -> Self {
        self.cfg.max = n;
        self
    }

    /// The factor applied on a 429.
    pub fn decrease_factor(mut self, f: f64) -> Self {
        self.cfg.decrease_factor = f;
        self
    }

    /// Whether a 503 decreases the limit too.
    pub fn decrease_on_overloaded(mut self, yes: bool) -> Self {
        self.cfg.decrease_on_overloaded = yes;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// See [`AdaptiveConcurrencyLayer::from_config`](crate::AdaptiveConcurrencyLayer::from_config).
    pub fn build(self) -> Result<AdaptiveConcurrencyLayer, ConfigError> {
        AdaptiveConcurrencyLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrency<S>;

    fn layer(&self, inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency {
            inner,
            shared: self.shared.clone(),
        }
    }
}
