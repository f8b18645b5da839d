//! L2: Redis, single node or cluster, fail-open.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, RedisResult};
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout};

use crate::cache::{CacheConfig, ConfigError};
use crate::key::CacheKey;
use crate::metrics;

/// Where L2 lives.
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A live connection: a reconnecting manager for one node, or a cluster connection (which
/// follows slot moves itself). Both are cheap clones over one multiplexed connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why a Redis URL was refused (the URL itself is never repeated: it may hold a password).
const URL_REASON: &str = "does not parse (expected redis://, rediss:// or redis+unix:// with host, \
                          port, optional user:password@ and /db)";

pub(crate) struct L2 {
    target: Target,
    conn: OnceCell<Conn>,
    /// Until when L2 is skipped after a failed connection.
    down_until: Mutex<Option<Instant>>,
    prefix: String,
    ttl_ms: u64,
    op_timeout: Duration,
    retry: Duration,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may carry a password.
        f.debug_struct("L2")
            .field(
                "mode",
                &match self.target {
                    Target::Single(_) => "single",
                    Target::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl L2 {
    pub(crate) fn from_config(cfg: &CacheConfig) -> Result<Option<L2>, ConfigError> {
        let target = if let Some(url) = &cfg.redis_url {
            Target::Single(
                redis::Client::open(url.as_str())
                    .map_err(|_| ConfigError::new("redis_url", URL_REASON))?,
            )
        } else if !cfg.redis_cluster_urls.is_empty() {
            Target::Cluster(
                ClusterClient::builder(cfg.redis_cluster_urls.iter().map(String::as_str))
                    .connection_timeout(cfg.redis_timeout)
                    .response_timeout(cfg.redis_timeout)
                    .build()
                    .map_err(|_| ConfigError::new("redis_cluster_urls", URL_REASON))?,
            )
        } else {
            return Ok(None);
        };
        Ok(Some(L2 {
            target,
            conn: OnceCell::new(),
            down_until: Mutex::new(None),
            prefix: format!("{}:v{}:", cfg.key_prefix, crate::entry::STORED_VERSION),
            ttl_ms: u64::try_from(cfg.l2_ttl.as_millis()).unwrap_or(u64::MAX),
            op_timeout: cfg.redis_timeout,
            retry: cfg.redis_retry,
        }))
    }

    pub(crate) fn redis_key(&self, key: &CacheKey) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 64);
        s.push_str(&self.prefix);
        s.push_str(&key.to_hex());
        s
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.op_timeout))
                    .set_response_timeout(Some(self.op_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(self.retry);
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }

    /// A connection, or `None` while L2 is considered down. Bounded by the op timeout.
    async fn conn(&self, deadline: Instant) -> Option<Conn> {
        {
            let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
            if down.is_some_and(|t| Instant::now() < t) {
                return None;
            }
        }
        if let Some(c) = self.conn.get() {
            return Some(c.clone());
        }
        let res =
            tokio::time::timeout_at(deadline, self.conn.get_or_try_init(|| self.connect())).await;
        match res {
            Ok(Ok(c)) => Some(c.clone()),
            Ok(Err(e)) => {
                self.mark_down("connect", &e.kind_str());
                None
            }
            Err(_) => {
                self.mark_down("connect", "timed out");
                None
            }
        }
    }

    fn mark_down(&self, op: &'static str, why: &str) {
        metrics::redis_error(op);
        tracing::warn!(target: "tower_deepseek_cache", op, error = why, "redis failed; L2 skipped for a while (fail-open)");
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        *down = Some(Instant::now() + self.retry);
    }

    /// Reads an entry. Any error or timeout is a miss (counted).
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        let deadline = Instant::now() + self.op_timeout;
        let conn = self.conn(deadline).await?;
        let rkey = self.redis_key(key);
        let res: Result<RedisResult<Option<Vec<u8>>>, _> = match conn {
            Conn::Single(mut c) => {
                tokio::time::timeout_at(deadline, async move { c.get(rkey).await }).await
            }
            Conn::Cluster(mut c) => {
                tokio::time::timeout_at(deadline, async move { c.get(rkey).await }).await
            }
        };
        match res {
            Ok(Ok(v)) => v.map(Bytes::from),
            Ok(Err(e)) => {
                self.mark_down("get", &e.kind_str());
                None
            }
            Err(_) => {
                self.mark_down("get", "timed out");
                None
            }
        }
    }

    /// Writes an entry with the L2 TTL. Errors are counted and logged, never raised.
    pub(crate) async fn set(&self, key: &CacheKey, value: Bytes) -> bool {
        let deadline = Instant::now() + self.op_timeout;
        let Some(conn) = self.conn(deadline).await else {
            return false;
        };
        let rkey = self.redis_key(key);
        let ttl = self.ttl_ms;
        let cmd = async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(rkey).arg(value.as_ref()).arg("PX").arg(ttl);
            match conn {
                Conn::Single(mut c) => cmd.query_async::<()>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<()>(&mut c).await,
            }
        };
        match timeout(self.op_timeout, cmd).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => self.mark_down("set", &e.kind_str()),
            Err(_) => self.mark_down("set", "timed out"),
        }
        false
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The error's category only: Redis error messages may echo arguments.
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}
