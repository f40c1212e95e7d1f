//! The self-contained HTML report: tables and inline SVG line charts, no scripts, fonts or style sheets from
//! anywhere else, so the file opens the same offline and can be attached as it is.

use std::fmt::Write as _;
use std::path::Path;

use crate::Error;
use crate::report::Report;
use crate::stack::Variant;

/// Chart size in SVG user units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// Points `(x, y)` in data units.
    pub points: Vec<(f64, f64)>,
}

/// How an axis maps data to the plot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Linear from `min` to `max`.
    Linear {
        /// Low end.
        min: f64,
        /// High end.
        max: f64,
    },
    /// Base-10 logarithmic from `min` to `max` (both positive); values below `min` sit at `min`.
    Log {
        /// Low end.
        min: f64,
        /// High end.
        max: f64,
    },
}

impl Scale {
    /// Position of `value` in `0..=1`.
    pub fn fraction(&self, value: f64) -> f64 {
        let f = match *self {
            Scale::Linear { min, max } => {
                if max > min {
                    (value - min) / (max - min)
                } else {
                    0.0
                }
            }
            Scale::Log { min, max } => {
                let (lo, hi) = (
                    min.max(f64::MIN_POSITIVE).log10(),
                    max.max(f64::MIN_POSITIVE).log10(),
                );
                if hi > lo {
                    (value.max(min).max(f64::MIN_POSITIVE).log10() - lo) / (hi - lo)
                } else {
                    0.0
                }
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// An axis: its scale, title and labelled ticks `(value, label)`.
#[derive(Clone, Debug)]
pub struct Axis {
    /// Scale.
    pub scale: Scale,
    /// Title.
    pub title: String,
    /// Ticks.
    pub ticks: Vec<(f64, String)>,
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A shaded stretch of the x axis, such as the time a fault lasted.
#[derive(Clone, Debug)]
pub struct Band {
    /// Start, in x data units.
    pub start: f64,
    /// End, in x data units.
    pub end: f64,
    /// Short label drawn at its top.
    pub label: String,
    /// Fill colour (drawn translucent).
    pub color: &'static str,
}

/// An SVG line chart: one `<polyline>` per series with one coordinate pair per point (series without
/// points are listed in the legend only), axes with ticks, and a legend.
pub fn line_chart(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    line_chart_with_bands(title, x, y, series, &[])
}

/// [`line_chart`] with `bands` shaded behind the lines (after the plot's frame, which stays the chart's
/// first `<rect>`), each labelled at its top.
pub fn line_chart_with_bands(
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
    bands: &[Band],
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |v: f64| LEFT + x.scale.fraction(v) * plot_w;
    let py = |v: f64| TOP + (1.0 - y.scale.fraction(v)) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><title>{t}</title>"##,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>"##
    );
    for band in bands {
        let (x1, x2) = (px(band.start), px(band.end.max(band.start)));
        let _ = write!(
            svg,
            r##"<rect class="band" x="{x1:.1}" y="{TOP}" width="{w:.1}" height="{plot_h}" fill="{c}" fill-opacity="0.18"/><text x="{tx:.1}" y="{ty:.1}" font-size="10" text-anchor="middle" fill="#444">{l}</text>"##,
            w = (x2 - x1).max(1.0),
            c = band.color,
            tx = (x1 + x2) / 2.0,
            ty = TOP + 11.0,
            l = escape(&band.label)
        );
    }
    for (value, label) in &x.ticks {
        let xx = px(*value);
        let _ = write!(
            svg,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{b:.1}" stroke="#eee"/><text x="{xx:.1}" y="{ty:.1}" font-size="10" text-anchor="middle">{l}</text>"##,
            b = TOP + plot_h,
            ty = TOP + plot_h + 14.0,
            l = escape(label)
        );
    }
    for (value, label) in &y.ticks {
        let yy = py(*value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{r:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{tx:.1}" y="{ty:.1}" font-size="10" text-anchor="end">{l}</text>"##,
            r = LEFT + plot_w,
            tx = LEFT - 4.0,
            ty = yy + 3.0,
            l = escape(label)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{cx:.1}" y="{by:.1}" font-size="11" text-anchor="middle">{xt}</text><text x="12" y="{cy:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {cy:.1})">{yt}</text>"##,
        cx = LEFT + plot_w / 2.0,
        by = HEIGHT - 6.0,
        cy = TOP + plot_h / 2.0,
        xt = escape(&x.title),
        yt = escape(&y.title)
    );
    for (i, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let points: Vec<String> = s
                .points
                .iter()
                .map(|&(vx, vy)| format!("{:.1},{:.1}", px(vx), py(vy)))
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{c}" stroke-width="2" data-series="{n}" points="{p}"/>"##,
                c = s.color,
                n = escape(&s.name),
                p = points.join(" ")
            );
        }
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let lx = LEFT + plot_w + 10.0;
        let _ = write!(
            svg,
            r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{lx2:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{tx:.1}" y="{ty:.1}" font-size="11">{n}</text>"##,
            lx2 = lx + 18.0,
            tx = lx + 24.0,
            ty = ly + 4.0,
            c = s.color,
            n = escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn color(variant: Variant) -> &'static str {
    match variant {
        Variant::Bare => "#c0392b",
        Variant::Stacked => "#2471a3",
        Variant::Stacked2 => "#239b56",
    }
}

/// Ticks at 1, 2, 5 times powers of ten between `min` and `max`.
fn log_ticks(min: f64, max: f64, unit: &str) -> Vec<(f64, String)> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(min.max(1e-6).log10().floor());
    while decade <= max * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= min * 0.9999 && v <= max * 1.0001 {
                ticks.push((v, format!("{}{unit}", trim_number(v))));
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): a round axis end.
fn nice_ceiling(value: f64) -> f64 {
    if value.is_nan() || value <= 1.0 || value.is_infinite() {
        return 1.0;
    }
    let decade = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&v| v >= value)
        .unwrap_or(10.0 * decade)
}

/// Per-second counts without the last second, which the run ends inside of and which would show as a drop.
fn whole_seconds(series: &[u64]) -> &[u64] {
    if series.len() > 2 {
        &series[..series.len() - 1]
    } else {
        series
    }
}

/// Ticks every 1, 2, 5, 10, 20, ... seconds, about six of them.
fn second_ticks(max: f64) -> Vec<(f64, String)> {
    let step = nice_ceiling(max / 6.0);
    let mut ticks = Vec::new();
    let mut t = 0.0;
    while t <= max + 1e-9 {
        ticks.push((t, format!("{}s", trim_number(t))));
        t += step;
    }
    ticks
}

fn linear_ticks(max: f64, count: u32, unit: &str) -> Vec<(f64, String)> {
    (0..=count)
        .map(|i| {
            let v = max * f64::from(i) / f64::from(count.max(1));
            (v, format!("{}{unit}", trim_number(v)))
        })
        .collect()
}

fn trim_number(v: f64) -> String {
    if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The latency-by-percentile chart of the history classes, every variant on one log-log chart.
pub fn latency_chart(report: &Report) -> String {
    // x is the number of nines: percentile p sits at log10(1 / (1 - p)).
    let nines = |p: f64| (1.0 / (1.0 - p / 100.0).max(1e-6)).log10();
    let series: Vec<Series> = report
        .variants
        .iter()
        .map(|v| Series {
            name: v.variant.name().to_owned(),
            color: color(v.variant),
            points: v
                .history_curve
                .iter()
                .map(|&(p, ms)| (nines(p), ms))
                .collect(),
        })
        .collect();
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let min_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .fold(max_ms, f64::min)
        .min(1.0);
    let x = Axis {
        scale: Scale::Linear { min: 0.0, max: 4.0 },
        title: "percentile".into(),
        ticks: vec![
            (0.0, "0".into()),
            (1.0, "90".into()),
            (2.0, "99".into()),
            (3.0, "99.9".into()),
            (4.0, "99.99".into()),
        ],
    };
    let y = Axis {
        scale: Scale::Log {
            min: min_ms,
            max: max_ms,
        },
        title: "latency (ms)".into(),
        ticks: log_ticks(min_ms, max_ms, ""),
    };
    line_chart("History latency by percentile", &x, &y, &series)
}

/// Answers per second, every variant, over the main phase.
pub fn throughput_chart(report: &Report) -> String {
    let series: Vec<Series> = report
        .variants
        .iter()
        .map(|v| Series {
            name: v.variant.name().to_owned(),
            color: color(v.variant),
            points: whole_seconds(&v.timeline.completed)
                .iter()
                .enumerate()
                .map(|(s, &n)| (s as f64, n as f64))
                .collect(),
        })
        .collect();
    let x = seconds_axis(series.iter().map(|s| s.points.len()));
    let max = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(10.0, f64::max)
            * 1.05,
    );
    let y = Axis {
        scale: Scale::Linear { min: 0.0, max },
        title: "answers per second".into(),
        ticks: linear_ticks(max, 5, ""),
    };
    line_chart("Throughput over time", &x, &y, &series)
}

/// The time axis of the over-time charts: whole seconds from 0 to the longest series' last
/// second (at least one second wide).
fn seconds_axis(series_lengths: impl Iterator<Item = usize>) -> Axis {
    let seconds = series_lengths.max().unwrap_or(1).max(2) as f64 - 1.0;
    Axis {
        scale: Scale::Linear {
            min: 0.0,
            max: seconds,
        },
        title: "seconds".into(),
        ticks: second_ticks(seconds),
    }
}

/// History hit rate per second, every variant; seconds without history answers are left out.
pub fn hit_rate_chart(report: &Report) -> String {
    let series: Vec<Series> = report
        .variants
        .iter()
        .map(|v| Series {
            name: v.variant.name().to_owned(),
            color: color(v.variant),
            points: v
                .timeline
                .hit_rates()
                .iter()
                .take(whole_seconds(&v.timeline.history).len())
                .enumerate()
                .filter_map(|(s, r)| r.map(|r| (s as f64, r * 100.0)))
                .collect(),
        })
        .collect();
    let x = seconds_axis(
        report
            .variants
            .iter()
            .map(|v| whole_seconds(&v.timeline.history).len()),
    );
    let y = Axis {
        scale: Scale::Linear {
            min: 0.0,
            max: 100.0,
        },
        title: "history hit rate (%)".into(),
        ticks: linear_ticks(100.0, 5, "%"),
    };
    line_chart("History hit rate over time", &x, &y, &series)
}

/// The fault windows of a chaos run as bands numbered like the rows of its fault table.
pub fn fault_bands(report: &Report) -> Vec<Band> {
    report.chaos.as_ref().map_or_else(Vec::new, |chaos| {
        chaos
            .faults
            .iter()
            .enumerate()
            .map(|(i, record)| Band {
                start: record.start_s,
                end: record.end_s,
                label: (i + 1).to_string(),
                color: if record.fault.is_redis() {
                    "#c0392b"
                } else {
                    "#7d3c98"
                },
            })
            .collect()
    })
}

/// Answers per second of a chaos run, fault windows shaded.
pub fn chaos_throughput_chart(report: &Report) -> String {
    let Some(v) = report.variants.first() else {
        return String::new();
    };
    let points: Vec<(f64, f64)> = whole_seconds(&v.timeline.completed)
        .iter()
        .enumerate()
        .map(|(s, &n)| (s as f64, n as f64))
        .collect();
    let x = seconds_axis(std::iter::once(points.len()));
    let max = nice_ceiling(points.iter().map(|p| p.1).fold(10.0, f64::max) * 1.05);
    let y = Axis {
        scale: Scale::Linear { min: 0.0, max },
        title: "answers per second".into(),
        ticks: linear_ticks(max, 5, ""),
    };
    let series = [Series {
        name: "answered".into(),
        color: color(v.variant),
        points,
    }];
    line_chart_with_bands(
        "Throughput during the faults",
        &x,
        &y,
        &series,
        &fault_bands(report),
    )
}

/// Documented refusals and failures per second of a chaos run, fault windows shaded.
pub fn chaos_refusals_chart(report: &Report) -> String {
    let Some(v) = report.variants.first() else {
        return String::new();
    };
    let seconds = whole_seconds(&v.timeline.completed).len();
    let per_second = |series: &[u64]| -> Vec<(f64, f64)> {
        (0..seconds)
            .map(|s| (s as f64, series.get(s).copied().unwrap_or(0) as f64))
            .collect()
    };
    let series = [
        Series {
            name: "refused (503/409)".into(),
            color: "#d68910",
            points: per_second(&v.timeline.refused),
        },
        Series {
            name: "failed".into(),
            color: "#c0392b",
            points: per_second(&v.timeline.errors),
        },
    ];
    let max = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(5.0, f64::max)
            * 1.05,
    );
    let y = Axis {
        scale: Scale::Linear { min: 0.0, max },
        title: "requests per second".into(),
        ticks: linear_ticks(max, 5, ""),
    };
    line_chart_with_bands(
        "Posts refused as documented, and failures",
        &seconds_axis(std::iter::once(seconds)),
        &y,
        &series,
        &fault_bands(report),
    )
}

/// The slowest read of each second of a chaos run (log scale), fault windows shaded.
pub fn chaos_slowest_read_chart(report: &Report) -> String {
    let Some(v) = report.variants.first() else {
        return String::new();
    };
    let seconds = whole_seconds(&v.timeline.completed).len();
    let points: Vec<(f64, f64)> = v
        .timeline
        .slowest_read_ms
        .iter()
        .take(seconds)
        .enumerate()
        .filter(|(_, ms)| **ms > 0.0)
        .map(|(s, &ms)| (s as f64, ms))
        .collect();
    let max_ms = nice_ceiling(points.iter().map(|p| p.1).fold(10.0, f64::max));
    let y = Axis {
        scale: Scale::Log {
            min: 1.0,
            max: max_ms,
        },
        title: "slowest read (ms)".into(),
        ticks: log_ticks(1.0, max_ms, ""),
    };
    let series = [Series {
        name: "slowest read".into(),
        color: color(v.variant),
        points,
    }];
    line_chart_with_bands(
        "Slowest read of each second",
        &seconds_axis(std::iter::once(seconds)),
        &y,
        &series,
        &fault_bands(report),
    )
}

/// The chaos section: guarantees, the fault timeline, what each fault did, failures by cause, the
/// instances, and the charts with the fault windows shaded.
fn chaos_section(report: &Report, chaos: &crate::chaos_report::ChaosReport) -> String {
    let mut page = String::new();
    page.push_str("<h2>Guarantees</h2>");
    page.push_str(&table(&report.verdict_table()));
    page.push_str(
        "<h2>Faults</h2><p>Each row is a period: the fault and the calm gap after it, up to the next fault. \
         Latencies are measured from each request's scheduled send time. Documented refusals are posts \
         answered <code>503</code> or <code>409</code> with <code>Retry-After</code> and nothing stored; they \
         are sent again with their key until accepted.</p>",
    );
    page.push_str(&table(&chaos.fault_table()));
    page.push_str("<h3>What each fault did</h3>");
    page.push_str(&table(&chaos.evidence_table()));
    let _ = write!(
        page,
        "<h3>Not served, by cause ({} requests, {} served)</h3>",
        chaos.requests, chaos.served
    );
    page.push_str(&table(&chaos.failure_table()));
    page.push_str("<h3>Instances</h3><ul>");
    for line in chaos.instance_lines() {
        let _ = write!(page, "<li>{}</li>", escape(&line));
    }
    let _ = write!(
        page,
        "</ul><p>Stale read: a first page requested {} ms or more after a post's <code>201</code> that \
         holds neither the post nor only newer messages, on either instance.</p>",
        chaos.freshness_bound_ms
    );
    page.push_str(
        "<h2>Charts</h2><p>Shaded: the fault windows, numbered as in the table (red: Redis, purple: \
         moderation).</p>",
    );
    page.push_str(&chaos_throughput_chart(report));
    page.push_str(&chaos_refusals_chart(report));
    page.push_str(&chaos_slowest_read_chart(report));
    page.push_str(&latency_chart(report));
    page
}

/// Markdown table (as produced by the report) to an HTML table.
fn table(markdown: &str) -> String {
    let mut out = String::from("<table>");
    for (i, line) in markdown.lines().enumerate() {
        if i == 1 {
            continue; // the --- separator
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for cell in cells {
            let class = match cell {
                "MISSED" => " class=\"missed\"",
                "met" => " class=\"met\"",
                _ => "",
            };
            let _ = write!(out, "<{tag}{class}>{}</{tag}>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// The whole HTML page.
pub fn render(report: &Report) -> String {
    let mut page = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>chat-service load test</title>\
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.met{color:#1e7b34;font-weight:bold}.missed{color:#b03a2e;font-weight:bold}\
svg{margin:0.5em 1em 0.5em 0}</style></head><body>",
    );
    page.push_str(if report.chaos.is_some() {
        "<h1>chat-service load test: chaos</h1>"
    } else {
        "<h1>chat-service load test: bare against stacked</h1>"
    });
    let variants: Vec<&str> = report.variants.iter().map(|v| v.variant.name()).collect();
    let _ = write!(
        page,
        "<p>Variants: {}. {} CPUs; pinning: {}. Two instances: {}.</p>",
        escape(&variants.join(", ")),
        report.cpus,
        escape(&match (report.pinning.generator, report.pinning.server) {
            (Some(g), Some(s)) => format!("generator CPU {g}, servers CPU {s}"),
            _ => "none".to_owned(),
        }),
        escape(&report.two_instances_note)
    );
    if let Some(note) = report.busy_machine_note() {
        let _ = write!(page, "<p class=\"missed\">Warning: {}.</p>", escape(&note));
    }
    if let Some(chaos) = &report.chaos {
        page.push_str(&chaos_section(report, chaos));
    } else {
        page.push_str("<h2>Verdicts</h2>");
        page.push_str(&table(&report.verdict_table()));
        page.push_str("<h2>Charts</h2>");
        page.push_str(&latency_chart(report));
        page.push_str(&throughput_chart(report));
        page.push_str(&hit_rate_chart(report));
    }
    page.push_str("<h2>Figures</h2><p>Latencies are p50 / p90 / p99 / p99.9, measured from each request's scheduled send time.</p>");
    page.push_str(&table(&report.summary_table()));
    if let (Some(bare), Some(stacked)) = (
        report.variant(Variant::Bare),
        report.variant(Variant::Stacked),
    ) {
        let steps = crate::report::same_rate_steps(bare, stacked);
        if !steps.is_empty() {
            page.push_str(
                "<h3>History p99 at the same offered rate (max-rate steps both sustained)</h3>\
                 <table><tr><th>offered req/s</th><th>bare p99 ms</th><th>stacked p99 ms</th></tr>",
            );
            for (rate, b, s) in steps {
                let _ = write!(
                    page,
                    "<tr><td>{rate:.0}</td><td>{b:.2}</td><td>{s:.2}</td></tr>"
                );
            }
            page.push_str("</table>");
        }
    }
    for v in &report.variants {
        if let Some(max) = &v.max_rate {
            let _ = write!(
                page,
                "<h3>{}: max-rate search (p99 bound {:.0} ms)</h3><table><tr><th>offered</th><th>answered/s</th><th>p99 ms</th><th>errors</th><th>sustained</th></tr>",
                escape(v.variant.name()),
                max.p99_bound_ms
            );
            for step in &max.steps {
                let _ = write!(
                    page,
                    "<tr><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                    step.rate,
                    step.achieved,
                    step.p99_ms,
                    step.errors,
                    if step.sustained { "yes" } else { "no" }
                );
            }
            page.push_str("</table>");
        }
    }
    page.push_str("</body></html>\n");
    page
}

/// Debian's Chromium, which `--screenshot` runs headless (`cargo xtask test` installs it).
pub const CHROMIUM: &str = "chromium";
/// Window of [`screenshot`], in CSS pixels: wide enough for the tables, tall enough for the
/// verdicts and the three charts.
pub const SCREENSHOT_SIZE: (u32, u32) = (1280, 1400);

/// Writes a PNG of the report page `html` (a file) to `png` with headless Chromium, in a
/// window of [`SCREENSHOT_SIZE`] and a throwaway profile.
pub fn screenshot(html: &Path, png: &Path) -> Result<(), Error> {
    let page = std::fs::canonicalize(html).map_err(|e| Error::Io(html.display().to_string(), e))?;
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.display().to_string(), e))?;
    }
    let profile = tempfile::Builder::new()
        .prefix("chat-loadtest-chromium-")
        .tempdir()
        .map_err(|e| Error::Io("profile directory".to_owned(), e))?;
    let _ = std::fs::remove_file(png);
    let (width, height) = SCREENSHOT_SIZE;
    let output = std::process::Command::new(CHROMIUM)
        // The page is the report this process just wrote, so Chromium's sandbox (which refuses
        // to start as root) adds nothing here.
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .map_err(|e| {
            Error::Io(
                format!(
                    "{CHROMIUM} (apt-get install -y chromium, or `cargo xtask test`, installs it)"
                ),
                e,
            )
        })?;
    if output.status.success() && png.is_file() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(Error::Setup(format!(
            "{CHROMIUM} did not write {} ({}): {}",
            png.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polylines(svg: &str) -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .map(|rest| {
                let start = rest.find("points=\"").unwrap() + 8;
                let end = rest[start..].find('"').unwrap() + start;
                rest[start..end].split_whitespace().count()
            })
            .collect()
    }

    #[test]
    fn every_point_is_drawn_and_empty_series_only_in_the_legend() {
        let series = vec![
            Series {
                name: "a".into(),
                color: "#000",
                points: (0..17).map(|i| (f64::from(i), 1.0)).collect(),
            },
            Series {
                name: "b<&>".into(),
                color: "#111",
                points: vec![(0.0, 0.0), (1.0, 2.0)],
            },
            Series {
                name: "empty".into(),
                color: "#222",
                points: vec![],
            },
        ];
        let axis = |max| Axis {
            scale: Scale::Linear { min: 0.0, max },
            title: "t".into(),
            ticks: vec![],
        };
        let svg = line_chart("chart", &axis(16.0), &axis(2.0), &series);
        assert_eq!(polylines(&svg), vec![17, 2]);
        assert!(svg.contains("b&lt;&amp;&gt;") && !svg.contains("b<&>"));
        assert!(svg.contains(">empty</text>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn points_land_inside_the_plot() {
        let series = vec![Series {
            name: "s".into(),
            color: "#000",
            points: vec![(-5.0, -1.0), (100.0, 1e9)],
        }];
        let x = Axis {
            scale: Scale::Linear {
                min: 0.0,
                max: 10.0,
            },
            title: String::new(),
            ticks: vec![],
        };
        let y = Axis {
            scale: Scale::Log {
                min: 0.1,
                max: 100.0,
            },
            title: String::new(),
            ticks: vec![],
        };
        let svg = line_chart("c", &x, &y, &series);
        let start = svg.find("points=\"").unwrap() + 8;
        let end = svg[start..].find('"').unwrap() + start;
        for pair in svg[start..end].split_whitespace() {
            let (px, py) = pair.split_once(',').unwrap();
            let (px, py): (f64, f64) = (px.parse().unwrap(), py.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&px), "{px}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&py), "{py}");
        }
    }

    #[test]
    fn scales_map_to_fractions() {
        let lin = Scale::Linear {
            min: 0.0,
            max: 10.0,
        };
        assert_eq!(lin.fraction(5.0), 0.5);
        assert_eq!(lin.fraction(20.0), 1.0);
        let log = Scale::Log {
            min: 1.0,
            max: 100.0,
        };
        assert!((log.fraction(10.0) - 0.5).abs() < 1e-12);
        assert_eq!(log.fraction(0.0), 0.0);
        assert_eq!(Scale::Linear { min: 1.0, max: 1.0 }.fraction(1.0), 0.0);
    }

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceiling(1116.0), 2000.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(430.0), 500.0);
        assert_eq!(nice_ceiling(0.2), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn second_ticks_are_round() {
        let ticks: Vec<String> = second_ticks(29.0).into_iter().map(|t| t.1).collect();
        assert_eq!(ticks, vec!["0s", "5s", "10s", "15s", "20s", "25s"]);
        assert_eq!(second_ticks(1.0).len(), 2, "0s and 1s");
    }

    #[test]
    fn log_ticks_are_1_2_5() {
        let ticks: Vec<String> = log_ticks(0.5, 20.0, "").into_iter().map(|t| t.1).collect();
        assert_eq!(ticks, vec!["0.5", "1", "2", "5", "10", "20"]);
    }

    /// Bare and stacked, the stacked one with a three-second timeline.
    fn two_variants() -> Report {
        use crate::report::tests::{options, variant};
        let mut report = Report::new(&options(vec![Variant::Bare, Variant::Stacked]));
        report
            .variants
            .push(variant(Variant::Bare, 40, 0, Some(2000.0)));
        let mut stacked = variant(Variant::Stacked, 10, 9, Some(2000.0));
        stacked.timeline.completed = vec![900, 1000, 1000, 30];
        stacked.timeline.history = vec![10, 0, 10, 1];
        stacked.timeline.history_hits = vec![9, 0, 5, 0];
        report.variants.push(stacked);
        report.finish();
        report
    }

    /// The report in headless Chromium, as a reader opens it: no console error or failed load,
    /// and every chart draws points (a polyline of at least two, inside the plot area).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_report_opens_in_chromium_and_every_chart_has_points() {
        use test_support::browser::Chromedriver;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        std::fs::write(&path, render(&two_variants())).unwrap();
        let driver = Chromedriver::start().await.unwrap();
        let browser = driver.browser(1280, 1000).await.unwrap();
        browser
            .goto(&format!("file://{}", path.display()))
            .await
            .unwrap();
        let charts = browser
            .eval(
                "return [...document.querySelectorAll('svg')].map(svg => {
                     const plot = svg.querySelector('rect').getBBox();
                     const lines = [...svg.querySelectorAll('polyline')];
                     const inside = lines.every(line => [...line.points].every(p =>
                         p.x >= plot.x - 0.5 && p.x <= plot.x + plot.width + 0.5 &&
                         p.y >= plot.y - 0.5 && p.y <= plot.y + plot.height + 0.5));
                     return {
                         title: svg.getAttribute('aria-label'),
                         points: lines.map(line => line.points.numberOfItems),
                         inside,
                         shown: svg.getBoundingClientRect().width > 0,
                     };
                 })",
                vec![],
            )
            .await
            .unwrap();
        let charts = charts.as_array().unwrap();
        assert_eq!(charts.len(), 3, "{charts:?}");
        for chart in charts {
            let points: Vec<u64> = chart["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect();
            assert!(
                !points.is_empty() && points.iter().all(|&n| n >= 2),
                "every drawn series has points: {chart}"
            );
            assert_eq!(chart["inside"], true, "{chart}");
            assert_eq!(chart["shown"], true, "{chart}");
        }
        browser.assert_clean_console().await.unwrap();
        browser.close().await.unwrap();
    }

    #[test]
    fn a_screenshot_is_a_png_of_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let html = dir.path().join("report.html");
        std::fs::write(&html, render(&two_variants())).unwrap();
        let png = dir.path().join("shots/report.png");
        screenshot(&html, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
        assert!(
            bytes.len() > 10_000,
            "more than a blank page: {} bytes",
            bytes.len()
        );
        assert!(screenshot(&dir.path().join("missing.html"), &png).is_err());
    }

    #[test]
    fn the_page_is_self_contained_and_charts_every_variant() {
        let report = two_variants();
        let page = render(&report);
        for banned in ["<script", "<link", "@import", "url(", "src="] {
            assert!(
                !page.contains(banned),
                "external or active content: {banned}"
            );
        }
        assert_eq!(page.matches("<svg").count(), 3);
        let latency = latency_chart(&report);
        let curve_points = report.variants[1].history_curve.len();
        assert_eq!(polylines(&latency), vec![curve_points, curve_points]);
        let throughput = throughput_chart(&report);
        assert_eq!(
            polylines(&throughput),
            vec![3],
            "bare has no timeline, stacked three whole seconds"
        );
        let hits = hit_rate_chart(&report);
        assert_eq!(
            polylines(&hits),
            vec![2],
            "the second without history answers is left out"
        );
        assert!(page.contains("History p99 at the same offered rate"));
    }

    #[test]
    fn a_chaos_report_shades_its_fault_windows() {
        use crate::chaos::{ChaosSchedule, Fault, FaultRecord};
        use crate::chaos_report::ChaosReport;
        use crate::load::ChaosResult;
        use crate::report::tests::{options, variant};
        let mut options = options(vec![Variant::Stacked2]);
        options.chaos = true;
        let mut report = Report::new(&options);
        let mut v = variant(Variant::Stacked2, 2, 5, None);
        v.timeline.completed = vec![1000; 21];
        v.timeline.errors = vec![0; 21];
        v.timeline.refused = vec![0, 0, 30, 12, 0];
        v.timeline.slowest_read_ms = vec![3.0; 21];
        let schedule = ChaosSchedule::spread(std::time::Duration::from_secs(20));
        let faults = schedule
            .faults
            .iter()
            .map(|s| FaultRecord {
                evidence: "<seen>".into(),
                ..FaultRecord::as_planned(s)
            })
            .collect();
        let result = ChaosResult {
            faults,
            periods: Vec::new(),
            resend_drain_s: 0.0,
        };
        report.chaos = Some(ChaosReport::new(schedule, Some(result), &v, Vec::new()));
        report.variants.push(v);
        report.finish();
        let page = render(&report);
        assert!(page.contains("<h1>chat-service load test: chaos</h1>"));
        assert!(page.contains("<h2>Guarantees</h2>") && !page.contains("<h2>Verdicts</h2>"));
        assert_eq!(page.matches("<svg").count(), 4);
        // Three time charts, eight fault windows each, numbered as the table's rows.
        assert_eq!(page.matches("class=\"band\"").count(), 3 * 8);
        assert!(page.contains(&format!(">{}</text>", Fault::ORDER.len())));
        assert!(page.contains("&lt;seen&gt;"), "evidence is escaped");
        for banned in ["<script", "<link", "url(", "src="] {
            assert!(!page.contains(banned), "{banned}");
        }
        let refusals = chaos_refusals_chart(&report);
        assert_eq!(
            polylines(&refusals),
            vec![20, 20],
            "one point per whole second"
        );
    }

    #[test]
    fn markdown_tables_become_escaped_html() {
        let html = table("| a | b |\n| --- | --- |\n| x<y | MISSED |\n");
        assert_eq!(
            html,
            "<table><tr><th>a</th><th>b</th></tr><tr><td>x&lt;y</td><td class=\"missed\">MISSED</td></tr></table>"
        );
    }
}
