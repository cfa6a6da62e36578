//! The task: one generation request and everything that happened to it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::moderation::ModerationRecord;
use crate::request::{Dialect, GenerationRequest};
use crate::usage::Usage;

/// Server-generated task id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// `queued → running → succeeded | rejected | failed`, and `queued | running → canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    /// Moderation refused the output. Not an error of the service; nothing is charged.
    Rejected,
    Failed,
    Canceled,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Rejected | TaskStatus::Failed | TaskStatus::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Rejected => "rejected",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "rejected" => TaskStatus::Rejected,
            "failed" => TaskStatus::Failed,
            "canceled" => TaskStatus::Canceled,
            other => return Err(format!("unknown task status '{other}'")),
        })
    }
}

/// A stored output image. The URL is never stored: it is minted fresh on every read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub index: u32,
    /// Object key in the image store, e.g. `images/{task_id}/0.png`.
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u32,
    pub steps: u32,
}

/// Why a task failed, in words a caller can act on. `code` is stable and documented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

/// What was actually run: defaults resolved by the worker, recorded for reproducibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub model_id: String,
    pub model_hash: String,
    pub sampler: String,
    pub steps: u32,
    pub guidance: f32,
    pub unet_calls: u32,
}

/// One attempt to post a finished task to its callback URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The receiver's HTTP status, when it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// Why the attempt failed, when it did (connection refused, timeout, non-2xx answer).
    #[serde(default)]
    pub error: Option<String>,
    /// A stable word for the failure: `status` (a non-2xx answer), `refused` (the SSRF guard),
    /// `dns`, `connect`, `timeout`, `redirect`, `too_large`, `request`, `signing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The receiver's `Retry-After`, in seconds, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    pub duration_ms: u64,
    /// No attempt follows this failed one: it was the last of the schedule (the notice went to the
    /// dead-letter queue), or the receiver answered 410, or the URL or signing was refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gave_up: bool,
}

impl CallbackAttempt {
    /// The receiver took the callback (any 2xx answer).
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Milliseconds from submission to the worker's claim.
    pub queued_ms: Option<u64>,
    /// Milliseconds the generation itself took.
    pub generate_ms: Option<u64>,
    /// Milliseconds from submission to the terminal state.
    pub total_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    /// The API key that created it; only this key can read it.
    pub key_id: String,
    pub dialect: Dialect,
    pub status: TaskStatus,
    pub request: GenerationRequest,
    pub callback_url: Option<String>,
    pub idempotency_key: Option<String>,
    /// Digest of the request as the caller sent it ([`crate::submit::fingerprint`]): a retry with
    /// the same idempotency key must send the same request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The caller's own end-user id, when its dialect has one (OpenAI's `user`); recorded only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub finished_at: Option<OffsetDateTime>,
    /// How many times a worker claimed it (a redelivery after a crash counts again).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub run: Option<RunRecord>,
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub error: Option<TaskError>,
    #[serde(default)]
    pub timings: Timings,
    /// Callback delivery attempts, oldest first.
    #[serde(default)]
    pub deliveries: Vec<CallbackAttempt>,
    /// What the key was charged: set when the task succeeds, never otherwise.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// What image moderation found, per image (set when the task succeeded or was rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<ModerationRecord>,
}

impl Task {
    /// Whether a callback is owed and not yet delivered.
    pub fn callback_pending(&self) -> bool {
        self.status.is_terminal() && self.callback_url.is_some() && !self.deliveries.iter().any(|d| d.delivered())
    }
}

/// A task with fresh URLs for its images (minted on every read, never stored).
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task: Task,
    pub image_urls: Vec<String>,
}

impl TaskView {
    /// Mints a URL valid for `ttl` for each image of a succeeded task.
    pub async fn mint(
        task: Task,
        images: &dyn crate::ports::ImageStore,
        ttl: std::time::Duration,
    ) -> Result<TaskView, crate::ports::StoreError> {
        let mut image_urls = Vec::new();
        if task.status == TaskStatus::Succeeded {
            for image in &task.images {
                image_urls.push(images.url(&image.key, ttl).await?);
            }
        }
        Ok(TaskView { task, image_urls })
    }
}

impl Task {
    /// A new queued task.
    pub fn new(
        key_id: impl Into<String>,
        dialect: Dialect,
        request: GenerationRequest,
        callback_url: Option<String>,
        idempotency_key: Option<String>,
        now: OffsetDateTime,
    ) -> Self {
        Task {
            id: TaskId::new(),
            key_id: key_id.into(),
            dialect,
            status: TaskStatus::Queued,
            request,
            callback_url,
            idempotency_key,
            fingerprint: None,
            end_user: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            attempts: 0,
            progress: None,
            run: None,
            images: Vec::new(),
            warnings: Vec::new(),
            error: None,
            timings: Timings::default(),
            deliveries: Vec::new(),
            usage: None,
            moderation: None,
        }
    }
}

impl Task {
    /// Applies a successful claim. Adapters call it inside their conditional write.
    pub fn mark_claimed(&mut self, now: OffsetDateTime) {
        self.status = TaskStatus::Running;
        self.attempts += 1;
        self.progress = None;
        if self.started_at.is_none() {
            self.started_at = Some(now);
            self.timings.queued_ms = Some(millis_between(self.created_at, now));
        }
    }
}

/// The terminal write a worker makes. Applied only while the task is `running`.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Succeeded {
        images: Vec<ImageRecord>,
        run: RunRecord,
        warnings: Vec<String>,
        generate_ms: u64,
        moderation: ModerationRecord,
    },
    /// Moderation flagged an image: none was stored, nothing is charged.
    Rejected {
        moderation: ModerationRecord,
        run: RunRecord,
        generate_ms: u64,
    },
    Failed {
        error: TaskError,
        run: Option<RunRecord>,
        warnings: Vec<String>,
    },
    Canceled,
}

impl Completion {
    pub fn status(&self) -> TaskStatus {
        match self {
            Completion::Succeeded { .. } => TaskStatus::Succeeded,
            Completion::Rejected { .. } => TaskStatus::Rejected,
            Completion::Failed { .. } => TaskStatus::Failed,
            Completion::Canceled => TaskStatus::Canceled,
        }
    }

    /// Applies this completion to a task (adapters call it inside their conditional write).
    pub fn apply(self, task: &mut Task, now: OffsetDateTime) {
        task.status = self.status();
        task.finished_at = Some(now);
        task.timings.total_ms = Some(millis_between(task.created_at, now));
        match self {
            Completion::Succeeded { images, run, warnings, generate_ms, moderation } => {
                task.moderation = Some(moderation);
                let count = u32::try_from(images.len()).unwrap_or(u32::MAX);
                task.usage = Some(Usage::for_images(count, task.request.width, task.request.height, run.steps));
                task.images = images;
                task.run = Some(run);
                task.warnings.extend(warnings);
                task.timings.generate_ms = Some(generate_ms);
                task.error = None;
            }
            Completion::Rejected { moderation, run, generate_ms } => {
                let flagged: Vec<String> = moderation
                    .images
                    .iter()
                    .filter(|i| i.verdict.flagged)
                    .map(|i| format!("image {}: {}", i.index, i.verdict.reasons.join(", ")))
                    .collect();
                task.error = Some(TaskError {
                    code: "content_policy_violation".into(),
                    message: format!(
                        "the images did not pass moderation ({}); nothing was charged",
                        flagged.join("; ")
                    ),
                });
                task.moderation = Some(moderation);
                task.run = Some(run);
                task.timings.generate_ms = Some(generate_ms);
            }
            Completion::Failed { error, run, warnings } => {
                task.error = Some(error);
                if run.is_some() {
                    task.run = run;
                }
                task.warnings.extend(warnings);
            }
            Completion::Canceled => {}
        }
    }
}

fn millis_between(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_succeeded_task_is_charged_its_images_at_the_requested_size_and_the_steps_that_ran() {
        let request = GenerationRequest::new("p", 1024, 1024, vec![1, 2]);
        let now = OffsetDateTime::now_utc();
        let mut task = Task::new("key", Dialect::Hive, request, None, None, now);
        let image =
            |index| ImageRecord { index, key: format!("k{index}"), width: 1024, height: 1024, seed: 1, bytes: 1 };
        let run = RunRecord {
            model_id: "m".into(),
            model_hash: "h".into(),
            sampler: "K_EULER".into(),
            steps: 30,
            guidance: 7.0,
            unet_calls: 30,
        };
        let mut failed = task.clone();
        let mut rejected = task.clone();
        let moderation = ModerationRecord { model: "none".into(), images: vec![] };
        Completion::Succeeded {
            images: vec![image(0), image(1)],
            run: run.clone(),
            warnings: vec![],
            generate_ms: 1,
            moderation,
        }
        .apply(&mut task, now);
        let verdict = crate::moderation::ImageVerdict {
            flagged: true,
            scores: Default::default(),
            reasons: vec!["X over 0.5".into()],
            detections: vec![],
        };
        let moderation = ModerationRecord {
            model: "m".into(),
            images: vec![crate::moderation::ImageModeration { index: 1, verdict }],
        };
        Completion::Rejected { moderation, run, generate_ms: 1 }.apply(&mut rejected, now);
        assert_eq!((rejected.status, rejected.usage), (TaskStatus::Rejected, None));
        assert!(
            rejected.error.as_ref().is_some_and(|e| e.message.contains("image 1: X over 0.5")),
            "{:?}",
            rejected.error
        );
        assert_eq!(task.usage, Some(Usage { images: 2, millicredits: 2 * 816 }));
        let error = TaskError { code: "c".into(), message: "m".into() };
        Completion::Failed { error, run: None, warnings: vec![] }.apply(&mut failed, now);
        assert_eq!(failed.usage, None);
    }

    #[test]
    fn task_ids_round_trip_through_their_text_form() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().ok(), Some(id));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }

    #[test]
    fn only_succeeded_rejected_failed_and_canceled_are_terminal() {
        use TaskStatus::*;
        let terminal: Vec<_> =
            [Queued, Running, Succeeded, Rejected, Failed, Canceled].into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![Succeeded, Rejected, Failed, Canceled]);
        for s in [Queued, Running, Succeeded, Rejected, Failed, Canceled] {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
        }
    }
}
