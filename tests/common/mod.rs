//! Test harness: starts the real `chatd` binary on a free port and talks to
//! it over real sockets with a synchronous WebSocket client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Secret every test server uses.
pub const SECRET: &str = "integration-test-secret";
/// Longest wait for any expected frame; tests fail rather than hang.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a started server's "listening" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this run must not skip anything (`CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The running test as `<test file>::<test name>` (libtest names each
/// test's thread after the test).
pub fn suite() -> String {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("main");
    format!("{}::{test}", env!("CARGO_CRATE_NAME"))
}

/// Reports that the running test cannot run because `why` (a service or
/// tool is missing): under `CI=true` the test fails; otherwise it prints
/// `SKIP <suite>: <why>` and the caller returns, so the test passes. The
/// line goes straight to the process's stderr, past the harness's capture
/// of a passing test's output, so every run shows it and `./test.sh` lists
/// it at the end.
#[track_caller]
pub fn skip(why: &str) {
    let suite = suite();
    assert!(!under_ci(), "{suite}: {why} (required under CI=true)");
    let _ = writeln!(std::io::stderr(), "SKIP {suite}: {why}");
}

/// A running server process; killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server with the default core count and pinning and the
    /// given extra environment; its log goes to the test's stderr.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::spawn(env, Stdio::inherit())
    }

    /// Spawns the binary, waits for its "listening" line, and keeps draining
    /// its stdout so it never blocks on a full pipe.
    fn spawn(env: &[(&str, &str)], stderr: Stdio) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("JWT_SECRET", SECRET)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            // No CORES and no PIN_CORES: servers run with the defaults, as
            // the README's start command does.
            // TEST_LOG_LEVEL=debug shows the servers' logs when chasing a failure.
            .env(
                "LOG_LEVEL",
                std::env::var("TEST_LOG_LEVEL").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start chatd");
        let stdout = child.stdout.take().expect("stdout");
        // Read on a thread so that a server that never gets ready fails the
        // test after START_TIMEOUT instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(addr) = line.strip_prefix("chatd listening on ") {
                            break Some(addr.to_string());
                        }
                    }
                    _ => break None,
                }
            };
            let _ = tx.send(addr);
            for _ in lines {}
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(addr)) => addr.parse().expect("address"),
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("chatd exited before listening")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chatd did not start listening within {START_TIMEOUT:?}")
            }
        };
        Server { child, addr }
    }

    /// Starts a server with the defaults.
    pub fn default_start() -> Server {
        Server::start(&[])
    }

    /// A token for `user`.
    pub fn token(&self, user: &str) -> String {
        chatd::auth::mint_hs256(SECRET.as_bytes(), user, None, Some(3600))
    }

    /// Connects `user` to `room` and returns the client after its
    /// `room_joined` (asserted to be the first frame).
    pub fn connect(&self, user: &str, room: &str) -> (Client, Value) {
        let url = format!(
            "ws://{}/ws?token={}&roomId={}",
            self.addr,
            self.token(user),
            room
        );
        let mut client = Client::open(&url).expect("upgrade accepted");
        let first = client.recv();
        assert_eq!(first["type"], "room_joined", "first frame: {first}");
        assert_eq!(first["roomId"], room);
        (client, first)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A plain HTTP GET; returns status and body.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        http_get(self.addr, path, bearer)
    }

    /// The value of one Prometheus sample line (exact name and labels).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics", None);
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().expect("number"))
    }
}

impl Server {
    /// Polls a metric until it reaches `want` or FRAME_TIMEOUT passes (for
    /// counters updated just after the event a test observed); returns the
    /// last value seen.
    pub fn wait_metric(&self, series: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let value = self.metric(series);
            if value == Some(want) || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One-shot HTTP/1.1 GET with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

/// Splits a raw HTTP response into status and body.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A synchronous WebSocket client with read timeouts.
pub struct Client {
    /// The socket.
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// Opens a WebSocket; Err carries the HTTP status and body of a refusal.
    pub fn open(url: &str) -> Result<Client, (u16, String)> {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&addr).expect("tcp connect");
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        match tungstenite::client(url, stream) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// Sends a JSON text frame.
    pub fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    /// Sends raw text.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Next data frame as JSON (pings are answered by tungstenite and skipped).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read frame (timed out or closed)") {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
                Message::Binary(_) => panic!("server sent a binary frame"),
                Message::Close(c) => panic!("closed by server: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next frame of the given type, skipping others (presence, typing).
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    /// Closes politely.
    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        // Read until the server's close arrives (bounded by the read timeout).
        while self.ws.read().is_ok() {}
    }
}

/// The executor count of a server started with the defaults: the machine's
/// parallelism, read the way the server reads it before its threads are
/// pinned.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Two room names, the first owned by core 0 and the second by core 1 of a
/// server started with the defaults (on a one-core machine both are on
/// core 0).
pub fn rooms_on_cores(prefix: &str) -> (String, String) {
    let cores = cores();
    let mut on: [Option<String>; 2] = [None, None];
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let core = chatd::shard::shard_for(&name, cores);
        if on[0].is_none() && core == 0 {
            on[0] = Some(name);
        } else if on[1].is_none() && core == 1.min(cores - 1) {
            on[1] = Some(name);
        }
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let [a, b] = on;
    (a.unwrap(), b.unwrap())
}

impl Server {
    /// Like [`Server::start`], but the server's stderr (its log) is captured:
    /// each line arrives on the returned channel.
    pub fn start_with_log(env: &[(&str, &str)]) -> (Server, std::sync::mpsc::Receiver<String>) {
        let mut server = Server::spawn(env, Stdio::piped());
        let stderr = server.child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stderr even after the receiver is gone.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        (server, rx)
    }

    /// Like [`Server::connect`], with `extra` (e.g. `"since=01J..."`)
    /// appended to the `/ws` query string.
    pub fn connect_with(&self, user: &str, room: &str, extra: &str) -> (Client, Value) {
        let url = format!(
            "ws://{}/ws?token={}&roomId={}&{}",
            self.addr,
            self.token(user),
            room,
            extra
        );
        let mut client = Client::open(&url).expect("upgrade accepted");
        let first = client.recv();
        assert_eq!(first["type"], "room_joined", "first frame: {first}");
        assert_eq!(first["roomId"], room);
        (client, first)
    }
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes (for state
/// that settles shortly after the event a test observed).
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with settings that should stop start-up; returns its
/// exit code and everything it wrote to stderr.
pub fn start_refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run chatd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `n` messages `"{prefix} {i}"` into `room` and returns the sender's
/// own copies, in order.
pub fn send_all(client: &mut Client, room: &str, n: usize, prefix: &str) -> Vec<Value> {
    for i in 0..n {
        client.send(
            serde_json::json!({"type":"message","roomId":room,"content":format!("{prefix} {i}")}),
        );
    }
    (0..n).map(|_| client.recv_type("message")).collect()
}

/// The `messageId`s of `messages`, in order.
pub fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["messageId"].as_str().expect("messageId").to_string())
        .collect()
}

/// SIGTERM, then a clean exit within 30 s.
pub fn stop(server: &mut Server) {
    server.sigterm();
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "clean exit after SIGTERM"
    );
}

/// A private certificate authority and one server certificate it signed,
/// made with the `openssl` command in a temporary directory (removed on
/// drop), for the backends' TLS tests.
pub struct Pki {
    /// The directory holding every file.
    pub dir: std::path::PathBuf,
}

impl Pki {
    /// A CA and a server certificate (EC P-256) for `sans` (e.g.
    /// `"IP:127.0.0.1"`); None (after `skip`) when `openssl` is missing.
    pub fn make(sans: &str) -> Option<Pki> {
        if Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            skip("the openssl command is not available");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("chatd-pki-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        std::fs::write(
            pki.dir.join("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"
            ),
        )
        .unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        // A name of its own: another test CA is another issuer, not a bad signature.
        let name = format!("chatd-test-ca-{:08x}", rand::random::<u32>());
        pki.openssl(&format!(
            "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN={name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        pki.openssl(&format!(
            "req {ec} -keyout server.key -out server.csr -subj /CN=chatd-test-server"
        ));
        pki.openssl(
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out server.crt -days 2 -extfile server.ext",
        );
        Some(pki)
    }

    fn openssl(&self, args: &str) {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Path of a file in the directory (`ca.crt`, `server.crt`, `server.key`).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every line of a stopped server's log (from [`Server::start_with_log`]):
/// waits until the reader has seen the end of the log, at most `limit`.
pub fn drain_log(log: &std::sync::mpsc::Receiver<String>, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => return lines,
        }
    }
}

// ---- Postgres on the shared server ------------------------------------------

/// The shared Postgres server every machine runs.
pub const SHARED_PG: &str = "127.0.0.1:5432";
/// A URL with the rights to create and drop the tests' databases.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Whether the shared Postgres server accepts connections.
pub fn shared_pg_up() -> bool {
    let addr: SocketAddr = SHARED_PG.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Runs SQL through a throwaway current-thread runtime; every value as text.
pub fn sql(url: &str, query: &str) -> Vec<Vec<Option<String>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let driver = tokio::spawn(conn);
        let mut out = Vec::new();
        for msg in client
            .simple_query(query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
        {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
                out.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(String::from))
                        .collect(),
                );
            }
        }
        drop(client);
        let _ = driver.await;
        out
    })
}

/// A database of the test's own on the shared server, dropped on drop.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// DATABASE_URL for it.
    pub url: String,
}

impl TestDb {
    /// A fresh database; None (after a `SKIP` line) when the shared server
    /// is down.
    pub fn create() -> Option<TestDb> {
        if !shared_pg_up() {
            skip("Postgres at 127.0.0.1:5432 is not available");
            return None;
        }
        let name = format!("chatd_t_{:016x}", rand::random::<u64>());
        sql(PG_ADMIN_URL, &format!("CREATE DATABASE {name}"));
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Some(TestDb { name, url })
    }

    /// Rows in `table`.
    pub fn count(&self, table: &str) -> usize {
        sql(&self.url, &format!("SELECT count(*) FROM {table}"))[0][0]
            .clone()
            .unwrap_or_default()
            .parse()
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            sql(
                PG_ADMIN_URL,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            )
        });
    }
}
