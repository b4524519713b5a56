//! Checks a server started with the defaults (the README's start command):
//! its core count is the machine's, `/metrics` answers while users chat, and
//! two users in rooms owned by different cores get each other's messages in
//! order. `.ci/run` runs it against the release binary, then sends SIGTERM
//! and checks the exit.
//!
//! `cargo run --release --example defaults_check -- ADDR SECRET`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Longest wait for any answer; the check fails rather than hangs.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Messages each user sends into the other's room.
const MESSAGES: usize = 20;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .context("usage: defaults_check ADDR SECRET")?
        .parse()
        .context("ADDR must be host:port")?;
    let secret = args.next().context("usage: defaults_check ADDR SECRET")?;

    let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (status, body) = http_get(addr, "/healthz")?;
    ensure!(status == 200, "/healthz answered {status}: {body}");
    let health: Value = serde_json::from_str(&body).context("/healthz JSON")?;
    let cores = health["cores"].as_u64().context("/healthz has no cores")? as usize;
    ensure!(
        cores == machine,
        "the server runs {cores} cores on a machine with {machine}"
    );

    let room_a = room_on("ci-a", 0, cores);
    let room_b = room_on("ci-b", 1.min(cores - 1), cores);
    let mut alice = connect(addr, &secret, "ci-alice", &room_a)?;
    let mut bob = connect(addr, &secret, "ci-bob", &room_b)?;
    for (ws, room) in [(&mut alice, &room_b), (&mut bob, &room_a)] {
        send(ws, json!({"type": "join_room", "roomId": room}))?;
        let joined = recv_type(ws, "room_joined")?;
        ensure!(joined["roomId"] == room.as_str(), "joined {joined}");
    }
    for i in 0..MESSAGES {
        // A scrape between sends: each one asks every core.
        let (status, text) = http_get(addr, "/metrics")?;
        ensure!(
            status == 200 && text.contains("chat_connections"),
            "/metrics answered {status}"
        );
        send(
            &mut alice,
            json!({"type": "message", "roomId": room_b, "content": format!("a{i}")}),
        )?;
        send(
            &mut bob,
            json!({"type": "message", "roomId": room_a, "content": format!("b{i}")}),
        )?;
    }
    // Each user is in both rooms: 2 x MESSAGES messages, each room's in the
    // order its sender sent them.
    for (name, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        let mut from_a = Vec::new();
        let mut from_b = Vec::new();
        while from_a.len() + from_b.len() < 2 * MESSAGES {
            let m = recv_type(ws, "message")?;
            let content = m["content"].as_str().context("content")?.to_string();
            if content.starts_with('a') {
                from_a.push(content);
            } else {
                from_b.push(content);
            }
        }
        let want = |p: char| (0..MESSAGES).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        ensure!(
            from_a == want('a'),
            "{name} got alice's messages as {from_a:?}"
        );
        ensure!(
            from_b == want('b'),
            "{name} got bob's messages as {from_b:?}"
        );
    }
    // `/metrics` answers from a snapshot at most 1 s old: poll, bounded.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (status, text) = http_get(addr, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        let accepted = sample(&text, "chat_messages_received_total{outcome=\"accepted\"}")?;
        if accepted >= (2 * MESSAGES) as f64 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "chat_messages_received_total accepted = {accepted} after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "defaults check: {cores} cores (machine {machine}), rooms {room_a} and {room_b} on cores 0 and {}, {} messages delivered in order, /metrics scraped {} times",
        1.min(cores - 1),
        4 * MESSAGES,
        MESSAGES + 1
    );
    Ok(())
}

/// The first name `prefix-N` owned by `core`.
fn room_on(prefix: &str, core: usize, cores: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| chatd::shard::shard_for(r, cores) == core)
        .expect("some name hashes to every core")
}

fn connect(addr: SocketAddr, secret: &str, user: &str, room: &str) -> Result<WebSocket<TcpStream>> {
    let token = chatd::auth::mint_hs256(secret.as_bytes(), user, None, Some(600));
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let url = format!("ws://{addr}/ws?token={token}&roomId={room}");
    let (mut ws, _) = tungstenite::client(url, stream).context("upgrade")?;
    let first = recv(&mut ws)?;
    ensure!(
        first["type"] == "room_joined" && first["roomId"] == room,
        "first frame {first}"
    );
    Ok(ws)
}

fn send(ws: &mut WebSocket<TcpStream>, frame: Value) -> Result<()> {
    ws.send(Message::text(frame.to_string()))?;
    Ok(())
}

fn recv(ws: &mut WebSocket<TcpStream>) -> Result<Value> {
    loop {
        match ws.read().context("read (timed out or closed)")? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("closed by the server: {c:?}"),
            _ => continue,
        }
    }
}

fn recv_type(ws: &mut WebSocket<TcpStream>, kind: &str) -> Result<Value> {
    loop {
        let v = recv(ws)?;
        if v["type"] == kind {
            return Ok(v);
        }
        ensure!(v["type"] != "error", "error frame {v}");
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ci\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn sample(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .context(format!("no {series} in /metrics"))?
        .trim()
        .parse()
        .context("not a number")
}
