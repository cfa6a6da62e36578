//! The notifier function: for each notice, load the task, mint fresh presigned URLs, and POST the
//! task in its dialect's shape to its callback URL. A failed delivery is a batch item failure:
//! SQS redelivers that notice after its visibility timeout, and dead-letters it after the
//! queue's maximum receives.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use easel_aws::{AwsBackend, AwsSettings, ConfigError, EnvReader, Needs, SdkConfig, decode_body};
use easel_callbacks::HttpCallbackSender;
use easel_core::notify::{Notifier, NotifyOutcome};
use easel_core::ports::Notice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub aws: AwsSettings,
    /// Lifetime of the presigned URLs in callbacks (`EASEL_URL_TTL_SECONDS`, default 3600).
    pub url_ttl: Duration,
    /// Bound on one POST (`EASEL_CALLBACK_TIMEOUT_SECONDS`, default 10).
    pub callback_timeout: Duration,
}

impl Config {
    /// Reads the configuration from the process environment, once, at cold start.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = EnvReader::new();
        let aws = AwsSettings::read(&mut env, lookup, Needs { jobs: false, notices: false });
        let ttl: u64 = env.parsed(lookup, "EASEL_URL_TTL_SECONDS", 3600, "a number of seconds");
        let timeout: u64 = env.parsed(lookup, "EASEL_CALLBACK_TIMEOUT_SECONDS", 10, "a number of seconds");
        env.finish(Config {
            aws,
            url_ttl: Duration::from_secs(ttl),
            callback_timeout: Duration::from_secs(timeout.max(1)),
        })
    }
}

#[derive(Debug)]
pub struct NoticeHandler {
    notifier: Notifier,
}

impl NoticeHandler {
    pub fn new(config: &Config, sdk: &SdkConfig) -> Result<NoticeHandler, Box<dyn std::error::Error + Send + Sync>> {
        let backend = AwsBackend::new(sdk, &config.aws);
        let sender = HttpCallbackSender::new(config.callback_timeout)?;
        let notifier =
            Notifier::new(backend.tasks, backend.images, Arc::new(sender), easel_api::callback_body, config.url_ttl);
        Ok(NoticeHandler { notifier })
    }

    /// Delivers each notice of the batch; lists the ones to retry.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let outcome = match decode_body::<Notice>(record.body.as_deref().unwrap_or_default()) {
                Ok(notice) => self.notifier.notify(&notice).await,
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "dropping an unreadable notice");
                    NotifyOutcome::Done
                }
            };
            if outcome == NotifyOutcome::Retry {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}
