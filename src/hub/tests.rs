//! The rules of docs/PROTOCOL.md that the hub decides, on two to four
//! in-process hubs wired by the test mesh (`testkit.rs`): one order per
//! room, presence, dedupe, rate limits, replay and `recovered`, slow
//! consumers, and the per-connection budgets and limits. Rooms and users
//! are placed on chosen cores so every rule is checked where it crosses
//! the mesh.

use std::time::Duration;

use serde_json::{json, Value};

use super::testkit::{contents, frames, ids, message_id, of_type, owned_by, types, World};
use super::{MAX_REPLAY, TOO_MANY_CONNECTIONS_CLOSE};
use crate::metrics::CloseReason;
use crate::outbound::SLOW_CONSUMER_CLOSE;

/// The presence frames among `got` as `(userId, status, roomId)`.
fn presence(got: &[Value]) -> Vec<(String, String, String)> {
    of_type(got, "presence")
        .into_iter()
        .map(|f| {
            (
                f["userId"].as_str().expect("userId").to_string(),
                f["status"].as_str().expect("status").to_string(),
                f["roomId"].as_str().expect("roomId").to_string(),
            )
        })
        .collect()
}

fn p(user: &str, status: &str, room: &str) -> (String, String, String) {
    (user.to_string(), status.to_string(), room.to_string())
}

// ---- one order per room -----------------------------------------------

#[test]
fn members_on_every_core_see_one_order_of_a_room_fed_from_every_core() {
    let mut w = World::new(3, &[]);
    let room = owned_by(2, 3, "room");
    let members: Vec<_> = (0..3)
        .map(|core| w.open(core, &format!("u{core}"), &room, None))
        .collect();
    w.pump();
    for m in &members {
        frames(m, w.now);
    }
    // Each member sends four messages; the mesh is pumped only after every
    // second round, so sends from different cores are in flight together.
    for round in 0..4 {
        for (core, m) in members.iter().enumerate() {
            w.say(m, &room, &format!("{core}-{round}"));
        }
        if round % 2 == 1 {
            w.pump();
        }
        w.advance(Duration::from_millis(1));
    }
    w.pump();
    let got: Vec<Vec<Value>> = members.iter().map(|m| frames(m, w.now)).collect();
    let order = ids(&got[0]);
    assert_eq!(order.len(), 12);
    for g in &got {
        assert_eq!(ids(g), order, "the same id order on every core");
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, order, "ids sort as the room's order");
    // Each sender's own messages keep the order it sent them in.
    let seq = contents(&got[1]);
    for core in 0..3 {
        let mine: Vec<&String> = seq
            .iter()
            .filter(|c| c.starts_with(&format!("{core}-")))
            .collect();
        let want: Vec<String> = (0..4).map(|r| format!("{core}-{r}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
    // The owner's history holds the same order.
    let kept: Vec<String> = w.hubs[2]
        .history
        .since(&room, ulid::Ulid::nil(), 100)
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(kept, order);
}

// ---- presence ---------------------------------------------------------

#[test]
fn online_on_the_first_connection_offline_after_the_last_across_cores() {
    let mut w = World::new(3, &[]);
    let room = owned_by(0, 3, "room");
    let ann = owned_by(1, 3, "ann"); // counted on core 1
    let bob = w.open(0, "bob", &room, None);
    w.pump();
    frames(&bob, w.now);
    // Ann's first connection runs on core 2: online, via her owner core 1.
    let a1 = w.open(2, &ann, &room, None);
    w.pump();
    assert_eq!(presence(&frames(&bob, w.now)), [p(&ann, "online", &room)]);
    assert_eq!(w.online_users(), [ann.to_string(), "bob".to_string()]);
    // A second connection (core 0) is not a transition.
    let a2 = w.open(0, &ann, &room, None);
    w.pump();
    assert_eq!(presence(&frames(&bob, w.now)), []);
    assert_eq!(w.hubs[1].presence.connections(&ann), 2);
    // Closing one of two: still online, nothing sent.
    w.close(&a1, CloseReason::Client);
    w.pump();
    assert_eq!(presence(&frames(&bob, w.now)), []);
    assert_eq!(w.online_users(), [ann.to_string(), "bob".to_string()]);
    // The last one: offline to the room.
    w.close(&a2, CloseReason::Client);
    w.pump();
    assert_eq!(presence(&frames(&bob, w.now)), [p(&ann, "offline", &room)]);
    assert_eq!(w.online_users(), ["bob".to_string()]);
    // The user owner sent both transitions, once each.
    assert_eq!(w.hubs[1].metrics.presence_online, 1);
    assert_eq!(w.hubs[1].metrics.presence_offline, 1);
}

#[test]
fn offline_reaches_every_room_of_the_last_connection_on_other_cores() {
    let mut w = World::new(3, &[]);
    let home = owned_by(0, 3, "home");
    let second = owned_by(2, 3, "second");
    let ann = owned_by(1, 3, "ann");
    let bob = w.open(0, "bob", &home, None);
    let cat = w.open(2, "cat", &second, None);
    w.pump();
    frames(&bob, w.now);
    frames(&cat, w.now);
    let a = w.open(1, &ann, &home, None);
    w.pump();
    w.text(
        &a,
        &json!({"type": "join_room", "roomId": &*second}).to_string(),
    );
    w.pump();
    // Online went to the initial room only (the user was in no other yet).
    assert_eq!(presence(&frames(&bob, w.now)), [p(&ann, "online", &home)]);
    assert_eq!(presence(&frames(&cat, w.now)), []);
    let joined = frames(&a, w.now);
    let second_joined = of_type(&joined, "room_joined")
        .into_iter()
        .find(|f| f["roomId"] == *second)
        .expect("second room joined")
        .clone();
    assert_eq!(second_joined["memberCount"], 2);
    w.close(&a, CloseReason::Client);
    w.pump();
    assert_eq!(presence(&frames(&bob, w.now)), [p(&ann, "offline", &home)]);
    assert_eq!(
        presence(&frames(&cat, w.now)),
        [p(&ann, "offline", &second)]
    );
}

// ---- dedupe -----------------------------------------------------------

#[test]
fn a_repeated_client_msg_id_is_acknowledged_with_the_first_id_and_not_delivered_again() {
    let mut w = World::new(3, &[]);
    let room = owned_by(2, 3, "room");
    let ann = owned_by(0, 3, "ann"); // dedupe window on core 0
    let bob = w.open(0, "bob", &room, None);
    let a1 = w.open(1, &ann, &room, None);
    let a2 = w.open(2, &ann, &room, None);
    w.pump();
    for c in [&bob, &a1, &a2] {
        frames(c, w.now);
    }
    let send = |w: &mut World, c, text: &str, cmid: &str| {
        let frame =
            json!({"type": "message", "roomId": &*room, "content": text, "clientMsgId": cmid});
        w.text(c, &frame.to_string());
    };
    send(&mut w, &a1, "hello", "c-1");
    w.pump();
    let first = frames(&a1, w.now);
    assert_eq!(types(&first), ["message", "ack"]);
    let id = first[0]["messageId"].as_str().expect("id").to_string();
    assert_eq!(
        first[1],
        json!({"type": "ack", "clientMsgId": "c-1", "messageId": &id, "roomId": &*room})
    );
    // The same key again, from the same connection and from the user's
    // connection on another core: the first id, no second message.
    send(&mut w, &a1, "hello", "c-1");
    send(&mut w, &a2, "hello", "c-1");
    w.pump();
    let again = frames(&a1, w.now);
    assert_eq!(types(&again), ["ack"]);
    assert_eq!(again[0]["messageId"], *id);
    let other = frames(&a2, w.now);
    assert_eq!(
        types(&other),
        ["message", "ack"],
        "a2 got the first copy live"
    );
    assert_eq!(other[0]["messageId"], *id);
    assert_eq!(other[1]["messageId"], *id);
    assert_eq!(ids(&frames(&bob, w.now)), std::slice::from_ref(&id));
    // Two copies in flight at once: one message, both acknowledged alike.
    send(&mut w, &a1, "twice", "c-2");
    send(&mut w, &a2, "twice", "c-2");
    w.pump();
    let (g1, g2, gb) = (frames(&a1, w.now), frames(&a2, w.now), frames(&bob, w.now));
    assert_eq!(ids(&gb).len(), 1);
    let id2 = &ids(&gb)[0];
    assert_ne!(id2, &id);
    assert_eq!(types(&g1), ["message", "ack"]);
    assert_eq!(types(&g2), ["message", "ack"]);
    assert_eq!(g1[1]["messageId"], **id2);
    assert_eq!(g2[1]["messageId"], **id2);
    assert_eq!(
        w.hubs[2].history.since(&room, ulid::Ulid::nil(), 10).len(),
        2
    );
}

// ---- rate limits ------------------------------------------------------

#[test]
fn the_message_limit_counts_a_users_sends_at_the_owner_core_from_every_core() {
    let mut w = World::new(3, &[]);
    let room = owned_by(0, 3, "room");
    let ann = owned_by(1, 3, "ann"); // counted on core 1
    let bob = w.open(0, "bob", &room, None);
    let a0 = w.open(0, &ann, &room, None);
    let a2 = w.open(2, &ann, &room, None);
    w.pump();
    for c in [&bob, &a0, &a2] {
        frames(c, w.now);
    }
    // 30 per minute (the default), 15 from each core.
    for i in 0..15 {
        w.say(&a0, &room, &format!("a0-{i}"));
        w.say(&a2, &room, &format!("a2-{i}"));
    }
    w.pump();
    assert_eq!(ids(&frames(&bob, w.now)).len(), 30);
    assert!(of_type(&frames(&a0, w.now), "error").is_empty());
    assert!(of_type(&frames(&a2, w.now), "error").is_empty());
    // The 31st, from either core, is refused with the time until the
    // oldest send leaves the window.
    w.advance(Duration::from_secs(20));
    w.say(&a2, &room, "over");
    w.say(&a0, &room, "over");
    w.pump();
    for c in [&a0, &a2] {
        let got = frames(c, w.now);
        assert_eq!(types(&got), ["error"]);
        assert_eq!(got[0]["code"], "rate_limited");
        assert_eq!(got[0]["retryAfterMs"], 40_000);
        assert_eq!(got[0]["message"], "rate limit exceeded; retry in 40000 ms");
    }
    assert!(
        ids(&frames(&bob, w.now)).is_empty(),
        "dropped, not delivered"
    );
    // Another user is not affected; ann may send again once the window moved.
    w.say(&bob, &room, "bob's");
    w.advance(Duration::from_secs(40));
    w.say(&a0, &room, "later");
    w.pump();
    assert_eq!(contents(&frames(&bob, w.now)), ["bob's", "later"]);
    assert_eq!(
        w.hubs[1]
            .metrics
            .messages
            .get(&crate::metrics::Outcome::RateLimited),
        Some(&2)
    );
}

#[test]
fn a_user_alone_on_a_core_is_counted_there_and_publishes_without_a_hop() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let ann = owned_by(0, 2, "ann"); // owned by core 0, connected on core 1
    let bob = owned_by(1, 2, "bob");
    let bob = w.open(1, &bob, &room, None);
    let a1 = w.open(1, &ann, &room, None);
    // Sent before the owner's answer: held back, then counted on core 1.
    w.say(&a1, &room, "early-1");
    w.say(&a1, &room, "early-2");
    w.pump();
    assert_eq!(w.hubs[0].metrics.leases_granted, 1);
    for i in 0..5 {
        w.say(&a1, &room, &format!("m{i}"));
        assert!(
            w.hubs[1].outbox_mut().is_empty(),
            "rate limit, dedupe and fan-out all ran on core 1"
        );
    }
    assert_eq!(
        contents(&frames(&bob, w.now)),
        ["early-1", "early-2", "m0", "m1", "m2", "m3", "m4"]
    );
    assert_eq!(w.hubs[1].metrics.publish_forwarded, 0);
}

#[test]
fn the_limit_stays_exact_while_the_log_moves_between_cores() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let home = owned_by(0, 2, "home");
    let ann = owned_by(0, 2, "ann");
    let bob = w.open(1, "bob", &room, None);
    let a1 = w.open(1, &ann, &room, None);
    w.pump();
    for i in 0..20 {
        w.say(&a1, &room, &format!("lease-{i}"));
    }
    // A second connection on the owner (in a room the owner owns, so it is
    // in it at once) revokes the lease. Until the revoke arrives core 1
    // still counts; core 0's sends wait for the log to come home.
    let a0 = w.open(0, &ann, &home, None);
    for i in 0..5 {
        w.say(&a1, &room, &format!("late-{i}"));
    }
    for i in 0..10 {
        w.say(&a0, &home, &format!("owner-{i}"));
    }
    w.pump();
    assert_eq!(contents(&frames(&bob, w.now)).len(), 25);
    let a0_got = frames(&a0, w.now);
    assert_eq!(
        contents(&a0_got),
        ["owner-0", "owner-1", "owner-2", "owner-3", "owner-4"],
        "exactly the limit, 30, across the move"
    );
    let refused = of_type(&a0_got, "error");
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|e| e["code"] == "rate_limited"));
    assert_eq!(w.hubs[1].metrics.publish_forwarded, 0);
    // Both closed, then back on core 1 alone: the lease carries the full
    // log, so a reconnect does not reset the window.
    w.close(&a0, CloseReason::Client);
    w.close(&a1, CloseReason::Client);
    w.pump();
    w.advance(Duration::from_secs(1));
    let again = w.open(1, &ann, &room, None);
    w.pump();
    frames(&again, w.now);
    w.say(&again, &room, "still limited");
    w.pump();
    let got = frames(&again, w.now);
    assert_eq!(types(&got), ["error"]);
    assert_eq!(got[0]["code"], "rate_limited");
    assert_eq!(got[0]["retryAfterMs"], 59_000);
    assert_eq!(w.hubs[1].metrics.publish_forwarded, 0);
}

#[test]
fn a_retry_is_caught_after_the_users_window_moved_with_the_lease() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let home = owned_by(0, 2, "home");
    let ann = owned_by(0, 2, "ann");
    let a1 = w.open(1, &ann, &room, None);
    w.pump();
    frames(&a1, w.now);
    let send = |content: &str, room: &str| {
        json!({"type": "message", "roomId": room, "content": content, "clientMsgId": "c-1"})
            .to_string()
    };
    w.text(&a1, &send("first", &room));
    let got = frames(&a1, w.now);
    assert_eq!(
        types(&got),
        ["message", "ack"],
        "counted and sent on core 1"
    );
    let original = got[1]["messageId"].clone();
    // A connection on the owner brings the window home with the log; the
    // retry from there, even to another room, gets the original id.
    let a0 = w.open(0, &ann, &home, None);
    w.pump();
    frames(&a0, w.now);
    w.text(&a0, &send("retry", &home));
    w.pump();
    let got = frames(&a0, w.now);
    assert_eq!(types(&got), ["ack"]);
    assert_eq!(got[0]["messageId"], original);
    assert_eq!(got[0]["roomId"], *room);
    assert!(
        frames(&a1, w.now).is_empty(),
        "nothing stored or sent again"
    );
}

#[test]
fn a_user_on_two_cores_is_counted_at_the_owner() {
    let mut w = World::new(3, &[]);
    let room = owned_by(2, 3, "room");
    let ann = owned_by(0, 3, "ann");
    let a1 = w.open(1, &ann, &room, None);
    let a2 = w.open(2, &ann, &room, None);
    w.pump();
    w.say(&a1, &room, "from 1");
    w.say(&a2, &room, "from 2");
    w.pump();
    // Core 1 held the lease until core 2's connection revoked it.
    assert_eq!(w.hubs[0].metrics.leases_granted, 1);
    assert_eq!(w.hubs[1].metrics.publish_forwarded, 1);
    assert_eq!(w.hubs[2].metrics.publish_forwarded, 1);
    assert_eq!(contents(&frames(&a1, w.now)), ["from 1", "from 2"]);
}

// ---- replay and `recovered` -------------------------------------------

#[test]
fn a_join_with_since_replays_the_missed_messages_in_order_then_live() {
    let mut w = World::new(3, &[]);
    let room = owned_by(1, 3, "room");
    let ann = w.open(1, "ann", &room, None);
    w.pump();
    for i in 1..=5 {
        w.say(&ann, &room, &format!("m{i}"));
    }
    w.pump();
    let sent = ids(&frames(&ann, w.now));
    assert_eq!(sent.len(), 5);
    // Carl saw up to m2 on an earlier connection; he comes back on core 2.
    let carl = w.open(2, "carl", &room, Some(message_id(&sent[1])));
    assert!(
        frames(&carl, w.now).is_empty(),
        "answered by the owner, core 1"
    );
    w.pump();
    w.say(&ann, &room, "m6");
    w.pump();
    let got = frames(&carl, w.now);
    assert_eq!(
        got[0],
        json!({"type": "room_joined", "roomId": &*room, "memberCount": 2, "recovered": true})
    );
    assert_eq!(contents(&got), ["m3", "m4", "m5", "m6"]);
    assert_eq!(ids(&got)[..3], sent[2..]);
    // Only the replay comes before room_joined's followers: nothing twice.
    let positions: Vec<usize> = got
        .iter()
        .enumerate()
        .filter(|(_, f)| f["type"] == "message")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 4);
}

#[test]
fn a_since_older_than_the_kept_history_is_not_recovered() {
    let mut w = World::new(2, &["--history-per-room", "10"]);
    let room = owned_by(1, 2, "room");
    let ann = w.open(1, "ann", &room, None);
    for i in 1..=20 {
        w.say(&ann, &room, &format!("m{i}"));
    }
    w.pump();
    let sent = ids(&frames(&ann, w.now));
    assert_eq!(sent.len(), 20);
    // m2 left the history long ago: the ten kept ones, recovered false.
    let carl = w.open(0, "carl", &room, Some(message_id(&sent[1])));
    w.pump();
    let got = frames(&carl, w.now);
    assert_eq!(got[0]["type"], "room_joined");
    assert_eq!(got[0]["recovered"], false);
    let want: Vec<String> = (11..=20).map(|i| format!("m{i}")).collect();
    assert_eq!(contents(&got), want);
    // The oldest kept id itself as `since`: everything after it, recovered.
    let dave = w.open(0, "dave", &room, Some(message_id(&sent[10])));
    w.pump();
    let got = frames(&dave, w.now);
    assert_eq!(got[0]["recovered"], true);
    assert_eq!(contents(&got), want[1..]);
}

/// Settings for the long replays: a small outbound budget (so the replay
/// is paced), room in history for more than the replay cap, and no
/// message limit in the way.
const LONG_REPLAY: &[&str] = &[
    "--history-per-room",
    "1200",
    "--outbound-queue-bytes",
    "65552",
    "--rate-limit-max-messages",
    "100000",
];

/// Reads `client`'s queue one write at a time (at most `chunk` bytes per
/// write, as a slow socket would take them): the frames in arrival order,
/// and how many writes it took.
fn read_in_steps(client: &crate::client::Client, chunk: usize, w: &World) -> (Vec<Value>, usize) {
    let mut wire = Vec::new();
    let mut writes = 0;
    loop {
        let mut out = client.outbound().borrow_mut();
        if out.is_empty() {
            break;
        }
        let mut taken = 0;
        for f in out.frames() {
            if taken >= chunk {
                break;
            }
            let n = f.len().min(chunk - taken);
            wire.extend_from_slice(&f[..n]);
            taken += n;
        }
        out.consume(taken, w.now);
        writes += 1;
    }
    (split_wire(&wire), writes)
}

/// Splits server text frames written back to back into their JSON.
fn split_wire(mut wire: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let (len, header) = match wire[1] & 0x7f {
            126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(wire[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(wire[0], 0x81, "text frames only");
        out.push(serde_json::from_slice(&wire[header..header + len]).expect("JSON"));
        wire = &wire[header + len..];
    }
    out
}

#[test]
fn a_replay_of_a_thousand_is_fed_as_the_client_reads_then_live_follows() {
    let mut w = World::new(2, LONG_REPLAY);
    let room = owned_by(1, 2, "room");
    let ann = w.open(1, "ann", &room, None);
    let body = "x".repeat(600);
    for i in 1..=1100 {
        w.say(&ann, &room, &format!("{i:04} {body}"));
        if i % 50 == 0 {
            w.pump();
            frames(&ann, w.now);
        }
    }
    w.pump();
    frames(&ann, w.now);
    let kept = w.hubs[1].history.since(&room, ulid::Ulid::nil(), 2000);
    assert_eq!(kept.len(), 1100);
    // Exactly the cap after `since` (m100): all of it, recovered.
    let carl = w.open(0, "carl", &room, Some(kept[99].id));
    w.pump();
    {
        let out = carl.outbound().borrow();
        let framed = out.frames().len();
        assert!(
            framed < 30,
            "only about a quarter budget is framed: {framed}"
        );
        assert!(out.replay_waiting() > 950, "the rest waits for the reader");
    }
    // A live message while the replay is being read goes after all of it.
    w.say(&ann, &room, "live");
    w.pump();
    let (got, writes) = read_in_steps(&carl, 4096, &w);
    assert!(writes > 100, "paced: {writes} writes");
    assert_eq!(got[0]["type"], "room_joined");
    assert_eq!(got[0]["recovered"], true);
    let seen = contents(&got);
    assert_eq!(seen.len(), MAX_REPLAY + 1);
    for (i, c) in seen[..MAX_REPLAY].iter().enumerate() {
        assert_eq!(c[..4], format!("{:04}", i + 101), "replay in order");
    }
    assert_eq!(seen[MAX_REPLAY], "live");
    assert_eq!(carl.close_request(), None, "a replay never closes");
    // One more missed than the cap (since m99 .. 1100 + live is 1002):
    // the newest thousand, recovered false.
    let dave = w.open(0, "dave", &room, Some(kept[98].id));
    w.pump();
    let got = frames(&dave, w.now);
    assert_eq!(got[0]["recovered"], false);
    let seen = contents(&got);
    assert_eq!(seen.len(), MAX_REPLAY);
    assert_eq!(seen[0][..4], *"0102");
    assert_eq!(seen[MAX_REPLAY - 1], "live");
}

// ---- slow consumers ---------------------------------------------------

#[test]
fn a_member_that_never_reads_loses_typing_first_then_is_closed_1013() {
    let mut w = World::new(
        2,
        &[
            "--outbound-queue-bytes",
            "65552",
            "--rate-limit-max-messages",
            "100000",
        ],
    );
    let room = owned_by(0, 2, "room");
    let ann = w.open(0, "ann", &room, None);
    let bob = w.open(1, "bob", &room, None); // never reads
    let cat = w.open(1, "cat", &room, None);
    w.pump();
    frames(&ann, w.now);
    frames(&cat, w.now);
    let body = "y".repeat(900);
    let live = |c: &crate::client::Client| c.outbound().borrow().live_bytes();
    let mut sent = 0;
    while live(&bob) <= 65552 / 4 {
        w.say(&ann, &room, &body);
        w.pump();
        sent += 1;
        frames(&ann, w.now);
        frames(&cat, w.now);
    }
    assert_eq!(sent, 16, "a quarter of the budget in ~1 KB frames");
    let queued = bob.outbound().borrow().frames().len();
    w.text(&ann, r#"{"type":"typing","isTyping":true}"#);
    w.pump();
    assert_eq!(
        bob.outbound().borrow().frames().len(),
        queued,
        "typing dropped"
    );
    assert_eq!(w.hubs[1].metrics.typing_dropped, 1);
    let got = frames(&cat, w.now);
    assert_eq!(
        of_type(&got, "typing_indicator").len(),
        1,
        "cat reads: kept"
    );
    // Messages are never dropped: the one that does not fit closes bob.
    while bob.close_request().is_none() {
        w.say(&ann, &room, &body);
        w.pump();
        sent += 1;
        frames(&ann, w.now);
        frames(&cat, w.now);
        assert!(sent < 100);
    }
    assert_eq!(sent, 62);
    assert_eq!(
        bob.close_request(),
        Some((SLOW_CONSUMER_CLOSE, CloseReason::SlowConsumer))
    );
    assert!(bob.outbound().borrow().is_empty(), "the queue is discarded");
    assert_eq!(w.reap(), [(bob.id, 1013)]);
    w.pump();
    assert_eq!(presence(&frames(&ann, w.now)), [p("bob", "offline", &room)]);
    assert_eq!(cat.close_request(), None);
}

#[test]
fn a_queue_without_progress_for_the_stall_timeout_is_closed_1013() {
    let mut w = World::new(2, &["--write-stall-timeout-ms", "5000"]);
    let room = owned_by(0, 2, "room");
    let ann = w.open(0, "ann", &room, None);
    let bob = w.open(1, "bob", &room, None);
    w.pump();
    frames(&ann, w.now);
    w.say(&ann, &room, "hello");
    w.pump();
    frames(&ann, w.now);
    w.advance(Duration::from_millis(5000));
    let now = w.now;
    w.hubs[1].sweep(now);
    assert_eq!(
        bob.close_request(),
        None,
        "exactly the timeout is not a stall"
    );
    w.advance(Duration::from_millis(1));
    let now = w.now;
    w.hubs[0].sweep(now);
    w.hubs[1].sweep(now);
    assert_eq!(
        bob.close_request(),
        Some((SLOW_CONSUMER_CLOSE, CloseReason::SlowConsumer))
    );
    assert_eq!(ann.close_request(), None, "ann read everything");
}

// ---- budgets and limits -----------------------------------------------

#[test]
fn join_and_leave_frames_share_a_per_connection_budget() {
    let mut w = World::new(2, &[]);
    let home = owned_by(0, 2, "home");
    let ann = w.open(0, "ann", &home, None);
    w.pump();
    frames(&ann, w.now);
    // ROOM_FRAMES_PER_SEC 10: a burst of 20, then one per 100 ms.
    for i in 0..20 {
        w.text(
            &ann,
            &json!({"type": "join_room", "roomId": format!("r-{i}")}).to_string(),
        );
    }
    w.text(&ann, r#"{"type":"leave_room","roomId":"r-0"}"#);
    w.pump();
    let got = frames(&ann, w.now);
    assert_eq!(of_type(&got, "room_joined").len(), 20);
    let errors = of_type(&got, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "rate_limited");
    assert_eq!(errors[0]["retryAfterMs"], 100);
    assert_eq!(
        errors[0]["message"],
        "too many join_room and leave_room frames on this connection; retry in 100 ms"
    );
    assert!(
        of_type(&got, "room_left").is_empty(),
        "refused, not acted on"
    );
    w.advance(Duration::from_millis(100));
    w.text(&ann, r#"{"type":"leave_room","roomId":"r-0"}"#);
    w.pump();
    assert_eq!(
        frames(&ann, w.now),
        [json!({"type": "room_left", "roomId": "r-0"})]
    );
}

#[test]
fn history_frames_have_a_per_connection_budget() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let ann = w.open(0, "ann", &room, None);
    w.pump();
    w.say(&ann, &room, "kept");
    w.pump();
    frames(&ann, w.now);
    // HISTORY_FRAMES_PER_SEC 5: a burst of 10, then one per 200 ms.
    for _ in 0..11 {
        w.text(
            &ann,
            &json!({"type": "history", "roomId": &*room}).to_string(),
        );
    }
    w.pump();
    let got = frames(&ann, w.now);
    let pages = of_type(&got, "history");
    assert_eq!(pages.len(), 10);
    assert_eq!(pages[0]["messages"][0]["content"], "kept");
    let errors = of_type(&got, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "rate_limited");
    assert_eq!(errors[0]["retryAfterMs"], 200);
}

#[test]
fn typing_is_bounded_per_connection_and_per_user_and_room_across_cores() {
    let mut w = World::new(3, &[]);
    let room = owned_by(2, 3, "room");
    let bob = w.open(2, "bob", &room, None);
    let a0 = w.open(0, "ann", &room, None);
    let a1 = w.open(1, "ann", &room, None);
    w.pump();
    frames(&bob, w.now);
    let typing = r#"{"type":"typing","isTyping":true}"#;
    // TYPING_FRAMES_PER_SEC 5: a burst of 10 per connection...
    for _ in 0..12 {
        w.text(&a0, typing);
    }
    w.pump();
    let got = frames(&bob, w.now);
    assert_eq!(of_type(&got, "typing_indicator").len(), 10);
    assert_eq!(
        *of_type(&got, "typing_indicator")[0],
        json!({"type": "typing_indicator", "userId": "ann", "username": "ann", "roomId": &*room, "isTyping": true})
    );
    // ...and the same burst for ann in this room at the owner, whatever
    // connection it comes from: a1's own budget is full, the owner's not.
    for _ in 0..10 {
        w.text(&a1, typing);
    }
    w.pump();
    assert!(of_type(&frames(&bob, w.now), "typing_indicator").is_empty());
    // One second refills five of each.
    w.advance(Duration::from_secs(1));
    for _ in 0..10 {
        w.text(&a1, typing);
    }
    w.pump();
    assert_eq!(of_type(&frames(&bob, w.now), "typing_indicator").len(), 5);
    // Only the sending connection is left out: the user's other one gets
    // it (a1 got a0's ten, a0 got a1's five).
    assert_eq!(of_type(&frames(&a0, w.now), "typing_indicator").len(), 5);
    assert_eq!(of_type(&frames(&a1, w.now), "typing_indicator").len(), 10);
}

#[test]
fn a_repeated_join_is_answered_by_the_members_core_without_mesh_traffic() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let bob = w.open(1, "bob", &room, None);
    let ann = w.open(0, "ann", &room, None);
    w.pump();
    frames(&bob, w.now);
    assert_eq!(
        of_type(&frames(&ann, w.now), "room_joined")[0]["memberCount"],
        2
    );
    assert!(w.quiet());
    w.text(
        &ann,
        &json!({"type": "join_room", "roomId": &*room}).to_string(),
    );
    assert!(w.quiet(), "nothing for the owner core");
    assert_eq!(
        frames(&ann, w.now),
        [json!({"type": "room_joined", "roomId": &*room, "memberCount": 2})]
    );
    assert_eq!(w.pump(), 0);
    // Still a member once, not twice: one copy of the next message.
    w.say(&bob, &room, "once");
    w.pump();
    assert_eq!(contents(&frames(&ann, w.now)), ["once"]);
}

#[test]
fn a_connection_over_max_connections_per_user_is_closed_1008() {
    let mut w = World::new(3, &["--max-connections-per-user", "2"]);
    let room = owned_by(0, 3, "room");
    let ann = owned_by(1, 3, "ann");
    let a0 = w.open(0, &ann, &room, None);
    let a1 = w.open(1, &ann, &room, None);
    let a2 = w.open(2, &ann, &room, None);
    w.pump();
    assert_eq!(a0.close_request(), None);
    assert_eq!(a1.close_request(), None);
    assert_eq!(
        a2.close_request(),
        Some((TOO_MANY_CONNECTIONS_CLOSE, CloseReason::TooManyConnections))
    );
    assert_eq!(types(&frames(&a2, w.now))[0], "room_joined");
    assert_eq!(w.reap(), [(a2.id, 1008)]);
    w.pump();
    assert_eq!(w.hubs[1].presence.connections(&ann), 2);
    // With one closed, a new one fits.
    w.close(&a0, CloseReason::Client);
    let a3 = w.open(2, &ann, &room, None);
    w.pump();
    assert_eq!(a3.close_request(), None);
    assert_eq!(w.online_users(), [ann.to_string()]);
}

#[test]
fn message_length_is_counted_in_characters_on_the_connections_core() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let ann = w.open(0, "ann", &room, None);
    w.pump();
    frames(&ann, w.now);
    // 1,000 two-byte characters: at the limit, accepted.
    w.say(&ann, &room, &"é".repeat(1000));
    w.pump();
    assert_eq!(contents(&frames(&ann, w.now)), ["é".repeat(1000)]);
    w.say(&ann, &room, &"a".repeat(1001));
    assert!(w.quiet(), "refused before any hop");
    assert_eq!(
        frames(&ann, w.now),
        [
            json!({"type": "error", "code": "message_too_long", "message": "message longer than 1000 characters"})
        ]
    );
}

#[test]
fn a_connection_may_be_in_at_most_max_rooms_per_connection_rooms() {
    let mut w = World::new(2, &["--max-rooms-per-connection", "3"]);
    let home = owned_by(0, 2, "home");
    let ann = w.open(0, "ann", &home, None);
    for r in ["r-1", "r-2", "r-3"] {
        w.text(&ann, &json!({"type": "join_room", "roomId": r}).to_string());
    }
    w.pump();
    let got = frames(&ann, w.now);
    assert_eq!(of_type(&got, "room_joined").len(), 3);
    let errors = of_type(&got, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "room_limit");
    assert_eq!(
        errors[0]["message"],
        "a connection may be in at most 3 rooms"
    );
    // Leaving one makes room for another.
    w.text(&ann, r#"{"type":"leave_room","roomId":"r-1"}"#);
    w.text(&ann, r#"{"type":"join_room","roomId":"r-3"}"#);
    w.pump();
    assert_eq!(types(&frames(&ann, w.now)), ["room_left", "room_joined"]);
}

#[test]
fn a_message_for_a_room_the_connection_is_not_in_is_refused() {
    let mut w = World::new(2, &[]);
    let home = owned_by(0, 2, "home");
    let ann = w.open(0, "ann", &home, None);
    w.pump();
    frames(&ann, w.now);
    w.say(&ann, "elsewhere", "hi");
    assert!(w.quiet());
    assert_eq!(
        frames(&ann, w.now),
        [json!({"type": "error", "code": "not_in_room", "message": "not in room elsewhere"})]
    );
}

/// Both joins find the connection pending; only the ticket tells the
/// member core that the first answer (no `since`, no replay) is not the
/// rejoin's. Without it m2 and m3 were never sent.
#[test]
fn a_rejoin_with_since_after_leaving_a_pending_join_gets_its_replay() {
    let mut w = World::new(2, &[]);
    let home = owned_by(0, 2, "home");
    let room = owned_by(1, 2, "room");
    let bob = w.open(1, "bob", &room, None);
    for i in 1..=3 {
        w.say(&bob, &room, &format!("m{i}"));
    }
    w.pump();
    let sent = ids(&frames(&bob, w.now));
    let ann = w.open(0, "ann", &home, None);
    w.pump();
    frames(&ann, w.now);
    // A join, a leave while it is still on its way to the owner, and a
    // join with `since` (the client saw m1 earlier), all before the owner
    // answers the first.
    w.text(
        &ann,
        &json!({"type": "join_room", "roomId": &*room}).to_string(),
    );
    w.text(
        &ann,
        &json!({"type": "leave_room", "roomId": &*room}).to_string(),
    );
    let rejoin = json!({"type": "join_room", "roomId": &*room, "since": &sent[0]});
    w.text(&ann, &rejoin.to_string());
    w.pump();
    let got = frames(&ann, w.now);
    assert_eq!(
        types(&got),
        ["room_left", "room_joined", "message", "message"]
    );
    assert_eq!(got[1]["recovered"], true);
    assert_eq!(contents(&got), ["m2", "m3"]);
}

// ---- permessage-deflate -------------------------------------------------

/// Every message frame queued for `client`, taken off its queue as
/// `(compressed, JSON)`: a compressed frame (RSV1) is inflated as a client
/// that negotiated permessage-deflate would.
fn message_frames(client: &crate::client::Client, now: std::time::Instant) -> Vec<(bool, Value)> {
    use crate::deflate::{Agreed, Inflater};
    let mut out = Vec::new();
    let mut outbound = client.outbound().borrow_mut();
    for f in outbound.frames() {
        let header = f.len() - crate::redis::link::ws_payload(f).len();
        let payload = &f[header..];
        let (compressed, json) = match f[0] {
            0x81 => (false, payload.to_vec()),
            0xc1 => {
                let mut json = Vec::new();
                Inflater::new(Agreed {
                    client_no_context_takeover: true,
                })
                .inflate(payload, crate::ws::MAX_MESSAGE_SIZE, &mut json)
                .expect("a valid compressed frame");
                (true, json)
            }
            _ => continue,
        };
        let json: Value = serde_json::from_slice(&json).expect("JSON");
        if json["type"] == "message" {
            out.push((compressed, json));
        }
    }
    let bytes = outbound.bytes();
    outbound.consume(bytes, now);
    out
}

/// Sums one counter over every hub of the world.
fn total(w: &World, counter: impl Fn(&crate::metrics::CoreSnapshot) -> u64) -> u64 {
    w.hubs.iter().map(|h| counter(&h.metrics)).sum()
}

#[test]
fn a_broadcast_is_compressed_once_for_every_member_that_negotiated_it() {
    let mut w = World::new(3, &["--ws-compression", "true"]);
    let room = owned_by(0, 3, "room");
    // Three members that negotiated the extension, one per core, and one
    // that did not, on yet another connection of core 1.
    let packed: Vec<_> = (0..3)
        .map(|core| w.open_deflate(core, &format!("z{core}"), &room))
        .collect();
    let plain = w.open(1, "plain", &room, None);
    w.pump();
    for c in packed.iter().chain([&plain]) {
        message_frames(c, w.now);
    }
    let long = "the release ships on friday, please review the notes ".repeat(10);
    w.say(&plain, &room, &long);
    w.pump();
    assert_eq!(total(&w, |m| m.compressed_frames), 1);
    assert_eq!(
        w.hubs[0].metrics.compressed_frames, 1,
        "at the room's owner"
    );
    assert_eq!(total(&w, |m| m.compressed_deliveries), 3);
    let got = message_frames(&plain, w.now);
    assert_eq!(got.len(), 1);
    assert!(!got[0].0, "the plain member gets the plain frame");
    assert_eq!(got[0].1["content"], long.as_str());
    for c in &packed {
        let mine = message_frames(c, w.now);
        assert_eq!(mine.len(), 1);
        assert!(mine[0].0, "compressed for a member that negotiated it");
        assert_eq!(mine[0].1, got[0].1, "the same message");
    }
    let saved = total(&w, |m| m.compression_saved_bytes);
    assert!(saved > 3 * 300, "saved {saved} bytes");

    // Under WS_COMPRESSION_MIN_BYTES (256 by default): plain for everyone.
    w.say(&plain, &room, "short");
    w.pump();
    assert_eq!(total(&w, |m| m.compressed_frames), 1);
    assert_eq!(total(&w, |m| m.compressed_deliveries), 3);
    for c in packed.iter().chain([&plain]) {
        let mine = message_frames(c, w.now);
        assert_eq!(mine.len(), 1);
        assert!(!mine[0].0);
        assert_eq!(mine[0].1["content"], "short");
    }
}

#[test]
fn without_ws_compression_nothing_is_compressed() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    // Cannot happen through the upgrade with the setting off, but even
    // then the owner makes no compressed copy.
    let a = w.open_deflate(0, "a", &room);
    w.pump();
    message_frames(&a, w.now);
    w.say(&a, &room, &"x".repeat(900));
    w.pump();
    let got = message_frames(&a, w.now);
    assert_eq!(got.len(), 1);
    assert!(!got[0].0);
    assert_eq!(total(&w, |m| m.compressed_frames), 0);
    assert_eq!(total(&w, |m| m.compressed_deliveries), 0);
}

#[test]
fn a_room_gets_compressed_copies_only_while_a_member_negotiated_it() {
    let mut w = World::new(2, &["--ws-compression", "true"]);
    let room = owned_by(1, 2, "room");
    let long = "a message long enough to be worth compressing, ".repeat(8);
    let plain = w.open(0, "plain", &room, None);
    w.pump();
    w.say(&plain, &room, &long);
    w.pump();
    assert_eq!(
        total(&w, |m| m.compressed_frames),
        0,
        "nobody negotiated it"
    );
    // A compressed member joins on the other core, by a join_room frame.
    let packed = w.open_deflate(0, "packed", &owned_by(0, 2, "home"));
    w.pump();
    w.text(
        &packed,
        &json!({"type": "join_room", "roomId": &*room}).to_string(),
    );
    w.pump();
    w.say(&plain, &room, &long);
    w.pump();
    assert_eq!(total(&w, |m| m.compressed_frames), 1);
    assert_eq!(total(&w, |m| m.compressed_deliveries), 1);
    let got = message_frames(&packed, w.now);
    assert_eq!(got.last().map(|(c, _)| *c), Some(true));
    // Once it leaves (or closes), the room goes back to plain only.
    w.text(
        &packed,
        &json!({"type": "leave_room", "roomId": &*room}).to_string(),
    );
    w.pump();
    w.say(&plain, &room, &long);
    w.pump();
    assert_eq!(total(&w, |m| m.compressed_frames), 1);
    w.text(
        &packed,
        &json!({"type": "join_room", "roomId": &*room}).to_string(),
    );
    w.pump();
    w.close(&packed, CloseReason::Client);
    w.pump();
    w.say(&plain, &room, &long);
    w.pump();
    assert_eq!(total(&w, |m| m.compressed_frames), 1);
    assert_eq!(
        w.hubs[1].owned.get(&room).map(|r| r.deflate_members),
        Some(0)
    );
}
