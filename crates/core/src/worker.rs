//! The generate use case: claim a task, run the diffusion engine, store the images, finish the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::generator::{GenerateError, Generation, GenerationSpec, Generator, ProgressSink};
use crate::png::encode_png;
use crate::ports::{Claim, Delivery, ImageStore, Job, JobQueue, StoreError, TaskStore};
use crate::task::{Completion, ImageRecord, Progress, RunRecord, Task, TaskError, TaskId};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long a claim holds a task (and a received job stays invisible) without a heartbeat.
    pub lease: Duration,
    /// How often the lease and the job's visibility are extended during a generation.
    pub heartbeat: Duration,
    /// Minimum interval between progress writes to the task store.
    pub progress_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease: Duration::from_secs(120),
            heartbeat: Duration::from_secs(30),
            progress_interval: Duration::from_millis(500),
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
    jobs: Arc<dyn JobQueue>,
    images: Arc<dyn ImageStore>,
    generator: Arc<dyn Generator>,
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
        jobs: Arc<dyn JobQueue>,
        images: Arc<dyn ImageStore>,
        generator: Arc<dyn Generator>,
        config: WorkerConfig,
    ) -> Self {
        Worker { tasks, jobs, images, generator, config }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs one job. Never panics on bad data; store failures ask for a redelivery.
    pub async fn process(&self, job: &Job, receipt: Option<&str>) -> JobOutcome {
        match self.try_process(job, receipt).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::error!(task_id = %job.task_id, error = %err, cause = ?std::error::Error::source(&err), "job failed; leaving it for redelivery");
                JobOutcome::Retry
            }
        }
    }

    /// Polls the queue and processes jobs one at a time until `shutdown` turns true.
    /// A job in progress when shutdown is asked for is finished first.
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
                        self.handle_delivery(&delivery).await;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "receiving jobs failed; retrying shortly");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn handle_delivery(&self, delivery: &Delivery) {
        if self.process(&delivery.job, Some(&delivery.receipt)).await == JobOutcome::Done
            && let Err(err) = self.jobs.ack(&delivery.receipt).await
        {
            // The job comes back after its visibility timeout and is then acknowledged without work.
            tracing::warn!(task_id = %delivery.job.task_id, error = %err, "acknowledging a job failed");
        }
    }

    async fn try_process(&self, job: &Job, receipt: Option<&str>) -> Result<JobOutcome, StoreError> {
        let claimed_at = OffsetDateTime::now_utc();
        let task = match self.tasks.claim(job.task_id, self.config.lease, claimed_at).await? {
            Claim::Claimed(task) => *task,
            Claim::NotClaimable(status) => {
                tracing::info!(task_id = %job.task_id, %status, "task is not claimable; acknowledging the job without work");
                return Ok(JobOutcome::Done);
            }
            Claim::Missing => {
                tracing::warn!(task_id = %job.task_id, "job for an unknown task; dropping it");
                return Ok(JobOutcome::Done);
            }
        };
        tracing::info!(task_id = %task.id, attempt = task.attempts, images = task.request.num_images(), "generating");

        let descriptor = self.generator.descriptor().clone();
        let spec = GenerationSpec {
            prompt: task.request.prompt.clone(),
            negative_prompt: task.request.negative_prompt.clone().unwrap_or_default(),
            width: task.request.width,
            height: task.request.height,
            steps: task.request.steps.unwrap_or(descriptor.default_steps),
            guidance: task.request.guidance.unwrap_or(descriptor.default_guidance),
            seeds: task.request.seeds.clone(),
            sampler: task.request.sampler,
            karras: None,
            init_image: None,
            strength: 1.0,
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
        let result = self.generate_with_heartbeat(&task, spec, receipt).await?;
        let generate_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

        let completion = match result {
            Ok(generation) => self.store_images(&task, generation, run, generate_ms).await?,
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
        let status = completion.status();
        match self.tasks.complete(task.id, completion, OffsetDateTime::now_utc()).await? {
            Some(_) => tracing::info!(task_id = %task.id, %status, generate_ms, "task finished"),
            None => tracing::warn!(task_id = %task.id, "task was finished elsewhere meanwhile; result discarded"),
        }
        Ok(JobOutcome::Done)
    }

    /// Runs the engine on a blocking thread while this task keeps the lease and the job's
    /// visibility alive and writes progress. If the task stops being `running` (canceled, or
    /// taken over after a lost lease), the engine is asked to stop.
    async fn generate_with_heartbeat(
        &self,
        task: &Task,
        spec: GenerationSpec,
        receipt: Option<&str>,
    ) -> Result<Result<Generation, GenerateError>, StoreError> {
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
        loop {
            tokio::select! {
                joined = &mut handle => {
                    return Ok(joined.unwrap_or_else(|join_err| Err(GenerateError::Engine {
                        message: "the generator panicked".into(),
                        source: Some(Box::new(join_err)),
                    })));
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
                        if let Some(progress) = progress {
                            self.tasks.set_progress(task.id, progress).await?;
                        }
                    }
                }
            }
        }
    }

    async fn store_images(
        &self,
        task: &Task,
        generation: Generation,
        mut run: RunRecord,
        generate_ms: u64,
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
        Ok(Completion::Succeeded { images: records, run, warnings: generation.warnings, generate_ms })
    }
}
