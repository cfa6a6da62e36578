//! easel-aws: the ports of `easel-core` on AWS. The only crate that links the AWS SDK.
//!
//! - [`DynamoTaskStore`] and [`DynamoKeyStore`]: one DynamoDB table (single-table design, see
//!   [`dynamo`]), conditional writes for every state transition, TTL on tasks.
//! - [`SqsQueue`]: the jobs and notices queues (their dead-letter queues are SQS redrive policies).
//! - [`S3ImageStore`]: PNGs in a private bucket, read through presigned GET URLs.
//!
//! Clients are built once from the standard AWS configuration chain (`aws-config`), so the usual
//! variables apply: `AWS_REGION`, credentials, and `AWS_ENDPOINT_URL` to point at an emulator.

pub mod dynamo;
pub mod provision;
mod s3;
pub mod sqs;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use easel_core::ports::{Job, Notice};

pub use aws_config::SdkConfig;
pub use dynamo::{DynamoKeyStore, DynamoTaskStore};
pub use s3::S3ImageStore;
pub use sqs::{SqsQueue, decode_body, delivery_of};

/// Where easel's resources are. Each binary reads these from its environment once
/// ([`AwsSettings::from_lookup`]); adapters never read the environment themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub jobs_queue_url: String,
    pub notices_queue_url: String,
    pub bucket: String,
    /// How long tasks are kept before DynamoDB's TTL deletes them.
    pub retention: Duration,
    /// Path-style S3 URLs (`endpoint/bucket/key`): needed by most S3 emulators.
    pub s3_force_path_style: bool,
}

/// The environment variables [`AwsSettings::from_lookup`] reads.
pub mod env {
    pub const TABLE: &str = "EASEL_TABLE";
    pub const JOBS_QUEUE_URL: &str = "EASEL_JOBS_QUEUE_URL";
    pub const NOTICES_QUEUE_URL: &str = "EASEL_NOTICES_QUEUE_URL";
    pub const BUCKET: &str = "EASEL_BUCKET";
    pub const RETENTION_DAYS: &str = "EASEL_RETENTION_DAYS";
    pub const S3_FORCE_PATH_STYLE: &str = "EASEL_S3_FORCE_PATH_STYLE";
}

/// Configuration that cannot start a function. Lists every problem at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Collects required and optional settings from a variable lookup, remembering every problem, so
/// a misconfigured function names all its missing variables in one log line.
#[derive(Debug, Default)]
pub struct EnvReader {
    problems: Vec<String>,
}

impl EnvReader {
    pub fn new() -> Self {
        EnvReader::default()
    }

    /// A variable that must be set and non-empty.
    pub fn required(&mut self, lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> String {
        match lookup(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.trim().to_owned(),
            None => {
                self.problems.push(format!("{name} is not set"));
                String::new()
            }
        }
    }

    /// An optional variable parsed as `T`, or `default` when unset.
    pub fn parsed<T: std::str::FromStr>(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
        name: &str,
        default: T,
        expected: &str,
    ) -> T {
        match lookup(name).filter(|v| !v.trim().is_empty()) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                self.problems.push(format!("{name}={v:?} is not {expected}"));
                default
            }),
        }
    }

    /// An optional boolean (`true`/`false`/`1`/`0`).
    pub fn flag(&mut self, lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> bool {
        match lookup(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v.is_empty() || v == "0" || v == "false" => false,
            Some(v) if v == "1" || v == "true" => true,
            Some(v) => {
                self.problems.push(format!("{name}={v:?} is not true or false"));
                false
            }
        }
    }

    pub fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    /// `Ok(value)` when no problem was found.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() { Ok(value) } else { Err(ConfigError { problems: self.problems }) }
    }
}

/// Which resources a binary uses: the api needs no notices queue, the notifier no jobs queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub jobs: bool,
    pub notices: bool,
}

impl AwsSettings {
    /// Reads the settings through `lookup` (normally `std::env::var`), recording problems in `env`.
    pub fn read(env: &mut EnvReader, lookup: &dyn Fn(&str) -> Option<String>, needs: Needs) -> AwsSettings {
        let days: u32 = env.parsed(lookup, env::RETENTION_DAYS, 7, "a whole number of days");
        if days == 0 {
            env.problem(format!("{} must be at least 1", env::RETENTION_DAYS));
        }
        AwsSettings {
            table: env.required(lookup, env::TABLE),
            jobs_queue_url: if needs.jobs { env.required(lookup, env::JOBS_QUEUE_URL) } else { String::new() },
            notices_queue_url: if needs.notices { env.required(lookup, env::NOTICES_QUEUE_URL) } else { String::new() },
            bucket: env.required(lookup, env::BUCKET),
            retention: Duration::from_secs(u64::from(days) * 86_400),
            s3_force_path_style: env.flag(lookup, env::S3_FORCE_PATH_STYLE),
        }
    }
}

/// JSON logs on stderr for CloudWatch, filtered by `EASEL_LOG` (default `info`). Lambda adds its
/// own timestamps and request ids, so lines carry neither.
pub fn init_lambda_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EASEL_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .init();
}

/// Every AWS adapter, over clients built once.
#[derive(Debug, Clone)]
pub struct AwsBackend {
    pub tasks: Arc<DynamoTaskStore>,
    pub keys: Arc<DynamoKeyStore>,
    pub jobs: Arc<SqsQueue<Job>>,
    pub notices: Arc<SqsQueue<Notice>>,
    pub images: Arc<S3ImageStore>,
}

impl AwsBackend {
    /// Loads the shared AWS configuration (region, credentials, endpoint) from the standard chain.
    pub async fn load_sdk_config() -> aws_config::SdkConfig {
        aws_config::load_defaults(BehaviorVersion::latest()).await
    }

    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> AwsBackend {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk).force_path_style(settings.s3_force_path_style).build(),
        );
        AwsBackend {
            tasks: Arc::new(DynamoTaskStore::new(dynamo.clone(), &settings.table, settings.retention)),
            keys: Arc::new(DynamoKeyStore::new(dynamo, &settings.table)),
            jobs: Arc::new(SqsQueue::new(sqs.clone(), &settings.jobs_queue_url)),
            notices: Arc::new(SqsQueue::new(sqs, &settings.notices_queue_url)),
            images: Arc::new(S3ImageStore::new(s3, &settings.bucket)),
        }
    }
}
