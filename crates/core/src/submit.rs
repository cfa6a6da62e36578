//! The submit use case: store a validated task, then queue its job.

use std::sync::Arc;

use crate::ports::{Inserted, Job, JobQueue, StoreError, TaskStore};
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

/// Whether a retried submission asks for the same thing. Seeds are excluded when the caller left
/// them random: they were drawn independently for each attempt.
fn same_request(existing: &Task, retry: &Task) -> bool {
    let (a, b) = (&existing.request, &retry.request);
    existing.dialect == retry.dialect
        && existing.callback_url == retry.callback_url
        && a.prompt == b.prompt
        && a.negative_prompt == b.negative_prompt
        && a.width == b.width
        && a.height == b.height
        && a.steps == b.steps
        && a.guidance == b.guidance
        && a.seeds.len() == b.seeds.len()
}
