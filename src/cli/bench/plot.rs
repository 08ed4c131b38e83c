//! The soak's figure as a self-contained SVG: RSS over time on top, each request kind's p99
//! per window below (log scale: queries answer in milliseconds, rollbacks in hundreds).

use std::fmt::Write;

use super::soak::{KINDS, Sample, Verdict};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 250.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 70.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// A y axis: maps a value to a pixel row inside its panel, and names its ticks.
struct Axis {
    top: f64,
    min: f64,
    max: f64,
    log: bool,
}

impl Axis {
    fn y(&self, v: f64) -> f64 {
        let (v, min, max) = if self.log {
            (v.max(self.min).log10(), self.min.log10(), self.max.log10())
        } else {
            (v, self.min, self.max)
        };
        let span = if max > min { max - min } else { 1.0 };
        self.top + PANEL - (v - min) / span * PANEL
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut v = self.min;
            while v <= self.max * 1.0001 {
                t.push(v);
                v *= 10.0;
            }
            t
        } else {
            let step = nice_step((self.max - self.min) / 5.0);
            let mut t = Vec::new();
            let mut v = (self.min / step).ceil() * step;
            while v <= self.max + step * 1e-9 {
                t.push(v);
                v += step;
            }
            t
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn fmt_tick(v: f64) -> String {
    if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        // Steps are decimal, their sums are not: 0.30000000000000004 is 0.3.
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        coords.join(" ")
    );
    // A marker per window, so a kind seen in one window only still shows.
    for (x, y) in points {
        let _ = writeln!(
            out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{colour}"/>"#
        );
    }
}

/// Frame, grid, tick labels and title of one panel.
fn frame(out: &mut String, axis: &Axis, title: &str, x_max: f64) {
    let right = WIDTH - RIGHT;
    let bottom = axis.top + PANEL;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">{title}</text>"#,
        axis.top - 10.0
    );
    for t in axis.ticks() {
        let y = axis.y(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let step = nice_step(x_max / 8.0);
    let mut t = 0.0;
    while t <= x_max + step * 1e-9 {
        let x = x_pixel(t, x_max);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            axis.top,
            bottom + 16.0,
            fmt_tick(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{PANEL}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">minutes</text>"##,
        axis.top,
        right - LEFT,
        (LEFT + right) / 2.0,
        bottom + 32.0
    );
}

fn x_pixel(minutes: f64, x_max: f64) -> f64 {
    let span = if x_max > 0.0 { x_max } else { 1.0 };
    LEFT + minutes / span * (WIDTH - RIGHT - LEFT)
}

/// The figure of a soak: RSS (MiB) and p99 per kind (ms) against minutes since the start.
pub fn soak_svg(samples: &[Sample], verdict: &Verdict) -> String {
    let verdict_lines: Vec<String> = if verdict.pass {
        vec!["verdict: pass (RSS flat, p99 stable, no failed requests)".to_string()]
    } else {
        std::iter::once("verdict: FAIL".to_string())
            .chain(
                verdict
                    .reasons
                    .iter()
                    .map(|r| format!("- {}", xml_escape(r))),
            )
            .collect()
    };
    let height = TOP + 2.0 * PANEL + GAP + 50.0 + 16.0 * verdict_lines.len() as f64;
    let x_max = samples.last().map_or(1.0, |s| s.t_s / 60.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );

    let rss_max = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let rss = Axis {
        top: TOP,
        min: 0.0,
        max: (rss_max * 1.1).max(1.0),
        log: false,
    };
    let title = format!(
        "Process RSS (MiB), sampled per window: slope over the second half {:+.1} MiB/h",
        verdict.rss_slope_mib_per_h
    );
    frame(&mut out, &rss, &title, x_max);
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (x_pixel(s.t_s / 60.0, x_max), rss.y(s.rss_mib)))
        .collect();
    polyline(&mut out, &points, COLOURS[0]);

    let p99s = samples
        .iter()
        .flat_map(|s| s.kinds.values())
        .filter(|k| k.count > 0)
        .map(|k| k.p99_ms);
    let p99_max = p99s.clone().fold(1.0, f64::max);
    let p99_min = p99s.fold(f64::INFINITY, f64::min);
    let decade = |v: f64, up: bool| {
        let e = v.max(1e-3).log10();
        10f64.powf(if up { e.ceil() } else { e.floor() })
    };
    let p99 = Axis {
        top: TOP + PANEL + GAP,
        min: decade(if p99_min.is_finite() { p99_min } else { 0.1 }, false),
        max: decade(p99_max, true),
        log: true,
    };
    frame(
        &mut out,
        &p99,
        "p99 latency per window (ms, log scale)",
        x_max,
    );
    for (i, kind) in KINDS.iter().enumerate() {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| {
                let k = s.kinds.get(*kind).filter(|k| k.count > 0)?;
                Some((x_pixel(s.t_s / 60.0, x_max), p99.y(k.p99_ms)))
            })
            .collect();
        polyline(&mut out, &points, COLOURS[i % COLOURS.len()]);
        let y = p99.top + 14.0 + 18.0 * i as f64;
        let x = WIDTH - RIGHT + 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{y:.1}" font-size="11">{kind}</text>"#,
            y - 4.0,
            x + 18.0,
            y - 4.0,
            COLOURS[i % COLOURS.len()],
            x + 24.0
        );
    }
    let first_line = TOP + 2.0 * PANEL + GAP + 60.0;
    for (i, line) in verdict_lines.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="12">{line}</text>"#,
            first_line + 16.0 * i as f64
        );
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(60.0), 100.0);
    }

    #[test]
    fn a_log_axis_puts_decades_evenly() {
        let a = Axis {
            top: 0.0,
            min: 1.0,
            max: 100.0,
            log: true,
        };
        assert_eq!(a.ticks(), vec![1.0, 10.0, 100.0]);
        assert_eq!(a.y(100.0), 0.0);
        assert_eq!(a.y(1.0), PANEL);
        assert!((a.y(10.0) - PANEL / 2.0).abs() < 1e-9);
    }
}
