//! Schema migrations: the SQL files under `migrations/`, carried in the
//! binary and applied at every (re)connection.
//!
//! Safe on every start and from several instances at once: everything runs
//! in one transaction that first takes a transaction-level advisory lock, so
//! a second instance waits until the first has committed and then finds
//! every file recorded in `schema_migrations`. DDL is transactional in
//! Postgres, so a failed migration leaves nothing half-applied.

use std::collections::HashMap;

use tokio_postgres::Client;

/// One SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Recorded name; files apply in this order.
    pub version: &'static str,
    /// The file's SQL.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_history",
        sql: include_str!("../../migrations/0001_history.sql"),
    },
    Migration {
        version: "0002_operator",
        sql: include_str!("../../migrations/0002_operator.sql"),
    },
];

/// Advisory lock key serialising migrations across instances ("chatd" in
/// ASCII, then 1).
pub const LOCK_KEY: i64 = 0x0063_6861_7464_0001;

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Postgres refused a statement or the connection failed.
    #[error("{0}")]
    Sql(#[from] tokio_postgres::Error),
    /// An applied file was edited afterwards.
    #[error("migration {version} was changed after it was applied (recorded checksum {recorded}, file {file}); add a new migration instead")]
    Changed {
        /// The file's version.
        version: &'static str,
        /// Checksum recorded when it was applied.
        recorded: i64,
        /// Checksum of the file in this binary.
        file: i64,
    },
}

/// FNV-1a of a file's text, recorded to notice edited migrations.
pub fn checksum(sql: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Applies the migrations not yet recorded; returns the versions applied now.
pub async fn apply(client: &mut Client) -> Result<Vec<&'static str>, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    text        PRIMARY KEY,
            checksum   bigint      NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let recorded: HashMap<String, i64> = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match recorded.get(m.version) {
            Some(&was) if was == sum => {}
            Some(&was) => {
                return Err(MigrateError::Changed {
                    version: m.version,
                    recorded: was,
                    file: sum,
                })
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    &[&m.version, &sum],
                )
                .await?;
                applied.push(m.version);
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_unique_and_carried() {
        let versions: Vec<&str> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(MIGRATIONS[0]
            .sql
            .contains("PRIMARY KEY (room_id, message_id)"));
        assert!(MIGRATIONS[0]
            .sql
            .contains("CREATE TABLE IF NOT EXISTS chat_audit"));
        assert!(MIGRATIONS[1]
            .sql
            .contains("CREATE TABLE IF NOT EXISTS chat_bans"));
    }

    #[test]
    fn checksum_is_fnv1a() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(checksum("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(checksum("CREATE TABLE x ()"), checksum("CREATE TABLE y ()"));
    }
}
