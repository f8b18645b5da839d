//! Breaker configuration: Resilience4j's settings, with Resilience4j's and the guide's defaults.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tower_deepseek_core::config::ConfigError;

/// Which kind of sliding window the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls (a ring, O(1) per call). Resilience4j's default.
    CountBased,
    /// The calls of the last `sliding_window_size` seconds (one bucket per second).
    TimeBased,
}

/// The settings of one circuit breaker, in Resilience4j's terms.
///
/// Build it with [`CircuitBreakerLayer::builder`](crate::CircuitBreakerLayer::builder) or read it
/// with serde (every field is optional and defaults as below). Durations are integer
/// milliseconds in fields ending in `_ms`. Rates are percentages in `(0, 100]`.
///
/// | field | default | Resilience4j name |
/// |---|---|---|
/// | `name` | `"deepseek"` | `name` (metric label `breaker`) |
/// | `failure_rate_threshold` | 50 | `failureRateThreshold` |
/// | `slow_call_rate_threshold` | 100 | `slowCallRateThreshold` |
/// | `slow_call_duration_threshold_ms` | 60 000 | `slowCallDurationThreshold` |
/// | `slow_call_detection` | true | (always on in Resilience4j) |
/// | `sliding_window_type` | `count_based` | `slidingWindowType` |
/// | `sliding_window_size` | 100 (calls, or seconds) | `slidingWindowSize` |
/// | `minimum_number_of_calls` | 100 | `minimumNumberOfCalls` |
/// | `permitted_calls_in_half_open` | 5 (the guide; Resilience4j says 10) | `permittedNumberOfCallsInHalfOpenState` |
/// | `wait_duration_in_open_ms` | 30 000 (the guide; Resilience4j says 60 000) | `waitDurationInOpenState` |
/// | `wait_multiplier` | 1.0 (constant wait) | `waitIntervalFunctionInOpenState` (exponential) |
/// | `max_wait_duration_in_open_ms` | 300 000 | its `maxWaitInterval` |
/// | `max_wait_in_half_open_ms` | none (wait for the probes) | `maxWaitDurationInHalfOpenState` |
/// | `automatic_transition` | true | `automaticTransitionFromOpenToHalfOpenEnabled` |
///
/// As in Resilience4j, a count-based window never waits for more calls than it holds: the
/// effective minimum is `min(minimum_number_of_calls, sliding_window_size)`. So the guide's
/// configuration (threshold 50 %, 30 s, 5 probes) with a window of 10 opens on the 5th failure
/// of the last 10 calls. The minimum is otherwise independent of the window: with a window of
/// 100 and a minimum of 5, the rate is evaluated from the 5th call on.
///
/// A call is *slow* when it takes longer than `slow_call_duration_threshold` until its first
/// content (see the [crate docs](crate#what-counts-as-the-duration-of-a-call)).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// The breaker's name: the `breaker` label of its metrics and the field of its events.
    pub name: String,
    /// Open when the failure rate is at or above this percentage.
    pub failure_rate_threshold: f32,
    /// Open when the slow-call rate is at or above this percentage.
    pub slow_call_rate_threshold: f32,
    /// A call longer than this is slow.
    #[serde(
        rename = "slow_call_duration_threshold_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
    pub slow_call_duration_threshold: Duration,
    /// Time every call to detect slow calls (default true). Off, the slow-call rule and the
    /// latency average are gone, and a count-based breaker reads no clock at all.
    pub slow_call_detection: bool,
    /// Count-based or time-based.
    pub sliding_window_type: SlidingWindowType,
    /// Calls (count-based) or seconds (time-based) in the window.
    pub sliding_window_size: u32,
    /// Recorded calls needed before a rate is evaluated.
    pub minimum_number_of_calls: u32,
    /// Concurrent probes admitted in half-open; their outcome decides.
    pub permitted_calls_in_half_open: u32,
    /// How long the breaker stays open (the first time).
    #[serde(
        rename = "wait_duration_in_open_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
    pub wait_duration_in_open: Duration,
    /// Each consecutive open (half-open probes failing again) multiplies the wait by this.
    pub wait_multiplier: f64,
    /// The longest wait a growing wait reaches.
    #[serde(
        rename = "max_wait_duration_in_open_ms",
        with = "tower_deepseek_core::config::duration_ms"
    )]
    pub max_wait_duration_in_open: Duration,
    /// If set, a half-open state whose probes have not decided within this time opens again.
    #[serde(
        rename = "max_wait_in_half_open_ms",
        with = "tower_deepseek_core::config::option_duration_ms"
    )]
    pub max_wait_in_half_open: Option<Duration>,
    /// Move from open to half-open on a timer, without waiting for traffic.
    pub automatic_transition: bool,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: "deepseek".to_owned(),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: Duration::from_secs(60),
            slow_call_detection: true,
            sliding_window_type: SlidingWindowType::CountBased,
            sliding_window_size: 100,
            minimum_number_of_calls: 100,
            permitted_calls_in_half_open: 5,
            wait_duration_in_open: Duration::from_secs(30),
            wait_multiplier: 1.0,
            max_wait_duration_in_open: Duration::from_secs(300),
            max_wait_in_half_open: None,
            automatic_transition: true,
        }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("name", &self.name)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field(
                "slow_call_duration_threshold",
                &self.slow_call_duration_threshold,
            )
            .field("slow_call_detection", &self.slow_call_detection)
            .field("sliding_window_type", &self.sliding_window_type)
            .field("sliding_window_size", &self.sliding_window_size)
            .field("minimum_number_of_calls", &self.minimum_number_of_calls)
            .field(
                "permitted_calls_in_half_open",
                &self.permitted_calls_in_half_open,
            )
            .field("wait_duration_in_open", &self.wait_duration_in_open)
            .field("wait_multiplier", &self.wait_multiplier)
            .field("max_wait_duration_in_open", &self.max_wait_duration_in_open)
            .field("max_wait_in_half_open", &self.max_wait_in_half_open)
            .field("automatic_transition", &self.automatic_transition)
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate_ok = |r: f32| r > 0.0 && r <= 100.0;
        let rate = |field: &'static str, r: f32| {
            ConfigError::new(field, format!("must be a percentage in (0, 100], got {r}"))
        };
        let positive = |field: &'static str| ConfigError::new(field, "must be longer than zero");
        if !rate_ok(self.failure_rate_threshold) {
            return Err(rate("failure_rate_threshold", self.failure_rate_threshold));
        }
        if !rate_ok(self.slow_call_rate_threshold) {
            return Err(rate(
                "slow_call_rate_threshold",
                self.slow_call_rate_threshold,
            ));
        }
        if self.slow_call_duration_threshold.is_zero() {
            return Err(positive("slow_call_duration_threshold_ms"));
        }
        if self.sliding_window_size == 0 || self.sliding_window_size > 1_000_000 {
            return Err(ConfigError::new(
                "sliding_window_size",
                "must be between 1 and 1,000,000",
            ));
        }
        if self.minimum_number_of_calls == 0 {
            return Err(ConfigError::new(
                "minimum_number_of_calls",
                "must be at least 1",
            ));
        }
        if self.permitted_calls_in_half_open == 0 {
            return Err(ConfigError::new(
                "permitted_calls_in_half_open",
                "must be at least 1",
            ));
        }
        if self.wait_duration_in_open.is_zero() {
            return Err(positive("wait_duration_in_open_ms"));
        }
        if !(self.wait_multiplier.is_finite() && self.wait_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "wait_multiplier",
                format!("must be a finite number >= 1, got {}", self.wait_multiplier),
            ));
        }
        if self.max_wait_duration_in_open < self.wait_duration_in_open {
            return Err(ConfigError::new(
                "max_wait_duration_in_open_ms",
                "must be at least wait_duration_in_open_ms",
            ));
        }
        if self.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(positive("max_wait_in_half_open_ms"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        Ok(())
    }

    /// The minimum number of calls in effect (count-based windows cap it at their size).
    pub fn effective_minimum_calls(&self) -> u32 {
        match self.sliding_window_type {
            SlidingWindowType::CountBased => {
                self.minimum_number_of_calls.min(self.sliding_window_size)
            }
            SlidingWindowType::TimeBased => self.minimum_number_of_calls,
        }
    }

    /// The wait in open after `consecutive_opens` opens in a row (1 for the first).
    pub fn wait_for(&self, consecutive_opens: u32) -> Duration {
        if consecutive_opens <= 1 || self.wait_multiplier == 1.0 {
            return self.wait_duration_in_open;
        }
        let factor = self
            .wait_multiplier
            .powi(consecutive_opens.saturating_sub(1).min(64) as i32);
        let secs = self.wait_duration_in_open.as_secs_f64() * factor;
        let max = self.max_wait_duration_in_open;
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_resilience4j_and_the_guide() {
        let c = CircuitBreakerConfig::default();
        assert_eq!(c.failure_rate_threshold, 50.0);
        assert_eq!(c.wait_duration_in_open, Duration::from_secs(30));
        assert_eq!(c.permitted_calls_in_half_open, 5);
        assert_eq!(c.sliding_window_size, 100);
        assert_eq!(c.minimum_number_of_calls, 100);
        assert_eq!(c.slow_call_rate_threshold, 100.0);
        assert_eq!(c.slow_call_duration_threshold, Duration::from_secs(60));
        c.validate().unwrap();
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = |f: fn(&mut CircuitBreakerConfig)| {
            let mut c = CircuitBreakerConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        let e = bad(|c| c.failure_rate_threshold = 0.0);
        assert_eq!(e.field(), "failure_rate_threshold");
        assert!(e.reason().contains("got 0"), "{e}");
        let e = bad(|c| c.failure_rate_threshold = 100.5);
        assert_eq!(e.field(), "failure_rate_threshold");
        assert!(e.reason().contains("got 100.5"), "{e}");
        assert_eq!(
            bad(|c| c.sliding_window_size = 0).field(),
            "sliding_window_size"
        );
        assert_eq!(
            bad(|c| c.permitted_calls_in_half_open = 0).field(),
            "permitted_calls_in_half_open"
        );
        let e = bad(|c| c.wait_multiplier = 0.5);
        assert_eq!(e.field(), "wait_multiplier");
        assert!(e.reason().contains("got 0.5"), "{e}");
        assert!(
            bad(|c| c.minimum_number_of_calls = 0)
                .to_string()
                .contains("minimum_number_of_calls")
        );
    }

    #[test]
    fn wait_grows_up_to_the_max() {
        let c = CircuitBreakerConfig {
            wait_multiplier: 2.0,
            max_wait_duration_in_open: Duration::from_secs(100),
            ..Default::default()
        };
        assert_eq!(c.wait_for(1), Duration::from_secs(30));
        assert_eq!(c.wait_for(2), Duration::from_secs(60));
        assert_eq!(c.wait_for(3), Duration::from_secs(100));
        assert_eq!(c.wait_for(1000), Duration::from_secs(100));
    }

    #[test]
    fn effective_minimum_is_capped_by_a_count_window() {
        let c = CircuitBreakerConfig {
            sliding_window_size: 10,
            ..Default::default()
        };
        assert_eq!(c.effective_minimum_calls(), 10);
        let c = CircuitBreakerConfig {
            sliding_window_type: SlidingWindowType::TimeBased,
            sliding_window_size: 10,
            ..Default::default()
        };
        assert_eq!(c.effective_minimum_calls(), 100);
    }
}
