//! The report: per-variant figures side by side, a verdict per target with the measured figure, the verdict
//! table printed at the end, and `report.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Error;
use crate::chaos_report::ChaosReport;
use crate::check::{ColdBurst, HistoryCheck};
use crate::churn::ChurnInstance;
use crate::load::{BreakerChange, Freshness, LoadResult, OutageRecord, PostStats};
use crate::procs::CpuPlan;
use crate::runner::{MaxRate, Options};
use crate::stack::Variant;
use crate::stats::{Endpoint, Errors, Percentiles, Timeline, gain, ratio, reduction};

/// Targets of the issue, as numbers.
pub mod targets {
    /// Least history hit rate.
    pub const HIT_RATE: f64 = 0.90;
    /// Most p99 of cached responses, ms.
    pub const HIT_P99_MS: f64 = 100.0;
    /// Most peak resident memory per instance, MB (10^6 bytes).
    pub const RSS_MB: f64 = 200.0;
    /// Least sustained rate, requests per second.
    pub const RATE: f64 = 1000.0;
    /// Least latency reduction (p99 of history, same rate) against bare.
    pub const LATENCY_REDUCTION: f64 = 0.5;
    /// Least max-throughput gain against bare.
    pub const THROUGHPUT_GAIN: f64 = 0.5;
}

/// One instance of a variant.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceReport {
    /// Name.
    pub name: String,
    /// GETs sent to it in the main phase.
    pub reads: u64,
    /// SQLite read queries in the main phase (`/stats`).
    pub db_queries: u64,
    /// Duplicate read queries in the main phase (`/stats`).
    pub db_duplicate_queries: u64,
    /// Queries per GET.
    pub queries_per_read: Option<f64>,
    /// Cache hit rate of every route, from `/metrics`.
    pub metrics_hit_rate: Option<f64>,
    /// Breaker transitions, from `/metrics`.
    pub breaker_transitions_metrics: Option<f64>,
    /// Waits for another instance's cache fill, and how many gave up, from `/metrics`.
    pub leases_waited_gave_up: Option<(f64, f64)>,
    /// Peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// The churn phase, stacked variants only.
    pub churn: Option<ChurnInstance>,
}

impl InstanceReport {
    /// Peak resident memory in MB (10^6 bytes).
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss_mib * 1024.0 * 1024.0 / 1e6
    }

    /// The peak the memory verdict judges: the churn phase's when it ran (VmHWM at its end, so the whole run's),
    /// else the main phase's.
    pub fn verdict_rss_mb(&self) -> f64 {
        self.churn.as_ref().map_or_else(
            || self.peak_rss_mb(),
            |c| c.peak_rss_mb.max(self.peak_rss_mb()),
        )
    }
}

/// Everything measured for one variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantReport {
    /// The variant.
    pub variant: Variant,
    /// Offered rate of the main phase.
    pub rate: f64,
    /// Seconds from the start of the main phase to its last answer.
    pub elapsed_s: f64,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests answered.
    pub answered: u64,
    /// Answers per second.
    pub throughput: f64,
    /// Latency percentiles per class.
    pub latency: BTreeMap<Endpoint, Percentiles>,
    /// Both history classes together.
    pub history_latency: Percentiles,
    /// Responses the cache answered, every class.
    pub hit_latency: Percentiles,
    /// Every class together.
    pub all_latency: Percentiles,
    /// Latency by percentile of the history classes: `(percentile, ms)`.
    pub history_curve: Vec<(f64, f64)>,
    /// History hit rate from `Cache-Status`.
    pub history_hit_rate: Option<f64>,
    /// Cache hit rate of every route from `/metrics`, all instances.
    pub metrics_hit_rate: Option<f64>,
    /// Instances.
    pub instances: Vec<InstanceReport>,
    /// SQLite queries per GET, all instances.
    pub queries_per_read: Option<f64>,
    /// Duplicate queries during the main phase, all instances.
    pub db_duplicate_queries: u64,
    /// The cold-URL burst before the main phase.
    pub cold_burst: Option<ColdBurst>,
    /// Errors by cause.
    pub errors: Errors,
    /// `503` on posts explained by the outage.
    pub explained_unavailable: u64,
    /// `5xx` answers the outage does not explain.
    pub unexplained_5xx: u64,
    /// Posts.
    pub posts: PostStats,
    /// Freshness checks.
    pub freshness: Freshness,
    /// Final history check.
    pub history_check: HistoryCheck,
    /// Breaker changes seen on `/stats`.
    pub breaker_changes: Vec<BreakerChange>,
    /// The outage.
    pub outage: Option<OutageRecord>,
    /// Max-rate search.
    pub max_rate: Option<MaxRate>,
    /// Counts per second.
    pub timeline: Timeline,
    /// Correctness problems, empty when every check passed.
    pub problems: Vec<String>,
    /// The machine's one-minute load average before and after the main phase.
    pub load_average: (Option<f64>, Option<f64>),
    /// CPU cores that processes other than the run's own kept busy during the main phase, on average.
    pub other_cpu_cores: Option<f64>,
}

impl VariantReport {
    /// Builds the report of a variant from its main phase and checks.
    pub fn new(
        variant: Variant,
        main: LoadResult,
        history_check: HistoryCheck,
        cold_burst: Option<ColdBurst>,
        instances: Vec<InstanceReport>,
        max_rate: Option<MaxRate>,
    ) -> Self {
        let latency = Endpoint::ALL
            .iter()
            .map(|&e| (e, main.latencies.class(e).percentiles()))
            .collect();
        let history = main.latencies.history();
        let unexplained_5xx = main
            .errors
            .0
            .iter()
            .filter(|(cause, _)| cause.contains("status 5"))
            .map(|(_, n)| n)
            .sum();
        let reads: u64 = instances.iter().map(|i| i.reads).sum();
        let queries: u64 = instances.iter().map(|i| i.db_queries).sum();
        let metrics_hit_rate = {
            let rates: Vec<(f64, u64)> = instances
                .iter()
                .filter_map(|i| i.metrics_hit_rate.map(|r| (r, i.reads)))
                .collect();
            let weight: u64 = rates.iter().map(|(_, w)| w).sum();
            (!rates.is_empty() && weight > 0)
                .then(|| rates.iter().map(|(r, w)| r * *w as f64).sum::<f64>() / weight as f64)
        };
        let mut report = Self {
            variant,
            rate: main.plan.rate,
            elapsed_s: main.elapsed.as_secs_f64(),
            scheduled: main.scheduled,
            answered: main.answered,
            throughput: main.throughput(),
            latency,
            history_latency: history.percentiles(),
            hit_latency: main.latencies.hits().percentiles(),
            all_latency: main.latencies.all().percentiles(),
            history_curve: history.curve(10),
            history_hit_rate: main.history_hit_rate(),
            metrics_hit_rate,
            queries_per_read: ratio(queries, reads),
            db_duplicate_queries: instances.iter().map(|i| i.db_duplicate_queries).sum(),
            instances,
            cold_burst,
            errors: main.errors,
            explained_unavailable: main.posts.unavailable,
            unexplained_5xx,
            posts: main.posts,
            freshness: main.freshness,
            history_check,
            breaker_changes: main.breaker,
            outage: main.outage,
            max_rate,
            timeline: main.timeline,
            problems: Vec::new(),
            load_average: (None, None),
            other_cpu_cores: None,
        };
        report.problems = report.find_problems();
        report
    }

    /// Correctness problems: lost, twice stored or stale posts, unexplained `5xx`, uncoalesced bursts.
    pub fn find_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let h = &self.history_check;
        if h.lost > 0 {
            problems.push(format!(
                "{} acknowledged posts missing from the history",
                h.lost
            ));
        }
        if h.stored_twice > 0 {
            let why = if self.variant.is_stacked() {
                ""
            } else {
                " (expected: bare has no Idempotency-Key support)"
            };
            problems.push(format!(
                "{} posts stored more than once{why}",
                h.stored_twice
            ));
        }
        if self.freshness.stale > 0 {
            problems.push(format!(
                "{} of {} reads served a first page without a post acknowledged over {} ms earlier",
                self.freshness.stale,
                self.freshness.checks,
                crate::load::FRESHNESS_BOUND.as_millis()
            ));
        }
        if self.unexplained_5xx > 0 {
            problems.push(format!(
                "{} 5xx answers the outage does not explain",
                self.unexplained_5xx
            ));
        }
        if self.variant.is_stacked() {
            if self.db_duplicate_queries > 0 {
                problems.push(format!(
                    "{} SQLite queries ran while an identical one was running",
                    self.db_duplicate_queries
                ));
            }
            if let Some(cold) = &self.cold_burst
                && !cold.coalesced()
            {
                problems.push(format!(
                    "a burst of {} identical GETs made {} queries (one GET makes {})",
                    cold.requests, cold.burst_queries, cold.single_queries
                ));
            }
        }
        if h.failed.total() > 0 || self.freshness.failed.total() > 0 {
            problems.push(format!(
                "checks without an answer: history {:?}, freshness {:?}",
                h.failed.0, self.freshness.failed.0
            ));
        }
        problems
    }

    /// Highest peak memory of its instances, MB: the churn phase's when it ran.
    pub fn peak_rss_mb(&self) -> f64 {
        self.instances
            .iter()
            .map(InstanceReport::verdict_rss_mb)
            .fold(0.0, f64::max)
    }

    /// Sustained rate from the max-rate search.
    pub fn max_sustained(&self) -> Option<f64> {
        self.max_rate.as_ref().and_then(|m| m.sustained)
    }
}

/// History p99 of both variants at each rate both max-rate searches tried, by rate: `(rate, a, b)` in ms.
pub fn same_rate_steps(a: &VariantReport, b: &VariantReport) -> Vec<(f64, f64, f64)> {
    let (Some(ma), Some(mb)) = (&a.max_rate, &b.max_rate) else {
        return Vec::new();
    };
    let mut common: Vec<(f64, f64, f64)> = ma
        .steps
        .iter()
        .filter(|sa| sa.sustained)
        .filter_map(|sa| {
            mb.steps
                .iter()
                .find(|sb| sb.sustained && sb.rate == sa.rate)
                .map(|sb| (sa.rate, sa.history_p99_ms, sb.history_p99_ms))
        })
        .collect();
    common.sort_by(|x, y| x.0.total_cmp(&y.0));
    common
}

/// The outcome of one target.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The target as the issue states it.
    pub target: String,
    /// The measured figure.
    pub measured: String,
    /// Met, missed, or not measured (`None`).
    pub met: Option<bool>,
}

impl Verdict {
    /// A verdict on `target`.
    pub fn new(target: &str, measured: String, met: Option<bool>) -> Self {
        Self {
            target: target.to_owned(),
            measured,
            met,
        }
    }

    /// `met`, `MISSED` or `not measured`.
    pub fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Seconds since the Unix epoch at the start.
    pub started_unix_s: u64,
    /// CPUs of the machine (before the load test pinned itself).
    pub cpus: usize,
    /// Pinning used.
    pub pinning: CpuPlan,
    /// Options of the run.
    pub options: Options,
    /// Whether the two-instance variant ran.
    pub two_instances: bool,
    /// Why it did or did not.
    pub two_instances_note: String,
    /// Variants in the order run.
    pub variants: Vec<VariantReport>,
    /// Verdicts, filled by [`Report::finish`]: the targets, or in a chaos run its guarantees.
    pub verdicts: Vec<Verdict>,
    /// The faults and what they did, in a chaos run.
    pub chaos: Option<ChaosReport>,
}

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// `12.5% lower` for 0.125, `3.0% higher` for -0.03 (with `lower`/`higher` as `better`/`worse`).
fn change(value: Option<f64>, better: &str, worse: &str) -> String {
    match value {
        Some(v) if v >= 0.0 => format!("{:.1}% {better}", v * 100.0),
        Some(v) => format!("{:.1}% {worse}", -v * 100.0),
        None => "n/a".to_owned(),
    }
}

fn num(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// An empty report for `options`.
    pub fn new(options: &Options) -> Self {
        let two = options.variants.contains(&Variant::Stacked2);
        Self {
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpus: options.cpus.available(),
            pinning: options.cpus,
            options: options.clone(),
            two_instances: two || options.chaos,
            two_instances_note: if options.chaos {
                "two stacked instances on one SQLite file shared a redis-server started by the load test, \
                 reaching it and the moderation service through fault proxies"
                    .to_owned()
            } else if two {
                "two stacked instances on one SQLite file shared a redis-server started by the load test".to_owned()
            } else if crate::procs::find_on_path("redis-server").is_none() {
                "not run: redis-server is not on PATH".to_owned()
            } else {
                "not run: not among the variants asked for".to_owned()
            },
            variants: Vec::new(),
            verdicts: Vec::new(),
            chaos: None,
        }
    }

    /// The report of `variant`, if it ran.
    pub fn variant(&self, variant: Variant) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.variant == variant)
    }

    /// Computes the verdicts from the variants.
    pub fn finish(&mut self) {
        self.verdicts = match &self.chaos {
            Some(chaos) => chaos.guarantees(),
            None => self.compute_verdicts(),
        };
    }

    /// In a chaos run, the guarantees that broke; always empty otherwise (missed targets are not failures).
    pub fn broken_guarantees(&self) -> Vec<&Verdict> {
        if self.chaos.is_none() {
            return Vec::new();
        }
        self.verdicts
            .iter()
            .filter(|v| v.met != Some(true))
            .collect()
    }

    fn compute_verdicts(&self) -> Vec<Verdict> {
        use targets::*;
        let bare = self.variant(Variant::Bare);
        let stacked = self
            .variant(Variant::Stacked)
            .or_else(|| self.variant(Variant::Stacked2));
        let two = self.variant(Variant::Stacked2);
        let name = stacked.map_or("stacked", |s| s.variant.name());
        let also_two = |f: &dyn Fn(&VariantReport) -> String| {
            two.filter(|_| stacked.is_some_and(|s| s.variant != Variant::Stacked2))
                .map_or_else(String::new, |t| format!("; stacked-2 {}", f(t)))
        };
        let mut verdicts = Vec::new();

        let hit = stacked.and_then(|s| s.history_hit_rate);
        verdicts.push(Verdict::new(
            "history hit rate >= 90%",
            format!(
                "{name} {} (Cache-Status), {} all routes (/metrics), origin avoided for {} of GETs (SQLite \
                 queries per GET; coalesced requests count as misses in Cache-Status){}",
                pct(hit),
                pct(stacked.and_then(|s| s.metrics_hit_rate)),
                pct(stacked.and_then(|s| s.queries_per_read).map(|q| 1.0 - q)),
                also_two(&|t| pct(t.history_hit_rate)),
            ),
            hit.map(|h| h >= HIT_RATE),
        ));

        let hits = stacked.map(|s| s.hit_latency).filter(|p| p.count > 0);
        verdicts.push(Verdict::new(
            "cached responses p99 < 100 ms",
            format!(
                "{name} p99 {} ms over {} hits{}",
                num(hits.map(|p| p.p99_ms), 2),
                hits.map_or(0, |p| p.count),
                also_two(&|t| format!("p99 {:.2} ms", t.hit_latency.p99_ms)),
            ),
            hits.map(|p| p.p99_ms < HIT_P99_MS),
        ));

        let stacked_variants: Vec<&VariantReport> = self
            .variants
            .iter()
            .filter(|v| v.variant.is_stacked())
            .collect();
        let duplicates: u64 = stacked_variants
            .iter()
            .map(|v| v.db_duplicate_queries)
            .sum();
        let bursts: Vec<&ColdBurst> = stacked_variants
            .iter()
            .filter_map(|v| v.cold_burst.as_ref())
            .collect();
        let per_variant = |v: &VariantReport| {
            format!(
                "{}: {} duplicate queries under load, cold burst of {}",
                v.variant,
                v.db_duplicate_queries,
                v.cold_burst.as_ref().map_or_else(
                    || "n/a".to_owned(),
                    |b| format!("{} GETs -> {} queries", b.requests, b.burst_queries)
                )
            )
        };
        verdicts.push(Verdict::new(
            "0 duplicate origin queries for identical concurrent requests",
            self.variants
                .iter()
                .map(per_variant)
                .collect::<Vec<_>>()
                .join("; "),
            (!stacked_variants.is_empty())
                .then(|| duplicates == 0 && bursts.iter().all(|b| b.coalesced())),
        ));

        let rss: Vec<String> = self
            .variants
            .iter()
            .flat_map(|v| {
                v.instances.iter().map(move |i| match &i.churn {
                    Some(c) => format!(
                        "{} {}: churn peak {:.0} MB, final {:.0} MB ({} at {:.0} req/s)",
                        v.variant,
                        i.name,
                        i.verdict_rss_mb(),
                        c.final_rss_mb,
                        if c.still_growing {
                            "still growing"
                        } else {
                            "level"
                        },
                        c.rate
                    ),
                    None => format!("{} {}: {:.0} MB", v.variant, i.name, i.peak_rss_mb()),
                })
            })
            .collect();
        let worst_stacked = stacked_variants
            .iter()
            .map(|v| v.peak_rss_mb())
            .fold(0.0, f64::max);
        let churned = stacked_variants
            .iter()
            .flat_map(|v| &v.instances)
            .filter_map(|i| i.churn.as_ref())
            .collect::<Vec<_>>();
        let level = churned.iter().all(|c| !c.still_growing);
        verdicts.push(Verdict::new(
            if churned.is_empty() {
                "peak RSS < 200 MB per instance"
            } else {
                "peak RSS < 200 MB per instance (churn phase), level after its plateau"
            },
            rss.join(", "),
            (!stacked_variants.is_empty()).then_some(worst_stacked < RSS_MB && level),
        ));

        let sustained = stacked.and_then(VariantReport::max_sustained);
        verdicts.push(Verdict::new(
            ">= 1000 requests/s sustained",
            format!(
                "{name} max {} req/s within p99 {} ms; main phase {:.0} req/s offered, {:.0} answered/s{}",
                num(sustained, 0),
                num(stacked.and_then(|s| s.max_rate.as_ref()).map(|m| m.p99_bound_ms), 0),
                stacked.map_or(0.0, |s| s.rate),
                stacked.map_or(0.0, |s| s.throughput),
                also_two(&|t| format!("max {} req/s", num(t.max_sustained(), 0))),
            ),
            sustained.map(|r| r >= RATE),
        ));

        // Judged where bare is at its limit, the load under which the service lags; at the main phase's
        // rate both answer at the machine's floor (timer and wake-up latency), which is reported too.
        // Without a rate search there is no such step, and the target is not measured.
        let bare_p99 = bare.map(|b| b.history_latency.p99_ms);
        let stacked_p99 = stacked.map(|s| s.history_latency.p99_ms);
        let main_gain = bare_p99.zip(stacked_p99).and_then(|(b, s)| reduction(b, s));
        let at_limit = bare.zip(stacked).and_then(|(b, s)| {
            let limit = b.max_sustained()?;
            same_rate_steps(b, s)
                .into_iter()
                .find(|(rate, _, _)| *rate == limit)
        });
        let limit_gain = at_limit.and_then(|(_, b, s)| reduction(b, s));
        verdicts.push(Verdict::new(
            ">= 50% better latency than bare (history p99 at the same rate: bare's highest sustained rate)",
            format!(
                "{}at {:.0} req/s (main phase): bare {} ms, {name} {} ms: {} (p50 {})",
                at_limit.map_or_else(String::new, |(rate, b, s)| format!(
                    "at {rate:.0} req/s (bare's highest sustained rate): bare {b:.2} ms, {name} {s:.2} ms: {}; ",
                    change(reduction(b, s), "lower", "higher")
                )),
                stacked.map_or(0.0, |s| s.rate),
                num(bare_p99, 2),
                num(stacked_p99, 2),
                change(main_gain, "lower", "higher"),
                change(
                    bare.zip(stacked).and_then(|(b, s)| reduction(
                        b.history_latency.p50_ms,
                        s.history_latency.p50_ms
                    )),
                    "lower",
                    "higher"
                ),
            ),
            limit_gain.map(|g| g >= LATENCY_REDUCTION),
        ));

        let bare_max = bare.and_then(VariantReport::max_sustained);
        let throughput_gain = bare_max.zip(sustained).and_then(|(b, s)| gain(b, s));
        verdicts.push(Verdict::new(
            ">= 50% better max throughput than bare",
            format!(
                "bare {} req/s, {name} {} req/s: {}",
                num(bare_max, 0),
                num(sustained, 0),
                change(throughput_gain, "higher", "lower")
            ),
            throughput_gain.map(|g| g >= THROUGHPUT_GAIN),
        ));

        let problems: Vec<String> = stacked_variants
            .iter()
            .flat_map(|v| {
                v.problems
                    .iter()
                    .map(move |p| format!("{}: {p}", v.variant))
            })
            .collect();
        let checked: u64 = stacked_variants.iter().map(|v| v.freshness.checks).sum();
        let acked: u64 = stacked_variants.iter().map(|v| v.history_check.acked).sum();
        verdicts.push(Verdict::new(
            "correct under load: no post lost, stored twice or stale past 1 s; no unexplained 5xx",
            if problems.is_empty() {
                format!(
                    "{acked} acknowledged posts found once each, {checked} freshness reads current"
                )
            } else {
                problems.join("; ")
            },
            (!stacked_variants.is_empty()).then_some(problems.is_empty()),
        ));
        verdicts
    }

    /// A warning when processes other than the run's own used more than a quarter of a core during a main
    /// phase: other work then competed with the run, and latency and throughput figures are not those of a quiet
    /// machine.
    pub fn busy_machine_note(&self) -> Option<String> {
        let worst = self
            .variants
            .iter()
            .filter_map(|v| v.other_cpu_cores.map(|c| (c, v)))
            .max_by(|a, b| a.0.total_cmp(&b.0))?;
        (worst.0 > 0.25).then(|| {
            format!(
                "other processes kept {:.2} of {} CPUs busy during the {} run (load average up to {}): they \
                 competed with it, so its latency and throughput figures are not those of a quiet machine",
                worst.0,
                self.cpus,
                worst.1.variant,
                num(
                    [worst.1.load_average.0, worst.1.load_average.1].into_iter().flatten().reduce(f64::max),
                    1
                )
            )
        })
    }

    /// The verdict table, markdown.
    pub fn verdict_table(&self) -> String {
        let mut out = String::from("| target | measured | verdict |\n| --- | --- | --- |\n");
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                v.target,
                v.measured.replace('|', "/"),
                v.word()
            );
        }
        out
    }

    /// The variants side by side, markdown.
    pub fn summary_table(&self) -> String {
        let mut out = String::from("| figure |");
        for v in &self.variants {
            let _ = write!(out, " {} |", v.variant);
        }
        out.push_str("\n| --- |");
        for _ in &self.variants {
            out.push_str(" --- |");
        }
        out.push('\n');
        type Row<'a> = (&'a str, Box<dyn Fn(&VariantReport) -> String>);
        let mut rows: Vec<Row<'_>> = vec![
            (
                "offered rate (req/s)",
                Box::new(|v| format!("{:.0}", v.rate)),
            ),
            (
                "answered (req/s)",
                Box::new(|v| format!("{:.0}", v.throughput)),
            ),
            (
                "history hit rate (Cache-Status)",
                Box::new(|v| pct(v.history_hit_rate)),
            ),
            (
                "cache hit rate, all routes (/metrics)",
                Box::new(|v| pct(v.metrics_hit_rate)),
            ),
            (
                "SQLite queries per GET",
                Box::new(|v| num(v.queries_per_read, 3)),
            ),
            (
                "duplicate SQLite queries",
                Box::new(|v| v.db_duplicate_queries.to_string()),
            ),
            (
                "cold burst: GETs -> queries",
                Box::new(|v| {
                    v.cold_burst.as_ref().map_or_else(
                        || "n/a".to_owned(),
                        |b| format!("{} -> {}", b.requests, b.burst_queries),
                    )
                }),
            ),
        ];
        for class in Endpoint::ALL {
            rows.push((
                class.name(),
                Box::new(move |v| {
                    let p = v.latency.get(&class).copied().unwrap_or_default();
                    format!(
                        "{:.2} / {:.2} / {:.2} / {:.2} ms",
                        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms
                    )
                }),
            ));
        }
        rows.extend::<Vec<Row<'_>>>(vec![
            (
                "cache hits p99 (ms)",
                Box::new(|v| format!("{:.2}", v.hit_latency.p99_ms)),
            ),
            (
                "peak RSS per instance (MB)",
                Box::new(|v| {
                    v.instances
                        .iter()
                        .map(|i| format!("{:.0}", i.peak_rss_mb()))
                        .collect::<Vec<_>>()
                        .join(" / ")
                }),
            ),
            (
                "churn: req/s, peak / final RSS (MB) per instance",
                Box::new(|v| {
                    let churned: Vec<String> = v
                        .instances
                        .iter()
                        .filter_map(|i| i.churn.as_ref().map(|c| (i, c)))
                        .map(|(i, c)| {
                            format!(
                                "{:.0}, {:.0} / {:.0}{}",
                                c.rate,
                                i.verdict_rss_mb(),
                                c.final_rss_mb,
                                if c.still_growing {
                                    " (still growing)"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect();
                    if churned.is_empty() {
                        "not run".to_owned()
                    } else {
                        churned.join("; ")
                    }
                }),
            ),
            (
                "errors",
                Box::new(|v| {
                    if v.errors.0.is_empty() {
                        "0".to_owned()
                    } else {
                        v.errors
                            .0
                            .iter()
                            .map(|(c, n)| format!("{c}: {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                }),
            ),
            (
                "posts 503 during outage (explained)",
                Box::new(|v| v.explained_unavailable.to_string()),
            ),
            (
                "posts acked / retried / replayed",
                Box::new(|v| {
                    format!(
                        "{} / {} / {}",
                        v.posts.acked, v.posts.retries, v.posts.replayed
                    )
                }),
            ),
            (
                "breaker transitions (/stats polls)",
                Box::new(|v| {
                    if v.breaker_changes.is_empty() {
                        "none".to_owned()
                    } else {
                        v.breaker_changes
                            .iter()
                            .map(|c| format!("{} {} at {:.1}s", c.instance, c.state, c.at_s))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                }),
            ),
            (
                "breaker transitions (/metrics)",
                Box::new(|v| {
                    v.instances
                        .iter()
                        .map(|i| num(i.breaker_transitions_metrics, 0))
                        .collect::<Vec<_>>()
                        .join(" / ")
                }),
            ),
            (
                "fill leases waited / gave up (/metrics)",
                Box::new(|v| {
                    v.instances
                        .iter()
                        .map(|i| {
                            i.leases_waited_gave_up.map_or_else(
                                || "n/a".to_owned(),
                                |(w, g)| format!("{w:.0} / {g:.0}"),
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            (
                "machine load average before / after",
                Box::new(|v| {
                    format!(
                        "{} / {}",
                        num(v.load_average.0, 2),
                        num(v.load_average.1, 2)
                    )
                }),
            ),
            (
                "CPU used by other processes (cores)",
                Box::new(|v| num(v.other_cpu_cores, 2)),
            ),
            (
                "max sustained rate (req/s)",
                Box::new(|v| num(v.max_sustained(), 0)),
            ),
            (
                "correctness",
                Box::new(|v| {
                    if v.problems.is_empty() {
                        "ok".to_owned()
                    } else {
                        v.problems.join("; ")
                    }
                }),
            ),
        ]);
        for (label, cell) in rows {
            let _ = write!(out, "| {label} |");
            for v in &self.variants {
                let _ = write!(out, " {} |", cell(v).replace('|', "/"));
            }
            out.push('\n');
        }
        out
    }

    /// Writes `report.json` and `report.html` into `dir`, creating it.
    ///
    /// ```no_run
    /// # fn demo(report: &chat_loadtest::report::Report) -> Result<(), chat_loadtest::Error> {
    /// report.write(std::path::Path::new("target/loadtest"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("creating {}", dir.display()), e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Setup(format!("report.json: {e}")))?;
        let json_path = dir.join("report.json");
        std::fs::write(&json_path, json)
            .map_err(|e| Error::Io(format!("writing {}", json_path.display()), e))?;
        let html_path = dir.join("report.html");
        std::fs::write(&html_path, crate::html::render(self))
            .map_err(|e| Error::Io(format!("writing {}", html_path.display()), e))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::check::ColdBurst;
    use crate::load::{LoadPlan, LoadResult};
    use crate::procs::CpuPlan;
    use crate::runner::{RateSearch, RateStep};
    use crate::stats::ClassLatencies;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::Duration;

    pub(crate) fn options(variants: Vec<Variant>) -> Options {
        Options {
            bin_dir: PathBuf::from("bin"),
            out_dir: PathBuf::from("out"),
            variants,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            max_requests: 1_000_000,
            max_in_flight: 100,
            rooms: 10,
            messages_per_room: 10,
            burst: 5,
            zipf_exponent: 1.1,
            retry_share: 0.2,
            outage: Duration::ZERO,
            search: Some(RateSearch {
                start: 500.0,
                factor: 2.0,
                ceiling: 10_000.0,
                bisections: 1,
                step: Duration::from_secs(1),
                p99_bound: Duration::from_millis(100),
                also_at: None,
            }),
            seed: 1,
            timeout: Duration::from_secs(1),
            cpus: CpuPlan::none(),
            progress: false,
            churn: None,
            chaos: false,
            chat_args: Vec::new(),
        }
    }

    /// A variant whose history requests all took `history_ms`, `hits` of 10 of them from the cache.
    pub(crate) fn variant(
        variant: Variant,
        history_ms: u64,
        hits: u64,
        max: Option<f64>,
    ) -> VariantReport {
        let mut latencies = ClassLatencies::default();
        for i in 0..10 {
            latencies.record(
                Endpoint::HistoryFirst,
                Duration::from_millis(history_ms),
                i < hits,
            );
        }
        let main = LoadResult {
            plan: LoadPlan {
                rate: 1000.0,
                duration: Duration::from_secs(10),
                max_requests: 1,
                max_in_flight: 1,
                burst: 5,
                zipf_exponent: 1.0,
                retry_share: 0.0,
                outage: None,
                chaos: None,
                check_freshness: true,
                seed: 1,
                label: String::new(),
            },
            elapsed: Duration::from_secs(10),
            scheduled: 10_000,
            answered: 10_000,
            latencies,
            timeline: Timeline::default(),
            errors: Errors::default(),
            history: 10,
            history_hits: hits,
            hits,
            reads_per_target: vec![10],
            posts: PostStats::default(),
            ledger: Vec::new(),
            touched_rooms: BTreeSet::new(),
            freshness: Freshness::default(),
            breaker: Vec::new(),
            memory: Vec::new(),
            outage: None,
            chaos: None,
        };
        let instances = vec![InstanceReport {
            name: "chat-service".into(),
            reads: 10,
            db_queries: 10 - hits,
            db_duplicate_queries: 0,
            queries_per_read: ratio(10 - hits, 10),
            metrics_hit_rate: None,
            breaker_transitions_metrics: None,
            leases_waited_gave_up: None,
            peak_rss_mib: 50.0,
            churn: None,
        }];
        let cold = ColdBurst {
            requests: 20,
            single_queries: 1,
            burst_queries: 1,
            burst_duplicates: 0,
            ok: 20,
        };
        let max_rate = max.map(|rate| MaxRate {
            p99_bound_ms: 100.0,
            steps: vec![RateStep {
                rate,
                achieved: rate,
                p99_ms: 1.0,
                history_p99_ms: history_ms as f64,
                errors: 0,
                sustained: true,
            }],
            sustained: Some(rate),
        });
        VariantReport::new(
            variant,
            main,
            HistoryCheck::default(),
            Some(cold),
            instances,
            max_rate,
        )
    }

    /// Adds a sustained search step at `rate` whose p99 (history and all) is `p99_ms`.
    fn with_step(report: &mut VariantReport, rate: f64, p99_ms: f64) {
        report.max_rate.as_mut().unwrap().steps.push(RateStep {
            rate,
            achieved: rate,
            p99_ms,
            history_p99_ms: p99_ms,
            errors: 0,
            sustained: true,
        });
    }

    fn verdict<'a>(report: &'a Report, target: &str) -> &'a Verdict {
        report
            .verdicts
            .iter()
            .find(|v| v.target.starts_with(target))
            .unwrap()
    }

    #[test]
    fn verdicts_follow_the_measured_figures() {
        let mut report = Report::new(&options(vec![Variant::Bare, Variant::Stacked]));
        report
            .variants
            .push(variant(Variant::Bare, 40, 0, Some(2000.0)));
        let mut stacked = variant(Variant::Stacked, 10, 9, Some(4000.0));
        with_step(&mut stacked, 2000.0, 10.0);
        report.variants.push(stacked);
        report.finish();
        assert_eq!(
            verdict(&report, "history hit rate").met,
            Some(true),
            "9 of 10 is 90%"
        );
        assert_eq!(verdict(&report, "cached responses").met, Some(true));
        assert_eq!(verdict(&report, ">= 1000 requests/s").met, Some(true));
        let latency = verdict(&report, ">= 50% better latency");
        assert_eq!(latency.met, Some(true), "{}", latency.measured);
        assert!(
            latency.measured.contains("75.0% lower"),
            "{}",
            latency.measured
        );
        let throughput = verdict(&report, ">= 50% better max throughput");
        assert!(
            throughput.measured.contains("100.0% higher"),
            "{}",
            throughput.measured
        );
        assert_eq!(verdict(&report, "peak RSS").met, Some(true));
        assert_eq!(verdict(&report, "correct under load").met, Some(true));
        assert!(report.verdict_table().lines().count() == report.verdicts.len() + 2);
    }

    #[test]
    fn latency_is_judged_at_bares_highest_sustained_rate_when_both_measured_it() {
        let mut report = Report::new(&options(vec![Variant::Bare, Variant::Stacked]));
        report
            .variants
            .push(variant(Variant::Bare, 40, 0, Some(2000.0)));
        // The main phase is 75 % faster, but at bare's limit only 25 %.
        let mut stacked = variant(Variant::Stacked, 10, 9, Some(4000.0));
        with_step(&mut stacked, 2000.0, 30.0);
        report.variants.push(stacked);
        report.finish();
        let latency = verdict(&report, ">= 50% better latency");
        assert_eq!(latency.met, Some(false), "{}", latency.measured);
        assert!(
            latency
                .measured
                .starts_with("at 2000 req/s (bare's highest sustained rate): bare 40.00 ms, stacked 30.00 ms: 25.0% lower;"),
            "{}",
            latency.measured
        );
        assert!(
            latency.measured.contains("75.0% lower"),
            "{}",
            latency.measured
        );
    }

    #[test]
    fn latency_without_a_rate_search_is_not_measured_but_the_main_phase_is_shown() {
        let mut report = Report::new(&options(vec![Variant::Bare, Variant::Stacked]));
        report.variants.push(variant(Variant::Bare, 40, 0, None));
        report.variants.push(variant(Variant::Stacked, 10, 9, None));
        report.finish();
        let latency = verdict(&report, ">= 50% better latency");
        assert_eq!(latency.met, None, "{}", latency.measured);
        assert!(
            latency.measured.starts_with("at 1000 req/s (main phase)")
                && latency.measured.contains("75.0% lower"),
            "{}",
            latency.measured
        );
    }

    #[test]
    fn missed_and_unmeasured_targets_say_so() {
        let mut report = Report::new(&options(vec![Variant::Stacked]));
        report.variants.push(variant(Variant::Stacked, 10, 5, None));
        report.finish();
        assert_eq!(verdict(&report, "history hit rate").met, Some(false));
        assert_eq!(
            verdict(&report, ">= 50% better latency").met,
            None,
            "no bare run"
        );
        assert_eq!(
            verdict(&report, ">= 1000 requests/s").met,
            None,
            "no search"
        );
        assert!(report.verdict_table().contains("| MISSED |"));
        assert!(report.verdict_table().contains("| not measured |"));
    }

    #[test]
    fn correctness_problems_fail_the_correctness_verdict() {
        let mut stacked = variant(Variant::Stacked, 10, 9, None);
        stacked.history_check.lost = 2;
        stacked.unexplained_5xx = 1;
        stacked.problems = stacked.find_problems();
        assert_eq!(stacked.problems.len(), 2, "{:?}", stacked.problems);
        let mut report = Report::new(&options(vec![Variant::Stacked]));
        report.variants.push(stacked);
        report.finish();
        let correct = verdict(&report, "correct under load");
        assert_eq!(correct.met, Some(false));
        assert!(
            correct.measured.contains("2 acknowledged posts missing"),
            "{}",
            correct.measured
        );
    }

    #[test]
    fn changes_read_in_the_right_direction() {
        assert_eq!(change(Some(0.75), "lower", "higher"), "75.0% lower");
        assert_eq!(change(Some(-5.116), "lower", "higher"), "511.6% higher");
        assert_eq!(change(None, "lower", "higher"), "n/a");
    }

    #[test]
    fn a_busy_machine_is_named() {
        let mut report = Report::new(&options(vec![Variant::Stacked]));
        report.cpus = 2;
        let mut stacked = variant(Variant::Stacked, 10, 9, None);
        stacked.load_average = (Some(0.5), Some(1.9));
        stacked.other_cpu_cores = Some(0.1);
        report.variants.push(stacked.clone());
        assert_eq!(report.busy_machine_note(), None);
        stacked.other_cpu_cores = Some(1.5);
        stacked.load_average.1 = Some(4.5);
        report.variants.push(stacked);
        let note = report.busy_machine_note().unwrap();
        assert!(
            note.contains("kept 1.50 of 2 CPUs busy") && note.contains("up to 4.5"),
            "{note}"
        );
    }

    #[test]
    fn same_rate_steps_pair_the_common_sustained_rates() {
        let bare = variant(Variant::Bare, 40, 0, Some(2000.0));
        let stacked = variant(Variant::Stacked, 10, 9, Some(2000.0));
        assert_eq!(same_rate_steps(&bare, &stacked), vec![(2000.0, 40.0, 10.0)]);
        let other = variant(Variant::Stacked, 10, 9, Some(3000.0));
        assert!(same_rate_steps(&bare, &other).is_empty());
    }

    #[test]
    fn the_summary_has_a_column_per_variant() {
        let mut report = Report::new(&options(vec![Variant::Bare, Variant::Stacked]));
        report.variants.push(variant(Variant::Bare, 40, 0, None));
        report.variants.push(variant(Variant::Stacked, 10, 9, None));
        let table = report.summary_table();
        assert!(table.starts_with("| figure | bare | stacked |"));
        assert!(
            table
                .lines()
                .skip(2)
                .all(|line| line.matches(" |").count() == 3),
            "{table}"
        );
    }
}
