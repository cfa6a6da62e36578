//! The notify use case: post a finished task to its callback URL, in its dialect's shape, with
//! fresh image URLs, and record every attempt on the task.
//!
//! Delivery is at least once: a notice is acknowledged only after a 2xx answer (or when nothing is
//! owed), and a task whose callback was already delivered is not posted again. Retries are the
//! queue's redeliveries; the queue dead-letters a notice after its maximum receives.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use tokio::sync::watch;

use crate::ports::{ImageStore, Notice, NoticeQueue, StoreError, TaskStore};
use crate::task::{CallbackAttempt, TaskView};

/// Posts a callback body. Implementations never fail: an unreachable receiver is an attempt with
/// an error, recorded like any other.
#[async_trait]
pub trait CallbackSender: Send + Sync {
    async fn post(&self, url: &str, body: Vec<u8>) -> CallbackAttempt;
}

/// Renders the body a task's callback carries (the dialect's own task or result shape).
pub type CallbackRenderer = fn(&TaskView) -> Value;

/// What to do with the notice message after [`Notifier::notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// Delete it: delivered, or nothing to deliver.
    Done,
    /// Leave it for redelivery (the receiver failed, or storage did).
    Retry,
}

pub struct Notifier {
    tasks: Arc<dyn TaskStore>,
    images: Arc<dyn ImageStore>,
    sender: Arc<dyn CallbackSender>,
    render: CallbackRenderer,
    url_ttl: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("url_ttl", &self.url_ttl).finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        images: Arc<dyn ImageStore>,
        sender: Arc<dyn CallbackSender>,
        render: CallbackRenderer,
        url_ttl: Duration,
    ) -> Self {
        Notifier { tasks, images, sender, render, url_ttl }
    }

    pub async fn notify(&self, notice: &Notice) -> NotifyOutcome {
        match self.try_notify(notice).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::error!(task_id = %notice.task_id, error = %err, cause = ?std::error::Error::source(&err), "notifying failed on storage; leaving the notice for redelivery");
                NotifyOutcome::Retry
            }
        }
    }

    async fn try_notify(&self, notice: &Notice) -> Result<NotifyOutcome, StoreError> {
        let Some(task) = self.tasks.get(notice.task_id).await? else {
            tracing::warn!(task_id = %notice.task_id, "notice for an unknown task; dropping it");
            return Ok(NotifyOutcome::Done);
        };
        if !task.callback_pending() {
            tracing::info!(task_id = %task.id, status = %task.status, "no callback owed; dropping the notice");
            return Ok(NotifyOutcome::Done);
        }
        let Some(url) = task.callback_url.clone() else { return Ok(NotifyOutcome::Done) };
        let view = TaskView::mint(task, self.images.as_ref(), self.url_ttl).await?;
        let body = serde_json::to_vec(&(self.render)(&view))
            .map_err(|e| StoreError::Corrupt(format!("callback body of task {}: {e}", view.task.id)))?;
        let attempt = self.sender.post(&url, body).await;
        let delivered = attempt.delivered();
        tracing::info!(task_id = %view.task.id, status = ?attempt.status, error = ?attempt.error, duration_ms = attempt.duration_ms, delivered, "callback attempt");
        self.tasks.record_delivery(view.task.id, attempt).await?;
        Ok(if delivered { NotifyOutcome::Done } else { NotifyOutcome::Retry })
    }

    /// Consumes `notices` until `shutdown` turns true (the long-running form; on AWS the notifier
    /// function is fed by the queue instead). A failed delivery is retried when its notice becomes
    /// visible again, `retry_after` later.
    pub async fn run(&self, notices: &NoticeQueue, retry_after: Duration, mut shutdown: watch::Receiver<bool>) {
        let wait = Duration::from_secs(1);
        while !*shutdown.borrow() {
            let received = tokio::select! {
                r = notices.receive(10, retry_after, wait) => r,
                _ = shutdown.changed() => break,
            };
            match received {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        if self.notify(&delivery.message).await == NotifyOutcome::Done
                            && let Err(err) = notices.ack(&delivery.receipt).await
                        {
                            tracing::warn!(task_id = %delivery.message.task_id, error = %err, "acknowledging a notice failed");
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "receiving notices failed; retrying shortly");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
