//! The submit use case: store a validated task, then queue its job.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::ports::{Inserted, Job, JobQueue, StoreError, TaskStore};
use crate::request::{Dialect, GenerationRequest};
use crate::task::{Task, TaskStatus};

#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub task: Task,
    /// False when an earlier submission with the same idempotency key was returned instead.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Submitter {
    tasks: Arc<dyn TaskStore>,
    jobs: Arc<JobQueue>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

impl Submitter {
    pub fn new(tasks: Arc<dyn TaskStore>, jobs: Arc<JobQueue>) -> Self {
        Submitter { tasks, jobs }
    }

    /// Inserts `task` (status queued) and sends its job.
    ///
    /// If the job cannot be sent after the insert, the caller gets an error and may retry with the
    /// same idempotency key: a retry that finds the task still queued sends the job again. A
    /// duplicate job is harmless because claiming a task is conditional.
    pub async fn submit(&self, task: Task) -> Result<Submitted, SubmitError> {
        let (task, created) = match self.tasks.insert(&task).await? {
            Inserted::New => (task, true),
            Inserted::Existing(existing) => {
                if !same_request(&existing, &task) {
                    return Err(SubmitError::IdempotencyKeyReused);
                }
                (*existing, false)
            }
        };
        if created || task.status == TaskStatus::Queued {
            self.jobs.send(&Job { task_id: task.id }).await?;
        }
        Ok(Submitted { task, created })
    }
}

/// Whether a retried submission asks for the same thing: the same request fingerprint when both
/// have one; otherwise the same parsed request, seeds excluded (random seeds were drawn
/// independently for each attempt).
fn same_request(existing: &Task, retry: &Task) -> bool {
    if existing.dialect != retry.dialect || existing.callback_url != retry.callback_url {
        return false;
    }
    if let (Some(a), Some(b)) = (&existing.fingerprint, &retry.fingerprint) {
        return a == b;
    }
    let (a, b) = (&existing.request, &retry.request);
    GenerationRequest { seeds: vec![], ..a.clone() } == GenerationRequest { seeds: vec![], ..b.clone() }
        && a.seeds.len() == b.seeds.len()
}

/// A digest of a request body as the caller sent it: SHA-256 over the dialect, the route and the
/// JSON with object keys sorted, so that key order and whitespace do not matter.
pub fn fingerprint(dialect: Dialect, route: &str, body: &serde_json::Value) -> String {
    fn canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(serde_json::Value::String(key.clone()).to_string().as_bytes());
                    out.push(b':');
                    canonical(&map[key], out);
                }
                out.push(b'}');
            }
            serde_json::Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    canonical(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
        }
    }
    let mut bytes = format!("{dialect:?}\n{route}\n").into_bytes();
    canonical(body, &mut bytes);
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fingerprint_ignores_key_order_but_not_values_routes_or_dialects() {
        let a = fingerprint(
            Dialect::Openai,
            "/v1/images/generations",
            &json!({"prompt": "x", "n": 2, "o": {"a": 1, "b": [1, 2]}}),
        );
        let b = fingerprint(
            Dialect::Openai,
            "/v1/images/generations",
            &json!({"o": {"b": [1, 2], "a": 1}, "n": 2, "prompt": "x"}),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint(
                Dialect::Openai,
                "/v1/images/generations",
                &json!({"prompt": "x", "n": 3, "o": {"a": 1, "b": [1, 2]}})
            )
        );
        assert_ne!(
            a,
            fingerprint(
                Dialect::Openai,
                "/v1/images/edits",
                &json!({"prompt": "x", "n": 2, "o": {"a": 1, "b": [1, 2]}})
            )
        );
        assert_ne!(
            a,
            fingerprint(
                Dialect::Stability,
                "/v1/images/generations",
                &json!({"prompt": "x", "n": 2, "o": {"a": 1, "b": [1, 2]}})
            )
        );
    }
}
