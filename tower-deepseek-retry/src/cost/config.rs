//! The cost layer's serde configuration.

use serde::Deserialize;

use super::budget::CostBudgets;
use super::price::PriceTable;

/// The cost layer's configuration (serde): the price table, optional budgets, the header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CostConfig {
    /// What each model's tokens cost.
    pub prices: PriceTable,
    /// Budgets per tenant or for all (default none: nothing is refused).
    pub budgets: Option<CostBudgets>,
    /// Whether a non-streaming answer carries its cost in an `x-ds-cost` response header
    /// (default off; see the [module docs](super) for what it costs).
    pub cost_header: bool,
}
