//! The run over time: once a second the parent records the server's RSS (with
//! `--server-pid`), the server's own count of open connections (with `--metrics-path`,
//! scraped from the same host and port as `--url`), loadgen's count of open connections
//! and the running totals. A soak run reads memory growth off this series: the phase
//! boundaries alone say nothing about what happened in between.
//!
//! `rss_trend` compares the RSS at the start of the measured interval (after the
//! warm-up) with the RSS at its end; it uses the median of the samples of a few seconds at
//! each edge, so a single sample taken during a burst of allocations does not decide it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Most points kept. One a second, 20,000 points cover 5.5 hours, longer than any
/// traffic run (warm-up 600 s + duration 3,600 s + grace); a connect phase slow enough to
/// go past it loses its later points, counted in `points_dropped`.
pub const MAX_POINTS: usize = 20_000;
/// Seconds at each edge of the measured interval whose RSS samples are taken together
/// (their median) as the start and end values of the trend.
pub const EDGE_S: f64 = 10.0;
/// Longest a scrape of the metrics page may take, connect included. The parent samples
/// on its own thread between worker events, so a stalled server delays the next event
/// by at most this much; the point then has no server count.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(300);
/// Largest metrics page read; a larger one is a failed scrape.
const SCRAPE_MAX_BYTES: usize = 1 << 20;

/// One sample of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since loadgen started.
    pub t_s: f64,
    /// Phase of the run (`connecting`, `warmup`, `measuring`, `grace`, ...).
    pub phase: &'static str,
    /// Server RSS, bytes (with `--server-pid`).
    pub server_rss_bytes: Option<u64>,
    /// Server CPU time so far, µs (with `--server-pid`).
    pub server_cpu_us: Option<u64>,
    /// The server's own gauge of open connections (with `--metrics-path`; null when that
    /// scrape failed).
    pub server_connections: Option<u64>,
    /// Connections loadgen holds open (long-lived and churn), from the workers' latest
    /// snapshots (at most a second old).
    pub open_connections: u64,
    /// Messages sent so far.
    pub sent: u64,
    /// Deliveries so far.
    pub delivered: u64,
    /// Connection attempts that failed so far (long-lived and churn).
    pub failed: u64,
    /// Established connections the server or the network closed so far.
    pub dropped: u64,
    /// `error` frames so far.
    pub error_frames: u64,
}

/// The series of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Seconds between points.
    pub interval_s: f64,
    /// Start of the measured interval, seconds since loadgen started.
    pub measure_start_s: Option<f64>,
    /// End of the measured interval, seconds since loadgen started.
    pub measure_end_s: Option<f64>,
    /// The points, oldest first (at most `MAX_POINTS`).
    pub points: Vec<Point>,
    /// Points not kept because `MAX_POINTS` was reached.
    pub points_dropped: u64,
    /// Scrapes of the metrics page that failed (timeout, refused, no gauge).
    pub scrape_failures: u64,
    /// The last scrape failure, to tell why.
    pub last_scrape_error: Option<String>,
    /// RSS from the end of the warm-up to the end of the measured interval.
    pub rss_trend: Option<RssTrend>,
}

impl Timeline {
    /// Appends `p`, or counts it as dropped when the series is full.
    pub fn push(&mut self, p: Point) {
        if self.points.len() < MAX_POINTS {
            self.points.push(p);
        } else {
            self.points_dropped += 1;
        }
    }

    /// Fills `rss_trend` from the points and the measured interval.
    pub fn finish(&mut self) {
        let (Some(from), Some(to)) = (self.measure_start_s, self.measure_end_s) else {
            return;
        };
        let rss: Vec<(f64, u64)> = self
            .points
            .iter()
            .filter_map(|p| p.server_rss_bytes.map(|r| (p.t_s, r)))
            .collect();
        self.rss_trend = rss_trend(&rss, from, to, EDGE_S);
    }
}

/// How RSS moved over a window of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RssTrend {
    /// Window start, seconds since loadgen started.
    pub from_s: f64,
    /// Window end, seconds since loadgen started.
    pub to_s: f64,
    /// Samples in the window.
    pub samples: usize,
    /// Median RSS of the samples in the first `EDGE_S` seconds of the window, bytes.
    pub start_bytes: u64,
    /// Median RSS of the samples in the last `EDGE_S` seconds of the window, bytes.
    pub end_bytes: u64,
    /// Smallest sample in the window, bytes.
    pub min_bytes: u64,
    /// Largest sample in the window, bytes.
    pub max_bytes: u64,
    /// `(end - start) / start`, percent: the soak's figure of growth.
    pub growth_pct: f64,
    /// `(max - start) / start`, percent: the worst moment.
    pub peak_growth_pct: f64,
    /// Least-squares slope of all samples in the window, bytes per minute: a leak shows
    /// as a steady positive slope even while the growth is still small.
    pub slope_bytes_per_min: f64,
}

/// The trend of `(t_s, rss_bytes)` samples within `[from_s, to_s]`, comparing the median
/// of the first `edge_s` seconds with the median of the last `edge_s` seconds. `None`
/// with fewer than two samples in the window or a zero start.
pub fn rss_trend(samples: &[(f64, u64)], from_s: f64, to_s: f64, edge_s: f64) -> Option<RssTrend> {
    let window: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|&(t, _)| t >= from_s && t <= to_s)
        .collect();
    if window.len() < 2 {
        return None;
    }
    let head: Vec<u64> = window
        .iter()
        .filter(|&&(t, _)| t < from_s + edge_s)
        .map(|&(_, r)| r)
        .collect();
    let tail: Vec<u64> = window
        .iter()
        .filter(|&&(t, _)| t > to_s - edge_s)
        .map(|&(_, r)| r)
        .collect();
    // Both edges hold the first / last sample at least, so the medians exist even when
    // the samples are sparser than `edge_s`.
    let start = median(if head.is_empty() {
        vec![window[0].1]
    } else {
        head
    });
    let end = median(if tail.is_empty() {
        vec![window[window.len() - 1].1]
    } else {
        tail
    });
    if start == 0 {
        return None;
    }
    let min = window.iter().map(|w| w.1).min().unwrap_or(0);
    let max = window.iter().map(|w| w.1).max().unwrap_or(0);
    let pct = |v: u64| (v as f64 - start as f64) / start as f64 * 100.0;
    Some(RssTrend {
        from_s,
        to_s,
        samples: window.len(),
        start_bytes: start,
        end_bytes: end,
        min_bytes: min,
        max_bytes: max,
        growth_pct: pct(end),
        peak_growth_pct: pct(max),
        slope_bytes_per_min: slope(&window) * 60.0,
    })
}

/// Median of `v` (the lower middle value for an even count); 0 when empty.
fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

/// Least-squares slope of `(x, y)` points, y units per x unit; 0 when x does not vary.
fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mx) * (y as f64 - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// Why a scrape of the metrics page failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The exchange took longer than `SCRAPE_TIMEOUT` (a busy or stalled server).
    #[error("metrics request timed out after {} ms", SCRAPE_TIMEOUT.as_millis())]
    Timeout,
    /// Connecting, writing or reading failed.
    #[error("metrics request failed: {0}")]
    Io(std::io::Error),
    /// The answer was not `200` (the status line is given).
    #[error("metrics answered {0:?}")]
    Status(String),
    /// The answer was cut short, too large, or not HTTP.
    #[error("malformed metrics answer: {0}")]
    Malformed(&'static str),
    /// The page has no sample of the gauge.
    #[error("no {0} sample on the metrics page")]
    NoGauge(String),
}

impl From<std::io::Error> for ScrapeError {
    fn from(e: std::io::Error) -> Self {
        // A socket timeout surfaces as EAGAIN (`WouldBlock`) on Linux.
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ScrapeError::Timeout,
            _ => ScrapeError::Io(e),
        }
    }
}

/// GETs `path` from `addr` (the loopback address of `--url`, already checked) and returns
/// the body; the whole exchange is bounded by `SCRAPE_TIMEOUT`.
pub fn scrape(addr: SocketAddr, authority: &str, path: &str) -> Result<String, ScrapeError> {
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    // One write: `write!` on a bare socket sends each formatted piece as its own segment.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ScrapeError::Timeout);
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > SCRAPE_MAX_BYTES {
            return Err(ScrapeError::Malformed("larger than 1 MiB"));
        }
        // The server may keep the connection open despite `Connection: close`: stop as
        // soon as the body announced by Content-Length is complete.
        if let Some((head_len, Some(len))) = head_and_length(&buf) {
            if buf.len() >= head_len + len {
                buf.truncate(head_len + len);
                break;
            }
        }
    }
    let (head_len, len) = head_and_length(&buf).ok_or(ScrapeError::Malformed("no header end"))?;
    if len.is_some_and(|l| buf.len() < head_len + l) {
        return Err(ScrapeError::Malformed("body cut short"));
    }
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ScrapeError::Status(status.to_string()));
    }
    Ok(String::from_utf8_lossy(&buf[head_len..]).into_owned())
}

/// Length of the header block (through the blank line) and the `Content-Length`, once
/// the header block is complete.
fn head_and_length(buf: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    Some((end, len))
}

/// The value of gauge `name` on a Prometheus text page: the sum over its label sets
/// (a server reporting one series per core adds up to the whole). Comments and other
/// metrics, including ones whose name merely starts with `name`, are ignored.
pub fn gauge_value(page: &str, name: &str) -> Result<u64, ScrapeError> {
    let mut found = false;
    let mut sum = 0.0;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            },
            _ => continue,
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    if found {
        Ok(sum.max(0.0).round() as u64)
    } else {
        Err(ScrapeError::NoGauge(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn flat_rss_has_no_growth_and_ignores_samples_outside_the_window() {
        // Warm-up climbs from 100 to 400 MiB, then the measured interval (60..=660 s)
        // stays at 400 MiB with a ±1 MiB wobble; the close after it falls back.
        let mut s: Vec<(f64, u64)> = (0..60).map(|t| (t as f64, (100 + 5 * t) * MIB)).collect();
        s.extend((60..=660).map(|t| (t as f64, (400 + t % 3 - 1) * MIB)));
        s.extend((661..700).map(|t| (t as f64, 120 * MIB)));
        let tr = rss_trend(&s, 60.0, 660.0, EDGE_S).unwrap();
        assert_eq!(tr.samples, 601);
        assert_eq!(tr.start_bytes, 400 * MIB);
        assert_eq!(tr.end_bytes, 400 * MIB);
        assert_eq!((tr.min_bytes, tr.max_bytes), (399 * MIB, 401 * MIB));
        assert_eq!(tr.growth_pct, 0.0);
        assert!((tr.peak_growth_pct - 0.25).abs() < 1e-9, "{tr:?}");
        assert!(tr.slope_bytes_per_min.abs() < 0.01 * MIB as f64, "{tr:?}");
    }

    #[test]
    fn a_steady_leak_shows_in_growth_and_slope() {
        // 1 MiB a minute on top of 200 MiB, sampled every second for 10 minutes.
        let s: Vec<(f64, u64)> = (0..=600)
            .map(|t| (t as f64, 200 * MIB + t * MIB / 60))
            .collect();
        let tr = rss_trend(&s, 0.0, 600.0, EDGE_S).unwrap();
        // Medians of 0..10 s (t = 4 or 5) and 591..=600 s (t = 595).
        let at = |t: u64| 200 * MIB + t * MIB / 60;
        assert_eq!(tr.start_bytes, at(4));
        assert_eq!(tr.end_bytes, at(595));
        let expect = (at(595) - at(4)) as f64 / at(4) as f64 * 100.0;
        assert!((tr.growth_pct - expect).abs() < 1e-9);
        assert!(tr.growth_pct > 4.9 && tr.growth_pct < 5.0, "{tr:?}");
        assert!(
            (tr.slope_bytes_per_min - MIB as f64).abs() < 100.0,
            "{tr:?}"
        );
    }

    #[test]
    fn one_spike_at_an_edge_does_not_decide_the_growth() {
        let mut s: Vec<(f64, u64)> = (0..=100).map(|t| (t as f64, 300 * MIB)).collect();
        s[100].1 = 600 * MIB; // last sample doubled
        s[0].1 = 150 * MIB; // first sample halved
        let tr = rss_trend(&s, 0.0, 100.0, EDGE_S).unwrap();
        assert_eq!(tr.growth_pct, 0.0);
        assert_eq!(tr.peak_growth_pct, 100.0);
    }

    #[test]
    fn too_few_samples_give_no_trend() {
        assert_eq!(rss_trend(&[], 0.0, 10.0, EDGE_S), None);
        assert_eq!(rss_trend(&[(5.0, MIB)], 0.0, 10.0, EDGE_S), None);
        assert_eq!(rss_trend(&[(1.0, 0), (2.0, MIB)], 0.0, 10.0, EDGE_S), None);
        // Sparse samples: the edges fall back to the first and last sample.
        let tr = rss_trend(&[(0.0, 100), (100.0, 110)], 0.0, 100.0, 1.0).unwrap();
        assert_eq!((tr.start_bytes, tr.end_bytes), (100, 110));
        assert!((tr.growth_pct - 10.0).abs() < 1e-9);
    }

    #[test]
    fn the_series_is_bounded() {
        let mut t = Timeline::default();
        for i in 0..MAX_POINTS + 5 {
            t.push(Point {
                t_s: i as f64,
                ..Point::default()
            });
        }
        assert_eq!(t.points.len(), MAX_POINTS);
        assert_eq!(t.points_dropped, 5);
    }

    #[test]
    fn reads_a_gauge_off_a_prometheus_page() {
        let page = "# HELP chat_connections Open WebSocket connections.\n\
                    # TYPE chat_connections gauge\n\
                    chat_connections 15234\n\
                    chat_connections_opened_total 99999\n";
        assert_eq!(gauge_value(page, "chat_connections").unwrap(), 15_234);
        let per_core = "chat_connections{core=\"0\"} 7\nchat_connections{core=\"1\"} 8\n";
        assert_eq!(gauge_value(per_core, "chat_connections").unwrap(), 15);
        assert!(matches!(
            gauge_value("chat_connections_opened_total 3\n", "chat_connections"),
            Err(ScrapeError::NoGauge(_))
        ));
    }

    /// Reads a request head however many segments it arrives in.
    fn read_head(c: &mut std::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut byte).unwrap(), 1, "request cut short");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    #[test]
    fn scrapes_a_page_kept_alive_by_the_server() {
        // A server that ignores `Connection: close` and holds the connection open until the
        // scrape has returned: only the Content-Length can end the read, so a scrape that
        // waited for EOF would time out instead.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let req = read_head(&mut c);
            assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
            let body = "chat_connections 42\n";
            write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let _ = done_rx.recv();
        });
        let page = scrape(addr, &addr.to_string(), "/metrics");
        done_tx.send(()).unwrap();
        assert_eq!(gauge_value(&page.unwrap(), "chat_connections").unwrap(), 42);
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_is_a_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            // Never answer; hold the connection past the scrape timeout.
            std::thread::sleep(SCRAPE_TIMEOUT * 2);
            drop(c);
        });
        let started = Instant::now();
        let e = scrape(addr, "x", "/metrics").unwrap_err();
        assert!(matches!(e, ScrapeError::Timeout), "{e:?}");
        assert_eq!(e.to_string(), "metrics request timed out after 300 ms");
        let took = started.elapsed();
        assert!(
            // The server closes at twice the timeout; a scrape that waited for it would
            // have failed as Malformed, not Timeout.
            took >= SCRAPE_TIMEOUT,
            "{took:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_refusing_server_is_a_status_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            read_head(&mut c);
            c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        match scrape(addr, "x", "/nope") {
            Err(ScrapeError::Status(s)) => assert_eq!(s, "HTTP/1.1 404 Not Found"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }
}
