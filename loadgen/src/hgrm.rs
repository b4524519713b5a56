//! HdrHistogram's percentile-distribution text (`.hgrm`), as written by the Java
//! library's `outputPercentileDistribution`, so existing tools (the HdrHistogram plotter,
//! wrk2 comparisons) read loadgen's files unchanged.
//!
//! Columns: `Value` (ms here), `Percentile` (a fraction), `TotalCount` (samples up to that
//! value), `1/(1-Percentile)`; the 100% line has no last column; three footer lines give
//! mean, deviation, max, count and the histogram's bucket geometry.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the remaining distance to 100%, as the Java default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The distribution of `h` (recorded in µs) with values in milliseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    distribution(h, 1_000.0)
}

/// The distribution with values divided by `scale` (the Java
/// `outputValueUnitScalingRatio`).
pub fn distribution(h: &Histogram<u64>, scale: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.digits$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.digits$} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.digits$}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// Sub-buckets per bucket for `digits` significant digits: the power of two above
/// `2 * 10^digits`, as HdrHistogram computes it.
fn sub_bucket_count(digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(digits))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn matches_the_java_layout() {
        let mut h = new_hist();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let text = percentile_distribution(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        assert!(
            lines.contains(&"       0.500 0.500000000000        500           2.00"),
            "{text}"
        );
        assert!(
            lines.contains(&"       0.901 0.900000000000        901          10.00"),
            "{text}"
        );
        // The 100% line: three columns only.
        let last = lines[lines.len() - 4];
        assert_eq!(last, "       1.000 1.000000000000       1000");
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =        0.500, StdDeviation   =        0.289]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =        1.000, Total count    =         1000]"
        );
        assert_eq!(
            lines[lines.len() - 1],
            format!(
                "#[Buckets = {:12}, SubBuckets     =         2048]",
                h.buckets()
            )
        );
        // Every data line has four (or, last, three) numeric columns.
        for l in &lines[2..lines.len() - 4] {
            let cols: Vec<f64> = l.split_whitespace().map(|c| c.parse().unwrap()).collect();
            assert_eq!(cols.len(), 4, "{l}");
        }
    }

    #[test]
    fn empty_histogram_has_header_and_footer() {
        let text = percentile_distribution(&new_hist());
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn sub_buckets() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }
}
