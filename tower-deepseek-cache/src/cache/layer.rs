//! [`CacheLayer`] and its builder, [`CacheLayerBuilder`].

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::CacheConfig;
use super::error::ConfigError;
use super::service::{Cache, Shared};

/// Applies [`Cache`] to a service. See the [crate docs](crate).
///
/// Every service made by one layer (and every clone of them) shares one L1, one Redis
/// connection and one single-flight table.
#[derive(Clone, Debug)]
pub struct CacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl CacheLayer {
    /// An L1-only cache with the defaults of [`CacheConfig`].
    pub fn new() -> Self {
        CacheLayer {
            shared: Arc::new(Shared::new(CacheConfig::default()).expect("defaults are valid")),
        }
    }

    /// A builder, starting from the defaults.
    pub fn builder() -> CacheLayerBuilder {
        CacheLayerBuilder {
            config: CacheConfig::default(),
        }
    }

    /// A layer from a deserialised config.
    ///
    /// # Errors
    ///
    /// As [`CacheLayerBuilder::build`].
    pub fn from_config(config: CacheConfig) -> Result<Self, ConfigError> {
        CacheLayerBuilder { config }.build()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::new(inner, self)
    }
}

/// Builds a [`CacheLayer`]; defaults as in [`CacheConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheLayerBuilder {
    config: CacheConfig,
}

impl CacheLayerBuilder {
    /// How long an answer stays in L1. Default 5 minutes.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.config.l1_ttl = ttl;
        self
    }

    /// L1 capacity in bytes (entries are weighed by their size). Default 64 MiB; 0 disables L1.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.config.l1_max_bytes = bytes;
        self
    }

    /// How long an answer stays in Redis. Default 60 minutes.
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.config.l2_ttl = ttl;
        self
    }

    /// Use the Redis at `url` as L2 (`redis://`, `rediss://` for TLS; `user:password@` for
    /// AUTH).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// Use a Redis Cluster (its seed nodes) as L2.
    pub fn redis_cluster<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.config.redis_cluster_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Prefix of the Redis keys. Default `deepseek:cache`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// Time limit of each Redis operation. Default 100 ms.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.config.redis_timeout = timeout;
        self
    }

    /// How long L2 is skipped after a Redis failure. Default 1 s.
    pub fn redis_retry(mut self, after: Duration) -> Self {
        self.config.redis_retry = after;
        self
    }

    /// Cache answers to requests whose temperature is not 0. Default false.
    pub fn cache_nonzero_temperature(mut self, yes: bool) -> Self {
        self.config.cache_nonzero_temperature = yes;
        self
    }

    /// Largest request body read. Default 8 MiB.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }

    /// Largest answer recorded. Default 4 MiB.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.config.max_entry_bytes = bytes;
        self
    }

    /// Validates the settings and builds the layer. Does not connect to Redis: the connection
    /// is made on first use, within the Redis timeout.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field, for a zero TTL, limit or timeout (`l1_ttl_ms`,
    /// `max_request_bytes`, ...), an empty `key_prefix`, both a single and a cluster Redis
    /// (`redis_cluster_urls`), an unparseable Redis URL (`redis_url` or `redis_cluster_urls`),
    /// or a Redis URL without the `redis` feature.
    pub fn build(self) -> Result<CacheLayer, ConfigError> {
        Ok(CacheLayer {
            shared: Arc::new(Shared::new(self.config)?),
        })
    }
}
