//! [`TimeoutLayer`](crate::TimeoutLayer) and its builder.

use std::time::Duration;

use super::config::TimeoutConfig;
use super::service::Timeout;
use tower_deepseek_core::config::ConfigError;
use tower_layer::Layer;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub(crate) headers: Option<Duration>,
    pub(crate) first_token: Option<Duration>,
    pub(crate) idle: Option<Duration>,
    pub(crate) total: Option<Duration>,
}

/// Applies attempt timeouts. See the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    pub(crate) limits: Limits,
}

impl TimeoutLayer {
    /// A builder with the defaults of [`TimeoutConfig`](crate::TimeoutConfig) (every wait bounded); pass `None` to
    /// a setter to leave that wait unbounded.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder {
            cfg: TimeoutConfig::default(),
        }
    }

    /// A layer from a (deserialized) configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a zero timeout.
    pub fn from_config(cfg: TimeoutConfig) -> Result<Self, ConfigError> {
        for (field, v) in [
            ("headers_ms", cfg.headers),
            ("first_token_ms", cfg.first_token),
            ("idle_ms", cfg.idle),
            ("total_ms", cfg.total),
        ] {
            // Zero milliseconds, as the serde config counts them.
            if v.is_some_and(|d| d.as_millis() == 0) {
                return Err(ConfigError::new(
                    field,
                    "must be more than 0 (null for no timeout)",
                ));
            }
        }
        Ok(Self {
            limits: Limits {
                headers: cfg.headers,
                first_token: cfg.first_token,
                idle: cfg.idle,
                total: cfg.total,
            },
        })
    }
}

/// Builds a [`TimeoutLayer`](crate::TimeoutLayer).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct TimeoutLayerBuilder {
    cfg: TimeoutConfig,
}

impl TimeoutLayerBuilder {
    /// Timeout until the response head; `None` for no bound.
    pub fn headers(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.headers = d.into();
        self
    }

    /// Timeout until the first token (keep-alives ignored), from the call; `None` for no bound.
    pub fn first_token(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.first_token = d.into();
        self
    }

    /// Longest gap between chunks once content flows; `None` for no bound.
    pub fn idle(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.idle = d.into();
        self
    }

    /// Timeout until the body ends, from the call; `None` for no bound.
    pub fn total(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.total = d.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a zero (or sub-millisecond) timeout.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        TimeoutLayer::from_config(self.cfg)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limits: self.limits,
        }
    }
}
