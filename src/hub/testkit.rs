//! Test helpers shared by the in-process hub tests (`mesh_tests.rs`,
//! `tests.rs`, `simulation.rs`): hubs for N cores built from the settings'
//! defaults plus chosen flags, a clock the test moves by hand, the mesh
//! pumped between hubs, and the frames queued for a connection decoded
//! back into JSON.
//!
//! Nothing here reads a clock: `World::now` starts at the moment the world
//! is built and only moves when a test calls `advance`, and the wall clock
//! handed to the hubs is a fixed epoch plus the same elapsed time.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser as _;
use serde_json::Value;

use super::Hub;
use crate::auth::Identity;
use crate::client::Client;
use crate::config::Settings;
use crate::metrics::CloseReason;
use crate::protocol::MessageId;
use crate::redis::link;
use crate::shard::{shard_for, ConnId};

/// The wall clock at `World::t0`: 2027-01-15T08:00:00Z, so stamps are
/// predictable in assertions.
pub(super) const WALL_EPOCH_SECS: u64 = 1_800_000_000;

/// The HS256 secret the test hubs verify `refresh` tokens with.
pub(super) const TEST_SECRET: &[u8] = b"hub-test-secret";

/// The settings' defaults with `flags` (as on the command line) on top.
pub(super) fn settings(flags: &[&str]) -> Settings {
    let args = std::iter::once("chatd").chain(flags.iter().copied());
    crate::config::Cli::try_parse_from(args)
        .expect("valid flags")
        .settings
}

/// The identity of `user`, whose display name is the id.
pub(super) fn identity(user: &str) -> Identity {
    Identity {
        user_id: Arc::from(user),
        username: Arc::from(user),
        admin: false,
    }
}

/// The first key `{prefix}-{i}` that core `core` of `cores` owns: rooms and
/// users placed on the core a test needs them on.
pub(super) fn owned_by(core: usize, cores: usize, prefix: &str) -> Arc<str> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| shard_for(k, cores) == core)
        .expect("some key hashes to every core")
        .into()
}

/// The JSON of every text frame queued for `client` so far, taken as a
/// client reading everything would (pings and close frames skipped).
pub(super) fn frames(client: &Client, now: Instant) -> Vec<Value> {
    payloads(client, now)
        .iter()
        .map(|p| serde_json::from_slice(p).expect("JSON"))
        .collect()
}

/// The payloads of every text frame queued for `client` so far, taken as
/// a client reading everything would (pings and close frames skipped).
pub(super) fn payloads(client: &Client, now: Instant) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    // Consuming tops the queue up from a replay backlog: read until empty.
    loop {
        let mut outbound = client.outbound().borrow_mut();
        if outbound.is_empty() {
            return out;
        }
        for f in outbound.frames() {
            if f.first() == Some(&0x81) {
                let header = f.len() - link::ws_payload(f).len();
                out.push(f.slice(header..));
            }
        }
        let bytes = outbound.bytes();
        outbound.consume(bytes, now);
    }
}

/// The `type` of each frame.
pub(super) fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().expect("type").to_string())
        .collect()
}

/// The `content` of the `message` frames among `frames`.
pub(super) fn contents(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["content"].as_str().expect("content").to_string())
        .collect()
}

/// The `messageId` of the `message` frames among `frames`.
pub(super) fn ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["messageId"].as_str().expect("messageId").to_string())
        .collect()
}

/// The frames of type `ty` among `frames`.
pub(super) fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == ty).collect()
}

/// A message id as the wire spells it, parsed.
pub(super) fn message_id(id: &str) -> MessageId {
    crate::protocol::parse_message_id(id).expect("a message id")
}

/// Hubs for `cores` cores, a hand-moved clock, and an in-order mesh.
pub(super) struct World {
    /// One hub per core, indexed by core.
    pub hubs: Vec<Hub>,
    /// When the world was built: the wall clock's epoch maps to it.
    pub t0: Instant,
    /// The current moment, moved only by `advance`.
    pub now: Instant,
}

impl World {
    /// `cores` hubs with the default settings and `flags` on top.
    pub fn new(cores: usize, flags: &[&str]) -> World {
        World::with_settings(cores, &settings(flags))
    }

    /// `cores` hubs with `settings` (parsed once by a caller that builds
    /// many worlds).
    pub fn with_settings(cores: usize, settings: &Settings) -> World {
        let t0 = Instant::now();
        let hubs = (0..cores)
            .map(|core| {
                let mut hub = Hub::new(core, cores, settings, None, t0);
                hub.set_verifier(crate::auth::Verifier::hs256(TEST_SECRET));
                hub
            })
            .collect();
        World { hubs, t0, now: t0 }
    }

    /// The wall clock at `now`.
    pub fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(WALL_EPOCH_SECS)
            + self.now.duration_since(self.t0)
    }

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Opens `user`'s connection on `core` with initial room `room`.
    pub fn open(
        &mut self,
        core: usize,
        user: &str,
        room: &str,
        since: Option<MessageId>,
    ) -> Rc<Client> {
        let now = self.now;
        self.hubs[core].open(identity(user), Arc::from(room), since, now)
    }

    /// Opens `user`'s connection on `core` as a token with `exp` (Unix
    /// seconds on the world's wall clock) would.
    pub fn open_exp(
        &mut self,
        core: usize,
        user: &str,
        room: &str,
        exp: Option<u64>,
    ) -> Rc<Client> {
        let (now, wall) = (self.now, self.wall());
        let client = self.hubs[core].open(identity(user), Arc::from(room), None, now);
        self.hubs[core].set_token_expiry(client.id, exp, now, wall);
        client
    }

    /// Runs every hub's periodic sweep at the current moment.
    pub fn sweep(&mut self) {
        let now = self.now;
        for hub in &mut self.hubs {
            hub.sweep(now);
        }
    }

    /// Opens a connection like [`World::open`] that negotiated
    /// permessage-deflate.
    pub fn open_deflate(&mut self, core: usize, user: &str, room: &str) -> Rc<Client> {
        let now = self.now;
        self.hubs[core].open_with(identity(user), Arc::from(room), None, true, now)
    }

    /// Hands `client` one text frame, on the core it runs on.
    pub fn text(&mut self, client: &Rc<Client>, json: &str) {
        let (now, wall) = (self.now, self.wall());
        let mut frame = json.as_bytes().to_vec();
        self.hubs[client.id.core()].on_text(client, &mut frame, now, wall);
    }

    /// A `message` frame for `room` from `client`.
    pub fn say(&mut self, client: &Rc<Client>, room: &str, content: &str) {
        let json = serde_json::json!({"type": "message", "roomId": room, "content": content});
        self.text(client, &json.to_string());
    }

    /// Closes `client` as its driver does when the socket ends.
    pub fn close(&mut self, client: &Rc<Client>, reason: CloseReason) {
        let now = self.now;
        self.hubs[client.id.core()].closed(client, reason, now);
    }

    /// Delivers every mesh message until no hub has any left, each hub's
    /// outbox in order (every ordered pair of cores stays FIFO, as on the
    /// real mesh). Returns how many were delivered.
    pub fn pump(&mut self) -> usize {
        let (now, wall) = (self.now, self.wall());
        pump(&mut self.hubs, now, wall)
    }

    /// True when no hub has anything for the runtime.
    pub fn quiet(&mut self) -> bool {
        self.hubs.iter_mut().all(|h| h.outbox_mut().is_empty())
    }

    /// What the drivers do with a close the hub asked for: every connection
    /// with a close request is closed (as its driver would after sending
    /// the close frame). Returns the closed connections and their codes,
    /// by connection id.
    pub fn reap(&mut self) -> Vec<(ConnId, u16)> {
        let now = self.now;
        let mut done = Vec::new();
        for hub in &mut self.hubs {
            let mut closing: Vec<Rc<Client>> = hub
                .clients
                .values()
                .filter(|c| c.close_request().is_some())
                .cloned()
                .collect();
            closing.sort_by_key(|c| c.id);
            for client in closing {
                let (code, reason) = client.close_request().expect("filtered");
                hub.closed(&client, reason, now);
                done.push((client.id, code));
            }
        }
        done
    }

    /// Users the hubs count online (each at its owner core), sorted.
    pub fn online_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .hubs
            .iter()
            .flat_map(|h| h.presence.online_users())
            .map(|u| u.to_string())
            .collect();
        users.sort();
        users
    }
}

/// Delivers every mesh message until no hub has any left: each hub's
/// outbox in order, so every ordered pair of cores stays FIFO as on the
/// real mesh. Returns how many were delivered.
pub(super) fn pump(hubs: &mut [Hub], now: Instant, wall: SystemTime) -> usize {
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for from in 0..hubs.len() {
            for (to, msg) in hubs[from].outbox_mut().take_mesh() {
                assert_ne!(to, from, "local work never goes through the mesh");
                hubs[to].on_shard_msg(from, msg, now, wall);
                delivered += 1;
                moved = true;
            }
        }
        if !moved {
            return delivered;
        }
    }
}
