//! DynamoDB task and key store: one table, single-table design.
//!
//! | item | `pk` | other attributes |
//! | --- | --- | --- |
//! | task | `task#{id}` | `status`, `version`, `lease_until_ms`, `expires_at` (TTL), `gsi1pk` = `key#{key_id}`, `gsi1sk` = id, `task` (the [`Task`] as a map) |
//! | idempotency marker | `idem#{key_id}#{idempotency key}` | `task_id`, `expires_at` |
//! | API key | `apikey#{secret hash}` | `gsi1pk` = `apikeys`, `gsi1sk` = key id, `key` (the [`ApiKey`] as a map) |
//! | usage | `usage#{key_id}#{YYYY-MM-DD}` | `gsi1pk` = `usage#{key_id}`, `gsi1sk` = the day, counters `tasks`, `images`, `millicredits` (no TTL: billing data stays) |
//!
//! Items are mapped with `serde_dynamo`. `status` and `version` are duplicated at the top level so
//! conditions can test them: every state transition is a read, a change in Rust (the same
//! [`Task`] methods the embedded store uses), and a put conditional on the version read; a
//! conflicting writer makes the condition fail and the transition is re-decided on fresh data.
//! The `gsi1` index lists a key's tasks, all API keys, and a key's usage by day. The write that
//! makes a task `succeeded` is a transaction: the conditional put of the task and an `ADD` of its
//! charge to the key's usage item for the day, so a task is charged exactly once.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use easel_core::keys::ApiKey;
use easel_core::ports::{Claim, Inserted, KeyStore, StoreError, TaskStore};
use easel_core::task::{CallbackAttempt, Completion, Progress, Task, TaskId, TaskStatus};
use easel_core::usage::{DailyUsage, Usage, day_text, parse_day};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, UtcOffset};

/// Name of the global secondary index (partition `gsi1pk`, sort `gsi1sk`, both strings).
pub const GSI1: &str = "gsi1";
/// Partition of the index that holds every API key.
const KEYS_PARTITION: &str = "apikeys";
/// Conditional writes that lose a race are re-decided this many times before giving up.
const MAX_CONFLICT_RETRIES: usize = 8;

type Item = HashMap<String, AttributeValue>;

fn task_pk(id: TaskId) -> String {
    format!("task#{id}")
}

fn idempotency_pk(key_id: &str, idempotency_key: &str) -> String {
    format!("idem#{key_id}#{idempotency_key}")
}

fn key_pk(secret_hash: &str) -> String {
    format!("apikey#{secret_hash}")
}

fn usage_partition(key_id: &str) -> String {
    format!("usage#{key_id}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn corrupt(what: &str) -> impl FnOnce(serde_dynamo::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// A strongly consistent read of the item `pk`, mapped to `T`.
async fn get_item<T: serde::de::DeserializeOwned>(
    client: &Client,
    table: &str,
    pk: String,
    operation: &'static str,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::backend(operation, e))?;
    out.item.map(|item| serde_dynamo::from_item(item).map_err(corrupt(what))).transpose()
}

/// Every item of the index partition `partition`, with sort keys between `range` (inclusive)
/// when given, in sort-key order, all pages. Index reads are eventually consistent.
async fn query_index<T: serde::de::DeserializeOwned>(
    client: &Client,
    table: &str,
    partition: String,
    range: Option<(String, String)>,
    operation: &'static str,
    what: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let mut query = client
            .query()
            .table_name(table)
            .index_name(GSI1)
            .expression_attribute_values(":p", s(partition.clone()))
            .set_exclusive_start_key(start.take());
        query = match &range {
            None => query.key_condition_expression("gsi1pk = :p"),
            Some((from, to)) => query
                .key_condition_expression("gsi1pk = :p AND gsi1sk BETWEEN :from AND :to")
                .expression_attribute_values(":from", s(from.clone()))
                .expression_attribute_values(":to", s(to.clone())),
        };
        let out = query.send().await.map_err(|e| StoreError::backend(operation, e))?;
        for item in out.items.unwrap_or_default() {
            items.push(serde_dynamo::from_item(item).map_err(corrupt(what))?);
        }
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(items),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TaskItem {
    pk: String,
    status: TaskStatus,
    version: u64,
    #[serde(default)]
    lease_until_ms: Option<i64>,
    /// Epoch seconds; DynamoDB's TTL deletes the item some time after.
    expires_at: i64,
    gsi1pk: String,
    gsi1sk: String,
    task: Task,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyItem {
    pk: String,
    task_id: TaskId,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct UsageItem {
    gsi1sk: String,
    tasks: u64,
    images: u64,
    millicredits: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyItem {
    pk: String,
    gsi1pk: String,
    gsi1sk: String,
    key: ApiKey,
}

#[derive(Debug, Clone)]
pub struct DynamoTaskStore {
    client: Client,
    table: String,
    retention: Duration,
}

enum Decision<T> {
    /// Write the changed task (with this lease) and return `T`.
    Write(Box<Task>, Option<i64>, T),
    /// Write nothing and return `T`.
    Keep(T),
}

impl DynamoTaskStore {
    pub fn new(client: Client, table: &str, retention: Duration) -> Self {
        DynamoTaskStore { client, table: table.to_owned(), retention }
    }

    fn expires_at(&self, task: &Task) -> i64 {
        (task.created_at + self.retention).unix_timestamp()
    }

    fn item(&self, task: &Task, version: u64, lease_until_ms: Option<i64>) -> Result<Item, StoreError> {
        serde_dynamo::to_item(TaskItem {
            pk: task_pk(task.id),
            status: task.status,
            version,
            lease_until_ms,
            expires_at: self.expires_at(task),
            gsi1pk: format!("key#{}", task.key_id),
            gsi1sk: task.id.to_string(),
            task: task.clone(),
        })
        .map_err(corrupt("task item"))
    }

    async fn read(&self, id: TaskId) -> Result<Option<TaskItem>, StoreError> {
        get_item(&self.client, &self.table, task_pk(id), "DynamoDB GetItem (task)", "task item").await
    }

    /// Read, decide, write conditionally on the version read; on a lost race, decide again.
    /// A write that makes the task `succeeded` also adds its charge to the key's usage of the day,
    /// in the same transaction.
    async fn transition<T>(
        &self,
        id: TaskId,
        operation: &'static str,
        mut decide: impl FnMut(Option<TaskItem>) -> Decision<T>,
    ) -> Result<T, StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let current = self.read(id).await?;
            let version = current.as_ref().map_or(0, |item| item.version);
            let was_succeeded = current.as_ref().is_some_and(|item| item.status == TaskStatus::Succeeded);
            let (task, lease, result) = match decide(current) {
                Decision::Keep(result) => return Ok(result),
                Decision::Write(task, lease, result) => (task, lease, result),
            };
            let item = self.item(&task, version + 1, lease)?;
            let charge = task.usage.filter(|_| task.status == TaskStatus::Succeeded && !was_succeeded);
            let lost_race = match charge {
                None => match self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(version))
                    .send()
                    .await
                {
                    Ok(_) => false,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => true,
                    Err(e) => return Err(StoreError::backend(operation, e)),
                },
                Some(usage) => {
                    let day = task.finished_at.unwrap_or_else(OffsetDateTime::now_utc).to_offset(UtcOffset::UTC).date();
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("version = :v")
                        .expression_attribute_values(":v", n(version))
                        .build()
                        .map_err(|e| StoreError::backend("DynamoDB TransactWriteItems (building)", e))?;
                    let written = self
                        .client
                        .transact_write_items()
                        .transact_items(TransactWriteItem::builder().put(put).build())
                        .transact_items(self.charge(&task.key_id, day, usage)?)
                        .send()
                        .await;
                    match written {
                        Ok(_) => false,
                        // The task's condition failed, or another transaction touched the same
                        // items: decide again on fresh data (a persistent cause ends the loop).
                        Err(e) if e.as_service_error().is_some_and(|s| s.is_transaction_canceled_exception()) => true,
                        Err(e) => return Err(StoreError::backend(operation, e)),
                    }
                }
            };
            if !lost_race {
                return Ok(result);
            }
            tracing::debug!(task_id = %id, operation, "lost a race on a task; deciding again");
        }
        Err(StoreError::Corrupt(format!("{operation}: task {id} kept changing under {MAX_CONFLICT_RETRIES} attempts")))
    }

    /// The transaction item that adds `usage` (one task) to `key_id`'s usage item for `day`.
    fn charge(&self, key_id: &str, day: Date, usage: Usage) -> Result<TransactWriteItem, StoreError> {
        let day = day_text(day);
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("{}#{day}", usage_partition(key_id))))
            .update_expression("SET gsi1pk = :p, gsi1sk = :d ADD #tasks :one, #images :i, #credits :c")
            .expression_attribute_names("#tasks", "tasks")
            .expression_attribute_names("#images", "images")
            .expression_attribute_names("#credits", "millicredits")
            .expression_attribute_values(":p", s(usage_partition(key_id)))
            .expression_attribute_values(":d", s(day))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":i", n(usage.images))
            .expression_attribute_values(":c", n(usage.millicredits))
            .build()
            .map_err(|e| StoreError::backend("DynamoDB TransactWriteItems (building)", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// An update applied only while the task is running. False when it is not (or does not exist).
    async fn update_if_running(
        &self,
        id: TaskId,
        operation: &'static str,
        set: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(task_pk(id)))
            .update_expression(set)
            .condition_expression("#status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()));
        for (k, v) in names {
            request = request.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            request = request.expression_attribute_values(k, v);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(StoreError::backend(operation, e)),
        }
    }
}

#[async_trait]
impl TaskStore for DynamoTaskStore {
    async fn insert(&self, task: &Task) -> Result<Inserted, StoreError> {
        let item = self.item(task, 1, None)?;
        let Some(idempotency_key) = &task.idempotency_key else {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await
                .map_err(|e| StoreError::backend("DynamoDB PutItem (task)", e))?;
            return Ok(Inserted::New);
        };
        // The task and its idempotency marker are written together, each only if new: a second
        // submission with the same key finds the marker and gets the first task back.
        let marker_pk = idempotency_pk(&task.key_id, idempotency_key);
        let marker = serde_dynamo::to_item(IdempotencyItem {
            pk: marker_pk.clone(),
            task_id: task.id,
            expires_at: self.expires_at(task),
        })
        .map_err(corrupt("idempotency item"))?;
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| StoreError::backend("DynamoDB TransactWriteItems (building)", e))?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        let written =
            self.client.transact_write_items().transact_items(put(item)?).transact_items(put(marker)?).send().await;
        match written {
            Ok(_) => Ok(Inserted::New),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_transaction_canceled_exception()) => {
                let existing: Option<IdempotencyItem> = get_item(
                    &self.client,
                    &self.table,
                    marker_pk,
                    "DynamoDB GetItem (idempotency key)",
                    "idempotency item",
                )
                .await?;
                let Some(marker) = existing else {
                    // Canceled for another reason (e.g. a conflicting transaction): report it.
                    return Err(StoreError::backend("DynamoDB TransactWriteItems (task)", e));
                };
                match self.read(marker.task_id).await? {
                    Some(item) => Ok(Inserted::Existing(Box::new(item.task))),
                    None => Err(StoreError::Corrupt(format!(
                        "idempotency key of key {} points at the missing task {}",
                        task.key_id, marker.task_id
                    ))),
                }
            }
            Err(e) => Err(StoreError::backend("DynamoDB TransactWriteItems (task)", e)),
        }
    }

    async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.read(id).await?.map(|item| item.task))
    }

    async fn claim(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<Claim, StoreError> {
        let now_ms = unix_ms(now);
        self.transition(id, "DynamoDB PutItem (claim)", |current| {
            let Some(item) = current else { return Decision::Keep(Claim::Missing) };
            let claimable = match item.status {
                TaskStatus::Queued => true,
                TaskStatus::Running => item.lease_until_ms.is_none_or(|until| until <= now_ms),
                _ => false,
            };
            if !claimable {
                return Decision::Keep(Claim::NotClaimable(item.status));
            }
            let mut task = item.task;
            task.mark_claimed(now);
            let claimed = Claim::Claimed(Box::new(task.clone()));
            Decision::Write(Box::new(task), Some(now_ms.saturating_add(duration_ms(lease))), claimed)
        })
        .await
    }

    async fn extend_lease(&self, id: TaskId, lease: Duration, now: OffsetDateTime) -> Result<bool, StoreError> {
        let until = unix_ms(now).saturating_add(duration_ms(lease));
        self.update_if_running(
            id,
            "DynamoDB UpdateItem (lease)",
            "SET lease_until_ms = :until",
            &[],
            vec![(":until", n(until))],
        )
        .await
    }

    async fn set_progress(&self, id: TaskId, progress: Progress) -> Result<bool, StoreError> {
        let value = serde_dynamo::to_attribute_value(progress).map_err(corrupt("progress"))?;
        self.update_if_running(
            id,
            "DynamoDB UpdateItem (progress)",
            "SET #task.#progress = :progress",
            &[("#task", "task"), ("#progress", "progress")],
            vec![(":progress", value)],
        )
        .await
    }

    async fn complete(
        &self,
        id: TaskId,
        completion: Completion,
        now: OffsetDateTime,
    ) -> Result<Option<Task>, StoreError> {
        self.transition(id, "DynamoDB PutItem (complete)", |current| match current {
            Some(item) if item.status == TaskStatus::Running => {
                let mut task = item.task;
                completion.clone().apply(&mut task, now);
                let done = Some(task.clone());
                Decision::Write(Box::new(task), None, done)
            }
            _ => Decision::Keep(None),
        })
        .await
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Option<Task>, StoreError> {
        self.transition(id, "DynamoDB PutItem (cancel)", |current| match current {
            Some(item) if !item.status.is_terminal() => {
                let mut task = item.task;
                Completion::Canceled.apply(&mut task, now);
                let canceled = Some(task.clone());
                Decision::Write(Box::new(task), None, canceled)
            }
            other => Decision::Keep(other.map(|item| item.task)),
        })
        .await
    }

    async fn record_delivery(&self, id: TaskId, attempt: CallbackAttempt) -> Result<bool, StoreError> {
        let value = serde_dynamo::to_attribute_value(vec![attempt]).map_err(corrupt("callback attempt"))?;
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(task_pk(id)))
            .update_expression("SET #task.#deliveries = list_append(#task.#deliveries, :attempt)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#task", "task")
            .expression_attribute_names("#deliveries", "deliveries")
            .expression_attribute_values(":attempt", value)
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(StoreError::backend("DynamoDB UpdateItem (callback delivery)", e)),
        }
    }

    /// Through the index, so eventually consistent: a charge made a moment ago may not show yet.
    async fn usage(&self, key_id: &str, from: Date, to: Date) -> Result<Vec<DailyUsage>, StoreError> {
        let range = Some((day_text(from), day_text(to)));
        let items: Vec<UsageItem> = query_index(
            &self.client,
            &self.table,
            usage_partition(key_id),
            range,
            "DynamoDB Query (usage)",
            "usage item",
        )
        .await?;
        items
            .into_iter()
            .map(|item| {
                let day = parse_day(&item.gsi1sk)
                    .ok_or_else(|| StoreError::Corrupt(format!("usage day {:?}", item.gsi1sk)))?;
                Ok(DailyUsage { day, tasks: item.tasks, images: item.images, millicredits: item.millicredits })
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct DynamoKeyStore {
    client: Client,
    table: String,
}

impl DynamoKeyStore {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoKeyStore { client, table: table.to_owned() }
    }

    /// A key store on `table` with a client of its own (for `easel keys --aws-table`).
    pub fn for_table(sdk: &aws_config::SdkConfig, table: &str) -> Self {
        DynamoKeyStore::new(Client::new(sdk), table)
    }

    /// Every key item, through the index (eventually consistent, like any GSI read).
    async fn all(&self) -> Result<Vec<KeyItem>, StoreError> {
        query_index(
            &self.client,
            &self.table,
            KEYS_PARTITION.to_owned(),
            None,
            "DynamoDB Query (API keys)",
            "API key item",
        )
        .await
    }
}

/// A key's item: addressed by its secret's hash, listed in the keys partition of the index.
fn key_item(key: &ApiKey) -> Result<Item, StoreError> {
    serde_dynamo::to_item(KeyItem {
        pk: key_pk(&key.secret_hash),
        gsi1pk: KEYS_PARTITION.to_owned(),
        gsi1sk: key.id.clone(),
        key: key.clone(),
    })
    .map_err(corrupt("API key item"))
}

#[async_trait]
impl KeyStore for DynamoKeyStore {
    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError> {
        let item = key_item(key)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| StoreError::backend("DynamoDB PutItem (API key)", e))?;
        Ok(())
    }

    async fn find_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let item: Option<KeyItem> =
            get_item(&self.client, &self.table, key_pk(secret_hash), "DynamoDB GetItem (API key)", "API key item")
                .await?;
        Ok(item.map(|item| item.key))
    }

    async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys: Vec<ApiKey> = self.all().await?.into_iter().map(|item| item.key).collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    /// Through the keys index (one partition; a key's item is addressed by its secret's hash).
    async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.all().await?.into_iter().map(|item| item.key).find(|key| key.id == id))
    }

    async fn replace(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let item = key_item(key)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_exists(pk) AND #key.#id = :id")
            .expression_attribute_names("#key", "key")
            .expression_attribute_names("#id", "id")
            .expression_attribute_values(":id", s(key.id.clone()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(StoreError::backend("DynamoDB PutItem (replace API key)", e)),
        }
    }

    async fn revoke(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.all().await?.into_iter().find(|item| item.key.id == id) else { return Ok(false) };
        if item.key.revoked_at.is_some() {
            return Ok(true);
        }
        let at = serde_dynamo::to_attribute_value(
            now.format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| StoreError::Corrupt(format!("revocation time: {e}")))?,
        )
        .map_err(corrupt("revocation time"))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(item.pk))
            .update_expression("SET #key.#revoked_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#key", "key")
            .expression_attribute_names("#revoked_at", "revoked_at")
            .expression_attribute_values(":at", at)
            .send()
            .await
            .map_err(|e| StoreError::backend("DynamoDB UpdateItem (revoke API key)", e))?;
        Ok(true)
    }
}
