//! The windows that judge the Closed state: a ring of the last N calls, time buckets, or a run of bad calls.
//!
//! All of them are plain data guarded by the breaker's short critical section; none allocates after creation.

use crate::config::{Config, SlidingWindow};

/// What one completed call contributes to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Sample {
    fn bits(self) -> u8 {
        u8::from(self.failure) | (u8::from(self.slow) << 1)
    }

    fn from_bits(bits: u8) -> Self {
        Self {
            failure: bits & 1 != 0,
            slow: bits & 2 != 0,
        }
    }
}

/// Counts over the calls a window currently holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    // u64: one wide time bucket on a busy path can see more than u32::MAX calls.
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Totals {
    fn add(&mut self, s: Sample) {
        self.calls += 1;
        self.failures += u64::from(s.failure);
        self.slow += u64::from(s.slow);
    }

    fn sub(&mut self, s: Sample) {
        self.calls -= 1;
        self.failures -= u64::from(s.failure);
        self.slow -= u64::from(s.slow);
    }

    /// Percentage of failed calls, 0 when empty.
    pub(crate) fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Percentage of slow calls, 0 when empty.
    pub(crate) fn slow_call_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }

    /// Whether these totals trip the configured rate thresholds (ignoring `minimum_calls`).
    pub(crate) fn exceeds(&self, config: &Config) -> bool {
        self.calls > 0
            && (self.failure_rate() >= config.failure_rate_threshold
                || (config.slow_call_duration.is_some()
                    && self.slow_call_rate() >= config.slow_call_rate_threshold))
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        // Exact below 2^53 calls, which no window reaches.
        part as f64 * 100.0 / whole as f64
    }
}

/// One window of the Closed state.
#[derive(Debug)]
pub(crate) enum Window {
    Count {
        ring: Box<[u8]>,
        next: usize,
        totals: Totals,
    },
    Time {
        buckets: Box<[Totals]>,
        width_nanos: u64,
        /// Number of the current bucket since the clock's base (`now / width_nanos`).
        current: u64,
        /// Its slot in `buckets` (`current % len`) and the end of its span, kept so that a call in the
        /// current bucket, nearly every call, costs no division.
        slot: usize,
        current_end: u64,
        totals: Totals,
    },
    Consecutive {
        run: u32,
        limit: u32,
        totals: Totals,
    },
}

impl Window {
    pub(crate) fn new(window: SlidingWindow) -> Self {
        match window {
            SlidingWindow::Count { size } => Window::Count {
                ring: vec![0u8; size as usize].into_boxed_slice(),
                next: 0,
                totals: Totals::default(),
            },
            SlidingWindow::Time {
                buckets,
                bucket_width,
            } => Window::Time {
                buckets: vec![Totals::default(); buckets as usize].into_boxed_slice(),
                width_nanos: Self::width(bucket_width),
                current: 0,
                slot: 0,
                current_end: Self::width(bucket_width),
                totals: Totals::default(),
            },
            SlidingWindow::Consecutive { failures } => Window::Consecutive {
                run: 0,
                limit: failures,
                totals: Totals::default(),
            },
        }
    }

    fn width(bucket_width: std::time::Duration) -> u64 {
        u64::try_from(bucket_width.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether recording needs the time of the call's end.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time { .. })
    }

    /// Empty the window, keeping its storage.
    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count { ring, next, totals } => {
                ring.fill(0);
                *next = 0;
                *totals = Totals::default();
            }
            Window::Time {
                buckets,
                width_nanos,
                current,
                slot,
                current_end,
                totals,
            } => {
                buckets.fill(Totals::default());
                *current = 0;
                *slot = 0;
                *current_end = *width_nanos;
                *totals = Totals::default();
            }
            Window::Consecutive { run, totals, .. } => {
                *run = 0;
                *totals = Totals::default();
            }
        }
    }

    /// Record one call that ended at `now_nanos` (only read by time windows).
    pub(crate) fn record(&mut self, sample: Sample, now_nanos: u64) {
        match self {
            Window::Count { ring, next, totals } => {
                let full = totals.calls == ring.len() as u64;
                let slot = &mut ring[*next];
                // The ring is full once calls == len; until then every slot ahead is still unused.
                if full {
                    totals.sub(Sample::from_bits(*slot & 0b11));
                }
                *slot = sample.bits();
                totals.add(sample);
                *next += 1;
                if *next == ring.len() {
                    *next = 0;
                }
            }
            Window::Time { .. } => {
                self.advance(now_nanos);
                if let Window::Time {
                    buckets,
                    slot,
                    totals,
                    ..
                } = self
                {
                    buckets[*slot].add(sample);
                    totals.add(sample);
                }
            }
            Window::Consecutive { run, totals, .. } => {
                if sample.failure || sample.slow {
                    *run = run.saturating_add(1);
                } else {
                    *run = 0;
                }
                totals.calls = totals.calls.saturating_add(1);
                totals.failures = totals.failures.saturating_add(u64::from(sample.failure));
                totals.slow = totals.slow.saturating_add(u64::from(sample.slow));
            }
        }
    }

    /// Drop the buckets of a time window that fell out of it by `now_nanos`.
    pub(crate) fn advance(&mut self, now_nanos: u64) {
        if let Window::Time {
            buckets,
            width_nanos,
            current,
            slot,
            current_end,
            totals,
        } = self
        {
            if now_nanos < *current_end {
                return;
            }
            let number = now_nanos / *width_nanos;
            if number <= *current {
                return;
            }
            let len = buckets.len() as u64;
            if number - *current >= len {
                buckets.fill(Totals::default());
                *totals = Totals::default();
            } else {
                for n in (*current + 1)..=number {
                    let b = &mut buckets[(n % len) as usize];
                    totals.calls -= b.calls;
                    totals.failures -= b.failures;
                    totals.slow -= b.slow;
                    *b = Totals::default();
                }
            }
            *current = number;
            *slot = (number % len) as usize;
            *current_end = number.saturating_add(1).saturating_mul(*width_nanos);
        }
    }

    /// Counts over the calls the window holds now (for a consecutive window: since the last reset).
    pub(crate) fn totals(&self) -> Totals {
        match self {
            Window::Count { totals, .. }
            | Window::Time { totals, .. }
            | Window::Consecutive { totals, .. } => *totals,
        }
    }

    /// Whether the window, just after a record, says the breaker must open.
    pub(crate) fn should_open(&self, config: &Config) -> bool {
        match self {
            Window::Consecutive { run, limit, .. } => run >= limit,
            _ => {
                let totals = self.totals();
                totals.calls >= u64::from(config.minimum_calls) && totals.exceeds(config)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_keeps_only_the_last_n() {
        let mut w = Window::new(SlidingWindow::Count { size: 3 });
        for s in [FAIL, FAIL, FAIL] {
            w.record(s, 0);
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 3,
                slow: 0
            }
        );
        w.record(OK, 0);
        w.record(SLOW, 0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(OK, 0);
        w.record(OK, 0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.record(OK, 0);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let sec = 1_000_000_000u64;
        let mut w = Window::new(SlidingWindow::Time {
            buckets: 3,
            bucket_width: Duration::from_secs(1),
        });
        w.record(FAIL, 0);
        w.record(FAIL, sec);
        w.record(OK, 2 * sec);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        w.advance(3 * sec);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        w.record(OK, 4 * sec + 5);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
        w.advance(100 * sec);
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn one_time_bucket_takes_more_calls_than_u32_holds() {
        // A wide bucket on a busy path sees billions of calls; the counts must neither wrap nor panic.
        let mut w = Window::new(SlidingWindow::Time {
            buckets: 1,
            bucket_width: Duration::from_secs(3600),
        });
        w.record(FAIL, 0);
        if let Window::Time {
            buckets, totals, ..
        } = &mut w
        {
            buckets[0].calls = u32::MAX.into();
            totals.calls = u32::MAX.into();
        }
        w.record(OK, 1);
        w.record(FAIL, 2);
        assert_eq!(w.totals().calls, u64::from(u32::MAX) + 2);
        assert_eq!(w.totals().failures, 2);
        w.advance(3_600_000_000_000);
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn consecutive_window_resets_on_success() {
        let config = crate::config::BreakerBuilder::default()
            .consecutive_failures(3)
            .validated()
            .unwrap();
        let mut w = Window::new(config.window);
        w.record(FAIL, 0);
        w.record(FAIL, 0);
        w.record(OK, 0);
        w.record(FAIL, 0);
        w.record(FAIL, 0);
        assert!(!w.should_open(&config));
        w.record(FAIL, 0);
        assert!(w.should_open(&config));
    }

    #[test]
    fn rates_respect_minimum_calls() {
        let config = crate::config::BreakerBuilder::default()
            .count_window(10)
            .minimum_calls(4)
            .validated()
            .unwrap();
        let mut w = Window::new(config.window);
        for _ in 0..3 {
            w.record(FAIL, 0);
        }
        assert!(!w.should_open(&config));
        w.record(OK, 0);
        assert!(w.should_open(&config), "3 of 4 failed is over 50%");
    }
}
