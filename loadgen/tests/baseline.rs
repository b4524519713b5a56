//! The baseline server (`src/bin/baseline.rs`) speaks the part of the contract loadgen
//! needs: a small fan-out against it loses and reorders nothing, and a bad token is
//! refused before the upgrade.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const SECRET: &str = "baseline-secret";

/// A baseline server on a free loopback port, killed when dropped.
struct Baseline {
    /// The server process.
    child: Child,
    /// `127.0.0.1:PORT` from its `chatd listening on` line.
    addr: String,
}

impl Baseline {
    fn start() -> Baseline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baseline"))
            .env("JWT_SECRET", SECRET)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("baseline starts");
        // Blocks until the server has bound its port and says which one.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("chatd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Baseline { child, addr }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line of the answer to a WebSocket upgrade of `/ws?token=TOKEN&roomId=r`.
fn upgrade_status(addr: &str, token: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /ws?token={token}&roomId=r HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    // The server answers a refusal and closes the connection.
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_string()
}

#[test]
fn fanout_against_the_baseline_loses_nothing() {
    let server = Baseline::start();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["fanout", "--url", &format!("ws://{}/ws", server.addr)])
        .args(["--secret", SECRET, "--rooms", "2", "--members", "5"])
        .args(["--senders", "1", "--msg-rate", "10", "--duration", "2"])
        .args(["--warmup", "1", "--json", "--quiet"])
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["connections"]["established"], 10);
    assert_eq!(report["connections"]["failed"], 0);
    let d = &report["delivery"];
    assert!(d["delivered"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["lost"], 0, "{d}");
    assert_eq!(d["reordered"], 0, "{d}");
    assert_eq!(d["duplicates"], 0, "{d}");
    assert_eq!(report["bad_frames"], 0);
    // Every member hears every message of its room: 2 senders x 5 members each.
    assert_eq!(
        d["delivered_measured"].as_u64(),
        d["sent_measured"].as_u64().map(|s| s * 5),
        "{d}"
    );
}

#[test]
fn bad_tokens_are_refused_with_401() {
    let server = Baseline::start();
    assert_eq!(
        upgrade_status(&server.addr, "not-a-jwt"),
        "HTTP/1.1 401 Unauthorized"
    );
    // Well formed, but signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "u-1", "username": "u-1" }),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(&server.addr, &forged),
        "HTTP/1.1 401 Unauthorized"
    );
    // The right secret is let through to the upgrade.
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "u-1" }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "GET /ws?token={good}&roomId=r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap();
    assert_eq!(status.trim_end(), "HTTP/1.1 101 Switching Protocols");
}
