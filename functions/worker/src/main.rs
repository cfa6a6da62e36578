//! `easel-worker`: the worker Lambda function (SQS event source), or with `--poll` a long-running
//! SQS consumer for hosts with a GPU. Configuration: see `docs/configuration.md`.

use std::error::Error;

use easel_aws::{AwsBackend, init_lambda_logging};
use easel_fn_worker::{Config, JobHandler, load_engines, poll, worker};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    init_lambda_logging();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    if std::env::args().skip(1).any(|a| a == "--poll") {
        return poll(&config).await.inspect_err(|e| tracing::error!(error = %e, "the worker stopped"));
    }
    let loading = config.clone();
    let engines = tokio::task::spawn_blocking(move || load_engines(&loading))
        .await?
        .inspect_err(|e| tracing::error!(error = %e, "cannot load the models"))?;
    let sdk = AwsBackend::load_sdk_config().await;
    let handler = &JobHandler::new(worker(&config, &sdk, engines));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, std::convert::Infallible>(handler.handle(event.payload).await)
    }))
    .await
}
