//! One SQLite database file shared by the task store, the key store and the queues.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use easel_core::ports::StoreError;
use rusqlite::Connection;
use tokio::sync::Notify;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tasks (
    id              TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL,
    idempotency_key TEXT,
    status          TEXT NOT NULL,
    lease_until_ms  INTEGER,
    doc             TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_idempotency_key
    ON tasks (key_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT UNIQUE,
    sent_at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at_ms);

CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    doc         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id       TEXT NOT NULL,
    day          TEXT NOT NULL,
    tasks        INTEGER NOT NULL,
    images       INTEGER NOT NULL,
    millicredits INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
);
"#;

/// A shared connection. SQLite serialises writers anyway; one connection behind a mutex keeps the
/// adapters simple and every operation here is a short transaction.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Wakes receivers in this process when a message is sent (other processes are polled).
    pub(crate) sent: Arc<Notify>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    pub(crate) fn open(path: &Path) -> Result<Db, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::backend("opening the SQLite database", e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| StoreError::backend("initialising the SQLite schema", e))?;
        Ok(Db { conn: Arc::new(Mutex::new(conn)), sent: Arc::new(Notify::new()) })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (rusqlite rolls
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) fn sql_err(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(operation, e)
}

pub(crate) fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
