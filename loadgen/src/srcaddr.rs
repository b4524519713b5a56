//! Spreading client sockets over source addresses so ephemeral ports never run out.
//!
//! A TCP connection is identified by (source ip, source port, destination ip, destination
//! port). Towards one server address and port, one source address offers only as many
//! connections as the ephemeral port range (`net.ipv4.ip_local_port_range`, about 28,000
//! ports by default), fewer still when closed connections linger in TIME_WAIT. Every address
//! in 127.0.0.0/8 is local on Linux, so connection `id` is bound to source address
//! `127.0.0.2 + id / per_source` before connecting: consecutive blocks of `per_source`
//! connections share one address, and the next block moves to the next address.
//!
//! Blocks are kept small ([`DEFAULT_PER_SOURCE`]) because `connect()` picks the source
//! port by walking the ports that address already uses towards the same server: the
//! more connections share an address, the longer each later connect searches.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// First source address handed out (127.0.0.1 is left to the server and to other tools).
const FIRST_SOURCE: u32 = u32::from_be_bytes([127, 0, 0, 2]);
/// Last usable address of 127.0.0.0/8.
const LAST_SOURCE: u32 = u32::from_be_bytes([127, 255, 255, 254]);
/// Connections per source address unless `--per-source` says otherwise. With all
/// 15,000 connections of `loadgen connect --connections 15000 --rate 15000 --processes 2`
/// on one address, the kernel's port search (`__inet_hash_connect`,
/// `__inet_check_established`) took 34% of the machine's CPU (`perf record -a`,
/// 2026-11-24); with 1,000 per address it no longer shows in the profile.
pub const DEFAULT_PER_SOURCE: u32 = 1_000;

/// Source address for connection `id` towards a server at `server`.
///
/// IPv6 has a single loopback address, so towards `::1` every connection uses `::1` and
/// the port range is the limit.
pub fn source_for(server: IpAddr, id: u64, per_source: u32) -> IpAddr {
    match server {
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => {
            let span = u64::from(LAST_SOURCE - FIRST_SOURCE + 1);
            let block = (id / u64::from(per_source.max(1))) % span;
            IpAddr::V4(Ipv4Addr::from(FIRST_SOURCE + block as u32))
        }
    }
}

/// Parses `ip_local_port_range` ("32768\t60999") into the number of ports it offers.
pub fn parse_port_range(text: &str) -> Option<u32> {
    let mut it = text.split_whitespace().map(str::parse::<u32>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (hi >= lo).then(|| hi - lo + 1)
}

/// Default connections per source address: [`DEFAULT_PER_SOURCE`], or 90% of the
/// ephemeral range when that is smaller (leaving room for TIME_WAIT and other programs).
pub fn default_per_source() -> u32 {
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t))
        .unwrap_or(28_232);
    per_source_for_range(ports)
}

/// [`default_per_source`] for a range of `ports` ephemeral ports.
pub fn per_source_for_range(ports: u32) -> u32 {
    (ports / 10 * 9).clamp(1, DEFAULT_PER_SOURCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn consecutive_blocks_move_to_the_next_address() {
        let server = v4(127, 0, 0, 1);
        assert_eq!(source_for(server, 0, 50_000), v4(127, 0, 0, 2));
        assert_eq!(source_for(server, 49_999, 50_000), v4(127, 0, 0, 2));
        assert_eq!(source_for(server, 50_000, 50_000), v4(127, 0, 0, 3));
        assert_eq!(source_for(server, 149_999, 50_000), v4(127, 0, 0, 4));
        // Carries into the next octet.
        assert_eq!(source_for(server, 254, 1), v4(127, 0, 1, 0));
    }

    #[test]
    fn default_blocks_are_small_unless_the_port_range_is_smaller() {
        assert_eq!(per_source_for_range(28_232), 1_000);
        assert_eq!(per_source_for_range(1_120), 1_000);
        assert_eq!(per_source_for_range(1_000), 900);
        assert_eq!(per_source_for_range(10), 9);
        assert_eq!(per_source_for_range(0), 1);
    }

    #[test]
    fn stays_inside_loopback_and_handles_v6() {
        let server = v4(127, 0, 0, 1);
        let span = u64::from(LAST_SOURCE - FIRST_SOURCE + 1);
        assert_eq!(source_for(server, span, 1), v4(127, 0, 0, 2));
        assert_eq!(source_for(server, span - 1, 1), v4(127, 255, 255, 254));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(source_for(v6, 123_456, 1_000), v6);
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 65535"), Some(64_512));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("garbage"), None);
    }
}
