//! permessage-deflate (RFC 7692) against the real binary: what the upgrade
//! answers to raw offers, and a whole session with an independent client,
//! Python's `websockets` (tests/python/deflate_client.py), which offers the
//! extension by default.
//!
//! Servers here run with WS_COMPRESSION=true, the setting under test (it is
//! off by default), and the Python session also with MAX_MESSAGE_LENGTH
//! raised so a 60 KB message is a legal message and the 64 KiB frame limit
//! is what a bigger one meets. Without python3 or its `websockets` package
//! the session test prints `SKIP` (fails under CI=true; `.ci/run` installs it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

/// Longest run of the Python session (it takes about a second).
const PYTHON_DEADLINE: Duration = Duration::from_secs(120);

/// The upgrade's response head for `extensions` offered by `user`.
fn upgrade_head(server: &Server, user: &str, extensions: Option<&str>) -> String {
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /ws?token={} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        server.token(user)
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed before the head");
        raw.extend_from_slice(&buf[..n]);
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The `Sec-WebSocket-Extensions` line of a response head, if any.
fn extensions_line(head: &str) -> Option<String> {
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_string())
    })
}

#[test]
fn the_upgrade_answers_offers_by_the_rfc_7692_rules() {
    let server = Server::start(&[("WS_COMPRESSION", "true")]);
    let cases = [
        (None, None),
        (
            Some("permessage-deflate; client_max_window_bits"),
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            Some("permessage-deflate; client_no_context_takeover"),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ),
        // A smaller server window is declined; the fallback offer is taken.
        (
            Some("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (Some("permessage-deflate; server_max_window_bits=10"), None),
        (Some("permessage-deflate; x=1"), None),
        (Some("x-webkit-deflate-frame"), None),
    ];
    for (i, (offer, answer)) in cases.into_iter().enumerate() {
        let head = upgrade_head(&server, &format!("u{i}"), offer);
        assert_eq!(extensions_line(&head).as_deref(), answer, "{offer:?}");
    }
}

#[test]
fn with_ws_compression_off_offers_are_ignored() {
    let server = Server::default_start();
    let head = upgrade_head(
        &server,
        "u",
        Some("permessage-deflate; client_max_window_bits"),
    );
    assert_eq!(extensions_line(&head), None);
}

/// Whether python3 can import `websockets`.
fn python_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls a counter until it reaches `want` (the scrape is cached for a
/// second); returns the last value seen.
fn counter(server: &Server, series: &str, want: f64) -> f64 {
    server.wait_metric(series, want).unwrap_or(-1.0)
}

#[test]
fn python_websockets_session_with_compressed_and_plain_members() {
    if !python_websockets() {
        return common::skip(
            "python3 with the websockets package is required (python3 -m pip install websockets==17.4)",
        );
    }
    let server = Server::start(&[("WS_COMPRESSION", "true"), ("MAX_MESSAGE_LENGTH", "100000")]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/deflate_client.py"
    );
    let base = format!("ws://{}", server.addr);
    let tokens = ["packed", "plain", "nocontext"].map(|u| server.token(u));
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&base)
        .arg("deflate-room")
        .args(&tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let end = Instant::now() + PYTHON_DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python session failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    // Seven chat-sized messages and the 60 KB one were compressed once
    // each, and delivered compressed to the two members that negotiated
    // the extension; the short one and the refused one were not.
    assert_eq!(
        counter(&server, "chat_ws_compressed_frames_total", 8.0),
        8.0
    );
    assert_eq!(
        counter(&server, "chat_ws_compressed_deliveries_total", 16.0),
        16.0
    );
    let saved = server
        .metric("chat_ws_compression_saved_bytes_total")
        .expect("saved bytes");
    assert!(saved > 60_000.0, "saved {saved}");
    assert_eq!(
        counter(
            &server,
            "chat_connections_closed_total{reason=\"protocol\"}",
            1.0
        ),
        1.0,
        "the 1009 close"
    );
}
