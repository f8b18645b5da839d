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
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts.
    pub fn from_config(cfg: RateLimitConfig) -> Result<Self, ConfigError> {
        let bad = |field, reason| Err(ConfigError::new(field, reason));
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
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                rpm_quota: rpm,
                token_quota,
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

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero quotas or bursts.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
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
