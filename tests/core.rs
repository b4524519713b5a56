//! The core of the wire contract over real sockets: connecting, rooms across
//! cores, ordering, frames and errors, presence, slow consumers, shutdown.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{rooms_on_cores, Client, Server};
use serde_json::json;

#[test]
fn room_joined_first_and_member_count_counts_distinct_users() {
    let server = Server::default_start();
    let (_a, joined) = server.connect("alice", "general");
    assert_eq!(joined["memberCount"], 1);
    let (_b, joined) = server.connect("bob", "general");
    assert_eq!(joined["memberCount"], 2);
    // A second connection of bob does not add a member.
    let (_b2, joined) = server.connect("bob", "general");
    assert_eq!(joined["memberCount"], 2);
}

#[test]
fn refusals_before_upgrade_are_json() {
    let server = Server::default_start();
    let addr = server.addr;
    let (status, body) = Client::open(&format!("ws://{addr}/ws?roomId=general"))
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("\"error\""), "{body}");
    let bad = chatd::auth::mint_hs256(b"another-secret", "mallory", None, Some(60));
    let (status, body) = Client::open(&format!("ws://{addr}/ws?token={bad}"))
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("invalid token"), "{body}");
    let past = past_token("old");
    let (status, _) = Client::open(&format!("ws://{addr}/ws?token={past}"))
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let good = server.token("carol");
    let (status, body) = Client::open(&format!("ws://{addr}/ws?token={good}&roomId=bad%20room"))
        .err()
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("roomId"), "{body}");
    let long = "r".repeat(129);
    let (status, _) = Client::open(&format!("ws://{addr}/ws?token={good}&roomId={long}"))
        .err()
        .unwrap();
    assert_eq!(status, 400);
    // A WebSocket version other than 13: 426 naming the supported one.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    write!(
        raw,
        "GET /ws?token={good} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    raw.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 426"), "{text}");
    assert!(text.contains("Sec-WebSocket-Version: 13"), "{text}");
    // A plain GET of /ws is not an upgrade: 400.
    let (status, body) = common::http_get(addr, &format!("/ws?token={good}"), None);
    assert_eq!(status, 400, "{body}");
    // Header auth works too, and a missing roomId means lobby.
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(common::FRAME_TIMEOUT))
        .unwrap();
    let request = tungstenite::http::Request::builder()
        .uri(format!("ws://{addr}/ws"))
        .header("Host", addr.to_string())
        .header("Authorization", format!("Bearer {good}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (ws, _) = tungstenite::client(request, stream).expect("bearer header accepted");
    let mut client = Client { ws };
    let first = client.recv();
    assert_eq!(
        first,
        json!({"type": "room_joined", "roomId": "lobby", "memberCount": 1})
    );
    // Nothing about refused users is online.
    let (status, body) = server.get("/api/chats/users/mallory/status", Some(&good));
    assert_eq!(status, 200);
    assert!(body.contains("offline"), "{body}");
}

/// An HS256 token whose exp is in the past.
fn past_token(user: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let claims = json!({"sub": user, "exp": 1_000_000_000u64});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn message_frame_has_the_contract_fields() {
    let server = Server::default_start();
    let (mut alice, _) = server.connect("alice", "general");
    let (mut bob, _) = server.connect("bob", "general");
    alice.send(json!({"type": "message", "roomId": "general", "content": "Hello \"everyone\" ✓", "timestamp": "2024-01-01T12:00:00Z"}));
    for client in [&mut alice, &mut bob] {
        let m = client.recv_type("message");
        assert_eq!(m["userId"], "alice");
        assert_eq!(m["username"], "alice");
        assert_eq!(m["roomId"], "general");
        assert_eq!(m["content"], "Hello \"everyone\" ✓");
        assert_eq!(m["messageId"].as_str().unwrap().len(), 26);
        let ts = m["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        assert_ne!(ts, "2024-01-01T12:00:00Z", "server stamps its own time");
    }
    // roomId is optional: the connection's initial room.
    bob.send(json!({"type": "message", "content": "hi"}));
    assert_eq!(alice.recv_type("message")["content"], "hi");
}

#[test]
fn a_user_in_rooms_of_both_cores_gets_both_in_order() {
    let server = Server::start(&[("RATE_LIMIT_MAX_MESSAGES", "1000")]);
    let (room0, room1) = rooms_on_cores("cross");
    let (mut listener, _) = server.connect("listener", &room0);
    listener.send(json!({"type": "join_room", "roomId": room1}));
    let joined = listener.recv_type("room_joined");
    assert_eq!(joined["roomId"], room1.as_str());
    assert_eq!(joined["memberCount"], 1);
    let (mut s0, _) = server.connect("s0", &room0);
    let (mut s1, _) = server.connect("s1", &room1);
    for i in 0..50 {
        s0.send(json!({"type": "message", "content": format!("a{i}")}));
        s1.send(json!({"type": "message", "content": format!("b{i}")}));
    }
    let mut seen0 = Vec::new();
    let mut seen1 = Vec::new();
    while seen0.len() < 50 || seen1.len() < 50 {
        let m = listener.recv_type("message");
        if m["roomId"] == room0.as_str() {
            seen0.push(m["content"].as_str().unwrap().to_string());
        } else {
            assert_eq!(m["roomId"], room1.as_str());
            seen1.push(m["content"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen0, (0..50).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(seen1, (0..50).map(|i| format!("b{i}")).collect::<Vec<_>>());
}

#[test]
fn three_senders_four_receivers_see_one_order() {
    let server = one_order_of_three_senders(&[("RATE_LIMIT_MAX_MESSAGES", "1000")]);
    // 7 members x 300 messages went out, mostly through the batched writer.
    let writes = server.metric("chat_send_batched_total").unwrap();
    let batches = server.metric("chat_send_batches_total").unwrap();
    assert!(writes > 0.0 && batches > 0.0, "{writes} {batches}");
    assert!(
        batches <= writes,
        "{batches} submissions for {writes} writes"
    );
    assert!(writes <= 2100.0, "{writes}");
}

#[test]
fn without_batched_sends_every_driver_sends_and_the_order_holds() {
    let server = one_order_of_three_senders(&[
        ("RATE_LIMIT_MAX_MESSAGES", "1000"),
        ("BATCHED_SENDS", "false"),
    ]);
    assert_eq!(server.metric("chat_send_batched_total"), Some(0.0));
    assert_eq!(server.metric("chat_send_batches_total"), Some(0.0));
}

/// Three senders on both cores, 100 messages each, into a room four
/// receivers share: every receiver sees the same order, ids sort in it, and
/// each sender's own messages keep their order.
fn one_order_of_three_senders(env: &[(&str, &str)]) -> Server {
    let server = Server::start(env);
    let (room0, room1) = rooms_on_cores("order");
    let room = room1; // owned by core 1; members spread over both cores
                      // Receivers connect with initial rooms on both cores, then join `room`.
    let mut receivers = Vec::new();
    for (i, home) in [&room0, &room, &room0, &room].iter().enumerate() {
        let (mut c, _) = server.connect(&format!("r{i}"), home);
        if *home != &room {
            c.send(json!({"type": "join_room", "roomId": room}));
            assert_eq!(c.recv_type("room_joined")["roomId"], room.as_str());
        }
        receivers.push(c);
    }
    let mut senders: Vec<Client> = (0..3)
        .map(|i| {
            let home = if i == 1 { &room } else { &room0 };
            let (mut c, _) = server.connect(&format!("s{i}"), home);
            if home != &room {
                c.send(json!({"type": "join_room", "roomId": room}));
                c.recv_type("room_joined");
            }
            c
        })
        .collect();
    let threads: Vec<_> = senders
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            let room = room.clone();
            std::thread::spawn(move || {
                for n in 0..100 {
                    c.send(
                        json!({"type": "message", "roomId": room, "content": format!("s{i}-{n}")}),
                    );
                }
                c
            })
        })
        .collect();
    let mut orders = Vec::new();
    for r in receivers.iter_mut() {
        let mut order = Vec::new();
        while order.len() < 300 {
            let m = r.recv_type("message");
            order.push((
                m["messageId"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            ));
        }
        orders.push(order);
    }
    for t in threads {
        t.join().unwrap();
    }
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "every receiver sees the same order");
    }
    let ids: Vec<&String> = orders[0].iter().map(|(id, _)| id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "messageId sorts in delivery order");
    let unique: HashSet<_> = orders[0].iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(unique.len(), 300);
    // Each sender's own messages keep their order.
    for i in 0..3 {
        let mine: Vec<_> = orders[0]
            .iter()
            .filter(|(_, c)| c.starts_with(&format!("s{i}-")))
            .map(|(_, c)| c.clone())
            .collect();
        assert_eq!(
            mine,
            (0..100).map(|n| format!("s{i}-{n}")).collect::<Vec<_>>()
        );
    }
    server
}

#[test]
fn errors_keep_the_connection_open() {
    let server = Server::start(&[("MAX_ROOMS_PER_CONNECTION", "2")]);
    let (mut c, _) = server.connect("erin", "general");
    let expect_error = |c: &mut Client, code: &str| {
        let e = c.recv_type("error");
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    c.send_text("{not json");
    expect_error(&mut c, "invalid_message");
    c.ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
        .unwrap();
    expect_error(&mut c, "invalid_message");
    c.send(json!({"type": "shout", "content": "x"}));
    expect_error(&mut c, "invalid_message");
    c.send(json!({"type": "message"}));
    expect_error(&mut c, "invalid_message");
    c.send(json!({"type": "message", "content": "   "}));
    expect_error(&mut c, "invalid_message");
    c.send(json!({"type": "message", "roomId": "elsewhere", "content": "x"}));
    expect_error(&mut c, "not_in_room");
    c.send(json!({"type": "leave_room", "roomId": "elsewhere"}));
    expect_error(&mut c, "not_in_room");
    // 1000 two-byte characters are fine; 1001 are too long.
    c.send(json!({"type": "message", "content": "é".repeat(1000)}));
    assert_eq!(
        c.recv_type("message")["content"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        1000
    );
    c.send(json!({"type": "message", "content": "é".repeat(1001)}));
    expect_error(&mut c, "message_too_long");
    c.send(json!({"type": "join_room", "roomId": "second"}));
    c.recv_type("room_joined");
    c.send(json!({"type": "join_room", "roomId": "third"}));
    expect_error(&mut c, "room_limit");
    c.send(json!({"type": "join_room", "roomId": "bad room"}));
    expect_error(&mut c, "invalid_message");
    c.send(json!({"type": "ping"}));
    assert_eq!(c.recv(), json!({"type": "pong"}));
    // Over 64 KiB: closed with 1009.
    c.send_text(&format!(
        "{{\"type\":\"message\",\"content\":\"{}\"}}",
        "x".repeat(70 * 1024)
    ));
    assert_eq!(c.expect_close(), Some(1009));
}

#[test]
fn join_leave_typing_and_pings() {
    let server = Server::default_start();
    let (mut a, _) = server.connect("ann", "general");
    let (mut b, _) = server.connect("ben", "general");
    a.send(json!({"type": "join_room", "roomId": "dev"}));
    assert_eq!(
        a.recv_type("room_joined"),
        json!({"type": "room_joined", "roomId": "dev", "memberCount": 1})
    );
    b.send(json!({"type": "typing", "roomId": "general", "isTyping": true}));
    let t = a.recv_type("typing_indicator");
    assert_eq!(t["userId"], "ben");
    assert_eq!(t["roomId"], "general");
    assert_eq!(t["isTyping"], true);
    a.send(json!({"type": "leave_room", "roomId": "dev"}));
    assert_eq!(
        a.recv_type("room_left"),
        json!({"type": "room_left", "roomId": "dev"})
    );
    // The typist does not get its own indicator: the next frame ben sees is the pong.
    b.send(json!({"type": "ping"}));
    assert_eq!(b.recv_type("pong"), json!({"type": "pong"}));
    b.ws.send(tungstenite::Message::Ping(b"hey".to_vec().into()))
        .unwrap();
    b.ws.flush().unwrap();
    loop {
        match b.ws.read().unwrap() {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"hey");
                break;
            }
            tungstenite::Message::Text(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn presence_offline_only_after_the_last_connection() {
    let server = Server::default_start();
    let (room0, room1) = rooms_on_cores("presence");
    let (mut watcher, _) = server.connect("watcher", &room0);
    watcher.send(json!({"type": "join_room", "roomId": room1}));
    watcher.recv_type("room_joined");
    let (first, _) = server.connect("pat", &room0);
    let online = watcher.recv_type("presence");
    assert_eq!(
        online,
        json!({"type": "presence", "userId": "pat", "status": "online", "roomId": room0})
    );
    // Second connection on the other core: no new presence event.
    let (second, _) = server.connect("pat", &room1);
    first.close();
    watcher.send(json!({"type": "ping"}));
    let next = watcher.recv();
    assert_eq!(
        next,
        json!({"type": "pong"}),
        "no presence change while one connection remains"
    );
    let token = server.token("watcher");
    let (_, body) = server.get("/api/chats/users/pat/status", Some(&token));
    assert!(body.contains("\"online\""), "{body}");
    second.close();
    let offline = watcher.recv_type("presence");
    assert_eq!(
        offline,
        json!({"type": "presence", "userId": "pat", "status": "offline", "roomId": room1})
    );
    let (_, body) = server.get("/api/chats/users/pat/status", Some(&token));
    assert!(body.contains("\"offline\""), "{body}");
}

#[test]
fn a_client_that_stops_reading_stalls_nobody() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "100000"),
        ("OUTBOUND_QUEUE_BYTES", "131072"),
        ("SOCKET_SEND_BUFFER", "16384"),
        ("ENABLE_MODERATION", "false"),
    ]);
    // The stuck client: a tiny receive buffer, and it never reads.
    let stuck_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck_socket.set_recv_buffer_size(4096).unwrap();
    stuck_socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = stuck_socket.into();
    stream
        .set_read_timeout(Some(common::FRAME_TIMEOUT))
        .unwrap();
    let url = format!(
        "ws://{}/ws?token={}&roomId=busy",
        server.addr,
        server.token("stuck")
    );
    let (mut stuck, _) = tungstenite::client(url, stream).unwrap();
    let (mut sender, _) = server.connect("sender", "busy");
    let (mut reader, _) = server.connect("reader", "busy");
    let content = "x".repeat(900);
    let total = 2000; // ~2 MB: far beyond the stuck client's buffers and budget
    let writer = std::thread::spawn(move || {
        for i in 0..total {
            sender.send(json!({"type": "message", "content": format!("{i} {content}")}));
            // The sender reads its own copy, so it is not a slow consumer itself.
            sender.recv_type("message");
        }
        sender
    });
    for i in 0..total {
        let m = reader.recv_type("message");
        let n: usize = m["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, i, "the reader gets every message in order");
    }
    let _sender = writer.join().unwrap();
    // The stuck client's stream ends (close frame or reset) well short of
    // everything that was sent.
    let mut drained = 0;
    while let Ok(msg) = stuck.read() {
        drained += 1;
        if msg.is_close() {
            break;
        }
    }
    let closed = server.wait_metric(
        "chat_connections_closed_total{reason=\"slow_consumer\"}",
        1.0,
    );
    assert_eq!(
        closed,
        Some(1.0),
        "the stuck client was closed as a slow consumer"
    );
    assert!(
        drained < total,
        "the stuck client did not receive everything"
    );
}

#[test]
fn slowloris_handshake_is_dropped() {
    let server = Server::start(&[("HANDSHAKE_TIMEOUT_MS", "300")]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closed the unfinished request");
}

#[test]
fn quiet_connections_are_pinged_and_idle_ones_closed() {
    let server = Server::start(&[("PING_INTERVAL_MS", "200"), ("IDLE_TIMEOUT_MS", "800")]);
    let (mut c, _) = server.connect("quiet", "general");
    // tungstenite surfaces the server's ping (and answers it).
    loop {
        match c.ws.read().unwrap() {
            tungstenite::Message::Ping(_) => break,
            tungstenite::Message::Text(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    // A raw client that never answers pings is closed with 1001.
    let mut raw = raw_ws(&server, "mute", "general");
    assert_eq!(read_close_code(&mut raw), Some(1001));
}

#[test]
fn http_routes_and_sigterm_drain() {
    let mut server = Server::default_start();
    let (status, body) = server.get("/healthz", None);
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["backends"]["redis"], "disabled", "{body}");
    assert_eq!(health["backends"]["postgres"], "disabled", "{body}");
    assert_eq!(health["down"], serde_json::json!([]), "{body}");
    let (status, body) = server.get("/nope", None);
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""));
    let (status, _) = server.get("/api/chats/rooms/general/messages", None);
    assert_eq!(status, 401);
    // HEAD: the GET's status and headers, no body.
    let mut head = TcpStream::connect(server.addr).unwrap();
    head.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    head.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    head.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after the head: {text:?}"
    );
    let (room0, room1) = rooms_on_cores("drain");
    let (mut a, _) = server.connect("a", &room0);
    // Raw clients on both cores that never answer the close: each core keeps
    // draining (lingering for their close) while the test looks at /healthz.
    let mut raw0 = raw_ws(&server, "r0", &room0);
    let mut raw1 = raw_ws(&server, "r1", &room1);
    let mut keep = TcpStream::connect(server.addr).unwrap();
    keep.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_http_response(&mut keep);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    server.sigterm();
    assert_eq!(read_close_code(&mut raw0), Some(1001));
    assert_eq!(read_close_code(&mut raw1), Some(1001));
    assert_eq!(a.expect_close(), Some(1001));
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let draining = read_http_response(&mut keep);
    assert!(draining.starts_with("HTTP/1.1 503"), "{draining}");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
}

/// A WebSocket opened by hand that never answers anything.
fn raw_ws(server: &Server, user: &str, room: &str) -> TcpStream {
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.set_read_timeout(Some(common::FRAME_TIMEOUT)).unwrap();
    let token = server.token(user);
    write!(
        raw,
        "GET /ws?token={token}&roomId={room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    // Read the 101 head and the room_joined frame.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("room_joined") {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    raw
}

/// Reads raw server frames until a close frame; returns its code.
fn read_close_code(raw: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // Server frames are unmasked; walk them from the start.
        let mut at = 0;
        while at + 2 <= all.len() {
            let opcode = all[at] & 0x0f;
            let mut len = (all[at + 1] & 0x7f) as usize;
            let mut head = 2;
            if len == 126 {
                if at + 4 > all.len() {
                    break;
                }
                len = u16::from_be_bytes([all[at + 2], all[at + 3]]) as usize;
                head = 4;
            }
            if at + head + len > all.len() {
                break;
            }
            if opcode == 0x8 {
                return (len >= 2)
                    .then(|| u16::from_be_bytes([all[at + head], all[at + head + 1]]));
            }
            at += head + len;
        }
        match raw.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP response (with Content-Length) from a keep-alive socket.
fn read_http_response(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// Start-up never stalls: four servers starting at once, 40 times over.
/// glommio 0.9.0 as published could park an executor with runnable tasks
/// when its preemption timer fired before the first task ran (a busy
/// machine): about one start in a hundred never printed its listening line.
/// vendor/README.md describes the fix.
#[test]
fn concurrent_start_ups_all_finish() {
    let starters: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..40 {
                    let server = Server::default_start();
                    let (status, _) = server.get("/healthz", None);
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for starter in starters {
        starter.join().expect("every server started and answered");
    }
}

/// Server starts with a first connection on each core, repeated. Each core
/// clones the cross-core mesh builder while starting; with glommio's peer
/// list behind a non-atomic `Rc`, those clones raced, the list could be freed
/// early, and a later decrement of its count corrupted the memory that had
/// reused it (the presence map), so the core crashed on its first
/// `room_joined`. The race is rare (0.7 to 7 starts in 100 on the test
/// machine, 2026-11-24, depending on load): this test only catches it
/// sometimes.
#[test]
fn every_fresh_server_serves_a_first_connection_on_each_core() {
    const STARTS: usize = 120;
    let (user_on_0, user_on_1) = rooms_on_cores("user");
    let (room_on_0, room_on_1) = rooms_on_cores("first");
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..1)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = Vec::new();
                    for _ in 0..STARTS {
                        // The settings of the test that first showed the
                        // crash: they fix a heap layout where the freed list
                        // is reused by the presence map.
                        let server = Server::start(&[
                            ("RATE_LIMIT_MAX_MESSAGES", "100000"),
                            ("HISTORY_PER_ROOM", "1500"),
                            ("ENABLE_MODERATION", "false"),
                        ]);
                        // `connect` asserts `room_joined` as the first frame.
                        let joined = std::panic::catch_unwind(|| {
                            let _a = server.connect(&user_on_0, &room_on_1);
                            let _b = server.connect(&user_on_1, &room_on_0);
                        });
                        if joined.is_err() {
                            failures.push(format!("server on {}", server.addr));
                        }
                    }
                    failures
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    assert!(failures.is_empty(), "no room_joined from: {failures:?}");
}

/// The README's start command: no CORES, no PIN_CORES. The core count is the
/// machine's; `/metrics` is scraped repeatedly while two users chat across
/// rooms owned by different cores, and SIGTERM ends the process.
#[test]
fn defaults_serve_metrics_cross_core_chat_and_exit_on_sigterm() {
    let mut server = Server::default_start();
    let (status, body) = server.get("/healthz", None);
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["cores"], common::cores(), "{body}");
    assert_eq!(
        server.metric("chat_cores"),
        Some(common::cores() as f64),
        "chat_cores"
    );
    let (room0, room1) = rooms_on_cores("defaults");
    let (mut a, _) = server.connect("alice", &room0);
    let (mut b, _) = server.connect("bob", &room1);
    a.send(json!({"type": "join_room", "roomId": room1}));
    assert_eq!(a.recv_type("room_joined")["roomId"], room1.as_str());
    b.send(json!({"type": "join_room", "roomId": room0}));
    assert_eq!(b.recv_type("room_joined")["roomId"], room0.as_str());
    for i in 0..20 {
        // A scrape between every message: each one asks every core.
        let (status, text) = server.get("/metrics", None);
        assert_eq!(status, 200);
        assert!(text.contains("chat_connections"), "{text}");
        let (from, room) = if i % 2 == 0 {
            (&mut a, &room1)
        } else {
            (&mut b, &room0)
        };
        from.send(json!({"type": "message", "roomId": room, "content": format!("m{i}")}));
    }
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    while seen_a.len() < 20 {
        seen_a.push(
            a.recv_type("message")["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    while seen_b.len() < 20 {
        seen_b.push(
            b.recv_type("message")["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Both are in both rooms: each sees every message, and per room in
    // the order sent.
    let per_room = |seen: &[String], parity: usize| -> Vec<String> {
        seen.iter()
            .filter(|c| c[1..].parse::<usize>().unwrap() % 2 == parity)
            .cloned()
            .collect()
    };
    let expect = |parity: usize| -> Vec<String> {
        (0..20)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("m{i}"))
            .collect()
    };
    for seen in [&seen_a, &seen_b] {
        assert_eq!(per_room(seen, 0), expect(0));
        assert_eq!(per_room(seen, 1), expect(1));
    }
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200);
    server.sigterm();
    assert_eq!(a.expect_close(), Some(1001));
    assert_eq!(b.expect_close(), Some(1001));
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
}

/// MAX_MESSAGE_LENGTH takes any value (contract section 5): 60,000
/// characters fit a 64 KiB frame and are delivered; a frame over 64 KiB
/// still closes the connection with 1009, whatever the setting.
#[test]
fn long_message_limits_are_accepted_and_the_frame_limit_still_holds() {
    let server = Server::start(&[("MAX_MESSAGE_LENGTH", "60000")]);
    let (mut a, _) = server.connect("long-a", "long");
    let (mut b, _) = server.connect("long-b", "long");
    let content = "x".repeat(60_000);
    a.send(json!({"type": "message", "content": content}));
    let got = b.recv_type("message");
    assert_eq!(got["content"].as_str().map(str::len), Some(60_000));
    assert_eq!(got["content"], content.as_str());
    assert_eq!(a.recv_type("message")["content"], content.as_str());
    // One character over the limit: refused, connection kept.
    a.send(json!({"type": "message", "content": "x".repeat(60_001)}));
    let e = a.recv_type("error");
    assert_eq!(e["code"], "message_too_long", "{e}");
    // Under the limit in characters, over 64 KiB as a frame: 1009.
    a.send(json!({"type": "message", "content": "é".repeat(40_000)}));
    assert_eq!(a.expect_close(), Some(1009));
    // A limit far past what any frame can hold starts too.
    let big = Server::start(&[("MAX_MESSAGE_LENGTH", "10000000")]);
    let (status, _) = big.get("/healthz", None);
    assert_eq!(status, 200);
}
