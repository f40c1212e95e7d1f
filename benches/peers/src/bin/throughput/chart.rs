//! The throughput chart: one horizontal bar per variant, its req/s as a multiple of its baseline's, with
//! the min–max of the per-round ratios as whiskers, a line at 1.0 and a mark at each target.
//!
//! The SVG is written by hand: it is a few dozen rectangles, lines and labels, and a plotting crate would
//! bring a dependency tree (and often a font and raster stack) into a benchmark whose output should stay
//! small, diffable text that renders the same on GitHub and in a browser.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 900.0;
/// Left edge of the plot; the variant names and values sit to its left.
const PLOT_LEFT: f64 = 270.0;
const PLOT_RIGHT: f64 = 870.0;
const TOP: f64 = 64.0;
const ROW: f64 = 26.0;
const BAR: f64 = 14.0;

const OURS: &str = "#3b6fb6";
const STACK: &str = "#1d3f73";
const PEER: &str = "#a3abb5";
const TARGET: &str = "#d62728";

/// Text for XML: `&`, `<` and `>` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Bar {
    label: String,
    ratio: f64,
    min: f64,
    max: f64,
    target: Option<f64>,
    color: &'static str,
}

pub fn render(report: &Report) -> String {
    let bars: Vec<Bar> = report
        .variants
        .iter()
        .filter(|v| !v.variant.is_baseline())
        .map(|v| Bar {
            label: if v.baseline == "bare" {
                v.name.to_owned()
            } else {
                format!("{} (vs {})", v.name, v.baseline)
            },
            ratio: v.ratio,
            min: v.paired_ratio.min,
            max: v.paired_ratio.max,
            target: v.variant.target(),
            color: if v.peer {
                PEER
            } else if v.name.starts_with("stack") {
                STACK
            } else {
                OURS
            },
        })
        .collect();

    // The axis reaches at least 1.1 and past the longest whisker, in steps of 0.1.
    let longest = bars
        .iter()
        .flat_map(|b| [b.ratio, b.max])
        .filter(|v| v.is_finite())
        .fold(1.1_f64, f64::max);
    let axis_max = (longest * 10.0).ceil() / 10.0;
    let tick = if axis_max > 1.6 { 0.2 } else { 0.1 };
    let x =
        |ratio: f64| PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * ratio.clamp(0.0, axis_max) / axis_max;
    let plot_bottom = TOP + ROW * bars.len() as f64;
    let height = plot_bottom + 58.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let placement = if report.settings.pinning == "split" {
        "server on its own core"
    } else {
        "server and wrk on one core"
    };
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Served req/s as a multiple of bare axum ({placement})</text>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="42" fill="#555">median of {} of {} s, wrk -c{}; whiskers: min–max of the rounds' ratios; commit {}, {}</text>"##,
        match report.settings.rounds {
            1 => "1 round".to_owned(),
            n => format!("{n} rounds"),
        },
        report.settings.seconds,
        report.settings.connections,
        escape(&report.source),
        escape(&report.date),
    );

    // Grid and tick labels.
    let steps = (axis_max / tick).round() as usize;
    for i in 0..=steps {
        let value = i as f64 * tick;
        let gx = x(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{plot_bottom}" stroke="#e3e3e3"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#333">{value:.1}×</text>"##,
            plot_bottom + 16.0
        );
    }

    for (i, bar) in bars.iter().enumerate() {
        let top = TOP + ROW * i as f64;
        let mid = top + ROW / 2.0;
        let bar_top = mid - BAR / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            mid + 4.0,
            escape(&bar.label)
        );
        let value = if bar.ratio.is_finite() {
            format!("{:.3}", bar.ratio)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{value}</text>"##,
            PLOT_LEFT - 8.0,
            mid + 4.0
        );
        if bar.ratio.is_finite() {
            let _ = writeln!(
                svg,
                r#"<rect x="{PLOT_LEFT}" y="{bar_top:.1}" width="{:.1}" height="{BAR}" fill="{}"/>"#,
                x(bar.ratio) - PLOT_LEFT,
                bar.color
            );
        }
        if bar.min.is_finite() && bar.max.is_finite() {
            let (x0, x1) = (x(bar.min), x(bar.max));
            let _ = writeln!(
                svg,
                r##"<path d="M{x0:.1} {:.1}V{:.1}M{x0:.1} {mid:.1}H{x1:.1}M{x1:.1} {:.1}V{:.1}" stroke="#111" stroke-width="1.2" fill="none"/>"##,
                mid - 4.0,
                mid + 4.0,
                mid - 4.0,
                mid + 4.0
            );
        }
        if let Some(target) = bar.target {
            let tx = x(target);
            let _ = writeln!(
                svg,
                r#"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="{TARGET}" stroke-width="2.5"/>"#,
                bar_top - 3.0,
                bar_top + BAR + 3.0
            );
        }
    }

    let one = x(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{one:.1}" y1="{:.1}" x2="{one:.1}" y2="{plot_bottom}" stroke="#111" stroke-width="1.2" stroke-dasharray="4 3"/>"##,
        TOP - 4.0
    );

    // Legend.
    let ly = plot_bottom + 44.0;
    let mut lx = 10.0;
    for (color, text) in [
        (OURS, "this workspace's layer"),
        (STACK, "the full stack"),
        (PEER, "peer crate"),
    ] {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{text}</text>"#,
            ly - 10.0,
            lx + 17.0
        );
        lx += 40.0 + 7.0 * text.len() as f64;
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{lx}" y1="{:.1}" x2="{lx}" y2="{:.1}" stroke="{TARGET}" stroke-width="2.5"/><text x="{:.1}" y="{ly:.1}">target (issue 14)</text>"#,
        ly - 12.0,
        ly + 2.0,
        lx + 8.0
    );
    svg.push_str("</svg>\n");
    svg
}
