//! Process accounting: the server's CPU time and memory from `/proc`, loadgen's own CPU
//! time from `getrusage`, and the descriptor limit.
//!
//! Server and loadgen share the machine's cores, so a figure like "server CPU µs per
//! delivered frame" is only meaningful next to what loadgen itself burned meanwhile.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One reading of a process's resource use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User plus system CPU time so far, µs (clock-tick resolution, usually 10 ms).
    pub cpu_us: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status` of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is --server-pid right?)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    Ok(ProcSample {
        cpu_us: ticks * 1_000_000 / clock_ticks_per_second(),
        rss_bytes: parse_status_rss(&status)?,
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no ')' in /proc/PID/stat")?;
    // After the name, field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("short /proc/PID/stat line");
    }
    let utime: u64 = fields[14 - 3].parse().context("utime")?;
    let stime: u64 = fields[15 - 3].parse().context("stime")?;
    Ok(utime + stime)
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_status_rss(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts
        .next()
        .context("empty VmRSS")?
        .parse()
        .context("VmRSS")?;
    match parts.next() {
        Some("kB") | None => Ok(value * 1024),
        Some(unit) => bail!("unexpected VmRSS unit {unit}"),
    }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/PID/stat` CPU times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time (user + system) of this process, µs.
pub fn self_cpu_us() -> u64 {
    rusage_us(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of this process's children that have been waited for, µs.
pub fn children_cpu_us() -> u64 {
    rusage_us(libc::RUSAGE_CHILDREN)
}

fn rusage_us(who: libc::c_int) -> u64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable; both `who` values are supported.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_from_a_stat_line() {
        // A real line shape; the name contains spaces and a ')' on purpose.
        let line = "12345 (chat d) x) S 1 12345 12345 0 -1 4194560 1525 0 0 0 \
                    731 269 0 0 20 0 4 0 123456 987654321 2345 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17667 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(line).unwrap(), 731 + 269);
        assert!(parse_stat_cpu_ticks("12345 (x) S 1 2").is_err());
        assert!(parse_stat_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tchatd\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(status).unwrap(), 51_234 * 1024);
        assert!(parse_status_rss("Name:\tkthread\n").is_err());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(clock_ticks_per_second() >= 100);
    }
}
