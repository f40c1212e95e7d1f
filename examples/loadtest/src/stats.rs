//! What a run measures: latency histograms per endpoint class, a per-second timeline and errors by cause.
//! The report math (percentiles, rates, ratios) lives here too, so it is tested apart from any server.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram records, in microseconds (one minute); longer ones are clamped to it.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The kinds of request the load sends, each with its own latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /rooms/{room}/messages`: the first page of a room's history, what a page refresh loads.
    HistoryFirst,
    /// `GET /rooms/{room}/messages?before=ID`: an older page.
    HistoryOlder,
    /// `GET /rooms/{room}/messages/{id}`: one message.
    Message,
    /// `GET /rooms`: the room list.
    Rooms,
    /// `POST /rooms/{room}/messages`, first attempts and retries.
    Post,
}

impl Endpoint {
    /// Every class, in report order.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::HistoryFirst,
        Endpoint::HistoryOlder,
        Endpoint::Message,
        Endpoint::Rooms,
        Endpoint::Post,
    ];

    /// The class's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::HistoryFirst => "history first page",
            Endpoint::HistoryOlder => "history older page",
            Endpoint::Message => "single message",
            Endpoint::Rooms => "rooms list",
            Endpoint::Post => "post",
        }
    }

    /// True for the two history classes, whose hit rate is a target.
    pub fn is_history(self) -> bool {
        matches!(self, Endpoint::HistoryFirst | Endpoint::HistoryOlder)
    }

    fn index(self) -> usize {
        match self {
            Endpoint::HistoryFirst => 0,
            Endpoint::HistoryOlder => 1,
            Endpoint::Message => 2,
            Endpoint::Rooms => 3,
            Endpoint::Post => 4,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram from 1 µs to one minute with three significant digits.
    #[allow(clippy::expect_used)] // constant bounds the crate accepts (low >= 1, high >= 2 * low, 3 digits)
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one latency; anything over a minute counts as a minute.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_MICROS);
        // Within the bounds by the clamp above, so recording cannot fail.
        let _ = self.histogram.record(micros);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0..=1) in milliseconds, 0 when empty.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// p50, p90, p99, p99.9 and the maximum.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50_ms: self.quantile_ms(0.5),
            p90_ms: self.quantile_ms(0.9),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: if self.histogram.is_empty() {
                0.0
            } else {
                self.histogram.max() as f64 / 1000.0
            },
        }
    }

    /// Points of the latency-by-percentile curve, at `1 - 10^(-k/steps_per_decade)` for k up to 4 decades
    /// (99.99th percentile), as `(percentile, milliseconds)`; empty when nothing was recorded.
    pub fn curve(&self, steps_per_decade: u32) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        let steps = steps_per_decade.max(1);
        (0..=4 * steps)
            .map(|k| {
                let quantile = 1.0 - 10f64.powf(-(f64::from(k) / f64::from(steps)));
                (quantile * 100.0, self.quantile_ms(quantile))
            })
            .collect()
    }
}

/// Latency percentiles of one endpoint class, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

/// Latencies per endpoint class, and of cache hits apart.
#[derive(Clone, Debug, Default)]
pub struct ClassLatencies {
    classes: [Latencies; 5],
    hits: Latencies,
}

impl ClassLatencies {
    /// Records a request of `endpoint`; `hit` when the cache answered it.
    pub fn record(&mut self, endpoint: Endpoint, latency: Duration, hit: bool) {
        self.classes[endpoint.index()].record(latency);
        if hit {
            self.hits.record(latency);
        }
    }

    /// The histogram of one class.
    pub fn class(&self, endpoint: Endpoint) -> &Latencies {
        &self.classes[endpoint.index()]
    }

    /// The histogram of the responses the cache answered, every class together.
    pub fn hits(&self) -> &Latencies {
        &self.hits
    }

    /// Both history classes in one histogram.
    pub fn history(&self) -> Latencies {
        let mut all = self.class(Endpoint::HistoryFirst).clone();
        all.merge(self.class(Endpoint::HistoryOlder));
        all
    }

    /// Every class in one histogram.
    pub fn all(&self) -> Latencies {
        let mut all = Latencies::new();
        for class in &self.classes {
            all.merge(class);
        }
        all
    }
}

/// Counts per second of a run, for the charts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Requests completed (answered or failed) in each second since the start.
    pub completed: Vec<u64>,
    /// History responses in each second.
    pub history: Vec<u64>,
    /// History responses the cache answered in each second.
    pub history_hits: Vec<u64>,
    /// Errors in each second.
    pub errors: Vec<u64>,
    /// Documented refusals of posts in each second (chaos runs: `503` or `409` with `Retry-After`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<u64>,
    /// The slowest read completed in each second, ms (0 for seconds without reads).
    pub slowest_read_ms: Vec<f64>,
}

impl Timeline {
    /// Counts one completed request at `elapsed` since the start.
    pub fn record(&mut self, elapsed: Duration, endpoint: Endpoint, hit: bool, error: bool) {
        let second = Self::second(elapsed);
        for series in [
            &mut self.completed,
            &mut self.history,
            &mut self.history_hits,
            &mut self.errors,
        ] {
            if series.len() <= second {
                series.resize(second + 1, 0);
            }
        }
        self.completed[second] += 1;
        if endpoint.is_history() {
            self.history[second] += 1;
            if hit {
                self.history_hits[second] += 1;
            }
        }
        if error {
            self.errors[second] += 1;
        }
    }

    /// Counts one documented refusal completed at `elapsed`.
    pub fn record_refused(&mut self, elapsed: Duration) {
        let second = Self::second(elapsed);
        if self.refused.len() <= second {
            self.refused.resize(second + 1, 0);
        }
        self.refused[second] += 1;
    }

    /// Keeps `latency` if it is the slowest read completed in the second of `elapsed`.
    pub fn record_read_latency(&mut self, elapsed: Duration, latency: Duration) {
        let second = Self::second(elapsed);
        if self.slowest_read_ms.len() <= second {
            self.slowest_read_ms.resize(second + 1, 0.0);
        }
        let ms = latency.as_secs_f64() * 1000.0;
        if ms > self.slowest_read_ms[second] {
            self.slowest_read_ms[second] = ms;
        }
    }

    fn second(elapsed: Duration) -> usize {
        usize::try_from(elapsed.as_secs())
            .unwrap_or(usize::MAX)
            .min(3_600)
    }

    /// History hit rate of each second, `None` for seconds without history responses.
    pub fn hit_rates(&self) -> Vec<Option<f64>> {
        self.history
            .iter()
            .zip(&self.history_hits)
            .map(|(&total, &hits)| ratio(hits, total))
            .collect()
    }
}

/// Errors by cause; causes are short stable names such as `timeout` or `status 500`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    /// Counts one error of `cause`.
    pub fn add(&mut self, cause: &str) {
        self.add_n(cause, 1);
    }

    /// Counts `n` errors of `cause`.
    pub fn add_n(&mut self, cause: &str, n: u64) {
        if n > 0 {
            *self.0.entry(cause.to_owned()).or_insert(0) += n;
        }
    }

    /// Every error counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Errors) {
        for (cause, n) in &other.0 {
            self.add_n(cause, *n);
        }
    }
}

/// `part / whole`, `None` when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Requests per second over `elapsed`, 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// How much lower `improved` is than `baseline`, as a fraction of the baseline: 0.5 means half the latency.
/// `None` when the baseline is not positive.
pub fn reduction(baseline: f64, improved: f64) -> Option<f64> {
    (baseline > 0.0).then(|| 1.0 - improved / baseline)
}

/// How much higher `improved` is than `baseline`, as a fraction of the baseline: 0.5 means 1.5 times as much.
/// `None` when the baseline is not positive.
pub fn gain(baseline: f64, improved: f64) -> Option<f64> {
    (baseline > 0.0).then(|| improved / baseline - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_series() {
        let mut latencies = Latencies::new();
        for ms in 1..=1000u64 {
            latencies.record(Duration::from_millis(ms));
        }
        let p = latencies.percentiles();
        assert_eq!(p.count, 1000);
        // Three significant digits: within 0.1% of the exact order statistic.
        for (got, want) in [
            (p.p50_ms, 500.0),
            (p.p90_ms, 900.0),
            (p.p99_ms, 990.0),
            (p.p999_ms, 999.0),
        ] {
            assert!(
                (got - want).abs() <= want * 0.001 + 0.001,
                "{got} vs {want}"
            );
        }
        assert!((p.max_ms - 1000.0).abs() <= 1.0);
    }

    #[test]
    fn empty_histograms_report_zeros() {
        let latencies = Latencies::new();
        assert_eq!(latencies.percentiles(), Percentiles::default());
        assert!(latencies.curve(5).is_empty());
    }

    #[test]
    fn huge_and_zero_latencies_are_clamped_not_lost() {
        let mut latencies = Latencies::new();
        latencies.record(Duration::ZERO);
        latencies.record(Duration::from_secs(3_600));
        assert_eq!(latencies.count(), 2);
        assert!(latencies.percentiles().max_ms <= 60_000.0 * 1.001);
    }

    #[test]
    fn class_histograms_are_separate_and_hits_are_counted_apart() {
        let mut classes = ClassLatencies::default();
        classes.record(Endpoint::HistoryFirst, Duration::from_millis(1), true);
        classes.record(Endpoint::HistoryOlder, Duration::from_millis(2), false);
        classes.record(Endpoint::Post, Duration::from_millis(30), false);
        assert_eq!(classes.class(Endpoint::HistoryFirst).count(), 1);
        assert_eq!(classes.class(Endpoint::Message).count(), 0);
        assert_eq!(classes.hits().count(), 1);
        assert_eq!(classes.history().count(), 2);
        assert_eq!(classes.all().count(), 3);
    }

    #[test]
    fn the_curve_is_monotonic_and_has_one_point_per_step() {
        let mut latencies = Latencies::new();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..10_000 {
            latencies.record(Duration::from_micros(rng.u64(100..50_000)));
        }
        let curve = latencies.curve(5);
        assert_eq!(curve.len(), 21);
        assert_eq!(curve[0].0, 0.0);
        assert!((curve[20].0 - 99.99).abs() < 1e-9);
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
    }

    #[test]
    fn timeline_buckets_by_second() {
        let mut timeline = Timeline::default();
        timeline.record(
            Duration::from_millis(100),
            Endpoint::HistoryFirst,
            true,
            false,
        );
        timeline.record(
            Duration::from_millis(900),
            Endpoint::HistoryOlder,
            false,
            false,
        );
        timeline.record(Duration::from_millis(2_500), Endpoint::Post, false, true);
        assert_eq!(timeline.completed, vec![2, 0, 1]);
        assert_eq!(timeline.history, vec![2, 0, 0]);
        assert_eq!(timeline.history_hits, vec![1, 0, 0]);
        assert_eq!(timeline.errors, vec![0, 0, 1]);
        assert_eq!(timeline.hit_rates(), vec![Some(0.5), None, None]);
        timeline.record_refused(Duration::from_millis(1_500));
        assert_eq!(timeline.refused, vec![0, 1]);
        timeline.record_read_latency(Duration::from_millis(200), Duration::from_millis(3));
        timeline.record_read_latency(Duration::from_millis(300), Duration::from_millis(2));
        timeline.record_read_latency(Duration::from_millis(2_100), Duration::from_millis(9));
        assert_eq!(timeline.slowest_read_ms, vec![3.0, 0.0, 9.0]);
    }

    #[test]
    fn ratios_and_comparisons() {
        assert_eq!(ratio(1, 4), Some(0.25));
        assert_eq!(ratio(1, 0), None);
        assert_eq!(per_second(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(reduction(40.0, 10.0), Some(0.75));
        assert_eq!(reduction(0.0, 10.0), None);
        assert_eq!(gain(1000.0, 1500.0), Some(0.5));
        assert_eq!(gain(-1.0, 1.0), None);
    }

    #[test]
    fn errors_add_and_merge_by_cause() {
        let mut a = Errors::default();
        a.add("timeout");
        a.add_n("status 500", 2);
        a.add_n("ignored", 0);
        let mut b = Errors::default();
        b.add("timeout");
        a.merge(&b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.0.get("timeout"), Some(&2));
        assert!(!a.0.contains_key("ignored"));
    }
}
