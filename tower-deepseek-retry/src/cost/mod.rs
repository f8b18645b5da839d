//! Cost accounting and budgets: each call priced from its `usage`, counted in metrics, handed
//! to the audit record, and budgets per tenant (per day and per month, in money or tokens).
//!
//! [`CostLayer`] prices a call when its answer ends, from the answer's `usage` (the JSON
//! answer's, or a stream's last chunk with `stream_options.include_usage`), read from the
//! verdict the lowest classifying layer shares (core's
//! [`SharedOutcome`](tower_deepseek_core::classify::SharedOutcome)) when there is one, so that
//! the answer is parsed once in the stack:
//!
//! - **price**: `cache-hit input × its price + cache-miss input × its price + output × its
//!   price`, per million tokens, from a [`PriceTable`]. Cache hits are
//!   `prompt_cache_hit_tokens` (or OpenAI's `prompt_tokens_details.cached_tokens`); misses are
//!   `prompt_cache_miss_tokens`, or `prompt_tokens` minus the hits when the split is missing.
//!   The prices are those in force when the call **started** (a [`PriceWindow`], such as
//!   DeepSeek's peak hours in Beijing time, is judged in its own IANA time zone, from a time zone
//!   database built into the program, so that a machine without `/usr/share/zoneinfo` prices
//!   the same). Amounts are exact: integer picos ([`Money`](tower_deepseek_core::money::Money)),
//!   never floats.
//! - **the response**: a [`CallCost`](tower_deepseek_core::protocol::CallCost) slot in the
//!   response's extensions, filled when the body ends and before that end goes up, so that
//!   `AuditLayer` above writes the cost in its record; with [`CostLayerBuilder::cost_header`],
//!   a non-streaming answer also carries `x-ds-cost: <amount> <currency>` (`0.000798 USD`).
//!   For that the layer reads a JSON answer to its end (up to 8 MiB; a larger one goes on
//!   without the header) before it hands the head up, as the retry layer does: the caller of
//!   a non-streaming answer waits for the whole body anyway. A stream is never held back and
//!   never carries the header (its cost is known at its end only): read the extension or the
//!   audit record.
//! - **metrics** (labels `tenant` and `model`, never a key; `model` is the price-table entry
//!   that priced the call, or `unpriced`, so that callers cannot grow the label set with made-up
//!   model names; `tenant` is `none` without a
//!   [`TenantId`](tower_deepseek_core::meta::TenantId)):
//!   - `deepseek_cost_micros_total{tenant,model}`: the cost in **millionths** of the table's
//!     currency (a Prometheus counter holds integers: divide by 10⁶ for the currency). It is the
//!     exact running total rounded down: the picos below a micro-unit are carried to the next
//!     call, never lost;
//!   - `deepseek_cost_tokens_total{tenant,model,kind}`, `kind` = `cache_hit`, `cache_miss`,
//!     `output`;
//!   - `deepseek_cost_unpriced_total{tenant}`: answers with usage whose model has no price;
//!   - `deepseek_cost_budget_rejected_total{tenant,period,kind}`: calls refused by a budget;
//!   - `deepseek_cost_budget_used_ratio{tenant,limit}`: the part of each limit used (a gauge,
//!     for a "budget 80 % spent" alert; `tenant` is `*` for a global budget).
//!
//! # Budgets
//!
//! [`CostBudgets`]: per tenant (or one for all), per day and per calendar month (where a named
//! time zone begins them), in money (the table's currency) and in tokens. The check is made
//! **before a call starts**: a call whose budget is already spent fails at once with
//! [`BudgetExceeded`] (not sent; a server answers 429, code `budget_exceeded`, `Retry-After`
//! until the period ends: the facade's `error_response` does). A call that started is never
//! cut: its cost is added when it ends, so a budget is overrun by at most the calls in flight
//! when it ran out. An answer without usage (a dropped stream, an error) adds nothing.
//!
//! # Order
//!
//! Below the cache (a cache hit costs nothing) and above the retry layer (each attempt's usage
//! is billed, but only the one answer the caller gets carries a usage it can see: retried
//! attempts failed before their answer was complete). In the recommended stack: right below
//! the cache, above the rate limiter. Below `AuditLayer`, which writes the cost in its record.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_deepseek_core::meta::TenantId;
//! use tower_deepseek_core::protocol::CallCost;
//! use tower_deepseek_retry::cost::{BudgetLimits, CostBudgets, CostLayer, ModelPrice, PriceTable};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let prices = PriceTable::new("USD").model(
//!     "deepseek-chat",
//!     ModelPrice::new("0.028".parse()?, "0.28".parse()?, "0.42".parse()?),
//! );
//! let layer = CostLayer::builder(prices)
//!     .budgets(CostBudgets::per_tenant(BudgetLimits::new().daily_cost("5".parse()?)))
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     let body = r#"{"model":"deepseek-chat","choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}],
//!         "usage":{"prompt_tokens":3000,"completion_tokens":500,"total_tokens":3500,
//!                  "prompt_cache_hit_tokens":1000,"prompt_cache_miss_tokens":2000}}"#;
//!     Ok::<_, tower::BoxError>(
//!         http::Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from_static(body.as_bytes())))?,
//!     )
//! });
//! let mut req = http::Request::post("https://api.deepseek.com/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"deepseek-chat","messages":[]}"#)))?;
//! req.extensions_mut().insert(TenantId::new("team-a"));
//! let resp = svc.ready().await?.call(req).await?;
//! let slot = resp.extensions().get::<CallCost>().cloned().unwrap();
//! resp.into_body().collect().await?; // the cost is known once the answer has ended
//! let cost = slot.get().unwrap();
//! // 1000 × 0.028 + 2000 × 0.28 + 500 × 0.42, per million tokens
//! assert_eq!(cost.amount.to_string(), "0.000798");
//! assert_eq!(&*cost.currency, "USD");
//! # Ok(())
//! # }
//! ```
//!
//! # Prices
//!
//! Prices are configuration: providers change them, and time-of-day discounts have come and
//! gone. `docs/prices.example.toml` in the repository holds DeepSeek's published prices at the
//! time of writing, with the date and the page they come from; copy and check them.

mod body;
mod budget;
mod config;
mod error;
#[cfg(feature = "redis")]
mod fleet;
mod future;
mod layer;
mod price;
mod service;
mod state;

pub use body::ResponseBody;
pub use budget::{BudgetLimits, BudgetScope, CostBudgets};
pub use config::CostConfig;
pub use error::{BudgetExceeded, BudgetKind, BudgetPeriod};
pub use future::ResponseFuture;
pub use layer::{CostLayer, CostLayerBuilder};
pub use price::{HourRange, ModelPrice, PriceTable, PriceWindow, Weekday};
pub use service::Cost;
