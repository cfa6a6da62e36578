//! SQLite queue with SQS semantics: visibility timeout, receive count, redelivery, and a
//! dead-letter queue after a maximum number of receives.

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use easel_core::ports::{Delivery, Queue, StoreError};
use rusqlite::{TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::db::{Db, duration_ms, sql_err, unix_ms};

/// A queue of `M`s (a job or a notice), stored as JSON bodies.
#[derive(Debug)]
pub struct SqliteQueue<M> {
    db: Db,
    name: String,
    dead_letter: String,
    max_receives: u32,
    _message: PhantomData<fn() -> M>,
}

/// A message body as received, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    pub body: String,
    pub receipt: String,
    pub receive_count: u32,
}

impl<M> SqliteQueue<M> {
    /// `name` and `{name}-dlq` live in the shared `messages` table. A message received
    /// `max_receives` times without being acknowledged moves to the dead-letter queue.
    pub(crate) fn new(db: Db, name: &str, max_receives: u32) -> Self {
        SqliteQueue {
            db,
            name: name.to_owned(),
            dead_letter: format!("{name}-dlq"),
            max_receives: max_receives.max(1),
            _message: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn send_raw(&self, body: &str) -> Result<(), StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        self.db
            .lock()
            .execute(
                "INSERT INTO messages (queue, body, visible_at_ms, receive_count, receipt, sent_at_ms) VALUES (?1, ?2, ?3, 0, NULL, ?3)",
                params![self.name, body, now],
            )
            .map_err(sql_err("sending a message"))?;
        self.db.sent.notify_waiters();
        Ok(())
    }

    /// Receives without waiting.
    pub fn try_receive(&self, max: u32, visibility: Duration) -> Result<Vec<RawDelivery>, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let mut conn = self.db.lock();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err("receiving messages"))?;
        // Like SQS's redrive policy: a message already received max_receives times goes to the
        // dead-letter queue instead of being delivered again.
        let dead = tx
            .execute(
                "UPDATE messages SET queue = ?2, receipt = NULL, visible_at_ms = ?4
                 WHERE queue = ?1 AND visible_at_ms <= ?4 AND receive_count >= ?3",
                params![self.name, self.dead_letter, self.max_receives, now],
            )
            .map_err(sql_err("dead-lettering messages"))?;
        if dead > 0 {
            tracing::warn!(queue = %self.name, count = dead, "messages moved to the dead-letter queue");
        }
        let rows: Vec<(i64, String, u32)> = {
            let mut stmt = tx
                .prepare("SELECT id, body, receive_count FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY id LIMIT ?3")
                .map_err(sql_err("receiving messages"))?;
            stmt.query_map(params![self.name, now, max], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect::<Result<_, _>>())
                .map_err(sql_err("receiving messages"))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, body, count) in rows {
            let receipt = format!("{id}:{}", hex::encode(rand::random::<[u8; 12]>()));
            tx.execute(
                "UPDATE messages SET receive_count = receive_count + 1, visible_at_ms = ?2, receipt = ?3 WHERE id = ?1",
                params![id, now.saturating_add(duration_ms(visibility)), receipt],
            )
            .map_err(sql_err("receiving messages"))?;
            out.push(RawDelivery { body, receipt, receive_count: count + 1 });
        }
        tx.commit().map_err(sql_err("receiving messages"))?;
        Ok(out)
    }

    /// Receives, waiting up to `wait` for a message (long polling).
    pub async fn receive_raw(
        &self,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<RawDelivery>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a send between the look and the wait still wakes us.
            let notified = self.db.sent.notified();
            let got = self.try_receive(max, visibility)?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Other processes (e.g. a CLI) may write the same file: poll as well as listen.
            let nap = (deadline - now).min(Duration::from_millis(250));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// Deletes a received message. A stale receipt (the message was received again since) is a no-op.
    pub fn ack_raw(&self, receipt: &str) -> Result<(), StoreError> {
        self.db
            .lock()
            .execute("DELETE FROM messages WHERE receipt = ?1", params![receipt])
            .map_err(sql_err("deleting a message"))?;
        Ok(())
    }

    pub fn extend_raw(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        let until = unix_ms(OffsetDateTime::now_utc()).saturating_add(duration_ms(visibility));
        self.db
            .lock()
            .execute("UPDATE messages SET visible_at_ms = ?2 WHERE receipt = ?1", params![receipt, until])
            .map_err(sql_err("extending a message's visibility"))?;
        Ok(())
    }

    /// Makes every in-flight message visible again. Call at start-up of the process that owns the
    /// database: whoever had received them is gone, so there is no reason to wait out their timeouts.
    pub fn release_in_flight(&self) -> Result<usize, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        self.db
            .lock()
            .execute(
                "UPDATE messages SET visible_at_ms = ?2, receipt = NULL WHERE queue = ?1 AND visible_at_ms > ?2",
                params![self.name, now],
            )
            .map_err(sql_err("releasing in-flight messages"))
    }

    /// (visible + in flight, dead-lettered) message counts.
    pub fn depth(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.db.lock();
        let count = |queue: &str| -> Result<u64, StoreError> {
            conn.query_row("SELECT COUNT(*) FROM messages WHERE queue = ?1", params![queue], |r| r.get(0))
                .map_err(sql_err("counting messages"))
        };
        Ok((count(&self.name)?, count(&self.dead_letter)?))
    }
}

#[async_trait]
impl<M> Queue<M> for SqliteQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn send(&self, message: &M) -> Result<(), StoreError> {
        let body = serde_json::to_string(message).map_err(|e| StoreError::Corrupt(format!("message: {e}")))?;
        self.send_raw(&body)
    }

    async fn receive(&self, max: u32, visibility: Duration, wait: Duration) -> Result<Vec<Delivery<M>>, StoreError> {
        let raw = self.receive_raw(max, visibility, wait).await?;
        let mut out = Vec::with_capacity(raw.len());
        for d in raw {
            match serde_json::from_str::<M>(&d.body) {
                Ok(message) => out.push(Delivery { message, receipt: d.receipt, receive_count: d.receive_count }),
                Err(e) => {
                    // A body no consumer can read never becomes readable: drop it loudly.
                    tracing::error!(queue = %self.name, error = %e, "dropping an unreadable message");
                    self.ack_raw(&d.receipt)?;
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<(), StoreError> {
        self.ack_raw(receipt)
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        self.extend_raw(receipt, visibility)
    }
}
