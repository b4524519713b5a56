//! Latency of history reads that go to Postgres while a write load flows:
//! `WRITERS` WebSocket connections send `RATE` messages per second in all
//! (rooms of their own), while one reader asks `GET
//! /api/chats/rooms/{room}/messages?limit=100` `READS_PER_SEC` times a
//! second for `SECS` seconds. The server must run with a HISTORY_PER_ROOM
//! below 100 so every page needs Postgres, and a rate limit out of the way.
//! Prints the reads' p50 / p90 / p99 / max in milliseconds.
//!
//! `cargo run --example history_read_latency -- ADDR SECRET [RATE] [SECS]`
//! (BENCHMARKS.md, "History reads under a write load").

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Connections that write.
const WRITERS: usize = 4;
/// History pages asked per second.
const READS_PER_SEC: u64 = 50;
/// Messages in the read room before reads start (more than one page).
const SEEDED: usize = 200;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: history_read_latency ADDR SECRET [RATE] [SECS]";
    let addr: SocketAddr = args.next().context(usage)?.parse().context("ADDR")?;
    let secret = args.next().context(usage)?;
    let rate: u64 = args.next().map_or(Ok(2000), |s| s.parse())?;
    let secs: u64 = args.next().map_or(Ok(20), |s| s.parse())?;

    let room = format!("bench-read-{:08x}", rand::random::<u32>());
    let mut seeder = connect(addr, &secret, "bench-seeder", &room)?;
    for i in 0..SEEDED {
        send(
            &mut seeder,
            json!({"type": "message", "roomId": room, "content": format!("seed {i}")}),
        )?;
        recv_type(&mut seeder, "message")?;
    }
    // Every seeded row is in Postgres (flushed within a second).
    std::thread::sleep(Duration::from_secs(2));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (stop, sent, secret) = (stop.clone(), sent.clone(), secret.clone());
        let per_writer = rate as f64 / WRITERS as f64;
        writers.push(std::thread::spawn(move || -> Result<()> {
            let wroom = format!("bench-write-{w}-{:08x}", rand::random::<u32>());
            let mut ws = connect(addr, &secret, &format!("bench-writer-{w}"), &wroom)?;
            ws.get_mut().set_nonblocking(true)?;
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * per_writer) as u64;
                while n < due {
                    let frame =
                        json!({"type": "message", "roomId": wroom, "content": format!("w{w} {n}")});
                    match ws.send(Message::text(frame.to_string())) {
                        Ok(()) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    n += 1;
                }
                let _ = ws.flush();
                // Drain the echoes so the server never sees a slow consumer.
                loop {
                    match ws.read() {
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock =>
                        {
                            break
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    // Let the write load settle before measuring.
    std::thread::sleep(Duration::from_secs(2));

    let token = chatd::auth::mint_hs256(secret.as_bytes(), "bench-reader", None, Some(600));
    let path = format!("/api/chats/rooms/{room}/messages?limit=100");
    let mut took_us: Vec<u64> = Vec::new();
    let mut failed = 0u64;
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += Duration::from_micros(1_000_000 / READS_PER_SEC);
        let t = Instant::now();
        let (status, body) = http_get(addr, &path, &token)?;
        let us = t.elapsed().as_micros() as u64;
        let page: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && page["messages"].as_array().map(Vec::len) == Some(100) {
            took_us.push(us);
        } else {
            failed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread")?;
    }
    ensure!(!took_us.is_empty(), "no read answered whole");
    took_us.sort_unstable();
    let q = |p: f64| took_us[((took_us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!(
        "reads {} (failed or partial {failed}), writes sent {} in {:.1} s; read ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        took_us.len(),
        sent.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(1.0),
    );
    Ok(())
}

fn connect(addr: SocketAddr, secret: &str, user: &str, room: &str) -> Result<WebSocket<TcpStream>> {
    let token = chatd::auth::mint_hs256(secret.as_bytes(), user, None, Some(600));
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let url = format!("ws://{addr}/ws?token={token}&roomId={room}");
    let (mut ws, _) = tungstenite::client(url, stream).context("upgrade")?;
    let first = recv_type(&mut ws, "room_joined")?;
    ensure!(first["roomId"] == room, "first frame {first}");
    Ok(ws)
}

fn send(ws: &mut WebSocket<TcpStream>, frame: Value) -> Result<()> {
    ws.send(Message::text(frame.to_string()))?;
    Ok(())
}

fn recv_type(ws: &mut WebSocket<TcpStream>, kind: &str) -> Result<Value> {
    loop {
        if let Message::Text(text) = ws.read()? {
            let v: Value = serde_json::from_str(&text)?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }
}

/// One GET with `Connection: close`; status and body.
fn http_get(addr: SocketAddr, path: &str, token: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
