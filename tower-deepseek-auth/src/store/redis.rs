use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use tower_deepseek_core::BoxError;

use super::{LockToken, StoreFuture, StoredToken, TokenStore};
use crate::error::ConfigError;

const UNLOCK_SCRIPT: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// The default key prefix: keys are `<prefix>token:<key>` and `<prefix>lock:<key>`.
pub const DEFAULT_KEY_PREFIX: &str = "tower-deepseek:auth:";

/// The default bound on each Redis operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(200);

/// A [`TokenStore`] on Redis, so that a fleet of instances shares one token.
///
/// Works with any async connection that is `Clone`: a
/// [`ConnectionManager`] (single Redis, `redis://` or `rediss://`, with AUTH in the URL) via
/// [`open`](Self::open) or [`new`](Self::new), or a Redis Cluster connection
/// (`redis::cluster_async::ClusterConnection`) via [`new`](Self::new): every operation
/// touches one key, so no cross-slot command is ever sent.
///
/// Each operation is bounded by [`op_timeout`](Self::op_timeout) (default 200 ms); a failure
/// or a timeout makes the layer fetch for itself (fail open).
///
/// Stored values are `<expiry unix millis> <token>` strings under `<prefix>token:<key>` with a
/// `PX` time-to-live; the fetch lock is `SET <prefix>lock:<key> <random> NX PX <ttl>`, released
/// by a compare-and-delete script so that a holder never removes another's lock.
#[derive(Clone)]
pub struct RedisTokenStore<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    op_timeout: Duration,
}

impl RedisTokenStore<ConnectionManager> {
    /// A store on the Redis at `url` (`redis://`, `rediss://`, `redis://:password@host`).
    ///
    /// No I/O happens here: the connection is made on first use, with connect and response
    /// timeouts of [`DEFAULT_OP_TIMEOUT`], and remade in the background after a failure. So a
    /// layer starts even while Redis is down. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] (field `redis_url`) when the URL cannot be parsed; the URL itself is
    /// not repeated (it may hold a password).
    pub fn open(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|_| ConfigError::new("redis_url", "does not parse"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_OP_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_OP_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|_| ConfigError::new("redis_url", "does not parse"))?;
        Ok(Self::new(conn))
    }
}

impl<C> RedisTokenStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store on an existing connection (a `ConnectionManager` or a cluster connection).
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            prefix: Arc::from(DEFAULT_KEY_PREFIX),
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }

    /// The prefix of every key (default [`DEFAULT_KEY_PREFIX`]). For Redis Cluster, a prefix
    /// with a hash tag (`{deepseek-auth}:`) keeps a credential's token and lock on one node.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The bound on each operation (default 200 ms).
    #[must_use]
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    fn token_key(&self, key: &str) -> String {
        format!("{}token:{key}", self.prefix)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BoxError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            // Redis errors name the command and kind, never our values.
            Ok(Err(e)) => Err(Box::new(StoreError(e.kind_name()))),
            Err(_) => Err(Box::new(StoreError("timeout"))),
        }
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> &'static str {
        if self.is_timeout() {
            "timeout"
        } else if self.is_connection_refusal() || self.is_connection_dropped() {
            "connection"
        } else if self.is_io_error() {
            "io"
        } else {
            "redis"
        }
    }
}

/// A Redis operation failed; carries only a kind, never a key value or token.
#[derive(Debug)]
struct StoreError(&'static str);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis token store operation failed ({})", self.0)
    }
}

impl std::error::Error for StoreError {}

impl<C> fmt::Debug for RedisTokenStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl<C> TokenStore for RedisTokenStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let k = self.token_key(key);
            let value: Option<String> = self
                .bounded(redis::cmd("GET").arg(&k).query_async(&mut conn))
                .await?;
            Ok(value
                .as_deref()
                .and_then(StoredToken::decode)
                .filter(|t| !t.remaining().is_zero()))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let k = self.token_key(key);
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let value = token.encode();
            let _: () = self
                .bounded(
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(value.as_str())
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn),
                )
                .await?;
            Ok(())
        })
    }

    fn try_lock<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, Option<LockToken>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let k = self.lock_key(key);
            let lock = LockToken::random();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let set: Option<String> = self
                .bounded(
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(lock.as_str())
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn),
                )
                .await?;
            Ok(set.map(|_| lock))
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, lock: LockToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let k = self.lock_key(key);
            let script = redis::Script::new(UNLOCK_SCRIPT);
            let _: i64 = self
                .bounded(script.key(&k).arg(lock.as_str()).invoke_async(&mut conn))
                .await?;
            Ok(())
        })
    }
}
