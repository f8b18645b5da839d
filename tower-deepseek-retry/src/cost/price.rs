//! The price table: serde configuration ([`PriceTable`], [`ModelPrice`], [`PriceWindow`]) and
//! its validated form, which prices a call's `usage` at the call's start.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use tower_deepseek_core::chat::Usage;
use tower_deepseek_core::config::ConfigError;
use tower_deepseek_core::protocol::{Charge, Money};

/// A day of the week, as `mon` … `sun` in serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday to Friday.
    pub const WORKDAYS: [Weekday; 5] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ];

    fn index(self) -> u8 {
        self as u8
    }

    fn of(w: jiff::civil::Weekday) -> u8 {
        w.to_monday_zero_offset() as u8
    }
}

/// A range of hours of the day, `"09:00-12:00"` in serde: from the first time (included) to the
/// second (excluded; `24:00` is the end of the day). A range whose end is not after its start
/// (`"22:00-06:00"`) runs over midnight and belongs to the day it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourRange {
    start: u32, // seconds into the day
    end: u32,   // seconds into the day, up to 86 400
}

impl HourRange {
    /// From `start` to `end`, each `(hour, minute)`; `(24, 0)` is the end of the day.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an hour over 24, a minute over 59, or a start of 24:00.
    pub fn new(start: (u32, u32), end: (u32, u32)) -> Result<Self, ConfigError> {
        let secs = |(h, m): (u32, u32)| -> Result<u32, ConfigError> {
            if h > 24 || m > 59 || (h == 24 && m != 0) {
                return Err(ConfigError::new(
                    "hours",
                    "must be times from 00:00 to 24:00",
                ));
            }
            Ok(h * 3600 + m * 60)
        };
        let (start, end) = (secs(start)?, secs(end)?);
        if start == 86_400 {
            return Err(ConfigError::new("hours", "cannot start at 24:00"));
        }
        Ok(HourRange { start, end })
    }

    fn wraps(&self) -> bool {
        self.end <= self.start
    }
}

impl FromStr for HourRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::new("hours", "must be ranges as \"09:00-12:00\"");
        let time = |t: &str| -> Result<(u32, u32), ConfigError> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            if h.len() != 2 || m.len() != 2 {
                return Err(bad());
            }
            Ok((h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?))
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        HourRange::new(time(a)?, time(b)?)
    }
}

impl<'de> Deserialize<'de> for HourRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Prices of one model, per million tokens, with optional time windows of their own prices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelPrice {
    /// Currency of these prices (default: the table's `currency`).
    #[serde(default)]
    pub currency: Option<String>,
    /// Per million input tokens served from DeepSeek's cache.
    pub cache_hit: Money,
    /// Per million input tokens not served from the cache.
    pub cache_miss: Money,
    /// Per million output tokens (reasoning included).
    pub output: Money,
    /// Time windows with prices of their own; the first that contains the call's start wins.
    #[serde(default)]
    pub windows: Vec<PriceWindow>,
}

impl ModelPrice {
    /// Prices per million tokens: cache-hit input, cache-miss input, output.
    pub fn new(cache_hit: Money, cache_miss: Money, output: Money) -> Self {
        ModelPrice {
            currency: None,
            cache_hit,
            cache_miss,
            output,
            windows: Vec::new(),
        }
    }

    /// The currency of these prices (default: the table's).
    #[must_use]
    pub fn currency(mut self, code: impl Into<String>) -> Self {
        self.currency = Some(code.into());
        self
    }

    /// Adds a time window with prices of its own (checked after the ones added before).
    #[must_use]
    pub fn window(mut self, w: PriceWindow) -> Self {
        self.windows.push(w);
        self
    }
}

/// A time window with prices of its own: days of the week and hours of the day in a named
/// (IANA) time zone, as DeepSeek's peak and off-peak hours in Beijing time
/// (`Asia/Shanghai`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PriceWindow {
    /// A name for the window (`peak`, `off_peak`): written in each call's cost.
    pub name: String,
    /// The IANA time zone the days and hours are in (`Asia/Shanghai`, `UTC`).
    pub time_zone: String,
    /// Days of the week the window applies on (default every day).
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Hours of those days, as `"09:00-12:00"` (default the whole day).
    #[serde(default)]
    pub hours: Vec<HourRange>,
    /// Per million cache-hit input tokens in this window.
    pub cache_hit: Money,
    /// Per million cache-miss input tokens in this window.
    pub cache_miss: Money,
    /// Per million output tokens in this window.
    pub output: Money,
}

impl PriceWindow {
    /// A window named `name` in `time_zone` with these prices per million tokens, every day,
    /// all day until [`days`](Self::days) and [`hours`](Self::hours) narrow it.
    pub fn new(
        name: impl Into<String>,
        time_zone: impl Into<String>,
        cache_hit: Money,
        cache_miss: Money,
        output: Money,
    ) -> Self {
        PriceWindow {
            name: name.into(),
            time_zone: time_zone.into(),
            days: Vec::new(),
            hours: Vec::new(),
            cache_hit,
            cache_miss,
            output,
        }
    }

    /// The days of the week it applies on.
    #[must_use]
    pub fn days(mut self, days: impl IntoIterator<Item = Weekday>) -> Self {
        self.days = days.into_iter().collect();
        self
    }

    /// Adds a range of hours.
    #[must_use]
    pub fn hours(mut self, range: HourRange) -> Self {
        self.hours.push(range);
        self
    }
}

/// The price table (serde): per model, what a million tokens of each kind cost.
///
/// Prices are configuration, not truth built into the code: providers change them. See the
/// [module docs](super) for an example with DeepSeek's published prices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PriceTable {
    /// The currency of models that name none (default `USD`).
    pub currency: String,
    /// Prices per model name, as the answer's `model` reports it.
    pub models: BTreeMap<String, ModelPrice>,
    /// The entry that prices a model not in `models` (default none: such a call is not
    /// priced, and is counted in `deepseek_cost_unpriced_total`).
    pub fallback: Option<String>,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            currency: "USD".into(),
            models: BTreeMap::new(),
            fallback: None,
        }
    }
}

impl PriceTable {
    /// An empty table whose models are priced in `currency` unless they say otherwise.
    pub fn new(currency: impl Into<String>) -> Self {
        PriceTable {
            currency: currency.into(),
            ..PriceTable::default()
        }
    }

    /// Adds (or replaces) the prices of `model`.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.models.insert(model.into(), price);
        self
    }

    /// Prices models that are not in the table as `model`.
    #[must_use]
    pub fn fallback(mut self, model: impl Into<String>) -> Self {
        self.fallback = Some(model.into());
        self
    }
}

/// Picos per token of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    hit: u128,
    miss: u128,
    out: u128,
}

impl Rate {
    fn new(field: &str, hit: Money, miss: Money, out: Money) -> Result<Self, ConfigError> {
        let per_token = |name: &str, m: Money| {
            if m.picos() % 1_000_000 != 0 {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    "must have at most 6 decimal places (a price per million tokens)",
                ));
            }
            Ok(m.picos() / 1_000_000)
        };
        Ok(Rate {
            hit: per_token("cache_hit", hit)?,
            miss: per_token("cache_miss", miss)?,
            out: per_token("output", out)?,
        })
    }
}

struct Window {
    name: Arc<str>,
    tz: TimeZone,
    days: u8, // bit per weekday, Monday = bit 0
    hours: Vec<HourRange>,
    rate: Rate,
}

impl Window {
    fn contains(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let day = Weekday::of(local.weekday());
        let t = local.time();
        let secs = t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.hours.is_empty() {
            return on(day);
        }
        let yesterday = (day + 6) % 7;
        self.hours.iter().any(|r| {
            if r.wraps() {
                (on(day) && secs >= r.start) || (on(yesterday) && secs < r.end)
            } else {
                on(day) && secs >= r.start && secs < r.end
            }
        })
    }
}

struct Entry {
    name: Arc<str>,
    currency: Arc<str>,
    base: Rate,
    windows: Vec<Window>,
}

/// The validated price table.
pub(crate) struct Prices {
    models: BTreeMap<String, Entry>,
    fallback: Option<String>,
}

impl fmt::Debug for Prices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prices")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub(crate) fn time_zone(field: &str, name: &str) -> Result<TimeZone, ConfigError> {
    TimeZone::get(name).map_err(|_| {
        ConfigError::new(
            field.to_owned(),
            "must be an IANA time zone name, as Asia/Shanghai or UTC",
        )
    })
}

fn currency(field: String, code: &str) -> Result<Arc<str>, ConfigError> {
    if code.is_empty() || code.len() > 8 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ConfigError::new(
            field,
            "must be a currency code of 1 to 8 letters or digits, as USD or CNY",
        ));
    }
    Ok(code.into())
}

impl Prices {
    pub(crate) fn new(table: &PriceTable) -> Result<Self, ConfigError> {
        let mut models = BTreeMap::new();
        for (name, p) in &table.models {
            let field = format!("prices.models.{name}");
            if name.is_empty() || name.len() > 128 {
                return Err(ConfigError::new(
                    field,
                    "must be a model name of 1 to 128 bytes",
                ));
            }
            let currency = currency(
                format!("{field}.currency"),
                p.currency.as_deref().unwrap_or(&table.currency),
            )?;
            let base = Rate::new(&field, p.cache_hit, p.cache_miss, p.output)?;
            let mut windows = Vec::new();
            for (i, w) in p.windows.iter().enumerate() {
                let wf = format!("{field}.windows[{i}]");
                if w.name.is_empty() || w.name.len() > 64 {
                    return Err(ConfigError::new(
                        format!("{wf}.name"),
                        "must be a name of 1 to 64 bytes",
                    ));
                }
                let days = if w.days.is_empty() {
                    0x7f
                } else {
                    w.days.iter().fold(0u8, |acc, d| acc | (1 << d.index()))
                };
                windows.push(Window {
                    name: w.name.as_str().into(),
                    tz: time_zone(&format!("{wf}.time_zone"), &w.time_zone)?,
                    days,
                    hours: w.hours.clone(),
                    rate: Rate::new(&wf, w.cache_hit, w.cache_miss, w.output)?,
                });
            }
            models.insert(
                name.clone(),
                Entry {
                    name: name.as_str().into(),
                    currency,
                    base,
                    windows,
                },
            );
        }
        if let Some(f) = &table.fallback {
            if !models.contains_key(f) {
                return Err(ConfigError::new(
                    "prices.fallback",
                    "must name a model of the table",
                ));
            }
        }
        Ok(Prices {
            models,
            fallback: table.fallback.clone(),
        })
    }

    /// The currencies of the table's models.
    pub(crate) fn currencies(&self) -> impl Iterator<Item = &str> {
        self.models.values().map(|e| &*e.currency)
    }

    /// The cost of `usage` for `model`, at the prices in force at `at`; `None` when the model
    /// has no price.
    pub(crate) fn price(&self, model: &str, usage: &Usage, at: Timestamp) -> Option<Charge> {
        let entry = self
            .models
            .get(model)
            .or_else(|| self.fallback.as_ref().and_then(|f| self.models.get(f)))?;
        let window = entry.windows.iter().find(|w| w.contains(at));
        let rate = window.map_or(entry.base, |w| w.rate);
        let hit = usage.cache_hit_tokens();
        let miss = usage.cache_miss_tokens();
        let out = usage.completion_tokens;
        let picos =
            u128::from(hit) * rate.hit + u128::from(miss) * rate.miss + u128::from(out) * rate.out;
        let mut cost = Charge::new(
            Money::from_picos(picos),
            entry.currency.clone(),
            entry.name.clone(),
        )
        .with_tokens(hit, miss, out);
        if let Some(w) = window {
            cost = cost.with_window(w.name.clone());
        }
        Some(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn usage(hit: Option<u64>, miss: Option<u64>, prompt: u64, out: u64) -> Usage {
        serde_json::from_value(serde_json::json!({
            "prompt_tokens": prompt,
            "completion_tokens": out,
            "total_tokens": prompt + out,
            "prompt_cache_hit_tokens": hit,
            "prompt_cache_miss_tokens": miss,
        }))
        .unwrap()
    }

    fn peak_table() -> Prices {
        let peak = PriceWindow::new("peak", "Asia/Shanghai", m("0.056"), m("0.56"), m("0.84"))
            .days(Weekday::WORKDAYS)
            .hours("09:00-12:00".parse().unwrap())
            .hours("14:00-18:00".parse().unwrap());
        let night = PriceWindow::new("night", "UTC", m("0.01"), m("0.1"), m("0.2"))
            .days([Weekday::Sun])
            .hours("22:00-00:30".parse().unwrap());
        Prices::new(
            &PriceTable::new("USD").model(
                "deepseek-chat",
                ModelPrice::new(m("0.028"), m("0.28"), m("0.42"))
                    .window(peak)
                    .window(night),
            ),
        )
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn prices_each_kind_exactly() {
        let p = peak_table();
        // Sunday 2026-12-06 12:00 UTC: no window.
        let c = p
            .price(
                "deepseek-chat",
                &usage(Some(1000), Some(2000), 3000, 500),
                at("2026-12-06T12:00:00Z"),
            )
            .unwrap();
        // 1000 × 0.028 + 2000 × 0.28 + 500 × 0.42, per million
        assert_eq!(c.amount.to_string(), "0.000798");
        assert_eq!((c.cache_hit_tokens, c.cache_miss_tokens), (1000, 2000));
        assert_eq!(c.window, None);
        assert_eq!(&*c.currency, "USD");
        assert!(
            p.price(
                "other",
                &usage(None, None, 1, 1),
                at("2026-12-06T12:00:00Z")
            )
            .is_none()
        );
    }

    #[test]
    fn split_missing_falls_back_to_prompt_tokens() {
        let p = peak_table();
        let c = p
            .price(
                "deepseek-chat",
                &usage(None, None, 1_000_000, 0),
                at("2026-12-06T12:00:00Z"),
            )
            .unwrap();
        assert_eq!(c.cache_miss_tokens, 1_000_000);
        assert_eq!(c.amount, m("0.28"));
    }

    #[test]
    fn windows_follow_the_named_time_zone() {
        let p = peak_table();
        let u = usage(Some(0), Some(1_000_000), 1_000_000, 0);
        let price = |t| p.price("deepseek-chat", &u, at(t)).unwrap();
        // Monday 2026-12-07 09:00 in Beijing is 01:00 UTC.
        assert_eq!(price("2026-12-07T00:59:59Z").window, None);
        let c = price("2026-12-07T01:00:00Z");
        assert_eq!(c.window.as_deref(), Some("peak"));
        assert_eq!(c.amount, m("0.56"));
        // 12:00-14:00 Beijing is not peak, 14:00 is again; 18:00 is the end.
        assert_eq!(price("2026-12-07T04:00:00Z").window, None);
        assert_eq!(
            price("2026-12-07T06:00:00Z").window.as_deref(),
            Some("peak")
        );
        assert_eq!(price("2026-12-07T10:00:00Z").window, None);
        // Saturday 10:00 Beijing: no peak on weekends.
        assert_eq!(price("2026-12-12T02:00:00Z").window, None);
        // Over midnight: Sunday 22:00 to Monday 00:30 UTC belongs to Sunday.
        assert_eq!(price("2026-12-06T21:59:59Z").window, None);
        assert_eq!(
            price("2026-12-06T22:00:00Z").window.as_deref(),
            Some("night")
        );
        assert_eq!(
            price("2026-12-07T00:29:59Z").window.as_deref(),
            Some("night")
        );
        assert_eq!(price("2026-12-07T00:30:00Z").window, None);
        // Saturday 23:00 UTC: Saturday is not listed.
        assert_eq!(price("2026-12-05T23:00:00Z").window, None);
    }

    #[test]
    fn refuses_bad_tables() {
        let bad = |t: PriceTable| Prices::new(&t).unwrap_err().field().to_owned();
        let base = || ModelPrice::new(m("0.028"), m("0.28"), m("0.42"));
        assert_eq!(
            bad(PriceTable::new("USD").model("x", ModelPrice::new(m("0.0000001"), m("1"), m("1")))),
            "prices.models.x.cache_hit"
        );
        assert_eq!(
            bad(PriceTable::new("USD").model(
                "x",
                base().window(PriceWindow::new(
                    "w",
                    "Mars/Olympus",
                    m("1"),
                    m("1"),
                    m("1")
                ))
            )),
            "prices.models.x.windows[0].time_zone"
        );
        assert_eq!(
            bad(PriceTable::new("US D").model("x", base())),
            "prices.models.x.currency"
        );
        assert_eq!(
            bad(PriceTable::new("USD").model("x", base()).fallback("y")),
            "prices.fallback"
        );
        assert!("25:00-26:00".parse::<HourRange>().is_err());
        assert!("9:00-12:00".parse::<HourRange>().is_err());
        assert!("24:00-01:00".parse::<HourRange>().is_err());
        assert!("18:00-24:00".parse::<HourRange>().is_ok());
    }

    #[test]
    fn serde_reads_a_table() {
        let t: PriceTable = serde_json::from_value(serde_json::json!({
            "currency": "CNY",
            "models": {"deepseek-chat": {
                "cache_hit": 0.2, "cache_miss": "2", "output": 3,
                "windows": [{"name": "peak", "time_zone": "Asia/Shanghai",
                             "days": ["mon", "fri"], "hours": ["09:00-12:00"],
                             "cache_hit": 0.4, "cache_miss": 4, "output": 6}]
            }},
            "fallback": "deepseek-chat"
        }))
        .unwrap();
        let p = Prices::new(&t).unwrap();
        let c = p
            .price(
                "deepseek-v9",
                &usage(Some(1_000_000), Some(0), 1_000_000, 0),
                at("2026-12-06T12:00:00Z"),
            )
            .unwrap();
        assert_eq!(
            (c.amount, &*c.currency, &*c.model),
            (m("0.2"), "CNY", "deepseek-chat")
        );
    }
}
