//! The sliding windows: count-based (a ring of the last N outcomes, lock-free) and time-based
//! (one bucket per second over the last N seconds, behind the breaker's mutex). Both are O(1)
//! per recorded call and keep running totals, so reading the rates never walks the window.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// One recorded outcome, as the window stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

impl Sample {
    const fn bits(self) -> u8 {
        // bit 0: present, bit 1: failed, bit 2: slow
        1 | ((self.failed as u8) << 1) | ((self.slow as u8) << 2)
    }
}

/// Running totals of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    #[inline]
    fn add(&mut self, s: Sample) {
        self.calls += 1;
        self.failures += s.failed as u32;
        self.slow += s.slow as u32;
    }

    /// Adds the outcome a slot's bits stand for (nothing for an empty slot).
    #[cfg(test)]
    fn add_bits(&mut self, bits: u8) {
        if bits & 1 != 0 {
            self.calls += 1;
            self.failures += ((bits >> 1) & 1) as u32;
            self.slow += ((bits >> 2) & 1) as u32;
        }
    }

    /// Removes the outcome a slot's bits stand for (nothing for an empty slot).
    #[cfg(test)]
    fn sub_bits(&mut self, bits: u8) {
        if bits & 1 != 0 {
            self.calls -= 1;
            self.failures -= ((bits >> 1) & 1) as u32;
            self.slow -= ((bits >> 2) & 1) as u32;
        }
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    /// Failure rate in percent, if at least `min_calls` were recorded.
    #[inline]
    pub(crate) fn failure_rate(&self, min_calls: u32) -> Option<f32> {
        (self.calls >= min_calls && self.calls > 0)
            .then(|| self.failures as f32 * 100.0 / self.calls as f32)
    }

    /// Slow-call rate in percent, if at least `min_calls` were recorded.
    #[inline]
    pub(crate) fn slow_rate(&self, min_calls: u32) -> Option<f32> {
        (self.calls >= min_calls && self.calls > 0)
            .then(|| self.slow as f32 * 100.0 / self.calls as f32)
    }
}

/// The bits of [`CountWindow::seq`] that hold the position the next call writes.
const POS_MASK: u64 = 0xffff_ffff;
/// Where the generation tag sits in [`CountWindow::seq`].
const TAG_SHIFT: u32 = 32;
const TAG_MASK: u64 = 0xffff << TAG_SHIFT;
/// Set while a transition (or a reset) works on the window: no call claims a slot meanwhile.
const GATE: u64 = 1 << 63;

/// Width of one packed total: a window holds at most 1,000,000 calls, plus at most one call
/// per thread being written, well below 2^21.
const FIELD: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD) - 1;

/// The packed totals (calls, failures, slow) that a slot's bits stand for.
const PACKED: [u64; 8] = {
    let mut t = [0u64; 8];
    let mut b = 0;
    while b < 8 {
        if b & 1 != 0 {
            let bits = b as u64;
            t[b] = 1 | (((bits >> 1) & 1) << FIELD) | (((bits >> 2) & 1) << (2 * FIELD));
        }
        b += 1;
    }
    t
};

/// Spins briefly, then yields: for waits that last as long as a few instructions of another
/// thread, unless that thread was preempted.
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// What recording one outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The caller's generation has passed (a transition happened since it was admitted):
    /// nothing was recorded.
    Stale,
    /// Recorded; the slot it replaced held the same outcome, so no total changed.
    Unchanged,
    /// Recorded; `grew` when the window now holds one more call than before (it was not full).
    Changed { grew: bool },
}

/// The last `size` outcomes: a ring of one-byte slots and packed running totals, without a lock.
///
/// - A call claims the next position with one compare-and-swap on `seq`, which succeeds only
///   while `seq` carries the call's generation tag and no transition holds the gate: a call
///   admitted before a transition can never write into the window of the next state.
/// - If the slot already holds the same outcome (the steady state of a healthy upstream:
///   a success replacing a success), nothing else is written.
/// - Otherwise the call announces itself in `writers`, checks the gate again, adds its outcome
///   to the totals, swaps it into the slot, and subtracts what it replaced. Adding before
///   subtracting keeps every total at or above the sum of the slots: totals never underflow,
///   and while other calls are between their add and their subtract, the totals describe a
///   window of the last `size` calls plus those few (real, most recent) outcomes.
/// - A transition sets the gate with the new generation's tag, waits until `writers` is 0
///   (calls that are writing finish in a few instructions), clears the window if the new state
///   starts afresh, and opens the gate.
///
/// With one thread every total is exact after every call, as with a plain ring.
pub(crate) struct CountWindow {
    /// Bits 0-31: the position the next call writes (always below the size); bits 32-47: the
    /// tag of the generation whose calls may record; bit 63: the gate.
    seq: AtomicU64,
    /// Calls between their announcement and the end of their write.
    writers: AtomicU64,
    /// Packed totals: calls in bits 0-20, failures in 21-41, slow calls in 42-62.
    totals: AtomicU64,
    /// Per call: bit 0 present, bit 1 failed, bit 2 slow (0: empty).
    slots: Box<[AtomicU8]>,
}

impl fmt::Debug for CountWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountWindow")
            .field("size", &self.slots.len())
            .field("totals", &self.totals())
            .finish_non_exhaustive()
    }
}

impl CountWindow {
    /// An empty window of `size` calls, open to the calls of the generation tagged `tag`.
    pub(crate) fn new(size: u32, tag: u16) -> Self {
        Self {
            seq: AtomicU64::new(u64::from(tag) << TAG_SHIFT),
            writers: AtomicU64::new(0),
            totals: AtomicU64::new(0),
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Records `s` for a call of the generation tagged `tag`.
    #[inline]
    pub(crate) fn record(&self, s: Sample, tag: u16) -> Recorded {
        let bits = s.bits();
        let tag = u64::from(tag) << TAG_SHIFT;
        let len = self.slots.len() as u64;
        let mut spins = 0;
        let mut cur = self.seq.load(Ordering::Acquire);
        loop {
            if cur & TAG_MASK != tag {
                return Recorded::Stale;
            }
            if cur & GATE != 0 {
                // A reset of this very generation (the handle's) is under way: record after it,
                // as a call that finished a moment later would.
                backoff(&mut spins);
                cur = self.seq.load(Ordering::Acquire);
                continue;
            }
            let pos = cur & POS_MASK;
            let next = if pos + 1 >= len { 0 } else { pos + 1 };
            if let Err(v) = self.seq.compare_exchange_weak(
                cur,
                (cur & !POS_MASK) | next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                cur = v;
                continue;
            }
            let slot = &self.slots[pos as usize];
            if slot.load(Ordering::Acquire) == bits {
                return Recorded::Unchanged;
            }
            // Announce, then look at the gate again: either the transition sees us and waits,
            // or we see its gate and write nothing (both SeqCst, so one of the two happens).
            self.writers.fetch_add(1, Ordering::SeqCst);
            let now = self.seq.load(Ordering::SeqCst);
            if now & (GATE | TAG_MASK) != tag {
                self.writers.fetch_sub(1, Ordering::Release);
                if now & TAG_MASK != tag {
                    return Recorded::Stale;
                }
                // Same generation, gate set: claim again once the reset is over.
                cur = now;
                continue;
            }
            self.totals
                .fetch_add(PACKED[bits as usize], Ordering::AcqRel);
            let old = slot.swap(bits, Ordering::AcqRel);
            if old != 0 {
                self.totals
                    .fetch_sub(PACKED[(old & 7) as usize], Ordering::AcqRel);
            }
            self.writers.fetch_sub(1, Ordering::Release);
            return Recorded::Changed { grew: old & 1 == 0 };
        }
    }

    /// The running totals.
    #[inline]
    pub(crate) fn totals(&self) -> Totals {
        let t = self.totals.load(Ordering::Acquire);
        Totals {
            calls: (t & FIELD_MASK) as u32,
            failures: ((t >> FIELD) & FIELD_MASK) as u32,
            slow: ((t >> (2 * FIELD)) & FIELD_MASK) as u32,
        }
    }

    /// Closes the window to every call, hands it to the generation tagged `tag`, and waits for
    /// the calls that are writing. The window opens again when the guard is dropped.
    ///
    /// Only transitions call this, one at a time (under the breaker's mutex).
    pub(crate) fn gate(&self, tag: u16) -> Gate<'_> {
        let tag = u64::from(tag) << TAG_SHIFT;
        let _ = self
            .seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some((v & POS_MASK) | tag | GATE)
            });
        let mut spins = 0;
        while self.writers.load(Ordering::SeqCst) != 0 {
            backoff(&mut spins);
        }
        Gate { window: self }
    }

    /// The totals recomputed from the slots (tests: they must equal the running totals once
    /// no call is writing).
    #[cfg(test)]
    fn slot_totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.slots.iter() {
            t.add_bits(s.load(Ordering::Acquire));
        }
        t
    }
}

/// A closed window (see [`CountWindow::gate`]); opens it again when dropped.
pub(crate) struct Gate<'a> {
    window: &'a CountWindow,
}

impl Gate<'_> {
    /// Empties the window.
    pub(crate) fn clear(&self) {
        for s in self.window.slots.iter() {
            if s.load(Ordering::Relaxed) != 0 {
                s.store(0, Ordering::Relaxed);
            }
        }
        self.window.totals.store(0, Ordering::Relaxed);
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.window.seq.fetch_and(!GATE, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    totals: Totals,
}

/// The outcomes of the last `size` seconds, one bucket per second.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    /// The newest second any bucket may hold; buckets older than `now - size` are expired.
    current: u64,
    totals: Totals,
}

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self {
            buckets: vec![Bucket::default(); seconds.max(1) as usize].into_boxed_slice(),
            current: 0,
            totals: Totals::default(),
        }
    }

    /// Moves the window to `second` (seconds since the breaker's epoch), expiring old buckets.
    /// O(1) amortised: each bucket is cleared at most once per pass of the clock.
    fn advance(&mut self, second: u64) {
        if second <= self.current {
            return;
        }
        let n = self.buckets.len() as u64;
        if second - self.current >= n {
            for b in self.buckets.iter_mut() {
                *b = Bucket::default();
            }
            self.totals = Totals::default();
        } else {
            for s in self.current + 1..=second {
                let b = &mut self.buckets[(s % n) as usize];
                self.totals.sub(b.totals);
                *b = Bucket {
                    second: s,
                    totals: Totals::default(),
                };
            }
        }
        self.current = second;
    }

    #[inline]
    pub(crate) fn record(&mut self, s: Sample, since_epoch: Duration) {
        let second = since_epoch.as_secs();
        self.advance(second);
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(self.current % n) as usize];
        b.second = self.current;
        b.totals.add(s);
        self.totals.add(s);
    }

    #[inline]
    pub(crate) fn totals(&mut self, since_epoch: Duration) -> Totals {
        self.advance(since_epoch.as_secs());
        self.totals
    }

    pub(crate) fn reset(&mut self) {
        for b in self.buckets.iter_mut() {
            *b = Bucket::default();
        }
        self.totals = Totals::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample {
        failed: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failed: true,
        slow: false,
    };
    const SLOW: Sample = Sample {
        failed: false,
        slow: true,
    };

    #[test]
    fn count_window_keeps_exactly_the_last_n() {
        let w = CountWindow::new(10, 0);
        for i in 0..1000 {
            let r = w.record(OK, 0);
            // Only the first ten calls grow the window; then a success replaces a success.
            let expect = if i < 10 {
                Recorded::Changed { grew: true }
            } else {
                Recorded::Unchanged
            };
            assert_eq!(r, expect, "call {i}");
        }
        assert_eq!(w.totals().calls, 10);
        for i in 1..=10 {
            assert_eq!(w.record(FAIL, 0), Recorded::Changed { grew: false });
            assert_eq!(w.totals().failures, i);
            assert_eq!(w.totals().calls, 10);
        }
        w.record(SLOW, 0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 10,
                failures: 9,
                slow: 1
            }
        );
        assert_eq!(w.totals().failure_rate(10), Some(90.0));
        assert_eq!(w.totals().failure_rate(11), None);
        w.gate(0).clear();
        assert_eq!(w.totals(), Totals::default());
        assert_eq!(w.slot_totals(), Totals::default());
        assert_eq!(w.record(OK, 0), Recorded::Changed { grew: true });
    }

    /// The plain ring the lock-free window must behave exactly like, one call at a time.
    struct RefRing {
        ring: Vec<u8>,
        head: usize,
        totals: Totals,
    }

    impl RefRing {
        fn new(size: usize) -> Self {
            Self {
                ring: vec![0; size],
                head: 0,
                totals: Totals::default(),
            }
        }

        fn record(&mut self, s: Sample) -> Recorded {
            let old = std::mem::replace(&mut self.ring[self.head], s.bits());
            self.totals.sub_bits(old);
            self.totals.add(s);
            self.head = (self.head + 1) % self.ring.len();
            if old == s.bits() {
                Recorded::Unchanged
            } else {
                Recorded::Changed { grew: old & 1 == 0 }
            }
        }

        fn reset(&mut self) {
            self.ring.fill(0);
            self.totals = Totals::default();
        }
    }

    /// Sets its flag however the scope it lives in is left (a failed assertion included), so
    /// that threads waiting for the flag stop and a failure fails the test instead of hanging.
    struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn random_sample(rng: &mut fastrand::Rng) -> Sample {
        // Mostly successes, as in real traffic, so that runs of unchanged slots happen.
        Sample {
            failed: rng.u8(0..4) == 0,
            slow: rng.u8(0..8) == 0,
        }
    }

    #[test]
    fn count_window_matches_a_plain_ring_call_by_call() {
        let mut rng = fastrand::Rng::with_seed(11);
        for size in [1u32, 2, 3, 7, 10, 100, 1000] {
            let w = CountWindow::new(size, 0);
            let mut reference = RefRing::new(size as usize);
            let mut tag = 0u16;
            for i in 0..20_000 {
                match rng.u16(0..1000) {
                    // A transition that empties the window (to closed, disabled...), with a
                    // new generation.
                    0 => {
                        tag = tag.wrapping_add(1);
                        w.gate(tag).clear();
                        reference.reset();
                    }
                    // The handle's reset: same generation, empty window.
                    1 => {
                        w.gate(tag).clear();
                        reference.reset();
                    }
                    // A transition that keeps the window (to open).
                    2 => {
                        tag = tag.wrapping_add(1);
                        drop(w.gate(tag));
                    }
                    // A call admitted in an earlier generation records nothing.
                    3 => {
                        let stale = tag.wrapping_sub(rng.u16(1..=3));
                        assert_eq!(w.record(random_sample(&mut rng), stale), Recorded::Stale);
                    }
                    _ => {
                        let s = random_sample(&mut rng);
                        let got = w.record(s, tag);
                        let expect = reference.record(s);
                        assert_eq!(got, expect, "size {size}, call {i}");
                    }
                }
                assert_eq!(w.totals(), reference.totals, "size {size}, call {i}");
                assert_eq!(w.slot_totals(), reference.totals, "size {size}, call {i}");
            }
        }
    }

    #[test]
    fn count_window_totals_stay_consistent_across_threads() {
        const THREADS: usize = 4;
        const CALLS: usize = 20_000;
        for size in [1u32, 3, 64] {
            let w = CountWindow::new(size, 0);
            let done = std::sync::atomic::AtomicBool::new(false);
            let recorded = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let (w, recorded) = (&w, &recorded);
                    scope.spawn(move || {
                        let mut rng = fastrand::Rng::with_seed(t as u64);
                        for _ in 0..CALLS {
                            if w.record(random_sample(&mut rng), 0) != Recorded::Stale {
                                recorded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                // A reader that checks what an evaluation may ever see: never an underflow,
                // never more failures or slow calls than calls, never more calls than the
                // window plus the calls being written.
                let (w, done) = (&w, &done);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let t = w.totals();
                        assert!(t.calls <= size + THREADS as u32, "{t:?}");
                        assert!(t.failures <= t.calls && t.slow <= t.calls, "{t:?}");
                    }
                });
                let _done = SetOnDrop(done);
                // The handle resetting the window now and then, concurrently with the calls:
                // a few times at least, then until half the calls are recorded.
                let mut resets = 0;
                while resets < 20 || recorded.load(Ordering::Relaxed) < (THREADS * CALLS / 2) as u64
                {
                    w.gate(0).clear();
                    resets += 1;
                    std::thread::yield_now();
                }
            });
            // Quiescent: the running totals are exactly what the slots hold.
            assert_eq!(recorded.load(Ordering::Relaxed), (THREADS * CALLS) as u64);
            assert_eq!(w.totals(), w.slot_totals(), "size {size}");
            for _ in 0..size {
                w.record(FAIL, 0);
            }
            let full = Totals {
                calls: size,
                failures: size,
                slow: 0,
            };
            assert_eq!((w.totals(), w.slot_totals()), (full, full), "size {size}");
        }
    }

    #[test]
    fn a_transition_keeps_calls_of_the_old_generation_out_of_the_window() {
        const THREADS: u16 = 3;
        let w = CountWindow::new(16, 0);
        let generation = std::sync::atomic::AtomicU16::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (w, generation, stop) = (&w, &generation, &stop);
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(u64::from(t));
                    while !stop.load(Ordering::Relaxed) {
                        // Admitted now, in whatever generation is current...
                        let tag = generation.load(Ordering::SeqCst);
                        std::hint::spin_loop();
                        // ...and recorded a moment later, perhaps after a transition. A stale
                        // call marks its outcome "slow", which no current call ever records.
                        let current = generation.load(Ordering::SeqCst) == tag;
                        let s = Sample {
                            failed: rng.bool(),
                            slow: !current,
                        };
                        let _ = w.record(s, tag);
                    }
                });
            }
            let _stop = SetOnDrop(&stop);
            for g in 1..=2_000u16 {
                {
                    let gate = w.gate(g);
                    gate.clear();
                    generation.store(g, Ordering::SeqCst);
                }
                if g % 100 == 0 {
                    std::thread::yield_now();
                }
                // Nothing recorded with an older tag may be in the window after the gate:
                // the slow calls are exactly those of calls admitted before it.
                let t = w.totals();
                assert_eq!(t.slow, 0, "generation {g}: {t:?}");
            }
        });
        assert_eq!(w.totals(), w.slot_totals());
        assert_eq!(w.totals().slow, 0);
    }

    #[test]
    fn time_window_expires_whole_seconds() {
        let s = Duration::from_secs;
        let mut w = TimeWindow::new(3);
        w.record(FAIL, s(10));
        w.record(OK, Duration::from_millis(10_900));
        w.record(OK, s(11));
        assert_eq!(w.totals(s(12)).calls, 3);
        // second 10 falls out at second 13
        assert_eq!(w.totals(s(13)).calls, 1);
        assert_eq!(w.totals(s(13)).failures, 0);
        assert_eq!(w.totals(s(14)).calls, 0);
        w.record(FAIL, s(100));
        assert_eq!(w.totals(s(100)).failures, 1);
        assert_eq!(w.totals(s(1000)).calls, 0);
    }

    #[test]
    fn time_window_matches_a_naive_model() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut w = TimeWindow::new(5);
        let mut log: Vec<(u64, Sample)> = Vec::new();
        let mut t = 0u64; // ms
        for _ in 0..5000 {
            t += rng.u64(0..1500);
            let s = Sample {
                failed: rng.bool(),
                slow: rng.bool(),
            };
            w.record(s, Duration::from_millis(t));
            log.push((t / 1000, s));
            let now = t / 1000;
            let mut expect = Totals::default();
            for (sec, s) in &log {
                if *sec + 5 > now {
                    expect.add(*s);
                }
            }
            assert_eq!(w.totals(Duration::from_millis(t)), expect);
        }
    }
}
