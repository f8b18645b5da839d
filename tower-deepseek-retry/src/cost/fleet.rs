//! Budgets shared by a fleet through Redis (feature `redis`): one atomic script per check and
//! per settle, through the fleet's connection ([`Fleet`](crate::fleet::Fleet)).
//!
//! The keys of one scope (a tenant, or the global budget) are `{<prefix>:budget:<digest>}:d:<day>`
//! and `…:m:<month>`: one hash tag, so both are in one cluster slot and one script updates
//! them together. Each is a hash of `picos` (money, in 10⁻¹² of the currency: up to about
//! 9.2 million units per period, Redis integers being 64-bit) and `tokens`, and expires a day
//! after its period ends (a time to live from the call's start, by the layer's clock: the
//! instances' clocks and Redis' need not agree).

use std::sync::LazyLock;

use jiff::Timestamp;
use redis::Script;

use tower_deepseek_core::protocol::Money;

use super::budget::{Periods, Spent, Tally};
use crate::fleet::{Fleet, FleetUnavailable};

static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local d = redis.call('HMGET', KEYS[1], 'picos', 'tokens')
local m = redis.call('HMGET', KEYS[2], 'picos', 'tokens')
return {d[1] or '0', d[2] or '0', m[1] or '0', m[2] or '0'}
",
    )
});

static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 1, 2 do
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[i], 'picos', ARGV[1]))
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[2]))
  redis.call('EXPIRE', KEYS[i], ARGV[2 + i])
end
return out
",
    )
});

/// One day, in seconds: how long a period's keys outlive it.
const KEEP: i64 = 86_400;

/// Seconds from `start` to a day after `end`.
fn ttl(end: Timestamp, start: Timestamp) -> i64 {
    (end.as_second() - start.as_second())
        .max(0)
        .saturating_add(KEEP)
}

pub(crate) struct RedisTally {
    pub(crate) fleet: Fleet,
}

fn tally(v: &[String]) -> Tally {
    let n = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Tally {
        day: Spent {
            cost: Money::from_picos(u128::from(n(0))),
            tokens: n(1),
        },
        month: Spent {
            cost: Money::from_picos(u128::from(n(2))),
            tokens: n(3),
        },
    }
}

impl RedisTally {
    fn keys(&self, scope: &str, periods: &Periods) -> [String; 2] {
        let quota = format!("budget:{}", Fleet::digest(scope));
        [
            self.fleet.key(&quota, &format!("d:{}", periods.day)),
            self.fleet.key(&quota, &format!("m:{}", periods.month)),
        ]
    }

    /// What `scope` has spent in `periods`, fleet-wide.
    pub(crate) async fn get(
        &self,
        scope: &str,
        periods: &Periods,
    ) -> Result<Tally, FleetUnavailable> {
        let [d, m] = self.keys(scope, periods);
        let mut inv = GET.prepare_invoke();
        inv.key(d).key(m);
        let v: Vec<String> = self.fleet.invoke("budget_check", &inv).await?;
        Ok(tally(&v))
    }

    /// Adds to what `scope` has spent in `periods`, fleet-wide; the new tally.
    pub(crate) async fn add(
        &self,
        scope: &str,
        periods: &Periods,
        start: Timestamp,
        cost: Money,
        tokens: u64,
    ) -> Result<Tally, FleetUnavailable> {
        let [d, m] = self.keys(scope, periods);
        let picos = i64::try_from(cost.picos()).unwrap_or(i64::MAX);
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let mut inv = ADD.prepare_invoke();
        inv.key(d)
            .key(m)
            .arg(picos)
            .arg(tokens)
            .arg(ttl(periods.day_end, start))
            .arg(ttl(periods.month_end, start));
        let v: Vec<String> = self.fleet.invoke("budget_settle", &inv).await?;
        Ok(tally(&v))
    }
}
