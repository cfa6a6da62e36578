//! easel-api: the HTTP API as one axum [`Router`]. Locally it runs under `axum::serve`; on AWS the
//! same router runs under `lambda_http`. Dialect modules parse requests into the dialect-neutral
//! [`GenerationRequest`](easel_core::request::GenerationRequest) and render tasks in their own shapes.

pub mod auth;
pub mod body;
pub mod hive;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod stability;
pub mod sync;
pub mod tasks;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use easel_core::keys::ApiKey;
use easel_core::ports::{ImageStore, JobQueue, KeyStore, NoticeQueue, StoreError, TaskStore};
use easel_core::prompt_policy::{PromptPolicy, PromptRefusal};
use easel_core::request::Dialect;
use easel_core::submit::{SubmitError, Submitted, Submitter};
pub use easel_core::task::TaskView;
use easel_core::task::{Task, TaskId};
use serde_json::json;
use time::OffsetDateTime;
use tower_http::trace::TraceLayer;

use crate::auth::AuthFailure;
use crate::body::{InputError, MAX_BODY_BYTES, MAX_IMAGE_BODY_BYTES};
pub use crate::models::ModelCatalog;

/// How the API behaves, as configured by the binary that runs it.
#[derive(Clone)]
pub struct ApiSettings {
    /// How long image URLs handed out stay valid.
    pub url_ttl: Duration,
    /// How long a synchronous dialect waits for its task before answering `202` (DESIGN.md §3.1).
    pub sync_wait: Duration,
    /// The models callers may name, with their sizes and aliases.
    pub models: ModelCatalog,
    /// Per-key limit on submissions; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Callback and image URLs may be `http://` loopback addresses (local use only).
    pub allow_loopback_urls: bool,
    /// Downloads input images given as URLs; `None` refuses image URLs.
    pub image_fetcher: Option<Arc<dyn easel_core::ports::ImageFetcher>>,
    /// The prompt policy every submission passes before anything is stored or queued.
    pub prompt_policy: Arc<PromptPolicy>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("url_ttl", &self.url_ttl)
            .field("sync_wait", &self.sync_wait)
            .field("models", &self.models)
            .field("rate_limit", &self.rate_limit)
            .field("allow_loopback_urls", &self.allow_loopback_urls)
            .field("image_fetcher", &self.image_fetcher.is_some())
            .field("prompt_policies", &self.prompt_policy.names().collect::<Vec<_>>())
            .finish()
    }
}

/// A token bucket per API key over the submit endpoints: `per_minute` tokens a minute, at most
/// `burst` saved up. Kept in the process's memory (on Lambda: per function instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What every handler needs: the ports and the settings.
#[derive(Clone)]
pub struct AppState {
    pub tasks: Arc<dyn TaskStore>,
    /// Callback redeliveries asked for through the API go here.
    pub notices: Arc<NoticeQueue>,
    pub images: Arc<dyn ImageStore>,
    pub keys: Arc<dyn KeyStore>,
    submitter: Submitter,
    pub url_ttl: Duration,
    pub sync_wait: Duration,
    pub models: Arc<ModelCatalog>,
    limiter: Option<Arc<KeyedLimiter>>,
    pub allow_loopback_urls: bool,
    pub image_fetcher: Option<Arc<dyn easel_core::ports::ImageFetcher>>,
    prompt_policy: Arc<PromptPolicy>,
    /// The OpenAPI document, built once with this server's models.
    openapi: Arc<serde_json::Value>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("url_ttl", &self.url_ttl)
            .field("sync_wait", &self.sync_wait)
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        jobs: Arc<JobQueue>,
        notices: Arc<NoticeQueue>,
        images: Arc<dyn ImageStore>,
        keys: Arc<dyn KeyStore>,
        settings: ApiSettings,
    ) -> Self {
        let submitter = Submitter::new(Arc::clone(&tasks), jobs);
        let openapi = Arc::new(openapi::document(&settings.models));
        AppState {
            notices,
            openapi,
            allow_loopback_urls: settings.allow_loopback_urls,
            image_fetcher: settings.image_fetcher.clone(),
            prompt_policy: Arc::clone(&settings.prompt_policy),
            tasks,
            images,
            keys,
            submitter,
            url_ttl: settings.url_ttl,
            sync_wait: settings.sync_wait,
            models: Arc::new(settings.models),
            limiter: settings.rate_limit.and_then(|limit| {
                let per_minute = std::num::NonZeroU32::new(limit.per_minute)?;
                let burst = std::num::NonZeroU32::new(limit.burst).unwrap_or(per_minute);
                let quota = governor::Quota::per_minute(per_minute).allow_burst(burst);
                Some(Arc::new(governor::RateLimiter::keyed(quota)))
            }),
        }
    }

    /// Takes one token of `key`'s bucket, or says how long until one is there.
    pub fn check_rate(&self, key: &ApiKey) -> Result<(), ServiceError> {
        use governor::clock::Clock as _;
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&key.id).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ServiceError::RateLimited { retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) }
        })
    }

    /// The prompt policy's verdict on a parsed request: call it before storing anything.
    pub fn check_prompt(&self, request: &easel_core::request::GenerationRequest) -> Result<(), ServiceError> {
        self.prompt_policy.check(request).map_err(ServiceError::PromptRefused)
    }

    async fn submit(&self, task: Task) -> Result<Submitted, ServiceError> {
        self.submitter.submit(task).await.map_err(|e| match e {
            SubmitError::IdempotencyKeyReused => ServiceError::IdempotencyKeyReused,
            SubmitError::Store(e) => ServiceError::Store(e),
        })
    }
}

/// Failures that are not about the request's fields. Each dialect renders them in its shape.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no task with id {0}")]
    TaskNotFound(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("storage is unavailable")]
    Store(#[source] StoreError),
    #[error("the key store is unavailable")]
    Auth(#[source] AuthFailure),
    #[error("too many requests for this API key; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    PromptRefused(PromptRefusal),
}

impl From<AuthFailure> for ServiceError {
    fn from(e: AuthFailure) -> Self {
        ServiceError::Auth(e)
    }
}

impl ServiceError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::TaskNotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::IdempotencyKeyReused => StatusCode::CONFLICT,
            ServiceError::Store(_) | ServiceError::Auth(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::PromptRefused(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Seconds for a `Retry-After` header, when the caller should wait.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ServiceError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The message for the caller. Backend causes are logged here, never sent.
    pub fn public_message(&self) -> String {
        if matches!(self, ServiceError::Store(_) | ServiceError::Auth(_)) {
            tracing::error!(error = %self, cause = ?std::error::Error::source(self), "request failed on a backend");
            return "the service is temporarily unavailable; retry later".to_owned();
        }
        self.to_string()
    }
}

/// The `Idempotency-Key` header, if present and well formed.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, InputError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let err = || InputError::field("Idempotency-Key", "Idempotency-Key must be 1 to 255 printable ASCII characters");
    let s = value.to_str().map_err(|_| err())?.trim();
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err());
    }
    Ok(Some(s.to_owned()))
}

/// `response` with a `Retry-After` header of `secs`, when there is one.
pub fn with_retry_after(mut response: axum::response::Response, secs: Option<u64>) -> axum::response::Response {
    if let Some(secs) = secs {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
    }
    response
}

/// A new queued task for `key`, with the request's `Idempotency-Key` and a fingerprint of its body
/// as sent (so that a retry with the same key must send the same body).
pub fn new_task(
    key: &ApiKey,
    dialect: Dialect,
    route: &str,
    body: &serde_json::Map<String, serde_json::Value>,
    headers: &HeaderMap,
    request: easel_core::request::GenerationRequest,
    callback_url: Option<String>,
) -> Result<Task, InputError> {
    let idempotency_key = idempotency_key(headers)?;
    let mut task =
        Task::new(key.id.clone(), dialect, request, callback_url, idempotency_key, OffsetDateTime::now_utc());
    task.fingerprint = Some(easel_core::submit::fingerprint(dialect, route, &serde_json::Value::Object(body.clone())));
    Ok(task)
}

/// `callback_url` after the SSRF rules that need no network (DESIGN.md §7), so that a URL that
/// can never be delivered is refused at once; the notifier checks the resolved addresses.
pub fn checked_callback(state: &AppState, callback_url: Option<String>) -> Result<Option<String>, InputError> {
    if let Some(url) = &callback_url {
        easel_core::egress::check_url(url, state.allow_loopback_urls)
            .map_err(|e| InputError::field("callback_url", format!("callback_url is refused: {e}")))?;
    }
    Ok(callback_url)
}

/// Loads a task the key may see. Another key's task is reported as not found.
pub async fn load_task_view(state: &AppState, key: &ApiKey, id: &str) -> Result<TaskView, ServiceError> {
    let not_found = || ServiceError::TaskNotFound(id.chars().take(64).collect());
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    let task = state.tasks.get(task_id).await.map_err(ServiceError::Store)?.ok_or_else(not_found)?;
    if task.key_id != key.id {
        return Err(not_found());
    }
    TaskView::mint(task, state.images.as_ref(), state.url_ttl).await.map_err(ServiceError::Store)
}

/// The body of a task's callback: the task in the shape of the dialect that created it (Hive's task
/// object; the neutral task document for the others).
pub fn callback_body(view: &TaskView) -> serde_json::Value {
    match view.task.dialect {
        Dialect::Hive => hive::task_object(view),
        Dialect::Openai | Dialect::Stability => tasks::task_json(view),
    }
}

/// Answers while the process serves requests.
#[utoipa::path(
    get, path = "/healthz", tag = "service", operation_id = "healthz",
    responses((status = 200, description = "Serving.", body = openapi::Health))
)]
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// This document (OpenAPI 3.1), with this server's models, sizes, samplers and presets.
#[utoipa::path(
    get, path = "/openapi.json", tag = "service", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object))
)]
async fn openapi_json(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    Json(state.openapi.as_ref().clone())
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "not_found", "message": "no such route"}})))
}

/// The API router: every dialect, the neutral task and usage endpoints, and `/healthz`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .route("/api/v2/task/async", post(hive::submit))
        .route("/api/v2/task/{id}", get(hive::status))
        .route("/api/generate/basic/textToImage", post(stability::text_to_image))
        .route("/v1/images/generations", post(openai::generations).layer(DefaultBodyLimit::max(MAX_IMAGE_BODY_BYTES)))
        .route("/api/images/generations", post(openai::generations).layer(DefaultBodyLimit::max(MAX_IMAGE_BODY_BYTES)))
        .route("/v1/images/edits", post(openai::edits).layer(DefaultBodyLimit::max(MAX_IMAGE_BODY_BYTES)))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route("/v1/tasks/{id}", get(tasks::get_task).delete(tasks::cancel_task))
        .route("/v1/tasks/{id}/callbacks/redeliver", post(tasks::redeliver_callback))
        .route("/v1/usage", get(usage::get_usage))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
