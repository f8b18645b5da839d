//! The sliding windows: count-based (a ring of the last N outcomes) and time-based (one bucket
//! per second over the last N seconds). Both are O(1) per recorded call and keep running totals,
//! so reading the rates never walks the window.

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

    #[inline]
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

/// The last `size` outcomes.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[u8]>,
    head: usize,
    totals: Totals,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            ring: vec![0u8; size.max(1) as usize].into_boxed_slice(),
            head: 0,
            totals: Totals::default(),
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, s: Sample) {
        let old = std::mem::replace(&mut self.ring[self.head], s.bits());
        self.totals.sub_bits(old);
        self.totals.add(s);
        self.head += 1;
        if self.head == self.ring.len() {
            self.head = 0;
        }
    }

    #[inline]
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    pub(crate) fn reset(&mut self) {
        self.ring.fill(0);
        self.head = 0;
        self.totals = Totals::default();
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

/// Either kind of window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    #[inline]
    pub(crate) fn record(&mut self, s: Sample, since_epoch: Duration) {
        match self {
            Window::Count(w) => w.record(s),
            Window::Time(w) => w.record(s, since_epoch),
        }
    }

    #[inline]
    pub(crate) fn totals(&mut self, since_epoch: Duration) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(since_epoch),
        }
    }

    pub(crate) fn reset(&mut self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
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
        let mut w = CountWindow::new(10);
        for _ in 0..1000 {
            w.record(OK);
        }
        assert_eq!(w.totals().calls, 10);
        for i in 1..=10 {
            w.record(FAIL);
            assert_eq!(w.totals().failures, i);
            assert_eq!(w.totals().calls, 10);
        }
        w.record(SLOW);
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
        w.reset();
        assert_eq!(w.totals(), Totals::default());
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
