//! The permit a call holds from admission to its recorded outcome.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_deepseek_core::classify::FailureClass;

use super::{Breaker, State, Stripe};
use crate::policy::Accrual;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitKind {
    /// Closed or metrics-only: recorded in the sliding window.
    Window = 0,
    /// One of the half-open probes.
    HalfOpen = 1,
    /// Disabled: nothing is recorded.
    Untracked = 2,
}

/// [`Permit::meta`]: the outcome was recorded.
const DONE: u64 = 1 << 2;
const KIND_MASK: u64 = 0b11;

/// The right to make one call. Recording an outcome consumes it; dropping it unrecorded (the
/// caller went away) records nothing and gives a half-open probe slot back.
///
/// Kept small (it lives in every response future, and futures are moved): one pointer, the
/// generation with the kind and the done flag in its low bits, and the start time.
pub(crate) struct Permit {
    stripe: Arc<Stripe>,
    /// `generation << 3 | done << 2 | kind` (generations have 56 bits).
    meta: u64,
    start: Instant,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker().label)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Permit {
    #[inline]
    pub(super) fn new(stripe: Arc<Stripe>, generation: u64, kind: PermitKind) -> Self {
        let start = stripe.breaker.now();
        Self {
            stripe,
            meta: (generation << 3) | kind as u64,
            start,
        }
    }

    #[inline]
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.stripe.breaker
    }

    #[inline]
    fn generation(&self) -> u64 {
        self.meta >> 3
    }

    #[inline]
    fn kind(&self) -> PermitKind {
        match self.meta & KIND_MASK {
            0 => PermitKind::Window,
            1 => PermitKind::HalfOpen,
            _ => PermitKind::Untracked,
        }
    }

    /// Records the outcome. `first_content` is when the call's latency ends (its first content,
    /// or its end when there was none); `now` when the outcome became known.
    #[inline]
    pub(crate) fn record(
        mut self,
        outcome: Result<(), &FailureClass>,
        first_content: Instant,
        now: Instant,
    ) {
        self.record_in_place(outcome, first_content, now);
    }

    /// Records the outcome (see [`Permit::record`]) and returns the breaker's state after it.
    #[inline]
    pub(crate) fn record_then_state(
        mut self,
        outcome: Result<(), &FailureClass>,
        first_content: Instant,
        now: Instant,
    ) -> State {
        self.record_in_place(outcome, first_content, now);
        self.breaker().state()
    }

    #[inline]
    fn record_in_place(
        &mut self,
        outcome: Result<(), &FailureClass>,
        first_content: Instant,
        now: Instant,
    ) {
        self.meta |= DONE;
        let breaker = &self.stripe.breaker;
        let accrual = match outcome {
            Ok(()) => Accrual::Success,
            Err(class) => breaker.spec.policy.accrue(class),
        };
        let latency = if breaker.head.timed {
            first_content.saturating_duration_since(self.start)
        } else {
            Duration::ZERO
        };
        breaker.on_outcome(self.kind(), self.generation(), accrual, latency, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.meta & DONE == 0 {
            self.breaker().on_cancel(self.kind(), self.generation());
        }
    }
}
