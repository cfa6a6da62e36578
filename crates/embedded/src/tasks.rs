//! SQLite task store with conditional state transitions.

use std::time::Duration;

use async_trait::async_trait;
use easel_core::ports::{Claim, Inserted, StoreError, TaskStore};
use easel_core::task::{CallbackAttempt, Completion, Progress, Task, TaskId, TaskStatus};
use easel_core::usage::{DailyUsage, day_text, parse_day};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::{Date, OffsetDateTime, UtcOffset};

use crate::db::{Db, duration_ms, sql_err, unix_ms};

#[derive(Debug, Clone)]
pub struct SqliteTaskStore {
    db: Db,
}

impl SqliteTaskStore {
    pub(crate) fn new(db: Db) -> Self {
        SqliteTaskStore { db }
    }

    /// Ends every lease. Call at start-up of the process that owns this database: a task that was
    /// `running` then belonged to a process that died, and its redelivered job may claim it again.
    pub fn expire_all_leases(&self) -> Result<usize, StoreError> {
        self.db
            .lock()
            .execute("UPDATE tasks SET lease_until_ms = 0 WHERE status = 'running'", [])
            .map_err(sql_err("expiring task leases"))
    }
}

fn decode(doc: &str) -> Result<Task, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("task record: {e}")))
}

fn encode(task: &Task) -> Result<String, StoreError> {
    serde_json::to_string(task).map_err(|e| StoreError::Corrupt(format!("task record: {e}")))
}

/// Reads a task and its lease inside a transaction.
fn read(tx: &rusqlite::Transaction<'_>, id: TaskId) -> Result<Option<(Task, Option<i64>)>, StoreError> {
    let row: Option<(String, Option<i64>)> = tx
        .query_row("SELECT doc, lease_until_ms FROM tasks WHERE id = ?1", params![id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(sql_err("reading a task"))?;
    row.map(|(doc, lease)| Ok((decode(&doc)?, lease))).transpose()
}

fn write(tx: &rusqlite::Transaction<'_>, task: &Task, lease_until_ms: Option<i64>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tasks SET status = ?2, lease_until_ms = ?3, doc = ?4 WHERE id = ?1",
        params![task.id.to_string(), task.status.as_str(), lease_until_ms, encode(task)?],
    )
    .map_err(sql_err("writing a task"))?;
    Ok(())
}

#[async_trait]
impl TaskStore for SqliteTaskStore {
    async fn insert(&self, task: &Task) -> Result<Inserted, StoreError> {
        let mut conn = self.db.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("inserting a task"))?;
        if let Some(key) = &task.idempotency_key {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM tasks WHERE key_id = ?1 AND idempotency_key = ?2",
                    params![task.key_id, key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("looking up an idempotency key"))?;
            if let Some(doc) = existing {
                return Ok(Inserted::Existing(Box::new(decode(&doc)?)));
            }
        }
        tx.execute(
            "INSERT INTO tasks (id, key_id, idempotency_key, status, lease_until_ms, doc) VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            params![task.id.to_string(), task.key_id, task.idempotency_key, task.status.as_str(), encode(task)?],
        )
        .map_err(sql_err("inserting a task"))?;
        tx.commit().map_err(sql_err("inserting a task"))?;
        Ok(Inserted::New)
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let conn = self.db.lock();
        let doc: Option<String> = conn
            .query_row("SELECT doc FROM tasks WHERE id = ?1", params![id.to_string()], |r| r.get(0))
            .optional()
            .map_err(sql_err("reading a task"))?;
        doc.map(|d| decode(&d)).transpose()
    }

    async fn claim(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<Claim, StoreError> {
        let mut conn = self.db.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("claiming a task"))?;
        let Some((mut task, lease_until)) = read(&tx, id)? else {
            return Ok(Claim::Missing);
        };
        let now_ms = unix_ms(now);
        let claimable = match task.status {
            TaskStatus::Queued => true,
            TaskStatus::Running => lease_until.is_none_or(|until| until <= now_ms),
            _ => false,
        };
        if !claimable {
            return Ok(Claim::NotClaimable(task.status));
        }
        task.mark_claimed(now);
        write(&tx, &task, Some(now_ms.saturating_add(duration_ms(lease))))?;
        tx.commit().map_err(sql_err("claiming a task"))?;
        Ok(Claim::Claimed(Box::new(task)))
    }

    async fn extend_lease(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<bool, StoreError> {
        let changed = self
            .db
            .lock()
            .execute(
                "UPDATE tasks SET lease_until_ms = ?2 WHERE id = ?1 AND status = 'running'",
                params![id.to_string(), unix_ms(now).saturating_add(duration_ms(lease))],
            )
            .map_err(sql_err("extending a task lease"))?;
        Ok(changed > 0)
    }

    async fn set_progress(&self, id: TaskId, progress: Progress) -> Result<bool, StoreError> {
        let mut conn = self.db.lock();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("recording progress"))?;
        if let Some((mut task, lease)) = read(&tx, id)?
            && task.status == TaskStatus::Running
        {
            task.progress = Some(progress);
            write(&tx, &task, lease)?;
            tx.commit().map_err(sql_err("recording progress"))?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn complete(
        &self,
        id: TaskId,
        completion: Completion,
        now: OffsetDateTime,
    ) -> Result<Option<Task>, StoreError> {
        let mut conn = self.db.lock();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("completing a task"))?;
        let Some((mut task, _)) = read(&tx, id)? else {
            return Ok(None);
        };
        if task.status != TaskStatus::Running {
            return Ok(None);
        }
        completion.apply(&mut task, now);
        write(&tx, &task, None)?;
        if let Some(usage) = task.usage {
            tx.execute(
                "INSERT INTO usage_daily (key_id, day, tasks, images, millicredits) VALUES (?1, ?2, 1, ?3, ?4)
                 ON CONFLICT (key_id, day) DO UPDATE SET tasks = tasks + 1, images = images + excluded.images,
                     millicredits = millicredits + excluded.millicredits",
                params![task.key_id, day_text(now.to_offset(UtcOffset::UTC).date()), usage.images, usage.millicredits],
            )
            .map_err(sql_err("charging a task"))?;
        }
        tx.commit().map_err(sql_err("completing a task"))?;
        Ok(Some(task))
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Option<Task>, StoreError> {
        let mut conn = self.db.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("canceling a task"))?;
        let Some((mut task, _)) = read(&tx, id)? else { return Ok(None) };
        if task.status.is_terminal() {
            return Ok(Some(task));
        }
        Completion::Canceled.apply(&mut task, now);
        write(&tx, &task, None)?;
        tx.commit().map_err(sql_err("canceling a task"))?;
        Ok(Some(task))
    }

    async fn record_delivery(&self, id: TaskId, attempt: CallbackAttempt) -> Result<bool, StoreError> {
        let mut conn = self.db.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("recording a callback delivery"))?;
        let Some((mut task, lease)) = read(&tx, id)? else { return Ok(false) };
        task.deliveries.push(attempt);
        write(&tx, &task, lease)?;
        tx.commit().map_err(sql_err("recording a callback delivery"))?;
        Ok(true)
    }

    async fn usage(&self, key_id: &str, from: Date, to: Date) -> Result<Vec<DailyUsage>, StoreError> {
        let conn = self.db.lock();
        let mut query = conn
            .prepare(
                "SELECT day, tasks, images, millicredits FROM usage_daily
                 WHERE key_id = ?1 AND day BETWEEN ?2 AND ?3 ORDER BY day",
            )
            .map_err(sql_err("reading usage"))?;
        let rows = query
            .query_map(params![key_id, day_text(from), day_text(to)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, u64>(2)?, r.get::<_, u64>(3)?))
            })
            .map_err(sql_err("reading usage"))?;
        rows.map(|row| {
            let (day, tasks, images, millicredits) = row.map_err(sql_err("reading usage"))?;
            let day = parse_day(&day).ok_or_else(|| StoreError::Corrupt(format!("usage day {day:?}")))?;
            Ok(DailyUsage { day, tasks, images, millicredits })
        })
        .collect()
    }
}
