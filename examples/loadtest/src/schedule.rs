//! Open-loop send times: when each request of a constant-arrival-rate run is due.
//! Latency is measured from these times, so a slow server cannot slow the arrivals down (no coordinated omission).

use std::time::Duration;

/// Hands out send times, as offsets from the start of a run, at a constant rate in requests per second.
///
/// An action that sends several requests at once (a burst of identical GETs) takes as many slots: the arrival
/// rate counts requests, not actions. Times never depend on when earlier requests completed.
///
/// ```
/// use std::time::Duration;
/// use chat_loadtest::Pacer;
///
/// let mut pacer = Pacer::new(1000.0).unwrap();
/// assert_eq!(pacer.next(1), Duration::ZERO);
/// assert_eq!(pacer.next(5), Duration::from_millis(1)); // a burst of five, due at 1 ms
/// assert_eq!(pacer.next(1), Duration::from_millis(6));
/// ```
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: f64,
    slots: u64,
}

impl Pacer {
    /// A pacer for `rate` requests per second; `None` unless the rate is positive and finite.
    pub fn new(rate: f64) -> Option<Self> {
        (rate.is_finite() && rate > 0.0).then_some(Self { rate, slots: 0 })
    }

    /// The arrival rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Requests scheduled so far.
    pub fn scheduled(&self) -> u64 {
        self.slots
    }

    /// The send time of the next action of `requests` requests, then reserves their slots.
    pub fn next(&mut self, requests: u64) -> Duration {
        let at = Self::offset(self.rate, self.slots);
        self.slots += requests;
        at
    }

    /// The time of the next action without reserving anything.
    pub fn peek(&self) -> Duration {
        Self::offset(self.rate, self.slots)
    }

    fn offset(rate: f64, slot: u64) -> Duration {
        // Computed from the slot number, not accumulated, so rounding never drifts over a long run.
        Duration::from_secs_f64(slot as f64 / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_rates_that_are_not_positive() {
        assert!(Pacer::new(0.0).is_none());
        assert!(Pacer::new(-1.0).is_none());
        assert!(Pacer::new(f64::INFINITY).is_none());
    }

    #[test]
    fn single_requests_are_evenly_spaced() {
        let Some(mut pacer) = Pacer::new(250.0) else {
            panic!("valid rate")
        };
        let times: Vec<Duration> = (0..5).map(|_| pacer.next(1)).collect();
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(4 * i)).collect();
        assert_eq!(times, expected);
        assert_eq!(pacer.scheduled(), 5);
    }

    #[test]
    fn bursts_take_one_slot_per_request() {
        let Some(mut pacer) = Pacer::new(100.0) else {
            panic!("valid rate")
        };
        assert_eq!(pacer.next(10), Duration::ZERO);
        assert_eq!(pacer.peek(), Duration::from_millis(100));
        assert_eq!(pacer.next(1), Duration::from_millis(100));
        assert_eq!(pacer.scheduled(), 11);
    }

    #[test]
    fn long_runs_do_not_drift() {
        let Some(mut pacer) = Pacer::new(3.0) else {
            panic!("valid rate")
        };
        let mut last = Duration::ZERO;
        for _ in 0..3_001 {
            last = pacer.next(1);
        }
        // 3000 requests at 3/s: the 3001st is due at exactly 1000 s.
        assert_eq!(last, Duration::from_secs(1000));
    }

    #[test]
    fn the_rate_over_any_second_is_the_configured_rate() {
        let Some(mut pacer) = Pacer::new(1000.0) else {
            panic!("valid rate")
        };
        let mut in_first_second = 0;
        loop {
            let at = pacer.next(3);
            if at >= Duration::from_secs(1) {
                break;
            }
            in_first_second += 3;
        }
        assert_eq!(
            in_first_second, 1002,
            "bursts of three, the last one straddling the second"
        );
    }
}
