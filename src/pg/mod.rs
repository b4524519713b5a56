//! Postgres backend: durable history and the audit trail, written in batches
//! from a side thread, read back for history pages and recovery.
//!
//! The tokio-postgres client needs a tokio runtime, which never runs on an
//! executor core: one dedicated thread runs a current-thread runtime
//! (`worker.rs`). Cores talk to it through [`PgHandle`]:
//!
//! - **Writes**: the room owner hands every accepted message (and every
//!   audit record) over with a non-blocking `try_send` on its core's
//!   bounded lock-free lane ([`crate::lanes`]) and counts it in a shared
//!   atomic. The writer batches rows and flushes on
//!   size or interval ([`batch`]), with `INSERT ... SELECT * FROM UNNEST(...)
//!   ON CONFLICT DO NOTHING`, so a retried batch never duplicates.
//! - **Outages**: a failed write keeps its rows and retries with exponential
//!   backoff; the connection is re-established on its own; `/healthz` shows
//!   Postgres down meanwhile. When the rows waiting reach PG_BUFFER_MESSAGES,
//!   new messages are refused with `unavailable` before they are stamped, so
//!   nothing accepted is ever dropped.
//! - **Reads**: a core sends a read (on its own lane of the read queue)
//!   with its event queue as the reply address ([`ReadReply`]) and goes
//!   on; the side thread answers it on a pool of PG_READ_POOL_SIZE
//!   connections apart from the writer's, so a read never queues behind a
//!   batch insert; the rows arrive on that queue like the Redis thread's events
//!   (`crate::events`), and the core's history ([`history`]) merges them
//!   with its in-memory cache ([`merge`]).
//! - **Per core**: each core's [`history::PgHistory`] and
//!   [`audit::PgAudit`] hold the shared handle and the core's index, the
//!   lane every one of their writes and reads goes on.
//! - **Shutdown**: after every core has drained, [`PgHandle::finish`] writes
//!   what is left, waiting at most PG_SHUTDOWN_TIMEOUT_MS.

pub mod audit;
pub mod batch;
pub mod history;
pub mod merge;
pub mod migrate;
pub mod stats;
mod worker;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use ulid::Ulid;

use crate::config::Settings;
use crate::events::EventSender;
use crate::health::{BackendHealth, State};
use crate::history::StoredMessage;
use crate::lanes;
use crate::moderation::AuditRecord;
use crate::tls::PgSslMode;

pub use merge::Pick;

/// Longest start-up waits for the first connection and migrations before
/// serving anyway with Postgres marked down.
pub const START_WAIT: Duration = Duration::from_secs(10);
/// Connection timeout when DATABASE_URL sets none.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a history read waits for Postgres before the in-memory answer is
/// used instead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// History reads queued for the side thread at once, split evenly between
/// the cores' lanes (rounded up); a read that finds its core's lane full is
/// answered from memory (and counted as shed).
pub const READ_QUEUE: usize = 1024;
/// Room in each core's write lane on top of its share of
/// PG_BUFFER_MESSAGES, for rows admitted before they are written (a message
/// and its audit record; with Redis, messages waiting for their copy) and
/// for the cores' overshoot of the last free slot (see [`batch::admit`]).
pub const WRITE_SLACK: usize = 2 * 64;

/// Rows one core's write lane holds: its share of PG_BUFFER_MESSAGES
/// (rounded up) plus [`WRITE_SLACK`]. The lanes are only a transit: the
/// writer moves rows into its own batches whenever it runs, and is woken
/// when a lane is half full, so a lane fills only if the side thread is
/// starved; admission then refuses new messages on that core with
/// `unavailable` ([`PgHandle::admit`]). Set so that the total stays what
/// PG_BUFFER_MESSAGES + WRITE_SLACK allowed for the one shared channel
/// before, plus the slack per core; the outage test in tests/postgres.rs
/// (`postgres_outage_keeps_chat_live_and_loses_nothing`, 8 rows) checks
/// that every admitted row is buffered and written.
pub fn write_lane_capacity(capacity: usize, cores: usize) -> usize {
    capacity.div_ceil(cores.max(1)) + WRITE_SLACK
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// DATABASE_URL does not parse.
    #[error("DATABASE_URL: {0}")]
    Url(String),
    /// The side thread could not be started.
    #[error("cannot start the Postgres thread: {0}")]
    Thread(String),
    /// TLS cannot be set up (BACKEND_CA_FILE, no roots for a verifying sslmode).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The bans still running (`chat_bans`), read once at start-up on a connection of its own
/// (bounded by [`START_WAIT`]); empty, with a warning, when they cannot be read.
fn load_bans(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
) -> Vec<(String, u64)> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the bans from postgres");
            return Vec::new();
        }
    };
    let loaded = runtime
        .block_on(async { tokio::time::timeout(START_WAIT, worker::load_bans(config, tls)).await });
    match loaded {
        Ok(Ok(bans)) => {
            if !bans.is_empty() {
                tracing::info!(bans = bans.len(), "bans loaded from postgres");
            }
            bans
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the bans from postgres");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("reading the bans from postgres timed out");
            Vec::new()
        }
    }
}

/// Parses DATABASE_URL (a `postgres://` URL or `key=value` pairs). The error
/// Parses DATABASE_URL (a `postgres://` URL or `key=value` pairs) and its
/// `sslmode` (libpq's five values, [`crate::tls`]). The error names the
/// variable and never echoes the value, which may hold a password.
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, PgSslMode), String> {
    if let Some(option) = crate::tls::unsupported_pg_option(url) {
        return Err(format!(
            "DATABASE_URL: {option} is not supported; give the CA certificates in BACKEND_CA_FILE (client certificates are not supported)"
        ));
    }
    let (rewritten, verify) = crate::tls::split_verify_mode(url);
    let config = tokio_postgres::Config::from_str(&rewritten)
        .map_err(|e| format!("DATABASE_URL: not a valid Postgres connection string ({e})"))?;
    if config.get_hosts().is_empty() {
        return Err("DATABASE_URL: names no host".into());
    }
    let mode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => PgSslMode::Disable,
        tokio_postgres::config::SslMode::Prefer => PgSslMode::Prefer,
        // A verifying mode reads as `require` here, unless a later sslmode overrode it.
        tokio_postgres::config::SslMode::Require => verify.unwrap_or(PgSslMode::Require),
        _ => return Err("DATABASE_URL: unsupported sslmode".into()),
    };
    Ok((config, mode))
}

/// One accepted message on its way to `chat_messages`.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// Room id (primary key with `id`).
    pub room_id: Arc<str>,
    /// Message id (primary key with the room).
    pub id: Ulid,
    /// Author's user id.
    pub user_id: Arc<str>,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The `message` frame's JSON exactly as broadcast (shared bytes).
    pub payload: Bytes,
}

/// A message an operator deleted, on its way out of `chat_messages`.
#[derive(Debug, Clone)]
pub struct DeleteRow {
    /// Room id of the message.
    pub room_id: Arc<str>,
    /// The message's id.
    pub id: Ulid,
}

/// A change to `chat_bans` (one row per banned user; loaded at start-up).
#[derive(Debug, Clone)]
pub enum BanRow {
    /// `user` is banned until `until_ms` (ms since the Unix epoch), replacing any earlier ban.
    Set {
        /// The banned user.
        user: Arc<str>,
        /// When the ban ends.
        until_ms: u64,
        /// The admin's reason.
        reason: Option<String>,
        /// The admin who banned.
        actor: Arc<str>,
        /// When the ban was set.
        at_ms: u64,
    },
    /// `user`'s ban is lifted.
    Lift {
        /// The user no longer banned.
        user: Arc<str>,
    },
}

/// A row for the writer.
#[derive(Debug)]
pub enum WriteItem {
    /// An accepted message.
    Message(MessageRow),
    /// An audit record (moderation or operator).
    Audit(AuditRecord),
    /// An operator's delete: a pending insert of the same message is dropped instead of
    /// written, and the row is deleted after every earlier insert (a message accepted by this
    /// instance is written from the same core's lane, ahead of its delete).
    Delete(DeleteRow),
    /// A ban set or lifted; applied in the order given.
    Ban(BanRow),
}

/// A history read: a room's messages with ids strictly between `after` and
/// `before`, at most `limit`, chosen by `pick`, returned oldest first.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    /// Room id whose rows are read.
    pub room: Arc<str>,
    /// Exclusive lower bound on the id; None: from the room's first message. Set by replays
    /// (the client's last seen id) and forward pages.
    pub after: Option<Ulid>,
    /// Exclusive upper bound on the id; None: up to the newest. Set by backward pages.
    pub before: Option<Ulid>,
    /// Most rows returned: the page's limit, or MAX_REPLAY + 1 for a replay (one more tells
    /// that the replay is too long).
    pub limit: usize,
    /// Which end to keep.
    pub pick: Pick,
}

/// A read that Postgres could not answer (down, timed out, refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailed;

/// Rows of a read, oldest first.
pub type ReadResult = Result<Vec<StoredMessage>, ReadFailed>;

/// Where a read's rows go: the asking core's event queue, under the
/// read's id. Sent exactly once: dropping it unsent (the side thread
/// stopped with the read queued) sends a failure, so every read is
/// answered.
pub struct ReadReply {
    /// The asking core's queue; None once sent.
    events: Option<EventSender>,
    /// The read's id, as the core's history named it.
    read: u64,
}

impl ReadReply {
    /// Hands the rows (or the failure) to the asking core.
    pub fn send(mut self, rows: ReadResult) {
        if let Some(events) = self.events.take() {
            events.rows(self.read, rows);
        }
    }

    /// A reply for a read that was never sent: nothing to answer.
    fn disarm(mut self) {
        self.events = None;
    }
}

impl Drop for ReadReply {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            events.rows(self.read, Err(ReadFailed));
        }
    }
}

impl std::fmt::Debug for ReadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReply")
            .field("read", &self.read)
            .finish()
    }
}

/// A read and where to send its rows.
#[derive(Debug)]
pub struct ReadRequest {
    /// What to read: built by the core's history when memory does not cover the page or replay.
    pub spec: ReadSpec,
    /// Reply; dropping it unanswered answers the core with a failure.
    pub reply: ReadReply,
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// When a batch is written: at PG_BATCH_SIZE rows or after PG_FLUSH_INTERVAL_MS.
    pub policy: batch::FlushPolicy,
    /// PG_BUFFER_MESSAGES.
    pub capacity: usize,
    /// PG_SHUTDOWN_TIMEOUT_MS.
    pub shutdown_timeout: Duration,
    /// PG_READ_POOL_SIZE: connections of the reads' pool.
    pub read_pool_size: usize,
}

/// State shared by the cores and the side thread.
#[derive(Debug)]
pub struct Inner {
    /// Rows handed to the writer and not yet written (or rejected). Cores
    /// add, the writer subtracts; one relaxed load decides admission.
    pub buffered: AtomicUsize,
    /// Wakes the writer: a batch's worth of rows arrived, or shutdown.
    pub wake: Notify,
    /// Set once every core has stopped: write everything, then exit.
    pub closing: AtomicBool,
    /// Postgres counters: writer updates them, `/metrics` renders them.
    pub stats: stats::PgStats,
    /// Where `/healthz` reads Postgres's state.
    pub health: Arc<BackendHealth>,
}

/// The cores' handle on the backend (one, shared by every core).
pub struct PgHandle {
    /// Rows to write, one lane per core, each bounded by
    /// [`write_lane_capacity`], which admission keeps it under; see
    /// [`PgHandle::write`] for a full lane.
    writes: lanes::Sender<WriteItem>,
    /// Reads, one lane per core, READ_QUEUE split between them; full: the
    /// read is answered from memory.
    reads: lanes::Sender<ReadRequest>,
    /// The history reads' pool (used on the side thread), kept here for its
    /// status in `/metrics`; None if it could not be built.
    read_pool: Option<deadpool_postgres::Pool>,
    /// Shared counters and signals.
    inner: Arc<Inner>,
    /// Writer settings: `capacity` bounds admission ([`PgHandle::admit`]), `shutdown_timeout`
    /// bounds the wait in [`PgHandle::finish`].
    settings: WriterSettings,
    /// The bans still running when the server started (`chat_bans`), as (user, end in ms
    /// since the Unix epoch); empty when Postgres was not reachable then.
    pub bans_at_start: Vec<(String, u64)>,
    /// The side thread and its final report (rows left unwritten), taken by
    /// [`PgHandle::finish`].
    thread: Mutex<
        Option<(
            std::thread::JoinHandle<()>,
            std::sync::mpsc::Receiver<usize>,
        )>,
    >,
}

impl PgHandle {
    /// Starts the side thread for DATABASE_URL and waits (at most
    /// [`START_WAIT`]) for its first connection and migrations; if they
    /// fail, the server still starts, with Postgres down and retried.
    pub fn start(settings: &Settings, health: Arc<BackendHealth>) -> Result<PgHandle, PgError> {
        let url = settings
            .database_url
            .as_deref()
            .ok_or_else(|| PgError::Url("not set".into()))?;
        let (mut config, mode) = parse_url(url).map_err(PgError::Url)?;
        let trust = crate::tls::Trust::load(settings.backend_ca_file.as_deref())?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(trust.postgres_config(mode)?);
        tracing::info!(
            sslmode = mode.as_str(),
            ca_file = trust.has_ca_file(),
            "postgres TLS"
        );
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("chatd");
        }
        let writer = WriterSettings {
            policy: batch::FlushPolicy {
                batch_size: settings.pg_batch_size as usize,
                interval: settings.pg_flush_interval(),
            },
            capacity: settings.pg_buffer_messages as usize,
            shutdown_timeout: settings.pg_shutdown_timeout(),
            read_pool_size: settings.pg_read_pool_size as usize,
        };
        health.postgres.set(State::Down);
        let inner = Arc::new(Inner {
            buffered: AtomicUsize::new(0),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            stats: stats::PgStats::default(),
            health,
        });
        let cores = settings.core_count();
        // Bounded per core; full: see `write_lane_capacity` and `write`.
        let (writes, writes_rx) = lanes::lanes(cores, write_lane_capacity(writer.capacity, cores));
        // Bounded per core; full: the read is answered from memory.
        let (reads, reads_rx) = lanes::lanes(cores, READ_QUEUE.div_ceil(cores.max(1)));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let thread_inner = inner.clone();
        let ban_config = config.clone();
        let ban_tls = tls.clone();
        // Built here (it needs no runtime until used) so `/metrics` can read its status.
        let read_pool = worker::read_pool(&config, &tls, writer.read_pool_size);
        let thread_pool = read_pool.clone();
        let thread = std::thread::Builder::new()
            .name("chatd-pg".into())
            .spawn(move || {
                worker::run(
                    config,
                    tls,
                    thread_pool,
                    thread_inner,
                    writer,
                    writes_rx,
                    reads_rx,
                    ready_tx,
                    done_tx,
                )
            })
            .map_err(|e| PgError::Thread(e.to_string()))?;
        let mut bans_at_start = Vec::new();
        match ready_rx.recv_timeout(START_WAIT) {
            Ok(true) => {
                tracing::info!("postgres connected, migrations applied");
                bans_at_start = load_bans(&ban_config, &ban_tls);
            }
            _ => tracing::warn!(
                "postgres not reachable at start-up; serving with history in memory and retrying (writes are buffered); bans stored there are not loaded"
            ),
        }
        Ok(PgHandle {
            bans_at_start,
            writes,
            reads,
            read_pool,
            inner,
            settings: writer,
            thread: Mutex::new(Some((thread, done_rx))),
        })
    }

    /// Whether a new message may be accepted now on core `lane`: the rows
    /// waiting are below PG_BUFFER_MESSAGES (one relaxed load) and the
    /// core's lane has room for the message and an audit record.
    pub fn admit(&self, lane: usize) -> bool {
        batch::admit(
            self.inner.buffered.load(Ordering::Relaxed),
            self.settings.capacity,
        ) && self.writes.has_room(lane, 2)
    }

    /// Rows accepted and not yet written.
    pub fn buffered(&self) -> usize {
        self.inner.buffered.load(Ordering::Relaxed)
    }

    /// Queues a row on core `lane`'s lane for writing. Never blocks.
    ///
    /// Admission keeps every lane below its capacity, so it is never full
    /// in practice; if it were, or if the side thread were gone, the row is
    /// counted in `chat_pg_rows_lost_total` and logged by id rather than
    /// dropped silently.
    pub fn write(&self, lane: usize, item: WriteItem) {
        let n = self.inner.buffered.fetch_add(1, Ordering::Relaxed) + 1;
        match self.writes.try_send(lane, item) {
            Ok(()) => {
                // The push woke an idle writer. One that is waiting for its
                // interval or a retry is woken once per batch's worth, or
                // when this lane is half full so it never fills; below that
                // it sleeps on, so a core pays no wake-up per message.
                if n.is_multiple_of(self.settings.policy.batch_size)
                    || !self.writes.has_room(lane, self.writes.lane_capacity() / 2)
                {
                    self.inner.wake.notify_one();
                }
            }
            Err(item) => {
                self.inner.buffered.fetch_sub(1, Ordering::Relaxed);
                stats::bump(&self.inner.stats.rows_lost);
                let (kind, id) = match item {
                    WriteItem::Message(m) => ("message", m.id.to_string()),
                    WriteItem::Audit(a) => ("audit record", a.message_id.to_string()),
                    WriteItem::Delete(d) => ("message delete", d.id.to_string()),
                    WriteItem::Ban(BanRow::Set { user, .. } | BanRow::Lift { user }) => {
                        ("ban change", user.to_string())
                    }
                };
                tracing::error!(%id, kind, "postgres write queue refused a row; it will not be stored");
            }
        }
    }

    /// Sends read `read` on core `lane`'s lane, its rows to go to
    /// `events`; false when it cannot be sent (Postgres down, lane full),
    /// in which case the caller answers at once and no reply comes.
    pub fn read(&self, lane: usize, spec: ReadSpec, events: &EventSender, read: u64) -> bool {
        if self.inner.health.postgres.get() != State::Up {
            stats::bump(&self.inner.stats.reads_shed);
            return false;
        }
        let reply = ReadReply {
            events: Some(events.clone()),
            read,
        };
        match self.reads.try_send(lane, ReadRequest { spec, reply }) {
            Ok(()) => true,
            Err(request) => {
                request.reply.disarm();
                stats::bump(&self.inner.stats.reads_shed);
                false
            }
        }
    }

    /// Counts a read shed by a core (too many in flight there).
    pub fn read_shed(&self) {
        stats::bump(&self.inner.stats.reads_shed);
    }

    /// Shutdown, once every core has stopped: writes every row still
    /// buffered, retrying for at most PG_SHUTDOWN_TIMEOUT_MS. Returns the
    /// rows left unwritten (0 when everything is in Postgres).
    pub fn finish(&self) -> usize {
        let Some((thread, done)) = self.thread.lock().expect("pg thread slot").take() else {
            return 0;
        };
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let wait = self.settings.shutdown_timeout + Duration::from_secs(2);
        match done.recv_timeout(wait) {
            Ok(left) => {
                let _ = thread.join();
                left
            }
            // The thread did not answer in time; its buffer is lost with
            // the process. Report what the counter says.
            Err(_) => self.buffered(),
        }
    }

    /// Appends the backend's `/metrics` series.
    pub fn render_metrics(&self, out: &mut String) {
        let up = self.inner.health.postgres.get() == State::Up;
        self.inner
            .stats
            .render(out, self.buffered(), self.settings.capacity, up);
        let status = self.read_pool.as_ref().map(|p| p.status());
        let (size, idle, waiting) = status.map_or((0, 0, 0), |s| (s.size, s.available, s.waiting));
        render_read_pool(out, self.settings.read_pool_size, size, idle, waiting);
    }
}

/// The read pool's gauges: its connections by state, its size limit, and
/// the reads waiting for a connection.
fn render_read_pool(out: &mut String, max: usize, size: usize, idle: usize, waiting: usize) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP chat_pg_read_pool_connections Connections of the history reads' pool, by state (busy: running a read).
# TYPE chat_pg_read_pool_connections gauge
chat_pg_read_pool_connections{{state=\"busy\"}} {}
chat_pg_read_pool_connections{{state=\"idle\"}} {idle}",
        size.saturating_sub(idle)
    );
    let _ = writeln!(
        out,
        "# HELP chat_pg_read_pool_max_connections PG_READ_POOL_SIZE: most connections of the reads' pool.
# TYPE chat_pg_read_pool_max_connections gauge
chat_pg_read_pool_max_connections {max}"
    );
    let _ = writeln!(
        out,
        "# HELP chat_pg_read_pool_waiting History reads waiting for a pooled connection.
# TYPE chat_pg_read_pool_waiting gauge
chat_pg_read_pool_waiting {waiting}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_sent_once_and_a_dropped_one_answers_with_a_failure() {
        let (tx, rx) = crate::events::queue();
        let reply = |read| ReadReply {
            events: Some(tx.clone()),
            read,
        };
        reply(1).send(Ok(Vec::new()));
        // The side thread dropped the request without answering it.
        drop(reply(2));
        // A read that was never sent expects no answer.
        reply(3).disarm();
        let got: Vec<(u64, bool)> = std::iter::from_fn(|| rx.try_recv())
            .map(|e| match e {
                crate::events::BackendEvent::Rows { read, rows } => (read, rows.is_ok()),
                other => panic!("expected rows, got {other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(1, true), (2, false)]);
    }

    #[test]
    fn read_pool_gauges() {
        let mut out = String::new();
        render_read_pool(&mut out, 4, 3, 1, 0);
        assert!(out.contains("chat_pg_read_pool_connections{state=\"busy\"} 2\n"));
        assert!(out.contains("chat_pg_read_pool_connections{state=\"idle\"} 1\n"));
        assert!(out.contains("chat_pg_read_pool_max_connections 4\n"));
        assert!(out.contains("chat_pg_read_pool_waiting 0\n"));
    }

    #[test]
    fn each_core_lane_holds_its_share_plus_the_slack() {
        assert_eq!(write_lane_capacity(100_000, 2), 50_000 + WRITE_SLACK);
        assert_eq!(write_lane_capacity(8, 3), 3 + WRITE_SLACK);
        assert_eq!(write_lane_capacity(8, 0), 8 + WRITE_SLACK);
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(parse_url("postgres://u:secret@127.0.0.1:5432/db").is_ok());
        assert!(parse_url("host=127.0.0.1 user=root dbname=test").is_ok());
        for (url, mode) in [
            ("postgres://u@h/db", PgSslMode::Prefer),
            ("postgres://u@h/db?sslmode=disable", PgSslMode::Disable),
            ("postgres://u@h/db?sslmode=require", PgSslMode::Require),
            ("postgres://u@h/db?sslmode=verify-ca", PgSslMode::VerifyCa),
            ("host=h sslmode=verify-full", PgSslMode::VerifyFull),
            // The last one wins, as in libpq.
            (
                "host=h sslmode=verify-full sslmode=disable",
                PgSslMode::Disable,
            ),
        ] {
            assert_eq!(parse_url(url).unwrap().1, mode, "{url}");
        }
        for bad in [
            "postgres://u:secret@127.0.0.1:notaport/db",
            "host=127.0.0.1 password='secret",
            "postgres:///db",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.starts_with("DATABASE_URL: "), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
