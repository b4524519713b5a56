//! The features of the contract over real sockets: history over HTTP and
//! WebSocket, recovery after a reconnect, idempotent sends, presence queries,
//! rate limits, moderation (with its audit log) and metrics.

mod common;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{rooms_on_cores, Client, Server, FRAME_TIMEOUT};
use serde_json::{json, Value};

// ---- helpers -------------------------------------------------------------

/// A `message` frame for the connection's initial room.
fn say(content: &str) -> Value {
    json!({"type": "message", "content": content})
}

/// A `message` frame for `room`.
fn say_in(room: &str, content: &str) -> Value {
    json!({"type": "message", "roomId": room, "content": content})
}

/// The `messageId` of a message frame.
fn id_of(m: &Value) -> String {
    m["messageId"]
        .as_str()
        .unwrap_or_else(|| panic!("no messageId in {m}"))
        .to_string()
}

/// The contents of message frames, in order.
fn contents(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m["content"]
                .as_str()
                .unwrap_or_else(|| panic!("no content in {m}"))
                .to_string()
        })
        .collect()
}

/// Asserts that `frame` has every field of `want` with that value (extra
/// fields are allowed by the contract).
fn assert_fields(frame: &Value, want: Value) {
    for (key, value) in want.as_object().expect("an object") {
        assert_eq!(&frame[key], value, "field {key} of {frame}");
    }
}

/// The next frame whose type is one of `kinds`; presence and typing frames
/// are skipped, any other type fails the test.
fn next_of(client: &mut Client, kinds: &[&str]) -> Value {
    loop {
        let v = client.recv();
        if kinds.iter().any(|k| v["type"] == *k) {
            return v;
        }
        assert!(
            v["type"] == "presence" || v["type"] == "typing_indicator",
            "unexpected frame {v} while waiting for one of {kinds:?}"
        );
    }
}

/// Every `message`, `ack` and `error` frame up to and including the message
/// whose content is `content` (presence and typing frames are skipped).
fn frames_until(client: &mut Client, content: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let v = next_of(client, &["message", "ack", "error"]);
        let done = v["type"] == "message" && v["content"] == content;
        frames.push(v);
        if done {
            return frames;
        }
    }
}

/// The `message` frames up to and including the one whose content is
/// `content`; fails on any `ack` or `error` on the way.
fn messages_until(client: &mut Client, content: &str) -> Vec<Value> {
    let frames = frames_until(client, content);
    for f in &frames {
        assert_eq!(f["type"], "message", "unexpected {f}");
    }
    frames
}

/// The frames of one send with a `clientMsgId`: its broadcast copy and its
/// ack, in whichever order they come.
fn message_and_ack(client: &mut Client) -> (Value, Value) {
    let a = next_of(client, &["message", "ack", "error"]);
    let b = next_of(client, &["message", "ack", "error"]);
    match (a["type"].as_str(), b["type"].as_str()) {
        (Some("message"), Some("ack")) => (a, b),
        (Some("ack"), Some("message")) => (b, a),
        _ => panic!("expected a message and an ack, got {a} and {b}"),
    }
}

/// `sender` sends `m{i}` for every i of `range` to its initial room; returns
/// the copies `reader` received (asserted complete and in order).
fn send_and_collect(sender: &mut Client, reader: &mut Client, range: Range<usize>) -> Vec<Value> {
    for i in range.clone() {
        sender.send(say(&format!("m{i}")));
    }
    let got: Vec<Value> = range.clone().map(|_| reader.recv_type("message")).collect();
    let want: Vec<String> = range.clone().map(|i| format!("m{i}")).collect();
    assert_eq!(contents(&got), want);
    // Drain the sender's own copies so its queue stays short.
    for _ in range {
        sender.recv_type("message");
    }
    got
}

/// GET with an optional bearer token; the body parsed as JSON.
fn get_json(server: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = server.get(path, token);
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: {status} body is not JSON ({e}): {body:?}"));
    (status, value)
}

/// A room's stored messages over HTTP (`query` starts with `?` or is empty);
/// asserts 200 and the roomId.
fn http_history(server: &Server, token: &str, room: &str, query: &str) -> Vec<Value> {
    let path = format!("/api/chats/rooms/{room}/messages{query}");
    let (status, body) = get_json(server, &path, Some(token));
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["roomId"], room, "{body}");
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no messages array in {body}"))
        .clone()
}

/// The users of `GET /api/chats/rooms/{room}/presence`, sorted.
fn online_in(server: &Server, token: &str, room: &str) -> Vec<String> {
    let path = format!("/api/chats/rooms/{room}/presence");
    let (status, body) = get_json(server, &path, Some(token));
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["roomId"], room, "{body}");
    let mut users: Vec<String> = body["online"]
        .as_array()
        .unwrap_or_else(|| panic!("no online array in {body}"))
        .iter()
        .map(|u| u.as_str().expect("user ids are strings").to_string())
        .collect();
    users.sort();
    users
}

/// `status` of `GET /api/chats/users/{user}/status`.
fn status_of(server: &Server, token: &str, user: &str) -> String {
    let path = format!("/api/chats/users/{user}/status");
    let (status, body) = get_json(server, &path, Some(token));
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["userId"], user, "{body}");
    body["status"].as_str().expect("status string").to_string()
}

/// Polls `read` until it returns `want` or FRAME_TIMEOUT passes; returns the
/// last value (for state another core updates after the event a test saw).
fn eventually<T: PartialEq>(want: &T, mut read: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        let value = read();
        if &value == want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a 400/401 answer with a JSON `{"error": "<non-empty>"}` body.
fn assert_json_error(server: &Server, path: &str, token: Option<&str>, status: u16) {
    let (got, body) = get_json(server, path, token);
    assert_eq!(got, status, "{path}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{path}: {body}"
    );
}

/// A token signed with a secret the server does not know.
fn forged_token(user: &str) -> String {
    chatd::auth::mint_hs256(b"not-the-server-secret", user, None, Some(3600))
}

// ---- 1. history ----------------------------------------------------------

#[test]
fn http_history_pages_oldest_first_in_the_message_shape() {
    let server = Server::start(&[("RATE_LIMIT_MAX_MESSAGES", "1000")]);
    let (room, _) = rooms_on_cores("hist");
    let (mut sender, _) = server.connect("sam", &room);
    let (mut reader, _) = server.connect("rita", &room);
    let token = server.token("rita");

    let mut all = send_and_collect(&mut sender, &mut reader, 0..60);
    let ids: Vec<String> = all.iter().map(id_of).collect();
    let page = |query: &str| http_history(&server, &token, &room, query);

    // Default limit 50: the newest 50, oldest first, each exactly the frame
    // the receivers got (type, ids, user, room, content, timestamp).
    assert_eq!(page(""), all[10..60]);
    assert_eq!(page("?limit=3"), all[57..60]);
    // Exclusive bounds, exact ids.
    assert_eq!(page(&format!("?limit=5&before={}", ids[30])), all[25..30]);
    assert_eq!(page(&format!("?limit=5&after={}", ids[30])), all[31..36]);
    assert_eq!(
        page(&format!("?after={}&before={}", ids[10], ids[14])),
        all[11..14]
    );
    assert_eq!(page(&format!("?before={}", ids[59])), all[9..59]);
    assert_eq!(page(&format!("?before={}", ids[0])), Vec::<Value>::new());
    assert_eq!(page(&format!("?after={}", ids[59])), Vec::<Value>::new());

    // Past 200 stored: limit=1000 is clamped to 200.
    all.extend(send_and_collect(&mut sender, &mut reader, 60..210));
    let ids: Vec<String> = all.iter().map(id_of).collect();
    let page = |query: &str| http_history(&server, &token, &room, query);
    assert_eq!(page("?limit=1000"), all[10..210]);
    assert_eq!(page("?limit=200"), all[10..210]);
    assert_eq!(page(""), all[160..210]);
    assert_eq!(page(&format!("?after={}&limit=1000", ids[0])), all[1..201]);
    // The same clamp on the WebSocket.
    reader.send(json!({"type": "history", "roomId": room, "limit": 1000}));
    assert_eq!(
        reader.recv_type("history")["messages"],
        Value::Array(all[10..210].to_vec())
    );

    // A room nobody wrote to: an empty page.
    assert_eq!(page_of(&server, &token, "quiet-room"), Vec::<Value>::new());

    // Bad parameters: 400 with a JSON error.
    let base = format!("/api/chats/rooms/{room}/messages");
    for bad in [
        "?limit=0".to_string(),
        "?limit=x".to_string(),
        "?limit=-3".to_string(),
        "?limit=".to_string(),
        "?before=nope".to_string(),
        "?after=nope".to_string(),
        format!("?before={}0", ids[0]),
    ] {
        assert_json_error(&server, &format!("{base}{bad}"), Some(&token), 400);
    }
    assert_json_error(
        &server,
        "/api/chats/rooms/bad%20room/messages",
        Some(&token),
        400,
    );
    // No token, or a forged one: 401 with a JSON error.
    assert_json_error(&server, &base, None, 401);
    assert_json_error(&server, &base, Some(&forged_token("rita")), 401);
}

/// A room's full history page (default limit).
fn page_of(server: &Server, token: &str, room: &str) -> Vec<Value> {
    http_history(server, token, room, "")
}

#[test]
fn history_frame_equals_the_http_answer_on_both_cores() {
    let server = Server::start(&[("RATE_LIMIT_MAX_MESSAGES", "1000")]);
    let (room0, room1) = rooms_on_cores("wshist");
    let token = server.token("auditor");
    // One asker on each core (a connection runs on its initial room's core),
    // each a member of both rooms.
    let (mut ask0, _) = server.connect("asker0", &room0);
    let (mut ask1, _) = server.connect("asker1", &room1);
    for (asker, other) in [(&mut ask0, &room1), (&mut ask1, &room0)] {
        asker.send(json!({"type": "join_room", "roomId": other}));
        assert_eq!(asker.recv_type("room_joined")["roomId"], other.as_str());
    }
    for room in [&room0, &room1] {
        let (mut poster, _) = server.connect("poster", room);
        for i in 0..12 {
            poster.send(say(&format!("{room} #{i}")));
        }
        let live: Vec<Value> = (0..12).map(|_| ask0.recv_type("message")).collect();
        let want: Vec<String> = (0..12).map(|i| format!("{room} #{i}")).collect();
        assert_eq!(contents(&live), want);
        let ids: Vec<String> = live.iter().map(id_of).collect();
        let cases = [
            (json!({}), String::new(), &live[..]),
            (
                json!({"limit": 5, "before": ids[8]}),
                format!("?limit=5&before={}", ids[8]),
                &live[3..8],
            ),
            (
                json!({"after": ids[2], "limit": 3}),
                format!("?after={}&limit=3", ids[2]),
                &live[3..6],
            ),
            (
                json!({"after": ids[4], "before": ids[7]}),
                format!("?after={}&before={}", ids[4], ids[7]),
                &live[5..7],
            ),
            (json!({"limit": 1000}), "?limit=1000".to_string(), &live[..]),
        ];
        for (fields, query, expected) in cases {
            let http = http_history(&server, &token, room, &query);
            assert_eq!(http, expected, "{query}");
            for asker in [&mut ask0, &mut ask1] {
                let mut frame = json!({"type": "history", "roomId": room});
                for (k, v) in fields.as_object().unwrap() {
                    frame[k] = v.clone();
                }
                asker.send(frame);
                let answer = asker.recv_type("history");
                assert_fields(&answer, json!({"type": "history", "roomId": room}));
                assert_eq!(answer["messages"], Value::Array(http.clone()), "{fields}");
            }
        }
    }
}

#[test]
fn bad_history_and_since_parameters_are_refused() {
    let server = Server::default_start();
    let (room, _) = rooms_on_cores("badparams");
    let (mut c, _) = server.connect("picky", &room);
    for frame in [
        json!({"type": "history", "roomId": room, "limit": 0}),
        json!({"type": "history", "roomId": room, "limit": "x"}),
        json!({"type": "history", "roomId": room, "before": "nope"}),
        json!({"type": "history", "roomId": room, "after": "nope"}),
        json!({"type": "history"}),
        json!({"type": "join_room", "roomId": "elsewhere", "since": "nope"}),
    ] {
        c.send(frame.clone());
        let e = next_of(&mut c, &["error", "history", "room_joined"]);
        assert_fields(&e, json!({"type": "error", "code": "invalid_message"}));
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{frame}: {e}"
        );
    }
    c.send(json!({"type": "ping"}));
    assert_eq!(c.recv_type("pong")["type"], "pong");
    // A bad `since` on the upgrade is refused before it.
    let url = format!(
        "ws://{}/ws?token={}&roomId={room}&since=nope",
        server.addr,
        server.token("picky")
    );
    let (status, body) = Client::open(&url).err().expect("refused");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
}

#[test]
fn history_keeps_only_the_newest_per_room() {
    let server = Server::start(&[("HISTORY_PER_ROOM", "5")]);
    let (room0, room1) = rooms_on_cores("bounded");
    let token = server.token("viewer");
    let (mut sender, _) = server.connect("sender", &room0);
    let (mut reader, _) = server.connect("reader", &room0);
    let all = send_and_collect(&mut sender, &mut reader, 0..8);
    assert_eq!(http_history(&server, &token, &room0, ""), all[3..8]);
    assert_eq!(
        http_history(&server, &token, &room0, "?limit=200"),
        all[3..8]
    );
    // The evicted ones are gone from every page.
    let before = format!("?before={}", id_of(&all[4]));
    assert_eq!(http_history(&server, &token, &room0, &before), all[3..4]);
    // The bound is per room: another room keeps its own.
    let (mut other, _) = server.connect("sender", &room1);
    other.send(say("a"));
    other.send(say("b"));
    let mine = [other.recv_type("message"), other.recv_type("message")];
    assert_eq!(http_history(&server, &token, &room1, ""), mine);
    reader.send(json!({"type": "history", "roomId": room0}));
    assert_eq!(
        reader.recv_type("history")["messages"],
        Value::Array(all[3..8].to_vec())
    );
}

// ---- 2. recovery ---------------------------------------------------------

/// How the reader comes back after its connection dropped.
#[derive(Debug, Clone, Copy)]
enum Rejoin {
    /// Initial room on the other core, then `join_room` with `since`.
    JoinRoom,
    /// The busy room as initial room, with `since` in the `/ws` query.
    Query,
}

/// A publisher sends numbered messages without pause; the reader drops its
/// connection after 100 of them, comes back with `since` = the last id it
/// saw, and must end up with every message exactly once, in order.
fn recover_while_busy(rejoin: Rejoin) {
    /// Messages the reader sees before its connection drops.
    const BEFORE: usize = 100;
    /// Messages the room moves on by while the reader is away (at least).
    const AWAY: usize = 20;
    /// The publisher sends at least this many in all...
    const MIN_TOTAL: usize = 400;
    /// ...and at least this many after the reader is back.
    const AFTER_REJOIN: usize = 50;
    /// The publisher never runs further ahead of the reader than this, so
    /// the gap stays within the contract's 1,000-message replay bound.
    const MAX_AHEAD: usize = 800;

    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "100000"),
        ("ENABLE_MODERATION", "false"),
    ]);
    let (room, elsewhere) = rooms_on_cores("recover");
    let (mut publisher, _) = server.connect("publisher", &room);
    let (mut reader, _) = server.connect("reader", &room);
    // A member on the other core keeps copies flowing there while the reader
    // rejoins through it.
    let (mut bystander, _) = server.connect("bystander", &elsewhere);
    bystander.send(json!({"type": "join_room", "roomId": room}));
    bystander.recv_type("room_joined");

    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let rejoined = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicUsize::new(usize::MAX));
    let thread = {
        let (accepted, seen, rejoined, last) = (
            accepted.clone(),
            seen.clone(),
            rejoined.clone(),
            last.clone(),
        );
        std::thread::spawn(move || {
            let mut after = 0;
            for n in 0.. {
                let deadline = Instant::now() + FRAME_TIMEOUT;
                while n >= seen.load(SeqCst) + MAX_AHEAD {
                    assert!(Instant::now() < deadline, "the reader stopped at {n}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                if rejoined.load(SeqCst) {
                    after += 1;
                }
                let final_one = n + 1 >= MIN_TOTAL && after >= AFTER_REJOIN;
                if final_one {
                    last.store(n, SeqCst);
                }
                publisher.send(say(&n.to_string()));
                // Its own copy paces the stream (one message in flight).
                assert_eq!(publisher.recv_type("message")["content"], n.to_string());
                accepted.store(n + 1, SeqCst);
                if final_one {
                    return n + 1;
                }
            }
            unreachable!()
        })
    };

    let mut numbers: Vec<usize> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut record = |m: &Value| {
        let n: usize = m["content"].as_str().unwrap().parse().unwrap();
        numbers.push(n);
        ids.push(id_of(m));
        seen.fetch_max(n + 1, SeqCst);
        n
    };
    let mut since = String::new();
    for _ in 0..BEFORE {
        let m = reader.recv_type("message");
        record(&m);
        since = id_of(&m);
    }
    // The connection drops mid-stream, without a close handshake.
    drop(reader);
    // The room moves on while the reader is away.
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while accepted.load(SeqCst) < BEFORE + AWAY {
        assert!(Instant::now() < deadline, "the publisher stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut reader = match rejoin {
        Rejoin::JoinRoom => {
            let (mut c, _) = server.connect("reader", &elsewhere);
            c.send(json!({"type": "join_room", "roomId": room, "since": since}));
            let joined = next_of(&mut c, &["room_joined", "message", "error"]);
            assert_fields(
                &joined,
                json!({"type": "room_joined", "roomId": room, "memberCount": 3}),
            );
            c
        }
        Rejoin::Query => {
            let (c, joined) = server.connect_with("reader", &room, &format!("since={since}"));
            assert_eq!(joined["memberCount"], 3);
            c
        }
    };
    rejoined.store(true, SeqCst);
    loop {
        let n = record(&reader.recv_type("message"));
        if n == last.load(SeqCst) {
            break;
        }
    }
    let total = thread.join().expect("publisher");
    assert!(total >= MIN_TOTAL);
    assert_eq!(
        numbers,
        (0..total).collect::<Vec<_>>(),
        "every message exactly once and in order across the reconnect ({rejoin:?})"
    );
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "ids strictly increase");
    // The bystander got them all too, in the same order.
    let theirs: Vec<String> = (0..total)
        .map(|_| id_of(&bystander.recv_type("message")))
        .collect();
    assert_eq!(theirs, ids);
}

#[test]
fn replay_is_at_most_the_newest_1000_then_live() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "100000"),
        ("HISTORY_PER_ROOM", "1500"),
        ("ENABLE_MODERATION", "false"),
    ]);
    let (room, elsewhere) = rooms_on_cores("cap");
    let (mut sender, _) = server.connect("sender", &room);
    let (mut first, _) = server.connect("early", &room);
    let all = send_and_collect(&mut sender, &mut first, 0..1101);
    // Everything after message 0: 1,100 stored, at most 1,000 replayed, and
    // the newest ones, so that live messages follow without a gap.
    let (mut late, _) = server.connect("late", &elsewhere);
    late.send(json!({"type": "join_room", "roomId": room, "since": id_of(&all[0])}));
    let joined = next_of(&mut late, &["room_joined", "message", "error"]);
    assert_fields(&joined, json!({"type": "room_joined", "roomId": room}));
    sender.send(say("live"));
    let got = messages_until(&mut late, "live");
    assert_eq!(got.len(), 1001);
    assert_eq!(got[..1000], all[101..1101]);
    assert_eq!(got[1000]["content"], "live");
}

#[test]
fn join_room_since_recovers_a_busy_room_without_gap_or_duplicate() {
    recover_while_busy(Rejoin::JoinRoom);
}

#[test]
fn ws_query_since_recovers_the_initial_room_without_gap_or_duplicate() {
    recover_while_busy(Rejoin::Query);
}

// ---- 3. idempotent sends -------------------------------------------------

#[test]
fn client_msg_id_makes_sends_idempotent() {
    let server = Server::default_start();
    let (room, other) = rooms_on_cores("idem");
    let token = server.token("auditor");
    let (mut alice, _) = server.connect("alice", &room);
    let (mut bob, _) = server.connect("bob", &room);
    let (mut carol, _) = server.connect("carol", &other);
    let send = |content: &str, room: &str, cmid: &str| json!({"type": "message", "roomId": room, "content": content, "clientMsgId": cmid});

    alice.send(send("hello once", &room, "c-1"));
    let (original, ack) = message_and_ack(&mut alice);
    let original_id = id_of(&original);
    assert_eq!(original["content"], "hello once");
    assert_fields(
        &ack,
        json!({"type": "ack", "clientMsgId": "c-1", "messageId": original_id, "roomId": room}),
    );
    assert_eq!(bob.recv_type("message"), original);

    // A retry (even with other content) is acked with the original id.
    let dup_ack =
        json!({"type": "ack", "clientMsgId": "c-1", "messageId": original_id, "roomId": room});
    alice.send(send("hello again", &room, "c-1"));
    assert_fields(
        &next_of(&mut alice, &["message", "ack", "error"]),
        dup_ack.clone(),
    );
    // So is one from the user's second connection, on the other core...
    let (mut alice2, _) = server.connect("alice", &other);
    alice2.send(json!({"type": "join_room", "roomId": room}));
    alice2.recv_type("room_joined");
    alice2.send(send("hello from my phone", &room, "c-1"));
    assert_fields(
        &next_of(&mut alice2, &["message", "ack", "error"]),
        dup_ack.clone(),
    );
    // ...even aimed at another room: the key is (user, clientMsgId).
    alice2.send(send("hello other room", &other, "c-1"));
    assert_fields(&next_of(&mut alice2, &["message", "ack", "error"]), dup_ack);

    // Nothing else was broadcast: the next message everyone sees is a sentinel.
    bob.send(say("sentinel"));
    assert_eq!(
        contents(&messages_until(&mut bob, "sentinel")),
        ["sentinel"]
    );
    assert_eq!(
        contents(&messages_until(&mut alice, "sentinel")),
        ["sentinel"]
    );
    assert_eq!(
        contents(&messages_until(&mut alice2, "sentinel")),
        ["sentinel"]
    );
    carol.send(say("sentinel-other"));
    let seen = messages_until(&mut carol, "sentinel-other");
    assert_eq!(contents(&seen), ["sentinel-other"]);
    assert_eq!(
        contents(&messages_until(&mut alice2, "sentinel-other")),
        ["sentinel-other"]
    );
    // History holds the original once.
    let stored = http_history(&server, &token, &room, "");
    assert_eq!(contents(&stored), ["hello once", "sentinel"]);
    assert_eq!(stored[0], original);
    assert_eq!(http_history(&server, &token, &other, ""), seen);

    // Two copies in flight at once from both connections: one broadcast,
    // both acked with its id.
    let twice = send("twice at once", &room, "c-2");
    alice.send(twice.clone());
    alice2.send(twice);
    // Each connection is acked (the sentinel goes out only after both).
    let mut frames: Vec<Vec<Value>> = Vec::new();
    for c in [&mut alice, &mut alice2] {
        let mut mine = Vec::new();
        while !mine.iter().any(|f: &Value| f["type"] == "ack") {
            mine.push(next_of(c, &["message", "ack", "error"]));
        }
        frames.push(mine);
    }
    bob.send(say("sentinel-2"));
    let seen = messages_until(&mut bob, "sentinel-2");
    assert_eq!(contents(&seen), ["twice at once", "sentinel-2"]);
    let twice_id = id_of(&seen[0]);
    for (c, mut frames) in [&mut alice, &mut alice2].into_iter().zip(frames) {
        frames.extend(frames_until(c, "sentinel-2"));
        let messages: Vec<Value> = frames
            .iter()
            .filter(|f| f["type"] == "message")
            .cloned()
            .collect();
        assert_eq!(contents(&messages), ["twice at once", "sentinel-2"]);
        assert_eq!(messages[0], seen[0]);
        let acks: Vec<&Value> = frames.iter().filter(|f| f["type"] == "ack").collect();
        assert_eq!(acks.len(), 1, "{frames:?}");
        assert_fields(
            acks[0],
            json!({"clientMsgId": "c-2", "messageId": twice_id, "roomId": room}),
        );
    }

    // Another user's clientMsgId "c-1" is a different key.
    let (mut dave, _) = server.connect("dave", &room);
    dave.send(send("dave's own", &room, "c-1"));
    let (mine, ack) = message_and_ack(&mut dave);
    assert_eq!(mine["content"], "dave's own");
    assert_ne!(id_of(&mine), original_id);
    assert_fields(
        &ack,
        json!({"type": "ack", "clientMsgId": "c-1", "messageId": id_of(&mine), "roomId": room}),
    );
    assert_eq!(bob.recv_type("message"), mine);

    assert_eq!(
        server.wait_metric("chat_messages_received_total{outcome=\"duplicate\"}", 4.0),
        Some(4.0)
    );
    assert_eq!(
        server.wait_metric("chat_messages_received_total{outcome=\"accepted\"}", 6.0),
        Some(6.0)
    );
}

// ---- 4. presence queries -------------------------------------------------

#[test]
fn presence_and_status_queries_follow_connections() {
    let server = Server::default_start();
    let (room0, room1) = rooms_on_cores("who");
    let token = server.token("observer");
    assert_eq!(online_in(&server, &token, &room0), Vec::<String>::new());

    // ann on core 0; ben on core 1 joins room0; cat on both cores.
    let (mut ann, _) = server.connect("ann", &room0);
    let (mut ben, _) = server.connect("ben", &room1);
    ben.send(json!({"type": "join_room", "roomId": room0}));
    ben.recv_type("room_joined");
    let (cat0, _) = server.connect("cat", &room0);
    let (cat1, _) = server.connect("cat", &room1);
    assert_eq!(online_in(&server, &token, &room0), ["ann", "ben", "cat"]);
    assert_eq!(online_in(&server, &token, &room1), ["ben", "cat"]);
    for user in ["ann", "ben", "cat"] {
        assert_eq!(
            eventually(&"online".to_string(), || status_of(&server, &token, user)),
            "online",
            "{user}"
        );
    }
    assert_eq!(status_of(&server, &token, "nobody"), "offline");

    // ben leaves room0: gone from it, still in room1.
    ben.send(json!({"type": "leave_room", "roomId": room0}));
    ben.recv_type("room_left");
    let want = vec!["ann".to_string(), "cat".to_string()];
    assert_eq!(
        eventually(&want, || online_in(&server, &token, &room0)),
        want
    );
    assert_eq!(online_in(&server, &token, &room1), ["ben", "cat"]);

    // cat closes one connection: still online, still in room0 (via the other,
    // whose initial room is room1 and which joins room0 now).
    let mut cat1 = cat1;
    cat1.send(json!({"type": "join_room", "roomId": room0}));
    cat1.recv_type("room_joined");
    cat0.close();
    assert_eq!(server.wait_metric("chat_connections", 3.0), Some(3.0));
    assert_eq!(online_in(&server, &token, &room0), ["ann", "cat"]);
    assert_eq!(status_of(&server, &token, "cat"), "online");
    // The last one closes: offline, and gone from both rooms.
    cat1.close();
    let offline = loop {
        let p = ann.recv_type("presence");
        if p["userId"] == "cat" && p["status"] == "offline" {
            break p;
        }
    };
    assert_eq!(offline["roomId"], room0.as_str());
    assert_eq!(status_of(&server, &token, "cat"), "offline");
    assert_eq!(online_in(&server, &token, &room0), ["ann"]);
    let want = vec!["ben".to_string()];
    assert_eq!(
        eventually(&want, || online_in(&server, &token, &room1)),
        want
    );

    // Both queries want a valid token.
    for path in [
        format!("/api/chats/rooms/{room0}/presence"),
        "/api/chats/users/ann/status".to_string(),
    ] {
        assert_json_error(&server, &path, None, 401);
        assert_json_error(&server, &path, Some(&forged_token("ann")), 401);
        assert_json_error(&server, &path, Some("not-a-jwt"), 401);
    }
    assert_json_error(
        &server,
        "/api/chats/rooms/no%20such%20room/presence",
        Some(&token),
        400,
    );
}

// ---- 5. rate limits ------------------------------------------------------

#[test]
fn the_sixth_message_in_the_window_is_refused_and_the_connection_kept() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "5"),
        ("RATE_LIMIT_WINDOW_MS", "600000"),
    ]);
    let (room, _) = rooms_on_cores("limit");
    let (mut chatty, _) = server.connect("chatty", &room);
    let (mut quiet, _) = server.connect("quiet", &room);
    for i in 1..=6 {
        chatty.send(say(&format!("m{i}")));
    }
    let frames: Vec<Value> = (0..6)
        .map(|_| next_of(&mut chatty, &["message", "error"]))
        .collect();
    let (errors, messages): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    assert_eq!(contents(&messages), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(errors.len(), 1);
    let error = &errors[0];
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let retry = error["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!(retry > 0 && retry <= 600_000, "{retry}");

    // The sixth was not broadcast.
    quiet.send(say("sentinel"));
    assert_eq!(
        contents(&messages_until(&mut quiet, "sentinel")),
        ["m1", "m2", "m3", "m4", "m5", "sentinel"]
    );
    // The connection is open, and still limited.
    chatty.send(json!({"type": "ping"}));
    assert_eq!(chatty.recv_type("pong")["type"], "pong");
    chatty.send(say("m7"));
    let again = next_of(&mut chatty, &["message", "error"]);
    if again["type"] == "message" {
        assert_eq!(
            again["content"], "sentinel",
            "only the sentinel may come first"
        );
        let again = next_of(&mut chatty, &["message", "error"]);
        assert_eq!(again["code"], "rate_limited", "{again}");
    } else {
        assert_eq!(again["code"], "rate_limited", "{again}");
    }
    assert_eq!(
        server.wait_metric("chat_errors_total{code=\"rate_limited\"}", 2.0),
        Some(2.0)
    );
    assert_eq!(
        server.wait_metric(
            "chat_messages_received_total{outcome=\"rate_limited\"}",
            2.0
        ),
        Some(2.0)
    );
}

#[test]
fn one_budget_for_a_users_connections_on_both_cores() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "5"),
        ("RATE_LIMIT_WINDOW_MS", "600000"),
    ]);
    let (room0, room1) = rooms_on_cores("budget");
    let (mut on0, _) = server.connect("duo", &room0);
    let (mut on1, _) = server.connect("duo", &room1);
    for i in 1..=3 {
        on0.send(say(&format!("a{i}")));
    }
    let first: Vec<Value> = (0..3)
        .map(|_| next_of(&mut on0, &["message", "error"]))
        .collect();
    assert_eq!(contents(&first), ["a1", "a2", "a3"]);
    for i in 1..=3 {
        on1.send(say(&format!("b{i}")));
    }
    let frames: Vec<Value> = (0..3)
        .map(|_| next_of(&mut on1, &["message", "error"]))
        .collect();
    let (errors, messages): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    assert_eq!(contents(&messages), ["b1", "b2"]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "rate_limited", "{}", errors[0]);
    assert_eq!(
        server.wait_metric("chat_errors_total{code=\"rate_limited\"}", 1.0),
        Some(1.0)
    );
    assert_eq!(
        server.wait_metric("chat_messages_received_total{outcome=\"accepted\"}", 5.0),
        Some(5.0)
    );
}

#[test]
fn after_retry_after_the_user_may_send_again() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "2"),
        ("RATE_LIMIT_WINDOW_MS", "1000"),
    ]);
    let (room, _) = rooms_on_cores("retry");
    let (mut c, _) = server.connect("retrier", &room);
    c.send(say("m1"));
    c.send(say("m2"));
    // The refused one carries a clientMsgId: a refusal must not be remembered
    // as a send.
    let third = json!({"type": "message", "content": "m3", "clientMsgId": "r-3"});
    c.send(third.clone());
    let frames: Vec<Value> = (0..3)
        .map(|_| next_of(&mut c, &["message", "error", "ack"]))
        .collect();
    let (errors, messages): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    assert_eq!(contents(&messages), ["m1", "m2"]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "rate_limited");
    let retry = errors[0]["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!(retry > 0 && retry <= 1000, "{retry}");
    // Waiting the stated time is enough; the retry is a new send.
    std::thread::sleep(Duration::from_millis(retry));
    c.send(third);
    let (message, ack) = message_and_ack(&mut c);
    assert_eq!(message["content"], "m3");
    assert_fields(
        &ack,
        json!({"type": "ack", "clientMsgId": "r-3", "messageId": id_of(&message), "roomId": room}),
    );
}

#[test]
fn typing_floods_are_bounded_and_not_counted_as_messages() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "5"),
        ("RATE_LIMIT_WINDOW_MS", "600000"),
    ]);
    let (room, _) = rooms_on_cores("typing");
    let (mut typist, _) = server.connect("typist", &room);
    let (mut watcher, _) = server.connect("watcher", &room);
    for i in 0..100 {
        typist.send(json!({"type": "typing", "roomId": room, "isTyping": i % 2 == 0}));
    }
    typist.send(say("done typing"));
    let mut indicators = 0;
    loop {
        let v = watcher.recv();
        match v["type"].as_str() {
            Some("typing_indicator") => {
                assert_fields(&v, json!({"userId": "typist", "roomId": room}));
                indicators += 1;
            }
            Some("message") => {
                assert_eq!(v["content"], "done typing");
                break;
            }
            Some("presence") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        (1..50).contains(&indicators),
        "{indicators} of 100 typing frames relayed"
    );
    // 100 typing frames did not use up the 5-message budget.
    assert_eq!(
        server.metric("chat_errors_total{code=\"rate_limited\"}"),
        Some(0.0)
    );
}

// ---- 6. moderation -------------------------------------------------------

/// Audit records from a JSON log (`target == "audit"`), waiting until `n`
/// have arrived.
fn audit_records(log: &Receiver<String>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut records = Vec::new();
    while records.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {} audit records: {records:?}", records.len()));
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["target"] == "audit" {
            records.push(v["fields"].clone());
        }
    }
    records
}

#[test]
fn block_list_masks_whole_words_refuses_only_blocked_and_audits() {
    let (server, log) = Server::start_with_log(&[
        ("MODERATION_BLOCKLIST", "darn, HECK,Scheiße"),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "warn,audit=info"),
    ]);
    let (room, _) = rooms_on_cores("mod");
    let token = server.token("auditor");
    let (mut sender, _) = server.connect("potty", &room);
    let (mut reader, _) = server.connect("prim", &room);
    sender.send(say("Darn it, HECK!"));
    sender.send(say("darning socks, hecklers"));
    sender.send(say("Das ist SCHEIßE, oder?"));
    sender.send(say("darn HECK"));
    sender.send(say("Darn!! heck?!"));
    let frames: Vec<Value> = (0..5)
        .map(|_| next_of(&mut sender, &["message", "error"]))
        .collect();
    let (errors, own): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    let masked = [
        "**** it, ****!",
        "darning socks, hecklers",
        "Das ist *******, oder?",
    ];
    assert_eq!(contents(&own), masked);
    assert_eq!(errors.len(), 2);
    for e in &errors {
        assert_eq!(e["code"], "message_blocked", "{e}");
    }
    reader.send(say("sentinel"));
    let seen = messages_until(&mut reader, "sentinel");
    assert_eq!(seen[..3], own[..], "receivers get the masked copy");
    assert_eq!(contents(&seen[3..]), ["sentinel"]);
    // The stored copy is the masked one.
    assert_eq!(http_history(&server, &token, &room, ""), seen);

    // Audit: the two masked and the two blocked messages, in order.
    let records = audit_records(&log, 4);
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["masked", "masked", "blocked", "blocked"]);
    assert_eq!(records[0]["message_id"], id_of(&own[0]).as_str());
    assert_eq!(records[1]["message_id"], id_of(&own[2]).as_str());
    for r in &records {
        assert_eq!(r["user_id"], "potty", "{r}");
        assert_eq!(r["room_id"], room.as_str(), "{r}");
        assert!(r["at_ms"].as_u64().is_some_and(|t| t > 0), "{r}");
    }
    for r in &records[2..] {
        assert!(r["reason"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
        let id = r["message_id"].as_str().unwrap();
        assert_eq!(id.len(), 26, "{r}");
        assert!(seen.iter().all(|m| id_of(m) != id), "{r}");
    }
    assert_eq!(
        server.wait_metric("chat_messages_received_total{outcome=\"blocked\"}", 2.0),
        Some(2.0)
    );
    assert_eq!(
        server.wait_metric("chat_errors_total{code=\"message_blocked\"}", 2.0),
        Some(2.0)
    );
    assert_eq!(
        server.wait_metric("chat_audit_records_total{action=\"masked\"}", 2.0),
        Some(2.0)
    );
    assert_eq!(
        server.wait_metric("chat_audit_records_total{action=\"blocked\"}", 2.0),
        Some(2.0)
    );
}

#[test]
fn moderation_patterns_refuse_matching_messages() {
    let server = Server::start(&[("MODERATION_PATTERNS", r"buy\s+now;;https?://spam\.example")]);
    let (room, _) = rooms_on_cores("spam");
    let token = server.token("auditor");
    // The sender's own state (dedupe) lives on the room's core too, so the
    // refusal is settled before the sender hears of it.
    let seller = user_owned_by("seller", chatd::shard::shard_for(&room, common::cores()));
    let (mut sender, _) = server.connect(&seller, &room);
    let (mut reader, _) = server.connect("buyer", &room);
    sender.send(say("Please BUY   now!"));
    sender.send(say("see HTTP://SPAM.example/deal"));
    sender.send(say("I will buy it later"));
    let frames: Vec<Value> = (0..3)
        .map(|_| next_of(&mut sender, &["message", "error"]))
        .collect();
    let (errors, own): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    assert_eq!(contents(&own), ["I will buy it later"]);
    assert_eq!(errors.len(), 2);
    for e in &errors {
        assert_eq!(e["code"], "message_blocked", "{e}");
    }
    // A refused send is not remembered: its clientMsgId may be used again.
    sender.send(json!({"type": "message", "content": "buy now", "clientMsgId": "p-1"}));
    let e = next_of(&mut sender, &["message", "error", "ack"]);
    assert_fields(&e, json!({"type": "error", "code": "message_blocked"}));
    sender.send(json!({"type": "message", "content": "buy later", "clientMsgId": "p-1"}));
    let (later, ack) = message_and_ack(&mut sender);
    assert_eq!(later["content"], "buy later");
    assert_fields(
        &ack,
        json!({"clientMsgId": "p-1", "messageId": id_of(&later)}),
    );
    reader.send(say("sentinel"));
    let seen = messages_until(&mut reader, "sentinel");
    assert_eq!(
        contents(&seen),
        ["I will buy it later", "buy later", "sentinel"]
    );
    assert_eq!(http_history(&server, &token, &room, ""), seen);
}

#[test]
fn look_alike_spellings_are_masked_and_invisible_content_is_refused() {
    let server = Server::start(&[("MODERATION_BLOCKLIST", "darn")]);
    let (room, _) = rooms_on_cores("lookalike");
    let token = server.token("auditor");
    let (mut sender, _) = server.connect("trickster", &room);
    let (mut reader, _) = server.connect("watcher", &room);
    // Zero-width space and non-joiner only: as empty as "".
    sender.send(say("\u{200B}\u{200C}"));
    let e = next_of(&mut sender, &["message", "error"]);
    assert_fields(&e, json!({"type": "error", "code": "invalid_message"}));
    // Full-width letters fold onto the listed word; the rest of the text is kept as sent.
    sender.send(say("ｄａｒｎ it ☕ café"));
    let own = next_of(&mut sender, &["message", "error"]);
    assert_fields(
        &own,
        json!({"type": "message", "content": "**** it ☕ café"}),
    );
    let seen = messages_until(&mut reader, "**** it ☕ café");
    assert_eq!(seen, [own], "the invisible message was not broadcast");
    assert_eq!(http_history(&server, &token, &room, ""), seen);
    assert_eq!(
        server.wait_metric("chat_audit_records_total{action=\"masked\"}", 1.0),
        Some(1.0)
    );
    assert_eq!(
        server.wait_metric("chat_errors_total{code=\"invalid_message\"}", 1.0),
        Some(1.0)
    );
}

/// A user id starting with `prefix` whose per-user state lives on `core`.
fn user_owned_by(prefix: &str, core: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| chatd::shard::shard_for(u, common::cores()) == core)
        .unwrap()
}

#[test]
fn disabled_moderation_passes_everything_through() {
    let server = Server::start(&[
        ("ENABLE_MODERATION", "false"),
        ("MODERATION_BLOCKLIST", "darn,heck"),
        ("MODERATION_PATTERNS", r"buy\s+now"),
    ]);
    let (room, _) = rooms_on_cores("free");
    let token = server.token("auditor");
    let (mut sender, _) = server.connect("free", &room);
    let (mut reader, _) = server.connect("speech", &room);
    let texts = ["Darn it, HECK!", "darn heck", "buy now", "shit happens"];
    for t in texts {
        sender.send(say(t));
    }
    let own: Vec<Value> = (0..4)
        .map(|_| next_of(&mut sender, &["message", "error"]))
        .collect();
    assert_eq!(contents(&own), texts);
    let seen = messages_until(&mut reader, "shit happens");
    assert_eq!(contents(&seen), texts);
    assert_eq!(http_history(&server, &token, &room, ""), seen);
    assert_eq!(
        server.metric("chat_messages_received_total{outcome=\"blocked\"}"),
        Some(0.0)
    );
}

#[test]
fn the_built_in_list_masks_common_words() {
    let server = Server::default_start();
    let (room, _) = rooms_on_cores("builtin");
    let (mut sender, _) = server.connect("sailor", &room);
    let (mut reader, _) = server.connect("parrot", &room);
    sender.send(say("well, shit happens in class"));
    sender.send(say("Damn!"));
    sender.send(say("what the FUCK"));
    let frames: Vec<Value> = (0..3)
        .map(|_| next_of(&mut sender, &["message", "error"]))
        .collect();
    let (errors, own): (Vec<Value>, Vec<Value>) =
        frames.into_iter().partition(|f| f["type"] == "error");
    assert_eq!(
        contents(&own),
        ["well, **** happens in class", "what the ****"]
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "message_blocked");
    let seen = messages_until(&mut reader, "what the ****");
    assert_eq!(seen, own);
}

// ---- 7. metrics ----------------------------------------------------------

#[test]
fn metrics_count_traffic_exactly() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_MESSAGES", "3"),
        ("RATE_LIMIT_WINDOW_MS", "600000"),
    ]);
    let (room0, room1) = rooms_on_cores("metrics");
    let (mut u1, _) = server.connect("u1", &room0);
    let (mut u2, _) = server.connect("u2", &room1);
    u2.send(json!({"type": "join_room", "roomId": room0}));
    u2.recv_type("room_joined");
    let (mut u3, _) = server.connect("u3", &room1);

    // u1: 3 accepted, 1 rate limited.
    for i in 0..4 {
        u1.send(say(&format!("u1-{i}")));
    }
    let frames: Vec<Value> = (0..4)
        .map(|_| next_of(&mut u1, &["message", "error"]))
        .collect();
    assert_eq!(frames.iter().filter(|f| f["type"] == "message").count(), 3);
    assert!(
        frames.iter().any(|f| f["code"] == "rate_limited"),
        "{frames:?}"
    );
    // u2: 2 accepted in room0 (u1 gets them too).
    u2.send(say_in(&room0, "u2-0"));
    u2.send(say_in(&room0, "u2-1"));
    assert_eq!(
        contents(&messages_until(&mut u2, "u2-1")),
        ["u1-0", "u1-1", "u1-2", "u2-0", "u2-1"]
    );
    // u3: 1 accepted, 1 not in room.
    u3.send(say("u3-0"));
    u3.send(say_in(&room0, "u3-x"));
    let frames: Vec<Value> = (0..2)
        .map(|_| next_of(&mut u3, &["message", "error"]))
        .collect();
    assert!(frames.iter().any(|f| f["content"] == "u3-0"), "{frames:?}");
    assert!(
        frames.iter().any(|f| f["code"] == "not_in_room"),
        "{frames:?}"
    );

    // A fourth connection that closes again.
    let (extra, _) = server.connect("u4", &room1);
    assert_eq!(server.wait_metric("chat_connections", 4.0), Some(4.0));
    extra.close();

    let expect = [
        ("chat_connections", 3.0),
        ("chat_connections_opened_total", 4.0),
        ("chat_connections_closed_total{reason=\"client\"}", 1.0),
        ("chat_messages_received_total{outcome=\"accepted\"}", 6.0),
        (
            "chat_messages_received_total{outcome=\"rate_limited\"}",
            1.0,
        ),
        ("chat_messages_received_total{outcome=\"invalid\"}", 1.0),
        ("chat_errors_total{code=\"rate_limited\"}", 1.0),
        ("chat_errors_total{code=\"not_in_room\"}", 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(server.wait_metric(series, value), Some(value), "{series}");
    }
    let latency = server
        .metric("chat_delivery_latency_seconds_count")
        .expect("latency histogram");
    assert!(latency > 0.0, "{latency}");
    let (_, body) = server.get("/metrics", None);
    assert!(
        body.contains("# TYPE chat_delivery_latency_seconds histogram"),
        "{body}"
    );
}

// ---- budgets: per connection, per user, and the sampled logs -------------

/// Reads frames until the answer to a request: the next frame of one of
/// `kinds`, skipping presence and typing.
fn answer_of(client: &mut Client, kinds: &[&str]) -> Value {
    loop {
        let v = client.recv();
        if kinds.iter().any(|k| v["type"] == *k) {
            return v;
        }
        assert!(
            v["type"] == "presence" || v["type"] == "typing_indicator",
            "unexpected {v}"
        );
    }
}

/// Asserts a `rate_limited` error whose `retryAfterMs` is within the
/// refill period of a bucket of `per_sec`.
fn assert_rate_limited(frame: &Value, per_sec: u64) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "rate_limited", "{frame}");
    let wait = frame["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=1000 / per_sec).contains(&wait), "{frame}");
}

#[test]
fn join_leave_and_history_frames_have_per_connection_budgets() {
    // One frame per second each, bursts of two.
    let server = Server::start(&[
        ("ROOM_FRAMES_PER_SEC", "1"),
        ("HISTORY_FRAMES_PER_SEC", "1"),
    ]);
    let (mut c, _) = server.connect("budgeted", "budget-home");
    let start = Instant::now();
    let mut answers = Vec::new();
    for room in ["budget-a", "budget-b", "budget-c"] {
        c.send(json!({"type": "join_room", "roomId": room}));
        answers.push(answer_of(&mut c, &["room_joined", "error"]));
    }
    assert_eq!(answers[0]["roomId"], "budget-a");
    assert_eq!(answers[1]["roomId"], "budget-b");
    assert_rate_limited(&answers[2], 1);
    // leave_room shares the budget: still spent.
    c.send(json!({"type": "leave_room", "roomId": "budget-a"}));
    assert_rate_limited(&answer_of(&mut c, &["room_left", "error"]), 1);
    // The refused join did nothing: not a member of budget-c.
    c.send(json!({"type": "message", "roomId": "budget-c", "content": "x"}));
    assert_eq!(
        answer_of(&mut c, &["message", "error"])["code"],
        "not_in_room"
    );
    // history has its own budget.
    let mut kinds = Vec::new();
    for _ in 0..3 {
        c.send(json!({"type": "history", "roomId": "budget-home"}));
        let a = answer_of(&mut c, &["history", "error"]);
        kinds.push(a["type"].as_str().unwrap().to_string());
        if a["type"] == "error" {
            assert_rate_limited(&a, 1);
        }
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "too slow for the budget to matter"
    );
    assert_eq!(kinds, ["history", "history", "error"]);
    // The connection is kept, and a budget refills.
    c.send(json!({"type": "ping"}));
    assert_eq!(c.recv_type("pong")["type"], "pong");
    let joined = common::poll(Duration::from_secs(3), || {
        c.send(json!({"type": "join_room", "roomId": "budget-c"}));
        let a = answer_of(&mut c, &["room_joined", "error"]);
        (a["type"] == "room_joined").then_some(a)
    })
    .expect("the join budget did not refill");
    assert_eq!(joined["roomId"], "budget-c");
}

#[test]
fn a_repeated_join_is_answered_with_the_known_member_count() {
    let server = Server::default_start();
    let (room, _) = rooms_on_cores("repeat");
    let (mut ann, first) = server.connect("ann", "repeat-home");
    assert_eq!(first["memberCount"], 1);
    let (_bob, _) = server.connect("bob", &room);
    ann.send(json!({"type": "join_room", "roomId": room}));
    let joined = ann.recv_type("room_joined");
    assert_eq!(joined["memberCount"], 2);
    // Repeats are answered with the count ann's core knows, within the
    // default budget (10 a second, burst 20: two joins are already spent),
    // then refused.
    let start = Instant::now();
    let mut answered = 0;
    let mut refused = 0;
    for _ in 0..30 {
        ann.send(json!({"type": "join_room", "roomId": room}));
        let again = answer_of(&mut ann, &["room_joined", "error"]);
        if again["type"] == "room_joined" {
            assert_fields(&again, json!({"roomId": room, "memberCount": 2}));
            answered += 1;
        } else {
            assert_rate_limited(&again, 10);
            refused += 1;
        }
    }
    let refill = (start.elapsed().as_millis() / 100) as usize;
    assert!(
        (18..=19 + refill).contains(&answered),
        "{answered} answered, {refused} refused in {:?}",
        start.elapsed()
    );
    assert_eq!(answered + refused, 30);
    let token = server.token("reader");
    assert_eq!(online_in(&server, &token, &room), ["ann", "bob"]);
    // One leave takes ann out: the repeats were not counted as joins.
    // (The join budget is spent: retried until it refills.)
    let left = common::poll(Duration::from_secs(3), || {
        ann.send(json!({"type": "leave_room", "roomId": room}));
        let a = answer_of(&mut ann, &["room_left", "error"]);
        (a["type"] == "room_left").then_some(a)
    });
    assert!(left.is_some(), "leave_room never allowed");
    assert_eq!(
        eventually(&vec!["bob".to_string()], || online_in(
            &server, &token, &room
        )),
        ["bob"]
    );
}

#[test]
fn typing_is_budgeted_per_user_and_room_across_connections() {
    // Burst of 2 per (user, room), one more per second.
    let server = Server::start(&[("TYPING_FRAMES_PER_SEC", "1")]);
    let (room, _) = rooms_on_cores("typing-budget");
    let (mut watcher, _) = server.connect("watcher", &room);
    let (mut t1, _) = server.connect("typist", &room);
    let (mut t2, _) = server.connect("typist", &room);
    let start = Instant::now();
    // Each connection stays within its own budget of 2...
    for t in [&mut t1, &mut t2] {
        for _ in 0..2 {
            t.send(json!({"type": "typing", "roomId": room, "isTyping": true}));
        }
    }
    t2.send(say("typed"));
    let mut indicators = 0;
    loop {
        let v = watcher.recv();
        match v["type"].as_str() {
            Some("typing_indicator") => indicators += 1,
            Some("message") => break,
            _ => {}
        }
    }
    // ...but the user's budget in the room is shared: 2, plus at most the
    // refill over the time the test took.
    let refill = start.elapsed().as_secs() as usize;
    assert!(
        (2..=2 + refill).contains(&indicators),
        "{indicators} indicators relayed of 4, {refill} s elapsed"
    );
    assert_eq!(
        server.wait_metric("chat_typing_throttled_total", (4 - indicators) as f64),
        Some((4 - indicators) as f64)
    );
}

#[test]
fn connections_beyond_the_per_user_cap_are_closed_with_1008() {
    let server = Server::start(&[("MAX_CONNECTIONS_PER_USER", "2")]);
    let (room, other) = rooms_on_cores("cap");
    let (mut first, _) = server.connect("capped", &room);
    let (_second, _) = server.connect("capped", &other);
    let (mut third, _) = server.connect("capped", &room);
    assert_eq!(third.expect_close(), Some(1008));
    // The first two are untouched, and another user is not affected.
    first.send(json!({"type": "ping"}));
    assert_eq!(first.recv_type("pong")["type"], "pong");
    let (_free, _) = server.connect("free", &room);
    assert_eq!(
        server.wait_metric(
            "chat_connections_closed_total{reason=\"too_many_connections\"}",
            1.0
        ),
        Some(1.0)
    );
    // A closed connection frees its slot.
    first.close();
    let replaced = common::poll(Duration::from_secs(5), || {
        let (mut c, _) = server.connect("capped", &room);
        c.send(json!({"type": "ping"}));
        loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) if t.contains("pong") => return Some(()),
                Ok(tungstenite::Message::Text(_)) => continue,
                _ => return None,
            }
        }
    });
    assert!(replaced.is_some(), "no slot after a close");
}

#[test]
fn long_and_bidi_usernames_are_capped_and_stripped_in_messages() {
    let server = Server::default_start();
    let name = format!("\u{202E}evil\u{2066}\u{200F}\n{}", "x".repeat(100));
    let token = chatd::auth::mint_hs256(
        common::SECRET.as_bytes(),
        "bidi-user",
        Some(&name),
        Some(600),
    );
    let url = format!("ws://{}/ws?token={token}&roomId=names", server.addr);
    let mut c = Client::open(&url).expect("upgrade");
    assert_eq!(c.recv()["type"], "room_joined");
    c.send(say("hello"));
    let m = c.recv_type("message");
    let want = format!("evil{}", "x".repeat(60));
    assert_eq!(m["username"], want.as_str());
    assert_eq!(want.chars().count(), 64);
    // A name of nothing but formatting characters falls back to the user id.
    let token = chatd::auth::mint_hs256(
        common::SECRET.as_bytes(),
        "plain-id",
        Some("\u{202A}\u{200E}"),
        Some(600),
    );
    let url = format!("ws://{}/ws?token={token}&roomId=names", server.addr);
    let mut c = Client::open(&url).expect("upgrade");
    c.send(say("hi"));
    assert_eq!(c.recv_type("message")["username"], "plain-id");
}

/// Opens a WebSocket for `user` with a `User-Agent` header.
fn connect_with_agent(server: &Server, user: &str, room: &str, agent: &str) -> Client {
    use tungstenite::client::IntoClientRequest as _;
    let url = format!(
        "ws://{}/ws?token={}&roomId={room}",
        server.addr,
        server.token(user)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("User-Agent", agent.parse().unwrap());
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(request, stream).expect("upgrade");
    let mut c = Client { ws };
    assert_eq!(c.recv()["type"], "room_joined");
    c
}

/// JSON log lines whose message is `message`, read until one about
/// `until_user` arrives (lines are written before the connection's
/// `room_joined`, so everything logged earlier is in by then).
fn log_lines(log: &Receiver<String>, message: &str, until_user: &str) -> Vec<Value> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut found = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {message:?} line for {until_user}: {found:?}"));
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == message {
            found.push(v.clone());
            if v["fields"]["userId"] == until_user {
                return found;
            }
        }
    }
}

#[test]
fn connection_and_rate_limit_logs_are_sampled_per_user() {
    let (server, log) = Server::start_with_log(&[
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("RATE_LIMIT_MAX_MESSAGES", "1"),
    ]);
    let (room, _) = rooms_on_cores("logged");
    let mut first = connect_with_agent(&server, "logged-user", &room, "agent-test/1.0");
    let _more: Vec<Client> = (0..4)
        .map(|_| connect_with_agent(&server, "logged-user", &room, "agent-test/1.0"))
        .collect();
    let _marker = connect_with_agent(&server, "marker", &room, "marker-agent");
    let lines = log_lines(&log, "WebSocket connection established", "marker");
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["userId"] == "logged-user")
        .collect();
    // One line per user per window on each core: five connections through
    // at most `cores` accepting cores.
    assert!(
        (1..=common::cores().min(5)).contains(&mine.len()),
        "{lines:?}"
    );
    let line = mine[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["roomId"], room.as_str());
    assert_eq!(line["fields"]["userAgent"], "agent-test/1.0");

    // Five sends over a budget of one: four refusals, one warn line.
    for i in 0..5 {
        first.send(say(&format!("m{i}")));
        answer_of(&mut first, &["message", "error"]);
    }
    let (mut marker2, _) = server.connect("marker2", &room);
    marker2.send(say("one"));
    marker2.send(say("two"));
    assert_eq!(marker2.recv_type("error")["code"], "rate_limited");
    let lines = log_lines(&log, "Rate limit exceeded", "marker2");
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["userId"] == "logged-user")
        .collect();
    assert_eq!(mine.len(), 1, "{lines:?}");
    assert_eq!(mine[0]["level"], "WARN");
    assert_eq!(mine[0]["fields"]["messageCount"], 1);
    assert_eq!(mine[0]["fields"]["timeWindow"], "60000ms");
}

#[test]
fn log_connections_per_sec_zero_turns_the_connection_line_off() {
    let (server, log) = Server::start_with_log(&[
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("LOG_CONNECTIONS_PER_SEC", "0"),
        ("RATE_LIMIT_MAX_MESSAGES", "1"),
    ]);
    let (mut c, _) = server.connect("quiet", "quiet-room");
    // A rate-limit line marks the point by which a connection line would
    // have been written.
    c.send(say("one"));
    c.send(say("two"));
    assert_eq!(c.recv_type("error")["code"], "rate_limited");
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log.recv_timeout(left).expect("no rate-limit line");
        assert!(!line.contains("WebSocket connection established"), "{line}");
        if line.contains("Rate limit exceeded") {
            break;
        }
    }
}
