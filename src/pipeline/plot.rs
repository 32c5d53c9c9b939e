//! Small SVG charts (lines and points) for `surgery report`, without a plotting dependency. They
//! are made to stay readable with many runs: every series has its own colour and marker from a
//! palette that never repeats within a chart, points carry short numbers explained in a key
//! (placed so that they overlap neither each other nor the points), error bars show ± sd,
//! reference lines (the teacher, the goal) are drawn across the plot, and every legend lies
//! inside the picture, beside or below its plot. Several charts can be laid out as small
//! multiples in one picture (`grid_svg`).

use std::fmt::Write;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    Line,
    Points,
    /// Points numbered in the plot and listed with their labels in the key.
    LabelledPoints,
    /// A dotted near-black line, outside the palette (for fronts).
    Dashed,
}

/// The shape of a series' points (and of its legend entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    TriangleDown,
    Cross,
    Plus,
    Star,
}

impl Marker {
    /// As many shapes as there are colours: series `i` gets colour `i` and shape `i`.
    pub const ALL: [Marker; 8] = [
        Marker::Circle,
        Marker::Square,
        Marker::TriangleUp,
        Marker::Diamond,
        Marker::TriangleDown,
        Marker::Cross,
        Marker::Plus,
        Marker::Star,
    ];
}

/// Eight colours told apart also by most colour-blind readers (Okabe–Ito, with yellow replaced
/// by brown and olive, which read on white). Reference lines are grey, outside the palette.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#6B6B00",
];

const REFERENCE_COLOR: &str = "#555555";
const FRONT_COLOR: &str = "#222222";
const FRONT_DASH: &str = r#" stroke-dasharray="2 3""#;
const REFERENCE_DASH: &str = r#" stroke-dasharray="7 4""#;

#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry; an empty name adds none (e.g. further seeds of a configuration).
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Per-point labels (LabelledPoints only), listed in the key under their numbers.
    pub labels: Vec<String>,
    /// Per-point ± error (drawn as a vertical bar when positive); may be empty.
    pub errors: Vec<f64>,
    pub style: Style,
    /// Palette index; by default the series' position in the chart.
    pub color: Option<usize>,
    /// By default the marker with the series' colour index.
    pub marker: Option<Marker>,
    /// A thinner, paler line (one of several runs shown under one legend entry).
    pub faint: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Series {
            name: name.into(),
            points,
            labels: vec![],
            errors: vec![],
            style,
            color: None,
            marker: None,
            faint: false,
        }
    }
}

/// A horizontal line across the plot (the teacher's score, a goal), named in the legend.
#[derive(Debug, Clone)]
pub struct Reference {
    pub name: String,
    pub y: f64,
    pub dashed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub references: Vec<Reference>,
    /// Fixed axis ranges; by default the data's range, padded.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

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

/// At most `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
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

/// A marker of radius `r` at (x, y).
fn marker_svg(marker: Marker, x: f64, y: f64, r: f64, color: &str) -> String {
    let poly = |pts: &[(f64, f64)]| {
        let p: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x + a * r, y + b * r))
            .collect();
        format!(
            r#"<polygon points="{}" fill="{color}" stroke="white" stroke-width="0.6"/>"#,
            p.join(" ")
        )
    };
    let stroke =
        |d: &str| format!(r#"<path d="{d}" stroke="{color}" stroke-width="2.4" fill="none"/>"#);
    match marker {
        Marker::Circle => format!(
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{color}" stroke="white" stroke-width="0.6"/>"#
        ),
        Marker::Square => poly(&[(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
        Marker::TriangleUp => poly(&[(0.0, -1.15), (1.05, 0.75), (-1.05, 0.75)]),
        Marker::TriangleDown => poly(&[(0.0, 1.15), (1.05, -0.75), (-1.05, -0.75)]),
        Marker::Diamond => poly(&[(0.0, -1.2), (1.0, 0.0), (0.0, 1.2), (-1.0, 0.0)]),
        Marker::Star => {
            let pts: Vec<(f64, f64)> = (0..10)
                .map(|k| {
                    let a = std::f64::consts::PI * (k as f64 / 5.0 - 0.5);
                    let rr = if k % 2 == 0 { 1.25 } else { 0.55 };
                    (rr * a.cos(), rr * a.sin())
                })
                .collect();
            poly(&pts)
        }
        Marker::Cross => stroke(&format!(
            "M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}",
            x - r,
            y - r,
            x + r,
            y + r,
            x - r,
            y + r,
            x + r,
            y - r
        )),
        Marker::Plus => stroke(&format!(
            "M{:.1} {y:.1}L{:.1} {y:.1}M{x:.1} {:.1}L{x:.1} {:.1}",
            x - r * 1.15,
            x + r * 1.15,
            y - r * 1.15,
            y + r * 1.15
        )),
    }
}

/// An axis-aligned box (x, y, width, height) in picture coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
    fn inside(&self, o: &Rect) -> bool {
        self.x >= o.x
            && self.y >= o.y
            && self.x + self.w <= o.x + o.w
            && self.y + self.h <= o.y + o.h
    }
}

/// Width of a text at 11 px in the default sans-serif font (a generous estimate).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

const ROW: f64 = 15.0;
/// Characters of a key or legend line.
const KEY_CHARS: usize = 58;

/// One line of a legend or key.
enum Row {
    /// A heading or a series entry: its sample (marker or line) and name.
    Sample {
        color: String,
        sample: Sample,
        text: String,
    },
    /// A numbered point: "N  label", indented under its series.
    Numbered { number: usize, text: String },
}

enum Sample {
    Marker(Marker),
    /// The line's `stroke-dasharray` attribute, or nothing for a solid line.
    Line {
        dash: &'static str,
    },
}

/// What a chart draws: the plot and the rows of its legend (with the numbers of labelled points).
struct Layout {
    rows: Vec<Row>,
}

impl Chart {
    fn color(&self, i: usize) -> &'static str {
        if self.series[i].style == Style::Dashed {
            return FRONT_COLOR;
        }
        PALETTE[self.series[i].color.unwrap_or(i) % PALETTE.len()]
    }

    /// Colour index `c` gets marker `c`; past the palette, the next marker, so that no two of
    /// the first 64 series look alike.
    fn marker(&self, i: usize) -> Marker {
        let c = self.series[i].color.unwrap_or(i);
        let n = Marker::ALL.len();
        self.series[i]
            .marker
            .unwrap_or(Marker::ALL[(c + c / n) % n])
    }

    /// The legend's rows: references, then each named series, with the numbered points of
    /// labelled series under their series.
    fn layout(&self) -> Layout {
        let mut rows = vec![];
        for r in &self.references {
            rows.push(Row::Sample {
                color: REFERENCE_COLOR.into(),
                sample: Sample::Line {
                    dash: if r.dashed { REFERENCE_DASH } else { "" },
                },
                text: r.name.clone(),
            });
        }
        let mut number = 0;
        for (i, s) in self.series.iter().enumerate() {
            let sample = match s.style {
                Style::Points | Style::LabelledPoints => Sample::Marker(self.marker(i)),
                Style::Line => Sample::Line { dash: "" },
                Style::Dashed => Sample::Line { dash: FRONT_DASH },
            };
            if !s.name.is_empty() {
                rows.push(Row::Sample {
                    color: self.color(i).into(),
                    sample,
                    text: s.name.clone(),
                });
            }
            if s.style == Style::LabelledPoints {
                for (k, (a, b)) in s.points.iter().enumerate() {
                    if a.is_finite() && b.is_finite() {
                        number += 1;
                        rows.push(Row::Numbered {
                            number,
                            text: s.labels.get(k).cloned().unwrap_or_default(),
                        });
                    }
                }
            }
        }
        Layout { rows }
    }

    /// The legend's height for `columns` columns of rows.
    fn legend_height(&self, columns: usize) -> f64 {
        let rows = self.layout().rows.len();
        rows.div_ceil(columns.max(1)) as f64 * ROW
    }

    /// A picture of this chart alone, its legend to the right of the plot.
    pub fn to_svg(&self) -> String {
        let (left, top, plot_w, plot_h): (f64, f64, f64, f64) = (75.0, 40.0, 560.0, 380.0);
        let key_x = left + plot_w + 60.0;
        let key_w = KEY_CHARS as f64 * 11.0 * 0.6 + 40.0;
        let w = key_x + key_w;
        let h = (top + plot_h + 55.0).max(top + self.legend_height(1) + 20.0);
        let mut svg = svg_open(w, h);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            left + plot_w / 2.0,
            escape(&self.title)
        );
        let plot = Rect {
            x: left,
            y: top,
            w: plot_w,
            h: plot_h,
        };
        self.draw_plot(&mut svg, plot);
        self.draw_legend(&mut svg, key_x, top, key_w, 1);
        svg.push_str("</svg>\n");
        svg
    }

    /// Draws the axes, reference lines and series into `area` (the plot's frame).
    fn draw_plot(&self, svg: &mut String, area: Rect) {
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = self
            .x_range
            .unwrap_or_else(|| range(all().map(|p| p.0), 0.05));
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let bars = self.series.iter().flat_map(|s| {
                s.points.iter().enumerate().flat_map(move |(k, p)| {
                    let e = s.errors.get(k).copied().unwrap_or(0.0).max(0.0);
                    [p.1 - e, p.1 + e]
                })
            });
            range(bars.chain(self.references.iter().map(|r| r.y)), 0.08)
        });
        let x = |v: f64| area.x + area.w * (v - x0) / (x1 - x0);
        let y = |v: f64| area.y + area.h * (1.0 - (v - y0) / (y1 - y0));
        for t in ticks(x0, x1, 6) {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#e6e6e6"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
                x(t),
                area.y,
                area.y + area.h,
                area.y + area.h + 16.0,
                tick_text(t)
            );
        }
        for t in ticks(y0, y1, 6) {
            let _ = writeln!(
                svg,
                r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#e6e6e6"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
                area.x,
                y(t),
                area.x + area.w,
                area.x - 6.0,
                y(t) + 4.0,
                tick_text(t)
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">{}</text>"#,
            area.x,
            area.y,
            area.w,
            area.h,
            area.x + area.w / 2.0,
            area.y + area.h + 36.0,
            escape(&self.x_label),
            area.x - 52.0,
            area.y + area.h / 2.0,
            area.x - 52.0,
            area.y + area.h / 2.0,
            escape(&self.y_label)
        );
        for r in &self.references {
            let dash = if r.dashed { REFERENCE_DASH } else { "" };
            let _ = writeln!(
                svg,
                r#"<line x1="{}" y1="{2:.1}" x2="{}" y2="{2:.1}" stroke="{REFERENCE_COLOR}" stroke-width="1.4"{dash}/>"#,
                area.x,
                area.x + area.w,
                y(r.y)
            );
        }
        // Lines first, points over them.
        for (i, s) in self.series.iter().enumerate() {
            if !matches!(s.style, Style::Line | Style::Dashed) {
                continue;
            }
            let dash = if s.style == Style::Dashed {
                FRONT_DASH
            } else {
                ""
            };
            let path: Vec<String> = s
                .points
                .iter()
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
                .collect();
            let (width, opacity) = if s.faint { (1.2, 0.55) } else { (1.8, 1.0) };
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}"{dash} points="{}"/>"#,
                self.color(i),
                path.join(" ")
            );
        }
        // Every point is an obstacle for the numbers placed next to points.
        let mut obstacles: Vec<Rect> = vec![];
        let mut numbered: Vec<(f64, f64, usize)> = vec![];
        let mut number = 0;
        for (i, s) in self.series.iter().enumerate() {
            if !matches!(s.style, Style::Points | Style::LabelledPoints) {
                continue;
            }
            let color = self.color(i);
            for (k, &(a, b)) in s.points.iter().enumerate() {
                if !(a.is_finite() && b.is_finite()) {
                    continue;
                }
                let (px, py) = (x(a), y(b));
                let e = s.errors.get(k).copied().unwrap_or(0.0);
                if e > 0.0 {
                    let (top, bottom) = (y(b + e), y(b - e));
                    let _ = writeln!(
                        svg,
                        r#"<path d="M{px:.1} {top:.1}V{bottom:.1}M{:.1} {top:.1}H{:.1}M{:.1} {bottom:.1}H{:.1}" stroke="{color}" stroke-width="1.3" fill="none"/>"#,
                        px - 3.5,
                        px + 3.5,
                        px - 3.5,
                        px + 3.5
                    );
                    obstacles.push(Rect {
                        x: px - 4.0,
                        y: top,
                        w: 8.0,
                        h: bottom - top,
                    });
                }
                svg.push_str(&marker_svg(self.marker(i), px, py, 5.0, color));
                svg.push('\n');
                obstacles.push(Rect {
                    x: px - 6.0,
                    y: py - 6.0,
                    w: 12.0,
                    h: 12.0,
                });
                if s.style == Style::LabelledPoints {
                    number += 1;
                    numbered.push((px, py, number));
                }
            }
        }
        for (px, py, n) in numbered {
            let text = n.to_string();
            let (lx, ly, far) = place_label(px, py, &text, &obstacles, area);
            obstacles.push(Rect {
                x: lx,
                y: ly - 10.0,
                w: text_width(&text, 11.0),
                h: 12.0,
            });
            if far {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{px:.1}" y1="{py:.1}" x2="{:.1}" y2="{:.1}" stroke="#999999" stroke-width="0.7"/>"##,
                    lx + text_width(&text, 11.0) / 2.0,
                    ly - 4.0
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{lx:.1}" y="{ly:.1}" font-size="11" font-weight="bold">{text}</text>"#
            );
        }
    }

    /// Draws the legend rows in `columns` columns of `width` from (x, y).
    fn draw_legend(&self, svg: &mut String, x: f64, y: f64, width: f64, columns: usize) {
        let layout = self.layout();
        let per_column = layout.rows.len().div_ceil(columns.max(1)).max(1);
        let column_w = width / columns.max(1) as f64;
        let chars = ((column_w - 34.0) / (11.0 * 0.6)) as usize;
        for (k, row) in layout.rows.iter().enumerate() {
            let cx = x + column_w * (k / per_column) as f64;
            let cy = y + ROW * (k % per_column) as f64 + 10.0;
            match row {
                Row::Sample {
                    color,
                    sample,
                    text,
                } => {
                    match sample {
                        Sample::Marker(m) => {
                            svg.push_str(&marker_svg(*m, cx + 9.0, cy - 4.0, 5.0, color))
                        }
                        Sample::Line { dash } => {
                            let _ = write!(
                                svg,
                                r#"<line x1="{cx:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
                                cy - 4.0,
                                cx + 20.0
                            );
                        }
                    }
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{cy:.1}" font-size="11">{}</text>"#,
                        cx + 26.0,
                        escape(&shorten(text, chars))
                    );
                }
                Row::Numbered { number, text } => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{cy:.1}" font-size="11" text-anchor="end" font-weight="bold">{number}</text><text x="{:.1}" y="{cy:.1}" font-size="11">{}</text>"#,
                        cx + 22.0,
                        cx + 26.0,
                        escape(&shorten(text, chars))
                    );
                }
            }
        }
    }
}

/// Where a point's number goes: the first spot around the point, nearest first, that stays in
/// the plot and overlaps no other point or number. Returns the text's baseline origin and
/// whether it is far enough from the point to need a leader line.
fn place_label(px: f64, py: f64, text: &str, obstacles: &[Rect], area: Rect) -> (f64, f64, bool) {
    let w = text_width(text, 11.0);
    let h = 12.0;
    const DIRECTIONS: [(f64, f64); 8] = [
        (1.0, -0.6),
        (1.0, 0.6),
        (-1.0, -0.6),
        (-1.0, 0.6),
        (0.0, -1.0),
        (0.0, 1.0),
        (1.0, 0.0),
        (-1.0, 0.0),
    ];
    for distance in [8.0, 14.0, 22.0, 32.0, 44.0, 58.0] {
        for (dx, dy) in DIRECTIONS {
            // The box's centre moves out from the point; (x, y) is its top-left corner.
            let cx = px + dx * (distance + w / 2.0);
            let cy = py + dy * (distance + h / 2.0);
            let rect = Rect {
                x: cx - w / 2.0,
                y: cy - h / 2.0,
                w,
                h,
            };
            if rect.inside(&area) && !obstacles.iter().any(|o| o.overlaps(&rect)) {
                return (rect.x, rect.y + 10.0, distance > 14.0);
            }
        }
    }
    (px + 7.0, py - 6.0, false)
}

fn svg_open(w: f64, h: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    )
}

/// Small multiples: the charts in a grid of `columns`, each with its legend below its plot,
/// under one title.
pub fn grid_svg(title: &str, charts: &[Chart], columns: usize) -> String {
    let columns = columns.clamp(1, charts.len().max(1));
    let (left, plot_w, plot_h): (f64, f64, f64) = (70.0, 360.0, 220.0);
    let cell_w = left + plot_w + 30.0;
    let legend_gap = 50.0;
    let rows: Vec<&[Chart]> = charts.chunks(columns).collect();
    let row_heights: Vec<f64> = rows
        .iter()
        .map(|row| {
            let legend = row.iter().map(|c| c.legend_height(1)).fold(0.0, f64::max);
            30.0 + plot_h + legend_gap + legend + 15.0
        })
        .collect();
    let w = cell_w * columns as f64 + 10.0;
    let h = 45.0 + row_heights.iter().sum::<f64>();
    let mut svg = svg_open(w, h);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let mut top = 45.0;
    for (row, height) in rows.iter().zip(&row_heights) {
        for (c, chart) in row.iter().enumerate() {
            let x0 = c as f64 * cell_w;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
                x0 + left + plot_w / 2.0,
                top + 16.0,
                // Bold text is about a tenth wider: the title stays within its cell.
                escape(&shorten(
                    &chart.title,
                    ((cell_w - 40.0) / (1.1 * text_width("m", 13.0))) as usize
                ))
            );
            let area = Rect {
                x: x0 + left,
                y: top + 26.0,
                w: plot_w,
                h: plot_h,
            };
            chart.draw_plot(&mut svg, area);
            chart.draw_legend(&mut svg, x0 + left, area.y + plot_h + legend_gap, plot_w, 1);
        }
        top += height;
    }
    svg.push_str("</svg>\n");
    svg
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

    /// A long cut family's name is shortened to stay within its cell of the grid.
    #[test]
    fn grid_titles_stay_within_their_cells() {
        let title = "prune-vocab + factorize-embeddings + drop-layers + lowrank-layers";
        let chart = Chart {
            title: title.into(),
            series: vec![Series::new(
                "run",
                vec![(0.0, 0.5), (1.0, 0.8)],
                Style::Line,
            )],
            ..Chart::default()
        };
        let svg = grid_svg("curves", &[chart.clone(), chart], 2);
        let shown: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains(r#"font-size="13" font-weight="bold""#))
            .map(|l| l.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(shown.len(), 2, "{svg}");
        for text in shown {
            assert!(text.ends_with('…') && title.starts_with(text.trim_end_matches('…')));
            // Bold text is about a tenth wider than regular; the cell is 460 px wide.
            assert!(text_width(text, 13.0) * 1.1 < 460.0, "{text}");
        }
    }

    #[test]
    fn crowded_numbers_do_not_overlap_points_or_each_other() {
        // Twenty points in a tight cluster: every number must find its own free spot.
        let points: Vec<(f64, f64)> = (0..20)
            .map(|i| (4.0 + 0.05 * (i % 5) as f64, 0.84 + 0.001 * (i / 5) as f64))
            .collect();
        let mut s = Series::new("cluster", points, Style::LabelledPoints);
        s.labels = (0..20).map(|i| format!("run {i}")).collect();
        let chart = Chart {
            series: vec![s],
            x_range: Some((0.0, 25.0)),
            y_range: Some((0.5, 0.9)),
            ..Chart::default()
        };
        let svg = chart.to_svg();
        // The numbers' boxes, read back from the picture.
        let boxes: Vec<Rect> = svg
            .lines()
            .filter(|l| l.contains(r#"font-weight="bold">"#) && !l.contains("text-anchor"))
            .map(|l| {
                let attr = |name: &str| -> f64 {
                    let at = l.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    l[at..].split('"').next().unwrap().parse().unwrap()
                };
                let text = l.split('>').nth(1).unwrap().split('<').next().unwrap();
                Rect {
                    x: attr("x"),
                    y: attr("y") - 10.0,
                    w: text_width(text, 11.0),
                    h: 12.0,
                }
            })
            .collect();
        assert_eq!(boxes.len(), 20, "{svg}");
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
        }
        // The key lists every number with its label, inside the picture.
        assert!(svg.contains(">20</text><text") && svg.contains("run 19"));
    }
}
