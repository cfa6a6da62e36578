//! The worker: claims a task, runs the diffusion engine, stores the images, finishes the task and
//! queues its callback notice. Two ways to be fed the same jobs queue:
//!
//! - as a Lambda function, by the SQS event source mapping ([`JobHandler::handle`]): a transient
//!   failure is reported as a batch item failure (SQS redelivers that message only), a permanent
//!   one fails the task and acknowledges the message;
//! - as a long-running process on a GPU host (`easel-worker --poll`, or `easel worker --poll`):
//!   [`poll`] receives jobs itself, keeps them invisible while generating, and on SIGTERM hands
//!   the job in progress back to the queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use easel_aws::{AwsBackend, AwsSettings, ConfigError, EnvReader, Needs, SdkConfig, delivery_of};
use easel_core::generator::Generator;
use easel_core::moderation::{ClassThresholds, Moderator};
use easel_core::ports::Job;
use easel_core::worker::{JobOutcome, Worker, WorkerConfig};
use easel_diffusion::{Device, NudeNetModerator, OrtRuntime, Pipeline, PipelineOptions};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Config {
    pub aws: AwsSettings,
    /// The ONNX model folder (`EASEL_MODEL_DIR`; in the container image, `/opt/easel/model`).
    pub model_dir: PathBuf,
    /// Where the model runs (`EASEL_DEVICE`: `cpu`, `cuda` or `cuda:N`; default `cpu`).
    pub device: Device,
    /// NudeNet's detector (`EASEL_MODERATION_MODEL`; in the container image,
    /// `/opt/easel/moderation/320n.onnx`). Required: the worker never stores unjudged images.
    pub moderation_model: PathBuf,
    /// Which classes flag an image, from which score (`EASEL_MODERATION_THRESHOLDS`,
    /// `CLASS=SCORE,…`; default NudeNet's sexual `*_EXPOSED` classes).
    pub moderation_thresholds: ClassThresholds,
    pub worker: WorkerConfig,
}

impl Config {
    /// Reads the configuration from the process environment, once, at start.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = EnvReader::new();
        let aws = AwsSettings::read(&mut env, lookup, Needs { jobs: true, notices: true });
        let model_dir = PathBuf::from(env.required(lookup, "EASEL_MODEL_DIR"));
        let device = env.parsed(lookup, "EASEL_DEVICE", Device::Cpu, "a device (cpu, cuda or cuda:N)");
        let moderation_model = PathBuf::from(env.required(lookup, "EASEL_MODERATION_MODEL"));
        let moderation_thresholds = match lookup("EASEL_MODERATION_THRESHOLDS") {
            None => ClassThresholds::nudenet_default(),
            Some(spec) => ClassThresholds::parse(&spec).unwrap_or_else(|problem| {
                env.problem(format!("EASEL_MODERATION_THRESHOLDS: {problem}"));
                ClassThresholds::nudenet_default()
            }),
        };
        let defaults = WorkerConfig::default();
        let lease: u64 = env.parsed(lookup, "EASEL_LEASE_SECONDS", defaults.lease.as_secs(), "a number of seconds");
        let max_receives = env.parsed(lookup, "EASEL_MAX_RECEIVES", defaults.max_receives, "a whole number");
        let grace: u64 = env.parsed(
            lookup,
            "EASEL_SHUTDOWN_GRACE_SECONDS",
            defaults.shutdown_grace.as_secs(),
            "a number of seconds",
        );
        if lease < 10 {
            env.problem("EASEL_LEASE_SECONDS must be at least 10".to_owned());
        }
        let lease = Duration::from_secs(lease.max(10));
        let worker = WorkerConfig {
            lease,
            // Three heartbeats per lease: one lost write does not lose the task.
            heartbeat: lease / 3,
            max_receives: max_receives.max(1),
            shutdown_grace: Duration::from_secs(grace),
            ..defaults
        };
        env.finish(Config { aws, model_dir, device, moderation_model, moderation_thresholds, worker })
    }
}

/// What a worker runs: the diffusion model and the image moderator.
#[derive(Clone)]
pub struct Engines {
    pub generator: Arc<dyn Generator>,
    pub moderator: Arc<dyn Moderator>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("model", &self.generator.descriptor().id)
            .field("moderator", &self.moderator.model_id())
            .finish()
    }
}

/// Initialises ONNX Runtime (`ORT_DYLIB_PATH`, else `.easel/onnxruntime/` above the working or
/// the executable's folder), loads the model and the moderation model. Done once, at cold start;
/// either failing stops the worker.
pub fn load_engines(config: &Config) -> Result<Engines, Box<dyn std::error::Error + Send + Sync>> {
    let mut dirs: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    dirs.extend(std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)));
    let runtime = OrtRuntime::init_discovered(&dirs)?;
    let options = PipelineOptions { device: config.device, ..PipelineOptions::default() };
    let generator = Arc::new(Pipeline::load(runtime, &config.model_dir, &options)?);
    let moderator = NudeNetModerator::load(runtime, &config.moderation_model, config.moderation_thresholds.clone())
        .map_err(|e| format!("cannot load the moderation model: {}", error_chain(&e)))?;
    Ok(Engines { generator, moderator: Arc::new(moderator) })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

pub fn worker(config: &Config, sdk: &SdkConfig, engines: Engines) -> Worker {
    let backend = AwsBackend::new(sdk, &config.aws);
    Worker::new(
        backend.tasks,
        backend.jobs,
        backend.notices,
        backend.images,
        engines.generator,
        engines.moderator,
        config.worker.clone(),
    )
}

/// The Lambda handler: one SQS batch of jobs.
#[derive(Debug)]
pub struct JobHandler {
    worker: Worker,
}

impl JobHandler {
    pub fn new(worker: Worker) -> Self {
        JobHandler { worker }
    }

    /// Processes the batch's messages in turn. Never fails as a whole: only the messages that
    /// should come back are listed as failures.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let outcome = match delivery_of::<Job>(&record) {
                Ok(delivery) => self.worker.process(&delivery, false).await,
                Err(reason) => {
                    // Permanent: the same bytes will never parse. Acknowledge (and log) it.
                    tracing::error!(message_id = %id, %reason, "dropping an unreadable job message");
                    JobOutcome::Done
                }
            };
            if outcome == JobOutcome::Retry {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}

/// The long-running mode: loads the model, then receives and processes jobs until SIGTERM or
/// Ctrl-C. The job in progress then gets `EASEL_SHUTDOWN_GRACE_SECONDS` to finish before it is
/// handed back to the queue for another worker.
pub async fn poll(config: &Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let loading = config.clone();
    let engines = tokio::task::spawn_blocking(move || load_engines(&loading)).await??;
    let sdk = AwsBackend::load_sdk_config().await;
    let worker = worker(config, &sdk, engines);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_termination().await;
        tracing::info!("termination requested; finishing or handing back the job in progress");
        let _ = stop.send(true);
    });
    tracing::info!(queue = %config.aws.jobs_queue_url, "polling the jobs queue");
    worker.run(stopped).await;
    tracing::info!("stopped polling");
    Ok(())
}

async fn wait_for_termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
