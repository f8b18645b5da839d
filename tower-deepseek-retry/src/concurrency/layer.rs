//! [`AdaptiveConcurrencyLayer`](crate::AdaptiveConcurrencyLayer) and its builder.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
            #[cfg(feature = "redis")]
            fleet: None,
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] unless `1 <= min <= initial <= max` and `0 < decrease_factor < 1`, for a
    /// lease TTL under 30 ms, or a `redis` table that cannot work (see
    /// [`Fleet::from_config`](crate::fleet::Fleet::from_config)).
    pub fn from_config(cfg: AdaptiveConcurrencyConfig) -> Result<Self, ConfigError> {
        #[cfg(feature = "redis")]
        let fleet = cfg
            .redis
            .as_ref()
            .map(crate::fleet::Fleet::from_config)
            .transpose()?;
        #[cfg(feature = "redis")]
        return Self::build_with(cfg, fleet);
        #[cfg(not(feature = "redis"))]
        Self::build_with(cfg)
    }

    fn build_with(
        cfg: AdaptiveConcurrencyConfig,
        #[cfg(feature = "redis")] fleet: Option<crate::fleet::Fleet>,
    ) -> Result<Self, ConfigError> {
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
        if cfg.lease_ttl < Duration::from_millis(30) {
            return Err(ConfigError::new("lease_ttl_ms", "must be at least 30"));
        }
        // With a fleet, this process's own semaphore is its local share of the limit, for
        // when Redis is unavailable.
        #[cfg(feature = "redis")]
        let (local, fleet) = match fleet {
            None => (cfg.clone(), None),
            Some(f) => {
                let share = |n: u32| f.local_share(u64::from(n)) as u32;
                let mut local = cfg.clone();
                local.max = share(cfg.max);
                local.initial = share(cfg.initial).min(local.max);
                local.min = share(cfg.min).min(local.initial);
                let leases = super::fleet::FleetLeases::new(f, &cfg);
                (local, Some(Arc::new(leases)))
            }
        };
        #[cfg(not(feature = "redis"))]
        let local = cfg;
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(local.initial as usize)),
                limit: Mutex::new(Limit {
                    value: f64::from(local.initial),
                    debt: 0,
                }),
                epoch: AtomicU64::new(0),
                cfg: local,
                #[cfg(feature = "redis")]
                fleet,
            }),
        })
    }

    /// The current limit (whole requests). With a Redis backend: the fleet's limit as Redis
    /// last reported it.
    pub fn limit(&self) -> usize {
        #[cfg(feature = "redis")]
        if let Some(f) = &self.shared.fleet {
            return Shared::whole(f.limit());
        }
        Shared::whole(
            self.shared
                .limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .value,
        )
    }

    /// Requests in flight now from this process (with a Redis backend: its fleet leases and
    /// the permits of its local share).
    pub fn in_flight(&self) -> usize {
        let l = self.shared.limit.lock().unwrap_or_else(|p| p.into_inner());
        let local = (Shared::whole(l.value) + l.debt)
            .saturating_sub(self.shared.semaphore.available_permits());
        #[cfg(feature = "redis")]
        if let Some(f) = &self.shared.fleet {
            return local + f.held.load(std::sync::atomic::Ordering::Relaxed);
        }
        local
    }
}

/// Builds an [`AdaptiveConcurrencyLayer`](crate::AdaptiveConcurrencyLayer).
#[derive(Debug, Clone)]
#[must_use]
pub struct AdaptiveConcurrencyLayerBuilder {
    cfg: AdaptiveConcurrencyConfig,
    #[cfg(feature = "redis")]
    fleet: Option<crate::fleet::Fleet>,
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

    /// Counts the limit and the requests in flight across every instance that uses the same
    /// Redis, key prefix and [`account`](Self::account) (feature `redis`); see
    /// [`fleet`](crate::fleet). Without it (default), they are this process's own.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet(mut self, fleet: crate::fleet::Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The upstream account the fleet-wide limit is kept for (default `"default"`).
    pub fn account(mut self, name: impl Into<String>) -> Self {
        self.cfg.account = name.into();
        self
    }

    /// How long a fleet lease outlives its holder (default 10 s).
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.cfg.lease_ttl = d;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// See [`AdaptiveConcurrencyLayer::from_config`](crate::AdaptiveConcurrencyLayer::from_config).
    pub fn build(self) -> Result<AdaptiveConcurrencyLayer, ConfigError> {
        #[cfg(feature = "redis")]
        if self.fleet.is_some() {
            return AdaptiveConcurrencyLayer::build_with(self.cfg, self.fleet);
        }
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
