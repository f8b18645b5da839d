//! The timeout layer's serde configuration.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::config::option_duration_ms;

/// The timeouts, readable with `serde` (milliseconds; absent = the default, `null` = none).
///
/// The defaults bound every wait of an attempt, with room for how an LLM API behaves
/// (DeepSeek sends its head at once and then `: keep-alive` comments or blank lines while a
/// request is queued, and closes a request whose inference has not started after 10 minutes):
///
/// | field | default | why |
/// |---|---|---|
/// | `headers_ms` | 60 000 (1 min) | DeepSeek answers its head at once, before inference; a head that takes a minute is a dead or stuck peer |
/// | `first_token_ms` | 120 000 (2 min) | queueing under load (keep-alives do not count), and a reasoning model's first reasoning token |
/// | `idle_ms` | 60 000 (1 min) | once tokens flow, they come many per second; a minute of silence is a stalled stream |
/// | `total_ms` | 1 200 000 (20 min) | the longest answer: a reasoning model's 64 K output tokens at a slow 60 tokens/s |
///
/// The connect timeout belongs to the connector (the facade's `ClientConfig`, default 10 s),
/// and the bound of a whole call with its retries to the retry layer's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutConfig {
    /// Until the response head (serde `headers_ms`).
    #[serde(rename = "headers_ms", with = "option_duration_ms")]
    pub headers: Option<Duration>,
    /// Until the first SSE event / first non-whitespace JSON byte, from the call (serde
    /// `first_token_ms`).
    #[serde(rename = "first_token_ms", with = "option_duration_ms")]
    pub first_token: Option<Duration>,
    /// Longest gap between chunks once content flows (serde `idle_ms`).
    #[serde(rename = "idle_ms", with = "option_duration_ms")]
    pub idle: Option<Duration>,
    /// Until the end of the body, from the call (serde `total_ms`).
    #[serde(rename = "total_ms", with = "option_duration_ms")]
    pub total: Option<Duration>,
}

impl TimeoutConfig {
    /// The default response-headers timeout: 1 minute.
    pub const DEFAULT_HEADERS: Duration = Duration::from_secs(60);
    /// The default first-token timeout: 2 minutes.
    pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_secs(120);
    /// The default idle gap: 1 minute.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
    /// The default total per attempt: 20 minutes.
    pub const DEFAULT_TOTAL: Duration = Duration::from_secs(20 * 60);

    /// No timeout at all (every wait unbounded): for tests, or a caller that bounds its calls
    /// by other means.
    pub fn none() -> Self {
        Self {
            headers: None,
            first_token: None,
            idle: None,
            total: None,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            headers: Some(Self::DEFAULT_HEADERS),
            first_token: Some(Self::DEFAULT_FIRST_TOKEN),
            idle: Some(Self::DEFAULT_IDLE),
            total: Some(Self::DEFAULT_TOTAL),
        }
    }
}
