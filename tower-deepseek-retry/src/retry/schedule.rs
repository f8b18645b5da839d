//! Per-outcome retry schedules: how long to wait before the next attempt.

use std::time::Duration;

use serde::Deserialize;

/// How the random part of an exponential delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: the capped exponential delay itself.
    None,
    /// "Full jitter": uniform in `[0, delay]` (spreads a burst of clients best).
    #[default]
    Full,
    /// "Equal jitter": `delay / 2` plus uniform in `[0, delay / 2]`.
    Equal,
}

/// How long to wait before a retry.
///
/// In a config file: `{ "kind": "exponential", "base_ms": 1000, "max_ms": 32000, "jitter": "full" }`,
/// `{ "kind": "uniform", "min_ms": 5000, "max_ms": 15000 }`, `{ "kind": "fixed", "delay_ms": 250 }`
/// or `{ "kind": "immediate" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    Immediate,
    /// Always the same delay.
    Fixed {
        /// The delay, in milliseconds.
        delay_ms: u64,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Lower bound, in milliseconds.
        min_ms: u64,
        /// Upper bound, in milliseconds.
        max_ms: u64,
    },
    /// `base * 2^(n-1)` for the n-th retry of this outcome, capped at `max`, then jittered.
    Exponential {
        /// The first delay, in milliseconds.
        base_ms: u64,
        /// The cap, in milliseconds.
        max_ms: u64,
        /// How the delay is randomised.
        #[serde(default)]
        jitter: Jitter,
        /// Retry the first time at once, then back off exponentially (connect errors).
        #[serde(default)]
        first_immediate: bool,
    },
}

impl Backoff {
    /// An exponential backoff from `base` doubling up to `max`, with full jitter.
    pub const fn exponential(base: Duration, max: Duration) -> Self {
        Backoff::Exponential {
            base_ms: base.as_millis() as u64,
            max_ms: max.as_millis() as u64,
            jitter: Jitter::Full,
            first_immediate: false,
        }
    }

    /// A uniform random delay in `[min, max]`.
    pub const fn uniform(min: Duration, max: Duration) -> Self {
        Backoff::Uniform {
            min_ms: min.as_millis() as u64,
            max_ms: max.as_millis() as u64,
        }
    }

    /// A fixed delay.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff::Fixed {
            delay_ms: delay.as_millis() as u64,
        }
    }

    /// Sets the jitter of an exponential backoff (no effect on other kinds).
    #[must_use]
    pub const fn with_jitter(mut self, j: Jitter) -> Self {
        if let Backoff::Exponential { jitter, .. } = &mut self {
            *jitter = j;
        }
        self
    }

    /// Makes the first retry of an exponential backoff immediate (no effect on other kinds).
    #[must_use]
    pub const fn first_immediate(mut self) -> Self {
        if let Backoff::Exponential {
            first_immediate, ..
        } = &mut self
        {
            *first_immediate = true;
        }
        self
    }

    /// The upper bound of the delay before the `n`-th retry (1-based) of this outcome, before
    /// jitter: what a test can assert against.
    pub fn ceiling(&self, n: u32) -> Duration {
        match *self {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Fixed { delay_ms } => Duration::from_millis(delay_ms),
            Backoff::Uniform { max_ms, .. } => Duration::from_millis(max_ms),
            Backoff::Exponential {
                base_ms,
                max_ms,
                first_immediate,
                ..
            } => {
                let k = if first_immediate {
                    if n <= 1 {
                        return Duration::ZERO;
                    }
                    n - 2
                } else {
                    n.saturating_sub(1)
                };
                let d = base_ms.saturating_mul(1u64.checked_shl(k).unwrap_or(u64::MAX));
                Duration::from_millis(d.min(max_ms))
            }
        }
    }

    /// The delay before the `n`-th retry (1-based) of this outcome.
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Fixed { delay_ms } => Duration::from_millis(delay_ms),
            Backoff::Uniform { min_ms, max_ms } => {
                let lo = Duration::from_millis(min_ms).as_nanos() as u64;
                let hi = Duration::from_millis(max_ms).as_nanos() as u64;
                Duration::from_nanos(rng.u64(lo..=hi.max(lo)))
            }
            Backoff::Exponential { jitter, .. } => {
                let cap = self.ceiling(n).as_nanos() as u64;
                let nanos = match jitter {
                    Jitter::None => cap,
                    Jitter::Full => rng.u64(0..=cap),
                    Jitter::Equal => cap / 2 + rng.u64(0..=cap - cap / 2),
                };
                Duration::from_nanos(nanos)
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match *self {
            Backoff::Uniform { min_ms, max_ms } if min_ms > max_ms => {
                Err("uniform backoff: min_ms is larger than max_ms")
            }
            Backoff::Exponential {
                base_ms, max_ms, ..
            } if base_ms > max_ms => Err("exponential backoff: base_ms is larger than max_ms"),
            _ => Ok(()),
        }
    }
}

/// What a schedule does with a `Retry-After` the upstream sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryAfterPolicy {
    /// Wait the larger of the header and the backoff (never earlier than asked).
    #[default]
    AtLeast,
    /// Wait exactly what the header says instead of the backoff.
    Exact,
    /// Ignore the header.
    Ignore,
}

/// The schedule for one kind of outcome: a backoff and how many retries it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The delay before each retry.
    pub backoff: Backoff,
    /// How many retries of this outcome at most (the layer's `max_attempts` also applies);
    /// `0` disables retries of it.
    #[serde(default = "unlimited")]
    pub max_retries: u32,
    /// What to do with `Retry-After`.
    #[serde(default)]
    pub retry_after: RetryAfterPolicy,
}

fn unlimited() -> u32 {
    u32::MAX
}

impl Schedule {
    /// A schedule with `backoff`, bounded only by the layer's `max_attempts`, honouring
    /// `Retry-After` as a lower bound.
    pub const fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            max_retries: u32::MAX,
            retry_after: RetryAfterPolicy::AtLeast,
        }
    }

    /// Never retry this outcome.
    pub const fn never() -> Self {
        Self {
            backoff: Backoff::Immediate,
            max_retries: 0,
            retry_after: RetryAfterPolicy::Ignore,
        }
    }

    /// Sets the maximum number of retries of this outcome.
    #[must_use]
    pub const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the `Retry-After` policy.
    #[must_use]
    pub const fn retry_after(mut self, p: RetryAfterPolicy) -> Self {
        self.retry_after = p;
        self
    }
}

/// The per-outcome schedules. Defaults: the guide's table (see the [`RetryLayer` docs](crate::RetryLayer)),
/// with a number of retries per outcome that keeps a caller from waiting long on a dead
/// upstream (the worst cases are in the module docs, "Worst cases").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Schedules {
    /// 429: exponential 1 s doubling to 32 s, full jitter; `Retry-After` as a lower bound.
    /// Bounded by `max_attempts` (6 retries) and the total deadline.
    pub rate_limited: Schedule,
    /// 502: at once, at most 3 retries.
    pub bad_gateway: Schedule,
    /// 503: uniform 5 to 15 s, or exactly `Retry-After` when sent; at most 1 retry.
    pub overloaded: Schedule,
    /// 504, 408 and our own attempt timeouts: at once, with a longer attempt timeout
    /// (see `timeout_multiplier`); at most 2 retries.
    pub timeout: Schedule,
    /// 500 and other 5xx: exponential 500 ms doubling (cap 8 s), full jitter; at most 3
    /// retries (at most 0.5 + 1 + 2 = 3.5 s of waits).
    pub server: Schedule,
    /// A 2xx that was empty, cut short, carried an in-band error or ran out of resources before
    /// any byte reached the caller: as `server`.
    pub body: Schedule,
    /// Connect errors (the request was not sent): at once, then exponential 500 ms to 8 s; at
    /// most 3 retries (at most 0 + 0.5 + 1 = 1.5 s of waits).
    pub connect: Schedule,
    /// Transport errors after the request may have been sent: as `server`, but only used when
    /// `retry_after_send` is on (it may bill twice).
    pub transport: Schedule,
}

impl Default for Schedules {
    fn default() -> Self {
        let server = Schedule::new(Backoff::exponential(
            Duration::from_millis(500),
            Duration::from_secs(8),
        ))
        .max_retries(3);
        Self {
            rate_limited: Schedule::new(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(32),
            )),
            bad_gateway: Schedule::new(Backoff::Immediate).max_retries(3),
            overloaded: Schedule::new(Backoff::uniform(
                Duration::from_secs(5),
                Duration::from_secs(15),
            ))
            .retry_after(RetryAfterPolicy::Exact)
            .max_retries(1),
            timeout: Schedule::new(Backoff::Immediate).max_retries(2),
            server,
            body: server,
            connect: Schedule::new(
                Backoff::exponential(Duration::from_millis(500), Duration::from_secs(8))
                    .first_immediate(),
            )
            .max_retries(3),
            transport: server,
        }
    }
}

/// Index of a schedule, for per-outcome retry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    RateLimited = 0,
    BadGateway,
    Overloaded,
    Timeout,
    Server,
    Body,
    Connect,
    Transport,
}

pub(crate) const KINDS: usize = 8;

impl Schedules {
    pub(crate) fn get(&self, kind: Kind) -> &Schedule {
        match kind {
            Kind::RateLimited => &self.rate_limited,
            Kind::BadGateway => &self.bad_gateway,
            Kind::Overloaded => &self.overloaded,
            Kind::Timeout => &self.timeout,
            Kind::Server => &self.server,
            Kind::Body => &self.body,
            Kind::Connect => &self.connect,
            Kind::Transport => &self.transport,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        for k in [
            Kind::RateLimited,
            Kind::BadGateway,
            Kind::Overloaded,
            Kind::Timeout,
            Kind::Server,
            Kind::Body,
            Kind::Connect,
            Kind::Transport,
        ] {
            self.get(k).backoff.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_ceiling_doubles_to_the_cap() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32));
        let c: Vec<u64> = (1..=8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(c, [1, 2, 4, 8, 16, 32, 32, 32]);
        let b = b.first_immediate();
        let c: Vec<u64> = (1..=4).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(c, [0, 1, 2, 4]);
        assert_eq!(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32)).ceiling(200),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let full = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(32));
        let equal = full.with_jitter(Jitter::Equal);
        let none = full.with_jitter(Jitter::None);
        for n in 1..10 {
            for _ in 0..200 {
                let cap = full.ceiling(n);
                assert!(full.delay(n, &mut rng) <= cap);
                let e = equal.delay(n, &mut rng);
                assert!(e >= cap / 2 && e <= cap);
                assert_eq!(none.delay(n, &mut rng), cap);
            }
        }
        let u = Backoff::uniform(Duration::from_secs(5), Duration::from_secs(15));
        for _ in 0..500 {
            let d = u.delay(1, &mut rng);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(15));
        }
    }

    #[test]
    fn deserializes_from_json() {
        let s: Schedules = serde_json::from_str(
            r#"{"rate_limited":{"backoff":{"kind":"exponential","base_ms":2000,"max_ms":8000},"max_retries":2},
                "bad_gateway":{"backoff":{"kind":"immediate"},"max_retries":0}}"#,
        )
        .unwrap();
        assert_eq!(s.rate_limited.max_retries, 2);
        assert_eq!(
            s.rate_limited.backoff.ceiling(3),
            Duration::from_secs(8),
            "capped"
        );
        assert_eq!(s.bad_gateway.max_retries, 0);
        assert_eq!(s.overloaded, Schedules::default().overloaded);
    }
}
