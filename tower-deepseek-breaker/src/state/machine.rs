//! One breaker's shared state: its settings, admission, time-driven and forced transitions.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;
use tower_deepseek_core::classify::Classifier;
use tower_deepseek_core::error::BreakerOpen;

use super::permit::PermitKind;
use super::word::{pack, tag, unpack};
use super::{Permit, State, Stripe};
#[cfg(feature = "failsafe")]
use super::{TripRule, TripRuleFactory};
use crate::circuit_breaker::{CircuitBreakerConfig, SlidingWindowType};
use crate::policy::OutcomePolicy;
use crate::window::{CountWindow, TimeWindow, Totals};

/// How long a caller rejected because all half-open probes are taken is told to wait.
const HALF_OPEN_BUSY_RETRY: Duration = Duration::from_secs(1);

/// Everything a breaker is made from; shared by every breaker of a keyed registry.
pub(crate) struct Spec {
    /// Whether calls read the clock (slow-call detection or a time-based window).
    pub(crate) timed: bool,
    pub(crate) config: CircuitBreakerConfig,
    pub(crate) min_calls: u32,
    pub(crate) policy: Arc<dyn OutcomePolicy>,
    pub(crate) classifier: Classifier,
    #[cfg(feature = "failsafe")]
    pub(crate) trip_rule: Option<TripRuleFactory>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(super) struct HalfOpenCounts {
    pub(super) admitted: u32,
    pub(super) totals: Totals,
}

/// What the mutex guards: the time-based window and everything outside the closed state's
/// hot path.
pub(super) struct Inner {
    /// The time-based window (a count-based breaker keeps its window in [`Hot`], lock-free).
    pub(super) time: Option<TimeWindow>,
    pub(super) half_open: HalfOpenCounts,
    pub(super) consecutive_opens: u32,
    pub(super) state_since: Instant,
    #[cfg(feature = "failsafe")]
    pub(super) rule: Option<Box<dyn TripRule>>,
}

pub(super) struct Handles {
    pub(super) success: Counter,
    pub(super) failure: Counter,
    pub(super) ignored: Counter,
    pub(super) cancelled: Counter,
    pub(super) rejections: Counter,
    pub(super) gauges: [Gauge; 6],
}

/// Keeps a value on cache lines of its own, so that writes to it do not evict the data next to
/// it from other cores' caches (and the other way round).
#[repr(align(64))]
pub(crate) struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What every call reads and (almost) nothing writes: the state word, written by transitions,
/// and the settings the hot path needs, copied out of the [`Spec`] so that a call touches one
/// line for them.
pub(super) struct Head {
    /// State and generation.
    pub(super) word: AtomicU64,
    /// The next latency sample replaces the average (set by a failover recovery probe).
    pub(super) replace_latency: AtomicBool,
    /// Calls read the clock (slow-call detection or a time-based window).
    pub(super) timed: bool,
    /// Slow-call detection is on.
    pub(super) detect: bool,
    /// Closed-state outcomes are recorded without the mutex: a count-based window and no
    /// failsafe trip rule.
    pub(super) lock_free: bool,
    pub(super) min_calls: u32,
    pub(super) failure_rate_threshold: f32,
    pub(super) slow_call_rate_threshold: f32,
    pub(super) slow_call_duration: Duration,
    pub(super) epoch: Instant,
}

/// What every recorded call writes: the count-based window's position and totals, and the
/// latency average, together on one line (a call that records touches it once).
pub(super) struct Hot {
    pub(super) count: Option<CountWindow>,
    /// The latency average in nanoseconds (`f64` bits), or [`NO_LATENCY`].
    pub(super) latency: AtomicU64,
}

/// [`Hot::latency`] before the first sample.
pub(super) const NO_LATENCY: u64 = u64::MAX;

/// One breaker's shared state.
pub(crate) struct Breaker {
    pub(super) head: CacheLine<Head>,
    pub(super) hot: CacheLine<Hot>,
    /// Nanoseconds since `epoch` at which the open state ends.
    pub(super) open_until: AtomicU64,
    pub(super) spec: Arc<Spec>,
    pub(super) label: Arc<str>,
    pub(super) handles: Handles,
    pub(super) not_permitted: CacheLine<AtomicU64>,
    pub(super) inner: CacheLine<Mutex<Inner>>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("label", &self.label)
            .field("state", &unpack(self.head.word.load(Ordering::Relaxed)).0)
            .finish_non_exhaustive()
    }
}

/// The latency EWMA weight of a new sample.
pub(super) const EWMA_ALPHA: f64 = 0.3;

impl Breaker {
    pub(crate) fn new(spec: Arc<Spec>, label: Arc<str>) -> Arc<Self> {
        let now = Instant::now();
        let c = &spec.config;
        let (count, time) = match c.sliding_window_type {
            SlidingWindowType::CountBased => {
                (Some(CountWindow::new(c.sliding_window_size, tag(0))), None)
            }
            SlidingWindowType::TimeBased => (None, Some(TimeWindow::new(c.sliding_window_size))),
        };
        let l = || label.to_string();
        let calls = |outcome: &'static str| metrics::counter!("deepseek_breaker_calls_total", "breaker" => l(), "outcome" => outcome);
        let handles = Handles {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            cancelled: calls("cancelled"),
            rejections: metrics::counter!("deepseek_breaker_rejections_total", "breaker" => l()),
            gauges: State::ALL.map(|s| {
                metrics::gauge!("deepseek_breaker_state", "breaker" => l(), "state" => s.as_str())
            }),
        };
        for (i, g) in handles.gauges.iter().enumerate() {
            g.set(if i == State::Closed.index() { 1.0 } else { 0.0 });
        }
        #[cfg(feature = "failsafe")]
        let rule = spec.trip_rule.as_ref().map(|f| f());
        #[cfg(feature = "failsafe")]
        let lock_free = count.is_some() && rule.is_none();
        #[cfg(not(feature = "failsafe"))]
        let lock_free = count.is_some();
        Arc::new(Breaker {
            head: CacheLine(Head {
                word: AtomicU64::new(pack(State::Closed, 0)),
                replace_latency: AtomicBool::new(false),
                timed: spec.timed,
                detect: c.slow_call_detection,
                lock_free,
                min_calls: spec.min_calls,
                failure_rate_threshold: c.failure_rate_threshold,
                slow_call_rate_threshold: c.slow_call_rate_threshold,
                slow_call_duration: c.slow_call_duration_threshold,
                epoch: now,
            }),
            hot: CacheLine(Hot {
                count,
                latency: AtomicU64::new(NO_LATENCY),
            }),
            open_until: AtomicU64::new(0),
            not_permitted: CacheLine(AtomicU64::new(0)),
            inner: CacheLine(Mutex::new(Inner {
                time,
                half_open: HalfOpenCounts::default(),
                consecutive_opens: 0,
                state_since: now,
                #[cfg(feature = "failsafe")]
                rule,
            })),
            spec,
            label,
            handles,
        })
    }

    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub(crate) fn classifier(&self) -> &Classifier {
        &self.spec.classifier
    }

    #[inline]
    pub(super) fn word(&self) -> (State, u64) {
        unpack(self.head.word.load(Ordering::Acquire))
    }

    #[inline]
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the window inconsistent in a way that
        // matters more than losing the breaker: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock, read only when calls are timed (else the epoch: count windows need no time).
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        if self.head.timed {
            Instant::now()
        } else {
            self.head.epoch
        }
    }

    pub(super) fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.head.epoch)
    }

    pub(super) fn open_deadline(&self) -> Instant {
        self.head.epoch + Duration::from_nanos(self.open_until.load(Ordering::Acquire))
    }

    /// The window's totals (the lock is held: a time-based window moves with the clock).
    pub(super) fn totals_locked(&self, inner: &mut Inner, now: Instant) -> Totals {
        match (&self.hot.count, inner.time.as_mut()) {
            (Some(w), _) => w.totals(),
            (None, Some(w)) => w.totals(self.since_epoch(now)),
            (None, None) => Totals::default(),
        }
    }

    /// Publishes a new state word; empties the window first when `fresh`. The lock is held.
    ///
    /// A count-based window is gated meanwhile and handed to the new generation before the
    /// word changes, so that no call admitted before can write into it afterwards.
    fn publish(&self, inner: &mut Inner, word: u64, fresh: bool) {
        match &self.hot.count {
            Some(w) => {
                let gate = w.gate(tag(unpack(word).1));
                if fresh {
                    gate.clear();
                }
                self.head.word.store(word, Ordering::Release);
            }
            None => {
                if fresh {
                    if let Some(w) = inner.time.as_mut() {
                        w.reset();
                    }
                }
                self.head.word.store(word, Ordering::Release);
            }
        }
    }

    /// Admits a call, or rejects it. The closed path is one atomic load and no lock; `owner`
    /// gives the stripe the permit will hold.
    #[inline]
    pub(crate) fn admit(
        self: &Arc<Self>,
        owner: impl FnOnce() -> Arc<Stripe>,
    ) -> Result<Permit, BreakerOpen> {
        let (state, generation) = self.word();
        match state {
            State::Closed | State::MetricsOnly => {
                Ok(Permit::new(owner(), generation, PermitKind::Window))
            }
            State::Disabled => Ok(Permit::new(owner(), generation, PermitKind::Untracked)),
            _ => self.acquire_slow(owner),
        }
    }

    #[cold]
    pub(super) fn acquire_slow(
        self: &Arc<Self>,
        owner: impl FnOnce() -> Arc<Stripe>,
    ) -> Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh_locked(&mut inner, now);
        let (state, generation) = self.word();
        let reject = |retry: Duration| {
            self.not_permitted.fetch_add(1, Ordering::Relaxed);
            self.handles.rejections.increment(1);
            Err(BreakerOpen::new(retry))
        };
        match state {
            State::Closed | State::MetricsOnly => {
                Ok(Permit::new(owner(), generation, PermitKind::Window))
            }
            State::Disabled => Ok(Permit::new(owner(), generation, PermitKind::Untracked)),
            State::Open => reject(self.open_deadline().saturating_duration_since(now)),
            State::ForcedOpen => reject(self.spec.config.wait_duration_in_open),
            State::HalfOpen => {
                if inner.half_open.admitted < self.spec.config.permitted_calls_in_half_open {
                    inner.half_open.admitted += 1;
                    Ok(Permit::new(owner(), generation, PermitKind::HalfOpen))
                } else {
                    reject(HALF_OPEN_BUSY_RETRY)
                }
            }
        }
    }

    /// Performs the transitions that time alone causes (open → half-open, and a half-open that
    /// waited too long → open).
    pub(super) fn refresh_locked(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let (state, _) = self.word();
        match state {
            State::Open if now >= self.open_deadline() => {
                self.transition(inner, State::HalfOpen, now, None);
            }
            State::HalfOpen => {
                if let Some(max) = self.spec.config.max_wait_in_half_open {
                    if now >= inner.state_since + max {
                        self.transition(inner, State::Open, now, None);
                    }
                }
            }
            _ => {}
        }
    }

    /// The current state, with time-driven transitions applied.
    #[inline]
    pub(crate) fn state(self: &Arc<Self>) -> State {
        let (state, _) = self.word();
        match state {
            State::Open | State::HalfOpen => self.state_slow(),
            s => s,
        }
    }

    #[cold]
    fn state_slow(self: &Arc<Self>) -> State {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh_locked(&mut inner, now);
        self.word().0
    }

    /// Applies time-driven transitions (the timer task calls this).
    pub(crate) fn refresh(self: &Arc<Self>) {
        let _ = self.state();
    }

    /// Moves to `to`. Must be called with the lock held (`inner` is the guarded data).
    pub(super) fn transition(
        self: &Arc<Self>,
        inner: &mut Inner,
        to: State,
        now: Instant,
        open_for: Option<Duration>,
    ) {
        let (from, generation) = self.word();
        if from == to && to != State::Open {
            return;
        }
        match to {
            State::Open => {
                let wait = match open_for {
                    Some(w) => w,
                    None => {
                        inner.consecutive_opens = inner.consecutive_opens.saturating_add(1);
                        self.spec.config.wait_for(inner.consecutive_opens)
                    }
                };
                let until = self.since_epoch(now) + wait;
                self.open_until.store(
                    until.as_nanos().min(u64::MAX as u128) as u64,
                    Ordering::Release,
                );
                if self.spec.config.automatic_transition {
                    self.spawn_timer(now + wait);
                }
            }
            State::HalfOpen => {
                inner.half_open = HalfOpenCounts::default();
                if let Some(max) = self.spec.config.max_wait_in_half_open {
                    if self.spec.config.automatic_transition {
                        self.spawn_timer(now + max);
                    }
                }
            }
            State::Closed => {
                inner.consecutive_opens = 0;
                #[cfg(feature = "failsafe")]
                if let Some(rule) = inner.rule.as_mut() {
                    rule.revived();
                }
            }
            State::Disabled | State::ForcedOpen | State::MetricsOnly => {}
        }
        inner.state_since = now;
        // Every state that records starts with an empty window; open and half-open keep it (for
        // the metrics) and record nothing in it.
        let fresh = matches!(
            to,
            State::Closed | State::Disabled | State::ForcedOpen | State::MetricsOnly
        );
        self.publish(inner, pack(to, generation.wrapping_add(1)), fresh);
        if from != to {
            self.handles.gauges[from.index()].set(0.0);
            self.handles.gauges[to.index()].set(1.0);
        }
        metrics::counter!(
            "deepseek_breaker_transitions_total",
            "breaker" => self.label.to_string(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        let totals = self.totals_locked(inner, now);
        // Opening is worth a warning; every other move is information.
        macro_rules! transition_event {
            ($level:expr) => {
                tracing::event!(
                    target: "tower_deepseek_breaker",
                    $level,
                    breaker = %self.label,
                    from = from.as_str(),
                    to = to.as_str(),
                    buffered_calls = totals.calls,
                    failed_calls = totals.failures,
                    slow_calls = totals.slow,
                    "circuit breaker changed state"
                )
            };
        }
        if matches!(to, State::Open | State::ForcedOpen) {
            transition_event!(tracing::Level::WARN);
        } else {
            transition_event!(tracing::Level::INFO);
        }
    }

    fn spawn_timer(self: &Arc<Self>, at: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Breaker> = Arc::downgrade(self);
        rt.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(b) = weak.upgrade() {
                b.refresh();
            }
        });
    }

    /// Moves to `to` on the handle's request.
    pub(crate) fn force(self: &Arc<Self>, to: State) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.transition(&mut inner, to, now, None);
    }

    pub(crate) fn reset(self: &Arc<Self>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let (from, generation) = self.word();
        if from == State::Closed {
            // Same generation: calls admitted before the reset record in the empty window.
            self.publish(&mut inner, pack(from, generation), true);
            inner.consecutive_opens = 0;
        } else {
            self.transition(&mut inner, State::Closed, now, None);
        }
        self.not_permitted.store(0, Ordering::Relaxed);
    }

    /// The latency EWMA, in seconds.
    pub(crate) fn latency_ewma(&self) -> Option<f64> {
        match self.hot.latency.load(Ordering::Relaxed) {
            NO_LATENCY => None,
            bits => Some(f64::from_bits(bits) / 1e9),
        }
    }

    /// Lets the next latency sample replace the EWMA (a recovery probe), keeping the current
    /// value until then.
    pub(crate) fn replace_latency_on_next_sample(&self) {
        self.head.replace_latency.store(true, Ordering::Relaxed);
    }

    /// When a rejected call may be tried again, if the breaker currently rejects.
    pub(crate) fn retry_after(self: &Arc<Self>) -> Option<Duration> {
        match self.state() {
            State::Open => Some(
                self.open_deadline()
                    .saturating_duration_since(Instant::now()),
            ),
            State::ForcedOpen => Some(self.spec.config.wait_duration_in_open),
            _ => None,
        }
    }
}
