//! The api function: the same axum [`Router`](axum::Router) as `easel serve`, over the AWS adapters.

use std::time::Duration;

use easel_api::models::{DEFAULT_ALIASES, ModelCatalog};
use easel_api::{ApiSettings, AppState, RateLimit};
use easel_aws::{AwsBackend, AwsSettings, ConfigError, EnvReader, Needs, SdkConfig};
use easel_callbacks::{Guard, HttpImageFetcher};
use easel_core::prompt_policy::PromptPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub aws: AwsSettings,
    /// Lifetime of the presigned image URLs handed out (`EASEL_URL_TTL_SECONDS`, default 3600).
    pub url_ttl: Duration,
    /// How long the synchronous dialects wait before answering 202 (`EASEL_SYNC_WAIT_SECONDS`,
    /// default 25: API Gateway ends a request after 29 s).
    pub sync_wait: Duration,
    /// The model the workers run, as callers may name it: `EASEL_MODEL_ID` (default
    /// `easel-shapes`, the bundled model), `EASEL_MODEL_SIZES` (default
    /// `256x256,512x512,1024x1024`), `EASEL_MODEL_ALIASES` (default `dall-e-2,dall-e-3,gpt-image-1`).
    pub models: ModelCatalog,
    /// Per-key submissions a minute (`EASEL_RATE_LIMIT_PER_MINUTE`, default 0 = unlimited) and
    /// burst (`EASEL_RATE_LIMIT_BURST`, default the per-minute rate), per function instance.
    pub rate_limit: Option<RateLimit>,
    /// Bound on downloading an input image given as a URL (`EASEL_IMAGE_FETCH_TIMEOUT_SECONDS`,
    /// default 10).
    pub image_fetch_timeout: Duration,
    /// `EASEL_ALLOW_LOOPBACK_CALLBACKS` (default false): callback and image URLs may be plain
    /// http to loopback; for tests only.
    pub allow_loopback_urls: bool,
    /// `EASEL_PROMPT_POLICY`: `default` (the compiled-in list), `off`, a policy file's text, or a
    /// path; `EASEL_PROMPT_POLICY_NEGATIVE` (default false) checks negative prompts too.
    pub prompt_policy: easel_core::prompt_policy::PromptPolicy,
}

impl Config {
    /// Reads the function's configuration from the process environment, once, at cold start.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = EnvReader::new();
        let aws = AwsSettings::read(&mut env, lookup, Needs { jobs: true, notices: true });
        let ttl: u64 = env.parsed(lookup, "EASEL_URL_TTL_SECONDS", 3600, "a number of seconds");
        let sync_wait: u64 = env.parsed(lookup, "EASEL_SYNC_WAIT_SECONDS", 25, "a number of seconds");
        let setting = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_owned());
        let models = ModelCatalog::from_settings(
            &setting("EASEL_MODEL_ID", "easel-shapes"),
            &setting("EASEL_MODEL_SIZES", "256x256,512x512,1024x1024"),
            &setting("EASEL_MODEL_ALIASES", &DEFAULT_ALIASES.join(",")),
        );
        let models = models.unwrap_or_else(|problem| {
            env.problem(format!("EASEL_MODEL_ID / EASEL_MODEL_SIZES / EASEL_MODEL_ALIASES: {problem}"));
            ModelCatalog::unloaded()
        });
        let per_minute: u32 = env.parsed(lookup, "EASEL_RATE_LIMIT_PER_MINUTE", 0, "a whole number");
        let burst: u32 = env.parsed(lookup, "EASEL_RATE_LIMIT_BURST", per_minute, "a whole number");
        let rate_limit = (per_minute > 0).then_some(RateLimit { per_minute, burst });
        let (url_ttl, sync_wait) = (Duration::from_secs(ttl), Duration::from_secs(sync_wait));
        let fetch: u64 = env.parsed(lookup, "EASEL_IMAGE_FETCH_TIMEOUT_SECONDS", 10, "a number of seconds");
        let allow_loopback_urls = env.parsed(lookup, "EASEL_ALLOW_LOOPBACK_CALLBACKS", false, "true or false");
        let image_fetch_timeout = Duration::from_secs(fetch.max(1));
        let prompt_policy = prompt_policy(&mut env, lookup);
        env.finish(Config {
            aws,
            url_ttl,
            sync_wait,
            models,
            rate_limit,
            image_fetch_timeout,
            allow_loopback_urls,
            prompt_policy,
        })
    }
}

/// `EASEL_PROMPT_POLICY` and `EASEL_PROMPT_POLICY_NEGATIVE`.
fn prompt_policy(env: &mut EnvReader, lookup: &dyn Fn(&str) -> Option<String>) -> PromptPolicy {
    let check_negative = env.parsed(lookup, "EASEL_PROMPT_POLICY_NEGATIVE", false, "true or false");
    let policy =
        PromptPolicy::from_setting(&lookup("EASEL_PROMPT_POLICY").unwrap_or_default()).unwrap_or_else(|problem| {
            env.problem(format!("EASEL_PROMPT_POLICY: {problem}"));
            PromptPolicy::default()
        });
    policy.checking_negative(check_negative)
}

/// The API router over clients built from `sdk`.
pub fn app(config: &Config, sdk: &SdkConfig) -> axum::Router {
    let backend = AwsBackend::new(sdk, &config.aws);
    let settings = ApiSettings {
        url_ttl: config.url_ttl,
        sync_wait: config.sync_wait,
        models: config.models.clone(),
        rate_limit: config.rate_limit,
        allow_loopback_urls: config.allow_loopback_urls,
        image_fetcher: Some(std::sync::Arc::new(HttpImageFetcher::new(
            Guard::new(config.image_fetch_timeout, easel_api::body::MAX_IMAGE_BODY_BYTES)
                .allow_loopback(config.allow_loopback_urls),
        ))),
        prompt_policy: std::sync::Arc::new(config.prompt_policy.clone()),
    };
    easel_api::router(AppState::new(
        backend.tasks,
        backend.jobs,
        backend.notices,
        backend.images,
        backend.keys,
        settings,
    ))
}
