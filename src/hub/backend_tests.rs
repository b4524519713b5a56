//! The hub against a history that answers later, on one core with no
//! executor: reads it defers are completed by `Hub::on_backend_event`
//! with the rows (or the failure) a backend thread would queue, and a
//! history that does not admit refuses messages. The memory store behind
//! the script is the real one, so everything the hub does with the
//! answers is what it does with Postgres's.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser as _;
use serde_json::Value;
use ulid::Ulid;

use super::{Asked, Hub};
use crate::auth::Identity;
use crate::client::Client;
use crate::events::BackendEvent;
use crate::history::{
    memory_replay, Deletion, History, HistoryStore, MemoryHistory, Page, Replaying, StoredMessage,
};
use crate::pg::{ReadFailed, ReadResult};
use crate::protocol::{self, ChatMessage};
use crate::redis::link::ws_payload;
use crate::shard::{Answer, Query, Replay};

/// What the scripted history was asked, shared with the test.
#[derive(Default)]
struct Script {
    /// Defer every page and replay read (else answer from memory).
    defer: bool,
    /// Refuse new messages.
    full: bool,
    /// Read ids of the deferred reads, oldest first.
    reads: Vec<u64>,
}

/// Memory that defers its reads while the script says so.
struct Scripted {
    /// The answers' memory.
    memory: MemoryHistory,
    /// The test's controls and record.
    script: Rc<RefCell<Script>>,
}

impl HistoryStore for Scripted {
    fn append(&mut self, room: &Arc<str>, msg: StoredMessage) {
        self.memory.append(room, msg);
    }

    fn page(
        &self,
        room: &str,
        before: Option<Ulid>,
        after: Option<Ulid>,
        limit: usize,
    ) -> Vec<StoredMessage> {
        self.memory.page(room, before, after, limit)
    }

    fn since(&self, room: &str, since: Ulid, max: usize) -> Vec<StoredMessage> {
        self.memory.since(room, since, max)
    }

    fn first_id(&self, room: &str) -> Option<Ulid> {
        self.memory.first_id(room)
    }
}

impl History for Scripted {
    fn store(&mut self, message: &ChatMessage, stored: StoredMessage, _own: bool) {
        self.memory.append(&message.room_id, stored);
    }

    fn admit(&self) -> bool {
        !self.script.borrow().full
    }

    fn read_page(
        &mut self,
        read: u64,
        room: &Arc<str>,
        before: Option<Ulid>,
        after: Option<Ulid>,
        limit: usize,
    ) -> Page {
        let mut script = self.script.borrow_mut();
        if !script.defer {
            return Page::Now(self.memory.page(room, before, after, limit));
        }
        script.reads.push(read);
        Page::Pending
    }

    fn page_rows(
        &mut self,
        rows: ReadResult,
        _room: &str,
        _before: Option<Ulid>,
        _after: Option<Ulid>,
        _limit: usize,
    ) -> Option<Vec<StoredMessage>> {
        rows.ok()
    }

    fn read_replay(&mut self, read: u64, room: &Arc<str>, since: Ulid) -> Replaying {
        let mut script = self.script.borrow_mut();
        if !script.defer {
            return Replaying::Now(memory_replay(&self.memory, room, since));
        }
        script.reads.push(read);
        Replaying::Pending
    }

    fn replay_rows(&mut self, rows: ReadResult, room: &str, since: Ulid) -> Replay {
        match rows {
            Ok(rows) => Replay {
                messages: rows.into_iter().map(|m| m.json).collect(),
                recovered: Some(true),
            },
            Err(_) => memory_replay(&self.memory, room, since),
        }
    }

    fn delete(&mut self, read: u64, room: &Arc<str>, id: Ulid) -> Deletion {
        if let Some(removed) = self.memory.remove(room, id) {
            return Deletion::Now(Some(removed));
        }
        let mut script = self.script.borrow_mut();
        if !script.defer {
            return Deletion::Now(None);
        }
        script.reads.push(read);
        Deletion::Pending
    }

    fn delete_rows(
        &mut self,
        rows: ReadResult,
        _room: &Arc<str>,
        id: Ulid,
    ) -> Result<Option<StoredMessage>, crate::pg::ReadFailed> {
        Ok(rows?.into_iter().find(|m| m.id == id))
    }
}

/// A one-core hub with the scripted history.
fn hub(now: Instant) -> (Hub, Rc<RefCell<Script>>) {
    let settings = crate::config::Cli::try_parse_from(["chatd"])
        .expect("defaults")
        .settings;
    let mut hub = Hub::new(0, 1, &settings, None, now);
    let script = Rc::new(RefCell::new(Script::default()));
    hub.set_history(Box::new(Scripted {
        memory: Hub::memory_history(&settings, 1),
        script: script.clone(),
    }));
    (hub, script)
}

fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn ann() -> Identity {
    Identity {
        user_id: Arc::from("ann"),
        username: Arc::from("Ann"),
        admin: false,
    }
}

/// The JSON of every text frame queued for `client` so far, taken.
fn frames(client: &Client, now: Instant) -> Vec<Value> {
    let mut outbound = client.outbound().borrow_mut();
    let out = outbound
        .frames()
        .iter()
        .filter(|f| f.first() == Some(&0x81))
        .map(|f| serde_json::from_slice(ws_payload(f)).expect("JSON"))
        .collect();
    let bytes = outbound.bytes();
    outbound.consume(bytes, now);
    out
}

/// A stored row as Postgres would return it: the `message` frame's JSON.
fn row(n: u64) -> StoredMessage {
    let id = Ulid::from_parts(1_000 + n, 0);
    let json = protocol::encode_message(&ChatMessage {
        id,
        room_id: Arc::from("r"),
        user_id: Arc::from("bob"),
        username: Arc::from("Bob"),
        content: format!("old {n}"),
        timestamp_ms: id.timestamp_ms(),
    });
    StoredMessage {
        id,
        json: json.into(),
    }
}

fn text(hub: &mut Hub, client: &Rc<Client>, frame: &str, now: Instant) {
    let mut payload = frame.as_bytes().to_vec();
    hub.on_text(client, &mut payload, now, wall());
}

#[test]
fn a_page_read_later_is_answered_when_its_rows_arrive_as_a_backend_event() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    let client = hub.open(ann(), Arc::from("r"), None, t0);
    assert_eq!(frames(&client, t0)[0]["type"], "room_joined");
    script.borrow_mut().defer = true;
    text(
        &mut hub,
        &client,
        r#"{"type":"history","roomId":"r","limit":10}"#,
        t0,
    );
    assert!(frames(&client, t0).is_empty(), "waits for the rows");
    let read = script.borrow().reads[0];
    let rows = Ok(vec![row(1), row(2)]);
    hub.on_backend_event(BackendEvent::Rows { read, rows }, t0, wall());
    let got = frames(&client, t0);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "history");
    let contents: Vec<&str> = got[0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["old 1", "old 2"]);
    // A second reply for the same read (never sent) changes nothing.
    let again = BackendEvent::Rows {
        read,
        rows: Ok(vec![row(3)]),
    };
    hub.on_backend_event(again, t0, wall());
    assert!(frames(&client, t0).is_empty());
    assert!(hub.outbox_mut().is_empty());
}

#[test]
fn a_failed_page_read_is_answered_unavailable_never_with_part_of_the_page() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    let client = hub.open(ann(), Arc::from("r"), None, t0);
    frames(&client, t0);
    script.borrow_mut().defer = true;
    text(
        &mut hub,
        &client,
        r#"{"type":"history","roomId":"r","limit":10}"#,
        t0,
    );
    let read = script.borrow().reads[0];
    let rows = Err(ReadFailed);
    hub.on_backend_event(BackendEvent::Rows { read, rows }, t0, wall());
    let got = frames(&client, t0);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
}

#[test]
fn an_http_page_on_the_owner_core_is_ready_now_or_answered_with_the_rows() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    let query = || Query::History {
        room: Arc::from("r"),
        before: None,
        after: None,
        limit: 5,
    };
    match hub.ask(0, query(), t0) {
        Asked::Ready(Answer::Messages(m)) => assert!(m.is_empty()),
        _ => panic!("memory answers in place"),
    }
    script.borrow_mut().defer = true;
    let Asked::Later(mut rx) = hub.ask(0, query(), t0) else {
        panic!("a deferred read is answered later");
    };
    assert!(matches!(rx.try_recv(), Ok(None)), "not yet");
    let read = script.borrow().reads[0];
    hub.on_backend_event(
        BackendEvent::Rows {
            read,
            rows: Ok(vec![row(7)]),
        },
        t0,
        wall(),
    );
    match rx.try_recv() {
        Ok(Some(Answer::Messages(m))) => assert_eq!(m, vec![row(7).json]),
        _ => panic!("expected the page"),
    }
}

#[test]
fn a_join_with_since_read_later_counts_the_member_when_the_rows_arrive() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    script.borrow_mut().defer = true;
    let since = Some(Ulid::from_parts(900, 0));
    let client = hub.open(ann(), Arc::from("r"), since, t0);
    assert!(frames(&client, t0).is_empty(), "pending until the rows");
    let read = script.borrow().reads[0];
    let rows = Ok(vec![row(1)]);
    hub.on_backend_event(BackendEvent::Rows { read, rows }, t0, wall());
    let got = frames(&client, t0);
    assert_eq!(
        (
            got[0]["type"].as_str(),
            got[0]["memberCount"].as_u64(),
            got[0]["recovered"].as_bool()
        ),
        (Some("room_joined"), Some(1), Some(true))
    );
    // Counted now: a message sent reaches the member live.
    script.borrow_mut().defer = false;
    text(
        &mut hub,
        &client,
        r#"{"type":"message","roomId":"r","content":"hi"}"#,
        t0,
    );
    let got = frames(&client, t0);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["content"].as_str()),
        (Some("message"), Some("hi"))
    );
}

#[test]
fn a_history_that_does_not_admit_refuses_messages_unavailable() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    let client = hub.open(ann(), Arc::from("r"), None, t0);
    frames(&client, t0);
    script.borrow_mut().full = true;
    text(
        &mut hub,
        &client,
        r#"{"type":"message","roomId":"r","content":"hi"}"#,
        t0,
    );
    let got = frames(&client, t0);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    assert!(
        hub.history.since("r", Ulid::nil(), 10).is_empty(),
        "not stored"
    );
}

#[test]
fn a_delete_older_than_memory_waits_for_the_rows_and_answers_by_them() {
    let t0 = Instant::now();
    let (mut hub, script) = hub(t0);
    let client = hub.open(ann(), Arc::from("r"), None, t0);
    frames(&client, t0);
    script.borrow_mut().defer = true;
    let delete = |n: u64| Query::Delete {
        room: Arc::from("r"),
        id: row(n).id,
        actor: Arc::from("root"),
        at_ms: 0,
    };
    // Found in the rows: deleted, and the room is told.
    let Asked::Later(mut found) = hub.ask(0, delete(1), t0) else {
        panic!("waits for the rows");
    };
    let read = script.borrow().reads[0];
    let rows = Ok(vec![row(1)]);
    hub.on_backend_event(BackendEvent::Rows { read, rows }, t0, wall());
    assert!(matches!(found.try_recv(), Ok(Some(Answer::Done))));
    let got = frames(&client, t0);
    assert_eq!(got[0]["type"], "message_deleted");
    assert_eq!(got[0]["messageId"], row(1).id.to_string());
    // Not in the rows: not found, nobody told. A failed read: unavailable.
    for (n, rows, done) in [(2, Ok(Vec::new()), false), (3, Err(ReadFailed), true)] {
        let Asked::Later(mut rx) = hub.ask(0, delete(n), t0) else {
            panic!("waits for the rows");
        };
        let read = *script.borrow().reads.last().unwrap();
        hub.on_backend_event(BackendEvent::Rows { read, rows }, t0, wall());
        let answer = rx.try_recv().unwrap().unwrap();
        if done {
            assert!(matches!(answer, Answer::Unavailable), "{answer:?}");
        } else {
            assert!(matches!(answer, Answer::NotFound), "{answer:?}");
        }
    }
    assert!(frames(&client, t0).is_empty());
}
