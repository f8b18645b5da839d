//! A token bucket on one atomic (GCRA: the "theoretical arrival time" of the next token), that
//! can take more than it admitted and give tokens back, which governor cannot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(super) struct TokenBucket {
    /// Theoretical arrival time, in nanoseconds on the limiter's clock.
    tat: AtomicU64,
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now `tat` may run: the burst.
    tolerance: u64,
}

impl TokenBucket {
    pub(super) fn new(per_minute: u64, burst: u64) -> Self {
        let interval = (60_000_000_000 / per_minute).max(1);
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
        let b = TokenBucket::new(60, 10);
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

    #[test]
    fn settle_takes_debt_and_refunds() {
        let b = TokenBucket::new(60, 10);
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
