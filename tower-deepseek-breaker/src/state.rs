//! The state machine shared by every clone of a breaker, and the handle to inspect it.
//!
//! Admission in the closed state is one atomic load (state and generation share one word).
//! With a count-based window, recording a closed-state outcome takes no lock either: one
//! compare-and-swap claims the window's next slot, and only a slot that changes (a failure, a
//! slow call, a success replacing a failure, a window not yet full) costs more (see
//! [`CountWindow`]). Everything else (half-open probes, the time-based window, a failsafe trip
//! rule) takes a `std::sync::Mutex`. Every transition happens under that mutex, bumps the
//! generation, and updates the gauges in the same critical section, so the exclusive state
//! gauge is never seen with two states at 1.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;
use tower_deepseek_core::classify::{Classifier, FailureClass};
use tower_deepseek_core::error::BreakerOpen;

use crate::config::{CircuitBreakerConfig, SlidingWindowType};
use crate::policy::{Accrual, OutcomePolicy};
use crate::window::{CountWindow, Recorded, Sample, TimeWindow, Totals};

/// How long a caller rejected because all half-open probes are taken is told to wait.
const HALF_OPEN_BUSY_RETRY: Duration = Duration::from_secs(1);

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls pass and are recorded; the rates decide when to open.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A fixed number of probes pass; their outcome closes or reopens the breaker.
    HalfOpen,
    /// Calls pass and nothing is recorded (set by the handle).
    Disabled,
    /// Every call is rejected until the handle changes the state.
    ForcedOpen,
    /// Calls pass and are recorded, but the breaker never opens (set by the handle).
    MetricsOnly,
}

impl State {
    /// Every state, in gauge order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
        State::MetricsOnly,
    ];

    /// A stable snake_case name: the `state` label of `deepseek_breaker_state`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }

    const fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::Disabled => 3,
            State::ForcedOpen => 4,
            State::MetricsOnly => 5,
        }
    }

    const fn from_index(i: u64) -> State {
        match i {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[inline]
fn unpack(word: u64) -> (State, u64) {
    (State::from_index(word & 0xff), word >> 8)
}

#[inline]
fn pack(state: State, generation: u64) -> u64 {
    (generation << 8) | state.index() as u64
}

/// A failsafe trip rule factory: one fresh policy per breaker.
#[cfg(feature = "failsafe")]
pub(crate) type TripRuleFactory = Arc<dyn Fn() -> Box<dyn TripRule> + Send + Sync>;

/// A failsafe policy, made object-safe and `Send`.
#[cfg(feature = "failsafe")]
pub(crate) trait TripRule: Send {
    fn record_success(&mut self);
    fn mark_dead_on_failure(&mut self) -> Option<Duration>;
    fn revived(&mut self);
}

#[cfg(feature = "failsafe")]
impl<P: failsafe::FailurePolicy + Send> TripRule for P {
    fn record_success(&mut self) {
        failsafe::FailurePolicy::record_success(self)
    }
    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        failsafe::FailurePolicy::mark_dead_on_failure(self)
    }
    fn revived(&mut self) {
        failsafe::FailurePolicy::revived(self)
    }
}

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
struct HalfOpenCounts {
    admitted: u32,
    totals: Totals,
}

/// What the mutex guards: the time-based window and everything outside the closed state's
/// hot path.
struct Inner {
    /// The time-based window (a count-based breaker keeps its window in [`Hot`], lock-free).
    time: Option<TimeWindow>,
    half_open: HalfOpenCounts,
    consecutive_opens: u32,
    state_since: Instant,
    #[cfg(feature = "failsafe")]
    rule: Option<Box<dyn TripRule>>,
}

struct Handles {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    cancelled: Counter,
    rejections: Counter,
    gauges: [Gauge; 6],
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
struct Head {
    /// State and generation.
    word: AtomicU64,
    /// The next latency sample replaces the average (set by a failover recovery probe).
    replace_latency: AtomicBool,
    /// Calls read the clock (slow-call detection or a time-based window).
    timed: bool,
    /// Slow-call detection is on.
    detect: bool,
    /// Closed-state outcomes are recorded without the mutex: a count-based window and no
    /// failsafe trip rule.
    lock_free: bool,
    min_calls: u32,
    failure_rate_threshold: f32,
    slow_call_rate_threshold: f32,
    slow_call_duration: Duration,
    epoch: Instant,
}

/// What every recorded call writes: the count-based window's position and totals, and the
/// latency average, together on one line (a call that records touches it once).
struct Hot {
    count: Option<CountWindow>,
    /// The latency average in nanoseconds (`f64` bits), or [`NO_LATENCY`].
    latency: AtomicU64,
}

/// [`Hot::latency`] before the first sample.
const NO_LATENCY: u64 = u64::MAX;

/// One breaker's shared state.
pub(crate) struct Breaker {
    head: CacheLine<Head>,
    hot: CacheLine<Hot>,
    /// Nanoseconds since `epoch` at which the open state ends.
    open_until: AtomicU64,
    spec: Arc<Spec>,
    label: Arc<str>,
    handles: Handles,
    not_permitted: CacheLine<AtomicU64>,
    inner: CacheLine<Mutex<Inner>>,
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
const EWMA_ALPHA: f64 = 0.3;

/// The tag of a generation in the count window (see [`CountWindow`]): its low 16 bits. A call
/// is checked against the full generation first; the tag only guards the moment between that
/// check and its write, during which 65,536 transitions cannot happen.
#[inline]
fn tag(generation: u64) -> u16 {
    generation as u16
}

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
    fn word(&self) -> (State, u64) {
        unpack(self.head.word.load(Ordering::Acquire))
    }

    #[inline]
    fn lock(&self) -> MutexGuard<'_, Inner> {
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

    fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.head.epoch)
    }

    fn open_deadline(&self) -> Instant {
        self.head.epoch + Duration::from_nanos(self.open_until.load(Ordering::Acquire))
    }

    /// The window's totals (the lock is held: a time-based window moves with the clock).
    fn totals_locked(&self, inner: &mut Inner, now: Instant) -> Totals {
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
    fn acquire_slow(
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
    fn refresh_locked(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
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
    fn on_outcome(
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

    fn on_cancel(self: &Arc<Self>, kind: PermitKind, generation: u64) {
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

    /// Moves to `to`. Must be called with the lock held (`inner` is the guarded data).
    fn transition(
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

    pub(crate) fn snapshot(self: &Arc<Self>) -> BreakerMetrics {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh_locked(&mut inner, now);
        let (state, _) = self.word();
        let (totals, min) = match state {
            State::HalfOpen => (
                inner.half_open.totals,
                self.spec.config.permitted_calls_in_half_open,
            ),
            _ => (self.totals_locked(&mut inner, now), self.head.min_calls),
        };
        let retry_after = match state {
            State::Open => Some(self.open_deadline().saturating_duration_since(now)),
            State::ForcedOpen => Some(self.spec.config.wait_duration_in_open),
            _ => None,
        };
        BreakerMetrics {
            state,
            failure_rate: totals.failure_rate(min),
            slow_call_rate: totals.slow_rate(min),
            buffered_calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
            latency: self.latency_ewma().map(Duration::from_secs_f64),
            retry_after,
            half_open_in_flight: if state == State::HalfOpen {
                inner.half_open.admitted
                    - inner.half_open.totals.calls.min(inner.half_open.admitted)
            } else {
                0
            },
        }
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
    breaker: Arc<Breaker>,
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
    fn new(stripe: Arc<Stripe>, generation: u64, kind: PermitKind) -> Self {
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

/// A snapshot of a breaker's state and counts, from [`BreakerHandle::metrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state.
    pub state: State,
    /// Failure rate in percent over the window (or the half-open probes), once the minimum
    /// number of calls is reached; `None` before.
    pub failure_rate: Option<f32>,
    /// Slow-call rate in percent, as above.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window (closed, metrics-only) or probes recorded (half-open).
    pub buffered_calls: u32,
    /// Failed calls among them.
    pub failed_calls: u32,
    /// Slow calls among them.
    pub slow_calls: u32,
    /// Calls rejected since the breaker was built or reset.
    pub not_permitted_calls: u64,
    /// Exponentially weighted moving average of the call latency (to the first content).
    pub latency: Option<Duration>,
    /// How long until a probe is admitted, while open or forced open.
    pub retry_after: Option<Duration>,
    /// Half-open probes admitted and not finished.
    pub half_open_in_flight: u32,
}

/// A cheap handle on one breaker: read its state and metrics, force or reset it.
///
/// Every clone (and every service the breaker guards) sees the same breaker.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.breaker.label)
            .field("state", &self.state())
            .finish()
    }
}

impl BreakerHandle {
    /// The breaker's name (for a keyed breaker, `name/key`), as in its metric labels.
    pub fn name(&self) -> &str {
        &self.breaker.label
    }

    /// The current state. Time-driven transitions (open → half-open) are applied on read, so
    /// this is exact even when no timer task runs.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// A snapshot of the rates and counts.
    pub fn metrics(&self) -> BreakerMetrics {
        self.breaker.snapshot()
    }

    /// How long until a probe may pass, while the breaker rejects calls.
    pub fn retry_after(&self) -> Option<Duration> {
        self.breaker.retry_after()
    }

    /// Moves to closed with an empty window.
    pub fn transition_to_closed(&self) {
        self.breaker.force(State::Closed);
    }

    /// Opens the breaker for the configured wait (then half-open as usual).
    pub fn transition_to_open(&self) {
        self.breaker.force(State::Open);
    }

    /// Moves to half-open: the next probes decide.
    pub fn transition_to_half_open(&self) {
        self.breaker.force(State::HalfOpen);
    }

    /// Rejects every call until another transition.
    pub fn force_open(&self) {
        self.breaker.force(State::ForcedOpen);
    }

    /// Lets every call pass, recording nothing, until another transition.
    pub fn disable(&self) {
        self.breaker.force(State::Disabled);
    }

    /// Records calls but never opens, until another transition.
    pub fn metrics_only(&self) {
        self.breaker.force(State::MetricsOnly);
    }

    /// Back to closed, forgetting the window, the growing wait and the rejection count.
    pub fn reset(&self) {
        self.breaker.reset();
    }
}
