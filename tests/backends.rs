//! Redis and Postgres together: recovery (`since`) reads Postgres exactly as
//! it does with Postgres alone, after a restart and after the in-memory
//! history evicted what the client missed, while `memberCount` stays
//! cluster-wide; and a message whose own copy never comes back from the
//! subscription is still stored, acknowledged and delivered, once.
//!
//! Each test works under its own random Redis key prefix on the shared Redis
//! (127.0.0.1:6379, keys deleted at the end) and in a database of its own on
//! the shared Postgres (127.0.0.1:5432, dropped at the end); the lost-copy
//! test starts a private `redis-server` instead of the shared Redis.
//! Without them a test prints a line starting with `SKIP` and returns,
//! except under `CI=true`, where it fails.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ids, poll, rooms_on_cores, send_all, stop, Client, Server};
use serde_json::{json, Value};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";
const REDIS_ADDR: &str = "127.0.0.1:6379";
const PG_ADDR: &str = "127.0.0.1:5432";
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One test at a time: each starts several servers on a two-core machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether both backends answer; prints SKIP when not, fails under CI=true.
fn backends_reachable() -> bool {
    for (what, addr) in [("Redis", REDIS_ADDR), ("Postgres", PG_ADDR)] {
        let addr: SocketAddr = addr.parse().unwrap();
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            common::skip(&format!("{what} is not reachable on {addr}"));
            return false;
        }
    }
    true
}

/// Runs SQL through a throwaway current-thread runtime (statements only).
fn sql(url: &str, query: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let driver = tokio::spawn(conn);
        client
            .simple_query(query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        drop(client);
        let _ = driver.await;
    });
}

/// Rows of `chat_messages` in the database at `url`.
fn stored_messages(url: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let driver = tokio::spawn(conn);
        let row = client
            .query_one("SELECT count(*) FROM chat_messages", &[])
            .await
            .unwrap();
        let n: i64 = row.get(0);
        drop(client);
        let _ = driver.await;
        n as usize
    })
}

/// A Redis key prefix and a Postgres database of the test's own, both
/// removed on drop.
struct Backends {
    /// REDIS_URL.
    redis_url: String,
    /// REDIS_PREFIX.
    prefix: String,
    /// The database's name.
    db: String,
    /// DATABASE_URL for it.
    db_url: String,
}

impl Backends {
    fn create(test: &str) -> Backends {
        Backends::on(test, SHARED_REDIS)
    }

    /// Like [`Backends::create`] on the Redis at `redis_url`.
    fn on(test: &str, redis_url: &str) -> Backends {
        let db = format!("chatd_t_{:016x}", rand::random::<u64>());
        sql(ADMIN_URL, &format!("CREATE DATABASE {db}"));
        Backends {
            redis_url: redis_url.to_string(),
            prefix: format!("chatdtest:{test}:{:08x}:", rand::random::<u32>()),
            db_url: format!("postgres://postgres@127.0.0.1:5432/{db}"),
            db,
        }
    }

    /// The settings of an instance on both backends.
    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("REDIS_URL", self.redis_url.as_str()),
            ("REDIS_PREFIX", self.prefix.as_str()),
            ("DATABASE_URL", self.db_url.as_str()),
            ("RATE_LIMIT_MAX_MESSAGES", "1000000"),
        ];
        env.extend_from_slice(extra);
        env
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            sql(
                ADMIN_URL,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
            )
        });
        let Ok(client) = redis::Client::open(self.redis_url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut con)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut con);
        }
    }
}

/// Sends `n` messages to `room` and returns the broadcasts the sender got back.
/// The next `n` chat messages of a client.
fn next_messages(client: &mut Client, n: usize) -> Vec<Value> {
    (0..n).map(|_| client.recv_type("message")).collect()
}

/// Joins `room` with `since` through `join_room` and returns `room_joined`.
fn join_since(client: &mut Client, room: &str, since: &str) -> Value {
    client.send(json!({"type":"join_room","roomId":room,"since":since}));
    let joined = client.recv_type("room_joined");
    assert_eq!(joined["roomId"], room);
    joined
}

#[test]
fn recovery_with_redis_and_postgres_reads_postgres_after_a_restart() {
    if !backends_reachable() {
        return;
    }
    let _serial = serial();
    let backends = Backends::create("restart");
    let env = backends.env(&[]);
    // `room` is owned by core 0, `other` by core 1 (one core: both core 0);
    // `local` is another room of core 0.
    let (room, other) = rooms_on_cores("recover");
    let (local, _) = rooms_on_cores("recover-local");
    // Instance b holds a member of the room across a's restart: memberCount
    // must count it (cluster-wide, from Redis).
    let b = Server::start(&env);
    let (mut watcher, _) = b.connect("watcher", &room);
    let mut a = Server::start(&env);
    let (mut alice, _) = a.connect("alice", &room);
    let sent = send_all(&mut alice, &room, 50, "m");
    assert_eq!(
        next_messages(&mut watcher, 50),
        sent,
        "b got them via Redis"
    );
    let first = ids(&sent)[0].clone();
    drop(alice);
    stop(&mut a);

    let a = Server::start(&env);
    // The initial room's `since` on the URL (the join is the connection's
    // own core's: the room owner).
    let (mut bob, joined) = a.connect_with("bob", &room, &format!("since={first}"));
    assert_eq!(joined["memberCount"], 2, "watcher on b, bob on a");
    assert_eq!(next_messages(&mut bob, 49), sent[1..], "URL since");
    // join_room with `since` from a connection on the other core.
    let (mut carol, _) = a.connect("carol", &other);
    let joined = join_since(&mut carol, &room, &first);
    assert_eq!(joined["memberCount"], 3, "watcher, bob, carol");
    assert_eq!(next_messages(&mut carol, 49), sent[1..], "remote join_room");
    // join_room with `since` on the room owner's own core.
    let (mut dave, _) = a.connect("dave", &local);
    let joined = join_since(&mut dave, &room, &first);
    assert_eq!(joined["memberCount"], 4, "watcher, bob, carol, dave");
    assert_eq!(next_messages(&mut dave, 49), sent[1..], "local join_room");

    // Then live, with nothing missed or repeated in between.
    let (mut alice, _) = a.connect("alice", &room);
    let live = send_all(&mut alice, &room, 1, "live");
    for (who, client) in [
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ] {
        assert_eq!(
            next_messages(client, 1),
            live,
            "{who}: live after the replay"
        );
    }
    assert_eq!(next_messages(&mut watcher, 1), live);
    assert!(
        ids(&live)[0] > ids(&sent)[49],
        "ids keep increasing across the restart"
    );
}

#[test]
fn recovery_with_redis_and_postgres_reads_postgres_after_memory_eviction() {
    if !backends_reachable() {
        return;
    }
    let _serial = serial();
    let backends = Backends::create("evict");
    // Memory holds the last 10 of a room: a `since` 49 back needs Postgres.
    let env = backends.env(&[("HISTORY_PER_ROOM", "10")]);
    let (room, other) = rooms_on_cores("evict");
    let (local, _) = rooms_on_cores("evict-local");
    let a = Server::start(&env);
    let (mut alice, _) = a.connect("alice", &room);
    let sent = send_all(&mut alice, &room, 50, "m");
    let first = ids(&sent)[0].clone();
    // The contract's bound: broadcast messages are in Postgres within 1 s.
    let stored = poll(Duration::from_secs(1), || {
        (stored_messages(&backends.db_url) == 50).then_some(())
    });
    assert!(stored.is_some(), "the 50 messages are in Postgres");

    let (mut bob, joined) = a.connect_with("bob", &room, &format!("since={first}"));
    assert_eq!(joined["memberCount"], 2, "alice and bob");
    assert_eq!(next_messages(&mut bob, 49), sent[1..], "URL since");
    let (mut carol, _) = a.connect("carol", &other);
    let joined = join_since(&mut carol, &room, &first);
    assert_eq!(joined["memberCount"], 3);
    assert_eq!(next_messages(&mut carol, 49), sent[1..], "remote join_room");
    let (mut dave, _) = a.connect("dave", &local);
    let joined = join_since(&mut dave, &room, &first);
    assert_eq!(joined["memberCount"], 4);
    assert_eq!(next_messages(&mut dave, 49), sent[1..], "local join_room");

    let live = send_all(&mut alice, &room, 1, "live");
    for (who, client) in [
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ] {
        assert_eq!(
            next_messages(client, 1),
            live,
            "{who}: live after the replay"
        );
    }
}

/// A private redis-server on a free port whose pub/sub clients are cut off
/// when more than 4 KiB waits in their output buffer: a message larger than
/// that is published (other clients would get it) but kills the
/// subscription that should carry it. Killed on drop.
struct StingyRedis {
    /// The process.
    child: Child,
    /// Its port.
    port: u16,
}

impl StingyRedis {
    /// None when redis-server is not installed.
    fn start() -> Option<StingyRedis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--client-output-buffer-limit",
                "pubsub 4096 4096 0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let up = poll(Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        assert!(up.is_some(), "private redis-server did not start on {port}");
        Some(StingyRedis { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for StingyRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stored (message id, content length) rows of `room`, oldest first.
fn stored_rows(url: &str, room: &str) -> Vec<(String, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let driver = tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT message_id, payload FROM chat_messages WHERE room_id = $1 ORDER BY message_id",
                &[&room],
            )
            .await
            .unwrap();
        let out = rows
            .iter()
            .map(|r| {
                let payload: String = r.get(1);
                let v: Value = serde_json::from_str(&payload).unwrap();
                (r.get(0), v["content"].as_str().unwrap().len())
            })
            .collect();
        drop(client);
        let _ = driver.await;
        out
    })
}

fn redis_up(server: &Server) -> bool {
    let (code, body) = server.get("/healthz", None);
    let v: Value = serde_json::from_str(&body).unwrap();
    code == 200 && v["backends"]["redis"] == "up"
}

#[test]
fn a_message_whose_own_copy_is_lost_is_stored_acked_and_delivered_once() {
    if !backends_reachable() {
        return;
    }
    let Some(redis) = StingyRedis::start() else {
        common::skip("redis-server is not installed");
        return;
    };
    let _serial = serial();
    let backends = Backends::on("lostcopy", &redis.url());
    let a = Server::start(&backends.env(&[("MAX_MESSAGE_LENGTH", "100000")]));
    let room = "lost-copy";
    let (mut alice, _) = a.connect("alice", room);
    let (mut bob, _) = a.connect("bob", room);
    assert!(redis_up(&a));

    // 20,000 characters: Redis runs the script and publishes, and cuts the
    // instance's subscription off instead of delivering the copy.
    let big = "x".repeat(20_000);
    alice.send(json!({"type":"message","content":big,"clientMsgId":"big-1"}));
    let mine = alice.recv_type("message");
    let id = mine["messageId"].as_str().unwrap().to_string();
    assert_eq!(mine["content"].as_str().map(str::len), Some(20_000));
    let ack = alice.recv_type("ack");
    assert_eq!(
        (ack["clientMsgId"].as_str(), ack["messageId"].as_str()),
        (Some("big-1"), Some(id.as_str()))
    );
    assert_eq!(bob.recv_type("message"), mine, "delivered on the instance");
    assert_eq!(a.wait_metric("chat_redis_echo_lost_total", 1.0), Some(1.0));
    let stored = poll(Duration::from_secs(1), || {
        let rows = stored_rows(&backends.db_url, room);
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(stored, Some(vec![(id.clone(), 20_000)]), "stored once");

    // Redis is back (the subscription reconnects): a retry with the same
    // clientMsgId is answered with the same id, not left waiting, and not
    // broadcast again.
    assert!(poll(Duration::from_secs(8), || redis_up(&a).then_some(())).is_some());
    alice.send(json!({"type":"message","content":"retry","clientMsgId":"big-1"}));
    let again = alice.recv_type("ack");
    assert_eq!(
        (again["clientMsgId"].as_str(), again["messageId"].as_str()),
        (Some("big-1"), Some(id.as_str()))
    );
    alice.send(json!({"type":"message","content":"after","clientMsgId":"after-1"}));
    for client in [&mut alice, &mut bob] {
        let next = client.recv_type("message");
        assert_eq!(next["content"], "after", "nothing in between: {next}");
        assert!(next["messageId"].as_str().unwrap() > id.as_str());
    }
    let stored = poll(Duration::from_secs(1), || {
        let rows = stored_rows(&backends.db_url, room);
        (rows.len() == 2).then_some(rows)
    })
    .unwrap_or_else(|| stored_rows(&backends.db_url, room));
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0], (id, 20_000));
    assert_eq!(stored[1].1, "after".len());
}
