//! The Postgres side thread: a tokio current-thread runtime running three
//! tasks, never touching an executor core.
//!
//! - **supervisor**: connects, applies migrations, prepares statements,
//!   publishes the connection, watches it (its driver ending, or a periodic
//!   probe failing) and reconnects with backoff; it owns `health.postgres`'s
//!   Up/Down transitions on connection changes.
//! - **writer**: moves rows from the cores' lanes (round robin) into its
//!   batches and
//!   writes them by the [`FlushPolicy`](super::batch::FlushPolicy), keeping
//!   failed batches for a retry after a backoff; at shutdown it writes
//!   everything left, within PG_SHUTDOWN_TIMEOUT_MS.
//! - **reader**: answers history reads, each in its own task with a timeout,
//!   on a pool of PG_READ_POOL_SIZE connections of its own (deadpool), so a
//!   read never waits behind a batch insert on the writer's connection. A
//!   read waits at most [`READ_TIMEOUT`] in all (for a pooled connection,
//!   which is opened on demand, and for its rows); past that the core
//!   answers from memory.
//!
//! Both the writer's connection and the pool's use the same TLS set-up
//! (`sslmode`, BACKEND_CA_FILE; [`crate::tls`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{Client, Config, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use ulid::Ulid;

use super::batch::{Next, RETRY_BASE, RETRY_MAX};
use super::migrate::{self, MigrateError};
use super::stats::bump;
use super::{
    BanRow, DeleteRow, Inner, MessageRow, Pick, ReadFailed, ReadRequest, ReadSpec, WriteItem,
    WriterSettings, CONNECT_TIMEOUT, READ_TIMEOUT,
};
use crate::backoff::Backoff;
use crate::health::State;
use crate::history::StoredMessage;
use crate::lanes;
use crate::moderation::AuditRecord;

/// How often an idle connection is probed, so a silently dead server shows
/// as down without waiting for the next write.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for reads without `before`: above every ULID (whose text
/// starts with 0-7).
const ID_CEILING: &str = "8";

const INSERT_MESSAGES: &str =
    "INSERT INTO chat_messages (room_id, message_id, user_id, sent_at, payload) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
     ON CONFLICT DO NOTHING";
const INSERT_AUDIT: &str = "INSERT INTO chat_audit (message_id, action, room_id, user_id, reason, at, actor, until) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::timestamptz[]) \
     ON CONFLICT DO NOTHING";
const DELETE_MESSAGES: &str = "DELETE FROM chat_messages \
     WHERE (room_id, message_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))";
const SET_BAN: &str = "INSERT INTO chat_bans (user_id, until, reason, actor, created_at) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (user_id) DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason, \
     actor = EXCLUDED.actor, created_at = EXCLUDED.created_at";
const LIFT_BAN: &str = "DELETE FROM chat_bans WHERE user_id = $1";
/// The bans still running, loaded at start-up.
pub(super) const LOAD_BANS: &str = "SELECT user_id, \
     (extract(epoch FROM until) * 1000)::bigint FROM chat_bans WHERE until > now()";
const READ_NEWEST: &str = "SELECT message_id, payload FROM chat_messages \
     WHERE room_id = $1 AND message_id > $2 AND message_id < $3 \
     ORDER BY message_id DESC LIMIT $4";
const READ_OLDEST: &str = "SELECT message_id, payload FROM chat_messages \
     WHERE room_id = $1 AND message_id > $2 AND message_id < $3 \
     ORDER BY message_id ASC LIMIT $4";

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// Connecting or preparing failed.
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] MigrateError),
}

/// A live connection with its prepared statements.
struct Conn {
    /// The client (queries are pipelined on one connection).
    client: Client,
    /// Batch insert into `chat_messages`.
    insert_messages: Statement,
    /// Batch insert into `chat_audit`.
    insert_audit: Statement,
    /// Batch delete from `chat_messages`.
    delete_messages: Statement,
    /// Sets a user's ban.
    set_ban: Statement,
    /// Lifts a user's ban.
    lift_ban: Statement,
}

/// A row waiting in the writer, with when the writer took it.
struct Pending<T> {
    /// When it left its lane (the flush interval counts from here).
    at: Instant,
    /// The row, kept in the queue until its batch is written (a failed batch is retried).
    row: T,
}

/// Runs the side thread until shutdown; sends the number of rows left
/// unwritten on `done`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    config: Config,
    tls: MakeRustlsConnect,
    pool: Option<Pool>,
    inner: Arc<Inner>,
    settings: WriterSettings,
    writes: lanes::Receiver<WriteItem>,
    reads: lanes::Receiver<ReadRequest>,
    ready: std::sync::mpsc::Sender<bool>,
    done: std::sync::mpsc::Sender<usize>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the postgres runtime");
            let _ = ready.send(false);
            return;
        }
    };
    let task_inner = inner.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        runtime.block_on(async move {
            let (conn_tx, conn_rx) = watch::channel(None);
            tokio::spawn(supervise(config, tls, conn_tx, task_inner.clone(), ready));
            tokio::spawn(serve_reads(reads, pool, task_inner.clone()));
            write_loop(writes, conn_rx, task_inner, settings).await
        })
    }));
    match outcome {
        Ok(left) => {
            let _ = done.send(left);
        }
        Err(_) => {
            inner.health.postgres.set(State::Down);
            tracing::error!("the postgres thread panicked; rows still buffered are lost");
        }
    }
}

/// The history reads' pool: `size` connections at most, opened on demand
/// with the writer's settings and TLS; a broken one is dropped when it is
/// next taken (`is_closed`), so a Postgres restart costs the reads nothing
/// but new connections.
pub(super) fn read_pool(config: &Config, tls: &MakeRustlsConnect, size: usize) -> Option<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    match Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(READ_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
    {
        Ok(pool) => Some(pool),
        Err(e) => {
            // Only a missing runtime fails here; reads are then answered from memory.
            tracing::error!(error = %e, "cannot build the postgres read pool; history reads come from memory");
            None
        }
    }
}

/// Connects, migrates and prepares.
async fn connect(
    config: &Config,
    tls: &MakeRustlsConnect,
) -> Result<(Arc<Conn>, oneshot::Receiver<()>), SetupError> {
    let (mut client, connection) = config.connect(tls.clone()).await?;
    let (lost_tx, lost_rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
        let _ = lost_tx.send(());
    });
    let applied = migrate::apply(&mut client).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "postgres migrations applied");
    }
    let conn = Conn {
        insert_messages: client.prepare(INSERT_MESSAGES).await?,
        insert_audit: client.prepare(INSERT_AUDIT).await?,
        delete_messages: client.prepare(DELETE_MESSAGES).await?,
        set_ban: client.prepare(SET_BAN).await?,
        lift_ban: client.prepare(LIFT_BAN).await?,
        client,
    };
    Ok((Arc::new(conn), lost_rx))
}

/// An error with its causes, e.g. "error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer" (tokio-postgres shows only the first).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Keeps a connection published on `conn_tx`, reconnecting with backoff.
/// Reports the first attempt's outcome on `ready`.
async fn supervise(
    config: Config,
    tls: MakeRustlsConnect,
    conn_tx: watch::Sender<Option<Arc<Conn>>>,
    inner: Arc<Inner>,
    ready: std::sync::mpsc::Sender<bool>,
) {
    let mut ready = Some(ready);
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut last_error: Option<String> = None;
    loop {
        match connect(&config, &tls).await {
            Ok((conn, mut lost)) => {
                bump(&inner.stats.connects);
                backoff.succeeded();
                if last_error.take().is_some() {
                    tracing::info!("postgres reachable again; writing buffered rows");
                }
                inner.health.postgres.set(State::Up);
                conn_tx.send_replace(Some(conn.clone()));
                if let Some(r) = ready.take() {
                    let _ = r.send(true);
                }
                loop {
                    tokio::select! {
                        _ = &mut lost => break,
                        _ = tokio::time::sleep(PROBE_INTERVAL) => {
                            let probe = tokio::time::timeout(PROBE_TIMEOUT, conn.client.simple_query("SELECT 1")).await;
                            if !matches!(probe, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                conn_tx.send_replace(None);
                inner.health.postgres.set(State::Down);
                tracing::warn!("postgres connection lost; writes are buffered and retried");
                last_error = Some("connection lost".into());
            }
            Err(e) => {
                bump(&inner.stats.connect_errors);
                inner.health.postgres.set(State::Down);
                let text = with_causes(&e);
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(error = %text, "postgres unavailable; writes are buffered and retried");
                } else {
                    tracing::debug!(error = %text, "postgres still unavailable");
                }
                last_error = Some(text);
                if let Some(r) = ready.take() {
                    let _ = r.send(false);
                }
            }
        }
        tokio::time::sleep(backoff.failed(Instant::now())).await;
    }
}

/// Answers reads, each in its own task bounded by [`READ_TIMEOUT`] (the
/// wait for a pooled connection included). At most PG_READ_POOL_SIZE run
/// at once; the others wait for a connection inside their timeout, and the
/// queue in front of them is the cores' bounded read lanes.
async fn serve_reads(
    mut reads: lanes::Receiver<ReadRequest>,
    pool: Option<Pool>,
    inner: Arc<Inner>,
) {
    while let Some(req) = reads.recv().await {
        let pool = pool.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            let result = match pool {
                None => Err(ReadFailed),
                Some(pool) => {
                    match tokio::time::timeout(READ_TIMEOUT, read(&pool, &req.spec)).await {
                        Ok(Ok(rows)) => Ok(rows),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "postgres history read failed");
                            Err(ReadFailed)
                        }
                        Err(_) => Err(ReadFailed),
                    }
                }
            };
            bump(if result.is_ok() {
                &inner.stats.reads_ok
            } else {
                &inner.stats.reads_failed
            });
            req.reply.send(result);
        });
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// No pooled connection (Postgres down, pool wait over).
    #[error("read pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The query failed.
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// One history read on a pooled connection, oldest first. The statements
/// are prepared once per connection (deadpool's statement cache).
async fn read(pool: &Pool, spec: &ReadSpec) -> Result<Vec<StoredMessage>, ReadError> {
    let client = pool.get().await?;
    let room: &str = &spec.room;
    let lower = spec.after.map(|u| u.to_string()).unwrap_or_default();
    let upper = spec
        .before
        .map_or_else(|| ID_CEILING.to_string(), |u| u.to_string());
    let limit = spec.limit as i64;
    let stmt = client
        .prepare_cached(match spec.pick {
            Pick::Newest => READ_NEWEST,
            Pick::Oldest => READ_OLDEST,
        })
        .await?;
    let rows = client
        .query(&stmt, &[&room, &lower, &upper, &limit])
        .await?;
    let mut out: Vec<StoredMessage> = rows
        .iter()
        .filter_map(|row| {
            let id: &str = row.get(0);
            let payload: String = row.get(1);
            Some(StoredMessage {
                id: Ulid::from_string(id).ok()?,
                json: Bytes::from(payload),
            })
        })
        .collect();
    if spec.pick == Pick::Newest {
        out.reverse();
    }
    Ok(out)
}

/// Text Postgres accepts: NUL cannot be stored in `text`. Only identifiers
/// from tokens and reasons pass through here; message payloads are JSON,
/// which escapes NUL.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A row type the writer batches.
trait Row: Sized {
    /// Label for logs and metrics.
    const TABLE: &'static str;
    /// Id for logs.
    fn id(&self) -> String;
    /// One multi-row INSERT of `rows`.
    async fn insert(conn: &Conn, rows: &[Pending<Self>]) -> Result<u64, tokio_postgres::Error>;
}

impl Row for MessageRow {
    const TABLE: &'static str = "messages";

    fn id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(conn: &Conn, rows: &[Pending<Self>]) -> Result<u64, tokio_postgres::Error> {
        let rooms: Vec<&str> = rows.iter().map(|p| &*p.row.room_id).collect();
        let ids: Vec<String> = rows.iter().map(|p| p.row.id.to_string()).collect();
        let users: Vec<Cow<str>> = rows.iter().map(|p| pg_text(&p.row.user_id)).collect();
        let users: Vec<&str> = users.iter().map(|u| &**u).collect();
        let times: Vec<SystemTime> = rows.iter().map(|p| system_time(p.row.sent_at_ms)).collect();
        let payloads: Vec<Cow<str>> = rows
            .iter()
            .map(|p| String::from_utf8_lossy(&p.row.payload))
            .collect();
        let payloads: Vec<&str> = payloads.iter().map(|p| &**p).collect();
        conn.client
            .execute(
                &conn.insert_messages,
                &[&rooms, &ids, &users, &times, &payloads],
            )
            .await
    }
}

impl Row for AuditRecord {
    const TABLE: &'static str = "audit";

    fn id(&self) -> String {
        self.message_id.to_string()
    }

    async fn insert(conn: &Conn, rows: &[Pending<Self>]) -> Result<u64, tokio_postgres::Error> {
        let ids: Vec<String> = rows.iter().map(|p| p.row.message_id.to_string()).collect();
        let actions: Vec<&str> = rows.iter().map(|p| p.row.action.as_str()).collect();
        let rooms: Vec<&str> = rows.iter().map(|p| &*p.row.room_id).collect();
        let users: Vec<Cow<str>> = rows.iter().map(|p| pg_text(&p.row.user_id)).collect();
        let users: Vec<&str> = users.iter().map(|u| &**u).collect();
        let reasons: Vec<Option<Cow<str>>> = rows
            .iter()
            .map(|p| p.row.reason.as_deref().map(pg_text))
            .collect();
        let reasons: Vec<Option<&str>> = reasons.iter().map(|r| r.as_deref()).collect();
        let times: Vec<SystemTime> = rows.iter().map(|p| system_time(p.row.at_ms)).collect();
        let actors: Vec<Option<Cow<str>>> = rows
            .iter()
            .map(|p| p.row.actor.as_deref().map(pg_text))
            .collect();
        let actors: Vec<Option<&str>> = actors.iter().map(|a| a.as_deref()).collect();
        let untils: Vec<Option<SystemTime>> = rows
            .iter()
            .map(|p| p.row.until_ms.map(system_time))
            .collect();
        conn.client
            .execute(
                &conn.insert_audit,
                &[
                    &ids, &actions, &rooms, &users, &reasons, &times, &actors, &untils,
                ],
            )
            .await
    }
}

impl Row for DeleteRow {
    const TABLE: &'static str = "deletes";

    fn id(&self) -> String {
        self.id.to_string()
    }

    async fn insert(conn: &Conn, rows: &[Pending<Self>]) -> Result<u64, tokio_postgres::Error> {
        let rooms: Vec<&str> = rows.iter().map(|p| &*p.row.room_id).collect();
        let ids: Vec<String> = rows.iter().map(|p| p.row.id.to_string()).collect();
        conn.client
            .execute(&conn.delete_messages, &[&rooms, &ids])
            .await
    }
}

impl Row for BanRow {
    const TABLE: &'static str = "bans";

    fn id(&self) -> String {
        match self {
            BanRow::Set { user, .. } | BanRow::Lift { user } => user.to_string(),
        }
    }

    /// One statement per change, in order: a ban and its lifting must not swap. Rare (an
    /// operator's action each), so no batching is needed.
    async fn insert(conn: &Conn, rows: &[Pending<Self>]) -> Result<u64, tokio_postgres::Error> {
        let mut n = 0;
        for p in rows {
            n += match &p.row {
                BanRow::Set {
                    user,
                    until_ms,
                    reason,
                    actor,
                    at_ms,
                } => {
                    let (user, actor) = (pg_text(user), pg_text(actor));
                    let reason = reason.as_deref().map(pg_text);
                    let (until, at) = (system_time(*until_ms), system_time(*at_ms));
                    conn.client
                        .execute(
                            &conn.set_ban,
                            &[&&*user, &until, &reason.as_deref(), &&*actor, &at],
                        )
                        .await?
                }
                BanRow::Lift { user } => {
                    let user = pg_text(user);
                    conn.client.execute(&conn.lift_ban, &[&&*user]).await?
                }
            };
        }
        Ok(n)
    }
}

/// The bans still running, as (user, end in ms since the Unix epoch), read once at
/// start-up on a connection of its own.
pub(super) async fn load_bans(
    config: &Config,
    tls: &MakeRustlsConnect,
) -> Result<Vec<(String, u64)>, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client.query(LOAD_BANS, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let user: String = r.get(0);
            let until: i64 = r.get(1);
            (user, until.max(0) as u64)
        })
        .collect())
}

/// Postgres refused the data itself (SQLSTATE classes 22 and 23): retrying
/// the same row can never succeed.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Writes up to `batch` rows from the front of `queue`; on success removes
/// them and returns how many. A batch that Postgres refuses as bad data is
/// written row by row and the refused rows are dropped with an error log,
/// so one bad row cannot block every later write.
async fn flush_one<T: Row>(
    conn: &Conn,
    queue: &mut VecDeque<Pending<T>>,
    batch: usize,
    inner: &Inner,
) -> Result<usize, tokio_postgres::Error> {
    let n = queue.len().min(batch);
    if n == 0 {
        return Ok(0);
    }
    let rows = &queue.make_contiguous()[..n];
    let started = Instant::now();
    match T::insert(conn, rows).await {
        Ok(_) => inner.stats.flushed(n, started.elapsed()),
        Err(e) if is_data_error(&e) => {
            tracing::warn!(error = %e, table = T::TABLE, "postgres refused a batch; writing its rows one by one");
            for one in rows.chunks(1) {
                match T::insert(conn, one).await {
                    Ok(_) => {}
                    Err(e) if is_data_error(&e) => {
                        bump(&inner.stats.rows_rejected);
                        tracing::error!(error = %e, table = T::TABLE, id = %one[0].row.id(), "postgres refused a row; it is not stored");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => return Err(e),
    }
    queue.drain(..n);
    inner.buffered.fetch_sub(n, Ordering::Relaxed);
    let written = match T::TABLE {
        "messages" => &inner.stats.messages_written,
        "audit" => &inner.stats.audit_written,
        _ => &inner.stats.operator_written,
    };
    written.fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
}

/// The writer: batches rows and writes them until shutdown; returns the
/// number of rows left unwritten when the shutdown wait ran out.
async fn write_loop(
    mut rx: lanes::Receiver<WriteItem>,
    mut conn_rx: watch::Receiver<Option<Arc<Conn>>>,
    inner: Arc<Inner>,
    settings: WriterSettings,
) -> usize {
    let batch = settings.policy.batch_size;
    let mut messages: VecDeque<Pending<MessageRow>> = VecDeque::new();
    let mut audits: VecDeque<Pending<AuditRecord>> = VecDeque::new();
    let mut deletes: VecDeque<Pending<DeleteRow>> = VecDeque::new();
    let mut bans: VecDeque<Pending<BanRow>> = VecDeque::new();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut deadline: Option<Instant> = None;
    loop {
        // Read the flag before draining: once it is set every core has
        // stopped, so this drain sees every row they sent.
        let closing = inner.closing.load(Ordering::Acquire);
        let now = Instant::now();
        while let Ok(item) = rx.try_recv() {
            let mut queues = Queues {
                messages: &mut messages,
                audits: &mut audits,
                deletes: &mut deletes,
                bans: &mut bans,
            };
            queues.push(item, now, &inner);
        }
        let pending = messages.len() + audits.len() + deletes.len() + bans.len();
        if closing {
            let end = *deadline.get_or_insert(now + settings.shutdown_timeout);
            if pending == 0 {
                return 0;
            }
            if now >= end {
                return pending;
            }
        }
        let conn = conn_rx.borrow_and_update().clone();
        let oldest = [
            messages.front().map(|p| p.at),
            audits.front().map(|p| p.at),
            deletes.front().map(|p| p.at),
            bans.front().map(|p| p.at),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = match &conn {
            // No connection: wait for the supervisor (or the next backoff tick).
            None if pending > 0 => Next::WaitUntil(now + RETRY_MAX),
            _ => settings
                .policy
                .next(pending, oldest, backoff.next_attempt(), closing, now),
        };
        match (next, conn) {
            (Next::Flush, Some(conn)) => {
                if backoff.failures() > 0 {
                    bump(&inner.stats.write_retries);
                }
                // Messages before their deletes: a delete that arrived after an insert
                // already taken into a batch removes the row once written.
                let result = async {
                    flush_one(&conn, &mut messages, batch, &inner).await?;
                    flush_one(&conn, &mut deletes, batch, &inner).await?;
                    flush_one(&conn, &mut bans, batch, &inner).await?;
                    flush_one(&conn, &mut audits, batch, &inner).await
                }
                .await;
                match result {
                    Ok(_) => {
                        backoff.succeeded();
                        inner.health.postgres.set(State::Up);
                    }
                    Err(e) => {
                        bump(&inner.stats.write_errors);
                        inner.health.postgres.set(State::Down);
                        let wait = backoff.failed(Instant::now());
                        if backoff.failures() == 1 {
                            tracing::warn!(error = %e, buffered = messages.len() + audits.len() + deletes.len() + bans.len(), "postgres write failed; retrying with backoff");
                        } else {
                            tracing::debug!(error = %e, ?wait, "postgres write failed again");
                        }
                    }
                }
            }
            (Next::Idle, _) => {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => {
                            let mut queues = Queues {
                                messages: &mut messages,
                                audits: &mut audits,
                                deletes: &mut deletes,
                                bans: &mut bans,
                            };
                            queues.push(item, Instant::now(), &inner);
                        }
                        // Every sender is gone: nothing more can arrive.
                        None => return messages.len() + audits.len() + deletes.len() + bans.len(),
                    },
                    _ = inner.wake.notified() => {}
                }
            }
            (next, _) => {
                let at = match next {
                    Next::WaitUntil(at) => at,
                    _ => now + RETRY_MAX,
                };
                let at = deadline.map_or(at, |d| at.min(d)).max(now);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = inner.wake.notified() => {}
                    changed = conn_rx.changed() => {
                        if changed.is_ok() && conn_rx.borrow().is_some() {
                            // Back: write now rather than at the end of the backoff.
                            backoff.retry_now();
                        }
                    }
                }
            }
        }
    }
}

/// The writer's queues, one per kind of row.
struct Queues<'a> {
    /// Accepted messages, in acceptance order per lane.
    messages: &'a mut VecDeque<Pending<MessageRow>>,
    /// Audit records.
    audits: &'a mut VecDeque<Pending<AuditRecord>>,
    /// Operators' deletes, written after the messages.
    deletes: &'a mut VecDeque<Pending<DeleteRow>>,
    /// Ban changes, applied in order.
    bans: &'a mut VecDeque<Pending<BanRow>>,
}

impl Queues<'_> {
    /// Takes one row from a lane. A delete first drops a not-yet-written insert of its
    /// message (so the message is never written), then is queued itself (the insert may
    /// be in a batch already written, or come from another instance's writer).
    fn push(&mut self, item: WriteItem, at: Instant, inner: &Inner) {
        match item {
            WriteItem::Message(row) => self.messages.push_back(Pending { at, row }),
            WriteItem::Audit(row) => self.audits.push_back(Pending { at, row }),
            WriteItem::Delete(row) => {
                let before = self.messages.len();
                self.messages
                    .retain(|p| !(p.row.id == row.id && p.row.room_id == row.room_id));
                let dropped = before - self.messages.len();
                inner.buffered.fetch_sub(dropped, Ordering::Relaxed);
                self.deletes.push_back(Pending { at, row });
            }
            WriteItem::Ban(row) => self.bans.push_back(Pending { at, row }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_drops_the_pending_insert_of_its_message_and_is_queued() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let inner = Inner {
            buffered: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            stats: super::super::stats::PgStats::default(),
            health: Arc::new(crate::health::BackendHealth::default()),
        };
        let (mut messages, mut audits, mut deletes, mut bans) = Default::default();
        let mut queues = Queues {
            messages: &mut messages,
            audits: &mut audits,
            deletes: &mut deletes,
            bans: &mut bans,
        };
        let room: Arc<str> = Arc::from("r");
        let row = |n: u64, room: &Arc<str>| MessageRow {
            room_id: room.clone(),
            id: Ulid::from_parts(n, 0),
            user_id: Arc::from("u"),
            sent_at_ms: n,
            payload: Bytes::from_static(b"{}"),
        };
        let now = Instant::now();
        let other: Arc<str> = Arc::from("other");
        for item in [row(1, &room), row(2, &room), row(2, &other)] {
            queues.push(WriteItem::Message(item), now, &inner);
        }
        // Three rows handed over by the cores.
        inner.buffered.store(3, Ordering::Relaxed);
        let delete = DeleteRow {
            room_id: room.clone(),
            id: Ulid::from_parts(2, 0),
        };
        queues.push(WriteItem::Delete(delete), now, &inner);
        let left: Vec<(String, u64)> = messages
            .iter()
            .map(|p| (p.row.room_id.to_string(), p.row.id.timestamp_ms()))
            .collect();
        assert_eq!(left, [("r".to_string(), 1), ("other".to_string(), 2)]);
        assert_eq!(
            inner.buffered.load(Ordering::Relaxed),
            2,
            "the dropped row is no longer buffered"
        );
        // The delete itself is still written (the row may be in Postgres already).
        assert_eq!(deletes.len(), 1);
    }

    #[test]
    fn nul_is_replaced_only_when_present() {
        assert!(matches!(pg_text("alice"), Cow::Borrowed("alice")));
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn id_ceiling_is_above_every_ulid() {
        assert!(
            Ulid::from_parts(u64::MAX >> 16, u128::MAX)
                .to_string()
                .as_str()
                < ID_CEILING
        );
        assert!(String::new().as_str() < Ulid::nil().to_string().as_str());
    }
}
