//! [`CostLayer`](crate::CostLayer) and its builder.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::budget::CostBudgets;
use super::config::CostConfig;
use super::price::{PriceTable, Prices, time_zone};
use super::service::Cost;
use super::state::{Budgets, Clock, Shared, Store};

/// Prices each call from its `usage`, counts it, and enforces budgets. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct CostLayer {
    pub(crate) shared: Arc<Shared>,
}

impl CostLayer {
    /// A builder over `prices`.
    pub fn builder(prices: PriceTable) -> CostLayerBuilder {
        CostLayerBuilder {
            cfg: CostConfig {
                prices,
                ..CostConfig::default()
            },
            clock: None,
            #[cfg(feature = "redis")]
            fleet: None,
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a price with more than 6 decimals, an unknown time zone, a bad
    /// currency code, a fallback that is not in the table, or money budgets over a table of
    /// more than one currency.
    pub fn from_config(cfg: CostConfig) -> Result<Self, ConfigError> {
        CostLayerBuilder {
            cfg,
            clock: None,
            #[cfg(feature = "redis")]
            fleet: None,
        }
        .build()
    }
}

/// Builds a [`CostLayer`](crate::CostLayer).
#[must_use]
pub struct CostLayerBuilder {
    cfg: CostConfig,
    clock: Option<Clock>,
    #[cfg(feature = "redis")]
    fleet: Option<crate::fleet::Fleet>,
}

impl std::fmt::Debug for CostLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostLayerBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl CostLayerBuilder {
    /// Budgets to enforce (default none).
    pub fn budgets(mut self, budgets: CostBudgets) -> Self {
        self.cfg.budgets = Some(budgets);
        self
    }

    /// Puts each non-streaming answer's cost in an `x-ds-cost` header (default off).
    pub fn cost_header(mut self, yes: bool) -> Self {
        self.cfg.cost_header = yes;
        self
    }

    /// Keeps the budgets' tally in the fleet's Redis, so that every instance built with a
    /// [`Fleet`](crate::fleet::Fleet) on the same Redis and key prefix shares one budget
    /// (default: this process's memory). While Redis is unavailable, each instance checks its
    /// own spending against its share of each limit (limit / `expected_instances`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet(mut self, fleet: crate::fleet::Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The wall clock to price and budget by (default [`SystemTime::now`]); for tests.
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(now));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// See [`CostLayer::from_config`].
    pub fn build(self) -> Result<CostLayer, ConfigError> {
        let prices = Prices::new(&self.cfg.prices)?;
        let budgets = match self.cfg.budgets {
            Some(b) if !b.is_empty() => {
                if b.any_cost() {
                    let mut currencies = prices.currencies();
                    if let Some(first) = currencies.next() {
                        if currencies.any(|c| c != first) {
                            return Err(ConfigError::new(
                                "budgets",
                                "cannot limit money over a price table of more than one currency",
                            ));
                        }
                    }
                }
                let tz = time_zone("budgets.time_zone", &b.time_zone)?;
                #[cfg(feature = "redis")]
                let fleet = match (self.fleet, &b.redis) {
                    (Some(fleet), _) => Some(fleet),
                    (None, Some(redis)) => Some(crate::fleet::Fleet::from_config(redis)?),
                    (None, None) => None,
                };
                #[cfg(feature = "redis")]
                let store = match fleet {
                    Some(fleet) => Store::Fleet {
                        redis: super::fleet::RedisTally { fleet },
                        local: Default::default(),
                    },
                    None => Store::Memory(Default::default()),
                };
                #[cfg(not(feature = "redis"))]
                let store = Store::Memory(Default::default());
                Some(Budgets { cfg: b, tz, store })
            }
            _ => None,
        };
        Ok(CostLayer {
            shared: Arc::new(Shared {
                prices,
                budgets,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemTime::now)),
                header: self.cfg.cost_header,
                carry: Mutex::default(),
            }),
        })
    }
}

impl<S> Layer<S> for CostLayer {
    type Service = Cost<S>;

    fn layer(&self, inner: S) -> Cost<S> {
        Cost {
            inner,
            shared: self.shared.clone(),
        }
    }
}
