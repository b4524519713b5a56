//! An SVG plot of latency by percentile, drawn like HdrHistogram's plotter: the x axis is
//! `log10(1 / (1 - percentile))`, so 90%, 99%, 99.9%, ... are evenly spaced and the tail
//! gets the room it deserves. Also the plot of a run's timeline (RSS and connections over
//! time), for soak runs.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::hgrm::TICKS_PER_HALF_DISTANCE;
use crate::timeline::Timeline;

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

/// Half-width of the band drawn around the RSS at the end of the warm-up, percent: the
/// soak's bound for "flat".
pub const FLAT_BAND_PCT: f64 = 5.0;

/// The SVG document of a run's timeline: server RSS (MiB, left axis) and open
/// connections (right axis: the server's gauge, and loadgen's own count dashed) over
/// time, the measured interval shaded and, with an RSS trend, the ±`FLAT_BAND_PCT` band
/// around the RSS after the warm-up.
pub fn render_timeline(tl: &Timeline, title: &str) -> String {
    const MIB: f64 = 1048576.0;
    let pts = &tl.points;
    let xmax = pts.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let rss_max = pts
        .iter()
        .filter_map(|p| p.server_rss_bytes)
        .max()
        .unwrap_or(0) as f64
        / MIB;
    let conn_max = pts
        .iter()
        .map(|p| p.open_connections.max(p.server_connections.unwrap_or(0)))
        .max()
        .unwrap_or(0) as f64;
    let y1max = nice_ceiling(rss_max * 1.1);
    let y2max = nice_ceiling(conn_max * 1.1);
    // Right margin wide enough for the connection labels.
    let mr = 75.0;
    let px = |x: f64| ML + x / xmax * (W - ML - mr);
    let py1 = |y: f64| H - MB - y / y1max * (H - MT - MB);
    let py2 = |y: f64| H - MB - y / y2max * (H - MT - MB);
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
    if let (Some(a), Some(b)) = (tl.measure_start_s, tl.measure_end_s) {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{MT}" width="{:.1}" height="{:.1}" fill="#eef7ee"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#4a7">measured interval</text>"##,
            px(a),
            (px(b) - px(a)).max(0.0),
            H - MT - MB,
            (px(a) + px(b)) / 2.0,
            MT + 14.0
        );
    }
    if let Some(tr) = &tl.rss_trend {
        let base = tr.start_bytes as f64 / MIB;
        let hi = py1(base * (1.0 + FLAT_BAND_PCT / 100.0));
        let lo = py1(base * (1.0 - FLAT_BAND_PCT / 100.0));
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{hi:.1}" width="{:.1}" height="{:.1}" fill="#1f77b4" fill-opacity="0.12"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#1f77b4">±{FLAT_BAND_PCT}% of RSS after warm-up; growth {:+.2}%</text>"##,
            px(tr.from_s),
            (px(tr.to_s) - px(tr.from_s)).max(0.0),
            (lo - hi).max(0.0),
            px(tr.from_s) + 4.0,
            hi - 4.0,
            tr.growth_pct
        );
    }
    // Time axis: about ten steps of a round number of seconds.
    let step = nice_ceiling(xmax / 10.0);
    let mut t = 0.0;
    while t <= xmax + 1e-9 {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - MB,
            H - MB + 16.0,
            trim_number(t)
        );
        t += step;
    }
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let y = py1(y1max * f);
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f77b4">{}</text><text x="{:.1}" y="{:.1}" text-anchor="start" fill="#d62728">{}</text>"##,
            W - mr,
            ML - 6.0,
            y + 4.0,
            trim_number(y1max * f),
            W - mr + 6.0,
            y + 4.0,
            trim_number(y2max * f)
        );
    }
    let mid = (MT + H - MB) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Time since start (s)</text>"#,
        (ML + W - mr) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="{mid:.1}" text-anchor="middle" fill="#1f77b4" transform="rotate(-90 16 {mid:.1})">Server RSS (MiB)</text>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{mid:.1}" text-anchor="middle" fill="#d62728" transform="rotate(90 {:.1} {mid:.1})">Open connections</text>"##,
        W - 14.0,
        W - 14.0
    );
    let _ = writeln!(
        s,
        r#"<rect x="{ML}" y="{MT}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        W - ML - mr,
        H - MT - MB
    );
    let line = |s: &mut String, series: Vec<(f64, f64)>, style: &str| {
        if series.is_empty() {
            return;
        }
        let mut path = String::new();
        for (x, y) in series {
            let _ = write!(path, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" {style}/>"#,
            path.trim_end()
        );
    };
    let loadgen: Vec<_> = pts
        .iter()
        .map(|p| (px(p.t_s), py2(p.open_connections as f64)))
        .collect();
    line(
        &mut s,
        loadgen,
        r##"stroke="#ff9896" stroke-width="1.5" stroke-dasharray="5,4""##,
    );
    let server: Vec<_> = pts
        .iter()
        .filter_map(|p| p.server_connections.map(|c| (px(p.t_s), py2(c as f64))))
        .collect();
    line(&mut s, server, r##"stroke="#d62728" stroke-width="1.5""##);
    let rss: Vec<_> = pts
        .iter()
        .filter_map(|p| p.server_rss_bytes.map(|r| (px(p.t_s), py1(r as f64 / MIB))))
        .collect();
    let no_rss = rss.is_empty();
    line(&mut s, rss, r##"stroke="#1f77b4" stroke-width="2""##);
    // Legend, top left inside the plot.
    let (lx, ly) = (ML + 10.0, MT + 30.0);
    for (i, (style, label)) in [
        (r##"stroke="#1f77b4" stroke-width="2""##, "server RSS"),
        (
            r##"stroke="#d62728" stroke-width="1.5""##,
            "server connections (metrics gauge)",
        ),
        (
            r##"stroke="#ff9896" stroke-width="1.5" stroke-dasharray="5,4""##,
            "loadgen open connections",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let y = ly + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" {style}/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            y + 4.0
        );
    }
    if no_rss {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no server RSS (run with --server-pid)</text>"#,
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

    #[test]
    fn timeline_plot_has_both_series_and_the_band() {
        use crate::timeline::Point;
        let mut tl = Timeline {
            interval_s: 1.0,
            measure_start_s: Some(10.0),
            measure_end_s: Some(90.0),
            ..Timeline::default()
        };
        for t in 0..=100u64 {
            tl.push(Point {
                t_s: t as f64,
                server_rss_bytes: Some((100 + t.min(10) * 10) << 20),
                server_connections: Some(t.min(10) * 1_500),
                open_connections: t.min(10) * 1_500,
                ..Point::default()
            });
        }
        tl.finish();
        assert_eq!(tl.rss_trend.as_ref().unwrap().growth_pct, 0.0);
        let svg = render_timeline(&tl, "soak <x>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // RSS, server gauge, loadgen count.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("measured interval"));
        assert!(svg.contains("±5% of RSS after warm-up; growth +0.00%"));
        assert!(svg.contains("soak &lt;x&gt;"));
        // Axes: RSS up to 200 MiB → 220 → nice 500; connections 15,000 → 16,500 → 20,000.
        assert!(svg.contains(">500</text>"), "{svg}");
        assert!(svg.contains(">20000</text>"), "{svg}");
        assert!(!svg.contains("no server RSS"));
        let empty = render_timeline(&Timeline::default(), "e");
        assert!(empty.contains("no server RSS"));
    }
}
