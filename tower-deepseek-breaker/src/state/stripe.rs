//! Striped reference counts: every permit holds its thread's stripe of a breaker.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tower_deepseek_core::error::BreakerOpen;

use super::permit::PermitKind;
use super::{Breaker, Permit, State};

/// The number of reference-count stripes of a [`Striped`] breaker: enough that the threads of
/// a runtime each get their own, computed once.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cores * 2).next_power_of_two().clamp(2, 64)
    })
}

/// This thread's stripe number (threads are numbered in the order they first call).
#[inline]
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX
        .try_with(|i| match i.get() {
            usize::MAX => {
                let n = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
                i.set(n);
                n
            }
            n => n,
        })
        .unwrap_or(0)
}

/// One stripe: a reference to the breaker, on lines of its own, whose reference count only
/// the threads of this stripe touch. Every permit holds one.
#[repr(align(64))]
pub(crate) struct Stripe {
    pub(super) breaker: Arc<Breaker>,
}

impl Stripe {
    /// A stripe of its own for `breaker` (a keyed breaker, which its registry hands out).
    pub(crate) fn new(breaker: Arc<Breaker>) -> Arc<Self> {
        Arc::new(Stripe { breaker })
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Admits a call (see [`Breaker::admit`]); the permit holds this `Arc`.
    #[inline]
    pub(crate) fn try_acquire_owned(self: Arc<Self>) -> Result<Permit, BreakerOpen> {
        let (state, generation) = self.breaker.word();
        match state {
            State::Closed | State::MetricsOnly => {
                Ok(Permit::new(self, generation, PermitKind::Window))
            }
            State::Disabled => Ok(Permit::new(self, generation, PermitKind::Untracked)),
            _ => self.breaker.acquire_slow(|| self.clone()),
        }
    }
}

/// A breaker shared by every service of a layer (or by a failover endpoint), with one
/// reference count per stripe of threads: a call's permit clones its thread's stripe, so that
/// threads calling at the same time do not take turns on one contended count (two atomic
/// read-modify-writes per call).
pub(crate) struct Striped {
    breaker: Arc<Breaker>,
    stripes: Box<[Arc<Stripe>]>,
}

impl fmt::Debug for Striped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.breaker.fmt(f)
    }
}

impl Striped {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        let stripes = (0..stripe_count())
            .map(|_| Stripe::new(breaker.clone()))
            .collect();
        Self { breaker, stripes }
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Admits a call (see [`Breaker::admit`]).
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        self.breaker.admit(|| {
            let i = stripe_index() & (self.stripes.len() - 1);
            self.stripes[i].clone()
        })
    }
}
