//! The Postgres backend against a real Postgres: durability across SIGTERM
//! and restart, the 1 s write bound, concurrent migrations, read shapes,
//! the audit trail, an outage of a private cluster, and bad settings; TLS
//! (each `sslmode`, a private CA in BACKEND_CA_FILE) against a private
//! cluster with `ssl = on`, and history reads on their own pool while the
//! writer's INSERT waits on a lock.
//!
//! Each test works in a database of its own (`chatd_t_<random>`, created on
//! the shared server at 127.0.0.1:5432 and dropped afterwards). Without that
//! server the tests print a `SKIP` line and pass, except under `CI=true`,
//! where they fail.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ids, poll, rooms_on_cores, send_all, sql, stop, Client, Server, TestDb};
use serde_json::{json, Value};

/// One test at a time: each starts servers (and one a Postgres cluster) on
/// a two-core machine, and their timing assertions (the 1 s write bound)
/// should not compete with each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when a test needing `what` may run; prints SKIP otherwise, and
/// fails under CI=true.
fn available(ok: bool, what: &str) -> bool {
    if !ok {
        common::skip(&format!("{what} is not available"));
    }
    ok
}

/// First column of every row.
fn column(url: &str, query: &str) -> Vec<String> {
    sql(url, query)
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

/// Settings every server here gets: a rate limit that never refuses.
fn env<'a>(db: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("RATE_LIMIT_MAX_MESSAGES", "1000000"), ("DATABASE_URL", db)];
    v.extend_from_slice(extra);
    v
}

/// Sends `n` messages to `room` and returns the broadcasts the sender got back.
/// One history page over HTTP.
fn page(server: &Server, room: &str, query: &str) -> Value {
    let token = server.token("reader");
    let (status, body) = server.get(
        &format!("/api/chats/rooms/{room}/messages?{query}"),
        Some(&token),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON page")
}

/// Every message of `room`, walking pages of 200 back from the newest.
fn whole_history(server: &Server, room: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(b) => format!("limit=200&before={b}"),
            None => "limit=200".to_string(),
        };
        let p = page(server, room, &q);
        let msgs = p["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        before = Some(msgs[0]["messageId"].as_str().unwrap().to_string());
        let mut next = msgs;
        next.extend(all);
        all = next;
    }
    all
}

fn healthz(server: &Server) -> (u16, Value) {
    let (status, body) = server.get("/healthz", None);
    (status, serde_json::from_str(&body).expect("healthz JSON"))
}

#[test]
fn five_hundred_messages_survive_sigterm_and_restart() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    // Long interval and large batches: what is not written by SIGTERM time
    // must be written by the shutdown flush.
    let env = env(
        &db.url,
        &[("PG_FLUSH_INTERVAL_MS", "1000"), ("PG_BATCH_SIZE", "5000")],
    );
    let mut server = Server::start(&env);
    let (mut alice, _) = server.connect("alice", "durable");
    let sent = send_all(&mut alice, "durable", 500, "m");
    let sent_ids = ids(&sent);
    assert!(sent_ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    stop(&mut server);
    assert_eq!(db.count("chat_messages"), 500);

    let server = Server::start(&env);
    let history = whole_history(&server, "durable");
    assert_eq!(history.len(), 500);
    assert_eq!(ids(&history), sent_ids, "same ids, same order");
    assert_eq!(history, sent, "the stored frames are the broadcast ones");

    let (mut bob, _) = server.connect("bob", "durable");
    bob.send(json!({"type":"history","roomId":"durable","limit":200}));
    let frame = bob.recv_type("history");
    let newest = frame["messages"].as_array().unwrap();
    assert_eq!(ids(newest), sent_ids[300..].to_vec());
}

#[test]
fn broadcast_message_is_in_postgres_within_one_second() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    let server = Server::start(&env(&db.url, &[]));
    let (mut alice, _) = server.connect("alice", "quick");
    for i in 0..3 {
        alice.send(json!({"type":"message","content":format!("quick {i}")}));
        let broadcast = alice.recv_type("message");
        let seen = Instant::now();
        let id = broadcast["messageId"].as_str().unwrap().to_string();
        let query = format!(
            "SELECT payload FROM chat_messages WHERE room_id = 'quick' AND message_id = '{id}'"
        );
        let stored = poll(Duration::from_secs(1), || column(&db.url, &query).pop());
        let stored = stored
            .unwrap_or_else(|| panic!("message {id} not in Postgres 1 s after its broadcast"));
        assert!(seen.elapsed() <= Duration::from_millis(1100));
        let stored: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(stored, broadcast);
    }
    assert_eq!(
        server.metric("chat_pg_rows_written_total{table=\"messages\"}"),
        Some(3.0)
    );
    assert_eq!(server.metric("chat_pg_flush_rows_sum"), Some(3.0));
    assert!(
        server
            .metric("chat_pg_flush_duration_seconds_count")
            .unwrap()
            >= 1.0
    );
    assert_eq!(server.metric("chat_pg_up"), Some(1.0));
}

#[test]
fn migrations_by_two_instances_at_once_then_again() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    let env = env(&db.url, &[]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_with_log(&env));
        let b = s.spawn(|| Server::start_with_log(&env));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (server, log) in [&a, &b] {
        let (status, health) = healthz(server);
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["backends"]["postgres"], "up");
        let complaints: Vec<String> = log.try_iter().filter(|l| l.contains("postgres")).collect();
        assert!(complaints.is_empty(), "{complaints:?}");
    }
    assert_eq!(
        column(
            &db.url,
            "SELECT version FROM schema_migrations ORDER BY version"
        ),
        vec!["0001_history".to_string(), "0002_operator".to_string()]
    );
    drop((a, b));
    // Applied again on an existing schema: a no-op.
    let third = Server::start(&env);
    assert_eq!(healthz(&third).0, 200);
    assert_eq!(db.count("schema_migrations"), 2);
    let tables = column(
        &db.url,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    );
    assert_eq!(
        tables,
        vec![
            "chat_audit",
            "chat_bans",
            "chat_messages",
            "schema_migrations"
        ]
    );
}

/// Field names of every message of a page.
fn shapes(messages: &[Value]) -> Vec<BTreeSet<String>> {
    messages
        .iter()
        .map(|m| m.as_object().unwrap().keys().cloned().collect())
        .collect()
}

#[test]
fn pages_and_recovery_from_postgres_match_the_memory_shape() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    // Room owned by core 0; a second connection starts on core 1's room, so
    // its join_room crosses cores.
    let (room, elsewhere) = rooms_on_cores("shape");
    let memory = Server::start(&[("RATE_LIMIT_MAX_MESSAGES", "1000000")]);
    let env = env(&db.url, &[]);
    let mut durable = Server::start(&env);

    let mut sent = Vec::new();
    for server in [&memory, &durable] {
        let (mut alice, _) = server.connect("alice", &room);
        sent.push(send_all(&mut alice, &room, 6, "shape"));
    }
    let (mem_sent, pg_sent) = (&sent[0], &sent[1]);
    let mem_page = page(&memory, &room, "limit=50");

    stop(&mut durable);
    let durable = Server::start(&env);
    let pg_page = page(&durable, &room, "limit=50");
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(keys(&pg_page), keys(&mem_page));
    assert_eq!(pg_page["roomId"], mem_page["roomId"]);
    let (pm, mm) = (
        pg_page["messages"].as_array().unwrap(),
        mem_page["messages"].as_array().unwrap(),
    );
    assert_eq!(shapes(pm), shapes(mm));
    assert_eq!(mm, mem_sent);
    assert_eq!(pm, pg_sent);
    for (p, m) in pm.iter().zip(mm) {
        for field in ["type", "roomId", "userId", "username", "content"] {
            assert_eq!(p[field], m[field], "{field}");
        }
    }
    let pg_ids = ids(pg_sent);

    // Bounded pages come from Postgres after the restart.
    let p = page(&durable, &room, &format!("after={}&limit=2", pg_ids[1]));
    assert_eq!(
        ids(p["messages"].as_array().unwrap()),
        pg_ids[2..4].to_vec()
    );
    let p = page(&durable, &room, &format!("before={}&limit=2", pg_ids[4]));
    assert_eq!(
        ids(p["messages"].as_array().unwrap()),
        pg_ids[2..4].to_vec()
    );

    // Recovery on connect: the initial room's missed messages, then live.
    let (mut bob, _) = durable.connect_with("bob", &room, &format!("since={}", pg_ids[2]));
    let replay: Vec<Value> = (0..3).map(|_| bob.recv_type("message")).collect();
    assert_eq!(&replay, &pg_sent[3..]);

    // Recovery through join_room from a connection on the other core.
    let (mut carol, _) = durable.connect("carol", &elsewhere);
    carol.send(json!({"type":"join_room","roomId":room,"since":pg_ids[0]}));
    let joined = carol.recv_type("room_joined");
    assert_eq!(joined["roomId"], room.as_str());
    let replay: Vec<Value> = (0..5).map(|_| carol.recv_type("message")).collect();
    assert_eq!(&replay, &pg_sent[1..]);

    // New messages (memory and Postgres) and old ones (Postgres only) merge
    // without duplicates, in order.
    let (mut alice, _) = durable.connect("alice", &room);
    let fresh = send_all(&mut alice, &room, 2, "fresh");
    for client in [&mut bob, &mut carol] {
        assert_eq!(
            client.recv_type("message"),
            fresh[0],
            "live after the replay"
        );
        assert_eq!(client.recv_type("message"), fresh[1]);
    }
    let mut expected = pg_sent.clone();
    expected.extend(fresh);
    let p = page(&durable, &room, "limit=50");
    assert_eq!(p["messages"].as_array().unwrap(), &expected);
    alice.send(json!({"type":"history","roomId":room,"limit":50}));
    let frame = alice.recv_type("history");
    assert_eq!(frame["messages"].as_array().unwrap(), &expected);
    assert_eq!(frame["roomId"], room.as_str());
}

#[test]
fn audit_records_survive_a_restart() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    let env = env(
        &db.url,
        &[
            ("MODERATION_BLOCKLIST", "darn"),
            ("MODERATION_PATTERNS", "forbidden"),
        ],
    );
    let mut server = Server::start(&env);
    let (mut alice, _) = server.connect("alice", "moderated");
    alice.send(json!({"type":"message","content":"darn it"}));
    let masked = alice.recv_type("message");
    assert_eq!(masked["content"], "**** it");
    alice.send(json!({"type":"message","content":"this is forbidden"}));
    let refused = alice.recv_type("error");
    assert_eq!(refused["code"], "message_blocked");
    stop(&mut server);

    let _restarted = Server::start(&env);
    let rows = sql(
        &db.url,
        "SELECT action, message_id, user_id, room_id, reason FROM chat_audit ORDER BY action",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][0].as_deref(), Some("blocked"));
    assert_eq!(rows[0][2].as_deref(), Some("alice"));
    assert_eq!(rows[0][3].as_deref(), Some("moderated"));
    assert!(
        rows[0][4].as_deref().unwrap().contains("pattern"),
        "{rows:?}"
    );
    assert_eq!(rows[1][0].as_deref(), Some("masked"));
    assert_eq!(rows[1][1].as_deref(), masked["messageId"].as_str());
    assert_eq!(rows[1][2].as_deref(), Some("alice"));
    // The blocked message was never stored; the masked one was, masked.
    let stored = column(&db.url, "SELECT payload FROM chat_messages");
    assert_eq!(stored.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&stored[0]).unwrap(), masked);
}

/// Finds a PostgreSQL server binary: PATH, /usr/local/bin, then Debian's
/// versioned directories.
fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .collect();
    dirs.push("/usr/local/bin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A private Postgres cluster in a temporary directory on a free port, which
/// the test may stop and start (the shared server is never touched).
///
/// initdb and postgres refuse to run as root; as root the commands run as
/// the `postgres` user through `su`, with the directory handed to it.
struct PrivateCluster {
    /// Temporary directory: data, socket, log.
    dir: PathBuf,
    /// Port it listens on, on 127.0.0.1.
    port: u16,
    /// `pg_ctl`'s path.
    pg_ctl: PathBuf,
    /// Run commands through `su postgres`.
    as_postgres: bool,
}

impl PrivateCluster {
    fn start() -> Option<PrivateCluster> {
        let cluster = PrivateCluster::init()?;
        cluster.pg_start();
        Some(cluster)
    }

    /// A cluster that speaks TLS with `pki`'s server certificate and takes
    /// TCP connections only over TLS (`hostssl`); the Unix socket
    /// ([`PrivateCluster::socket_url`]) stays open for the test's own
    /// queries.
    fn start_tls(pki: &common::Pki) -> Option<PrivateCluster> {
        let cluster = PrivateCluster::init()?;
        let data = cluster.data();
        for name in ["server.crt", "server.key"] {
            let to = data.join(name);
            std::fs::copy(pki.path(name), &to).unwrap();
            // Postgres refuses a key that others can read.
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if cluster.as_postgres {
                let status = Command::new("chown")
                    .args(["postgres:", to.to_str().unwrap()])
                    .status()
                    .unwrap();
                assert!(status.success(), "chown {name} to postgres");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        cluster.pg_start();
        Some(cluster)
    }

    /// A URL over the cluster's Unix socket (no TLS there).
    fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// initdb in a new directory; not started.
    fn init() -> Option<PrivateCluster> {
        let (initdb, pg_ctl) = (pg_bin("initdb"), pg_bin("pg_ctl"));
        if !available(
            initdb.is_some() && pg_ctl.is_some(),
            "initdb and pg_ctl (PostgreSQL server binaries)",
        ) {
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("chatd-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PrivateCluster {
            dir,
            port,
            pg_ctl: pg_ctl.unwrap(),
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", cluster.dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        cluster.run(&format!(
            "{} -D {} -A trust -U postgres --no-sync",
            initdb.unwrap().display(),
            cluster.data().display()
        ));
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a shell command (as postgres when we are root); panics with its
    /// output on failure.
    fn run(&self, cmd: &str) {
        let mut command = if self.as_postgres {
            let mut c = Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c", cmd]);
            c
        } else {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", cmd]);
            c
        };
        let out = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert!(
            out.status.success(),
            "{cmd}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, args: &str) {
        self.run(&format!(
            "{} -D {} -w {args}",
            self.pg_ctl.display(),
            self.data().display()
        ));
    }

    fn pg_start(&self) {
        let dir = self.dir.display();
        self.pg_ctl(&format!(
            "-l {dir}/log -o '-p {} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off' start",
            self.port
        ));
    }

    fn pg_stop_fast(&self) {
        self.pg_ctl("-m fast stop");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let cmd = format!(
            "{} -D {} -m immediate stop",
            self.pg_ctl.display(),
            self.data().display()
        );
        let _ = std::panic::catch_unwind(|| self.run(&cmd));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

#[test]
fn postgres_outage_keeps_chat_live_and_loses_nothing() {
    let _serial = serial();
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let url = cluster.url();
    let (mut server, log) = Server::start_with_log(&env(
        &url,
        &[
            ("PG_BUFFER_MESSAGES", "8"),
            ("PG_FLUSH_INTERVAL_MS", "50"),
            ("PG_SHUTDOWN_TIMEOUT_MS", "1000"),
        ],
    ));
    let count = || -> usize {
        column(&url, "SELECT count(*) FROM chat_messages")[0]
            .parse()
            .unwrap()
    };
    let (mut alice, _) = server.connect("alice", "outage");
    let (mut bob, _) = server.connect("bob", "outage");
    let mut accepted = ids(&send_all(&mut alice, "outage", 3, "before"));
    for id in &accepted {
        assert_eq!(
            bob.recv_type("message")["messageId"].as_str(),
            Some(id.as_str())
        );
    }
    assert!(poll(Duration::from_secs(2), || (count() == 3).then_some(())).is_some());

    cluster.pg_stop_fast();
    let down = poll(Duration::from_secs(10), || {
        let (status, health) = healthz(&server);
        (status == 503).then_some(health)
    })
    .expect("healthz 503 while Postgres is down");
    assert_eq!(down["down"], json!(["postgres"]));
    assert_eq!(down["backends"]["postgres"], "down");

    // Live chat goes on while the buffer has room...
    let during = ids(&send_all(&mut alice, "outage", 8, "during"));
    for id in &during {
        assert_eq!(
            bob.recv_type("message")["messageId"].as_str(),
            Some(id.as_str())
        );
    }
    accepted.extend(during);
    assert_eq!(server.metric("chat_pg_buffered_rows"), Some(8.0));
    // ...and beyond it messages are refused, not accepted.
    alice.send(json!({"type":"message","content":"one too many"}));
    let refused = alice.recv_type("error");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(
        server.wait_metric("chat_messages_received_total{outcome=\"unavailable\"}", 1.0),
        Some(1.0)
    );

    cluster.pg_start();
    let back = poll(Duration::from_secs(15), || {
        let (status, health) = healthz(&server);
        (status == 200).then_some(health)
    });
    assert!(
        back.is_some(),
        "healthz back to 200 once Postgres is back; cluster log:\n{}",
        read_log_tail(&cluster.dir.join("log"))
    );
    assert!(poll(Duration::from_secs(10), || (count() == 11).then_some(())).is_some());
    let stored = column(
        &url,
        "SELECT message_id FROM chat_messages ORDER BY message_id",
    );
    assert_eq!(stored, accepted, "every accepted message exactly once");
    assert_eq!(server.wait_metric("chat_pg_buffered_rows", 0.0), Some(0.0));

    // Accepting again; bob's next message is this one, not the refused one.
    let after = ids(&send_all(&mut alice, "outage", 1, "after"));
    assert_eq!(
        bob.recv_type("message")["messageId"].as_str(),
        Some(after[0].as_str())
    );
    assert!(poll(Duration::from_secs(2), || (count() == 12).then_some(())).is_some());
    // Reconnected on its own: the first connection and one after the outage.
    assert!(server.metric("chat_pg_connects_total").unwrap() >= 2.0);

    // Down for the whole shutdown wait: the exit says how much was not written.
    cluster.pg_stop_fast();
    assert!(poll(Duration::from_secs(10), || (healthz(&server).0 == 503)
        .then_some(()))
    .is_some());
    send_all(&mut alice, "outage", 2, "lost");
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let lines: Vec<String> = log.try_iter().map(|l| strip_ansi(&l)).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rows not written") && l.contains("left=2")),
        "{lines:#?}"
    );
}

/// The next `history` or `error` frame (skipping presence and messages).
fn history_answer(client: &mut Client) -> Value {
    loop {
        let v = client.recv();
        if v["type"] == "history" || v["type"] == "error" {
            return v;
        }
    }
}

/// Whole answers or errors (contract section 4): while Postgres is down, a
/// history page that memory cannot answer alone (HISTORY_PER_ROOM=5 keeps
/// the newest 5 of 12) is refused with `unavailable` over the WebSocket and
/// 503 over HTTP, never answered with memory's 5 as if they were the page.
/// A join with `since` still joins, with memory's replay and
/// `recovered:false`. Once Postgres is back the same page is whole.
#[test]
fn history_while_postgres_is_down_is_unavailable_not_partial() {
    let _serial = serial();
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let url = cluster.url();
    let server = Server::start(&env(
        &url,
        &[("HISTORY_PER_ROOM", "5"), ("PG_FLUSH_INTERVAL_MS", "50")],
    ));
    let count = || -> usize {
        column(&url, "SELECT count(*) FROM chat_messages")[0]
            .parse()
            .unwrap()
    };
    let room = "pgdown";
    let (mut alice, _) = server.connect("alice", room);
    let sent = ids(&send_all(&mut alice, room, 12, "m"));
    assert!(poll(Duration::from_secs(5), || (count() == 12).then_some(())).is_some());
    // Up: the page is whole, from Postgres and memory.
    alice.send(json!({"type": "history", "roomId": room, "limit": 50}));
    let whole = history_answer(&mut alice);
    assert_eq!(ids(whole["messages"].as_array().unwrap()), sent, "{whole}");

    cluster.pg_stop_fast();
    assert!(poll(Duration::from_secs(10), || (healthz(&server).0 == 503)
        .then_some(()))
    .is_some());
    alice.send(json!({"type": "history", "roomId": room, "limit": 50}));
    let refused = history_answer(&mut alice);
    assert_eq!(refused["type"], "error", "not a partial page: {refused}");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let token = server.token("reader");
    let (status, body) = server.get(
        &format!("/api/chats/rooms/{room}/messages?limit=50"),
        Some(&token),
    );
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
    // A page memory answers alone is still whole: the newest 3.
    alice.send(json!({"type": "history", "roomId": room, "limit": 3}));
    let newest = history_answer(&mut alice);
    assert_eq!(ids(newest["messages"].as_array().unwrap()), sent[9..]);

    let (mut bob, _) = server.connect("bob", "elsewhere");
    bob.send(json!({"type": "join_room", "roomId": room, "since": sent[0]}));
    let joined = bob.recv_type("room_joined");
    assert_eq!(joined["recovered"], false, "{joined}");
    let replay: Vec<Value> = (0..5).map(|_| bob.recv_type("message")).collect();
    assert_eq!(ids(&replay), sent[7..], "memory's part of the gap");

    cluster.pg_start();
    let back = poll(Duration::from_secs(20), || {
        alice.send(json!({"type": "history", "roomId": room, "limit": 50}));
        let answer = history_answer(&mut alice);
        (answer["type"] == "history").then_some(answer)
    })
    .expect("history answered again once Postgres is back");
    assert_eq!(ids(back["messages"].as_array().unwrap()), sent);
    assert_eq!(back["more"], false);
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn bad_settings_stop_start_up_naming_the_variable() {
    let _serial = serial();
    for (var, value) in [
        ("PG_BATCH_SIZE", "lots"),
        ("PG_BUFFER_MESSAGES", "0"),
        ("PG_FLUSH_INTERVAL_MS", "5000"),
        ("PG_SHUTDOWN_TIMEOUT_MS", "-1"),
        (
            "DATABASE_URL",
            "postgres://user:secret@127.0.0.1:notaport/db",
        ),
        ("DATABASE_URL", "postgres:///nohost"),
    ] {
        let (code, stderr) = common::start_refused(&[(var, value)]);
        assert_ne!(code, Some(0), "{var}={value} was accepted");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
        assert!(
            !stderr.contains("secret"),
            "the URL is not echoed: {stderr}"
        );
    }
}

/// Whether a plain (non-TLS) TCP connection to `url` is refused.
fn plain_tcp_refused(url: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio_postgres::connect(&format!("{url}?sslmode=disable"), tokio_postgres::NoTls)
            .await
            .is_err()
    })
}

/// Postgres over TLS with `sslmode=verify-full` and a private CA: the
/// cluster takes TCP connections only over TLS, and the server writes,
/// reads history through its read pool, and every one of its connections
/// shows `ssl` in `pg_stat_ssl`.
#[test]
fn postgres_over_tls_with_verify_full_stores_and_reads() {
    let _serial = serial();
    let Some(pki) = common::Pki::make("IP:127.0.0.1") else {
        return;
    };
    let Some(cluster) = PrivateCluster::start_tls(&pki) else {
        return;
    };
    let local = cluster.socket_url();
    assert!(
        plain_tcp_refused(&cluster.url()),
        "the cluster takes TCP connections only over TLS"
    );
    let url = format!("{}?sslmode=verify-full", cluster.url());
    let ca = pki.path("ca.crt");
    // HISTORY_PER_ROOM=2: a page of 6 needs Postgres, so it goes through the read pool.
    let mut server = Server::start(&env(
        &url,
        &[
            ("BACKEND_CA_FILE", &ca),
            ("HISTORY_PER_ROOM", "2"),
            ("PG_FLUSH_INTERVAL_MS", "50"),
        ],
    ));
    let up = poll(Duration::from_secs(10), || {
        let (status, health) = healthz(&server);
        (status == 200).then_some(health)
    });
    assert!(up.is_some(), "Postgres up over TLS");
    let room = "tls";
    let (mut alice, _) = server.connect("alice", room);
    let sent = ids(&send_all(&mut alice, room, 6, "over tls"));
    let count = || -> usize {
        column(&local, "SELECT count(*) FROM chat_messages")[0]
            .parse()
            .unwrap()
    };
    assert!(poll(Duration::from_secs(5), || (count() == 6).then_some(())).is_some());
    alice.send(json!({"type": "history", "roomId": room, "limit": 50}));
    let page = history_answer(&mut alice);
    assert_eq!(ids(page["messages"].as_array().unwrap()), sent, "{page}");
    assert_eq!(
        server.metric("chat_pg_reads_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    // The writer's connection and the read pool's: all over TLS.
    let rows = sql(
        &local,
        "SELECT s.ssl::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'chatd'",
    );
    assert!(rows.len() >= 2, "writer and a pooled reader: {rows:?}");
    assert!(
        rows.iter().all(|r| r[0].as_deref() == Some("true")),
        "{rows:?}"
    );
    stop(&mut server);
}

/// Starts a server on `url` with `ca` and reports whether Postgres came up
/// (healthz) and the server's log lines.
fn tls_attempt(url: &str, ca: Option<&str>) -> (bool, Vec<String>) {
    let mut extra = vec![];
    if let Some(ca) = ca {
        extra.push(("BACKEND_CA_FILE", ca));
    }
    let (mut server, log) = Server::start_with_log(&env(url, &extra));
    let up = healthz(&server).1["backends"]["postgres"] == "up";
    server.sigterm();
    let _ = server.wait_exit(Duration::from_secs(15));
    drop(server);
    let lines = common::drain_log(&log, Duration::from_secs(5));
    (up, lines.iter().map(|l| strip_ansi(l)).collect())
}

/// What each sslmode checks, against a cluster whose certificate names
/// only 127.0.0.1: a CA that did not sign it is refused (verify-full, and
/// require with BACKEND_CA_FILE set, as libpq does); `localhost` is refused
/// by verify-full (host name) but taken by verify-ca (chain only); require
/// without a CA file encrypts without checking.
#[test]
fn postgres_tls_modes_check_what_libpq_checks() {
    let _serial = serial();
    let Some(pki) = common::Pki::make("IP:127.0.0.1") else {
        return;
    };
    let Some(other) = common::Pki::make("IP:127.0.0.1") else {
        return;
    };
    let Some(cluster) = PrivateCluster::start_tls(&pki) else {
        return;
    };
    let ca = pki.path("ca.crt");
    let wrong = other.path("ca.crt");
    let by_ip = cluster.url();
    let by_name = by_ip.replace("127.0.0.1", "localhost");

    let (up, log) = tls_attempt(&format!("{by_ip}?sslmode=verify-full"), Some(&wrong));
    assert!(!up, "a certificate from another CA is refused");
    assert!(
        log.iter()
            .any(|l| l.contains("postgres unavailable") && l.contains("UnknownIssuer")),
        "{log:#?}"
    );
    let (up, log) = tls_attempt(&format!("{by_ip}?sslmode=require"), Some(&wrong));
    assert!(!up, "require checks the chain when BACKEND_CA_FILE is set");
    assert!(log.iter().any(|l| l.contains("UnknownIssuer")), "{log:#?}");

    let (up, log) = tls_attempt(&format!("{by_name}?sslmode=verify-full"), Some(&ca));
    assert!(!up, "verify-full checks the host name");
    assert!(
        log.iter()
            .any(|l| l.contains("certificate not valid for name \"localhost\"")),
        "{log:#?}"
    );
    let (up, log) = tls_attempt(&format!("{by_name}?sslmode=verify-ca"), Some(&ca));
    assert!(up, "verify-ca checks the chain only: {log:#?}");

    let (up, log) = tls_attempt(&format!("{by_ip}?sslmode=require"), None);
    assert!(up, "require without a CA file encrypts only: {log:#?}");
    let (up, _) = tls_attempt(&format!("{by_ip}?sslmode=disable"), None);
    assert!(
        !up,
        "disable does not speak TLS, which the cluster requires"
    );
}

#[test]
fn a_bad_backend_ca_file_stops_start_up_naming_the_variable() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("chatd-badca-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    for path in [dir.join("missing.pem"), junk] {
        let (code, stderr) = common::start_refused(&[
            (
                "DATABASE_URL",
                "postgres://root@127.0.0.1:5432/test?sslmode=verify-full",
            ),
            ("BACKEND_CA_FILE", path.to_str().unwrap()),
        ]);
        assert_ne!(code, Some(0), "{} was accepted", path.display());
        assert!(stderr.contains("BACKEND_CA_FILE"), "{stderr}");
    }
    let (code, stderr) = common::start_refused(&[("PG_READ_POOL_SIZE", "65")]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("PG_READ_POOL_SIZE"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// History reads have connections of their own: while the writer's batch
/// insert waits on a lock (another session holds `chat_messages` in SHARE
/// mode, which blocks INSERT and lets SELECT through), a page that needs
/// Postgres is still answered whole. On one shared connection the read
/// would queue behind the blocked insert and time out (`unavailable`).
#[test]
fn history_reads_do_not_wait_behind_a_blocked_batch_insert() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    // HISTORY_PER_ROOM=2: a page of 7 needs Postgres.
    let server = Server::start(&env(
        &db.url,
        &[("HISTORY_PER_ROOM", "2"), ("PG_FLUSH_INTERVAL_MS", "20")],
    ));
    let room = "blocked";
    let (mut alice, _) = server.connect("alice", room);
    let mut sent = ids(&send_all(&mut alice, room, 6, "stored"));
    assert!(
        poll(Duration::from_secs(5), || (db.count("chat_messages") == 6)
            .then_some(()))
        .is_some()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let locker = runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("BEGIN; LOCK TABLE chat_messages IN SHARE MODE")
            .await
            .unwrap();
        client
    });
    sent.extend(ids(&send_all(&mut alice, room, 1, "blocked")));
    let waiting = poll(Duration::from_secs(5), || {
        let rows = column(
            &db.url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatd' \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO chat_messages%'",
        );
        (rows[0] == "1").then_some(())
    });
    assert!(waiting.is_some(), "the writer's insert waits on the lock");

    alice.send(json!({"type": "history", "roomId": room, "limit": 50}));
    let page = history_answer(&mut alice);
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(ids(page["messages"].as_array().unwrap()), sent, "{page}");

    runtime.block_on(async { locker.batch_execute("COMMIT").await.unwrap() });
    assert!(
        poll(Duration::from_secs(5), || (db.count("chat_messages") == 7)
            .then_some(()))
        .is_some()
    );
}

/// PG_READ_POOL_SIZE bounds the reads' connections: 16 pages read at once
/// through a pool of 2 are all answered whole, and the server never holds
/// more than the writer's connection plus 2 (pg_stat_activity, and the
/// pool's gauges in /metrics).
#[test]
fn the_read_pool_holds_at_most_pg_read_pool_size_connections() {
    let _serial = serial();
    let Some(db) = TestDb::create() else { return };
    let server = Server::start(&env(
        &db.url,
        &[
            ("HISTORY_PER_ROOM", "2"),
            ("PG_FLUSH_INTERVAL_MS", "20"),
            ("PG_READ_POOL_SIZE", "2"),
        ],
    ));
    let room = "pooled";
    let (mut alice, _) = server.connect("alice", room);
    let sent = ids(&send_all(&mut alice, room, 8, "m"));
    assert!(
        poll(Duration::from_secs(5), || (db.count("chat_messages") == 8)
            .then_some(()))
        .is_some()
    );
    let addr = server.addr;
    let token = server.token("reader");
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                common::http_get(
                    addr,
                    &format!("/api/chats/rooms/{room}/messages?limit=50"),
                    Some(&token),
                )
            })
        })
        .collect();
    for reader in readers {
        let (status, body) = reader.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ids(page["messages"].as_array().unwrap()), sent);
    }
    let connections: usize = column(
        &db.url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatd'",
    )[0]
    .parse()
    .unwrap();
    assert!(
        (2..=3).contains(&connections),
        "the writer and 1 or 2 pooled readers, got {connections}"
    );
    assert_eq!(
        server.metric("chat_pg_read_pool_max_connections"),
        Some(2.0)
    );
    let pooled = server
        .metric("chat_pg_read_pool_connections{state=\"idle\"}")
        .unwrap()
        + server
            .metric("chat_pg_read_pool_connections{state=\"busy\"}")
            .unwrap();
    assert_eq!(pooled as usize, connections - 1);
}
