//! Recording a finished call: the lock-free path of a count-based window, the locked path of
//! everything else, and the evaluation of the rates that may open or close the breaker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::machine::{EWMA_ALPHA, Inner, NO_LATENCY};
use super::permit::PermitKind;
use super::word::tag;
use super::{Breaker, State};
use crate::policy::Accrual;
use crate::window::{Recorded, Sample, Totals};

impl Breaker {
    /// Whether closed-state totals call for opening. `failure_rule` is false when a failsafe
    /// trip rule replaces the failure-rate rule.
    #[inline]
    fn exceeded(&self, totals: Totals, failure_rule: bool) -> bool {
        let h = &*self.head;
        let failed = failure_rule
            && totals
                .failure_rate(h.min_calls)
                .is_some_and(|r| r >= h.failure_rate_threshold);
        let slow = totals
            .slow_rate(h.min_calls)
            .is_some_and(|r| r >= h.slow_call_rate_threshold);
        failed || slow
    }

    fn evaluate_closed(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let totals = self.totals_locked(inner, now);
        let failure_rule = {
            #[cfg(feature = "failsafe")]
            {
                inner.rule.is_none()
            }
            #[cfg(not(feature = "failsafe"))]
            {
                true
            }
        };
        if self.exceeded(totals, failure_rule) {
            self.transition(inner, State::Open, now, None);
        }
    }

    fn evaluate_half_open(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let c = &self.spec.config;
        let permitted = c.permitted_calls_in_half_open;
        let t = inner.half_open.totals;
        if t.calls < permitted {
            return;
        }
        let failed = t
            .failure_rate(permitted)
            .is_some_and(|r| r >= c.failure_rate_threshold);
        let slow = t
            .slow_rate(permitted)
            .is_some_and(|r| r >= c.slow_call_rate_threshold);
        let to = if failed || slow {
            State::Open
        } else {
            State::Closed
        };
        self.transition(inner, to, now, None);
    }

    /// Folds one latency sample into the average.
    ///
    /// A load and a store, not a read-modify-write: when two calls finish at the same instant
    /// one of their samples may be lost, which an exponential average over many calls does not
    /// notice, and which keeps every call from paying for an atomic read-modify-write.
    #[inline]
    fn sample_latency(&self, latency: Duration) {
        // Nanoseconds: no division per call (seconds are computed when the average is read).
        let sample = latency
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(latency.subsec_nanos())) as f64;
        let cell = &self.hot.latency;
        let prev = cell.load(Ordering::Relaxed);
        let flag = &self.head.replace_latency;
        let replace = flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed);
        let next = if prev == NO_LATENCY || replace {
            sample
        } else {
            EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * f64::from_bits(prev)
        };
        if next.to_bits() != prev {
            cell.store(next.to_bits(), Ordering::Relaxed);
        }
    }

    #[inline]
    pub(super) fn on_outcome(
        self: &Arc<Self>,
        kind: PermitKind,
        generation: u64,
        accrual: Accrual,
        latency: Duration,
        now: Instant,
    ) {
        match accrual {
            Accrual::Success => self.handles.success.increment(1),
            Accrual::Failure | Accrual::OpenFor(_) => self.handles.failure.increment(1),
            Accrual::Ignored => self.handles.ignored.increment(1),
        }
        if kind == PermitKind::Untracked {
            return;
        }
        let h = &*self.head;
        let slow = h.detect && latency > h.slow_call_duration;
        let decided = matches!(accrual, Accrual::Success | Accrual::Failure);
        if h.detect && decided {
            self.sample_latency(latency);
        }
        if kind == PermitKind::Window && decided && h.lock_free {
            self.record_lock_free(generation, accrual == Accrual::Failure, slow, now);
        } else {
            self.on_outcome_locked(kind, generation, accrual, slow, now);
        }
    }

    /// Records a closed (or metrics-only) call's success or failure in the count window,
    /// without the lock. Only a call that may raise a rate evaluates them: a failure, a slow
    /// call, or a call that grows a window not yet full (it may reach the minimum number of
    /// calls). A success replacing an outcome in a full window lowers or keeps both rates.
    #[inline]
    fn record_lock_free(self: &Arc<Self>, generation: u64, failed: bool, slow: bool, now: Instant) {
        let (state, current) = self.word();
        if current != generation {
            // Admitted in an earlier state: counted in the metrics, not in this state's window.
            return;
        }
        let Some(window) = &self.hot.count else {
            return;
        };
        let may_open = match window.record(Sample { failed, slow }, tag(generation)) {
            Recorded::Stale => false,
            Recorded::Unchanged => failed || slow,
            Recorded::Changed { grew } => failed || slow || grew,
        };
        if may_open && state == State::Closed && self.exceeded(window.totals(), true) {
            self.open_from_closed(generation, now);
        }
    }

    /// Opens a breaker whose window, as one call of `generation` recorded it, exceeded a
    /// threshold; nothing if another transition came first.
    #[cold]
    fn open_from_closed(self: &Arc<Self>, generation: u64, now: Instant) {
        let mut inner = self.lock();
        if self.word() == (State::Closed, generation) {
            self.transition(&mut inner, State::Open, now, None);
        }
    }

    /// Records anything else: half-open probes, ignored outcomes, `OpenFor`, and every outcome
    /// of a breaker with a time-based window or a failsafe trip rule.
    fn on_outcome_locked(
        self: &Arc<Self>,
        kind: PermitKind,
        generation: u64,
        accrual: Accrual,
        slow: bool,
        now: Instant,
    ) {
        let mut inner = self.lock();
        let (state, current) = self.word();
        if current != generation {
            // Admitted in an earlier state: counted in the metrics, not in this state's window.
            return;
        }
        match (kind, accrual) {
            (PermitKind::HalfOpen, Accrual::Ignored) => {
                inner.half_open.admitted = inner.half_open.admitted.saturating_sub(1);
            }
            (_, Accrual::Ignored) => {}
            (_, Accrual::OpenFor(wait)) => {
                if state != State::MetricsOnly {
                    self.transition(&mut inner, State::Open, now, Some(wait));
                }
            }
            (PermitKind::HalfOpen, a) => {
                let failed = a == Accrual::Failure;
                let t = &mut inner.half_open.totals;
                t.calls += 1;
                t.failures += failed as u32;
                t.slow += slow as u32;
                self.evaluate_half_open(&mut inner, now);
            }
            (_, a) => {
                let failed = a == Accrual::Failure;
                let sample = Sample { failed, slow };
                match (&self.hot.count, inner.time.as_mut()) {
                    // Under the lock no transition is under way and the generation is current:
                    // the window records.
                    (Some(w), _) => {
                        let _ = w.record(sample, tag(generation));
                    }
                    (None, Some(w)) => w.record(sample, self.since_epoch(now)),
                    (None, None) => {}
                }
                if state != State::Closed {
                    return;
                }
                #[cfg(feature = "failsafe")]
                if let Some(rule) = inner.rule.as_mut() {
                    let dead = if failed {
                        rule.mark_dead_on_failure()
                    } else {
                        rule.record_success();
                        None
                    };
                    if let Some(wait) = dead {
                        self.transition(&mut inner, State::Open, now, Some(wait));
                        return;
                    }
                }
                self.evaluate_closed(&mut inner, now);
            }
        }
    }

    pub(super) fn on_cancel(self: &Arc<Self>, kind: PermitKind, generation: u64) {
        self.handles.cancelled.increment(1);
        if kind != PermitKind::HalfOpen {
            return;
        }
        let mut inner = self.lock();
        let (state, current) = self.word();
        if current == generation && state == State::HalfOpen {
            inner.half_open.admitted = inner.half_open.admitted.saturating_sub(1);
        }
    }
}
