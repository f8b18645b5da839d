//! The tokens-per-minute bucket: governor's GCRA arithmetic (the "theoretical arrival time" of
//! the next token) on one atomic, tested against governor, plus what governor cannot do: take
//! more than was admitted and give tokens back when a request is settled against its real
//! `usage`. Requests per minute use governor itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) struct TokenBucket {
    /// Theoretical arrival time, in nanoseconds on the limiter's clock.
    tat: AtomicU64,
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now `tat` may run: the burst.
    tolerance: u64,
}

impl TokenBucket {
    /// `per_window` tokens per `window_ns` nanoseconds, `burst` at once.
    pub(super) fn new(per_window: u64, burst: u64, window_ns: u64) -> Self {
        let interval = (window_ns / per_window).max(1);
        Self {
            tat: AtomicU64::new(0),
            interval,
            tolerance: burst.saturating_mul(interval),
        }
    }

    /// How long until `n` tokens can be taken (zero: now).
    pub(super) fn wait(&self, n: u64, now: u64) -> Duration {
        let tat = self.tat.load(Ordering::Acquire).max(now);
        let new = tat.saturating_add(n.saturating_mul(self.interval));
        Duration::from_nanos(new.saturating_sub(now).saturating_sub(self.tolerance))
    }

    /// Whether the bucket has refilled completely (its state can be forgotten).
    pub(super) fn is_full(&self, now: u64) -> bool {
        self.tat.load(Ordering::Acquire) <= now
    }

    /// Takes `n` tokens if they can be taken now, in one atomic step; otherwise how long to
    /// wait. With `n = 1` this is governor's GCRA check: admitted when the theoretical arrival
    /// time is at most `burst - 1` intervals ahead of `now`.
    #[cfg(test)]
    pub(super) fn try_take(&self, n: u64, now: u64) -> Result<(), Duration> {
        let step = n.saturating_mul(self.interval);
        let mut wait = Duration::ZERO;
        let res = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                let new = tat.max(now).saturating_add(step);
                let ahead = new.saturating_sub(now).saturating_sub(self.tolerance);
                if ahead == 0 {
                    Some(new)
                } else {
                    wait = Duration::from_nanos(ahead);
                    None
                }
            });
        res.map(|_| ()).map_err(|_| wait)
    }

    /// Takes `n` tokens (the caller checked [`wait`](Self::wait)).
    pub(super) fn take(&self, n: u64, now: u64) {
        self.adjust(n as i64, now);
    }

    /// Takes (`delta > 0`, may run into debt) or gives back (`delta < 0`) tokens.
    pub(super) fn adjust(&self, delta: i64, now: u64) {
        let step = delta.unsigned_abs().saturating_mul(self.interval);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(if delta >= 0 {
                    tat.max(now).saturating_add(step)
                } else {
                    // Never more than a full bucket: a refund cannot push tat below now.
                    tat.saturating_sub(step).max(now.min(tat))
                })
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        // 60 per minute = 1 per second, burst 10.
        let b = TokenBucket::new(60, 10, 60 * S);
        assert_eq!(b.wait(10, 0), Duration::ZERO);
        b.take(10, 0);
        assert_eq!(b.wait(1, 0), Duration::from_secs(1));
        assert_eq!(b.wait(1, S), Duration::ZERO);
        assert_eq!(
            b.wait(11, 100 * S),
            Duration::from_secs(1),
            "over the burst"
        );
    }

    /// The request bucket admits and refuses exactly as governor's GCRA does, with the same
    /// wait, over random quotas, bursts and arrival gaps.
    #[test]
    fn try_take_is_governors_gcra() {
        use governor::clock::FakeRelativeClock;
        use governor::{Quota, RateLimiter};
        use std::num::NonZeroU32;

        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let per_minute = rng.u32(1..100_000);
            let burst = rng.u32(1..50);
            let period = Duration::from_nanos(60_000_000_000 / u64::from(per_minute));
            let quota = Quota::with_period(period)
                .unwrap()
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let clock = FakeRelativeClock::default();
            let governor = RateLimiter::direct_with_clock(quota, clock.clone());
            let ours = TokenBucket::new(u64::from(per_minute), u64::from(burst), 60 * S);
            let mut now = 0u64;
            for _ in 0..300 {
                let gap = match rng.u8(0..4) {
                    0 => 0,
                    1 => rng.u64(0..period.as_nanos() as u64),
                    2 => rng.u64(0..4 * period.as_nanos() as u64),
                    _ => rng.u64(0..u64::from(burst) * period.as_nanos() as u64 * 2),
                };
                clock.advance(Duration::from_nanos(gap));
                now += gap;
                let expected = governor
                    .check()
                    .map_err(|nu| nu.wait_time_from(governor::clock::Clock::now(&clock)));
                assert_eq!(
                    ours.try_take(1, now),
                    expected,
                    "{per_minute}/min burst {burst}"
                );
            }
        }
    }

    #[test]
    fn settle_takes_debt_and_refunds() {
        let b = TokenBucket::new(60, 10, 60 * S);
        b.take(5, 0);
        b.adjust(5, 0); // the answer used 5 more
        assert_eq!(b.wait(1, 0), Duration::from_secs(1));
        b.adjust(-3, 0); // refund
        assert_eq!(b.wait(3, 0), Duration::ZERO);
        // a refund never makes more than a full bucket
        b.adjust(-1000, 0);
        assert_eq!(b.wait(10, 0), Duration::ZERO);
        assert_eq!(b.wait(11, 0), Duration::from_secs(1));
    }
}
