//! `floor`: what one delivered frame costs at the very least.
//!
//! A WebSocket server delivering a chat message to N clients does at least N `send()`
//! calls of a small frame. On loopback, `send()` also runs the receive side of TCP for
//! the peer (the softirq work happens on the sending CPU), so the sender thread's CPU time
//! per call is the floor under "server CPU µs per delivered frame": no server can beat it
//! without batching frames into fewer calls.
//!
//! This measures exactly that: one thread sends `--frames` frames of `--size` bytes
//! (a real server-to-client text frame, header included) round-robin over `--sockets`
//! loopback TCP connections with plain blocking `send()`; a reader thread drains the peers
//! with epoll. With `--group-rate` the sends go in groups of `--group` at that many
//! groups a second, asleep in between: the sparse pattern of a fanout at chat rates,
//! whose wake-ups the back-to-back loop never pays. CPU time comes from
//! `CLOCK_THREAD_CPUTIME_ID` read before and after the whole send loop (reading it
//! around each call would cost more than the call). Each connection needs two
//! descriptors, so N is capped to fit `RLIMIT_NOFILE`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use socket2::{Domain, Socket, Type};

use crate::cli::FloorArgs;
use crate::clock::{mono_ns, sleep_until_ns, thread_cpu_ns};
use crate::procstat::raise_fd_limit;

/// Descriptors kept free for stdio, the listener, epoll and the runtime.
const RESERVED_FDS: u64 = 64;

/// The result of a floor run.
#[derive(Clone, Debug, Serialize)]
pub struct FloorReport {
    /// Sockets asked for.
    pub sockets_requested: u32,
    /// Sockets used (after the descriptor cap).
    pub sockets: u32,
    /// Whether the descriptor limit lowered the socket count.
    pub capped: bool,
    /// `RLIMIT_NOFILE` of this process.
    pub fd_limit: u64,
    /// Sends made.
    pub frames: u64,
    /// Bytes per send.
    pub size: u32,
    /// Sends per paced group; `None` when sending back to back.
    pub group: Option<u32>,
    /// Paced groups per second; `None` when sending back to back.
    pub group_rate: Option<f64>,
    /// CPU time of the sending thread over all sends, µs.
    pub sender_cpu_us: f64,
    /// Sender CPU time per send, µs: the floor figure.
    pub cpu_us_per_send: f64,
    /// Wall time of the send loop, seconds.
    pub wall_s: f64,
    /// Wall time per send, µs.
    pub wall_us_per_send: f64,
    /// Sends per second.
    pub sends_per_s: f64,
    /// CPU time of the draining thread, µs.
    pub reader_cpu_us: f64,
    /// Bytes the reader drained (frames x size when all arrived).
    pub bytes_received: u64,
}

/// Sockets that fit: each connection is two descriptors in this process.
pub fn cap_sockets(requested: u32, fd_limit: u64) -> u32 {
    let fit = fd_limit.saturating_sub(RESERVED_FDS) / 2;
    u64::from(requested).min(fit).max(1) as u32
}

/// A server-to-client (unmasked) WebSocket text frame of `size` bytes in total, header
/// included. The length field uses the shortest encoding, as RFC 6455 requires, so sizes
/// 128 and 129 (too long for the 2-byte header, too short for the 4-byte one) give 127.
pub fn ws_frame(size: usize) -> Vec<u8> {
    let size = size.max(2);
    let mut frame = vec![0x81u8];
    let payload = if size - 2 <= 125 {
        frame.push((size - 2) as u8);
        size - 2
    } else if size - 4 >= 126 {
        let n = size - 4;
        frame.push(126);
        frame.extend_from_slice(&(n as u16).to_be_bytes());
        n
    } else {
        frame.push(125);
        125
    };
    let body = br#"{"type":"message","messageId":"01J0000000000000000000000","userId":"u-1","roomId":"lg-r0","content":""#;
    let mut p: Vec<u8> = body.iter().copied().take(payload).collect();
    p.resize(payload, b'.');
    frame.extend_from_slice(&p);
    frame
}

/// Runs the floor measurement.
pub fn run(args: &FloorArgs) -> Result<FloorReport> {
    let fd_limit = raise_fd_limit();
    let sockets = cap_sockets(args.sockets, fd_limit);
    let capped = sockets < args.sockets;
    if capped {
        eprintln!(
            "loadgen floor: {} sockets need {} descriptors; RLIMIT_NOFILE is {fd_limit}, using {sockets}",
            args.sockets,
            2 * u64::from(args.sockets)
        );
    }
    let (senders, readers) = connect_pairs(sockets)?;
    let frame = ws_frame(args.size as usize);
    let size = frame.len() as u32;
    let expected = args.frames * u64::from(size);

    let failed = Arc::new(AtomicBool::new(false));
    let reader_fds: Vec<RawFd> = readers.iter().map(|s| s.as_raw_fd()).collect();
    let reader = {
        let failed = failed.clone();
        std::thread::spawn(move || drain(&reader_fds, expected, &failed))
    };

    let fds: Vec<RawFd> = senders.iter().map(|s| s.as_raw_fd()).collect();
    let cpu0 = thread_cpu_ns();
    let wall0 = mono_ns();
    let pace = args.group_rate.map(|rate| Pace {
        group: u64::from(args.group),
        interval_ns: (1e9 / rate) as u64,
    });
    let sent = send_all(&fds, &frame, args.frames, pace);
    let wall = mono_ns() - wall0;
    let cpu = thread_cpu_ns() - cpu0;
    if sent.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    let (reader_cpu_ns, bytes_received) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    sent?;
    drop(senders);
    drop(readers);

    let frames = args.frames as f64;
    Ok(FloorReport {
        sockets_requested: args.sockets,
        sockets,
        capped,
        fd_limit,
        frames: args.frames,
        size,
        group: args.group_rate.map(|_| args.group),
        group_rate: args.group_rate,
        sender_cpu_us: cpu as f64 / 1e3,
        cpu_us_per_send: cpu as f64 / 1e3 / frames,
        wall_s: wall as f64 / 1e9,
        wall_us_per_send: wall as f64 / 1e3 / frames,
        sends_per_s: frames / (wall as f64 / 1e9),
        reader_cpu_us: reader_cpu_ns as f64 / 1e3,
        bytes_received,
    })
}

/// `n` connected loopback TCP pairs: (server-side sockets to send on, client sockets to
/// drain). Connect and accept alternate so the listen backlog never fills.
fn connect_pairs(n: u32) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    listener.bind(&addr.into())?;
    listener.listen(1024)?;
    let listener: TcpListener = listener.into();
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(n as usize);
    let mut readers = Vec::with_capacity(n as usize);
    for i in 0..n {
        let client = TcpStream::connect(addr).with_context(|| format!("connect #{i}"))?;
        let (server, _) = listener.accept().with_context(|| format!("accept #{i}"))?;
        // As a chat server would: no Nagle delay on small frames.
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        senders.push(server);
        readers.push(client);
    }
    Ok((senders, readers))
}

/// Paced sending: groups of sends at a fixed rate, the thread asleep in between.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// Sends per group, back to back.
    group: u64,
    /// Time from one group's start to the next's.
    interval_ns: u64,
}

/// Sends `frames` copies of `frame` round-robin over `fds` with blocking `send()`,
/// back to back or, with `pace`, in groups started on a fixed schedule (a group that
/// starts late does not shift the ones after it, as a paced load generator's would not).
fn send_all(fds: &[RawFd], frame: &[u8], frames: u64, pace: Option<Pace>) -> Result<()> {
    let n = fds.len() as u64;
    let start = mono_ns();
    for i in 0..frames {
        if let Some(p) = pace {
            if i % p.group == 0 {
                sleep_until_ns(start + i / p.group * p.interval_ns);
            }
        }
        let fd = fds[(i % n) as usize];
        let mut off = 0;
        while off < frame.len() {
            // SAFETY: `fd` is an open socket owned by the caller; the slice is valid.
            let r = unsafe {
                libc::send(
                    fd,
                    frame[off..].as_ptr().cast(),
                    frame.len() - off,
                    libc::MSG_NOSIGNAL,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("send: {e}");
            }
            off += r as usize;
        }
    }
    Ok(())
}

/// Drains every socket with epoll until `expected` bytes arrived (or the sender failed);
/// returns this thread's CPU time (ns) and the bytes read.
fn drain(fds: &[RawFd], expected: u64, failed: &AtomicBool) -> Result<(u64, u64)> {
    let cpu0 = thread_cpu_ns();
    // SAFETY: plain epoll syscalls on descriptors that outlive this thread's use of them
    // (the caller joins this thread before closing them).
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    for (i, &fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: see above.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: `ep` is ours.
            unsafe { libc::close(ep) };
            bail!("epoll_ctl: {e}");
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while total < expected && !failed.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for 256 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, 100) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: `ep` is ours.
            unsafe { libc::close(ep) };
            bail!("epoll_wait: {e}");
        }
        for ev in &events[..n as usize] {
            let fd = fds[ev.u64 as usize];
            loop {
                // SAFETY: `buf` is valid for its length; `fd` is open.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
                total += r as u64;
            }
        }
    }
    // SAFETY: `ep` is ours.
    unsafe { libc::close(ep) };
    Ok((thread_cpu_ns() - cpu0, total))
}

/// The human summary.
pub fn print_human(r: &FloorReport) {
    println!(
        "floor: blocking send() of one {}-byte frame to loopback TCP sockets",
        r.size
    );
    println!(
        "  sockets            {}{}",
        r.sockets,
        if r.capped {
            format!(
                " (capped from {}: 2 descriptors each, RLIMIT_NOFILE {})",
                r.sockets_requested, r.fd_limit
            )
        } else {
            String::new()
        }
    );
    println!("  sends              {}", r.frames);
    if let (Some(group), Some(rate)) = (r.group, r.group_rate) {
        println!("  paced              groups of {group} at {rate} groups/s, asleep in between");
    }
    println!("  sender CPU / send  {:.3} µs", r.cpu_us_per_send);
    println!(
        "  wall / send        {:.3} µs ({:.0} sends/s)",
        r.wall_us_per_send, r.sends_per_s
    );
    println!("  sender CPU total   {:.1} ms", r.sender_cpu_us / 1e3);
    println!("  wall total         {:.3} s", r.wall_s);
    println!(
        "  reader CPU total   {:.1} ms ({} bytes drained)",
        r.reader_cpu_us / 1e3,
        r.bytes_received
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_requested_size_and_a_valid_header() {
        let f = ws_frame(150);
        assert_eq!(f.len(), 150);
        assert_eq!(f[0], 0x81);
        assert_eq!((f[1], u16::from_be_bytes([f[2], f[3]])), (126, 146));
        let f = ws_frame(100);
        assert_eq!((f.len(), f[1]), (100, 98));
        let f = ws_frame(1000);
        assert_eq!(f.len(), 1000);
        assert_eq!((f[1], u16::from_be_bytes([f[2], f[3]])), (126, 996));
        assert_eq!(ws_frame(128).len(), 127);
        assert_eq!(ws_frame(127).len(), 127);
        assert_eq!(ws_frame(130).len(), 130);
    }

    #[test]
    fn socket_count_fits_the_descriptor_limit() {
        assert_eq!(cap_sockets(1_000, 20_000), 1_000);
        assert_eq!(cap_sockets(15_000, 20_000), 9_968);
        assert_eq!(cap_sockets(5, 10), 1);
    }

    #[test]
    fn small_floor_run_delivers_every_byte() {
        let args = FloorArgs {
            sockets: 8,
            frames: 2_000,
            size: 150,
            group: 50,
            group_rate: None,
            json: false,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.sockets, 8);
        assert_eq!(r.bytes_received, 2_000 * 150);
        assert!(r.cpu_us_per_send > 0.0);
        assert_eq!((r.group, r.group_rate), (None, None));
    }

    #[test]
    fn paced_run_keeps_its_schedule_and_delivers_every_byte() {
        // 10 groups of 4 at 200 groups/s: the last group starts 9 / 200 s = 45 ms in,
        // never earlier (the sleep is to an absolute deadline).
        let args = FloorArgs {
            sockets: 8,
            frames: 40,
            size: 150,
            group: 4,
            group_rate: Some(200.0),
            json: false,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.bytes_received, 40 * 150);
        assert!(r.wall_s >= 0.045, "wall {} s", r.wall_s);
        assert_eq!((r.group, r.group_rate), (Some(4), Some(200.0)));
    }
}
