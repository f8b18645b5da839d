//! The shared limit: permits in flight, raised on success and lowered on 429s.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::AdaptiveConcurrencyConfig;

pub(crate) struct Limit {
    /// The exact limit (fractional between whole steps).
    pub(crate) value: f64,
    /// Permits to take out of circulation when they come back (a decrease while they were
    /// in flight).
    pub(crate) debt: usize,
}

pub(crate) struct Shared {
    pub(crate) cfg: AdaptiveConcurrencyConfig,
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) limit: Mutex<Limit>,
    /// Incremented on each decrease; a 429 for a request sent before it is ignored.
    pub(crate) epoch: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn whole(v: f64) -> usize {
        v.floor() as usize
    }

    pub(crate) fn on_overload(&self, epoch: u64) {
        if self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // someone already decreased for this wave
        }
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        let before = Self::whole(l.value);
        l.value = (l.value * self.cfg.decrease_factor).max(f64::from(self.cfg.min));
        let drop = before - Self::whole(l.value);
        if drop > 0 {
            let forgotten = self.semaphore.forget_permits(drop);
            l.debt += drop - forgotten;
        }
        metrics::gauge!("deepseek_concurrency_limit").set(l.value.floor());
        tracing::info!(
            target: "tower_deepseek_retry",
            limit = Self::whole(l.value) as u64,
            "upstream 429: concurrency limit lowered"
        );
    }

    pub(crate) fn on_success(&self) {
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if l.value >= f64::from(self.cfg.max) {
            return;
        }
        let before = Self::whole(l.value);
        l.value = (l.value + 1.0 / l.value).min(f64::from(self.cfg.max));
        let mut grow = Self::whole(l.value) - before;
        if grow > 0 {
            let paid = grow.min(l.debt);
            l.debt -= paid;
            grow -= paid;
            if grow > 0 {
                self.semaphore.add_permits(grow);
            }
            metrics::gauge!("deepseek_concurrency_limit").set(l.value.floor());
        }
    }

    pub(crate) fn release(&self, permit: OwnedSemaphorePermit) {
        let mut l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if l.debt > 0 {
            l.debt -= 1;
            permit.forget();
        }
    }
}
