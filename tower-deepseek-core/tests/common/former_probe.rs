//! The classifier's former serde probe, verbatim in behaviour: the reference of the property
//! test `classify_props` and the baseline of the `classify` bench.
#![allow(dead_code, unreachable_pub)]

use serde::Deserialize;
use serde::de::IgnoredAny;
use tower_deepseek_core::chat::FinishReason;

#[derive(Deserialize)]
pub struct RefProbe {
    #[serde(default)]
    pub error: Option<IgnoredAny>,
    #[serde(default)]
    pub choices: Option<Vec<RefChoice>>,
    #[serde(default)]
    pub usage: Option<RefUsage>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

#[derive(Deserialize)]
pub struct RefChoice {
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

#[derive(Deserialize)]
pub struct RefUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_cache_miss_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<RefDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<RefDetails>,
}

#[derive(Deserialize)]
pub struct RefDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}
