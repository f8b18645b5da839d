//! The shared limit: permits in flight, raised on success and lowered on 429s.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "redis")]
use std::time::Duration;

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
    /// The Redis backend: the fleet's leases and limit (the fields above are then this
    /// process's local share, used while Redis is unavailable).
    #[cfg(feature = "redis")]
    pub(crate) fleet: Option<Arc<super::fleet::FleetLeases>>,
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

impl Shared {
    /// Waits for a permit: a fleet lease while Redis answers, otherwise (or without a fleet)
    /// a permit of this process's semaphore, in FIFO order.
    pub(crate) async fn acquire(&self) -> super::body::Held {
        #[cfg(feature = "redis")]
        if let Some(f) = &self.fleet {
            // Polls while the fleet is full: 2 ms, doubling up to 50 ms, with jitter.
            let mut pause = Duration::from_millis(2);
            loop {
                match f.try_acquire().await {
                    Ok(Some(lease)) => return super::body::Held::Lease(lease),
                    Ok(None) => {
                        let jitter = pause.mul_f64(fastrand::f64() * 0.5);
                        tokio::time::sleep(pause + jitter).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    Err(_) => {
                        f.fleet().count_fallback("concurrency");
                        break;
                    }
                }
            }
        }
        super::body::Held::Local(
            self.semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        )
    }
}
