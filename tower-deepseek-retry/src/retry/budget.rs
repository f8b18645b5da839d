//! A lock-free retry budget with the semantics of tower's `TpsBudget` (Finagle's design).
//!
//! tower's `TpsBudget` takes a mutex on every deposit, i.e. on every request of every thread.
//! This one keeps the same sliding window in ten atomic slots, each tagged with the window
//! epoch it counts for, so a deposit is one clock read and one compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;

pub(crate) struct RetryBudget {
    /// Per window: high 32 bits = epoch (wrapping), low 32 bits = balance (`i32`).
    slots: [AtomicU64; SLOTS],
    window_nanos: u64,
    origin: Instant,
    reserve: i64,
    deposit_amount: i32,
    withdraw_amount: i32,
}

fn pack(epoch: u32, balance: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(balance as u32)
}

fn unpack(v: u64) -> (u32, i32) {
    ((v >> 32) as u32, v as u32 as i32)
}

impl RetryBudget {
    /// `ttl` in 1..=60 s, `retry_percent` in 0..=1000 (validated by the config).
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        // The same ratios as TpsBudget: with 20 %, one retry costs five deposits.
        let (deposit_amount, withdraw_amount) = if retry_percent == 0.0 {
            (0, 1)
        } else if retry_percent <= 1.0 {
            (1, (1.0 / retry_percent) as i32)
        } else {
            (1000, (1000.0 / retry_percent) as i32)
        };
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(i64::from(withdraw_amount));
        Self {
            slots: Default::default(),
            window_nanos: (ttl.as_nanos() as u64 / SLOTS as u64).max(1),
            origin: Instant::now(),
            reserve,
            deposit_amount,
            withdraw_amount: withdraw_amount.max(1),
        }
    }

    fn epoch(&self) -> u32 {
        self.epoch_at(Instant::now())
    }

    fn epoch_at(&self, now: Instant) -> u32 {
        // +1 so that no live epoch equals the zero of a fresh slot.
        let elapsed = now.saturating_duration_since(self.origin);
        (elapsed.as_nanos() as u64 / self.window_nanos) as u32 + 1
    }

    fn add(&self, epoch: u32, amount: i32) {
        let slot = &self.slots[epoch as usize % SLOTS];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (e, b) = unpack(v);
            Some(if e == epoch {
                pack(epoch, b.saturating_add(amount))
            } else {
                pack(epoch, amount)
            })
        });
    }

    /// Records a request made at `now` (the caller's clock read, shared with its deadline).
    pub(crate) fn deposit_at(&self, now: Instant) {
        if self.deposit_amount != 0 {
            self.add(self.epoch_at(now), self.deposit_amount);
        }
    }

    /// Records a request.
    #[cfg(test)]
    pub(crate) fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let epoch = self.epoch();
        let mut sum = self.reserve;
        for slot in &self.slots {
            let (e, b) = unpack(slot.load(Ordering::Acquire));
            if epoch.wrapping_sub(e) < SLOTS as u32 {
                sum += i64::from(b);
            }
        }
        if sum >= i64::from(self.withdraw_amount) {
            self.add(epoch, -self.withdraw_amount);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reserve_only() {
        let b = RetryBudget::new(Duration::from_secs(1), 2, 0.0);
        b.deposit();
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "deposits count for nothing at 0 %");
        // the window slides: the reserve comes back
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn one_retry_per_five_requests_at_20_percent() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        assert!(!b.withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        // deposits expire after the ttl
        for _ in 0..5 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn over_100_percent() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 2.0);
        b.deposit();
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }
}
