//! Seeded simulation of 2 to 4 hubs: random clients open, join, leave, send
//! (with and without `clientMsgId`, sometimes repeated), type, close and
//! reconnect with `since`, while a test mesh delivers cross-core messages
//! in a random interleaving of the ordered pairs of cores, FIFO within each
//! pair (what the real mesh guarantees, and no more), and the clock moves
//! in random steps. After each seed the mesh is pumped to quiescence and
//! the contract's invariants are checked:
//!
//! - one order per room: every connection's message ids in a room are a
//!   contiguous run of the owner's accepted order (increasing, no gap, no
//!   duplicate), reaching its end when the connection is still in the room;
//! - recovery: a join with `since` starts right after `since`, with
//!   `recovered: true` (per-room traffic stays under HISTORY_PER_ROOM);
//! - dedupe: every accepted content once in the order, every `ack` of a
//!   (user, clientMsgId) with the same id;
//! - presence converges: the owners' online users and room member counts
//!   equal the open connections, and each member's last presence frame for
//!   a user in a room is that user's last transition announced there.
//!
//! `SIM_SEEDS=n` runs n seeds (default 2,000); `SIM_SEED=s` runs seed s
//! alone. A failure names its seed. Connections also leave rooms whose join
//! is still in flight and join them again, with or without `since`: the
//! case that found the join tickets' bug (seed 2156 answered a join with
//! another join's replay; `tests.rs` keeps it as a test).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};

use super::testkit::{payloads, settings, World};
use crate::client::{Client, Membership};
use crate::config::Settings;
use crate::metrics::CloseReason;
use crate::shard::{shard_for, ShardMsg};

/// Seeds run by default (`SIM_SEEDS` overrides).
const DEFAULT_SEEDS: u64 = 2_000;
/// Random actions per seed.
const STEPS: usize = 100;
/// Users the clients pick from: few, so their connections collide often.
const USERS: usize = 4;
/// Rooms the clients pick from: few, so every room has traffic.
const ROOMS: usize = 3;
/// Open connections per user at most (under MAX_CONNECTIONS_PER_USER).
const CONNS_PER_USER: usize = 3;
/// Budgets high enough that a random client is never refused a join or a
/// leave (refusals are covered by `tests.rs`); the message limit stays at
/// its default, so some sends are rate limited.
const FLAGS: &[&str] = &["--room-frames-per-sec", "10000"];

/// The fields of a server frame the simulation reads (the rest, such as
/// a message's content, is skipped unparsed).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame<'a> {
    /// The frame's `type`.
    #[serde(rename = "type")]
    ty: &'a str,
    /// Every frame but errors names its room.
    room_id: Option<&'a str>,
    /// `message` and `ack`.
    message_id: Option<&'a str>,
    /// `ack`.
    client_msg_id: Option<&'a str>,
    /// `presence`.
    user_id: Option<&'a str>,
    /// `presence`.
    status: Option<&'a str>,
    /// `room_joined` after a join with `since`.
    recovered: Option<bool>,
    /// `error`.
    code: Option<&'a str>,
}

/// One `join` of a connection to a room, until it leaves or closes.
#[derive(Debug)]
struct Span {
    /// The `since` the join carried.
    since: Option<String>,
    /// The step at which `room_joined` was read (None: not answered yet).
    joined_at: Option<usize>,
    /// `recovered` of that `room_joined`.
    recovered: Option<bool>,
    /// Message ids read in this span, in order.
    ids: Vec<String>,
    /// False once the connection left the room (or closed).
    live: bool,
}

/// A client connection as the simulation sees it.
struct Conn {
    /// The hub's session.
    client: Rc<Client>,
    /// Index into the users.
    user: usize,
    /// False once closed.
    open: bool,
    /// Every join of every room, oldest first (ordered, so a seed's random
    /// picks among them replay exactly).
    spans: BTreeMap<Arc<str>, Vec<Span>>,
    /// The last presence status read per (user, room).
    presence: HashMap<(String, String), String>,
}

impl Conn {
    fn live_span(&self, room: &str) -> Option<&Span> {
        self.spans.get(room)?.last().filter(|s| s.live)
    }

    fn last_seen(&self, room: &str) -> Option<String> {
        self.spans
            .get(room)?
            .iter()
            .rev()
            .find_map(|s| s.ids.last().cloned())
    }
}

/// A user's last presence transition announced to a room.
#[derive(Debug, Clone)]
struct Announced {
    /// "online" or "offline".
    status: &'static str,
    /// The step of the open or close that caused it.
    step: usize,
}

/// The rooms a connection comes back to, each with the `since` it asks
/// for (None: it had read nothing there).
type Rejoin = Vec<(Arc<str>, Option<String>)>;

/// One seed's run: the hubs, the mesh in flight, and what the clients saw.
struct Sim {
    /// The hubs and the clock.
    w: World,
    /// Every random choice of the seed, so a seed replays exactly.
    rng: StdRng,
    /// Mesh messages in flight per ordered pair, `[from * cores + to]`:
    /// FIFO within a pair, pairs interleaved at random.
    queues: Vec<VecDeque<ShardMsg>>,
    /// Number of hubs (2 to 4, chosen by the seed).
    cores: usize,
    /// User ids, by index.
    users: Vec<String>,
    /// Room ids, by index.
    rooms: Vec<Arc<str>>,
    /// Every connection opened, closed ones included (their spans are
    /// checked too).
    conns: Vec<Conn>,
    /// The current step: orders joins against presence transitions.
    step: usize,
    /// Next content number (contents are unique per send).
    sent: usize,
    /// (user, clientMsgId) -> (content, room) of the first send (ordered,
    /// so a seed's random picks among them replay exactly).
    cmids: BTreeMap<(usize, String), (String, Arc<str>)>,
    /// (user, clientMsgId) -> every `messageId` acknowledged for it.
    acks: HashMap<(String, String), HashSet<String>>,
    /// (user, room) -> the last transition announced there.
    announced: HashMap<(String, String), Announced>,
    /// Reconnections waiting until the user's earlier transition reached
    /// its owner: (user, [(room, since)]).
    reconnects: Vec<(usize, Rejoin)>,
}

impl Sim {
    fn new(seed: u64, settings: &Settings) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let cores = rng.gen_range(2..=4);
        let w = World::with_settings(cores, settings);
        Sim {
            w,
            rng,
            queues: (0..cores * cores).map(|_| VecDeque::new()).collect(),
            cores,
            users: (0..USERS).map(|u| format!("u{u}")).collect(),
            rooms: (0..ROOMS).map(|r| Arc::from(format!("r{r}"))).collect(),
            conns: Vec::new(),
            step: 0,
            sent: 0,
            cmids: BTreeMap::new(),
            acks: HashMap::new(),
            announced: HashMap::new(),
            reconnects: Vec::new(),
        }
    }

    /// Moves every hub's outbox onto the pair queues, in order.
    fn collect(&mut self) {
        for from in 0..self.cores {
            for (to, msg) in self.w.hubs[from].outbox_mut().take_mesh() {
                assert_ne!(from, to);
                self.queues[from * self.cores + to].push_back(msg);
            }
        }
    }

    /// Delivers the oldest message of one random non-empty pair; false when
    /// nothing is in flight.
    fn deliver_one(&mut self) -> bool {
        let busy: Vec<usize> = (0..self.queues.len())
            .filter(|&q| !self.queues[q].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let q = busy[self.rng.gen_range(0..busy.len())];
        let msg = self.queues[q].pop_front().expect("non-empty");
        let (from, to) = (q / self.cores, q % self.cores);
        let (now, wall) = (self.w.now, self.w.wall());
        self.w.hubs[to].on_shard_msg(from, msg, now, wall);
        self.collect();
        true
    }

    /// True while a presence change of `user` is on its way to the user's
    /// owner (then the next one could overtake it from another core, and
    /// the owner's order would not be the simulation's).
    fn presence_in_flight(&self, user: &str) -> bool {
        self.queues.iter().flatten().any(|m| match m {
            ShardMsg::UserOnline { user: u, .. } | ShardMsg::UserOffline { user: u, .. } => {
                &**u == user
            }
            _ => false,
        })
    }

    fn open_conns(&self, user: usize) -> usize {
        self.conns
            .iter()
            .filter(|c| c.open && c.user == user)
            .count()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.gen_range(0..from.len())])
    }

    /// Opens a connection of `user` with `rooms[0]` as its initial room and
    /// joins the rest, each with its `since`.
    fn open(&mut self, user: usize, rooms: &[(Arc<str>, Option<String>)]) {
        let core = self.rng.gen_range(0..self.cores);
        let name = self.users[user].clone();
        let first = self.open_conns(user) == 0;
        let (home, since) = rooms[0].clone();
        let since_id = since.as_deref().map(super::testkit::message_id);
        // Every other connection negotiated permessage-deflate (by count,
        // so the seeds' random draws stay as they were): the owners' counts
        // of compressed members are checked like their member counts.
        let deflate = self.conns.len() % 2 == 1;
        let now = self.w.now;
        let client = self.w.hubs[core].open_with(
            super::testkit::identity(&name),
            home.clone(),
            since_id,
            deflate,
            now,
        );
        if first {
            self.announce(&name, "online", std::slice::from_ref(&home));
        }
        let mut conn = Conn {
            client,
            user,
            open: true,
            spans: BTreeMap::new(),
            presence: HashMap::new(),
        };
        conn.spans.entry(home).or_default().push(Span {
            since,
            joined_at: None,
            recovered: None,
            ids: Vec::new(),
            live: true,
        });
        self.conns.push(conn);
        let i = self.conns.len() - 1;
        for (room, since) in &rooms[1..] {
            self.join(i, room.clone(), since.clone());
        }
        self.collect();
    }

    fn join(&mut self, i: usize, room: Arc<str>, since: Option<String>) {
        let mut frame = json!({"type": "join_room", "roomId": &*room});
        if let Some(s) = &since {
            frame["since"] = json!(s);
        }
        let client = self.conns[i].client.clone();
        self.conns[i].spans.entry(room).or_default().push(Span {
            since,
            joined_at: None,
            recovered: None,
            ids: Vec::new(),
            live: true,
        });
        self.w.text(&client, &frame.to_string());
        self.collect();
    }

    fn announce(&mut self, user: &str, status: &'static str, rooms: &[Arc<str>]) {
        for room in rooms {
            let a = Announced {
                status,
                step: self.step,
            };
            self.announced
                .insert((user.to_string(), room.to_string()), a);
        }
    }

    fn close(&mut self, i: usize) {
        let client = self.conns[i].client.clone();
        let user = self.conns[i].user;
        let joined: Vec<Arc<str>> = self.conns[i]
            .spans
            .keys()
            .filter(|r| client.membership(r) == Some(Membership::Joined))
            .cloned()
            .collect();
        self.w.close(&client, CloseReason::Client);
        let conn = &mut self.conns[i];
        conn.open = false;
        for spans in conn.spans.values_mut() {
            for s in spans {
                s.live = false;
            }
        }
        if self.open_conns(user) == 0 {
            let name = self.users[user].clone();
            self.announce(&name, "offline", &joined);
        }
        self.collect();
    }

    /// One random action.
    fn act(&mut self) {
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].open)
            .collect();
        // A waiting reconnection goes first once its user is settled.
        if let Some(pos) = self
            .reconnects
            .iter()
            .position(|(u, _)| !self.presence_in_flight(&self.users[*u]))
        {
            let (user, rooms) = self.reconnects.swap_remove(pos);
            return self.open(user, &rooms);
        }
        match self.rng.gen_range(0..100) {
            // open
            0..=9 => {
                let user = self.rng.gen_range(0..USERS);
                if self.open_conns(user) >= CONNS_PER_USER
                    || self.presence_in_flight(&self.users[user])
                {
                    return;
                }
                let room = self.rooms[self.rng.gen_range(0..ROOMS)].clone();
                self.open(user, &[(room, None)]);
            }
            // join (sometimes with `since`, sometimes a repeat)
            10..=22 => {
                let Some(i) = self.pick(&open) else { return };
                let room = self.rooms[self.rng.gen_range(0..ROOMS)].clone();
                let conn = &self.conns[i];
                match conn.live_span(&room) {
                    Some(s) if s.joined_at.is_some() => {
                        // A repeat: answered on the member's core.
                        let client = conn.client.clone();
                        let frame = json!({"type": "join_room", "roomId": &*room});
                        self.w.text(&client, &frame.to_string());
                        self.collect();
                    }
                    Some(_) => {}
                    None => {
                        let since = if self.rng.gen_bool(0.6) {
                            conn.last_seen(&room)
                        } else {
                            None
                        };
                        self.join(i, room, since);
                    }
                }
            }
            // leave
            23..=30 => {
                let Some(i) = self.pick(&open) else { return };
                let room = self.rooms[self.rng.gen_range(0..ROOMS)].clone();
                let conn = &mut self.conns[i];
                let Some(span) = conn.spans.get_mut(&room).and_then(|s| s.last_mut()) else {
                    return;
                };
                if !span.live {
                    return;
                }
                span.live = false;
                let client = conn.client.clone();
                let frame = json!({"type": "leave_room", "roomId": &*room});
                self.w.text(&client, &frame.to_string());
                self.collect();
            }
            // send
            31..=74 => {
                let Some(i) = self.pick(&open) else { return };
                let client = self.conns[i].client.clone();
                let user = self.conns[i].user;
                let joined: Vec<Arc<str>> = self.conns[i]
                    .spans
                    .keys()
                    .filter(|r| client.membership(r) == Some(Membership::Joined))
                    .cloned()
                    .collect();
                let Some(room) = joined.get(self.rng.gen_range(0..joined.len().max(1))) else {
                    return;
                };
                let mut room = room.clone();
                self.sent += 1;
                let mut content = format!("{}-{}", self.users[user], self.sent);
                let mut frame = json!({"type": "message"});
                let roll = self.rng.gen_range(0..10);
                if roll < 2 {
                    // A repeat of one of the user's earlier keys, same
                    // content and room, when this connection is in it.
                    let mine: Vec<&(usize, String)> =
                        self.cmids.keys().filter(|(u, _)| *u == user).collect();
                    if let Some(key) = mine.get(self.rng.gen_range(0..mine.len().max(1))) {
                        let key = (*key).clone();
                        let (c, r) = self.cmids[&key].clone();
                        if !joined.contains(&r) {
                            return;
                        }
                        content = c;
                        room = r;
                        frame["clientMsgId"] = json!(key.1);
                    }
                } else if roll < 6 {
                    let cmid = format!("c{}", self.sent);
                    self.cmids
                        .insert((user, cmid.clone()), (content.clone(), room.clone()));
                    frame["clientMsgId"] = json!(cmid);
                }
                frame["roomId"] = json!(&*room);
                frame["content"] = json!(content);
                self.w.text(&client, &frame.to_string());
                self.collect();
            }
            // typing
            75..=82 => {
                let Some(i) = self.pick(&open) else { return };
                let client = self.conns[i].client.clone();
                let room = self.rooms[self.rng.gen_range(0..ROOMS)].clone();
                if client.membership(&room) != Some(Membership::Joined) {
                    return;
                }
                let frame = json!({"type": "typing", "roomId": &*room, "isTyping": true});
                self.w.text(&client, &frame.to_string());
                self.collect();
            }
            // close
            83..=89 => {
                let Some(i) = self.pick(&open) else { return };
                if self.presence_in_flight(&self.users[self.conns[i].user]) {
                    return;
                }
                self.close(i);
            }
            // reconnect: close, then open again with `since` for every
            // room the connection was in, once the user is settled
            _ => {
                let Some(i) = self.pick(&open) else { return };
                let user = self.conns[i].user;
                if self.presence_in_flight(&self.users[user]) {
                    return;
                }
                let conn = &self.conns[i];
                let mut rooms: Rejoin = conn
                    .spans
                    .iter()
                    .filter(|(_, s)| s.last().is_some_and(|s| s.live && s.joined_at.is_some()))
                    .map(|(r, _)| (r.clone(), conn.last_seen(r)))
                    .collect();
                rooms.sort();
                if rooms.is_empty() {
                    return;
                }
                self.close(i);
                self.reconnects.push((user, rooms));
            }
        }
    }

    /// Reads every open connection's queue and files what it holds.
    fn read_all(&mut self) {
        let now = self.w.now;
        let step = self.step;
        for conn in self.conns.iter_mut().filter(|c| c.open) {
            for payload in payloads(&conn.client, now) {
                let f: Frame = serde_json::from_slice(&payload).expect("a server frame");
                let room = f.room_id.unwrap_or_default();
                let text = || String::from_utf8_lossy(&payload).into_owned();
                match f.ty {
                    "message" => {
                        let span = conn
                            .spans
                            .get_mut(room)
                            .and_then(|s| s.last_mut())
                            .filter(|s| s.live && s.joined_at.is_some())
                            .unwrap_or_else(|| panic!("a message outside a join: {}", text()));
                        span.ids.push(f.message_id.expect("id").to_string());
                    }
                    "room_joined" => {
                        let span = conn
                            .spans
                            .get_mut(room)
                            .and_then(|s| s.last_mut())
                            .unwrap_or_else(|| panic!("room_joined never asked: {}", text()));
                        if span.joined_at.is_none() {
                            assert!(span.live, "answered after the leave: {}", text());
                            span.joined_at = Some(step);
                            span.recovered = f.recovered;
                        } else {
                            assert_eq!(f.recovered, None, "a repeat: {}", text());
                        }
                    }
                    "ack" => {
                        let key = (conn_user(conn), f.client_msg_id.expect("cmid").to_string());
                        let id = f.message_id.expect("id").to_string();
                        self.acks.entry(key).or_default().insert(id);
                    }
                    "presence" => {
                        let user = f.user_id.expect("user").to_string();
                        let status = f.status.expect("status").to_string();
                        conn.presence.insert((user, room.to_string()), status);
                    }
                    "error" => {
                        assert_eq!(f.code, Some("rate_limited"), "the only refusal: {}", text());
                    }
                    "room_left" | "typing_indicator" => {}
                    _ => panic!("unexpected frame: {}", text()),
                }
            }
        }
    }

    fn run(&mut self) {
        for step in 0..STEPS {
            self.step = step;
            self.act();
            let deliveries = self.rng.gen_range(0..6);
            for _ in 0..deliveries {
                self.deliver_one();
            }
            let ms = self.rng.gen_range(0..80);
            self.w.advance(Duration::from_millis(ms));
            self.read_all();
        }
        // Quiescence: every waiting reconnection done, the mesh empty.
        self.step = STEPS;
        loop {
            while self.deliver_one() {}
            if self.reconnects.is_empty() {
                break;
            }
            let (user, rooms) = self.reconnects.pop().expect("non-empty");
            self.open(user, &rooms);
        }
        self.read_all();
        assert!(
            self.w.reap().is_empty(),
            "no connection was closed by the hub"
        );
    }

    fn check(&self) {
        let mut orders: HashMap<&str, Vec<String>> = HashMap::new();
        for room in &self.rooms {
            let owner = shard_for(room, self.cores);
            let kept = self.w.hubs[owner]
                .history
                .since(room, ulid::Ulid::nil(), 100_000);
            let order: Vec<String> = kept.iter().map(|m| m.id.to_string()).collect();
            // Dedupe: every content once.
            let mut contents = HashSet::new();
            for m in &kept {
                let v: Value = serde_json::from_slice(&m.json).expect("JSON");
                let c = v["content"].as_str().expect("content").to_string();
                assert!(contents.insert(c.clone()), "{c} stored twice in {room}");
            }
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, order, "ids sort as the room's order");
            orders.insert(room, order);
        }
        for conn in &self.conns {
            for (room, spans) in &conn.spans {
                let order = &orders[&**room];
                for span in spans {
                    check_span(conn, room, span, order);
                }
            }
        }
        for ((user, cmid), ids) in &self.acks {
            assert_eq!(ids.len(), 1, "{user}/{cmid} acknowledged with {ids:?}");
        }
        // Presence converges.
        let mut online: Vec<String> = (0..USERS)
            .filter(|&u| self.open_conns(u) > 0)
            .map(|u| self.users[u].clone())
            .collect();
        online.sort();
        assert_eq!(self.w.online_users(), online, "online users");
        for (u, name) in self.users.iter().enumerate() {
            let owner = shard_for(name, self.cores);
            let n = self.w.hubs[owner].presence.connections(name) as usize;
            assert_eq!(n, self.open_conns(u), "{name}'s connections");
        }
        for room in &self.rooms {
            let mut want: HashMap<String, u32> = HashMap::new();
            for c in self.conns.iter().filter(|c| c.open) {
                if c.client.membership(room) == Some(Membership::Joined) {
                    *want.entry(self.users[c.user].clone()).or_default() += 1;
                }
            }
            let owner = shard_for(room, self.cores);
            let have: HashMap<String, u32> = self.w.hubs[owner]
                .owned
                .get(room)
                .map(|r| r.users.iter().map(|(u, n)| (u.to_string(), *n)).collect())
                .unwrap_or_default();
            assert_eq!(have, want, "members of {room} at its owner");
            let packed = self
                .conns
                .iter()
                .filter(|c| c.open && c.client.deflate())
                .filter(|c| c.client.membership(room) == Some(Membership::Joined))
                .count() as u32;
            let counted = self.w.hubs[owner]
                .owned
                .get(room)
                .map_or(0, |r| r.deflate_members);
            assert_eq!(counted, packed, "compressed members of {room} at its owner");
        }
        for ((user, room), a) in &self.announced {
            for conn in self.conns.iter().filter(|c| c.open) {
                let Some(span) = conn.live_span(room) else {
                    continue;
                };
                // Joined before the transition and ever since: the owner
                // had it as a member when the frame came.
                if span.joined_at.is_some_and(|j| j < a.step) {
                    let got = conn.presence.get(&(user.clone(), room.clone()));
                    assert_eq!(
                        got.map(String::as_str),
                        Some(a.status),
                        "{}'s last presence of {user} in {room} (announced at step {})",
                        conn.client.identity.user_id,
                        a.step
                    );
                }
            }
        }
    }
}

fn conn_user(conn: &Conn) -> String {
    conn.client.identity.user_id.to_string()
}

/// One join's messages: a contiguous run of the room's order, starting
/// right after `since` when given (and recovered), and running to the end
/// of the order while the connection is still in the room.
fn check_span(conn: &Conn, room: &str, span: &Span, order: &[String]) {
    let who = format!("{} in {room} (since {:?})", conn.client.id.0, span.since);
    let Some(_) = span.joined_at else {
        assert!(span.ids.is_empty(), "{who}: messages before room_joined");
        return;
    };
    if span.since.is_some() {
        assert_eq!(span.recovered, Some(true), "{who}: history holds it all");
    } else {
        assert_eq!(span.recovered, None, "{who}");
    }
    let pos = |id: &String| {
        order
            .iter()
            .position(|o| o == id)
            .unwrap_or_else(|| panic!("{who}: {id} not in the room's order"))
    };
    let start = match (&span.since, span.ids.first()) {
        (Some(since), _) => {
            let s = pos(since) + 1;
            if let Some(first) = span.ids.first() {
                assert_eq!(pos(first), s, "{who}: the replay starts after since");
            }
            s
        }
        (None, Some(first)) => pos(first),
        (None, None) => {
            // Nothing read; the join may have come after the last message.
            return;
        }
    };
    let end = start + span.ids.len();
    assert!(end <= order.len(), "{who}: more messages than the room has");
    assert_eq!(
        span.ids,
        order[start..end],
        "{who}: a contiguous run, once each"
    );
    if span.live && conn.open && (span.since.is_some() || !span.ids.is_empty()) {
        assert_eq!(end, order.len(), "{who}: up to the live end");
    }
}

fn run_seed(seed: u64, settings: &Settings) {
    let mut sim = Sim::new(seed, settings);
    sim.run();
    sim.check();
}

/// The first failing seed among `seeds` with its panic message, run on
/// this thread.
fn first_failure(seeds: impl Iterator<Item = u64>) -> Option<(u64, String)> {
    let settings = settings(FLAGS);
    for seed in seeds {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run_seed(seed, &settings))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Some((seed, why));
        }
    }
    None
}

#[test]
fn seeded_simulation_keeps_the_contracts_invariants() {
    if let Ok(s) = std::env::var("SIM_SEED") {
        let seed = s.parse().expect("SIM_SEED is a number");
        if let Some((seed, why)) = first_failure(std::iter::once(seed)) {
            panic!("simulation seed {seed} failed: {why}");
        }
        return;
    }
    let n: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .map(|n| n.parse().expect("SIM_SEEDS is a number"))
        .unwrap_or(DEFAULT_SEEDS);
    // Seeds are independent (each builds its own hubs on its thread): split
    // them over a few threads, seed i on thread i % threads.
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get().min(4)) as u64;
    let failed = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || first_failure((t..n).step_by(threads as usize))))
            .collect();
        let mut failed: Vec<(u64, String)> = runs
            .into_iter()
            .filter_map(|r| r.join().expect("a seed runner"))
            .collect();
        failed.sort();
        failed
    });
    if let Some((seed, why)) = failed.first() {
        panic!("simulation seed {seed} failed (rerun: SIM_SEED={seed}): {why}");
    }
}
