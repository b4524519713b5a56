//! Recovery after a reconnect (contract sections 3 and 4): a `since` replay
//! of up to 1,000 messages of any size reaches the client in full, paced by
//! its reading, then the live stream follows with no gap and no duplicate;
//! `room_joined` says whether the replay was everything (`recovered`); a
//! `history` page that does not fit the outbound budget is cut and says so
//! (`more`).
//!
//! Every server here gets RATE_LIMIT_MAX_MESSAGES=1000000: the tests post
//! bursts of up to 1,011 messages from one user, which the default limit
//! (30 a minute) exists to refuse; nothing here is about the rate limit.

mod common;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{Client, Server, FRAME_TIMEOUT};
use serde_json::{json, Value};

/// The rate limit that lets one user post the bursts these tests need.
const BURST: (&str, &str) = ("RATE_LIMIT_MAX_MESSAGES", "1000000");

/// Messages a sender posts before reading back their copies, so its own
/// outbound queue (the smallest budget here is 256 KiB) never fills with
/// 6 KB echoes.
const SEND_BATCH: usize = 20;

/// Posts `contents` to `room` from `client` and returns the ids the server
/// gave them, in order (read from the sender's own copies).
fn post(client: &mut Client, room: &str, contents: &[String]) -> Vec<String> {
    let mut ids = Vec::with_capacity(contents.len());
    for batch in contents.chunks(SEND_BATCH) {
        for content in batch {
            client.send(json!({"type": "message", "roomId": room, "content": content}));
        }
        for content in batch {
            let echo = client.recv_type("message");
            assert_eq!(echo["content"].as_str(), Some(content.as_str()));
            ids.push(echo["messageId"].as_str().expect("messageId").to_string());
        }
    }
    ids
}

/// `n` distinct contents of exactly `len` characters: a number, then `fill`.
fn contents(n: usize, len: usize, fill: char) -> Vec<String> {
    (0..n)
        .map(|i| {
            let head = format!("{i}:");
            let tail: String = std::iter::repeat_n(fill, len - head.chars().count()).collect();
            head + &tail
        })
        .collect()
}

/// Reads `n` `message` frames of `room` (skipping presence and typing).
fn read_messages(client: &mut Client, room: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let m = client.recv_type("message");
            assert_eq!(m["roomId"], room, "{m}");
            m
        })
        .collect()
}

fn ids_of(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["messageId"].as_str().expect("messageId").to_string())
        .collect()
}

fn contents_of(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["content"].as_str().expect("content").to_string())
        .collect()
}

/// A room, a sender in it, and the id of a first message that the rest are
/// posted after (the point a reconnecting reader recovers from).
fn room_with_marker(server: &Server, room: &str) -> (Client, String) {
    let (mut sender, joined) = server.connect("sender", room);
    assert!(
        joined.get("recovered").is_none(),
        "no `recovered` on a join without since: {joined}"
    );
    let marker = post(&mut sender, room, &["marker".to_string()]).remove(0);
    (sender, marker)
}

/// Opens `/ws` for `user` with a small socket receive buffer, so that what
/// the client has not read stays queued on the server instead of in the
/// kernel (a slow reader, for real).
fn open_small_window(server: &Server, user: &str, query: &str) -> Client {
    let url = format!(
        "ws://{}/ws?token={}&{query}",
        server.addr,
        server.token(user)
    );
    let stream = TcpStream::connect(server.addr).expect("tcp connect");
    let bytes: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt reads an int from the pointer given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(url, stream).expect("upgrade");
    Client { ws }
}

/// The whole scenario of the report: `n` messages of `len` characters of
/// `fill` after the marker, a reconnect with `since` = the marker (through
/// `/ws?since=` or `join_room`), all of them in order with
/// `recovered:true`, then a live message right after.
fn replay_arrives_whole(n: usize, len: usize, fill: char, through_join_room: bool) {
    let server = Server::start(&[BURST]);
    let room = "replay";
    let (mut sender, marker) = room_with_marker(&server, room);
    let sent = contents(n, len, fill);
    let ids = post(&mut sender, room, &sent);

    let (mut reader, joined) = if through_join_room {
        let (mut reader, _) = server.connect("reader", "elsewhere");
        reader.send(json!({"type": "join_room", "roomId": room, "since": marker}));
        let joined = reader.recv_type("room_joined");
        (reader, joined)
    } else {
        server.connect_with("reader", room, &format!("since={marker}"))
    };
    assert_eq!(joined["roomId"], room);
    assert_eq!(joined["recovered"], true, "{joined}");
    let replay = read_messages(&mut reader, room, n);
    assert_eq!(ids_of(&replay), ids, "every message, in order");
    assert_eq!(contents_of(&replay), sent, "whole contents");

    let live = post(&mut sender, room, &["live".to_string()]);
    let next = reader.recv_type("message");
    assert_eq!(next["messageId"].as_str(), Some(live[0].as_str()));
    assert_eq!(next["content"], "live");
    reader.close();
}

/// The report's first case: 999 messages of the default maximum length
/// (1,000 ASCII characters) are more than the 1 MiB outbound budget.
#[test]
fn replay_of_999_full_length_messages_arrives_whole_then_live() {
    replay_arrives_whole(999, 1000, 'a', false);
}

/// The report's second case: 200 messages of 1,000 x U+0001 are ~6 KB of
/// JSON each, 1.2 MB in all.
#[test]
fn replay_of_200_escaped_messages_arrives_whole_then_live() {
    replay_arrives_whole(200, 1000, '\u{1}', true);
}

/// A reader that reads with pauses still gets the whole replay; a live
/// message posted while the replay is under way comes after it, once.
/// SOCKET_SEND_BUFFER=16384 on the server and a 16 KiB receive buffer on the
/// reader keep the kernel from absorbing the ~1.1 MB replay: when the live
/// message arrives, most of the replay still waits in the server's backlog,
/// so the live frame really is queued behind it.
#[test]
fn slow_reader_gets_the_whole_replay_and_live_messages_after_it() {
    let server = Server::start(&[BURST, ("SOCKET_SEND_BUFFER", "16384")]);
    let room = "slow";
    let (mut sender, marker) = room_with_marker(&server, room);
    let sent = contents(999, 1000, 'b');
    let ids = post(&mut sender, room, &sent);

    let mut reader = open_small_window(&server, "reader", &format!("roomId={room}&since={marker}"));
    let joined = reader.recv();
    assert_eq!(joined["type"], "room_joined", "first frame: {joined}");
    assert_eq!(joined["recovered"], true, "{joined}");
    let mut got = read_messages(&mut reader, room, 100);
    // Posted while 899 replayed messages (~1 MB) are still to be read.
    let live = post(&mut sender, room, &["during the replay".to_string()]);
    while got.len() < 999 {
        // Paced reading: a pause every 100 frames.
        std::thread::sleep(Duration::from_millis(30));
        let want = (999 - got.len()).min(100);
        got.extend(read_messages(&mut reader, room, want));
    }
    assert_eq!(ids_of(&got), ids, "the whole replay first, in order");
    let next = reader.recv_type("message");
    assert_eq!(next["messageId"].as_str(), Some(live[0].as_str()));
    // Nothing else: the live message came once, right after the replay.
    reader.send(json!({"type": "ping"}));
    assert_eq!(reader.recv_type("pong")["type"], "pong");
    reader.close();
}

/// More missed than the replay holds: the newest 1,000 arrive with
/// `recovered:false`, and the rest are there to page with `history`
/// between `since` and the first replayed message. HISTORY_PER_ROOM=2000
/// keeps the gap stored (the default 1,000 would have evicted it: a store
/// without DATABASE_URL cannot page what it no longer holds).
#[test]
fn more_than_a_thousand_missed_is_not_recovered_and_the_gap_pages() {
    let server = Server::start(&[BURST, ("HISTORY_PER_ROOM", "2000")]);
    let room = "many";
    let (mut sender, marker) = room_with_marker(&server, room);
    let ids = post(&mut sender, room, &contents(1010, 10, 'c'));

    let (mut reader, _) = server.connect("reader", "elsewhere");
    reader.send(json!({"type": "join_room", "roomId": room, "since": marker}));
    let joined = reader.recv_type("room_joined");
    assert_eq!(joined["recovered"], false, "{joined}");
    let replay = read_messages(&mut reader, room, 1000);
    assert_eq!(ids_of(&replay), ids[10..], "the newest 1,000, joining live");
    reader.send(json!({
        "type": "history", "roomId": room, "after": marker, "before": ids[10], "limit": 200
    }));
    let page = reader.recv_type("history");
    let gap: Vec<Value> = page["messages"].as_array().unwrap().clone();
    assert_eq!(ids_of(&gap), ids[..10], "the gap, whole");
    assert_eq!(page["more"], false);
    reader.close();
}

/// Up to 1,000 missed but the history no longer reaches back to `since`
/// (HISTORY_PER_ROOM=50 evicted the marker): `recovered:false`.
#[test]
fn since_older_than_the_stored_history_is_not_recovered() {
    let server = Server::start(&[BURST, ("HISTORY_PER_ROOM", "50")]);
    let room = "evicted";
    let (mut sender, marker) = room_with_marker(&server, room);
    let ids = post(&mut sender, room, &contents(60, 10, 'e'));
    let (mut reader, joined) = server.connect_with("reader", room, &format!("since={marker}"));
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(ids_of(&read_messages(&mut reader, room, 50)), ids[10..]);
    // A since the history still holds: recovered.
    reader.send(json!({"type": "join_room", "roomId": room, "since": ids[20]}));
    let again = reader.recv_type("room_joined");
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(ids_of(&read_messages(&mut reader, room, 39)), ids[21..]);
    reader.close();
}

/// A `history` answer bigger than the outbound budget is cut to fit, keeps
/// the messages nearest `before` (the newest), and says `more:true`; paging
/// back with `before` gets the rest, the last page with `more:false`.
#[test]
fn history_bigger_than_the_budget_is_cut_with_more() {
    let server = Server::start(&[BURST, ("OUTBOUND_QUEUE_BYTES", "262144")]);
    let room = "pages";
    let (mut sender, _) = room_with_marker(&server, room);
    let ids = post(&mut sender, room, &contents(200, 1000, '\u{1}'));

    let (mut reader, _) = server.connect("reader", "elsewhere");
    reader.send(json!({"type": "history", "roomId": room, "limit": 200}));
    let first = reader.recv_type("history");
    let page: Vec<Value> = first["messages"].as_array().unwrap().clone();
    assert_eq!(first["more"], true, "cut pages say so");
    assert!(
        !page.is_empty() && page.len() < 200,
        "{} of 200 ~6 KB messages in a 256 KiB budget",
        page.len()
    );
    assert_eq!(ids_of(&page), ids[200 - page.len()..], "the newest ones");

    let mut all = page;
    let mut pages = 1;
    loop {
        let before = all[0]["messageId"].as_str().unwrap().to_string();
        reader.send(json!({"type": "history", "roomId": room, "before": before, "limit": 200}));
        let answer = reader.recv_type("history");
        pages += 1;
        let mut older: Vec<Value> = answer["messages"].as_array().unwrap().clone();
        let more = answer["more"].as_bool().expect("more is a boolean");
        older.extend(all);
        all = older;
        if !more {
            break;
        }
        assert!(pages < 20, "paging never ended");
    }
    // The last page reached past the 200 to the marker.
    assert_eq!(all[0]["content"], "marker");
    assert_eq!(ids_of(&all[1..]), ids, "every message once, in order");
    assert!(pages >= 5, "1.2 MB in pages under 256 KiB: {pages}");
    reader.close();
}

/// A lone frame bigger than the whole budget is delivered, not a slow
/// consumer: with OUTBOUND_QUEUE_BYTES at its minimum (65552, one client
/// frame) and MAX_MESSAGE_LENGTH raised so the content fits a 64 KiB client
/// frame, the server's `message` frame (ids, user names and timestamp
/// added) is bigger than the budget, for the sender and for a reader who
/// recovers it with `since`.
#[test]
fn a_frame_bigger_than_the_budget_is_delivered_alone() {
    let server = Server::start(&[
        BURST,
        ("OUTBOUND_QUEUE_BYTES", "65552"),
        ("MAX_MESSAGE_LENGTH", "20000"),
    ]);
    let room = "big";
    let user = "u".repeat(80);
    let (mut sender, _) = server.connect(&user, room);
    let marker = post(&mut sender, room, &["marker".to_string()]).remove(0);
    // 10,900 x U+0001 is 65,400 bytes of JSON: the client frame fits 64 KiB.
    let big: String = std::iter::repeat_n('\u{1}', 10_900).collect();
    let frame = json!({"type": "message", "roomId": room, "content": big}).to_string();
    assert!(
        frame.len() <= 64 * 1024,
        "client frame {} bytes",
        frame.len()
    );
    sender.send_text(&frame);
    let echo = sender.recv_type("message");
    assert_eq!(echo["content"].as_str(), Some(big.as_str()));
    let server_frame = echo.to_string().len();
    assert!(server_frame > 65_552, "server frame {server_frame} bytes");

    let (mut reader, joined) = server.connect_with("reader", room, &format!("since={marker}"));
    assert_eq!(joined["recovered"], true, "{joined}");
    let replayed = reader.recv_type("message");
    assert_eq!(replayed["messageId"], echo["messageId"]);
    assert_eq!(replayed["content"].as_str(), Some(big.as_str()));
    reader.send(json!({"type": "ping"}));
    assert_eq!(reader.recv_type("pong")["type"], "pong", "still open");
    sender.send(json!({"type": "ping"}));
    assert_eq!(sender.recv_type("pong")["type"], "pong", "still open");
}
