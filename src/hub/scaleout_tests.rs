//! The hub's side of an own message whose copy does not come back from
//! Redis, on one core with a detached Redis link (commands land in a
//! channel the test reads; events are handed in by the test), time passed
//! in, no executor: refused with its `clientMsgId` released, or accepted with the
//! script's id, and the late copy dropped.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser as _;
use serde_json::Value;
use ulid::Ulid;

use super::Hub;
use crate::auth::Identity;
use crate::client::Client;
use crate::health::{BackendHealth, State};
use crate::redis::link::{self, ScaleOut, ECHO_TIMEOUT, REPLY_TIMEOUT};
use crate::redis::worker::{Command, CommandReceiver, Event, Link, Sequenced};
use crate::shard::Publish;

const INSTANCE: &str = "0123456789abcdef";

/// Runs `test` on a one-core hub with Redis up.
fn on_one_core(test: impl FnOnce(&mut Hub, &mut CommandReceiver)) {
    let settings = crate::config::Cli::try_parse_from(["chatd"])
        .expect("defaults")
        .settings;
    let mut hub = Hub::new(0, 1, &settings, None, Instant::now());
    let health = Arc::new(BackendHealth::default());
    health.redis.set(State::Up);
    let (link, mut rx) = Link::detached(64, INSTANCE, health);
    hub.set_broker(Box::new(ScaleOut::new(link, 0)));
    test(&mut hub, &mut rx);
    assert!(hub.outbox_mut().is_empty(), "one core sends nothing");
}

/// The wall clock as the runtime would read it at `now`: the scenario's
/// ids come from Redis or the test, so any fixed moment serves.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// The JSON of every text frame queued for `client` so far, taken.
fn frames(client: &Client) -> Vec<Value> {
    let mut outbound = client.outbound().borrow_mut();
    let out = outbound
        .frames()
        .iter()
        .filter(|f| f.first() == Some(&0x81)) // text frames; pings skipped
        .map(|f| serde_json::from_slice(link::ws_payload(f)).expect("JSON"))
        .collect();
    let bytes = outbound.bytes();
    outbound.consume(bytes, Instant::now());
    out
}

/// The next command the hub queued for the Redis thread.
fn next_command(rx: &mut CommandReceiver) -> Option<Command> {
    rx.try_recv().ok()
}

/// Opens ann's connection to room `r` and answers its join's count.
fn open(hub: &mut Hub, rx: &mut CommandReceiver, t0: Instant) -> Rc<Client> {
    let ann = Identity {
        user_id: Arc::from("ann"),
        username: Arc::from("Ann"),
        admin: false,
    };
    let client = hub.open(ann, Arc::from("r"), None, t0);
    let mut join = None;
    while let Some(cmd) = next_command(rx) {
        if let Command::Join { token, .. } = cmd {
            join = Some(token);
        }
    }
    let token = join.expect("the join asks Redis for the count");
    hub.on_broker_event(
        Event::JoinCounted {
            token,
            count: Some(1),
        },
        t0,
        wall(),
    );
    let joined = frames(&client);
    assert_eq!(joined[0]["type"], "room_joined");
    client
}

/// Sends a message with `cmid` from `client`; returns the token of the
/// publish it queued, if it queued one.
fn send(
    hub: &mut Hub,
    rx: &mut CommandReceiver,
    client: &Client,
    cmid: &str,
    now: Instant,
) -> Option<u64> {
    let p = Publish {
        room: Arc::from("r"),
        user: client.identity.clone(),
        content: "hello".into(),
        client_msg_id: Some(cmid.into()),
        conn: client.id,
        received_at: now,
    };
    hub.publish(Box::new(p), now, wall());
    let mut token = None;
    while let Some(cmd) = next_command(rx) {
        if let Command::Publish(p) = cmd {
            token = Some(p.token);
        }
    }
    token
}

#[test]
fn an_unconfirmed_message_is_refused_and_its_client_msg_id_released() {
    on_one_core(|hub, rx| {
        let t0 = Instant::now();
        let client = open(hub, rx, t0);
        let first = send(hub, rx, &client, "c-1", t0).expect("published");
        // Neither the copy nor the reply: nothing yet at the echo timeout.
        hub.sweep(t0 + ECHO_TIMEOUT);
        assert!(frames(&client).is_empty());
        // A retry meanwhile waits for the first send's outcome.
        assert_eq!(send(hub, rx, &client, "c-1", t0 + ECHO_TIMEOUT), None);
        hub.sweep(t0 + REPLY_TIMEOUT);
        let got = frames(&client);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["code"].as_str()),
            (Some("error"), Some("unavailable"))
        );
        // The retry that was waiting is answered too, not left hanging.
        assert_eq!(got[1]["type"], "error", "{got:?}");
        // Released: a retry with the same clientMsgId is sequenced anew.
        let later = t0 + REPLY_TIMEOUT + Duration::from_secs(1);
        let retry = send(hub, rx, &client, "c-1", later).expect("published again");
        assert_ne!(retry, first);
        // The first one's reply and copy arriving now change nothing.
        let id = Ulid::new();
        hub.on_broker_event(Event::Replied { token: first, id }, later, wall());
        hub.on_broker_event(own_copy(first, id), later, wall());
        assert!(frames(&client).is_empty(), "the late copy is dropped");
    });
}

/// This instance's own copy of the message of `token`, as the
/// subscription delivers it.
fn own_copy(token: u64, id: Ulid) -> Event {
    Event::Message(Box::new(Sequenced {
        room: Arc::from("r"),
        id,
        own_token: Some(token),
        user_id: Arc::from("ann"),
        username: Arc::from("Ann"),
        content: "hello".into(),
        arrived: Instant::now(),
    }))
}

#[test]
fn an_overdue_message_is_accepted_with_the_scripts_id_once() {
    on_one_core(|hub, rx| {
        let t0 = Instant::now();
        let client = open(hub, rx, t0);
        let token = send(hub, rx, &client, "c-2", t0).expect("published");
        let id = Ulid::new();
        hub.on_broker_event(Event::Replied { token, id }, t0, wall());
        hub.sweep(t0 + ECHO_TIMEOUT - Duration::from_millis(1));
        assert!(frames(&client).is_empty(), "still waiting for the copy");
        hub.sweep(t0 + ECHO_TIMEOUT);
        let got = frames(&client);
        let id_text = id.to_string();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["messageId"].as_str()),
            (Some("message"), Some(id_text.as_str()))
        );
        assert_eq!(
            (
                got[1]["type"].as_str(),
                got[1]["clientMsgId"].as_str(),
                got[1]["messageId"].as_str()
            ),
            (Some("ack"), Some("c-2"), Some(id_text.as_str()))
        );
        assert_eq!(hub.history.since("r", Ulid::nil(), 10).len(), 1, "stored");
        // The copy arriving late is not delivered a second time.
        hub.on_broker_event(own_copy(token, id), t0 + ECHO_TIMEOUT, wall());
        assert!(frames(&client).is_empty());
        // A retry is answered with the same id, not published again.
        let later = t0 + ECHO_TIMEOUT + Duration::from_secs(1);
        assert_eq!(send(hub, rx, &client, "c-2", later), None);
        let got = frames(&client);
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["messageId"].as_str()),
            (Some("ack"), Some(id_text.as_str()))
        );
        // A lost subscription settles at once, without waiting for the timeout.
        let token = send(hub, rx, &client, "c-3", later).expect("published");
        let id = Ulid::new();
        hub.on_broker_event(Event::Replied { token, id }, later, wall());
        hub.on_broker_event(Event::EchoesLost, later, wall());
        let got = frames(&client);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1]["clientMsgId"], "c-3");
        assert_eq!(got[1]["messageId"], id.to_string());
    });
}
