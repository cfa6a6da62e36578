//! `easel-api`: the api Lambda function (API Gateway HTTP API, payload v2).

use std::time::Instant;

use easel_aws::{AwsBackend, init_lambda_logging};
use easel_fn_api::{Config, app};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let started = Instant::now();
    init_lambda_logging();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let sdk = AwsBackend::load_sdk_config().await;
    let router = app(&config, &sdk);
    let init_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(init_ms, "initialised; waiting for requests");
    lambda_http::run(router).await
}
