//! End-to-end runs of the loadgen binary against a throwaway in-process chat server.
//!
//! The fixture speaks just enough of the contract: it checks the HS256 token (401
//! otherwise), answers `room_joined`, tells the room about the new member with a
//! `presence` frame, and relays `message` frames to every connection of the room, sender
//! included, in the server frame shape. Knobs make it misbehave in known ways (dropping
//! messages, rate limiting) so loadgen's accounting can be checked against the truth.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "e2e-secret";

/// How the fixture behaves.
#[derive(Clone, Copy, Default)]
struct Fixture {
    /// Drop (never broadcast) messages whose loadgen sequence number is `n % 10 == 5`.
    drop_tenth: bool,
    /// Refuse a user's messages past this many with an `error` frame `rate_limited`.
    rate_limit: Option<u32>,
}

type Rooms = Rc<RefCell<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

/// Starts the fixture on a free loopback port, on its own thread; returns the port.
fn start_server(fx: Fixture) -> u16 {
    start_server_on(0, fx)
}

/// Starts the fixture on `port` (0: any free one); returns the port.
fn start_server_on(port: u16, fx: Fixture) -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let rooms: Rooms = Rc::default();
            let mut next_id = 0u64;
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                next_id += 1;
                tokio::task::spawn_local(serve(stream, peer, next_id, rooms.clone(), fx));
            }
        });
    });
    port
}

fn user_of(token: &str) -> Option<String> {
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).ok()?;
    data.claims["sub"].as_str().map(String::from)
}

// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn serve(
    stream: tokio::net::TcpStream,
    _peer: SocketAddr,
    id: u64,
    rooms: Rooms,
    fx: Fixture,
) {
    let mut user = None;
    let mut room = String::from("lobby");
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let query = req.uri().query().unwrap_or("");
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("token", t)) => user = user_of(t),
                Some(("roomId", r)) => room = r.to_string(),
                _ => {}
            }
        }
        if user.is_none() {
            let mut e = ErrorResponse::new(Some("{\"error\":\"bad token\"}".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(e);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let user = user.unwrap();
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let members = {
        let mut r = rooms.borrow_mut();
        let list = r.entry(room.clone()).or_default();
        list.push((id, tx.clone()));
        list.len()
    };
    let _ = tx.send(Message::text(format!(
        r#"{{"type":"room_joined","roomId":"{room}","memberCount":{members}}}"#
    )));
    broadcast(
        &rooms,
        &room,
        &format!(r#"{{"type":"presence","userId":"{user}","status":"online","roomId":"{room}"}}"#),
    );
    let mut sent = 0u32;
    let mut seq = 0u64;
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v["type"] != "message" {
            continue;
        }
        sent += 1;
        if fx.rate_limit.is_some_and(|limit| sent > limit) {
            let _ = tx.send(Message::text(
                r#"{"type":"error","code":"rate_limited","message":"slow down","retryAfterMs":1000}"#,
            ));
            continue;
        }
        let content = v["content"].as_str().unwrap_or("");
        let n: u64 = content
            .split(' ')
            .nth(3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if fx.drop_tenth && n % 10 == 5 {
            continue;
        }
        seq += 1;
        let frame = serde_json::json!({
            "type": "message",
            "messageId": format!("m-{id}-{seq}"),
            "userId": user,
            "username": user,
            "roomId": room,
            "content": content,
            "timestamp": "2024-01-01T12:00:00.000Z",
            "someFutureField": {"ignored": true},
        });
        broadcast(&rooms, &room, &frame.to_string());
    }
    let mut r = rooms.borrow_mut();
    if let Some(list) = r.get_mut(&room) {
        list.retain(|(c, _)| *c != id);
    }
}

fn broadcast(rooms: &Rooms, room: &str, text: &str) {
    if let Some(list) = rooms.borrow().get(room) {
        for (_, tx) in list {
            let _ = tx.send(Message::text(text.to_string()));
        }
    }
}

/// Runs loadgen with the whitespace-separated `args` plus `--json --quiet`, returns the
/// parsed report.
fn loadgen(args: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args.split_whitespace())
        .args(["--json", "--quiet"])
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/ws")
}

#[test]
fn fanout_delivers_everything_in_order() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hgrm = dir.join("fanout.hgrm");
    let svg = dir.join("fanout.svg");
    let r = loadgen(&format!(
        "fanout --url {u} --secret {SECRET} --rooms 4 --members 10 --senders 2 \
         --msg-rate 20 --duration 2 --warmup 0.5 --grace 1 --size 100 \
         --processes 2 --hgrm {} --svg {}",
        hgrm.display(),
        svg.display()
    ));
    assert_eq!(r["scenario"], "fanout");
    assert_eq!(r["processes"], 2);
    let c = &r["connections"];
    assert_eq!(c["established"], 40, "{r:#}");
    assert_eq!(c["failed"], 0);
    assert_eq!(c["dropped"], 0);
    assert_eq!(c["closed"], 40);
    let d = &r["delivery"];
    // 8 senders x 20/s x 2 s = 320 messages in the window, each to 10 members.
    let sent = d["sent_measured"].as_u64().unwrap();
    assert!((310..=330).contains(&sent), "{d:#}");
    assert_eq!(
        d["delivered_measured"].as_u64().unwrap(),
        sent * 10,
        "{d:#}"
    );
    assert_eq!(d["expected_measured"].as_u64().unwrap(), sent * 10);
    assert_eq!(d["lost"], 0);
    assert_eq!(d["reordered"], 0);
    assert_eq!(d["duplicates"], 0);
    assert_eq!(d["unsent"], 0);
    assert_eq!(d["senders_judged"], 8);
    assert_eq!(d["latency_ms"]["count"].as_u64().unwrap(), sent * 10);
    assert!(d["latency_ms"]["p99_ms"].as_f64().unwrap() < 1_000.0);
    assert!(r["frames"]["presence"].as_u64().unwrap() > 0);
    assert_eq!(r["frames"]["room_joined"], 40);
    assert!(r["loadgen"]["cpu_us_total"].as_u64().unwrap() > 0);

    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(text.contains(&format!("Total count    = {:12}]", sent * 10)));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fanout_counts_dropped_messages_as_lost() {
    let port = start_server(Fixture {
        drop_tenth: true,
        ..Fixture::default()
    });
    let u = url(port);
    let r = loadgen(&format!(
        "fanout --url {u} --secret {SECRET} --rooms 2 --members 5 --senders 1 \
         --msg-rate 50 --duration 2 --warmup 0 --grace 1"
    ));
    let d = &r["delivery"];
    // 2 senders x 50/s x 2 s: sequence numbers 0..100 per sender, all in the window.
    assert_eq!(d["sent_measured"], 200, "{d:#}");
    // Numbers ending in 5 (10 per sender) never reach any of the 5 members.
    assert_eq!(d["delivered_measured"], 200 * 5 - 20 * 5, "{d:#}");
    // Only messages sent before end - grace (1 s: numbers 0..50) are judged; among
    // them 5, 15, ..., 45 were dropped: 5 per sender, at 5 members each.
    assert_eq!(d["lost"], 2 * 5 * 5, "{d:#}");
    assert_eq!(d["reordered"], 0);
    assert_eq!(d["duplicates"], 0);
}

#[test]
fn burst_keeps_the_window_full() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let r = loadgen(&format!(
        "burst --url {u} --secret {SECRET} --members 8 --window 16 --duration 1 \
         --warmup 0.2 --grace 0.5"
    ));
    let d = &r["delivery"];
    let sent = d["sent_measured"].as_u64().unwrap();
    assert!(sent > 100, "{d:#}");
    assert_eq!(d["lost"], 0, "{d:#}");
    assert_eq!(d["delivered_measured"].as_u64().unwrap(), sent * 8, "{d:#}");
    assert_eq!(r["connections"]["established"], 8);
}

#[test]
fn rate_limit_errors_are_counted_by_code() {
    let port = start_server(Fixture {
        rate_limit: Some(5),
        ..Fixture::default()
    });
    let u = url(port);
    let r = loadgen(&format!(
        "burst --url {u} --secret {SECRET} --members 3 --window 4 --duration 0.5 \
         --warmup 0 --grace 0.2"
    ));
    let errors = r["errors"]["rate_limited"].as_u64().unwrap();
    assert!(errors > 10, "{r:#}");
}

#[test]
fn connect_reports_handshakes_and_failures() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let r = loadgen(&format!(
        "connect --url {u} --secret {SECRET} --connections 300 --rate 1000 \
         --hold 0.5 --room-size 50 --per-source 100"
    ));
    let c = &r["connections"];
    assert_eq!(c["established"], 300, "{r:#}");
    assert_eq!(c["rooms"], 6);
    assert_eq!(c["handshake_ms"]["count"], 300);
    assert!(c["rate_per_s"].as_f64().unwrap() > 200.0, "{c:#}");
    assert!(r["delivery"].is_null());

    // Wrong secret: every upgrade is refused with 401.
    let r = loadgen(&format!(
        "connect --url {u} --secret wrong --connections 20 --hold 0"
    ));
    assert_eq!(r["connections"]["failures"]["http_401"], 20, "{r:#}");
    assert_eq!(r["connections"]["established"], 0);

    // Nobody listening: refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = loadgen(&format!(
        "connect --url {} --secret {SECRET} --connections 10 --hold 0",
        url(free)
    ));
    assert_eq!(r["connections"]["failures"]["refused"], 10, "{r:#}");
}

#[test]
fn tokens_file_supplies_credentials() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let mut text = String::from("# tokens for the e2e test\n");
    for i in 0..12 {
        let claims = serde_json::json!({"sub": format!("file-{i}"), "exp": 4_000_000_000u64});
        text += &jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        text.push('\n');
    }
    let path = std::env::temp_dir().join(format!("loadgen-tokens-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let r = loadgen(&format!(
        "connect --url {u} --tokens-file {} --connections 12 --hold 0.2",
        path.display()
    ));
    assert_eq!(r["connections"]["established"], 12, "{r:#}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn churn_runs_beside_fanout() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let r = loadgen(&format!(
        "churn --url {u} --secret {SECRET} --rooms 2 --members 5 --msg-rate 10 \
         --duration 2 --warmup 0.5 --grace 0.5 --churn-rate 20 --churn-hold 0.3"
    ));
    let ch = &r["churn"];
    let attempted = ch["attempted"].as_u64().unwrap();
    assert!((45..=55).contains(&attempted), "{ch:#}");
    assert_eq!(ch["established"].as_u64().unwrap(), attempted);
    assert_eq!(ch["closed"].as_u64().unwrap(), attempted);
    assert!(ch["handshake_ms"]["count"].as_u64().unwrap() >= 35);
    assert_eq!(r["delivery"]["lost"], 0, "{r:#}");
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["connect", "--url", "ws://10.0.0.1:8000/ws", "--secret", "s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}

#[test]
fn server_pid_reports_cpu_and_rss() {
    // The fixture lives in this test process, so its PID is ours.
    let port = start_server(Fixture::default());
    let u = url(port);
    let pid = std::process::id();
    let r = loadgen(&format!(
        "fanout --url {u} --secret {SECRET} --rooms 1 --members 10 --msg-rate 100 \
         --duration 1 --warmup 0 --grace 0.3 --server-pid {pid}"
    ));
    let s = &r["server"];
    assert_eq!(s["pid"].as_u64().unwrap(), u64::from(pid));
    assert!(s["rss_connected_bytes"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["cpu_us_per_delivery"].is_number(), "{s:#}");
}

/// Runs loadgen with `args` and returns its summary table (progress goes to our stderr).
fn loadgen_human(args: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args.split_whitespace())
        .env_remove("JWT_SECRET")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "loadgen failed\n{stdout}");
    stdout
}

/// 15,000 connections over three worker processes, then fanout to all of them. Slow and
/// heavy (the fixture holds every socket in this process), so it only runs on request:
/// `cargo test --release -p loadgen --test e2e -- --ignored --nocapture`.
#[test]
#[ignore]
fn scale_many_connections_over_several_processes() {
    let port = start_server(Fixture::default());
    let u = url(port);
    let table = loadgen_human(&format!(
        "connect --url {u} --secret {SECRET} --connections 15000 --rate 5000 \
         --hold 2 --per-process 6000 --per-source 4000 --server-pid {}",
        std::process::id()
    ));
    println!("{table}");
    assert!(
        table.contains("established            15000 of 15000"),
        "{table}"
    );

    let table = loadgen_human(&format!(
        "fanout --url {u} --secret {SECRET} --rooms 150 --members 100 --senders 1 \
         --msg-rate 4 --duration 5 --warmup 1 --rate 5000 --per-process 6000 \
         --server-pid {}",
        std::process::id()
    ));
    println!("{table}");
    assert!(
        table.contains("lost / reordered / dup 0 / 0 / 0"),
        "{table}"
    );
}

/// Serves the fixture on `LOADGEN_FIXTURE_PORT` (default: a free port, printed) for
/// `LOADGEN_FIXTURE_SECS` seconds (default 60), to try loadgen by hand without a real
/// server: `cargo test --release -p loadgen --test e2e fixture_server -- --ignored --nocapture`.
#[test]
#[ignore]
fn fixture_server() {
    let secs: u64 = std::env::var("LOADGEN_FIXTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let port = match std::env::var("LOADGEN_FIXTURE_PORT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(port) => start_server_on(port, Fixture::default()),
        None => start_server(Fixture::default()),
    };
    println!(
        "fixture: ws://127.0.0.1:{port}/ws secret {SECRET} pid {} for {secs} s",
        std::process::id()
    );
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
