//! Limits shared by a fleet of instances through Redis: the connection, the scripts' round
//! trips and the fallback to local shares (feature `redis`).
//!
//! One gateway keeps its limits in memory; several gateways behind a load balancer with one
//! DeepSeek account must share them, or each admits its own quota. A [`Fleet`] is the handle
//! every shared limit goes through:
//!
//! - **one connection** (single Redis through a reconnecting `ConnectionManager`, or a Redis
//!   Cluster connection that follows slot moves), made on first use, with `rediss://` and AUTH
//!   from the URL, as the cache's L2 and the auth token store connect;
//! - **one atomic round trip per decision**: each limit is a Lua script run with `EVALSHA`
//!   (loaded again on `NOSCRIPT`), whose keys carry one hash tag
//!   ([`Fleet::key`]: `{<prefix>:<quota>}:<part>`) so that on a cluster they share a slot;
//!   scripts read Redis' own clock (`TIME`), so the instances' clocks need not agree;
//! - **its own short timeout** (50 ms by default, connecting included): an error or a slower
//!   answer marks Redis unavailable for `retry` (1 s), during which [`Fleet::invoke`] fails at
//!   once without I/O. Each limit then decides **locally on its share** of the quota
//!   ([`Fleet::local_share`]: quota / `expected_instances`, at least 1), so traffic is never
//!   blocked by Redis, and never admitted without bound. Once Redis answers again, the limits
//!   are shared again.
//!
//! The switch to local shares and back is logged once each way (`warn`, then `info`; never a
//! URL, key or value) and shown by the gauge `deepseek_fleet_redis_up` (1 from the first answer,
//! 0 while Redis is unavailable); every failed
//! round trip counts in `deepseek_fleet_redis_errors_total{op}` and every decision taken
//! locally because of it in `deepseek_fleet_fallback_total{limit}`.
//!
//! Clones share one connection and one view of Redis' health: give the same `Fleet` to the
//! rate limiter, the concurrency limit and any other shared quota (budgets) of a process.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_deepseek_retry::fleet::Fleet;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let fleet = Fleet::builder()
//!     .redis_url("redis://127.0.0.1:1") // nothing listens there: every limit uses its share
//!     .key_prefix("gw")
//!     .timeout(Duration::from_millis(50))
//!     .expected_instances(4)
//!     .build()?;
//! assert_eq!(fleet.local_share(600), 150);
//! let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
//! let key = fleet.key("demo", "n");
//! assert_eq!(key, "{gw:demo}:n");
//! let res = fleet.invoke::<i64>("demo", &script.key(&key)).await;
//! assert!(res.is_err());
//! assert!(!fleet.is_up());
//! # Ok(())
//! # }
//! ```

mod config;
mod error;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult, ScriptInvocation};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tower_deepseek_core::config::ConfigError;

pub use config::{DEFAULT_KEY_PREFIX, DEFAULT_RETRY, DEFAULT_TIMEOUT, FleetBuilder, FleetConfig};
pub use error::FleetUnavailable;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Why a Redis URL was refused (the URL itself is never repeated: it may hold a password).
const URL_REASON: &str = "does not parse (expected redis://, rediss:// or redis+unix:// with host, \
                          port, optional user:password@ and /db)";

/// Where the state lives.
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A live connection; both kinds are cheap clones over one multiplexed connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    target: Target,
    conn: OnceCell<Conn>,
    /// Until when Redis is left alone after a failure.
    down_until: Mutex<Option<Instant>>,
    /// What the last round trip said: [`UNKNOWN`] (none yet), [`UP`] or [`DOWN`] (for the
    /// logs and gauge of the transitions).
    state: AtomicU8,
    prefix: String,
    timeout: Duration,
    retry: Duration,
    expected_instances: u32,
}

/// The shared-state handle of a fleet: one Redis connection, its health and the local shares.
/// Cheap to clone; clones share everything. See the [module docs](self).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Fleet")
            .field(
                "mode",
                &match self.inner.target {
                    Target::Single(_) => "single",
                    Target::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("expected_instances", &self.inner.expected_instances)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Fleet {
    /// A builder (no Redis set yet).
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// A fleet from a (deserialized) configuration. No I/O: the connection is made on first
    /// use, so a process starts while Redis is down.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a missing or unparseable URL (the URL is never repeated), a prefix
    /// with braces, a zero timeout or zero instances.
    pub fn from_config(cfg: &FleetConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let target = if let Some(url) = &cfg.redis_url {
            Target::Single(
                redis::Client::open(url.as_str())
                    .map_err(|_| ConfigError::new("redis_url", URL_REASON))?,
            )
        } else {
            Target::Cluster(
                ClusterClient::builder(cfg.redis_cluster_urls.iter().map(String::as_str))
                    .connection_timeout(cfg.timeout)
                    .response_timeout(cfg.timeout)
                    .build()
                    .map_err(|_| ConfigError::new("redis_cluster_urls", URL_REASON))?,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                conn: OnceCell::new(),
                down_until: Mutex::new(None),
                state: AtomicU8::new(UNKNOWN),
                prefix: cfg.key_prefix.clone(),
                timeout: cfg.timeout,
                retry: cfg.retry,
                expected_instances: cfg.expected_instances,
            }),
        })
    }

    /// The key of `part` of the quota `quota`: `{<prefix>:<quota>}:<part>`. Every key of one
    /// quota has the same hash tag, so one script may touch them all on a Redis Cluster.
    pub fn key(&self, quota: &str, part: &str) -> String {
        format!("{{{}:{quota}}}:{part}", self.inner.prefix)
    }

    /// A stable digest of a name (a tenant, a model, an API key), for use in keys: the same
    /// on every instance and every version, and it does not show the name (24 hex digits of
    /// its SHA-256).
    pub fn digest(name: &str) -> String {
        let d = Sha256::digest(name.as_bytes());
        hex::encode(&d[..12])
    }

    /// How many instances share the quotas.
    pub fn expected_instances(&self) -> u32 {
        self.inner.expected_instances
    }

    /// This instance's share of a quota while Redis is unavailable: `quota /
    /// expected_instances`, at least 1.
    pub fn local_share(&self, quota: u64) -> u64 {
        (quota / u64::from(self.inner.expected_instances)).max(1)
    }

    /// The bound on one round trip.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `false` from a failed round trip until one succeeds (while the limits use local
    /// shares); `true` before the first round trip and while Redis answers.
    pub fn is_up(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != DOWN
    }

    /// Counts a decision taken on the local share because Redis was unavailable, in
    /// `deepseek_fleet_fallback_total{limit}`.
    pub fn count_fallback(&self, limit: &'static str) {
        metrics::counter!("deepseek_fleet_fallback_total", "limit" => limit).increment(1);
    }

    /// Runs a script in one round trip (`EVALSHA`, with `SCRIPT LOAD` and a second try on
    /// `NOSCRIPT`), bounded by the fleet's timeout, connecting included. `op` names the
    /// operation in metrics and logs.
    ///
    /// # Errors
    ///
    /// [`FleetUnavailable`] at once, without I/O, while Redis is left alone after a failure;
    /// otherwise when the round trip fails or is too slow (and Redis is then left alone for
    /// `retry`).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        op: &'static str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, FleetUnavailable> {
        let deadline = Instant::now() + self.inner.timeout;
        let conn = self.conn(deadline).await?;
        let res = tokio::time::timeout_at(deadline, async move {
            match conn {
                Conn::Single(mut c) => inv.invoke_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<T>(&mut c).await,
            }
        })
        .await;
        match res {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.mark_down(op, kind_name(&e))),
            Err(_) => Err(self.mark_down(op, "timeout")),
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.inner.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.inner.timeout))
                    .set_response_timeout(Some(self.inner.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(self.inner.retry);
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }

    async fn conn(&self, deadline: Instant) -> Result<Conn, FleetUnavailable> {
        {
            let down = self
                .inner
                .down_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if down.is_some_and(|t| Instant::now() < t) {
                return Err(FleetUnavailable::new("left alone after a failure"));
            }
        }
        if let Some(c) = self.inner.conn.get() {
            return Ok(c.clone());
        }
        let res =
            tokio::time::timeout_at(deadline, self.inner.conn.get_or_try_init(|| self.connect()))
                .await;
        match res {
            Ok(Ok(c)) => Ok(c.clone()),
            Ok(Err(e)) => Err(self.mark_down("connect", kind_name(&e))),
            Err(_) => Err(self.mark_down("connect", "timeout")),
        }
    }

    fn mark_down(&self, op: &'static str, kind: &'static str) -> FleetUnavailable {
        metrics::counter!("deepseek_fleet_redis_errors_total", "op" => op).increment(1);
        *self
            .inner
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.inner.retry);
        if self.inner.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            metrics::gauge!("deepseek_fleet_redis_up").set(0.0);
            tracing::warn!(
                target: "tower_deepseek_retry",
                op,
                error = kind,
                retry_ms = self.inner.retry.as_millis() as u64,
                "redis unavailable: fleet limits fall back to local shares"
            );
        }
        FleetUnavailable::new(kind)
    }

    fn mark_up(&self) {
        match self.inner.state.swap(UP, Ordering::AcqRel) {
            UP => {}
            DOWN => {
                metrics::gauge!("deepseek_fleet_redis_up").set(1.0);
                tracing::info!(
                    target: "tower_deepseek_retry",
                    "redis answers again: fleet limits are shared again"
                );
            }
            _ => metrics::gauge!("deepseek_fleet_redis_up").set(1.0),
        }
    }
}

/// The error's category only: Redis error messages may echo arguments.
fn kind_name(e: &redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() || e.is_connection_dropped() {
        "connection"
    } else if e.is_io_error() {
        "io"
    } else {
        "redis"
    }
}

/// Runs `fut` on the current tokio runtime in the background; does nothing outside one (the
/// state it would have written expires by itself).
pub(crate) fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        drop(h.spawn(fut));
    }
}

/// A random id for a lease.
pub(crate) fn random_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}
