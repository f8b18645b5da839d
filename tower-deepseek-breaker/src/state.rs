//! The state machine shared by every clone of a breaker, and the handle to inspect it.
//!
//! Admission in the closed state is one atomic load (state and generation share one word);
//! recording an outcome takes a `std::sync::Mutex` for the few nanoseconds of a ring update.
//! Every transition happens under that mutex, bumps the generation, and updates the gauges in
//! the same critical section, so the exclusive state gauge is never seen with two states at 1.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;
use tower_deepseek_core::classify::{Classifier, FailureClass};
use tower_deepseek_core::error::BreakerOpen;

use crate::config::{CircuitBreakerConfig, SlidingWindowType};
use crate::policy::{Accrual, OutcomePolicy};
use crate::window::{CountWindow, Sample, TimeWindow, Totals, Window};

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

struct Inner {
    window: Window,
    half_open: HalfOpenCounts,
    consecutive_opens: u32,
    state_since: Instant,
    latency_ewma: Option<f64>,
    latency_replace_next: bool,
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

/// Keeps a value on its own cache line, so that writes elsewhere (the `Arc` counts, the
/// mutex) do not evict the state word that every admission reads.
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One breaker's shared state.
pub(crate) struct Breaker {
    /// State and generation; read on every admission, written only on transitions.
    word: CacheLine<AtomicU64>,
    /// Nanoseconds since `epoch` at which the open state ends.
    open_until: AtomicU64,
    epoch: Instant,
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
            .field("state", &unpack(self.word.load(Ordering::Relaxed)).0)
            .finish_non_exhaustive()
    }
}

/// The latency EWMA weight of a new sample.
const EWMA_ALPHA: f64 = 0.3;

impl Breaker {
    pub(crate) fn new(spec: Arc<Spec>, label: Arc<str>) -> Arc<Self> {
        let now = Instant::now();
        let window = match spec.config.sliding_window_type {
            SlidingWindowType::CountBased => {
                Window::Count(CountWindow::new(spec.config.sliding_window_size))
            }
            SlidingWindowType::TimeBased => {
                Window::Time(TimeWindow::new(spec.config.sliding_window_size))
            }
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
        Arc::new(Breaker {
            word: CacheLine(AtomicU64::new(pack(State::Closed, 0))),
            open_until: AtomicU64::new(0),
            not_permitted: CacheLine(AtomicU64::new(0)),
            epoch: now,
            inner: CacheLine(Mutex::new(Inner {
                window,
                half_open: HalfOpenCounts::default(),
                consecutive_opens: 0,
                state_since: now,
                latency_ewma: None,
                latency_replace_next: false,
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
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the window inconsistent in a way that
        // matters more than losing the breaker: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock, read only when calls are timed (else the epoch: count windows need no time).
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        if self.spec.timed {
            Instant::now()
        } else {
            self.epoch
        }
    }

    /// The window's notion of time: only a time-based window needs it, and computing an
    /// `Instant` difference is not free.
    #[inline]
    fn window_time(&self, now: Instant) -> Duration {
        if self.spec.config.sliding_window_type == SlidingWindowType::TimeBased {
            self.since_epoch(now)
        } else {
            Duration::ZERO
        }
    }

    fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    fn open_deadline(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.open_until.load(Ordering::Acquire))
    }

    /// Admits a call, or rejects it. The closed path is one atomic load and no lock.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let word = self.word.load(Ordering::Acquire);
        let (state, generation) = unpack(word);
        match state {
            State::Closed | State::MetricsOnly => {
                Ok(Permit::new(self.clone(), generation, PermitKind::Window))
            }
            State::Disabled => Ok(Permit::new(self.clone(), generation, PermitKind::Untracked)),
            _ => self.acquire_slow(),
        }
    }

    #[cold]
    fn acquire_slow(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh_locked(&mut inner, now);
        let (state, generation) = unpack(self.word.load(Ordering::Acquire));
        let reject = |retry: Duration| {
            self.not_permitted.fetch_add(1, Ordering::Relaxed);
            self.handles.rejections.increment(1);
            Err(BreakerOpen::new(retry))
        };
        match state {
            State::Closed | State::MetricsOnly => {
                Ok(Permit::new(self.clone(), generation, PermitKind::Window))
            }
            State::Disabled => Ok(Permit::new(self.clone(), generation, PermitKind::Untracked)),
            State::Open => reject(self.open_deadline().saturating_duration_since(now)),
            State::ForcedOpen => reject(self.spec.config.wait_duration_in_open),
            State::HalfOpen => {
                if inner.half_open.admitted < self.spec.config.permitted_calls_in_half_open {
                    inner.half_open.admitted += 1;
                    Ok(Permit::new(self.clone(), generation, PermitKind::HalfOpen))
                } else {
                    reject(HALF_OPEN_BUSY_RETRY)
                }
            }
        }
    }

    /// Performs the transitions that time alone causes (open → half-open, and a half-open that
    /// waited too long → open).
    fn refresh_locked(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let (state, _) = unpack(self.word.load(Ordering::Acquire));
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
    pub(crate) fn state(self: &Arc<Self>) -> State {
        let (state, _) = unpack(self.word.load(Ordering::Acquire));
        match state {
            State::Open | State::HalfOpen => {
                let now = Instant::now();
                let mut inner = self.lock();
                self.refresh_locked(&mut inner, now);
                unpack(self.word.load(Ordering::Acquire)).0
            }
            s => s,
        }
    }

    /// Applies time-driven transitions (the timer task calls this).
    pub(crate) fn refresh(self: &Arc<Self>) {
        let _ = self.state();
    }

    #[inline]
    fn evaluate_closed(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        let totals = inner.window.totals(self.window_time(now));
        let c = &self.spec.config;
        let min = self.spec.min_calls;
        let failure_rule_active = {
            #[cfg(feature = "failsafe")]
            {
                inner.rule.is_none()
            }
            #[cfg(not(feature = "failsafe"))]
            {
                true
            }
        };
        let failed = failure_rule_active
            && totals
                .failure_rate(min)
                .is_some_and(|r| r >= c.failure_rate_threshold);
        let slow = totals
            .slow_rate(min)
            .is_some_and(|r| r >= c.slow_call_rate_threshold);
        if failed || slow {
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
        let detect = self.spec.config.slow_call_detection;
        let slow = detect && latency > self.spec.config.slow_call_duration_threshold;
        let mut inner = self.lock();
        if detect && matches!(accrual, Accrual::Success | Accrual::Failure) {
            let sample = latency.as_secs_f64();
            inner.latency_ewma = Some(match inner.latency_ewma {
                Some(prev) if !inner.latency_replace_next => {
                    EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * prev
                }
                _ => sample,
            });
            inner.latency_replace_next = false;
        }
        let (state, current) = unpack(self.word.load(Ordering::Acquire));
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
                let since = self.window_time(now);
                inner.window.record(Sample { failed, slow }, since);
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
        let (state, current) = unpack(self.word.load(Ordering::Acquire));
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
        let (from, generation) = unpack(self.word.load(Ordering::Acquire));
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
                inner.window.reset();
                inner.consecutive_opens = 0;
                #[cfg(feature = "failsafe")]
                if let Some(rule) = inner.rule.as_mut() {
                    rule.revived();
                }
            }
            State::Disabled | State::ForcedOpen | State::MetricsOnly => {
                inner.window.reset();
            }
        }
        inner.state_since = now;
        self.word
            .store(pack(to, generation.wrapping_add(1)), Ordering::Release);
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
        let totals = inner.window.totals(self.window_time(now));
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
        let (from, _) = unpack(self.word.load(Ordering::Acquire));
        if from == State::Closed {
            inner.window.reset();
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
        let (state, _) = unpack(self.word.load(Ordering::Acquire));
        let (totals, min) = match state {
            State::HalfOpen => (
                inner.half_open.totals,
                self.spec.config.permitted_calls_in_half_open,
            ),
            _ => (
                inner.window.totals(self.window_time(now)),
                self.spec.min_calls,
            ),
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
            latency: inner.latency_ewma.map(Duration::from_secs_f64),
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
        self.lock().latency_ewma
    }

    /// Lets the next latency sample replace the EWMA (a recovery probe), keeping the current
    /// value until then.
    pub(crate) fn replace_latency_on_next_sample(&self) {
        self.lock().latency_replace_next = true;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitKind {
    /// Closed or metrics-only: recorded in the sliding window.
    Window,
    /// One of the half-open probes.
    HalfOpen,
    /// Disabled: nothing is recorded.
    Untracked,
}

/// The right to make one call. Recording an outcome consumes it; dropping it unrecorded (the
/// caller went away) records nothing and gives a half-open probe slot back.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    generation: u64,
    kind: PermitKind,
    start: Instant,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.label)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Permit {
    #[inline]
    fn new(breaker: Arc<Breaker>, generation: u64, kind: PermitKind) -> Self {
        let start = breaker.now();
        Self {
            breaker,
            generation,
            kind,
            start,
            done: false,
        }
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
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
        self.done = true;
        let accrual = match outcome {
            Ok(()) => Accrual::Success,
            Err(class) => self.breaker.spec.policy.accrue(class),
        };
        let latency = if self.breaker.spec.timed {
            first_content.saturating_duration_since(self.start)
        } else {
            Duration::ZERO
        };
        self.breaker
            .on_outcome(self.kind, self.generation, accrual, latency, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.on_cancel(self.kind, self.generation);
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
