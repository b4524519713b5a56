//! The server under test: URL parsing and the loopback-only rule.
//!
//! loadgen is a tool for benchmarking servers on the same machine; it must never be able
//! to flood anything else. The host of `--url` is therefore parsed here, not resolved: only
//! IP literals in 127.0.0.0/8, `::1` and the name `localhost` (mapped to 127.0.0.1, never
//! looked up) are accepted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A parsed `ws://` URL of a loopback server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Address to connect to (always loopback).
    pub addr: SocketAddr,
    /// `host[:port]` as written in the URL, sent back in the request URL (and so in `Host`).
    pub authority: String,
    /// Path of the WebSocket endpoint, e.g. `/ws`.
    pub path: String,
    /// Query string already present in the URL (without `?`), kept ahead of ours.
    pub query: String,
}

/// Whether `ip` is a loopback address loadgen may send traffic to.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.octets()[0] == 127)
        }
    }
}

impl Target {
    /// Parses `url` and refuses anything that is not a plain `ws://` loopback URL.
    pub fn parse(url: &str) -> Result<Target> {
        let rest = match url.split_once("://") {
            Some(("ws", rest)) => rest,
            Some(("wss", _)) => bail!("{url}: wss:// (TLS) is not supported; use ws://"),
            _ => bail!("{url}: expected a ws:// URL"),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            bail!("{url}: user info in the URL is not supported");
        }
        let (host, port) =
            split_host_port(authority).with_context(|| format!("{url}: bad host"))?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            match host.parse() {
                Ok(ip) => ip,
                Err(_) => bail!(
                    "{url}: refusing host {host:?}: only loopback IP literals \
                     (127.0.0.0/8, ::1) or localhost are allowed"
                ),
            }
        };
        if !is_loopback(ip) {
            bail!(
                "{url}: refusing non-loopback address {ip}: only 127.0.0.0/8 and ::1 are allowed"
            );
        }
        let tail = tail.split('#').next().unwrap_or("");
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            authority: authority.to_string(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            query: query.to_string(),
        })
    }

    /// The URL of one connection: the endpoint plus `token` and `roomId` query parameters.
    pub fn connect_url(&self, token: &str, room: &str) -> String {
        let mut url = format!("ws://{}{}?", self.authority, self.path);
        if !self.query.is_empty() {
            url.push_str(&self.query);
            url.push('&');
        }
        url.push_str("token=");
        percent_encode_into(token, &mut url);
        url.push_str("&roomId=");
        percent_encode_into(room, &mut url);
        url
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the port defaults to 80 as for any ws:// URL.
fn split_host_port(authority: &str) -> Result<(&str, u16)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').context("unclosed [")?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => bail!("junk after ]"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("empty host");
    }
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("bad port {p:?}"))?,
        None => 80,
    };
    Ok((host, port))
}

/// Appends `s` percent-encoded (everything but RFC 3986 unreserved characters).
fn percent_encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:8000/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.query, "");

        let t = Target::parse("ws://localhost:9001/chat?v=2").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.authority, "localhost:9001");
        assert_eq!(t.query, "v=2");

        let t = Target::parse("ws://[::1]:8000/ws").unwrap();
        assert_eq!(t.addr, "[::1]:8000".parse().unwrap());

        let t = Target::parse("ws://127.45.6.7").unwrap();
        assert_eq!(t.addr, "127.45.6.7:80".parse().unwrap());
        assert_eq!(t.path, "/");
    }

    #[test]
    fn refuses_everything_else() {
        for url in [
            "ws://10.0.0.1:8000/ws",
            "ws://192.168.1.5/ws",
            "ws://8.8.8.8/ws",
            "ws://128.0.0.1/ws",
            "ws://[2001:db8::1]:80/ws",
            "ws://example.com/ws",
            "ws://localhost.example.com/ws",
            "ws://127.0.0.1.nip.io/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "ws://user@127.0.0.1/ws",
            "ws://:8000/ws",
            "ws://127.0.0.1:99999/ws",
        ] {
            assert!(Target::parse(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn connect_url_carries_token_and_room() {
        let t = Target::parse("ws://127.0.0.1:8000/ws?x=1").unwrap();
        assert_eq!(
            t.connect_url("a.b-c_d", "lg-r1"),
            "ws://127.0.0.1:8000/ws?x=1&token=a.b-c_d&roomId=lg-r1"
        );
        let t = Target::parse("ws://127.0.0.1:8000/ws").unwrap();
        assert_eq!(
            t.connect_url("a+b/c=", "r:1"),
            "ws://127.0.0.1:8000/ws?token=a%2Bb%2Fc%3D&roomId=r%3A1"
        );
    }
}
