//! The HTTP server histograms that [`crate::Telemetry`] keeps itself: fixed buckets of atomic counters,
//! rendered into the same Prometheus exposition as the rest of the registry.
//!
//! The `metrics` Prometheus exporter keeps every histogram sample until the next upkeep or scrape and only
//! then folds it into buckets, so its memory grows with the request rate (about 24 bytes per request between
//! upkeeps for the three HTTP histograms: tens of megabytes at 100k requests a second) and every request pays
//! twice, once to queue the sample and once to fold it. Counting into the bucket at record time costs a
//! bucket search and two relaxed atomic adds, and the memory of a series is fixed when it is created.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds of one histogram family, strictly increasing and finite (checked by the builder).
#[derive(Clone, Debug)]
pub(crate) struct Bounds(Box<[f64]>);

impl Bounds {
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self(bounds.into())
    }

    /// Index of the bucket `value` counts in: the first bound not below it, or the `+Inf` bucket.
    fn index(&self, value: f64) -> usize {
        self.0.partition_point(|bound| *bound < value)
    }
}

/// How the sum of a family is kept: integer units added atomically, scaled when rendered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SumUnit {
    /// Durations, summed in nanoseconds and rendered in seconds.
    Nanoseconds,
    /// Sizes, summed and rendered in bytes.
    Bytes,
}

impl SumUnit {
    fn render(self, sum: u64) -> f64 {
        match self {
            Self::Nanoseconds => sum as f64 / 1e9,
            Self::Bytes => sum as f64,
        }
    }
}

/// One series of a histogram family: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
#[derive(Debug)]
pub(crate) struct BucketHistogram {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl BucketHistogram {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        Self {
            counts: (0..=bounds.0.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `value` (in the family's rendered unit, for the bucket) and adds `units` to the sum.
    pub(crate) fn record(&self, bounds: &Bounds, value: f64, units: u64) {
        let index = bounds.index(value).min(self.counts.len() - 1);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// Writes the series' `_bucket`, `_sum` and `_count` lines. `labels` is the rendered label list
    /// without braces (empty for none).
    pub(crate) fn render(
        &self,
        out: &mut String,
        name: &str,
        labels: &str,
        bounds: &Bounds,
        unit: SumUnit,
    ) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let _ = match bounds.0.get(i) {
                Some(bound) => writeln!(
                    out,
                    "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
                ),
                None => writeln!(
                    out,
                    "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
                ),
            };
        }
        let sum = unit.render(self.sum.load(Ordering::Relaxed));
        let label_set = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{label_set} {sum}");
        let _ = writeln!(out, "{name}_count{label_set} {cumulative}");
    }
}

/// Appends `name="value"` to a rendered label list, escaping the value as the text format requires.
pub(crate) fn push_label(labels: &mut String, name: &str, value: &str) {
    if !labels.is_empty() {
        labels.push(',');
    }
    labels.push_str(name);
    labels.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => labels.push_str("\\\\"),
            '"' => labels.push_str("\\\""),
            '\n' => labels.push_str("\\n"),
            c => labels.push(c),
        }
    }
    labels.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_count_in_the_first_bucket_not_below_them() {
        let bounds = Bounds::new(&[0.0, 1.0, 5.0]);
        let h = BucketHistogram::new(&bounds);
        for v in [0.0, 0.5, 1.0, 1.5, 5.0, 7.0, 1e300] {
            h.record(&bounds, v, 1);
        }
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        // 0 → le 0; 0.5 and 1 → le 1; 1.5 and 5 → le 5; 7 and 1e300 → +Inf.
        assert_eq!(counts, [1, 2, 2, 2]);
    }

    #[test]
    fn renders_cumulative_buckets_sum_and_count() {
        let bounds = Bounds::new(&[0.005, 1.0]);
        let h = BucketHistogram::new(&bounds);
        h.record(&bounds, 0.002, 2_000_000);
        h.record(&bounds, 2.0, 2_000_000_000);
        let mut out = String::new();
        let mut labels = String::new();
        push_label(&mut labels, "http_route", "/a\"b\\c");
        h.render(
            &mut out,
            "d_seconds",
            &labels,
            &bounds,
            SumUnit::Nanoseconds,
        );
        assert_eq!(
            out,
            "d_seconds_bucket{http_route=\"/a\\\"b\\\\c\",le=\"0.005\"} 1\n\
             d_seconds_bucket{http_route=\"/a\\\"b\\\\c\",le=\"1\"} 1\n\
             d_seconds_bucket{http_route=\"/a\\\"b\\\\c\",le=\"+Inf\"} 2\n\
             d_seconds_sum{http_route=\"/a\\\"b\\\\c\"} 2.002\n\
             d_seconds_count{http_route=\"/a\\\"b\\\\c\"} 2\n"
        );
        let mut bare = String::new();
        h.render(&mut bare, "d", "", &bounds, SumUnit::Bytes);
        assert!(bare.contains("d_bucket{le=\"+Inf\"} 2\n"), "{bare}");
        assert!(bare.contains("d_count 2\n"), "{bare}");
    }
}
