//! Settings: every environment variable of the contract (section 5) plus the
//! server's own, each also a command-line flag. `chatd --help` lists them with
//! their defaults. A bad value stops start-up with a message that names the
//! variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Command line of the `chatd` binary.
#[derive(Debug, Parser)]
#[command(
    name = "chatd",
    version,
    about = "Thread-per-core WebSocket chat server"
)]
pub struct Cli {
    /// What to do; with no subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands besides running the server.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an HS256 token signed with JWT_SECRET, for trying the server.
    Token {
        /// User id (the `sub` claim).
        #[arg(long, default_value = "dev-user")]
        user: String,
        /// Display name (the `username` claim); defaults to the user id.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

/// Parses a strictly positive integer.
fn positive(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// Longest TOKEN_EXPIRY_GRACE_MS: a day. A longer grace would make `exp` meaningless.
pub const MAX_TOKEN_EXPIRY_GRACE_MS: u64 = 86_400_000;

/// Parses TOKEN_EXPIRY_GRACE_MS: 0 (close at `exp`) to [`MAX_TOKEN_EXPIRY_GRACE_MS`].
fn grace_ms(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(v) if v <= MAX_TOKEN_EXPIRY_GRACE_MS => Ok(v),
        Ok(v) => Err(format!(
            "at most {MAX_TOKEN_EXPIRY_GRACE_MS} (a day), got {v}"
        )),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// Parses a boolean the way operators write them.
fn boolish(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// All server settings. Field docs are the `--help` text.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Listen port.
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Listen address.
    #[arg(long, env = "HOST", value_name = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// HS256 secret for JWTs. Required unless NODE_ENV/APP_ENV is development.
    #[arg(
        long,
        env = "JWT_SECRET",
        value_name = "JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM file (or PEM text) of an RS256/ES256 public key; when set, tokens must be signed with its private key.
    #[arg(long, env = "JWT_PUBLIC_KEY", value_name = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// Deployment environment (`development` relaxes JWT_SECRET).
    #[arg(long, env = "NODE_ENV", value_name = "NODE_ENV")]
    pub node_env: Option<String>,
    /// Same as NODE_ENV; either one set to `development` counts.
    #[arg(long, env = "APP_ENV", value_name = "APP_ENV")]
    pub app_env: Option<String>,
    /// Redis URL for presence and cross-instance fan-out (unset: in memory, single node).
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel this service uses; instances that share it form one cluster.
    #[arg(
        long,
        env = "REDIS_PREFIX",
        value_name = "REDIS_PREFIX",
        default_value = "chatd:"
    )]
    pub redis_prefix: String,
    /// Seconds after which an instance that stopped refreshing its Redis presence (killed, cut off) counts as gone: its users go offline cluster-wide. Live instances refresh every third of it.
    #[arg(long, env = "PRESENCE_TTL_SECS", value_name = "PRESENCE_TTL_SECS", default_value_t = 30, value_parser = positive)]
    pub presence_ttl_secs: u64,
    /// Commands waiting for the Redis thread (messages to sequence, presence changes, reads; split evenly between the cores' queues), and presence changes waiting to be written; a message that finds its core's queue full is refused with `unavailable`.
    #[arg(long, env = "REDIS_BUFFER", value_name = "REDIS_BUFFER", default_value_t = 10_000, value_parser = positive)]
    pub redis_buffer: u64,
    /// Postgres URL for history and the audit log (unset: in memory, bounded).
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Postgres: most rows (messages and audit records) written in one batch.
    #[arg(long, env = "PG_BATCH_SIZE", value_name = "PG_BATCH_SIZE", default_value_t = 500, value_parser = positive)]
    pub pg_batch_size: u64,
    /// Postgres: longest a row waits before its batch is flushed, in milliseconds (at most 1000, the contract's durability bound).
    #[arg(long, env = "PG_FLUSH_INTERVAL_MS", value_name = "PG_FLUSH_INTERVAL_MS", default_value_t = 100, value_parser = positive)]
    pub pg_flush_interval_ms: u64,
    /// Postgres: rows (messages and audit records) held while Postgres is slow or down; when full, new messages are refused with `unavailable`.
    #[arg(long, env = "PG_BUFFER_MESSAGES", value_name = "PG_BUFFER_MESSAGES", default_value_t = 100_000, value_parser = positive)]
    pub pg_buffer_messages: u64,
    /// Postgres: how long shutdown waits for the last rows to be written, in milliseconds.
    #[arg(long, env = "PG_SHUTDOWN_TIMEOUT_MS", value_name = "PG_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000, value_parser = positive)]
    pub pg_shutdown_timeout_ms: u64,
    /// Postgres: connections of the history reads' pool, apart from the batch writer's own connection, so a read never waits behind a batch insert (1 to 64).
    #[arg(long, env = "PG_READ_POOL_SIZE", value_name = "PG_READ_POOL_SIZE", default_value_t = 4, value_parser = positive)]
    pub pg_read_pool_size: u64,
    /// PEM file of the CA certificates trusted for TLS to Postgres and Redis, in place of the system's roots (unset: the system's roots).
    #[arg(long, env = "BACKEND_CA_FILE", value_name = "BACKEND_CA_FILE")]
    pub backend_ca_file: Option<PathBuf>,
    /// Window of the per-user message limit, in milliseconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_MS", value_name = "RATE_LIMIT_WINDOW_MS", default_value_t = 60_000, value_parser = positive)]
    pub rate_limit_window_ms: u64,
    /// Messages per user per window.
    #[arg(long, env = "RATE_LIMIT_MAX_MESSAGES", value_name = "RATE_LIMIT_MAX_MESSAGES", default_value_t = 30, value_parser = positive)]
    pub rate_limit_max_messages: u64,
    /// Content filtering and audit.
    #[arg(long, env = "ENABLE_MODERATION", value_name = "ENABLE_MODERATION", default_value = "true", value_parser = boolish, action = clap::ArgAction::Set)]
    pub enable_moderation: bool,
    /// Longest message content, in characters (Unicode scalar values).
    #[arg(long, env = "MAX_MESSAGE_LENGTH", value_name = "MAX_MESSAGE_LENGTH", default_value_t = 1000, value_parser = positive)]
    pub max_message_length: u64,
    /// Comma-separated words to mask; replaces the built-in list.
    #[arg(
        long,
        env = "MODERATION_BLOCKLIST",
        value_name = "MODERATION_BLOCKLIST"
    )]
    pub moderation_blocklist: Option<String>,
    /// File of words to mask, one per line (`#` comments); added to MODERATION_BLOCKLIST or the built-in list.
    #[arg(
        long,
        env = "MODERATION_BLOCKLIST_FILE",
        value_name = "MODERATION_BLOCKLIST_FILE"
    )]
    pub moderation_blocklist_file: Option<PathBuf>,
    /// Regular expressions (separated by `;;`) that refuse a message outright, matched case-insensitively.
    #[arg(long, env = "MODERATION_PATTERNS", value_name = "MODERATION_PATTERNS")]
    pub moderation_patterns: Option<String>,
    /// Executor cores (default: the machine's available cores).
    #[arg(long, env = "CORES", value_name = "CORES", value_parser = positive)]
    pub cores: Option<u64>,
    /// Pin each executor thread to its own CPU. Best on dedicated machines; on a machine shared with other busy processes (a load generator, say) unpinned threads let the kernel run an executor wherever a CPU is free.
    #[arg(long, env = "PIN_CORES", value_name = "PIN_CORES", default_value = "true", value_parser = boolish, action = clap::ArgAction::Set)]
    pub pin_cores: bool,
    /// Send each core's fan-out with one io_uring submission per pass (src/runtime/sender.rs). `false` leaves every connection's driver to send its own frames, one `send()` each: the baseline the batched-send benchmark compares against.
    #[arg(long, env = "BATCHED_SENDS", value_name = "BATCHED_SENDS", default_value = "true", value_parser = boolish, action = clap::ArgAction::Set)]
    pub batched_sends: bool,
    /// Most rooms one connection may be in.
    #[arg(long, env = "MAX_ROOMS_PER_CONNECTION", value_name = "MAX_ROOMS_PER_CONNECTION", default_value_t = 100, value_parser = positive)]
    pub max_rooms_per_connection: u64,
    /// `join_room` and `leave_room` frames per second per connection (burst: twice this); over it the frame is answered `rate_limited` with `retryAfterMs` and not acted on.
    #[arg(long, env = "ROOM_FRAMES_PER_SEC", value_name = "ROOM_FRAMES_PER_SEC", default_value_t = 10, value_parser = positive)]
    pub room_frames_per_sec: u64,
    /// `history` frames per second per connection (burst: twice this); over it: `rate_limited` with `retryAfterMs`.
    #[arg(long, env = "HISTORY_FRAMES_PER_SEC", value_name = "HISTORY_FRAMES_PER_SEC", default_value_t = 5, value_parser = positive)]
    pub history_frames_per_sec: u64,
    /// `typing` frames per second per connection, and per user and room across the user's connections (burst: twice this); over it the indicator is dropped silently.
    #[arg(long, env = "TYPING_FRAMES_PER_SEC", value_name = "TYPING_FRAMES_PER_SEC", default_value_t = 5, value_parser = positive)]
    pub typing_frames_per_sec: u64,
    /// Open WebSocket connections per user on this instance; a connection beyond it is closed with 1008 right after its `room_joined`.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", value_name = "MAX_CONNECTIONS_PER_USER", default_value_t = 20, value_parser = positive)]
    pub max_connections_per_user: u64,
    /// "WebSocket connection established" log lines per second (at most one per user per minute on each core); 0 turns the line off.
    #[arg(
        long,
        env = "LOG_CONNECTIONS_PER_SEC",
        value_name = "LOG_CONNECTIONS_PER_SEC",
        default_value_t = 100
    )]
    pub log_connections_per_sec: u64,
    /// Interval of WebSocket pings to quiet connections, in milliseconds.
    #[arg(long, env = "PING_INTERVAL_MS", value_name = "PING_INTERVAL_MS", default_value_t = 30_000, value_parser = positive)]
    pub ping_interval_ms: u64,
    /// A connection with no traffic (not even a pong) for this long is closed, in milliseconds.
    #[arg(long, env = "IDLE_TIMEOUT_MS", value_name = "IDLE_TIMEOUT_MS", default_value_t = 75_000, value_parser = positive)]
    pub idle_timeout_ms: u64,
    /// A connection whose token carries `exp` is closed with 4001 this long after `exp` unless a `refresh` frame brought a newer token, in milliseconds (0 to 86400000).
    #[arg(long, env = "TOKEN_EXPIRY_GRACE_MS", value_name = "TOKEN_EXPIRY_GRACE_MS", default_value_t = 25_000, value_parser = grace_ms)]
    pub token_expiry_grace_ms: u64,
    /// Time allowed for the HTTP request head of a new connection, in milliseconds (slowloris bound).
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", value_name = "HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000, value_parser = positive)]
    pub handshake_timeout_ms: u64,
    /// Outbound queue budget per connection, in bytes; a client that falls further behind is closed with 1013.
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", value_name = "OUTBOUND_QUEUE_BYTES", default_value_t = 1 << 20, value_parser = positive)]
    pub outbound_queue_bytes: u64,
    /// A connection whose outbound queue makes no progress for this long is closed with 1013, in milliseconds.
    #[arg(long, env = "WRITE_STALL_TIMEOUT_MS", value_name = "WRITE_STALL_TIMEOUT_MS", default_value_t = 30_000, value_parser = positive)]
    pub write_stall_timeout_ms: u64,
    /// Kernel send buffer per WebSocket (SO_SNDBUF), in bytes; unset leaves the kernel's auto-tuning. Smaller values cut kernel memory per connection and find slow consumers sooner.
    #[arg(long, env = "SOCKET_SEND_BUFFER", value_name = "SOCKET_SEND_BUFFER", value_parser = positive)]
    pub socket_send_buffer: Option<u64>,
    /// Offer-driven permessage-deflate (RFC 7692): when true, a client that offers it gets it, with `server_no_context_takeover` so one compressed copy of a broadcast frame serves every member.
    #[arg(long, env = "WS_COMPRESSION", value_name = "WS_COMPRESSION", default_value = "false", value_parser = boolish, action = clap::ArgAction::Set)]
    pub ws_compression: bool,
    /// Smallest message payload, in bytes, that is compressed on a connection that negotiated permessage-deflate; smaller frames go uncompressed (deflate would save little and cost a compression).
    #[arg(long, env = "WS_COMPRESSION_MIN_BYTES", value_name = "WS_COMPRESSION_MIN_BYTES", default_value_t = 256, value_parser = positive)]
    pub ws_compression_min_bytes: u64,
    /// In-memory history kept per room (messages).
    #[arg(long, env = "HISTORY_PER_ROOM", value_name = "HISTORY_PER_ROOM", default_value_t = 1000, value_parser = positive)]
    pub history_per_room: u64,
    /// In-memory history kept in total (messages), split evenly across cores.
    #[arg(long, env = "HISTORY_TOTAL", value_name = "HISTORY_TOTAL", default_value_t = 1_000_000, value_parser = positive)]
    pub history_total: u64,
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `chatd=debug`.
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Settings {
    /// True when NODE_ENV or APP_ENV says development.
    pub fn is_development(&self) -> bool {
        [&self.node_env, &self.app_env]
            .iter()
            .any(|v| v.as_deref().map(str::trim) == Some("development"))
    }

    /// Executor count: the setting, else the machine's parallelism.
    pub fn core_count(&self) -> usize {
        match self.cores {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Rate limit window.
    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_millis(self.rate_limit_window_ms)
    }

    /// Ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// TOKEN_EXPIRY_GRACE_MS.
    pub fn token_expiry_grace(&self) -> Duration {
        Duration::from_millis(self.token_expiry_grace_ms)
    }

    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Write stall timeout.
    pub fn write_stall_timeout(&self) -> Duration {
        Duration::from_millis(self.write_stall_timeout_ms)
    }

    /// Postgres flush interval.
    pub fn pg_flush_interval(&self) -> Duration {
        Duration::from_millis(self.pg_flush_interval_ms)
    }

    /// Postgres shutdown wait.
    pub fn pg_shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.pg_shutdown_timeout_ms)
    }

    /// PRESENCE_TTL_SECS.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs)
    }

    /// The per-connection frame budgets.
    pub fn budget_rates(&self) -> crate::ratelimit::BudgetRates {
        crate::ratelimit::BudgetRates {
            rooms: self.room_frames_per_sec as u32,
            history: self.history_frames_per_sec as u32,
            typing: self.typing_frames_per_sec as u32,
        }
    }

    /// Moderation regex sources.
    pub fn patterns(&self) -> Vec<String> {
        self.moderation_patterns
            .as_deref()
            .map(|s| {
                s.split(";;")
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks relations between settings that clap cannot express. Errors
    /// name the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.cores.is_some_and(|c| c > 64) {
            return Err("CORES: at most 64 executor cores are supported".into());
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(format!(
                "IDLE_TIMEOUT_MS ({}) must be longer than PING_INTERVAL_MS ({}), or every quiet connection would be dropped before its ping is answered",
                self.idle_timeout_ms, self.ping_interval_ms
            ));
        }
        if self.outbound_queue_bytes < 64 * 1024 + 16 {
            return Err(
                "OUTBOUND_QUEUE_BYTES: must hold at least one maximum-size frame (65552 bytes)"
                    .into(),
            );
        }
        if self.ws_compression_min_bytes > crate::ws::MAX_MESSAGE_SIZE as u64 {
            return Err(format!(
                "WS_COMPRESSION_MIN_BYTES: at most {} (the largest message), got {}",
                crate::ws::MAX_MESSAGE_SIZE,
                self.ws_compression_min_bytes
            ));
        }
        if self.history_per_room > self.history_total {
            return Err("HISTORY_PER_ROOM must not exceed HISTORY_TOTAL".into());
        }
        if let Some(url) = &self.redis_url {
            crate::redis::keys::check_url(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        }
        if let Some(url) = &self.database_url {
            crate::pg::parse_url(url)?;
        }
        if self.pg_flush_interval_ms > 1000 {
            return Err("PG_FLUSH_INTERVAL_MS: at most 1000, so that a broadcast message is in Postgres within 1 s".into());
        }
        if self.pg_batch_size > 10_000 {
            return Err("PG_BATCH_SIZE: at most 10000 rows per batch".into());
        }
        if self.pg_buffer_messages > 10_000_000 {
            return Err("PG_BUFFER_MESSAGES: at most 10000000 rows".into());
        }
        if self.pg_read_pool_size > 64 {
            return Err(format!(
                "PG_READ_POOL_SIZE: from 1 to 64 connections, got {}",
                self.pg_read_pool_size
            ));
        }
        if let Some(path) = &self.backend_ca_file {
            crate::tls::read_ca_file(path).map_err(|e| e.to_string())?;
        }
        crate::redis::keys::check_prefix(&self.redis_prefix)
            .map_err(|e| format!("REDIS_PREFIX: {e}"))?;
        if self.presence_ttl_secs < 2 || self.presence_ttl_secs > 86_400 {
            return Err(format!(
                "PRESENCE_TTL_SECS: must be from 2 to 86400 seconds, got {}",
                self.presence_ttl_secs
            ));
        }
        if self.redis_buffer > 1_000_000 {
            return Err(format!(
                "REDIS_BUFFER: at most 1000000, got {}",
                self.redis_buffer
            ));
        }
        for (name, value) in [
            ("ROOM_FRAMES_PER_SEC", self.room_frames_per_sec),
            ("HISTORY_FRAMES_PER_SEC", self.history_frames_per_sec),
            ("TYPING_FRAMES_PER_SEC", self.typing_frames_per_sec),
            ("LOG_CONNECTIONS_PER_SEC", self.log_connections_per_sec),
        ] {
            if value > 100_000 {
                return Err(format!("{name}: at most 100000 per second, got {value}"));
            }
        }
        if self.max_connections_per_user > 1_000_000 {
            return Err(format!(
                "MAX_CONNECTIONS_PER_USER: at most 1000000, got {}",
                self.max_connections_per_user
            ));
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.is_empty() {
                return Err("JWT_SECRET: must not be empty".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["chatd"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = parse(&[]).unwrap();
        let s = cli.settings;
        assert_eq!(s.port, 8000);
        assert_eq!(s.rate_limit_window_ms, 60_000);
        assert_eq!(s.rate_limit_max_messages, 30);
        assert!(s.enable_moderation);
        assert_eq!(s.max_message_length, 1000);
        assert_eq!(s.token_expiry_grace(), Duration::from_secs(25));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn token_expiry_grace_is_bounded() {
        let grace = |v: &str| {
            let flag = format!("--token-expiry-grace-ms={v}");
            parse(&[flag.as_str()]).map(|c| c.settings)
        };
        assert_eq!(grace("0").unwrap().token_expiry_grace_ms, 0);
        assert_eq!(grace("86400000").unwrap().token_expiry_grace_ms, 86_400_000);
        for bad in ["86400001", "-1", "soon", ""] {
            let err = grace(bad).unwrap_err().to_string();
            assert!(err.contains("TOKEN_EXPIRY_GRACE_MS"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = parse(&["--port", "eighty"]).unwrap_err().to_string();
        assert!(err.contains("PORT"), "{err}");
        let err = parse(&["--rate-limit-max-messages", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RATE_LIMIT_MAX_MESSAGES") && err.contains("greater than 0"),
            "{err}"
        );
        let err = parse(&["--enable-moderation", "maybe"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ENABLE_MODERATION"), "{err}");
        let err = parse(&["--batched-sends", "sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BATCHED_SENDS"), "{err}");
        assert!(parse(&[]).unwrap().settings.batched_sends);
        assert!(
            !parse(&["--batched-sends", "off"])
                .unwrap()
                .settings
                .batched_sends
        );
        let s = parse(&["--idle-timeout-ms", "1000", "--ping-interval-ms", "2000"])
            .unwrap()
            .settings;
        assert!(s.validate().unwrap_err().starts_with("IDLE_TIMEOUT_MS"));
    }

    #[test]
    fn budget_settings() {
        let s = parse(&[]).unwrap().settings;
        assert_eq!(
            s.budget_rates(),
            crate::ratelimit::BudgetRates {
                rooms: 10,
                history: 5,
                typing: 5
            }
        );
        // Sessions start with these until the hub applies the settings.
        assert_eq!(s.budget_rates(), crate::client::DEFAULT_BUDGETS);
        assert_eq!(s.max_connections_per_user, 20);
        assert_eq!(s.log_connections_per_sec, 100);
        assert_eq!(
            parse(&["--log-connections-per-sec", "0"])
                .unwrap()
                .settings
                .log_connections_per_sec,
            0
        );
        let err = parse(&["--room-frames-per-sec", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ROOM_FRAMES_PER_SEC"), "{err}");
        let err = parse(&["--max-connections-per-user", "many"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAX_CONNECTIONS_PER_USER"), "{err}");
        let s = parse(&["--typing-frames-per-sec", "100001"])
            .unwrap()
            .settings;
        assert!(s
            .validate()
            .unwrap_err()
            .starts_with("TYPING_FRAMES_PER_SEC"));
        let s = parse(&["--log-connections-per-sec", "200000"])
            .unwrap()
            .settings;
        assert!(s
            .validate()
            .unwrap_err()
            .starts_with("LOG_CONNECTIONS_PER_SEC"));
    }

    #[test]
    fn postgres_settings() {
        let s = parse(&[]).unwrap().settings;
        assert_eq!(s.pg_batch_size, 500);
        assert_eq!(s.pg_flush_interval_ms, 100);
        assert_eq!(s.pg_buffer_messages, 100_000);
        assert_eq!(s.pg_shutdown_timeout_ms, 10_000);
        let err = parse(&["--pg-batch-size", "many"]).unwrap_err().to_string();
        assert!(err.contains("PG_BATCH_SIZE"), "{err}");
        let err = parse(&["--pg-buffer-messages", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PG_BUFFER_MESSAGES"), "{err}");
        let s = parse(&["--pg-flush-interval-ms", "1500"]).unwrap().settings;
        assert!(s
            .validate()
            .unwrap_err()
            .starts_with("PG_FLUSH_INTERVAL_MS"));
        let s = parse(&["--database-url", "postgres://u:pw@db:5432/chat"])
            .unwrap()
            .settings;
        assert!(s.validate().is_ok());
        let s = parse(&["--database-url", "postgres://u:pw@db:port/chat"])
            .unwrap()
            .settings;
        let err = s.validate().unwrap_err();
        assert!(
            err.starts_with("DATABASE_URL") && !err.contains("pw"),
            "{err}"
        );
        let s = parse(&[
            "--database-url",
            "postgres://u:pw@db/chat?sslmode=verify-full",
        ])
        .unwrap()
        .settings;
        assert!(s.validate().is_ok());
        let s = parse(&["--database-url", "postgres://u:pw@db/chat?sslmode=sure"])
            .unwrap()
            .settings;
        assert!(s.validate().unwrap_err().starts_with("DATABASE_URL"));
        assert_eq!(s.pg_read_pool_size, 4);
        let err = parse(&["--pg-read-pool-size", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PG_READ_POOL_SIZE"), "{err}");
        let s = parse(&["--pg-read-pool-size", "65"]).unwrap().settings;
        assert!(s.validate().unwrap_err().starts_with("PG_READ_POOL_SIZE"));
        let s = parse(&["--pg-read-pool-size", "64"]).unwrap().settings;
        assert!(s.validate().is_ok());
        let s = parse(&["--backend-ca-file", "/nonexistent/ca.pem"])
            .unwrap()
            .settings;
        assert!(s
            .validate()
            .unwrap_err()
            .starts_with("BACKEND_CA_FILE: cannot read /nonexistent/ca.pem"));
    }

    #[test]
    fn compression_settings() {
        let s = parse(&[]).unwrap().settings;
        assert!(!s.ws_compression);
        assert_eq!(s.ws_compression_min_bytes, 256);
        let s = parse(&["--ws-compression", "on", "--ws-compression-min-bytes", "1"])
            .unwrap()
            .settings;
        assert!(s.ws_compression);
        assert_eq!(s.ws_compression_min_bytes, 1);
        assert!(s.validate().is_ok());
        let err = parse(&["--ws-compression", "gzip"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WS_COMPRESSION"), "{err}");
        let err = parse(&["--ws-compression-min-bytes", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WS_COMPRESSION_MIN_BYTES"), "{err}");
        let s = parse(&["--ws-compression-min-bytes", "65537"])
            .unwrap()
            .settings;
        assert!(s
            .validate()
            .unwrap_err()
            .starts_with("WS_COMPRESSION_MIN_BYTES"));
    }

    #[test]
    fn development_and_patterns() {
        let s = parse(&[
            "--app-env",
            "development",
            "--moderation-patterns",
            "a+b;; ;;c",
        ])
        .unwrap()
        .settings;
        assert!(s.is_development());
        assert_eq!(s.patterns(), vec!["a+b".to_string(), "c".to_string()]);
        let s = parse(&[
            "--enable-moderation",
            "false",
            "--node-env",
            "production",
            "--app-env",
            "production",
        ])
        .unwrap()
        .settings;
        assert!(!s.enable_moderation);
        assert!(!s.is_development());
    }
}
