//! Ports: what the use cases need from storage and queues. Adapters (`easel-embedded` for one
//! process on SQLite and files, `easel-aws` for DynamoDB/SQS/S3) implement them.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::keys::ApiKey;
use crate::task::{CallbackAttempt, Completion, Progress, Task, TaskId, TaskStatus};
use crate::usage::DailyUsage;

/// A storage or queue backend failed. The message says which operation; the source says why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{operation} failed")]
    Backend {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn backend(operation: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend { operation, source: Box::new(source) }
    }
}

/// Outcome of [`TaskStore::insert`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New,
    /// The same key already submitted a task with this idempotency key: that task.
    Existing(Box<Task>),
}

/// Outcome of [`TaskStore::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller now holds the task (status `running`) until `lease` runs out.
    Claimed(Box<Task>),
    /// Someone else holds it, or it is finished: acknowledge the job without work.
    NotClaimable(TaskStatus),
    Missing,
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Inserts a new `queued` task, unless the same key already used the same idempotency key.
    async fn insert(&self, task: &Task) -> Result<Inserted, StoreError>;
    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
    /// Conditional: `queued → running`, or `running` whose lease expired (its worker died) `→ running`.
    /// Increments `attempts` and sets `started_at` on the first claim.
    async fn claim(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<Claim, StoreError>;
    /// Heartbeat of the worker that holds the task. False when the task is no longer running.
    async fn extend_lease(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Records progress while the task is running (ignored otherwise). False when it is no longer
    /// running (canceled, or taken over): the worker stops its generation.
    async fn set_progress(&self, id: TaskId, progress: Progress) -> Result<bool, StoreError>;
    /// Conditional terminal write: applied only while the task is `running`.
    /// Returns the updated task, or `None` when the task was not running (someone else finished it).
    /// When the task succeeds, its charge ([`Task::usage`]) is added to its key's total for the
    /// UTC day of `now` in the same atomic write, so a task is charged exactly once.
    async fn complete(
        &self,
        id: TaskId,
        completion: Completion,
        now: OffsetDateTime,
    ) -> Result<Option<Task>, StoreError>;
    /// Conditional: `queued | running → canceled` (a running task's worker sees it at its next
    /// heartbeat and stops between steps). Returns the task as it is afterwards: `canceled`, or
    /// unchanged when it had already finished; `None` when it does not exist. Nothing is charged.
    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Option<Task>, StoreError>;
    /// Appends a callback delivery attempt to the task's record, whatever its status.
    /// False when the task does not exist.
    async fn record_delivery(&self, id: TaskId, attempt: CallbackAttempt) -> Result<bool, StoreError>;
    /// A key's usage per UTC day from `from` to `to` (both included), oldest first; days without
    /// a charge are left out.
    async fn usage(&self, key_id: &str, from: Date, to: Date) -> Result<Vec<DailyUsage>, StoreError>;
}

/// The message that asks a worker to run a task. Only the id travels: the task store is the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub task_id: TaskId,
}

/// The message that asks the notifier to post a finished task to its callback URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub task_id: TaskId,
    /// Asked for by the caller (`POST /v1/tasks/{id}/callbacks/redeliver`): posted even when an
    /// earlier attempt was delivered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivery: bool,
}

/// A received message; `receipt` acknowledges or extends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<M> {
    pub message: M,
    pub receipt: String,
    /// 1 on first delivery; the queue dead-letters a message after its configured maximum.
    pub receive_count: u32,
}

/// A queue with SQS semantics: at-least-once delivery, a visibility timeout per received message,
/// redelivery until acknowledged, and a dead-letter queue after a maximum number of receives.
#[async_trait]
pub trait Queue<M>: Send + Sync {
    async fn send(&self, message: &M) -> Result<(), StoreError>;
    /// Up to `max` messages, each invisible to other receivers for `visibility`. Waits up to `wait`
    /// for one. A body that does not decode as `M` is dropped (logged), never returned.
    async fn receive(&self, max: u32, visibility: Duration, wait: Duration) -> Result<Vec<Delivery<M>>, StoreError>;
    async fn ack(&self, receipt: &str) -> Result<(), StoreError>;
    /// Makes a received message visible again after `visibility` from now: a heartbeat during long
    /// work, or `Duration::ZERO` to hand it back at once.
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError>;
}

/// The queue of [`Job`]s between the API and the workers.
pub type JobQueue = dyn Queue<Job>;
/// The queue of [`Notice`]s between the workers and the notifier.
pub type NoticeQueue = dyn Queue<Notice>;

#[async_trait]
pub trait ImageStore: Send + Sync {
    async fn put_png(&self, key: &str, png: Vec<u8>) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A URL that lets anyone holding it GET the object until `ttl` has passed. Minted per read, never stored.
    async fn url(&self, key: &str, ttl: Duration) -> Result<String, StoreError>;
}

/// Why an input image could not be fetched from the URL a caller gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL breaks the SSRF rules (DESIGN.md §7); the message says which.
    #[error("{0}")]
    Refused(String),
    /// The server could not be reached, answered an error, or sent too much.
    #[error("{0}")]
    Failed(String),
}

/// Downloads a caller's input image from a URL, behind the SSRF guard.
#[async_trait]
pub trait ImageFetcher: Send + Sync {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError>;
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// The key whose secret hashes to `secret_hash`, revoked or not.
    async fn find_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// The key with this id, revoked or not.
    async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Stores `key` over the key with its id and secret hash (its callback secrets change; the
    /// secret never does). False when no such key exists.
    async fn replace(&self, key: &ApiKey) -> Result<bool, StoreError>;
    /// Marks a key revoked. False when no such key exists.
    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError>;
}
