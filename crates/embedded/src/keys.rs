//! SQLite API key store.

use async_trait::async_trait;
use easel_core::keys::ApiKey;
use easel_core::ports::{KeyStore, StoreError};
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use crate::db::{Db, sql_err};

#[derive(Debug, Clone)]
pub struct SqliteKeyStore {
    db: Db,
}

impl SqliteKeyStore {
    pub(crate) fn new(db: Db) -> Self {
        SqliteKeyStore { db }
    }
}

fn decode(doc: &str) -> Result<ApiKey, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("api key record: {e}")))
}

fn encode(key: &ApiKey) -> Result<String, StoreError> {
    serde_json::to_string(key).map_err(|e| StoreError::Corrupt(format!("api key record: {e}")))
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.db
            .lock()
            .execute(
                "INSERT INTO api_keys (id, secret_hash, doc) VALUES (?1, ?2, ?3)",
                params![key.id, key.secret_hash, encode(key)?],
            )
            .map_err(sql_err("storing an API key"))?;
        Ok(())
    }

    async fn find_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let doc: Option<String> = self
            .db
            .lock()
            .query_row("SELECT doc FROM api_keys WHERE secret_hash = ?1", params![secret_hash], |r| r.get(0))
            .optional()
            .map_err(sql_err("looking up an API key"))?;
        doc.map(|d| decode(&d)).transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.db.lock();
        let mut stmt = conn.prepare("SELECT doc FROM api_keys ORDER BY rowid").map_err(sql_err("listing API keys"))?;
        let docs: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(sql_err("listing API keys"))?;
        docs.iter().map(|d| decode(d)).collect()
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let doc: Option<String> = self
            .db
            .lock()
            .query_row("SELECT doc FROM api_keys WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(sql_err("reading an API key"))?;
        doc.map(|d| decode(&d)).transpose()
    }

    async fn replace(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let changed = self
            .db
            .lock()
            .execute(
                "UPDATE api_keys SET doc = ?3 WHERE id = ?1 AND secret_hash = ?2",
                params![key.id, key.secret_hash, encode(key)?],
            )
            .map_err(sql_err("updating an API key"))?;
        Ok(changed == 1)
    }

    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let conn = self.db.lock();
        let doc: Option<String> = conn
            .query_row("SELECT doc FROM api_keys WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(sql_err("revoking an API key"))?;
        let Some(doc) = doc else { return Ok(false) };
        let mut key = decode(&doc)?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(now);
            conn.execute("UPDATE api_keys SET doc = ?2 WHERE id = ?1", params![id, encode(&key)?])
                .map_err(sql_err("revoking an API key"))?;
        }
        Ok(true)
    }
}
