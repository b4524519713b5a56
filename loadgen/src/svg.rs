//! An SVG plot of latency by percentile, drawn like HdrHistogram's plotter: the x axis is
//! `log10(1 / (1 - percentile))`, so 90%, 99%, 99.9%, ... are evenly spaced and the tail
//! gets the room it deserves.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::hgrm::TICKS_PER_HALF_DISTANCE;

/// Plot width, px.
const W: f64 = 800.0;
/// Plot height, px.
const H: f64 = 480.0;
/// Margins: left, right, top, bottom, px.
const ML: f64 = 70.0;
const MR: f64 = 45.0;
const MT: f64 = 40.0;
const MB: f64 = 50.0;

/// (x in decades of 1/(1-q), latency in ms) points of a µs histogram.
pub fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top = max_decades(h.len());
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                top
            } else {
                (1.0 / (1.0 - q)).log10().min(top)
            };
            (x, v.value_iterated_to() as f64 / 1_000.0)
        })
        .collect()
}

/// Decades shown: enough for the sample count (1,000 samples reach 99.9%), 2 to 7.
fn max_decades(count: u64) -> f64 {
    (count.max(1) as f64).log10().ceil().clamp(2.0, 7.0)
}

/// A "nice" axis maximum (1, 2 or 5 times a power of ten) at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// Percentile label of decade `d`: 0%, 90%, 99%, 99.9%, ...
fn decade_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

/// The SVG document for `h` (µs) with `title`.
pub fn render(h: &Histogram<u64>, title: &str) -> String {
    let pts = points(h);
    let xmax = max_decades(h.len());
    let ymax = nice_ceiling(pts.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05);
    let px = |x: f64| ML + x / xmax * (W - ML - MR);
    let py = |y: f64| H - MB - y / ymax * (H - MT - MB);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Vertical grid: one line per decade.
    for d in 0..=xmax as u32 {
        let x = px(f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - MB,
            H - MB + 16.0,
            decade_label(d)
        );
    }
    // Horizontal grid: five steps of the latency axis.
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 6.0,
            y + 4.0,
            trim_number(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile</text>"#,
        (ML + W - MR) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">Latency (ms)</text>"#,
        (MT + H - MB) / 2.0,
        (MT + H - MB) / 2.0
    );
    let _ = writeln!(
        s,
        r#"<rect x="{ML}" y="{MT}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        W - ML - MR,
        H - MT - MB
    );
    if !pts.is_empty() {
        let mut path = String::new();
        for (x, y) in &pts {
            let _ = write!(path, "{:.1},{:.1} ", px(*x), py(*y));
        }
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            path.trim_end()
        );
    } else {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no samples</text>"#,
            W / 2.0,
            H / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim_number(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn axis_helpers() {
        assert_eq!(decade_label(0), "0%");
        assert_eq!(decade_label(1), "90%");
        assert_eq!(decade_label(2), "99%");
        assert_eq!(decade_label(3), "99.9%");
        assert_eq!(decade_label(5), "99.999%");
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(max_decades(1_000), 3.0);
        assert_eq!(max_decades(10), 2.0);
        assert_eq!(trim_number(2.5), "2.5");
    }

    #[test]
    fn plot_has_a_rising_curve() {
        let mut h = new_hist();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let pts = points(&h);
        assert!(pts.len() > 20);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(pts.last().unwrap().0, 4.0);
        let svg = render(&h, "fanout <test>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("99.99%"));
        assert!(svg.contains("fanout &lt;test&gt;"));
        assert!(render(&new_hist(), "x").contains("no samples"));
    }
}
