//! Redis backend against a real Redis: ordering across instances, typing and
//! presence across instances, cluster-wide memberCount and presence, expiry
//! after SIGKILL, an outage and its recovery, bad settings, and `rediss://`
//! through a private TLS-only redis-server.
//!
//! The shared Redis is 127.0.0.1:6379; each test works under its own random
//! key prefix and deletes its keys at the end. The outage test starts a
//! private `redis-server` on a free port and stops only that one. Without a
//! reachable Redis (or `redis-server` for the outage test) a test prints a
//! line starting with `SKIP` and returns, except under `CI=true`, where it
//! fails.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{poll, Client, Server};
use serde_json::{json, Value};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// Whether the test may run; under CI=true a missing Redis fails the test.
fn redis_reachable() -> bool {
    let ok = TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !ok {
        common::skip("Redis is not reachable on 127.0.0.1:6379");
    }
    ok
}

/// A random key prefix whose keys are deleted when it drops.
struct Prefix {
    /// The prefix.
    name: String,
    /// The Redis holding the keys.
    url: String,
}

impl Prefix {
    fn new(test: &str, url: &str) -> Prefix {
        Prefix {
            name: format!("chatdtest:{test}:{:08x}:", rand::random::<u32>()),
            url: url.to_string(),
        }
    }

    /// The settings of an instance under this prefix.
    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("REDIS_URL", self.url.as_str()),
            ("REDIS_PREFIX", self.name.as_str()),
            ("RATE_LIMIT_MAX_MESSAGES", "10000"),
        ];
        env.extend_from_slice(extra);
        env
    }

    /// Keys under the prefix now.
    fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return Vec::new();
        };
        let pattern = format!("{}*", self.name);
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut con).unwrap();
        keys.sort();
        keys
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        if let Ok(client) = redis::Client::open(self.url.as_str()) {
            if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut con);
            }
        }
    }
}

fn message(content: &str) -> Value {
    json!({"type": "message", "content": content})
}

/// The next `n` chat messages a client receives, as (id, user, content).
fn messages(client: &mut Client, n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|_| {
            let m = client.recv_type("message");
            (
                m["messageId"].as_str().unwrap().to_string(),
                m["userId"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The next presence frame about `user`.
fn presence_of(client: &mut Client, user: &str) -> String {
    loop {
        let p = client.recv_type("presence");
        if p["userId"] == user {
            return p["status"].as_str().unwrap().to_string();
        }
    }
}

fn status(server: &Server, user: &str) -> String {
    let token = server.token("reader");
    let (code, body) = server.get(&format!("/api/chats/users/{user}/status"), Some(&token));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Polls a user's status on `server` until it is `want` (writes are batched
/// for a few milliseconds); returns the last status seen.
fn wait_status(server: &Server, user: &str, want: &str) -> String {
    poll(Duration::from_secs(5), || {
        let s = status(server, user);
        (s == want).then_some(s)
    })
    .unwrap_or_else(|| status(server, user))
}

/// Polls a room's online users on `server` until they are `want`.
fn wait_online(server: &Server, room: &str, want: &[&str]) -> Vec<String> {
    poll(Duration::from_secs(5), || {
        let users = room_online(server, room);
        (users == want).then_some(users)
    })
    .unwrap_or_else(|| room_online(server, room))
}

fn room_online(server: &Server, room: &str) -> Vec<String> {
    let token = server.token("reader");
    let (code, body) = server.get(&format!("/api/chats/rooms/{room}/presence"), Some(&token));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_instances_deliver_one_order_with_typing_and_presence() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("order", SHARED_REDIS);
    let a = Server::start(&prefix.env(&[]));
    let b = Server::start(&prefix.env(&[]));
    let room = "order-room";
    let (mut r1, _) = a.connect("r1", room);
    let (mut r2, _) = b.connect("r2", room);
    let (mut s1, _) = a.connect("s1", room);
    let (mut s2, _) = b.connect("s2", room);
    let (mut s3, _) = a.connect("s3", room);

    const EACH: usize = 20;
    for i in 0..EACH {
        s1.send(message(&format!("s1-{i}")));
        s2.send(message(&format!("s2-{i}")));
        s3.send(message(&format!("s3-{i}")));
    }
    let seen: Vec<Vec<(String, String, String)>> = [&mut r1, &mut r2, &mut s1, &mut s2, &mut s3]
        .into_iter()
        .map(|c| messages(c, 3 * EACH))
        .collect();
    for (i, other) in seen.iter().enumerate().skip(1) {
        assert_eq!(&seen[0], other, "receiver {i} saw another order");
    }
    let ids: Vec<&String> = seen[0].iter().map(|m| &m.0).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids do not sort in delivery order: {ids:?}"
    );
    for sender in ["s1", "s2", "s3"] {
        let contents: Vec<&String> = seen[0]
            .iter()
            .filter(|m| m.1 == sender)
            .map(|m| &m.2)
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{sender}-{i}")).collect();
        assert_eq!(
            contents,
            expected.iter().collect::<Vec<_>>(),
            "{sender}'s own order"
        );
    }
    // Every instance got the other's messages through Redis.
    assert!(
        a.metric("chat_redis_received_total{kind=\"message\"}")
            .unwrap()
            >= EACH as f64
    );
    assert!(
        b.metric("chat_redis_received_total{kind=\"message\"}")
            .unwrap()
            >= 2.0 * EACH as f64
    );

    // Typing crosses instances, both ways.
    s1.send(json!({"type": "typing", "isTyping": true}));
    let t = r2.recv_type("typing_indicator");
    assert_eq!(
        (t["userId"].as_str(), t["isTyping"].as_bool()),
        (Some("s1"), Some(true))
    );
    s2.send(json!({"type": "typing", "isTyping": false}));
    // r1 shares instance a with s1, whose indicator came first.
    let t = r1.recv_type("typing_indicator");
    assert_eq!(t["userId"], "s1");
    let t = r1.recv_type("typing_indicator");
    assert_eq!(
        (t["userId"].as_str(), t["isTyping"].as_bool()),
        (Some("s2"), Some(false))
    );

    // Presence crosses instances: online on connect, offline on close.
    let (late, _) = b.connect("late", room);
    assert_eq!(presence_of(&mut r1, "late"), "online");
    late.close();
    assert_eq!(presence_of(&mut r1, "late"), "offline");
}

#[test]
fn member_count_and_presence_are_cluster_wide() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("count", SHARED_REDIS);
    let a = Server::start(&prefix.env(&[]));
    let b = Server::start(&prefix.env(&[]));
    let room = "count-room";
    let (ann, joined) = a.connect("ann", room);
    assert_eq!(joined["memberCount"], 1);
    let (mut bob, joined) = b.connect("bob", room);
    assert_eq!(joined["memberCount"], 2, "ann on a, bob on b");
    // A second connection of ann, on b: still two users.
    let (ann2, joined) = b.connect("ann", room);
    assert_eq!(joined["memberCount"], 2);
    // join_room counts across instances too.
    let (mut cat, _) = a.connect("cat", "elsewhere");
    cat.send(json!({"type": "join_room", "roomId": room}));
    let joined = cat.recv_type("room_joined");
    assert_eq!(
        (joined["roomId"].as_str(), joined["memberCount"].as_u64()),
        (Some(room), Some(3))
    );

    // Offline only when the user's last connection in the cluster closes:
    // ann's connection on b closing leaves ann online (she is on a).
    let (mut watcher, _) = b.connect("watcher", room);
    ann2.close();
    watcher.send(message("after ann2"));
    loop {
        let f = watcher.recv();
        assert!(
            !(f["type"] == "presence" && f["userId"] == "ann"),
            "ann announced {f} while still on a"
        );
        if f["type"] == "message" && f["content"] == "after ann2" {
            break;
        }
    }
    assert_eq!(wait_status(&b, "ann", "online"), "online");
    ann.close();
    assert_eq!(presence_of(&mut watcher, "ann"), "offline");
    assert_eq!(wait_status(&b, "ann", "offline"), "offline");
    let (_ann, _) = a.connect("ann", room);

    // The presence routes of either instance answer for the cluster.
    assert_eq!(
        wait_status(&b, "cat", "online"),
        "online",
        "cat is on a only"
    );
    assert_eq!(
        wait_status(&a, "bob", "online"),
        "online",
        "bob is on b only"
    );
    assert_eq!(status(&a, "nobody"), "offline");
    let all = ["ann", "bob", "cat", "watcher"];
    assert_eq!(wait_online(&a, room, &all), all);
    assert_eq!(wait_online(&b, room, &all), all);
    // bob leaves the room: gone from its users on both instances.
    bob.send(json!({"type": "leave_room", "roomId": room}));
    bob.recv_type("room_left");
    let rest = ["ann", "cat", "watcher"];
    assert_eq!(wait_online(&a, room, &rest), rest);
    assert_eq!(
        wait_status(&a, "bob", "online"),
        "online",
        "still connected"
    );
}

#[test]
fn a_killed_instance_leaves_its_users_offline_after_the_expiry() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("kill", SHARED_REDIS);
    let env = prefix.env(&[("PRESENCE_TTL_SECS", "2")]);
    let mut a = Server::start(&env);
    let b = Server::start(&env);
    let room = "kill-room";
    let (_u, _) = a.connect("victim", room);
    let (mut watcher, _) = b.connect("watcher", room);
    assert_eq!(wait_status(&b, "victim", "online"), "online");
    assert_eq!(
        wait_online(&b, room, &["victim", "watcher"]),
        ["victim", "watcher"]
    );
    let online_keys = |prefix: &Prefix| {
        prefix
            .keys()
            .iter()
            .filter(|k| k.contains(":online:"))
            .count()
    };
    assert_eq!(online_keys(&prefix), 2, "one online set per instance");
    // The live instance keeps its users online past the expiry (heartbeats).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status(&b, "victim"), "online", "refreshed by a's heartbeat");

    a.child.kill().unwrap(); // SIGKILL: no goodbye
    a.child.wait().unwrap();
    let killed = Instant::now();
    let gone = poll(Duration::from_secs(8), || {
        (status(&b, "victim") == "offline").then_some(killed.elapsed())
    });
    let after = gone.expect("victim still online 8 s after its instance was killed");
    assert!(
        after <= Duration::from_secs(3),
        "offline after {after:?}, expiry is 2 s"
    );
    assert_eq!(room_online(&b, room), vec!["watcher"]);
    // The victim stops counting in memberCount too (its score in the room's
    // set expires with its instance's last heartbeat, a moment after it).
    let counted = poll(Duration::from_secs(2), || {
        let (late, joined) = b.connect("late", room);
        late.close();
        (joined["memberCount"] == 2).then_some(())
    });
    assert!(counted.is_some(), "the killed instance's user still counts");
    // b's own user is still there, and b keeps working.
    assert_eq!(status(&b, "watcher"), "online");
    watcher.send(message("still here"));
    assert_eq!(watcher.recv_type("message")["content"], "still here");
    // The dead instance's keys expire too: one online set is left, b's.
    let left = poll(Duration::from_secs(5), || {
        (online_keys(&prefix) == 1).then_some(())
    });
    assert!(left.is_some(), "keys: {:?}", prefix.keys());
}

/// A private redis-server on a free port, killed on drop.
struct PrivateRedis {
    /// The process.
    child: Child,
    /// Its port.
    port: u16,
}

impl PrivateRedis {
    /// Starts one on `port` (0: a free one); None when redis-server is missing.
    fn start(port: u16) -> Option<PrivateRedis> {
        PrivateRedis::start_with(port, &[])
    }

    /// One that speaks only TLS (`--port 0 --tls-port`), with `pki`'s
    /// server certificate and no client certificates asked for; its URL is
    /// [`PrivateRedis::tls_url`].
    fn start_tls(pki: &common::Pki) -> Option<PrivateRedis> {
        let (crt, key, ca) = (
            pki.path("server.crt"),
            pki.path("server.key"),
            pki.path("ca.crt"),
        );
        PrivateRedis::start_with(
            0,
            &[
                "--tls-cert-file",
                &crt,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    fn start_with(port: u16, tls: &[&str]) -> Option<PrivateRedis> {
        let port = if port == 0 {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            port
        };
        let port_text = port.to_string();
        // With TLS, the plain port is closed (0) and `port` is the TLS one.
        let ports = if tls.is_empty() {
            vec!["--port", &port_text]
        } else {
            vec!["--port", "0", "--tls-port", &port_text]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(tls)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut child = child;
        let up = poll(Duration::from_secs(5), || {
            if !tls.is_empty() && matches!(child.try_wait(), Ok(Some(_))) {
                // Exited at once: a redis-server built without TLS refuses --tls-port.
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        });
        match up {
            Some(true) => Some(PrivateRedis { child, port }),
            Some(false) => None,
            None => panic!("private redis-server did not start on {port}"),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz(server: &Server) -> (u16, Value) {
    let (code, body) = server.get("/healthz", None);
    (code, serde_json::from_str(&body).unwrap())
}

#[test]
fn redis_outage_keeps_local_chat_and_recovers_without_restart() {
    let Some(redis) = PrivateRedis::start(0) else {
        common::skip("redis-server is not installed");
        return;
    };
    let prefix = Prefix::new("outage", &redis.url());
    let a = Server::start(&prefix.env(&[]));
    let b = Server::start(&prefix.env(&[]));
    let room = "outage-room";
    let (mut x1, _) = a.connect("x1", room);
    let (mut x2, _) = a.connect("x2", room);
    let (mut y, _) = b.connect("y", room);
    assert_eq!(healthz(&a).0, 200);

    x1.send(message("m1 before"));
    for c in [&mut x1, &mut x2, &mut y] {
        assert_eq!(c.recv_type("message")["content"], "m1 before");
    }

    let port = redis.stop();
    for server in [&a, &b] {
        let down = poll(Duration::from_secs(5), || {
            let (code, body) = healthz(server);
            (code == 503).then_some(body)
        })
        .expect("/healthz did not report the outage");
        assert_eq!(down["down"], json!(["redis"]));
        assert_eq!(down["backends"]["redis"], "down");
    }
    // Live chat within the instance goes on.
    x1.send(message("m2 during"));
    for c in [&mut x1, &mut x2] {
        assert_eq!(c.recv_type("message")["content"], "m2 during");
    }
    assert_eq!(a.metric("chat_redis_local_fallback_total"), Some(1.0));
    // Presence routes answer from the instance's own state meanwhile.
    assert_eq!(status(&a, "x2"), "online");

    let _redis = PrivateRedis::start(port).expect("restart redis-server");
    for server in [&a, &b] {
        let up = poll(Duration::from_secs(8), || {
            let (code, body) = healthz(server);
            (code == 200).then_some(body)
        })
        .expect("/healthz did not recover");
        assert_eq!(up["backends"]["redis"], "up");
    }
    assert!(a.metric("chat_redis_reconnects_total").unwrap() >= 1.0);
    // Cross-instance delivery works again, both ways.
    x1.send(message("m3 after"));
    for c in [&mut x1, &mut x2, &mut y] {
        assert_eq!(c.recv_type("message")["content"], "m3 after");
    }
    y.send(message("m4 from b"));
    for c in [&mut x1, &mut x2, &mut y] {
        assert_eq!(c.recv_type("message")["content"], "m4 from b");
    }
    // Presence was rewritten into the restarted (empty) Redis.
    assert_eq!(status(&b, "x1"), "online");
    assert_eq!(room_online(&b, room), ["x1", "x2", "y"]);

    // Nothing was lost from the history, in order.
    let token = a.token("x1");
    let (code, body) = a.get(&format!("/api/chats/rooms/{room}/messages"), Some(&token));
    assert_eq!(code, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let stored: Vec<(&str, &str)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["messageId"].as_str().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect();
    let contents: Vec<&str> = stored.iter().map(|m| m.1).collect();
    assert_eq!(
        contents,
        ["m1 before", "m2 during", "m3 after", "m4 from b"]
    );
    assert!(stored.windows(2).all(|w| w[0].0 < w[1].0), "{stored:?}");
}

#[test]
fn the_sequencing_script_is_monotonic_per_room_and_publishes_its_id() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("script", SHARED_REDIS);
    let client = redis::Client::open(SHARED_REDIS).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut sub = client.get_connection().unwrap();
    let mut pubsub = sub.as_pubsub();
    let (last, channel) = (
        format!("{}last", prefix.name),
        format!("{}chan", prefix.name),
    );
    pubsub.subscribe(&channel).unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let script = redis::Script::new(chatd::redis::worker::SEQUENCE_SCRIPT);
    let head = "m0123456789abcdef";
    let run = |con: &mut redis::Connection, floor: &str| -> String {
        script
            .key(&last)
            .key(&channel)
            .arg(head)
            .arg("TAIL")
            .arg(floor)
            .arg("ABCDEFGHJKMNPQRS")
            .arg(60_000)
            .invoke(con)
            .unwrap()
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A fresh room: Redis's time and the caller's random part.
    let first = run(&mut con, "");
    let id = ulid::Ulid::from_string(&first).unwrap();
    assert!(id.timestamp_ms().abs_diff(now_ms) < 5_000, "{first}");
    assert!(first.ends_with("ABCDEFGHJKMNPQRS"));
    let msg = pubsub.get_message().unwrap();
    assert_eq!(
        msg.get_payload::<String>().unwrap(),
        format!("{head}{first}TAIL")
    );
    // A floor ahead of the clock (local ids during an outage): floor + 1.
    let floor = ulid::Ulid::from_parts(now_ms + 3_600_000, u128::from(u64::MAX));
    let second = run(&mut con, &floor.to_string());
    assert_eq!(second, floor.increment().unwrap().to_string());
    // The room's last id now leads: every next id is one more, in order.
    let mut prev = second.clone();
    for _ in 0..50 {
        let next = run(&mut con, "");
        assert!(next > prev, "{next} after {prev}");
        assert_eq!(
            ulid::Ulid::from_string(&next).unwrap(),
            ulid::Ulid::from_string(&prev).unwrap().increment().unwrap()
        );
        prev = next;
    }
    // A carry through the whole random part into the time part.
    let full = ulid::Ulid::from_parts(now_ms + 7_200_000, (1u128 << 80) - 1);
    let carried = run(&mut con, &full.to_string());
    assert_eq!(
        carried,
        ulid::Ulid::from_parts(now_ms + 7_200_001, 0).to_string()
    );
}

#[test]
fn bad_redis_settings_stop_start_up_naming_the_variable() {
    for (env, name) in [
        (vec![("REDIS_URL", "not a url")], "REDIS_URL"),
        (vec![("REDIS_URL", "http://127.0.0.1:6379")], "REDIS_URL"),
        (vec![("PRESENCE_TTL_SECS", "0")], "PRESENCE_TTL_SECS"),
        (vec![("PRESENCE_TTL_SECS", "soon")], "PRESENCE_TTL_SECS"),
        (vec![("PRESENCE_TTL_SECS", "1")], "PRESENCE_TTL_SECS"),
        (vec![("REDIS_BUFFER", "0")], "REDIS_BUFFER"),
        (vec![("REDIS_PREFIX", "a{b}")], "REDIS_PREFIX"),
    ] {
        let (code, stderr) = common::start_refused(&env);
        assert_ne!(code, Some(0), "{env:?} started");
        assert!(code.is_some(), "{env:?} was killed instead of exiting");
        assert!(stderr.contains(name), "{env:?}: {stderr}");
    }
}

#[test]
fn fifty_thousand_repeated_joins_do_not_starve_other_users() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("repeat", SHARED_REDIS);
    // A small Redis queue: before repeated joins were answered locally, a
    // flood of them filled it and refused other users' messages.
    let server = Server::start(&prefix.env(&[("REDIS_BUFFER", "64")]));
    let (mut flooder, joined) = server.connect("flooder", "flood-room");
    assert_eq!(joined["memberCount"], 1);
    let (mut other, _) = server.connect("other", "quiet-room");
    const ROUNDS: usize = 50;
    const PER_ROUND: usize = 1000;
    let frame = json!({"type": "join_room", "roomId": "flood-room"}).to_string();
    let start = Instant::now();
    let (mut joined, mut limited) = (0usize, 0usize);
    for round in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            flooder
                .ws
                .write(tungstenite::Message::text(frame.clone()))
                .unwrap();
        }
        flooder.ws.flush().unwrap();
        // Another user in another room, while the flood is being handled.
        let content = format!("still accepted {round}");
        other.send(message(&content));
        let answer = loop {
            let f = other.recv();
            if f["type"] == "message" || f["type"] == "error" {
                break f;
            }
        };
        assert_eq!(answer["type"], "message", "round {round}: {answer}");
        assert_eq!(answer["content"], content.as_str());
        let mut answered = 0;
        while answered < PER_ROUND {
            let f = flooder.recv();
            answered += 1;
            match f["type"].as_str() {
                // A user's own connections may get its presence (contract
                // section 4); it is no answer to a join.
                Some("presence") => answered -= 1,
                Some("room_joined") => {
                    assert_eq!(f["roomId"], "flood-room", "{f}");
                    assert_eq!(f["memberCount"], 1, "{f}");
                    joined += 1;
                }
                Some("error") => {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                    assert!(f["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0), "{f}");
                    limited += 1;
                }
                _ => panic!("unexpected {f}"),
            }
        }
    }
    assert_eq!(joined + limited, ROUNDS * PER_ROUND);
    // The default budget: a burst of 20 (the connection's own join is not
    // one of them) and 10 a second after it.
    let most = 20 + 10 * start.elapsed().as_secs() as usize + 10;
    assert!(
        joined <= most,
        "{joined} joins answered in {:?}",
        start.elapsed()
    );
    assert!(joined >= 20, "{joined}");
    // Nothing was refused for a full Redis queue.
    assert_eq!(
        server.metric("chat_errors_total{code=\"unavailable\"}"),
        Some(0.0)
    );
}

#[test]
fn member_counts_follow_leaves_across_instances() {
    if !redis_reachable() {
        return;
    }
    let prefix = Prefix::new("leaves", SHARED_REDIS);
    let a = Server::start(&prefix.env(&[]));
    let b = Server::start(&prefix.env(&[]));
    let room = "leave-room";
    let join = |server: &Server, user: &str| -> u64 {
        let (mut c, _) = server.connect(user, "lobby-of-leaves");
        c.send(json!({"type": "join_room", "roomId": room}));
        let joined = c.recv_type("room_joined");
        assert_eq!(joined["roomId"], room);
        std::mem::forget(c); // stays connected for the rest of the test
        joined["memberCount"].as_u64().unwrap()
    };
    let (mut ann_a, first) = a.connect("ann", room);
    assert_eq!(first["memberCount"], 1);
    let (mut ann_b, second) = b.connect("ann", room);
    assert_eq!(second["memberCount"], 1, "one user on two instances");
    assert_eq!(join(&b, "bob"), 2);
    // ann leaves on a but is still in the room on b: she still counts.
    ann_a.send(json!({"type": "leave_room", "roomId": room}));
    ann_a.recv_type("room_left");
    assert_eq!(join(&a, "cat"), 3, "ann (on b), bob, cat");
    // ann leaves on b too: she no longer counts anywhere.
    ann_b.send(json!({"type": "leave_room", "roomId": room}));
    ann_b.recv_type("room_left");
    let rest = ["bob", "cat"];
    assert_eq!(wait_online(&a, room, &rest), rest);
    assert_eq!(join(&a, "dave"), 3, "bob, cat, dave");
    // The count is one sorted set per room, not a union of every instance's sets.
    assert!(
        prefix
            .keys()
            .iter()
            .any(|k| k.ends_with("room:{leave-room}:users")),
        "{:?}",
        prefix.keys()
    );
}

/// Redis over TLS (`rediss://`) with a private CA in BACKEND_CA_FILE: two
/// instances deliver each other's messages through a redis-server that
/// speaks only TLS; an instance trusting another CA reports Redis down with
/// the certificate error in its log.
#[test]
fn rediss_delivers_across_two_instances_and_checks_the_ca() {
    let Some(pki) = common::Pki::make("IP:127.0.0.1") else {
        return;
    };
    let Some(other) = common::Pki::make("IP:127.0.0.1") else {
        return;
    };
    let Some(redis) = PrivateRedis::start_tls(&pki) else {
        common::skip("redis-server is not installed or built without TLS");
        return;
    };
    let url = redis.tls_url();
    let ca = pki.path("ca.crt");
    let env = |ca: &str| -> Vec<(String, String)> {
        vec![
            ("REDIS_URL".into(), url.clone()),
            ("REDIS_PREFIX".into(), "chatdtest:tls:".into()),
            ("BACKEND_CA_FILE".into(), ca.to_string()),
        ]
    };
    let owned = env(&ca);
    let env_ref: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = Server::start(&env_ref);
    let b = Server::start(&env_ref);
    for server in [&a, &b] {
        let up = poll(Duration::from_secs(10), || {
            let (code, health) = healthz(server);
            (code == 200 && health["backends"]["redis"] == "up").then_some(())
        });
        assert!(up.is_some(), "Redis up over TLS: {:?}", healthz(server));
    }
    let room = "tls-room";
    let (mut bob, _) = b.connect("bob", room);
    let (mut alice, _) = a.connect("alice", room);
    alice.send(message("through rediss"));
    let mine = messages(&mut alice, 1);
    let got = messages(&mut bob, 1);
    assert_eq!(got, mine, "bob on the other instance got alice's message");
    assert_eq!(got[0].1, "alice");
    assert_eq!(got[0].2, "through rediss");

    let owned = env(&other.path("ca.crt"));
    let env_ref: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (c, log) = Server::start_with_log(&env_ref);
    let (code, health) = healthz(&c);
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["backends"]["redis"], "down", "{health}");
    drop(c);
    let lines = common::drain_log(&log, Duration::from_secs(5));
    assert!(
        lines.iter().any(|l| l.contains("UnknownIssuer")),
        "{lines:#?}"
    );
}
