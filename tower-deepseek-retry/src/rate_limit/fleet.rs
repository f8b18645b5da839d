//! The Redis backend of the rate limiter: GCRA on Redis' clock, requests and tokens of a key
//! admitted in one script, token estimates settled by a second one.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tower_deepseek_core::meta::TenantId;

use super::config::KeyBy;
use crate::fleet::{Fleet, FleetUnavailable, spawn_detached};

/// Admits one request and `n` tokens, or neither. KEYS: the request quota's theoretical
/// arrival time (TAT), the token quota's. ARGV: request interval and tolerance (µs; interval 0:
/// no request quota), token interval and tolerance (µs; 0: none), `n`. Returns 0 when admitted,
/// otherwise the wait in µs. TATs are µs on Redis' clock, kept as long as they are ahead of it.
const ADMIT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ri, rtol = tonumber(ARGV[1]), tonumber(ARGV[2])
local ti, ttol, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait, rnew, tnew = 0, 0, 0
if ri > 0 then
  local v = redis.call('GET', KEYS[1])
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  rnew = tat + ri
  wait = math.max(wait, rnew - now - rtol)
end
if ti > 0 and n > 0 then
  local v = redis.call('GET', KEYS[2])
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  tnew = tat + ti * n
  wait = math.max(wait, tnew - now - ttol)
end
if wait > 0 then return math.ceil(wait) end
if ri > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', rnew), 'PX', math.ceil((rnew - now) / 1000) + 1)
end
if ti > 0 and n > 0 then
  redis.call('SET', KEYS[2], string.format('%.3f', tnew), 'PX', math.ceil((tnew - now) / 1000) + 1)
end
return 0
";

/// Takes (`d > 0`, may run into debt) or gives back (`d < 0`) tokens. KEYS: the token TAT.
/// ARGV: token interval (µs), `d`. A refund never makes more than a full bucket.
const SETTLE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ti, d = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('GET', KEYS[1])
local tat = now
if v then tat = tonumber(v) end
local new
if d >= 0 then
  new = math.max(tat, now) + ti * d
else
  new = math.max(tat + ti * d, math.min(now, tat))
end
if new > now then
  redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return 0
";

static ADMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT));
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE));

/// GCRA parameters in µs: interval per unit, tolerance (burst × interval).
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: f64,
    tolerance: f64,
    burst: u64,
}

impl Gcra {
    fn new((per_window, burst): (u64, u64), window: Duration) -> Self {
        let interval = window.as_micros() as f64 / per_window as f64;
        Self {
            interval,
            tolerance: interval * burst as f64,
            burst,
        }
    }
}

/// The fleet-wide quotas of one rate limiter.
#[derive(Debug)]
pub(crate) struct FleetQuotas {
    fleet: Fleet,
    requests: Option<Gcra>,
    tokens: Option<Gcra>,
}

impl FleetQuotas {
    pub(crate) fn new(
        fleet: Fleet,
        requests: Option<(u64, u64)>,
        tokens: Option<(u64, u64)>,
        window: Duration,
    ) -> Self {
        Self {
            fleet,
            requests: requests.map(|q| Gcra::new(q, window)),
            tokens: tokens.map(|q| Gcra::new(q, window)),
        }
    }

    pub(crate) fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub(crate) fn has_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    pub(crate) fn token_burst(&self) -> Option<u64> {
        self.tokens.map(|g| g.burst)
    }

    /// The quota's name in Redis: a digest of what it is kept per (never the tenant or model
    /// in clear), the same on every instance.
    pub(crate) fn name(key_by: KeyBy, model: Option<&str>, tenant: Option<&TenantId>) -> Arc<str> {
        let tenant = tenant.map_or("", TenantId::as_str);
        let model = model.unwrap_or("");
        let what = match key_by {
            KeyBy::Global => String::from("g"),
            KeyBy::Model => format!("m\0{model}"),
            KeyBy::Tenant => format!("t\0{tenant}"),
            KeyBy::ModelAndTenant => format!("mt\0{model}\0{tenant}"),
        };
        Arc::from(format!("rl:{}", Fleet::digest(&what)))
    }

    /// One round trip: admitted, or how long to wait.
    pub(crate) async fn try_admit(
        &self,
        name: &str,
        tokens: u64,
    ) -> Result<Result<(), Duration>, FleetUnavailable> {
        let (ri, rtol) = self
            .requests
            .map_or((0.0, 0.0), |g| (g.interval, g.tolerance));
        let (ti, ttol) = self
            .tokens
            .map_or((0.0, 0.0), |g| (g.interval, g.tolerance));
        let mut inv = ADMIT_SCRIPT.prepare_invoke();
        inv.key(self.fleet.key(name, "r"))
            .key(self.fleet.key(name, "t"))
            .arg(ri)
            .arg(rtol)
            .arg(ti)
            .arg(ttol)
            .arg(tokens);
        let wait_us: u64 = self.fleet.invoke("rate_limit_admit", &inv).await?;
        Ok(if wait_us == 0 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait_us))
        })
    }

    /// Settles `delta` tokens in the background (the body's end cannot wait for Redis). When
    /// Redis is unavailable the settlement is lost (counted in
    /// `deepseek_fleet_redis_errors_total{op="rate_limit_settle"}`).
    pub(crate) fn settle(self: &Arc<Self>, name: Arc<str>, delta: i64) {
        let Some(g) = self.tokens else { return };
        if delta == 0 {
            return;
        }
        let this = self.clone();
        spawn_detached(async move {
            let mut inv = SETTLE_SCRIPT.prepare_invoke();
            inv.key(this.fleet.key(&name, "t"))
                .arg(g.interval)
                .arg(delta);
            let _ = this.fleet.invoke::<i64>("rate_limit_settle", &inv).await;
        });
    }
}
