//! The layer's shared state: the validated price table, the budgets and their tally, the
//! clock, and what one call carries from its start to the end of its answer.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::{Request, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tower_deepseek_core::chat::Usage;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, EndJudge};
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_core::protocol::{CallCost, Charge, ModelHint, Money};

use super::body::{Observed, PriceSlot, Pricing};
use super::budget::{self, CostBudgets, MemoryTally, Periods, Tally};
use super::error::BudgetExceeded;
use super::price::Prices;
use tower_deepseek_core::body::ObservedBody;

/// The wall clock the layer prices and budgets by.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// (tenant, model) labels.
pub(crate) type LabelPair = (Arc<str>, Arc<str>);

/// The label of calls without a tenant.
pub(crate) const NO_TENANT: &str = "none";

/// The label of calls whose model has no price.
pub(crate) const UNPRICED: &str = "unpriced";

pub(crate) enum Store {
    /// This process's tally.
    Memory(MemoryTally),
    /// The fleet's tally in Redis, and this process's own for when Redis is unavailable.
    #[cfg(feature = "redis")]
    Fleet {
        redis: super::fleet::RedisTally,
        local: MemoryTally,
    },
}

impl Store {
    fn local(&self) -> &MemoryTally {
        match self {
            Store::Memory(m) => m,
            #[cfg(feature = "redis")]
            Store::Fleet { local, .. } => local,
        }
    }
}

pub(crate) struct Budgets {
    pub(crate) cfg: CostBudgets,
    pub(crate) tz: TimeZone,
    pub(crate) store: Store,
}

pub(crate) struct Shared {
    pub(crate) prices: Prices,
    pub(crate) budgets: Option<Budgets>,
    pub(crate) clock: Clock,
    pub(crate) header: bool,
    /// Picos below a whole micro-unit not yet added to the cost counter, per (tenant, model):
    /// the counter is the exact total, rounded down to micro-units.
    pub(crate) carry: Mutex<HashMap<LabelPair, u128>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("prices", &self.prices)
            .field("budgets", &self.budgets.as_ref().map(|b| &b.cfg))
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// One call, from its start to the end of its answer.
pub(crate) struct Call {
    pub(crate) shared: Arc<Shared>,
    /// When the call started: its prices and its budget periods are those of this moment.
    pub(crate) start: Timestamp,
    pub(crate) tenant: Arc<str>,
    pub(crate) hint: Option<ModelHint>,
}

impl Shared {
    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::try_from((self.clock)()).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// Notes what the call needs at its end (its start, tenant, model hint).
    pub(crate) fn start<B>(self: &Arc<Self>, req: &Request<B>) -> Call {
        Call {
            shared: self.clone(),
            start: self.now(),
            tenant: req
                .extensions()
                .get::<TenantId>()
                .map_or_else(|| NO_TENANT.into(), |t| t.as_str().into()),
            hint: req.extensions().get::<ModelHint>().cloned(),
        }
    }

    /// The key of a call's budget, when it has one with limits.
    fn scope<'a>(&'a self, call: &'a Call) -> Option<(&'a Budgets, &'a str)> {
        let b = self.budgets.as_ref()?;
        let key = match b.cfg.scope {
            budget::BudgetScope::Global => "*",
            _ => &call.tenant,
        };
        let limits = b.cfg.limits(key);
        (*limits != budget::BudgetLimits::default()).then_some((b, key))
    }

    /// Whether the check before start needs a round trip to Redis.
    #[cfg(feature = "redis")]
    pub(crate) fn checks_fleet(&self, call: &Call) -> bool {
        self.scope(call)
            .is_some_and(|(b, _)| matches!(b.store, Store::Fleet { .. }))
    }

    /// Check before start, on this process's tally: refuses a call whose budget is spent.
    pub(crate) fn check(&self, call: &Call) -> Result<(), BudgetExceeded> {
        let Some((b, key)) = self.scope(call) else {
            return Ok(());
        };
        let periods = Periods::at(call.start, &b.tz);
        let tally = b.store.local().get(key, &periods);
        self.judge(call, b.cfg.limits(key), &tally, &periods)
    }

    /// Check before start, on the fleet's tally; on this process's tally against its share of
    /// each limit while Redis is unavailable.
    #[cfg(feature = "redis")]
    pub(crate) async fn check_fleet(&self, call: &Call) -> Result<(), BudgetExceeded> {
        let Some((b, key)) = self.scope(call) else {
            return Ok(());
        };
        let Store::Fleet { redis, local } = &b.store else {
            return self.check(call);
        };
        let periods = Periods::at(call.start, &b.tz);
        match redis.get(key, &periods).await {
            Ok(tally) => self.judge(call, b.cfg.limits(key), &tally, &periods),
            Err(_) => {
                redis.fleet.count_fallback("budget");
                let share = |n: u64| redis.fleet.local_share(n);
                let l = b.cfg.limits(key);
                let money = |m: Option<Money>| {
                    m.map(|m| {
                        let n = u128::from(redis.fleet.expected_instances().max(1));
                        Money::from_picos((m.picos() / n).max(1))
                    })
                };
                let mut shares = *l;
                shares.daily_cost = money(l.daily_cost);
                shares.monthly_cost = money(l.monthly_cost);
                shares.daily_tokens = l.daily_tokens.map(share);
                shares.monthly_tokens = l.monthly_tokens.map(share);
                let tally = local.get(key, &periods);
                self.judge(call, &shares, &tally, &periods)
            }
        }
    }

    fn judge(
        &self,
        call: &Call,
        limits: &budget::BudgetLimits,
        tally: &Tally,
        periods: &Periods,
    ) -> Result<(), BudgetExceeded> {
        let r = budget::check(limits, tally, periods, call.start);
        if let Err(e) = &r {
            metrics::counter!(
                "deepseek_cost_budget_rejected_total",
                "tenant" => call.tenant.to_string(),
                "period" => e.period().as_str(),
                "kind" => e.kind().as_str(),
            )
            .increment(1);
            tracing::info!(
                target: "tower_deepseek_retry",
                period = e.period().as_str(),
                kind = e.kind().as_str(),
                retry_after_s = e.retry_after().as_secs(),
                "budget spent; call refused"
            );
        }
        r
    }

    /// Wraps the answer: its end prices the call. With the cost header on, the slot of a
    /// non-streaming answer comes back too: the answer is then read ahead to price it.
    pub(crate) fn finish<B>(
        &self,
        call: Call,
        mut resp: Response<B>,
    ) -> (Response<Observed<B>>, Option<CallCost>) {
        let mut ahead = None;
        let observer = match Classifier::new().classify_head(resp.status(), resp.headers()) {
            ClassifiedResponse::RequiresEos(eos) => {
                let slot = CallCost::new();
                let judge = EndJudge::from_extensions(eos, resp.extensions());
                resp.extensions_mut().insert(slot.clone());
                let stream = resp
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
                if self.header && !stream {
                    ahead = Some(slot.clone());
                }
                Some(Box::new(Pricing { call, judge, slot }))
            }
            // An error or an answer without a body to price: nothing was billed.
            ClassifiedResponse::Ready(_) => None,
        };
        (
            resp.map(|b| ObservedBody::new(b, PriceSlot(observer))),
            ahead,
        )
    }
}

impl Call {
    /// Prices the answer's `usage`, counts it in the metrics and the budget; the cost, when the
    /// model has a price.
    pub(crate) fn settle(&self, usage: &Usage, model: Option<&str>) -> Option<Charge> {
        let shared = &*self.shared;
        let model = model.or(self.hint.as_ref().map(ModelHint::as_str));
        let cost = model.and_then(|m| shared.prices.price(m, usage, self.start));
        let label: Arc<str> = cost
            .as_ref()
            .map_or_else(|| UNPRICED.into(), |c| c.model.clone());
        let (hit, miss, out) = (
            usage.cache_hit_tokens(),
            usage.cache_miss_tokens(),
            usage.completion_tokens,
        );
        for (kind, n) in [("cache_hit", hit), ("cache_miss", miss), ("output", out)] {
            metrics::counter!(
                "deepseek_cost_tokens_total",
                "tenant" => self.tenant.to_string(),
                "model" => label.to_string(),
                "kind" => kind,
            )
            .increment(n);
        }
        match &cost {
            Some(c) => self.count_money(&label, c.amount),
            None => {
                metrics::counter!("deepseek_cost_unpriced_total", "tenant" => self.tenant.to_string())
                    .increment(1);
                tracing::warn!(
                    target: "tower_deepseek_retry",
                    "an answer's model has no price in the table; its cost is not counted"
                );
            }
        }
        if let Some((b, key)) = shared.scope(self) {
            let tokens = hit.saturating_add(miss).saturating_add(out);
            let amount = cost.as_ref().map_or(Money::ZERO, |c| c.amount);
            let periods = Periods::at(self.start, &b.tz);
            let tally = b.store.local().add(&key.into(), &periods, amount, tokens);
            match &b.store {
                Store::Memory(_) => report(&b.cfg, key, &tally),
                #[cfg(feature = "redis")]
                Store::Fleet { .. } => {
                    // Added in the background: the end of the body is not delayed by Redis.
                    let shared = self.shared.clone();
                    let key = key.to_owned();
                    let start = self.start;
                    crate::fleet::spawn_detached(async move {
                        let Some(b) = &shared.budgets else { return };
                        let Store::Fleet { redis, .. } = &b.store else {
                            return;
                        };
                        match redis.add(&key, &periods, start, amount, tokens).await {
                            Ok(tally) => report(&b.cfg, &key, &tally),
                            Err(_) => redis.fleet.count_fallback("budget_settle"),
                        }
                    });
                }
            }
        }
        cost
    }

    /// Adds `amount` to the cost counter: whole micro-units, the rest carried to the next call.
    fn count_money(&self, model: &Arc<str>, amount: Money) {
        let micros = {
            let mut carry = self.shared.carry.lock().unwrap_or_else(|p| p.into_inner());
            let rest = carry
                .entry((self.tenant.clone(), model.clone()))
                .or_default();
            let total = *rest + amount.picos();
            *rest = total % 1_000_000;
            total / 1_000_000
        };
        if micros > 0 {
            metrics::counter!(
                "deepseek_cost_micros_total",
                "tenant" => self.tenant.to_string(),
                "model" => model.to_string(),
            )
            .increment(u64::try_from(micros).unwrap_or(u64::MAX));
        }
    }
}

/// Sets the budget-use gauges of a scope.
fn report(cfg: &CostBudgets, key: &str, tally: &Tally) {
    for (limit, ratio) in budget::ratios(cfg.limits(key), tally) {
        if let Some(r) = ratio {
            metrics::gauge!(
                "deepseek_cost_budget_used_ratio",
                "tenant" => key.to_string(),
                "limit" => limit,
            )
            .set(r);
        }
    }
}
