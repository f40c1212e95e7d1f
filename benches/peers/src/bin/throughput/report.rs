//! The results: every round's figures, their medians and ratios against the baseline of the same run, the
//! targets of issue 14, and how they are written (JSON, markdown tables, the marked section of
//! docs/performance.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::Result;
use crate::variants::{P99_MAX_RATIO, TARGETS, TELEMETRY_EXTRA_RSS_MB, Urls, Variant};

/// wrk's CPU time per wall second from which it, not the server, is taken to have limited a window.
const CLIENT_BOUND_BUSY: f64 = 0.9;
/// Other processes' CPU use, in cores, from which a variant's windows are reported as disturbed.
const DISTURBED_CORES: f64 = 0.5;

/// The markers around the section of docs/performance.md the harness rewrites.
pub const DOC_START: &str = "<!-- served-benchmark:start -->";
pub const DOC_END: &str = "<!-- served-benchmark:end -->";

/// One variant's measurement in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    /// Responses wrk completed in its run.
    pub requests: u64,
    /// wrk's run time, s.
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// The server process's CPU time per request, µs.
    pub server_cpu_us: f64,
    /// The server's CPU time over wall time (1.0 = one core busy).
    pub server_busy: f64,
    /// wrk's CPU time over wall time.
    pub generator_busy: f64,
    /// Cores other processes used during the window.
    pub others_cores: f64,
    pub handler_calls_per_request: f64,
    /// `VmRSS` of the server after the window, MB.
    pub rss_mb: f64,
    /// Share of the window's requests whose spans reached the OTLP sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spans_exported: Option<f64>,
}

/// Median, smallest and largest over rounds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// One variant over the whole run.
#[derive(Debug, Serialize)]
pub struct VariantReport {
    #[serde(skip)]
    pub variant: Variant,
    pub name: &'static str,
    pub description: &'static str,
    pub peer: bool,
    /// The variant the ratios are against.
    pub baseline: &'static str,
    pub urls: &'static str,
    pub rps: Stats,
    /// Median req/s over the baseline's median req/s.
    pub ratio: f64,
    /// Each round's req/s over the same round's baseline (windows seconds apart, so slow drift cancels).
    pub paired_ratio: Stats,
    /// Medians over rounds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub server_cpu_us: Stats,
    /// The baseline's CPU per request over this one's: the throughput ratio of a CPU-bound server.
    pub cpu_ratio: f64,
    pub cpu_paired_ratio: f64,
    pub server_busy: f64,
    pub generator_busy: f64,
    pub others_cores: f64,
    pub handler_calls_per_request: f64,
    /// `VmHWM` of the server process at the end of the run, MB.
    pub peak_rss_mb: f64,
    /// Peak RSS over the baseline's, MB.
    pub extra_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spans_exported: Option<f64>,
    pub rounds: Vec<Sample>,
}

/// One target of issue 14 and whether this run met it.
#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub variant: &'static str,
    pub what: String,
    pub measured: f64,
    pub limit: f64,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
}

#[derive(Debug, Serialize)]
pub struct RunSettings {
    pub rounds: usize,
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub connections: usize,
    pub wrk_threads: usize,
    pub rotating_urls: usize,
    pub seed: u64,
    pub pinning: &'static str,
    pub pinning_detail: &'static str,
    pub quiet_wait_seconds: f64,
    pub quiet_cores: f64,
    /// Time spent waiting for other processes to leave the CPUs alone, s.
    pub waited_seconds: f64,
    /// The whole run, validation included, s.
    pub elapsed_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub source: String,
    pub command: String,
    pub machine: Machine,
    pub settings: RunSettings,
    pub body_bytes: usize,
    pub variants: Vec<VariantReport>,
    pub targets: Vec<TargetResult>,
}

impl Report {
    /// Summarises every variant's rounds against its baseline; `peaks` are the servers' `VmHWM` in MB.
    pub fn summarise(
        samples: &BTreeMap<Variant, Vec<Sample>>,
        peaks: &BTreeMap<Variant, f64>,
    ) -> Vec<VariantReport> {
        let empty = Vec::new();
        let median = |v: Variant, f: fn(&Sample) -> f64| {
            Stats::of(samples.get(&v).unwrap_or(&empty).iter().map(f)).median
        };
        let mut out = Vec::new();
        for (&variant, rounds) in samples {
            let base = variant.baseline();
            let base_rounds = samples.get(&base).unwrap_or(&empty);
            let paired = |f: fn(&Sample) -> f64| {
                Stats::of(rounds.iter().zip(base_rounds).map(|(s, b)| f(s) / f(b)))
            };
            let rps = Stats::of(rounds.iter().map(|s| s.rps));
            let cpu = Stats::of(rounds.iter().map(|s| s.server_cpu_us));
            let p50 = median(variant, |s| s.p50_us);
            let p99 = median(variant, |s| s.p99_us);
            let peak = peaks.get(&variant).copied().unwrap_or(f64::NAN);
            let spans: Vec<f64> = rounds.iter().filter_map(|s| s.spans_exported).collect();
            out.push(VariantReport {
                variant,
                name: variant.name(),
                description: variant.what(),
                peer: variant.is_peer(),
                baseline: base.name(),
                urls: match variant.urls() {
                    Urls::Rotating => "rotating",
                    Urls::Unique => "unique",
                },
                rps,
                ratio: rps.median / median(base, |s| s.rps),
                paired_ratio: paired(|s| s.rps),
                p50_us: p50,
                p99_us: p99,
                p50_ratio: p50 / median(base, |s| s.p50_us),
                p99_ratio: p99 / median(base, |s| s.p99_us),
                server_cpu_us: cpu,
                cpu_ratio: median(base, |s| s.server_cpu_us) / cpu.median,
                cpu_paired_ratio: paired(|s| 1.0 / s.server_cpu_us).median,
                server_busy: median(variant, |s| s.server_busy),
                generator_busy: median(variant, |s| s.generator_busy),
                others_cores: median(variant, |s| s.others_cores),
                handler_calls_per_request: median(variant, |s| s.handler_calls_per_request),
                peak_rss_mb: peak,
                extra_rss_mb: peak - peaks.get(&base).copied().unwrap_or(f64::NAN),
                spans_exported: (!spans.is_empty()).then(|| Stats::of(spans).median),
                rounds: rounds.clone(),
            });
        }
        out
    }

    fn get(&self, variant: Variant) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.variant == variant)
    }

    /// Judges the targets of issue 14 on this run (throughput and p99 ratios of medians; RSS peaks).
    pub fn judge_targets(&mut self) {
        let mut targets = Vec::new();
        for target in &TARGETS {
            let Some(v) = self.get(target.variant) else {
                continue;
            };
            targets.push(TargetResult {
                variant: v.name,
                what: format!("{} req/s ≥ {:.2} × bare", v.name, target.min_ratio),
                measured: v.ratio,
                limit: target.min_ratio,
                met: v.ratio >= target.min_ratio,
            });
            targets.push(TargetResult {
                variant: v.name,
                what: format!("{} p99 ≤ {P99_MAX_RATIO:.1} × bare's", v.name),
                measured: v.p99_ratio,
                limit: P99_MAX_RATIO,
                met: v.p99_ratio <= P99_MAX_RATIO,
            });
        }
        if let (Some(ours), Some(peer)) = (
            self.get(Variant::CacheHit),
            self.get(Variant::AxumResponseCache),
        ) {
            targets.push(TargetResult {
                variant: ours.name,
                what: format!(
                    "cache-hit ahead of axum-response-cache (its × bare: {:.3})",
                    peer.ratio
                ),
                measured: ours.ratio,
                limit: peer.ratio,
                met: ours.ratio > peer.ratio,
            });
        }
        for variant in [Variant::TelemetryMetrics, Variant::TelemetrySpans] {
            if let Some(v) = self.get(variant) {
                targets.push(TargetResult {
                    variant: v.name,
                    what: format!(
                        "{} peak RSS < bare's + {TELEMETRY_EXTRA_RSS_MB:.0} MB",
                        v.name
                    ),
                    measured: v.extra_rss_mb,
                    limit: TELEMETRY_EXTRA_RSS_MB,
                    met: v.extra_rss_mb < TELEMETRY_EXTRA_RSS_MB,
                });
            }
        }
        self.targets = targets;
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_file(path, &(json + "\n"))
    }

    fn label(v: &VariantReport) -> String {
        if v.variant.baseline() == Variant::Bare {
            v.name.to_owned()
        } else {
            format!("{} (vs {})", v.name, v.baseline)
        }
    }

    /// Requests per second with the server on its own core, latency and memory.
    pub fn throughput_table(&self) -> String {
        let mut out = String::from(
            "| variant | req/s | min | max | × bare | × bare, paired (min–max) | p50 µs | p99 µs | p50 × bare \
             | p99 × bare | peak RSS MB | extra RSS MB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for v in &self.variants {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {} | {} ({}–{}) | {:.0} | {:.0} | {} | {} | {:.1} | {:+.1} |",
                Self::label(v),
                v.rps.median,
                v.rps.min,
                v.rps.max,
                ratio(v.ratio),
                ratio(v.paired_ratio.median),
                ratio(v.paired_ratio.min),
                ratio(v.paired_ratio.max),
                v.p50_us,
                v.p99_us,
                ratio(v.p50_ratio),
                ratio(v.p99_ratio),
                v.peak_rss_mb,
                v.extra_rss_mb,
            );
        }
        out
    }

    /// The server's CPU time per request.
    pub fn cost_table(&self) -> String {
        let mut out = String::from(
            "| variant | server CPU µs/req | min | max | CPU × bare | CPU × bare, paired | server busy \
             | wrk busy | others' CPU (cores) | handler calls/req |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for v in &self.variants {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                Self::label(v),
                v.server_cpu_us.median,
                v.server_cpu_us.min,
                v.server_cpu_us.max,
                ratio(v.cpu_ratio),
                ratio(v.cpu_paired_ratio),
                v.server_busy,
                v.generator_busy,
                v.others_cores,
                v.handler_calls_per_request,
            );
        }
        out
    }

    pub fn targets_table(&self) -> String {
        let mut out = String::from("| target | measured | |\n|---|---:|---|\n");
        for t in &self.targets {
            let measured = if t.what.contains("RSS") {
                format!("{:+.1} MB", t.measured)
            } else {
                ratio(t.measured)
            };
            let verdict = if t.met { "met" } else { "**missed**" };
            let _ = writeln!(out, "| {} | {measured} | {verdict} |", t.what);
        }
        out
    }

    /// Lines about span export, for the variants that export spans, and about windows whose limit was wrk
    /// or other processes rather than the server.
    pub fn notes(&self) -> String {
        let mut out = String::new();
        let client_bound: Vec<&str> = self
            .variants
            .iter()
            .filter(|v| v.generator_busy >= CLIENT_BOUND_BUSY)
            .map(|v| v.name)
            .collect();
        if self.settings.pinning == "split" && !client_bound.is_empty() {
            let _ = writeln!(
                out,
                "- wrk was busy {:.0} % of the time or more with {}: the client, not the server, limited \
                 req/s there, so their ratios understate the differences; the CPU table still holds.",
                CLIENT_BOUND_BUSY * 100.0,
                client_bound.join(", ")
            );
        }
        let disturbed: Vec<&str> = self
            .variants
            .iter()
            .filter(|v| v.others_cores >= DISTURBED_CORES)
            .map(|v| v.name)
            .collect();
        if !disturbed.is_empty() {
            let _ = writeln!(
                out,
                "- other processes used {DISTURBED_CORES} core or more during the windows of {}: compare their \
                 req/s with care, and their CPU per request first.",
                disturbed.join(", ")
            );
        }
        for v in &self.variants {
            if let Some(share) = v.spans_exported {
                let _ = writeln!(
                    out,
                    "- `{}`: {:.0} % of the measured requests' spans reached the OTLP sink (estimated from the \
                     bytes it received and one span's size, measured while validating; the SDK's queue is \
                     bounded and drops spans when export falls behind, which would flatter the variant).",
                    v.name,
                    share * 100.0
                );
            }
        }
        out
    }

    fn how(&self) -> String {
        let s = &self.settings;
        let warmup = match s.warmup_seconds {
            0 => String::new(),
            n => format!(" after an unmeasured {n} s run"),
        };
        let placement = match s.pinning {
            "split" => {
                "pinned to CPU 1; `wrk`, the OTLP sink the span variants export to and the harness run on \
                 CPU 0, as a load test from another machine would see the server"
                    .to_owned()
            }
            "shared" => "on CPU 0 with `wrk`, the OTLP sink and the harness (`--pin shared`): req/s then \
                         includes the client's cost"
                .to_owned(),
            _ => "placed by the scheduler, as are `wrk` and the harness (`--pin off`)".to_owned(),
        };
        format!(
            "Each variant's server is a process of its own (the harness re-executed in a `serve` mode), started \
             afresh for every window, with one Tokio worker thread, {placement}. `wrk -t{} -c{}` drives it for {} s{warmup}, \
             over {} rotating URLs (`/rooms/room-N/messages`), or with a query string no other request carries \
             where the variant says so. Every round visits every variant once, in a shuffled order; the tables \
             give medians over {} rounds with min and max. Ratios are against bare axum in the same run \
             (`stack-miss` against `origin-2ms`); `× bare, paired` is the median of each round's ratio to the \
             same round's baseline. Server CPU is the server process's threads' time \
             (`/proc/PID/task/*/schedstat`) over the requests served: bare's over a variant's is the \
             throughput ratio of a CPU-bound server, and it depends less than req/s on what other processes \
             leave us. Peak RSS is the server's `VmHWM` after all rounds. Before it is measured each variant \
             is validated (status, body, cache hits, dedup pass-through, spans exported, metrics recorded); a \
             window in which wrk counts any error fails the run. `benches/peers/README.md` has the details.",
            crate::wrk::THREADS,
            s.connections,
            s.seconds,
            s.rotating_urls,
            s.rounds,
        )
    }

    fn facts(&self) -> String {
        let s = &self.settings;
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "- date: {}", self.date);
        let _ = writeln!(
            out,
            "- machine: {} CPUs, {}, {}; load average {} before, {} after",
            m.cpus, m.cpu_model, m.kernel, m.load_before, m.load_after
        );
        let _ = writeln!(out, "- commit: {}", self.source);
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- settings: {} round{} × {} variants, {} s windows after {} s warm-up, {} connections, seed {}, \
             pinning {}; before each window up to {} s waiting for other processes to use less than {:.1} \
             core (waited {:.0} s in all); {:.0} s in all",
            s.rounds,
            if s.rounds == 1 { "" } else { "s" },
            self.variants.len(),
            s.seconds,
            s.warmup_seconds,
            s.connections,
            s.seed,
            s.pinning,
            s.quiet_wait_seconds,
            s.quiet_cores,
            s.waited_seconds,
            s.elapsed_seconds,
        );
        out
    }

    fn variants_list(&self) -> String {
        let mut out = format!(
            "Every variant serves `GET /rooms/{{room}}/messages`, a fixed {}-byte JSON body with \
             `Cache-Control: public, max-age=60`:\n\n",
            self.body_bytes
        );
        for v in &self.variants {
            let _ = writeln!(out, "- `{}`: {}", v.name, v.description);
        }
        out
    }

    /// The body of the served-throughput section: how, facts, chart (when `chart` is a link), tables.
    pub fn section(&self, chart: Option<&str>) -> String {
        let mut out = String::new();
        let _ = write!(out, "{}\n\n{}\n", self.how(), self.facts());
        if let Some(chart) = chart {
            let _ = writeln!(
                out,
                "![Requests per second of each variant as a multiple of bare axum's, with the spread over \
                 rounds and the targets]({chart})\n"
            );
        }
        let pinned = if self.settings.pinning == "split" {
            ", server on its own core"
        } else {
            ""
        };
        let _ = write!(
            out,
            "### Requests per second{pinned}\n\n{}\n### Server CPU per request\n\n{}\n",
            self.throughput_table(),
            self.cost_table()
        );
        let notes = self.notes();
        if !notes.is_empty() {
            let _ = writeln!(out, "{notes}");
        }
        if !self.targets.is_empty() {
            let _ = write!(
                out,
                "### Targets (issue 14)\n\nJudged on this run's medians: req/s and p99 against bare axum with \
                 the server on its own core, peak RSS against bare's.\n\n{}\n",
                self.targets_table()
            );
        }
        let _ = write!(out, "### Variants\n\n{}", self.variants_list());
        out
    }

    /// Every round's figures of one kind, a row per variant.
    fn rounds_table(&self, cell: impl Fn(&Sample) -> String) -> String {
        let mut out = String::from("| variant |");
        for round in 1..=self.settings.rounds {
            let _ = write!(out, " {round} |");
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.settings.rounds));
        out.push('\n');
        for v in &self.variants {
            let _ = write!(out, "| {} |", v.name);
            for s in &v.rounds {
                let _ = write!(out, " {} |", cell(s));
            }
            out.push('\n');
        }
        out
    }

    /// The stand-alone results file: the section, then every round's req/s and CPU per request.
    pub fn markdown(&self, chart: Option<&str>) -> String {
        let mut out = format!("# Served-HTTP throughput\n\n{}", self.section(chart));
        let _ = write!(
            out,
            "\n### req/s per round\n\n{}\n### Server CPU µs/req per round\n\n{}",
            self.rounds_table(|s| format!("{:.0}", s.rps)),
            self.rounds_table(|s| format!("{:.2}", s.server_cpu_us)),
        );
        out
    }
}

/// A ratio with three decimals, `–` when it could not be taken.
fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "–".to_owned()
    }
}

pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()).into())
}

/// Replaces what lies between [`DOC_START`] and [`DOC_END`] in `page` with `section` (under a heading
/// and a line saying where it comes from); a page without the markers gets them, with the section, at its
/// end.
pub fn replace_section(page: &str, section: &str) -> Result<String> {
    let generated = format!(
        "{DOC_START}\n## Served throughput\n\n<!-- Written by `cargo xtask bench` (benches/peers `throughput --doc`); \
         edits between the markers are overwritten. -->\n\n{section}{DOC_END}"
    );
    match (page.find(DOC_START), page.find(DOC_END)) {
        (Some(start), Some(end)) if start < end => Ok(format!(
            "{}{generated}{}",
            &page[..start],
            &page[end + DOC_END.len()..]
        )),
        (None, None) => Ok(format!("{}\n\n{generated}\n", page.trim_end())),
        _ => Err(format!(
            "the page has `{DOC_START}` and `{DOC_END}` out of order or only one of them"
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_replaced_between_markers_only() {
        let page =
            format!("# Title\n\nintro\n\n{DOC_START}\nold\n{DOC_END}\n\n## Memory\n\nkept\n");
        let new = replace_section(&page, "new figures\n").unwrap();
        assert!(new.starts_with("# Title\n\nintro\n\n"));
        assert!(new.contains("new figures\n"));
        assert!(!new.contains("old"));
        assert!(new.ends_with(&format!("{DOC_END}\n\n## Memory\n\nkept\n")));
        assert_eq!(replace_section(&new, "new figures\n").unwrap(), new);
    }

    #[test]
    fn markers_added_when_missing_and_refused_when_broken() {
        let new = replace_section("# Title\n", "figures\n").unwrap();
        assert!(new.starts_with("# Title\n\n<!-- served-benchmark:start -->"));
        assert!(replace_section(&format!("{DOC_END}\n{DOC_START}"), "x").is_err());
        assert!(replace_section(DOC_START, "x").is_err());
    }

    #[test]
    fn stats_of_rounds() {
        let s = Stats::of([3.0, 1.0, f64::NAN, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(Stats::of([]).median.is_nan());
    }
}
