//! The notifier function: for each notice, load the task, mint fresh presigned URLs, and POST the
//! task in its dialect's shape to its callback URL. A failed delivery is a batch item failure:
//! SQS redelivers that notice after its visibility timeout, and dead-letters it after the
//! queue's maximum receives.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use easel_aws::{AwsBackend, AwsSettings, ConfigError, EnvReader, Needs, SdkConfig, delivery_of};
use easel_callbacks::{Guard, HttpCallbackSender, MAX_CALLBACK_ANSWER_BYTES};
use easel_core::notify::{Notifier, NotifyOutcome, RetrySchedule};
use easel_core::ports::{Notice, NoticeQueue};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub aws: AwsSettings,
    /// Lifetime of the presigned URLs in callbacks (`EASEL_URL_TTL_SECONDS`, default 3600).
    pub url_ttl: Duration,
    /// Bound on one POST (`EASEL_CALLBACK_TIMEOUT_SECONDS`, default 10).
    pub callback_timeout: Duration,
    /// `EASEL_ALLOW_LOOPBACK_CALLBACKS` (default false): plain http to loopback, for tests only.
    pub allow_loopback_callbacks: bool,
    /// `EASEL_CALLBACK_RETRY_DELAYS`: seconds before each retry, comma-separated (default
    /// `5,30,120,600,1800,3600,10800`: 8 attempts). The notices queue's `maxReceiveCount` must be
    /// the number of attempts.
    pub schedule: RetrySchedule,
}

impl Config {
    /// Reads the configuration from the process environment, once, at cold start.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = EnvReader::new();
        let aws = AwsSettings::read(&mut env, lookup, Needs { jobs: false, notices: true });
        let ttl: u64 = env.parsed(lookup, "EASEL_URL_TTL_SECONDS", 3600, "a number of seconds");
        let timeout: u64 = env.parsed(lookup, "EASEL_CALLBACK_TIMEOUT_SECONDS", 10, "a number of seconds");
        let allow_loopback_callbacks = env.parsed(lookup, "EASEL_ALLOW_LOOPBACK_CALLBACKS", false, "true or false");
        let delays = lookup("EASEL_CALLBACK_RETRY_DELAYS").map(|text| {
            text.split(',').map(|d| d.trim().parse::<u64>().map(Duration::from_secs)).collect::<Result<Vec<_>, _>>()
        });
        let schedule = match delays {
            None => RetrySchedule::default(),
            Some(Ok(delays)) => RetrySchedule { delays },
            Some(Err(_)) => {
                env.problem("EASEL_CALLBACK_RETRY_DELAYS must be seconds separated by commas, e.g. 5,30,120".into());
                RetrySchedule::default()
            }
        };
        env.finish(Config {
            aws,
            url_ttl: Duration::from_secs(ttl),
            callback_timeout: Duration::from_secs(timeout.max(1)),
            allow_loopback_callbacks,
            schedule,
        })
    }
}

pub struct NoticeHandler {
    notifier: Notifier,
    notices: Arc<NoticeQueue>,
}

impl std::fmt::Debug for NoticeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeHandler").field("notifier", &self.notifier).finish_non_exhaustive()
    }
}

impl NoticeHandler {
    pub fn new(config: &Config, sdk: &SdkConfig) -> Result<NoticeHandler, Box<dyn std::error::Error + Send + Sync>> {
        let backend = AwsBackend::new(sdk, &config.aws);
        let guard = Guard::new(config.callback_timeout, MAX_CALLBACK_ANSWER_BYTES)
            .allow_loopback(config.allow_loopback_callbacks);
        let sender = HttpCallbackSender::new(guard);
        let notifier = Notifier::new(
            backend.tasks,
            backend.keys,
            backend.images,
            Arc::new(sender),
            easel_api::callback_body,
            config.url_ttl,
            config.schedule.clone(),
        );
        Ok(NoticeHandler { notifier, notices: backend.notices })
    }

    /// Delivers each notice of the batch; lists the ones to retry. A retried notice's visibility
    /// is set to the schedule's delay first (ChangeMessageVisibility), so SQS hands it back then;
    /// after the last attempt it is left as it is, and SQS dead-letters it at its next receive.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let outcome = match delivery_of::<Notice>(&record) {
                Ok(delivery) => {
                    let outcome = self.notifier.notify(&delivery.message, delivery.receive_count).await;
                    if let NotifyOutcome::Retry { after } = outcome
                        && let Err(e) = self.notices.extend(&delivery.receipt, after).await
                    {
                        tracing::warn!(message_id = %id, error = %e, "could not put the notice off; it comes back after the queue's visibility timeout");
                    }
                    outcome
                }
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "dropping an unreadable notice");
                    NotifyOutcome::Done
                }
            };
            if outcome != NotifyOutcome::Done {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}
