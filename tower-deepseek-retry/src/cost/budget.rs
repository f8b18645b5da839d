//! Budgets: their serde configuration ([`CostBudgets`], [`BudgetLimits`]), the periods a call
//! falls in, and the in-memory tally.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;
use tower_deepseek_core::protocol::Money;

use super::error::{BudgetExceeded, BudgetKind, BudgetPeriod};

/// What budgets are kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetScope {
    /// One budget per [`TenantId`](tower_deepseek_core::meta::TenantId) (calls without one
    /// share the budget of the tenant `none`). A gateway that derives a tenant per client key
    /// (as ours does) thus has a budget per key.
    #[default]
    Tenant,
    /// One budget for every call.
    Global,
}

/// The limits of one budget; each is optional (absent: no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetLimits {
    /// Money per day, in the price table's currency.
    pub daily_cost: Option<Money>,
    /// Money per calendar month, in the price table's currency.
    pub monthly_cost: Option<Money>,
    /// Tokens (input and output) per day.
    pub daily_tokens: Option<u64>,
    /// Tokens (input and output) per calendar month.
    pub monthly_tokens: Option<u64>,
}

impl BudgetLimits {
    /// No limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Money per day.
    #[must_use]
    pub fn daily_cost(mut self, m: Money) -> Self {
        self.daily_cost = Some(m);
        self
    }

    /// Money per calendar month.
    #[must_use]
    pub fn monthly_cost(mut self, m: Money) -> Self {
        self.monthly_cost = Some(m);
        self
    }

    /// Tokens per day.
    #[must_use]
    pub fn daily_tokens(mut self, n: u64) -> Self {
        self.daily_tokens = Some(n);
        self
    }

    /// Tokens per calendar month.
    #[must_use]
    pub fn monthly_tokens(mut self, n: u64) -> Self {
        self.monthly_tokens = Some(n);
        self
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn has_cost(&self) -> bool {
        self.daily_cost.is_some() || self.monthly_cost.is_some()
    }
}

/// Budgets (serde): limits per day and per month, in money or tokens, per tenant or for all.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CostBudgets {
    /// What budgets are kept per (default per tenant).
    pub scope: BudgetScope,
    /// The IANA time zone where days and months begin (default `UTC`).
    pub time_zone: String,
    /// The limits of every tenant (or of the one global budget).
    pub default: BudgetLimits,
    /// Limits of particular tenants, replacing `default` for them.
    pub tenants: BTreeMap<String, BudgetLimits>,
    /// The Redis backend (feature `redis`; serde table `redis`): when set, the tallies are
    /// kept in that Redis, so every instance on it with the same `key_prefix` shares each
    /// budget, and while it is unavailable (no answer within `timeout_ms`) each instance
    /// checks its own spending against limit / `expected_instances`. A fleet given to the
    /// builder ([`CostLayerBuilder::fleet`](crate::cost::CostLayerBuilder::fleet)) wins.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub redis: Option<crate::fleet::FleetConfig>,
}

impl Default for CostBudgets {
    fn default() -> Self {
        CostBudgets {
            scope: BudgetScope::Tenant,
            time_zone: "UTC".into(),
            default: BudgetLimits::default(),
            tenants: BTreeMap::new(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl CostBudgets {
    /// Budgets of `limits` for every tenant, days and months in UTC.
    pub fn per_tenant(limits: BudgetLimits) -> Self {
        CostBudgets {
            default: limits,
            ..Self::default()
        }
    }

    /// One budget of `limits` for every call.
    pub fn global(limits: BudgetLimits) -> Self {
        CostBudgets {
            scope: BudgetScope::Global,
            default: limits,
            ..Self::default()
        }
    }

    /// Limits of their own for `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>, limits: BudgetLimits) -> Self {
        self.tenants.insert(tenant.into(), limits);
        self
    }

    /// The IANA time zone where days and months begin.
    #[must_use]
    pub fn time_zone(mut self, name: impl Into<String>) -> Self {
        self.time_zone = name.into();
        self
    }

    pub(crate) fn any_cost(&self) -> bool {
        self.default.has_cost() || self.tenants.values().any(BudgetLimits::has_cost)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.default.is_empty() && self.tenants.values().all(BudgetLimits::is_empty)
    }

    pub(crate) fn limits(&self, scope_key: &str) -> &BudgetLimits {
        self.tenants.get(scope_key).unwrap_or(&self.default)
    }
}

/// The day and the month a call falls in (where the budgets' days begin), and when each ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Periods {
    /// `2026-12-06`
    pub(crate) day: String,
    /// `2026-12`
    pub(crate) month: String,
    pub(crate) day_end: Timestamp,
    pub(crate) month_end: Timestamp,
}

impl Periods {
    pub(crate) fn at(at: Timestamp, tz: &TimeZone) -> Periods {
        let local = at.to_zoned(tz.clone());
        let date = local.date();
        let start_of = |d: jiff::civil::Date| {
            d.to_zoned(tz.clone())
                .map(|z| z.timestamp())
                .unwrap_or(Timestamp::MAX)
        };
        let next_day = date.tomorrow().map_or(Timestamp::MAX, start_of);
        let next_month = date
            .first_of_month()
            .checked_add(1.month())
            .map_or(Timestamp::MAX, start_of);
        Periods {
            day: date.strftime("%Y-%m-%d").to_string(),
            month: date.strftime("%Y-%m").to_string(),
            day_end: next_day,
            month_end: next_month,
        }
    }

    fn end(&self, p: BudgetPeriod) -> Timestamp {
        match p {
            BudgetPeriod::Day => self.day_end,
            BudgetPeriod::Month => self.month_end,
        }
    }
}

/// What a scope has spent in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Spent {
    pub(crate) cost: Money,
    pub(crate) tokens: u64,
}

/// What a scope has spent in the day and the month of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tally {
    pub(crate) day: Spent,
    pub(crate) month: Spent,
}

/// The first limit `tally` has reached, as the error to refuse a call with: the one that lasts
/// longest when several are reached.
pub(crate) fn check(
    limits: &BudgetLimits,
    tally: &Tally,
    periods: &Periods,
    now: Timestamp,
) -> Result<(), BudgetExceeded> {
    let reached = [
        (
            BudgetPeriod::Month,
            BudgetKind::Cost,
            limits.monthly_cost.is_some_and(|l| tally.month.cost >= l),
        ),
        (
            BudgetPeriod::Month,
            BudgetKind::Tokens,
            limits
                .monthly_tokens
                .is_some_and(|l| tally.month.tokens >= l),
        ),
        (
            BudgetPeriod::Day,
            BudgetKind::Cost,
            limits.daily_cost.is_some_and(|l| tally.day.cost >= l),
        ),
        (
            BudgetPeriod::Day,
            BudgetKind::Tokens,
            limits.daily_tokens.is_some_and(|l| tally.day.tokens >= l),
        ),
    ];
    match reached.into_iter().find(|r| r.2) {
        None => Ok(()),
        Some((period, kind, _)) => {
            let end = periods.end(period);
            let wait = end.duration_since(now);
            let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
            let resets_at = SystemTime::from(end);
            Err(BudgetExceeded::new(period, kind, wait, resets_at))
        }
    }
}

/// How much of each limit `tally` uses, as ratios (for the `deepseek_cost_budget_used_ratio`
/// gauge): display only, computed from the exact integers.
pub(crate) fn ratios(limits: &BudgetLimits, tally: &Tally) -> [(&'static str, Option<f64>); 4] {
    let money = |spent: Money, l: Option<Money>| {
        l.filter(|l| !l.is_zero())
            .map(|l| spent.picos() as f64 / l.picos() as f64)
    };
    let tokens =
        |spent: u64, l: Option<u64>| l.filter(|l| *l != 0).map(|l| spent as f64 / l as f64);
    [
        ("daily_cost", money(tally.day.cost, limits.daily_cost)),
        ("monthly_cost", money(tally.month.cost, limits.monthly_cost)),
        (
            "daily_tokens",
            tokens(tally.day.tokens, limits.daily_tokens),
        ),
        (
            "monthly_tokens",
            tokens(tally.month.tokens, limits.monthly_tokens),
        ),
    ]
}

#[derive(Default)]
struct Slot {
    day: (String, Spent),
    month: (String, Spent),
}

/// The budgets' tally in this process.
#[derive(Default)]
pub(crate) struct MemoryTally {
    scopes: Mutex<HashMap<Arc<str>, Slot>>,
}

impl fmt::Debug for MemoryTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTally").finish_non_exhaustive()
    }
}

impl MemoryTally {
    /// What `scope` has spent in `periods` (a period that has ended counts as nothing).
    pub(crate) fn get(&self, scope: &str, periods: &Periods) -> Tally {
        let map = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = map.get(scope) else {
            return Tally::default();
        };
        Tally {
            day: if s.day.0 == periods.day {
                s.day.1
            } else {
                Spent::default()
            },
            month: if s.month.0 == periods.month {
                s.month.1
            } else {
                Spent::default()
            },
        }
    }

    /// Adds to what `scope` has spent in `periods`; returns the new tally.
    pub(crate) fn add(
        &self,
        scope: &Arc<str>,
        periods: &Periods,
        cost: Money,
        tokens: u64,
    ) -> Tally {
        let mut map = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(scope.clone()).or_default();
        for (slot, id) in [(&mut s.day, &periods.day), (&mut s.month, &periods.month)] {
            // A call that started in an earlier period than the one kept adds to nothing kept.
            if slot.0 != *id {
                if slot.0 > *id {
                    continue;
                }
                *slot = (id.clone(), Spent::default());
            }
            slot.1.cost = slot.1.cost.saturating_add(cost);
            slot.1.tokens = slot.1.tokens.saturating_add(tokens);
        }
        Tally {
            day: if s.day.0 == periods.day {
                s.day.1
            } else {
                Spent::default()
            },
            month: if s.month.0 == periods.month {
                s.month.1
            } else {
                Spent::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_time_zone() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        // 2026-12-31 17:00 UTC is 2027-01-01 01:00 in Beijing.
        let p = Periods::at("2026-12-31T17:00:00Z".parse().unwrap(), &tz);
        assert_eq!(
            (p.day.as_str(), p.month.as_str()),
            ("2027-01-01", "2027-01")
        );
        assert_eq!(p.day_end.to_string(), "2027-01-01T16:00:00Z");
        assert_eq!(p.month_end.to_string(), "2027-01-31T16:00:00Z");
        let utc = TimeZone::UTC;
        let p = Periods::at("2026-12-31T17:00:00Z".parse().unwrap(), &utc);
        assert_eq!(
            (p.day.as_str(), p.month.as_str()),
            ("2026-12-31", "2026-12")
        );
        assert_eq!(p.month_end.to_string(), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn check_names_the_longest_limit_reached() {
        let now: Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let p = Periods::at(now, &TimeZone::UTC);
        let limits = BudgetLimits::new()
            .daily_tokens(100)
            .monthly_cost("1".parse().unwrap());
        let mut t = Tally::default();
        t.day.tokens = 99;
        assert!(check(&limits, &t, &p, now).is_ok());
        t.day.tokens = 100;
        let e = check(&limits, &t, &p, now).unwrap_err();
        assert_eq!(
            (e.period(), e.kind()),
            (BudgetPeriod::Day, BudgetKind::Tokens)
        );
        assert_eq!(e.retry_after(), Duration::from_secs(12 * 3600));
        t.month.cost = "1".parse().unwrap();
        let e = check(&limits, &t, &p, now).unwrap_err();
        assert_eq!(
            (e.period(), e.kind()),
            (BudgetPeriod::Month, BudgetKind::Cost)
        );
        assert_eq!(e.retry_after(), Duration::from_secs((25 * 24 + 12) * 3600));
    }

    #[test]
    fn memory_tally_starts_each_period_afresh() {
        let m = MemoryTally::default();
        let scope: Arc<str> = "t".into();
        let d1 = Periods::at("2026-12-06T12:00:00Z".parse().unwrap(), &TimeZone::UTC);
        let d2 = Periods::at("2026-12-07T12:00:00Z".parse().unwrap(), &TimeZone::UTC);
        let one = Money::from_picos(1);
        m.add(&scope, &d1, one, 10);
        let t = m.add(&scope, &d2, one, 5);
        assert_eq!((t.day.tokens, t.month.tokens), (5, 15));
        // A late settle of a call that started on the 6th keeps today's day intact.
        let t = m.add(&scope, &d1, one, 1);
        assert_eq!(t.month.tokens, 16);
        assert_eq!(m.get(&scope, &d2).day.tokens, 5);
        assert_eq!(m.get(&scope, &d1).day.tokens, 0);
    }
}
