//! The notify use case: post a finished task to its callback URL, in its dialect's shape, with
//! fresh image URLs, signed with its API key's callback secrets (Standard Webhooks headers,
//! [`crate::webhook`]), and record every attempt on the task.
//!
//! Delivery is at least once: a notice is acknowledged only after a 2xx answer (or when nothing is
//! owed), and a task whose callback was already delivered is not posted again. Every attempt of
//! one callback carries the same `webhook-id`, so receivers can drop duplicates. Retries are the
//! queue's redeliveries, put off by [`RetrySchedule`] (the message's visibility is extended); the
//! queue dead-letters a notice after the last attempt. A 2xx ends it, 410 stops it, `Retry-After`
//! on any answer is honoured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use tokio::sync::watch;

use crate::ports::{ImageStore, KeyStore, Notice, NoticeQueue, StoreError, TaskStore};
use crate::task::{CallbackAttempt, TaskView};

/// Posts a callback body with its signature headers. Implementations never fail: an unreachable
/// receiver is an attempt with an error, recorded like any other.
#[async_trait]
pub trait CallbackSender: Send + Sync {
    async fn post(&self, url: &str, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> CallbackAttempt;
}

/// Renders the body a task's callback carries (the dialect's own task or result shape).
pub type CallbackRenderer = fn(&TaskView) -> Value;

/// What to do with the notice message after [`Notifier::notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// Delete it: delivered, nothing to deliver, or nothing more to try (410, a refused URL).
    Done,
    /// Try again: make the message visible again after this delay.
    Retry { after: Duration },
    /// That was the last attempt: leave the message, so the queue dead-letters it at its next
    /// receive. The task records the failure.
    Exhausted,
}

/// When failed callbacks are tried again. After attempt *k* (1-based) fails, the next one waits
/// `delays[k-1]`, ±20 % (jitter, so that receivers recovering from an outage are not hit by every
/// sender at once), or the receiver's `Retry-After` when that is longer, never more than 12 h
/// (SQS's longest visibility timeout). After `attempts()` attempts the notice is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
}

/// SQS's longest visibility timeout, the longest a notice can be put off.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 3600);

impl Default for RetrySchedule {
    /// 8 attempts over about 4.7 hours: at once, then after 5 s, 30 s, 2 min, 10 min, 30 min, 1 h and 3 h.
    fn default() -> Self {
        let secs = [5, 30, 120, 600, 1800, 3600, 10800];
        RetrySchedule { delays: secs.into_iter().map(Duration::from_secs).collect() }
    }
}

impl RetrySchedule {
    /// Attempts in all, the first included. The notices queue's maximum receives must not be lower.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// The wait before the attempt after `attempt` (1-based), given the receiver's `Retry-After`
    /// and `jitter` in [0, 1) (0.5 = no change); `None` when `attempt` was the last.
    pub fn delay_after(&self, attempt: u32, retry_after_secs: Option<u64>, jitter: f64) -> Option<Duration> {
        let base = *self.delays.get(usize::try_from(attempt.checked_sub(1)?).ok()?)?;
        let jittered = base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        let asked = Duration::from_secs(retry_after_secs.unwrap_or(0));
        Some(jittered.max(asked).min(MAX_RETRY_DELAY))
    }
}

pub struct Notifier {
    tasks: Arc<dyn TaskStore>,
    keys: Arc<dyn KeyStore>,
    images: Arc<dyn ImageStore>,
    sender: Arc<dyn CallbackSender>,
    render: CallbackRenderer,
    url_ttl: Duration,
    schedule: RetrySchedule,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("url_ttl", &self.url_ttl)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        keys: Arc<dyn KeyStore>,
        images: Arc<dyn ImageStore>,
        sender: Arc<dyn CallbackSender>,
        render: CallbackRenderer,
        url_ttl: Duration,
        schedule: RetrySchedule,
    ) -> Self {
        Notifier { tasks, keys, images, sender, render, url_ttl, schedule }
    }

    pub fn schedule(&self) -> &RetrySchedule {
        &self.schedule
    }

    /// Delivers `notice`, received for the `receive_count`-th time (1 on the first attempt).
    pub async fn notify(&self, notice: &Notice, receive_count: u32) -> NotifyOutcome {
        match self.try_notify(notice, receive_count).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::error!(task_id = %notice.task_id, error = %err, cause = ?std::error::Error::source(&err), "notifying failed on storage; leaving the notice for redelivery");
                // The attempt was not made (or not recorded): try again soon, within the schedule.
                let after = self.schedule.delay_after(1, None, rand::random()).unwrap_or(Duration::from_secs(5));
                NotifyOutcome::Retry { after }
            }
        }
    }

    async fn try_notify(&self, notice: &Notice, receive_count: u32) -> Result<NotifyOutcome, StoreError> {
        let Some(task) = self.tasks.get(notice.task_id).await? else {
            tracing::warn!(task_id = %notice.task_id, "notice for an unknown task; dropping it");
            return Ok(NotifyOutcome::Done);
        };
        let owed = if notice.redelivery { task.status.is_terminal() } else { task.callback_pending() };
        if !owed {
            tracing::info!(task_id = %task.id, status = %task.status, "no callback owed; dropping the notice");
            return Ok(NotifyOutcome::Done);
        }
        let Some(url) = task.callback_url.clone() else { return Ok(NotifyOutcome::Done) };
        let view = TaskView::mint(task, self.images.as_ref(), self.url_ttl).await?;
        let body = serde_json::to_vec(&(self.render)(&view))
            .map_err(|e| StoreError::Corrupt(format!("callback body of task {}: {e}", view.task.id)))?;
        let now = time::OffsetDateTime::now_utc();
        let msg_id = crate::webhook::message_id(view.task.id);
        let key = self.keys.get(&view.task.key_id).await?;
        let signed = key
            .as_ref()
            .map(|key| crate::webhook::headers(&key.signing_secrets(now), &msg_id, now.unix_timestamp(), &body));
        let attempt = match signed {
            Some(Ok(headers)) => self.sender.post(&url, headers, body).await,
            // Never send an unsigned callback: the receiver could not tell it from a forgery.
            _ => CallbackAttempt {
                at: now,
                status: None,
                error: Some(if key.is_none() {
                    format!("the task's API key {} no longer exists; the callback cannot be signed", view.task.key_id)
                } else {
                    "the API key's callback secret is malformed; the callback cannot be signed".to_owned()
                }),
                error_class: Some("signing".into()),
                retry_after_secs: None,
                duration_ms: 0,
                gave_up: true,
            },
        };
        let mut attempt = attempt;
        let delivered = attempt.delivered();
        // 410 Gone, a URL the guard refuses and a callback that cannot be signed are not retried.
        let permanent =
            attempt.status == Some(410) || matches!(attempt.error_class.as_deref(), Some("refused" | "signing"));
        let next = self.schedule.delay_after(receive_count.max(1), attempt.retry_after_secs, rand::random());
        let outcome = match (delivered, permanent, next) {
            (true, _, _) => NotifyOutcome::Done,
            (false, true, _) => NotifyOutcome::Done,
            (false, false, Some(after)) => NotifyOutcome::Retry { after },
            (false, false, None) => NotifyOutcome::Exhausted,
        };
        attempt.gave_up = !delivered && matches!(outcome, NotifyOutcome::Done | NotifyOutcome::Exhausted);
        tracing::info!(task_id = %view.task.id, status = ?attempt.status, error = ?attempt.error, duration_ms = attempt.duration_ms, delivered, attempt = receive_count, ?outcome, "callback attempt");
        self.tasks.record_delivery(view.task.id, attempt).await?;
        Ok(outcome)
    }

    /// Consumes `notices` until `shutdown` turns true (the long-running form; on AWS the notifier
    /// function is fed by the queue instead). A received notice stays hidden for `in_flight` while
    /// it is delivered (a notifier that dies meanwhile leaves it to come back then); a failed
    /// delivery is put off by the schedule's delay.
    pub async fn run(&self, notices: &NoticeQueue, in_flight: Duration, mut shutdown: watch::Receiver<bool>) {
        let wait = Duration::from_secs(1);
        while !*shutdown.borrow() {
            let received = tokio::select! {
                r = notices.receive(10, in_flight, wait) => r,
                _ = shutdown.changed() => break,
            };
            match received {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        let task_id = delivery.message.task_id;
                        let result = match self.notify(&delivery.message, delivery.receive_count).await {
                            NotifyOutcome::Done => notices.ack(&delivery.receipt).await,
                            NotifyOutcome::Retry { after } => notices.extend(&delivery.receipt, after).await,
                            NotifyOutcome::Exhausted => Ok(()),
                        };
                        if let Err(err) = result {
                            tracing::warn!(%task_id, error = %err, "updating a notice failed; it comes back after its visibility timeout");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_makes_eight_attempts_over_hours_with_jitter_and_honours_retry_after() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.delay_after(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(s.delay_after(1, None, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(s.delay_after(1, None, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(s.delay_after(7, None, 0.5), Some(Duration::from_secs(10800)));
        assert_eq!(s.delay_after(8, None, 0.5), None, "the eighth attempt is the last");
        assert_eq!(s.delay_after(1, Some(120), 0.5), Some(Duration::from_secs(120)), "Retry-After when longer");
        assert_eq!(s.delay_after(3, Some(1), 0.5), Some(Duration::from_secs(120)), "the schedule when longer");
        assert_eq!(s.delay_after(1, Some(u64::MAX / 2), 0.5), Some(MAX_RETRY_DELAY));
        let total: Duration = (1..8).filter_map(|k| s.delay_after(k, None, 0.5)).sum();
        assert_eq!(total.as_secs(), 16955, "about 4.7 hours from the first attempt to the last");
    }
}
