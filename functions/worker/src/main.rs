//! `easel-worker`: the worker Lambda function (SQS event source), or with `--poll` a long-running
//! SQS consumer for hosts with a GPU. Configuration: see `docs/configuration.md`.

use std::error::Error;

use easel_aws::{AwsBackend, init_lambda_logging};
use easel_fn_worker::{Config, JobHandler, load_generator, poll, worker};
use lambda_runtime::{LambdaEvent, service_fn};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    init_lambda_logging();
    let poll_mode = std::env::args().skip(1).any(|a| a == "--poll");
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let model_dir = config.model_dir.clone();
    let generator = tokio::task::spawn_blocking(move || load_generator(&model_dir))
        .await?
        .inspect_err(|e| tracing::error!(error = %e, "cannot load the model"))?;
    let sdk = AwsBackend::load_sdk_config().await;
    let worker = worker(&config, &sdk, generator);
    if poll_mode {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_termination().await;
            tracing::info!("termination requested; finishing or handing back the job in progress");
            let _ = stop.send(true);
        });
        poll(worker, stopped).await;
        return Ok(());
    }
    let handler = &JobHandler::new(worker);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, std::convert::Infallible>(handler.handle(event.payload).await)
    }))
    .await
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
