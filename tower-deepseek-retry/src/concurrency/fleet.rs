//! The Redis backend of the adaptive concurrency limit: a lease-based distributed semaphore
//! (a sorted set of lease ids scored by their expiry) and the AIMD limit, both in one hash
//! slot per upstream account.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::config::AdaptiveConcurrencyConfig;
use crate::fleet::{Fleet, FleetUnavailable, random_id, spawn_detached};

/// Purges expired leases, then takes one if fewer than the limit are held. KEYS: the leases
/// (sorted set, score = expiry in ms on Redis' clock), the limit (hash: `v` the AIMD value,
/// `e` its epoch). ARGV: lease id, lease TTL (ms), the initial limit. Returns
/// `{taken, limit, epoch}`.
const ACQUIRE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local v = tonumber(redis.call('HGET', KEYS[2], 'v') or ARGV[3])
local e = tonumber(redis.call('HGET', KEYS[2], 'e') or '0')
local taken = 0
if redis.call('ZCARD', KEYS[1]) < math.floor(v) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  taken = 1
end
return {taken, tostring(v), e}
";

/// Pushes a held lease's expiry to now + TTL. KEYS: the leases. ARGV: id, TTL (ms). Returns
/// 0 when the lease is gone (it expired).
const RENEW: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
";

/// Gives a lease back and applies its outcome to the limit. KEYS: leases, limit. ARGV: id,
/// outcome (0 neutral, 1 success: + 1/limit up to max, 2 overload: × factor down to min, once
/// per epoch), the epoch seen at acquisition, initial, min, max, factor. Returns the limit.
const RELEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
local o = tonumber(ARGV[2])
local v = tonumber(redis.call('HGET', KEYS[2], 'v') or ARGV[4])
local e = tonumber(redis.call('HGET', KEYS[2], 'e') or '0')
local mx = tonumber(ARGV[6])
if o == 1 and v < mx then
  v = math.min(v + 1 / v, mx)
  redis.call('HSET', KEYS[2], 'v', string.format('%.6f', v))
  redis.call('PEXPIRE', KEYS[2], 86400000)
elseif o == 2 and e == tonumber(ARGV[3]) then
  v = math.max(v * tonumber(ARGV[7]), tonumber(ARGV[5]))
  redis.call('HSET', KEYS[2], 'v', string.format('%.6f', v), 'e', e + 1)
  redis.call('PEXPIRE', KEYS[2], 86400000)
end
return tostring(v)
";

static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// What a response said about the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Neutral = 0,
    Success = 1,
    Overload = 2,
}

/// The fleet-wide semaphore and limit of one upstream account.
#[derive(Debug)]
pub(crate) struct FleetLeases {
    fleet: Fleet,
    leases_key: String,
    limit_key: String,
    ttl: Duration,
    initial: u32,
    min: u32,
    max: u32,
    factor: f64,
    /// The last limit Redis reported (f64 bits).
    seen: AtomicU64,
    /// Leases this process holds.
    pub(crate) held: AtomicUsize,
}

/// A lease held by this process: renewed in the background until dropped, which gives it
/// back with its [`Outcome`]. A process that dies holding it (or a runtime dropped with it)
/// gives nothing back: the lease expires after its TTL.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Arc<FleetLeases>,
    id: Arc<str>,
    epoch: i64,
    renew: tokio::task::JoinHandle<()>,
    outcome: Outcome,
}

impl FleetLeases {
    pub(crate) fn new(fleet: Fleet, cfg: &AdaptiveConcurrencyConfig) -> Self {
        let name = format!("cc:{}", Fleet::digest(&cfg.account));
        Self {
            leases_key: fleet.key(&name, "leases"),
            limit_key: fleet.key(&name, "limit"),
            fleet,
            ttl: cfg.lease_ttl,
            initial: cfg.initial,
            min: cfg.min,
            max: cfg.max,
            factor: cfg.decrease_factor,
            seen: AtomicU64::new(f64::from(cfg.initial).to_bits()),
            held: AtomicUsize::new(0),
        }
    }

    pub(crate) fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The last limit Redis reported.
    pub(crate) fn limit(&self) -> f64 {
        f64::from_bits(self.seen.load(Ordering::Relaxed))
    }

    fn see(&self, limit: &str) {
        if let Ok(v) = limit.parse::<f64>() {
            let before = self.limit();
            self.seen.store(v.to_bits(), Ordering::Relaxed);
            if v.floor() != before.floor() {
                metrics::gauge!("deepseek_concurrency_limit").set(v.floor());
            }
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// One round trip: a lease, or `None` when the fleet holds the limit already.
    pub(crate) async fn try_acquire(self: &Arc<Self>) -> Result<Option<Lease>, FleetUnavailable> {
        let id: Arc<str> = Arc::from(random_id());
        let mut inv = ACQUIRE_SCRIPT.prepare_invoke();
        inv.key(&self.leases_key)
            .key(&self.limit_key)
            .arg(&*id)
            .arg(self.ttl_ms())
            .arg(self.initial);
        let (taken, limit, epoch): (i64, String, i64) =
            self.fleet.invoke("concurrency_acquire", &inv).await?;
        self.see(&limit);
        if taken != 1 {
            return Ok(None);
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        let renew = tokio::spawn(Self::renew(self.clone(), id.clone()));
        Ok(Some(Lease {
            leases: self.clone(),
            id,
            epoch,
            renew,
            outcome: Outcome::Neutral,
        }))
    }

    /// Renews a lease every third of its TTL while it is held.
    async fn renew(this: Arc<Self>, id: Arc<str>) {
        let every = this.ttl / 3;
        loop {
            tokio::time::sleep(every).await;
            let mut inv = RENEW_SCRIPT.prepare_invoke();
            inv.key(&this.leases_key).arg(&*id).arg(this.ttl_ms());
            if let Ok(0) = this.fleet.invoke::<i64>("concurrency_renew", &inv).await {
                tracing::debug!(
                    target: "tower_deepseek_retry",
                    "a fleet concurrency lease expired while held; the call goes on"
                );
                return;
            }
        }
    }
}

impl Lease {
    /// What the response said, applied to the limit when the lease is given back.
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Lease {
    /// Gives the lease back (in the background) with what the response said.
    fn drop(&mut self) {
        self.renew.abort();
        let leases = self.leases.clone();
        leases.held.fetch_sub(1, Ordering::Relaxed);
        let id = self.id.clone();
        let (outcome, epoch) = (self.outcome, self.epoch);
        spawn_detached(async move {
            let mut inv = RELEASE_SCRIPT.prepare_invoke();
            inv.key(&leases.leases_key)
                .key(&leases.limit_key)
                .arg(&*id)
                .arg(outcome as i64)
                .arg(epoch)
                .arg(leases.initial)
                .arg(leases.min)
                .arg(leases.max)
                .arg(leases.factor);
            if let Ok(limit) = leases
                .fleet
                .invoke::<String>("concurrency_release", &inv)
                .await
            {
                let before = leases.limit();
                leases.see(&limit);
                if outcome == Outcome::Overload && leases.limit() < before {
                    tracing::info!(
                        target: "tower_deepseek_retry",
                        limit = leases.limit().floor() as u64,
                        "upstream 429: fleet concurrency limit lowered"
                    );
                }
            }
        });
    }
}
