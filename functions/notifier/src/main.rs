//! `easel-notifier`: the notifier Lambda function (SQS event source).

use std::error::Error;

use easel_aws::{AwsBackend, init_lambda_logging};
use easel_fn_notifier::{Config, NoticeHandler};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    init_lambda_logging();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let sdk = AwsBackend::load_sdk_config().await;
    let handler = &NoticeHandler::new(&config, &sdk)?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, std::convert::Infallible>(handler.handle(event.payload).await)
    }))
    .await
}
