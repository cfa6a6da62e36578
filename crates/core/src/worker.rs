//! The generate use case: claim a task, run the diffusion engine, store the images, finish the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::generator::{GenerateError, Generation, GenerationSpec, Generator, ProgressSink};
use crate::moderation::{ImageModeration, ModerationError, ModerationRecord, Moderator};
use crate::png::encode_png;
use crate::ports::{Claim, Delivery, ImageStore, Job, JobQueue, Notice, NoticeQueue, StoreError, TaskStore};
use crate::request::GenerationRequest;
use crate::task::{Completion, ImageRecord, Progress, RunRecord, Task, TaskError, TaskId};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long a claim holds a task (and a received job stays invisible) without a heartbeat.
    pub lease: Duration,
    /// How often the lease and the job's visibility are extended during a generation.
    pub heartbeat: Duration,
    /// Minimum interval between progress writes to the task store.
    pub progress_interval: Duration,
    /// The queue's maximum receives before dead-lettering (SQS `maxReceiveCount`). A job that fails
    /// transiently on its last receive fails its task instead, so no task stays queued forever.
    pub max_receives: u32,
    /// When [`Worker::run`] is asked to stop during a generation, how long the generation may
    /// still take. After that it is abandoned: its job and task go back for another worker.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease: Duration::from_secs(120),
            heartbeat: Duration::from_secs(30),
            progress_interval: Duration::from_millis(500),
            max_receives: 3,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// What to do with the job message after [`Worker::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Delete it: the task reached a terminal state, or there was nothing to do.
    Done,
    /// Leave it: the queue redelivers it after its visibility timeout (and dead-letters it eventually).
    Retry,
}

pub struct Worker {
    tasks: Arc<dyn TaskStore>,
    jobs: Arc<JobQueue>,
    notices: Arc<NoticeQueue>,
    images: Arc<dyn ImageStore>,
    generator: Arc<dyn Generator>,
    moderator: Arc<dyn Moderator>,
    config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("model", &self.generator.descriptor().id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Object key of a task's image.
pub fn image_key(task_id: TaskId, index: u32) -> String {
    format!("images/{task_id}/{index}.png")
}

/// Forwards engine progress to the async side and carries the cancel flag into the engine.
struct ChannelSink {
    progress: watch::Sender<Option<Progress>>,
    cancel: AtomicBool,
}

impl ProgressSink for ChannelSink {
    fn step(&self, done: u32, total: u32) {
        self.progress.send_replace(Some(Progress { step: done, steps: total }));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl Worker {
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        jobs: Arc<JobQueue>,
        notices: Arc<NoticeQueue>,
        images: Arc<dyn ImageStore>,
        generator: Arc<dyn Generator>,
        moderator: Arc<dyn Moderator>,
        config: WorkerConfig,
    ) -> Self {
        if moderator.model_id() == "none" {
            tracing::warn!("image moderation is not configured: generated images are stored without being judged");
        }
        Worker { tasks, jobs, notices, images, generator, moderator, config }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs one received job. Never panics on bad data. Storage failures ask for a redelivery,
    /// except on the job's last receive, where the task is failed instead (best effort).
    ///
    /// `extend_visibility`: keep the message invisible with heartbeats while generating (a
    /// polling worker; on Lambda the event source mapping owns the message's visibility).
    pub async fn process(&self, delivery: &Delivery<Job>, extend_visibility: bool) -> JobOutcome {
        self.process_with(delivery, extend_visibility, None).await
    }

    async fn process_with(
        &self,
        delivery: &Delivery<Job>,
        extend_visibility: bool,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> JobOutcome {
        let receipt = extend_visibility.then_some(delivery.receipt.as_str());
        let task_id = delivery.message.task_id;
        match self.try_process(task_id, receipt, shutdown).await {
            Ok(outcome) => outcome,
            Err(err) if delivery.receive_count >= self.config.max_receives => {
                tracing::error!(%task_id, error = %err, cause = ?std::error::Error::source(&err), receives = delivery.receive_count, "job failed on its last receive; failing the task");
                self.give_up(task_id).await
            }
            Err(err) => {
                tracing::error!(%task_id, error = %err, cause = ?std::error::Error::source(&err), "job failed; leaving it for redelivery");
                JobOutcome::Retry
            }
        }
    }

    /// Fails a task whose job will not be delivered again. If even that fails, the message is left
    /// to the dead-letter queue, where an operator can see it.
    async fn give_up(&self, task_id: TaskId) -> JobOutcome {
        let now = OffsetDateTime::now_utc();
        let failed = Completion::Failed {
            error: TaskError {
                code: "generation_failed".into(),
                message: "the task could not be run after several attempts; the operator's logs have the cause".into(),
            },
            run: None,
            warnings: vec![],
        };
        let outcome = async {
            if let Claim::Claimed(_) = self.tasks.claim(task_id, self.config.lease, now).await? {
                self.finish(task_id, failed, now).await?;
            }
            Ok::<_, StoreError>(())
        };
        match outcome.await {
            Ok(()) => JobOutcome::Done,
            Err(err) => {
                tracing::error!(%task_id, error = %err, "failing the task failed too; the job goes to the dead-letter queue");
                JobOutcome::Retry
            }
        }
    }

    /// Polls the queue and processes jobs one at a time until `shutdown` turns true. A generation
    /// in progress then gets [`WorkerConfig::shutdown_grace`] to finish; after that it is abandoned
    /// and its job made visible again at once, so another worker takes it over.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let wait = Duration::from_secs(1);
        while !*shutdown.borrow() {
            let deliveries = tokio::select! {
                r = self.jobs.receive(1, self.config.lease, wait) => r,
                _ = shutdown.changed() => break,
            };
            match deliveries {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        self.handle_delivery(&delivery, shutdown.clone()).await;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "receiving jobs failed; retrying shortly");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn handle_delivery(&self, delivery: &Delivery<Job>, shutdown: watch::Receiver<bool>) {
        if self.process_with(delivery, true, Some(shutdown)).await == JobOutcome::Done
            && let Err(err) = self.jobs.ack(&delivery.receipt).await
        {
            // The job comes back after its visibility timeout and is then acknowledged without work.
            tracing::warn!(task_id = %delivery.message.task_id, error = %err, "acknowledging a job failed");
        }
    }

    async fn try_process(
        &self,
        task_id: TaskId,
        receipt: Option<&str>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<JobOutcome, StoreError> {
        let claimed_at = OffsetDateTime::now_utc();
        let task = match self.tasks.claim(task_id, self.config.lease, claimed_at).await? {
            Claim::Claimed(task) => *task,
            Claim::NotClaimable(status) => {
                tracing::info!(%task_id, %status, "task is not claimable; acknowledging the job without work");
                if status.is_terminal() {
                    // The worker that finished it may have died before queueing its notice.
                    self.notice_if_owed(task_id).await?;
                }
                return Ok(JobOutcome::Done);
            }
            Claim::Missing => {
                tracing::warn!(%task_id, "job for an unknown task; dropping it");
                return Ok(JobOutcome::Done);
            }
        };
        let result = self.run_claimed(task, receipt, shutdown).await;
        if result.is_err() {
            // Let the redelivered job claim the task at once instead of after the lease.
            let _ = self.tasks.extend_lease(task_id, Duration::ZERO, OffsetDateTime::now_utc()).await;
        }
        result
    }

    async fn run_claimed(
        &self,
        task: Task,
        receipt: Option<&str>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<JobOutcome, StoreError> {
        tracing::info!(task_id = %task.id, attempt = task.attempts, images = task.request.num_images(), "generating");

        let descriptor = self.generator.descriptor().clone();
        let (prompt, negative_prompt) = match styled_prompts(&task.request) {
            Ok(prompts) => prompts,
            Err(message) => return self.fail_invalid(task.id, message).await,
        };
        let (init_image, strength) = match &task.request.init_image {
            None => (None, 1.0),
            Some(input) => match self.images.get(&input.key).await?.map(|png| crate::png::decode_image(&png)) {
                Some(Ok(image)) => (Some(image), input.strength),
                Some(Err(e)) => return self.fail_invalid(task.id, format!("the input image is unreadable: {e}")).await,
                None => return self.fail_invalid(task.id, "the input image is no longer stored".into()).await,
            },
        };
        let spec = GenerationSpec {
            prompt,
            negative_prompt,
            width: task.request.width,
            height: task.request.height,
            steps: task
                .request
                .steps
                .unwrap_or_else(|| task.request.quality.steps(descriptor.default_steps, descriptor.max_steps)),
            guidance: task.request.guidance.unwrap_or(descriptor.default_guidance),
            seeds: task.request.seeds.clone(),
            sampler: task.request.sampler,
            karras: None,
            init_image,
            strength,
        };
        let run = RunRecord {
            model_id: descriptor.id.clone(),
            model_hash: descriptor.hash.clone(),
            sampler: spec.sampler.map_or_else(|| descriptor.default_sampler.clone(), |s| s.api_name().to_owned()),
            steps: spec.steps,
            guidance: spec.guidance,
            unet_calls: 0,
        };

        let started = Instant::now();
        let Some(result) = self.generate_with_heartbeat(&task, spec, receipt, shutdown).await? else {
            // Abandoned at shutdown: hand the task and its job back for another worker, now.
            tracing::warn!(task_id = %task.id, "shutting down mid-generation; handing the task back");
            self.tasks.extend_lease(task.id, Duration::ZERO, OffsetDateTime::now_utc()).await?;
            if let Some(receipt) = receipt {
                self.jobs.extend(receipt, Duration::ZERO).await?;
            }
            return Ok(JobOutcome::Retry);
        };
        let generate_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

        let completion = match result {
            Ok(mut generation) => match self.moderate(&mut generation).await {
                Ok(moderation) if moderation.flagged() => {
                    tracing::info!(task_id = %task.id, model = %moderation.model, "moderation rejected the images; none is stored");
                    Completion::Rejected { moderation, run, generate_ms }
                }
                Ok(moderation) => self.store_images(&task, generation, run, generate_ms, moderation).await?,
                Err(err) => {
                    tracing::error!(task_id = %task.id, error = %err, "image moderation failed; the images are dropped");
                    Completion::Failed {
                        error: TaskError {
                            code: "moderation_failed".into(),
                            message: "the images could not be moderated, so none is returned; nothing was charged"
                                .into(),
                        },
                        run: Some(run),
                        warnings: vec![],
                    }
                }
            },
            Err(GenerateError::InvalidRequest(message)) => Completion::Failed {
                error: TaskError { code: "invalid_request".into(), message },
                run: Some(run),
                warnings: vec![],
            },
            Err(GenerateError::Cancelled) => Completion::Canceled,
            Err(err @ GenerateError::Engine { .. }) => {
                tracing::error!(task_id = %task.id, error = %err, cause = ?std::error::Error::source(&err), "generation failed");
                Completion::Failed {
                    error: TaskError {
                        code: "generation_failed".into(),
                        message: "the image generator failed; the operator's logs have the cause".into(),
                    },
                    run: Some(run),
                    warnings: vec![],
                }
            }
        };
        self.finish(task.id, completion, OffsetDateTime::now_utc()).await?;
        Ok(JobOutcome::Done)
    }

    /// Fails a claimed task that cannot run as asked, with a message for the caller.
    async fn fail_invalid(&self, task_id: TaskId, message: String) -> Result<JobOutcome, StoreError> {
        let error = TaskError { code: "invalid_request".into(), message };
        let completion = Completion::Failed { error, run: None, warnings: vec![] };
        self.finish(task_id, completion, OffsetDateTime::now_utc()).await?;
        Ok(JobOutcome::Done)
    }

    /// The terminal write, then the notice for the callback (if the task has one).
    async fn finish(&self, task_id: TaskId, completion: Completion, now: OffsetDateTime) -> Result<(), StoreError> {
        let status = completion.status();
        match self.tasks.complete(task_id, completion, now).await? {
            Some(task) => {
                tracing::info!(%task_id, %status, generate_ms = ?task.timings.generate_ms, "task finished");
                if task.callback_pending() {
                    self.notices.send(&Notice { task_id, redelivery: false }).await?;
                }
            }
            None => tracing::warn!(%task_id, "task was finished elsewhere meanwhile; result discarded"),
        }
        Ok(())
    }

    async fn notice_if_owed(&self, task_id: TaskId) -> Result<(), StoreError> {
        if let Some(task) = self.tasks.get(task_id).await?
            && task.status.is_terminal()
            && task.callback_pending()
        {
            self.notices.send(&Notice { task_id, redelivery: false }).await?;
        }
        Ok(())
    }

    /// Runs the engine on a blocking thread while this task keeps the lease and the job's
    /// visibility alive and writes progress. If the task stops being `running` (canceled, or
    /// taken over after a lost lease), the engine is asked to stop, at the next progress write or
    /// heartbeat, whichever comes first. `None`: abandoned because
    /// `shutdown` turned true and the grace period ran out.
    async fn generate_with_heartbeat(
        &self,
        task: &Task,
        spec: GenerationSpec,
        receipt: Option<&str>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<Option<Result<Generation, GenerateError>>, StoreError> {
        let (tx, mut rx) = watch::channel(None);
        let sink = Arc::new(ChannelSink { progress: tx, cancel: AtomicBool::new(false) });
        let generator = Arc::clone(&self.generator);
        let engine_sink = Arc::clone(&sink);
        let mut handle = tokio::task::spawn_blocking(move || generator.generate(&spec, &*engine_sink));

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate
        let mut progress_tick = tokio::time::interval(self.config.progress_interval);
        progress_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_asked = async move {
            match shutdown {
                Some(mut rx) => {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop_asked);
        let grace_over = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace_over);
        let (mut stopping, mut abandoned) = (false, false);
        loop {
            tokio::select! {
                joined = &mut handle => {
                    let result = joined.unwrap_or_else(|join_err| Err(GenerateError::Engine {
                        message: "the generator panicked".into(),
                        source: Some(Box::new(join_err)),
                    }));
                    // A generation that finished despite the stop request is kept.
                    let cut_short = abandoned && matches!(result, Err(GenerateError::Cancelled));
                    return Ok((!cut_short).then_some(result));
                }
                () = &mut stop_asked, if !stopping => {
                    stopping = true;
                    grace_over.as_mut().reset(tokio::time::Instant::now() + self.config.shutdown_grace);
                }
                () = &mut grace_over, if stopping && !abandoned => {
                    abandoned = true;
                    sink.cancel.store(true, Ordering::Relaxed);
                }
                _ = heartbeat.tick() => {
                    let still_running = self.tasks.extend_lease(task.id, self.config.lease, OffsetDateTime::now_utc()).await?;
                    if !still_running {
                        sink.cancel.store(true, Ordering::Relaxed);
                    }
                    if let Some(receipt) = receipt
                        && let Err(err) = self.jobs.extend(receipt, self.config.lease).await
                    {
                        tracing::warn!(task_id = %task.id, error = %err, "extending the job's visibility failed");
                    }
                }
                _ = progress_tick.tick() => {
                    if rx.has_changed().unwrap_or(false) {
                        let progress = *rx.borrow_and_update();
                        if let Some(progress) = progress
                            && !self.tasks.set_progress(task.id, progress).await?
                        {
                            // Canceled (or taken over) since the last heartbeat: stop between steps.
                            sink.cancel.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// Judges every image of `generation`, off the async threads, before anything is stored.
    async fn moderate(&self, generation: &mut Generation) -> Result<ModerationRecord, ModerationError> {
        let moderator = Arc::clone(&self.moderator);
        let images = std::mem::take(&mut generation.images);
        let (images, verdicts) = tokio::task::spawn_blocking(move || {
            let verdicts = images
                .iter()
                .enumerate()
                .map(|(i, image)| {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    moderator.moderate(image).map(|verdict| ImageModeration { index, verdict })
                })
                .collect::<Result<Vec<_>, _>>();
            (images, verdicts)
        })
        .await
        .map_err(|e| ModerationError(format!("the moderation thread stopped: {e}")))?;
        generation.images = images;
        Ok(ModerationRecord { model: self.moderator.model_id().to_owned(), images: verdicts? })
    }

    async fn store_images(
        &self,
        task: &Task,
        generation: Generation,
        mut run: RunRecord,
        generate_ms: u64,
        moderation: ModerationRecord,
    ) -> Result<Completion, StoreError> {
        run.unet_calls = generation.unet_calls;
        let mut records = Vec::with_capacity(generation.images.len());
        for (index, image) in generation.images.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let (width, height, seed) = (image.width, image.height, image.seed);
            let png = tokio::task::spawn_blocking(move || encode_png(&image))
                .await
                .map_err(|e| StoreError::backend("PNG encoding", e))?
                .map_err(|e| StoreError::backend("PNG encoding", e))?;
            let key = image_key(task.id, index);
            let bytes = png.len() as u64;
            self.images.put_png(&key, png).await?;
            records.push(ImageRecord { index, key, width, height, seed, bytes });
        }
        Ok(Completion::Succeeded { images: records, run, warnings: generation.warnings, generate_ms, moderation })
    }
}

/// The prompt and negative prompt the engine gets: the caller's, put into the style preset's
/// template when the request names one. Fails (with a message for the caller) for a preset this
/// build does not know (the API checks names, so only a request from a newer build can).
fn styled_prompts(request: &GenerationRequest) -> Result<(String, String), String> {
    let negative = request.negative_prompt.clone().unwrap_or_default();
    match &request.style_preset {
        None => Ok((request.prompt.clone(), negative)),
        Some(name) => crate::presets::apply(name, &request.prompt, &negative).map_err(|e| e.to_string()),
    }
}
