//! Clocks shared by every process of a run.
//!
//! Send times travel inside message content and phase start times travel over the
//! parent/worker pipes, so every process must read the same clock: `CLOCK_MONOTONIC`
//! is system-wide on Linux (unlike `Instant`, whose epoch is unspecified), never jumps
//! with wall-clock adjustments, and has nanosecond resolution.

use std::time::Duration;

/// Nanoseconds of `CLOCK_MONOTONIC`: comparable between processes on one machine.
pub fn mono_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// CPU time consumed by the calling thread only, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn read_clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids always exist on Linux.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({id}) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Blocks the calling thread until `CLOCK_MONOTONIC` reaches `deadline_ns`.
pub fn sleep_until_ns(deadline_ns: u64) {
    let now = mono_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
    }
}

/// Converts `CLOCK_MONOTONIC` nanoseconds into tokio instants.
///
/// tokio timers take an `Instant`, whose origin cannot be constructed from a raw clock
/// value, so one pair of readings taken together anchors the mapping for the whole process.
#[derive(Clone, Copy, Debug)]
pub struct MonoAnchor {
    /// `Instant` read right next to `mono`.
    instant: tokio::time::Instant,
    /// `CLOCK_MONOTONIC` nanoseconds at `instant`.
    mono: u64,
}

impl MonoAnchor {
    /// Takes the anchor readings now.
    pub fn now() -> Self {
        let instant = tokio::time::Instant::now();
        let mono = mono_ns();
        MonoAnchor { instant, mono }
    }

    /// The tokio instant at which `CLOCK_MONOTONIC` reads `ns` (clamped to the anchor).
    pub fn instant(&self, ns: u64) -> tokio::time::Instant {
        self.instant + Duration::from_nanos(ns.saturating_sub(self.mono))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = mono_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }

    #[test]
    fn thread_cpu_clock_counts_busy_work() {
        let a = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() > a);
    }
}
