//! [`RateLimitLayer`](crate::RateLimitLayer) and its builder.

use std::hash::RandomState;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

use super::config::{KeyBy, RateLimitConfig};
use super::service::RateLimit;
use super::state::*;

/// Paces requests and tokens per minute. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    pub(crate) shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A builder; without a quota set, the layer admits everything.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            cfg: RateLimitConfig::default(),
            #[cfg(feature = "redis")]
            fleet: None,
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts, a window under a millisecond, or a `redis`
    /// table that cannot work (see [`Fleet::from_config`](crate::fleet::Fleet::from_config)).
    pub fn from_config(cfg: RateLimitConfig) -> Result<Self, ConfigError> {
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
        cfg: RateLimitConfig,
        #[cfg(feature = "redis")] fleet: Option<crate::fleet::Fleet>,
    ) -> Result<Self, ConfigError> {
        let bad = |field, reason| Err(ConfigError::new(field, reason));
        if cfg.window < Duration::from_millis(1) {
            return bad("window_ms", "must be at least 1");
        }
        let rpm = match cfg.requests_per_minute {
            None => None,
            Some(0) => return bad("requests_per_minute", "must be more than 0"),
            Some(n) => {
                let burst = cfg.request_burst.unwrap_or((n / 60).max(1));
                if burst == 0 {
                    return bad("request_burst", "must be more than 0");
                }
                Some((u64::from(n), u64::from(burst)))
            }
        };
        let token_quota = match cfg.tokens_per_minute {
            None => None,
            Some(0) => return bad("tokens_per_minute", "must be more than 0"),
            Some(n) if n > 60_000_000_000 => {
                return bad("tokens_per_minute", "is too large");
            }
            Some(n) => {
                let burst = cfg.token_burst.unwrap_or(n);
                if burst == 0 {
                    return bad("token_burst", "must be more than 0");
                }
                Some((n, burst))
            }
        };
        // With a fleet, the quotas above are the fleet's; this process keeps its local share
        // of each, for when Redis is unavailable.
        #[cfg(feature = "redis")]
        let (rpm, token_quota, fleet) = match fleet {
            None => (rpm, token_quota, None),
            Some(f) => {
                let share = |(n, burst): (u64, u64)| (f.local_share(n), f.local_share(burst));
                let quotas =
                    super::fleet::FleetQuotas::new(f.clone(), rpm, token_quota, cfg.window);
                (
                    rpm.map(share),
                    token_quota.map(share),
                    Some(Arc::new(quotas)),
                )
            }
        };
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                rpm_quota: rpm,
                token_quota,
                #[cfg(feature = "redis")]
                fleet,
                keys: RwLock::default(),
                prune_at: std::sync::atomic::AtomicUsize::new(PRUNE_FLOOR),
                hasher: RandomState::new(),
                pause: PauseHandle {
                    until: Arc::default(),
                    clock,
                },
                clock,
                max_wait: cfg.max_wait,
                cfg,
            }),
        })
    }

    /// How many keys the limiter currently keeps state for.
    pub fn tracked_keys(&self) -> usize {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// A handle that pauses this limiter; give it to the retry layer below
    /// ([`RetryLayerBuilder::pause_on_rate_limit`](crate::RetryLayerBuilder::pause_on_rate_limit)).
    pub fn pause_handle(&self) -> PauseHandle {
        self.shared.pause.clone()
    }
}

/// Builds a [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayerBuilder {
    cfg: RateLimitConfig,
    #[cfg(feature = "redis")]
    fleet: Option<crate::fleet::Fleet>,
}

impl RateLimitLayerBuilder {
    /// Requests per minute per key.
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.cfg.requests_per_minute = Some(n);
        self
    }

    /// Requests allowed at once (default one second's worth, at least 1).
    pub fn request_burst(mut self, n: u32) -> Self {
        self.cfg.request_burst = Some(n);
        self
    }

    /// Tokens per minute per key.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.cfg.tokens_per_minute = Some(n);
        self
    }

    /// Tokens allowed at once (default the per-minute quota).
    pub fn token_burst(mut self, n: u64) -> Self {
        self.cfg.token_burst = Some(n);
        self
    }

    /// What quotas are kept per.
    pub fn key_by(mut self, k: KeyBy) -> Self {
        self.cfg.key_by = k;
        self
    }

    /// Longest wait before [`RateLimited`](crate::RateLimited) (default 30 s).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.cfg.max_wait = d;
        self
    }

    /// Completion tokens assumed without `max_tokens` (default 4096).
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.cfg.default_max_tokens = n;
        self
    }

    /// Largest body read for the estimate (default 8 MiB).
    pub fn body_limit(mut self, n: usize) -> Self {
        self.cfg.body_limit = n;
        self
    }

    /// The period the quotas are given for (default a minute): `requests_per_minute(100)`
    /// with a window of 2 s admits 100 requests per 2 s. For tests and demonstrations.
    pub fn window(mut self, d: Duration) -> Self {
        self.cfg.window = d;
        self
    }

    /// Shares the quotas with every instance that uses the same Redis and key prefix (feature
    /// `redis`); see [`fleet`](crate::fleet). One [`Fleet`](crate::fleet::Fleet) may serve
    /// several layers. Without it (default), the quotas are this process's own.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet(mut self, fleet: crate::fleet::Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts, or a window under a millisecond.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        #[cfg(feature = "redis")]
        if self.fleet.is_some() {
            return RateLimitLayer::build_with(self.cfg, self.fleet);
        }
        RateLimitLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}
