//! Two hubs, cores 0 and 1 of 2, driven by hand with no executor: the test
//! calls the entry points with a chosen `now`, moves each hub's outbox to
//! the other hub's `on_shard_msg`, and reads the frames queued on each
//! connection.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::testkit::{contents as messages, frames, identity, pump, settings};
use super::Hub;
use crate::client::Client;
use crate::shard::shard_for;

/// Hubs for cores 0 and 1 of 2 with the default settings.
fn two_hubs(now: Instant) -> Vec<Hub> {
    let settings = settings(&[]);
    (0..2)
        .map(|core| Hub::new(core, 2, &settings, None, now))
        .collect()
}

#[test]
fn a_message_in_a_room_owned_by_the_other_core_reaches_members_on_both_in_order() {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut hubs = two_hubs(t0);
    let room: Arc<str> = (0..)
        .map(|i| format!("room-{i}"))
        .find(|r| shard_for(r, 2) == 1)
        .expect("a room owned by core 1")
        .into();
    // Ann runs on core 0 (not the room's owner), Bob on core 1 (the owner).
    let ann: Rc<Client> = hubs[0].open(identity("ann"), room.clone(), None, t0);
    let bob: Rc<Client> = hubs[1].open(identity("bob"), room.clone(), None, t0);
    assert!(pump(&mut hubs, t0, wall) > 0, "ann's join crosses the mesh");
    let types = |got: &[Value]| -> Vec<String> {
        got.iter()
            .map(|f| f["type"].as_str().expect("type").to_string())
            .collect()
    };
    let (ann_joined, bob_joined) = (frames(&ann, t0), frames(&bob, t0));
    // Bob's join is local to the owner and counted at once; ann's reaches
    // the owner when the mesh is pumped, after bob's.
    assert_eq!(types(&ann_joined), ["room_joined", "presence", "presence"]);
    assert_eq!(types(&bob_joined), ["room_joined", "presence", "presence"]);
    assert_eq!(ann_joined[0]["memberCount"], 2);
    assert_eq!(bob_joined[0]["memberCount"], 1);
    for got in [&ann_joined, &bob_joined] {
        assert_eq!(
            (got[1]["userId"].as_str(), got[2]["userId"].as_str()),
            (Some("ann"), Some("bob"))
        );
    }
    let t1 = t0 + Duration::from_millis(5);
    for (n, text) in ["one", "two", "three"].iter().enumerate() {
        let mut frame = format!(r#"{{"type":"message","content":"{text}","clientMsgId":"c-{n}"}}"#)
            .into_bytes();
        hubs[0].on_text(&ann, &mut frame, t1, wall);
    }
    // Nothing moves until the mesh is pumped: the owner is core 1.
    assert!(messages(&frames(&ann, t1)).is_empty());
    pump(&mut hubs, t1, wall);
    let ann_got = frames(&ann, t1);
    let bob_got = frames(&bob, t1);
    assert_eq!(messages(&ann_got), ["one", "two", "three"]);
    assert_eq!(messages(&bob_got), ["one", "two", "three"]);
    // Same ids on both cores, increasing, each acknowledged to ann once.
    let ids = |got: &[Value]| -> Vec<String> {
        got.iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["messageId"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids(&ann_got), ids(&bob_got));
    let mut sorted = ids(&ann_got);
    sorted.sort();
    assert_eq!(sorted, ids(&ann_got));
    let acks: Vec<&str> = ann_got
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["clientMsgId"].as_str().expect("clientMsgId"))
        .collect();
    assert_eq!(acks, ["c-0", "c-1", "c-2"]);
    // The stamp is the wall clock the test passed in.
    let stamped = ann_got
        .iter()
        .find(|f| f["type"] == "message")
        .expect("one");
    assert_eq!(stamped["timestamp"], "2027-01-15T08:00:00.000Z");
    assert_eq!(pump(&mut hubs, t1, wall), 0, "quiet afterwards");
}
