//! `easel-api`: the api Lambda function (API Gateway HTTP API, payload v2).

use easel_aws::{AwsBackend, init_lambda_logging};
use easel_fn_api::{Config, app};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    init_lambda_logging();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
    let sdk = AwsBackend::load_sdk_config().await;
    lambda_http::run(app(&config, &sdk)).await
}
