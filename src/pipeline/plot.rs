//! Small SVG charts (line and scatter) for `surgery report`: no plotting dependency, readable
//! axes with round tick values, a legend beside the plot.

use std::fmt::Write;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    Line,
    Points,
    /// Points with their labels written beside them.
    LabelledPoints,
    /// A dashed line (for fronts and reference lines).
    Dashed,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Per-point labels (LabelledPoints only).
    pub labels: Vec<String>,
    pub style: Style,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Series {
            name: name.into(),
            points,
            labels: vec![],
            style,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed axis ranges; by default the data's range, padded.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

/// About `n` round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// A tick label without float noise (0.30000000000000004 → 0.3).
fn tick_text(v: f64) -> String {
    let rounded = (v * 1e6).round() / 1e6;
    if rounded.abs() >= 1e6 && rounded % 1e6 == 0.0 {
        format!("{}M", rounded / 1e6)
    } else {
        let mut s = format!("{rounded}");
        if s == "-0" {
            s = "0".into();
        }
        s
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(hi.abs() * 0.1).max(1e-9);
    (lo - span * pad, hi + span * pad)
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let (w, h) = (820.0, 460.0);
        let (left, top, plot_w, plot_h) = (75.0, 40.0, 520.0, 360.0);
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = self
            .x_range
            .unwrap_or_else(|| range(all().map(|p| p.0), 0.05));
        let (y0, y1) = self
            .y_range
            .unwrap_or_else(|| range(all().map(|p| p.1), 0.08));
        let x = |v: f64| left + plot_w * (v - x0) / (x1 - x0);
        let y = |v: f64| top + plot_h * (1.0 - (v - y0) / (y1 - y0));
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"##,
            left + plot_w / 2.0,
            escape(&self.title)
        );
        for t in ticks(x0, x1, 6) {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="#e6e6e6"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                x(t),
                top + plot_h,
                top + plot_h + 16.0,
                tick_text(t)
            );
        }
        for t in ticks(y0, y1, 6) {
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#e6e6e6"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                y(t),
                left + plot_w,
                left - 6.0,
                y(t) + 4.0,
                tick_text(t)
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">{}</text>
"##,
            left + plot_w / 2.0,
            top + plot_h + 40.0,
            escape(&self.x_label),
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            // Finite points only, with their index (for their label).
            let inside: Vec<(usize, f64, f64)> = s
                .points
                .iter()
                .enumerate()
                .filter(|(_, (a, b))| a.is_finite() && b.is_finite())
                .map(|(k, &(a, b))| (k, a, b))
                .collect();
            match s.style {
                Style::Line | Style::Dashed => {
                    let dash = if s.style == Style::Dashed {
                        r#" stroke-dasharray="6 4""#
                    } else {
                        ""
                    };
                    let path: Vec<String> = inside
                        .iter()
                        .map(|(_, a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
                        .collect();
                    let _ = writeln!(
                        svg,
                        r#"<polyline fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{}"/>"#,
                        path.join(" ")
                    );
                }
                Style::Points | Style::LabelledPoints => {
                    // Labels of nearby points are moved down until they no longer overlap.
                    // Placed top to bottom, so a moved label stays next to its point.
                    let mut placed: Vec<(f64, f64)> = vec![];
                    let mut order = inside.clone();
                    order.sort_by(|p, q| q.2.total_cmp(&p.2));
                    for (k, a, b) in &order {
                        let _ = writeln!(
                            svg,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="4.5" fill="{color}"/>"#,
                            x(*a),
                            y(*b)
                        );
                        if let (Style::LabelledPoints, Some(label)) = (s.style, s.labels.get(*k)) {
                            let (lx, mut ly) = (x(*a) + 7.0, y(*b) - 6.0);
                            while placed
                                .iter()
                                .any(|(px, py)| (px - lx).abs() < 90.0 && (py - ly).abs() < 12.0)
                            {
                                ly += 12.0;
                            }
                            placed.push((lx, ly));
                            let _ = writeln!(
                                svg,
                                r#"<text x="{lx:.1}" y="{ly:.1}" font-size="11">{}</text>"#,
                                escape(label)
                            );
                        }
                    }
                }
            }
            let ly = top + 10.0 + 18.0 * i as f64;
            let lx = left + plot_w + 15.0;
            match s.style {
                Style::Points | Style::LabelledPoints => {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{}" cy="{ly}" r="4.5" fill="{color}"/>"#,
                        lx + 9.0
                    );
                }
                Style::Line | Style::Dashed => {
                    let dash = if s.style == Style::Dashed {
                        r#" stroke-dasharray="6 4""#
                    } else {
                        ""
                    };
                    let _ = write!(
                        svg,
                        r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#,
                        lx + 18.0
                    );
                }
            }
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let labels: Vec<String> = ticks(0.0, 1.0, 5).into_iter().map(tick_text).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = ticks(3.2e6, 22.6e6, 6);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert!(t
            .iter()
            .all(|v| (v / 2.5e6).fract() == 0.0 || (v / 5e6).fract() == 0.0));
        assert_eq!(tick_text(0.30000000000000004), "0.3");
        assert_eq!(tick_text(20e6), "20M");
    }
}
