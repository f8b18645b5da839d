//! [`ContentFilterConfig`] and [`FilterAction`].

/// What the filter does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FilterAction {
    /// Replace each match with `***` (default).
    #[default]
    Mask,
    /// Withhold the answer (JSON) or end the stream with an error event.
    Block,
}

/// A serde configuration for [`ContentFilterLayer`](super::ContentFilterLayer).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ContentFilterConfig {
    /// Literal keywords.
    pub keywords: Vec<String>,
    /// Regexes.
    pub regexes: Vec<String>,
    /// Mask or block.
    pub action: FilterAction,
    /// Case-insensitive matching (default true).
    pub case_insensitive: Option<bool>,
    /// Longest match a regex can make, in characters (default 64).
    pub max_match_len: Option<usize>,
    /// Limit for JSON answers, in bytes (default 8 MiB).
    pub body_limit: Option<usize>,
    /// Status of a blocked JSON answer (default 400).
    pub block_status: Option<u16>,
}
