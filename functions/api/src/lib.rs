//! The api function: the same axum [`Router`](axum::Router) as `easel serve`, over the AWS adapters.

use std::time::Duration;

use easel_api::AppState;
use easel_aws::{AwsBackend, AwsSettings, ConfigError, EnvReader, Needs, SdkConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub aws: AwsSettings,
    /// Lifetime of the presigned image URLs handed out (`EASEL_URL_TTL_SECONDS`, default 3600).
    pub url_ttl: Duration,
}

impl Config {
    /// Reads the function's configuration from the process environment, once, at cold start.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = EnvReader::new();
        let aws = AwsSettings::read(&mut env, lookup, Needs { jobs: true, notices: false });
        let ttl: u64 = env.parsed(lookup, "EASEL_URL_TTL_SECONDS", 3600, "a number of seconds");
        env.finish(Config { aws, url_ttl: Duration::from_secs(ttl) })
    }
}

/// The API router over clients built from `sdk`.
pub fn app(config: &Config, sdk: &SdkConfig) -> axum::Router {
    let backend = AwsBackend::new(sdk, &config.aws);
    easel_api::router(AppState::new(backend.tasks, backend.jobs, backend.images, backend.keys, config.url_ttl))
}
