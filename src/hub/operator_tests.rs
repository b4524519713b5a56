//! The operator API's rules at the hub (contract section 8), on two hubs
//! wired by the test mesh: an operator's message takes its place in the
//! room's one order, a delete reaches the members on every core and
//! leaves the history, a ban closes the user's connections everywhere
//! with 4003, refuses their message frames and ends on time, a
//! disconnect closes with 4002.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::testkit::{contents, frames, ids, message_id, of_type, owned_by, World};
use super::{wall_ms, Asked, BANNED_CLOSE, DISCONNECTED_CLOSE};
use crate::auth::Identity;
use crate::shard::{Answer, BanChange, Query};

/// The answer of a query asked through the mesh, once pumped.
fn answer(w: &mut World, asked: Asked) -> Answer {
    match asked {
        Asked::Ready(a) => a,
        Asked::Later(mut rx) => {
            w.pump();
            rx.try_recv().expect("open").expect("answered")
        }
    }
}

fn system() -> Identity {
    Identity {
        user_id: Arc::from("system"),
        username: Arc::from("System"),
        admin: false,
    }
}

/// Asks the user's owner, from core `from`, to ban `user` for `secs`
/// (None: lift the ban).
fn ban(w: &mut World, from: usize, user: &str, secs: Option<u64>) -> Answer {
    let at_ms = wall_ms(w.wall());
    let change = BanChange {
        user: Arc::from(user),
        until_ms: secs.map(|s| at_ms + s * 1000),
        reason: Some("spam".into()),
        actor: Arc::from("root"),
        at_ms,
    };
    let owner = w.hubs[from].owner_of(user);
    let now = w.now;
    let asked = w.hubs[from].ask(owner, Query::Ban(Box::new(change)), now);
    answer(w, asked)
}

#[test]
fn an_operator_message_takes_its_place_in_the_rooms_order() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let a = w.open(0, "ann", &room, None);
    let b = w.open(1, "bob", &room, None);
    w.pump();
    frames(&a, w.now);
    frames(&b, w.now);
    w.say(&a, &room, "one");
    // Each step lands before the next: messages of different connections
    // have no order of their own until their room's owner gives them one.
    w.pump();
    let (now, wall) = (w.now, w.wall());
    // Published from core 0; the room's owner is core 1.
    let asked = w.hubs[0].publish_as_operator(
        room.clone(),
        system(),
        "maintenance at noon".into(),
        now,
        wall,
    );
    let Answer::Frame(frame) = answer(&mut w, asked) else {
        panic!("expected the message frame");
    };
    w.say(&b, &room, "two");
    w.pump();
    let published: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(published["type"], "message");
    assert_eq!(published["userId"], "system");
    assert_eq!(published["username"], "System");
    assert_eq!(published["roomId"], &*room);
    let got_a = frames(&a, w.now);
    let got_b = frames(&b, w.now);
    assert_eq!(contents(&got_a), ["one", "maintenance at noon", "two"]);
    assert_eq!(ids(&got_a), ids(&got_b), "one order on both cores");
    assert_eq!(ids(&got_a)[1], published["messageId"].as_str().unwrap());
    // Stored like a member's message.
    let stored = w.hubs[1].history.page(&room, None, None, 10);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[1].json, frame);
    // It is not acknowledged to any connection.
    assert!(of_type(&got_a, "ack").is_empty());
}

#[test]
fn an_operator_message_is_moderated() {
    let mut w = World::new(2, &["--moderation-patterns", "buy\\s+now"]);
    let room = owned_by(1, 2, "room");
    // The worlds' hubs run without a moderator; give the owner one.
    w.hubs[1].moderator =
        Some(crate::moderation::Moderator::new(Vec::new(), &["buy\\s+now".to_string()]).unwrap());
    let a = w.open(0, "ann", &room, None);
    w.pump();
    frames(&a, w.now);
    let (now, wall) = (w.now, w.wall());
    let asked = w.hubs[0].publish_as_operator(room.clone(), system(), "buy now".into(), now, wall);
    let Answer::Frame(frame) = answer(&mut w, asked) else {
        panic!("expected the error frame");
    };
    let refused: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "message_blocked");
    assert!(frames(&a, w.now).is_empty(), "nothing broadcast");
}

#[test]
fn a_delete_reaches_members_on_every_core_and_leaves_the_history() {
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let a = w.open(0, "ann", &room, None);
    let b = w.open(1, "bob", &room, None);
    w.pump();
    w.say(&a, &room, "keep");
    w.say(&a, &room, "oops");
    w.pump();
    frames(&b, w.now);
    let sent = ids(&frames(&a, w.now));
    let (keep, oops) = (message_id(&sent[0]), message_id(&sent[1]));
    let delete = |id| Query::Delete {
        room: room.clone(),
        id,
        actor: Arc::from("root"),
        at_ms: 0,
    };
    let now = w.now;
    let asked = w.hubs[0].ask(1, delete(oops), now);
    assert!(matches!(answer(&mut w, asked), Answer::Done));
    for member in [&a, &b] {
        let got = frames(member, w.now);
        assert_eq!(
            got,
            [
                serde_json::json!({"type": "message_deleted", "roomId": &*room, "messageId": sent[1]})
            ]
        );
    }
    let left: Vec<_> = w.hubs[1]
        .history
        .page(&room, None, None, 10)
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [keep]);
    assert_eq!(w.hubs[1].metrics.audit_operator[1], 1, "one delete record");
    // Unknown now, and an id never stored: not found, nobody told.
    for id in [oops, message_id("01ARZ3NDEKTSV4RRFFQ69G5FAV")] {
        let now = w.now;
        let asked = w.hubs[0].ask(1, delete(id), now);
        assert!(matches!(answer(&mut w, asked), Answer::NotFound));
    }
    assert!(frames(&a, w.now).is_empty());
    // A join with `since` does not replay it.
    let c = w.open(
        0,
        "cat",
        &room,
        Some(message_id("00000000000000000000000000")),
    );
    w.pump();
    assert_eq!(contents(&frames(&c, w.now)), ["keep"]);
}

#[test]
fn a_ban_closes_every_connection_with_4003_refuses_messages_and_ends_on_time() {
    let mut w = World::new(2, &[]);
    let room = owned_by(0, 2, "room");
    let ann = owned_by(1, 2, "ann"); // her ban is owned by core 1
    let a0 = w.open(0, &ann, &room, None);
    let a1 = w.open(1, &ann, &room, None);
    let bob = w.open(0, "bob", &room, None);
    w.pump();
    frames(&bob, w.now);
    // Asked on core 0; answered once both cores hold it.
    assert!(matches!(ban(&mut w, 0, &ann, Some(60)), Answer::Done));
    for hub in &w.hubs {
        assert!(hub.banned_until(&ann, w.wall()).is_some());
        assert!(hub.banned_until("bob", w.wall()).is_none());
    }
    let mut closed = w.reap();
    closed.sort();
    assert_eq!(closed, [(a0.id, BANNED_CLOSE), (a1.id, BANNED_CLOSE)]);
    assert_eq!(w.hubs[1].metrics.audit_operator[2], 1, "one ban record");
    // A connection that slipped in before the ban (or a frame in flight):
    // its messages are refused with `forbidden`.
    let late = w.open(0, &ann, &room, None);
    w.pump();
    frames(&late, w.now);
    w.say(&late, &room, "let me in");
    w.pump();
    let got = frames(&late, w.now);
    assert_eq!(of_type(&got, "error")[0]["code"], "forbidden");
    assert!(contents(&frames(&bob, w.now)).is_empty());
    // The ban ends at its end time.
    w.advance(Duration::from_secs(61));
    assert!(w.hubs[0].banned_until(&ann, w.wall()).is_none());
    w.say(&late, &room, "back");
    w.pump();
    assert_eq!(contents(&frames(&bob, w.now)), ["back"]);
    // Banned again, then lifted from the other core.
    assert!(matches!(ban(&mut w, 1, &ann, Some(600)), Answer::Done));
    assert!(w.hubs[0].banned_until(&ann, w.wall()).is_some());
    assert!(matches!(ban(&mut w, 0, &ann, None), Answer::Done));
    for hub in &w.hubs {
        assert!(hub.banned_until(&ann, w.wall()).is_none());
    }
    assert_eq!(w.hubs[1].metrics.audit_operator[3], 1, "one unban record");
}

#[test]
fn a_disconnect_closes_every_connection_of_the_user_with_4002() {
    let mut w = World::new(2, &[]);
    let room = owned_by(0, 2, "room");
    let a0 = w.open(0, "ann", &room, None);
    let a1 = w.open(1, "ann", &room, None);
    let bob = w.open(1, "bob", &room, None);
    w.pump();
    let wall = w.wall();
    w.hubs[0].disconnect_user(Arc::from("ann"), Arc::from("root"), wall);
    w.pump();
    let mut closed = w.reap();
    closed.sort();
    assert_eq!(
        closed,
        [(a0.id, DISCONNECTED_CLOSE), (a1.id, DISCONNECTED_CLOSE)]
    );
    assert!(bob.close_request().is_none());
    assert_eq!(w.hubs[0].metrics.audit_operator[4], 1);
    // Not a ban: she may come back.
    assert!(w.hubs[0].banned_until("ann", w.wall()).is_none());
}

#[test]
fn the_ban_list_is_bounded_and_forgets_ended_bans_to_make_room() {
    use super::{Bans, MAX_BANS};
    let mut bans = Bans::default();
    assert_eq!(bans.until("anyone", 0), None);
    for i in 0..MAX_BANS {
        // Half end at 1,000 ms, half at 10,000 ms.
        let end = if i % 2 == 0 { 1_000 } else { 10_000 };
        bans.set(Arc::from(format!("u{i}")), Some(end), 0);
    }
    assert_eq!(bans.len(), MAX_BANS);
    // Full: a new user has no room while every ban runs; a change of a
    // banned user always has.
    assert!(!bans.has_room("new", 500));
    assert!(bans.has_room("u1", 500));
    // Once half of them ended, pruning makes room.
    assert!(bans.has_room("new", 1_000));
    assert_eq!(bans.len(), MAX_BANS / 2);
    bans.set(Arc::from("new"), Some(5_000), 1_000);
    assert_eq!(bans.until("new", 1_000), Some(5_000));
    assert_eq!(bans.until("new", 5_000), None, "ended at its end time");
    // A ban already over when it arrives, and a lift, remove the entry.
    bans.set(Arc::from("u1"), Some(900), 1_000);
    assert_eq!(bans.until("u1", 1_000), None);
    bans.set(Arc::from("u3"), None, 1_000);
    assert_eq!(bans.len(), MAX_BANS / 2 - 1);
}

#[test]
fn another_instances_actions_are_carried_out_on_every_core_here() {
    use crate::redis::envelope::Operator;
    let mut w = World::new(2, &[]);
    let room = owned_by(1, 2, "room");
    let eve = owned_by(0, 2, "eve");
    let a = w.open(0, "ann", &room, None);
    let e1 = w.open(1, &eve, &room, None);
    let d0 = w.open(0, "dan", &room, None);
    w.pump();
    w.say(&a, &room, "theirs");
    w.pump();
    let id = ids(&frames(&a, w.now))[0].clone();
    frames(&e1, w.now);
    let (now, wall) = (w.now, w.wall());
    // Arrives on core 0 (not the room's owner): it goes there.
    let delete = Operator::Delete {
        r: room.to_string(),
        i: id.clone(),
    };
    w.hubs[0].operator_from_cluster(delete, now, wall);
    w.pump();
    for member in [&a, &e1] {
        assert_eq!(of_type(&frames(member, w.now), "message_deleted").len(), 1);
    }
    assert!(w.hubs[1].history.page(&room, None, None, 10).is_empty());
    // Malformed ids are ignored.
    let bad = Operator::Delete {
        r: room.to_string(),
        i: "nope".into(),
    };
    w.hubs[1].operator_from_cluster(bad, now, wall);
    w.pump();
    assert!(frames(&a, w.now).is_empty());
    // A ban arriving on core 1 goes to Eve's owner (core 0), which copies it
    // to every core: her connection on core 1 closes with 4003.
    let ban = Operator::Ban {
        u: eve.to_string(),
        t: Some(wall_ms(wall) + 60_000),
    };
    w.hubs[1].operator_from_cluster(ban, now, wall);
    w.pump();
    assert_eq!(w.reap(), [(e1.id, BANNED_CLOSE)]);
    assert!(w.hubs[1].banned_until(&eve, w.wall()).is_some());
    // No audit record here: the instance that took the request wrote it.
    assert_eq!(w.hubs[0].metrics.audit_operator, [0; 5]);
    let lift = Operator::Ban {
        u: eve.to_string(),
        t: None,
    };
    w.hubs[1].operator_from_cluster(lift, now, wall);
    w.pump();
    assert!(w.hubs[1].banned_until(&eve, w.wall()).is_none());
    let disconnect = Operator::Disconnect { u: "dan".into() };
    w.hubs[1].operator_from_cluster(disconnect, now, wall);
    w.pump();
    assert_eq!(w.reap(), [(d0.id, DISCONNECTED_CLOSE)]);
}
