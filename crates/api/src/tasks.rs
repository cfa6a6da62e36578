//! `GET /v1/tasks/{id}`: any task, whatever dialect created it, in one neutral shape.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use easel_core::task::TaskStatus;
use serde_json::{Value, json};

use crate::auth::{AuthFailure, Scheme, require_key};
use crate::{AppState, ServiceError, TaskView, load_task_view};

/// Neutral error body: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct NeutralError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl NeutralError {
    /// A 400 `invalid_request` whose message names the parameter at fault.
    pub fn invalid(message: String) -> Self {
        NeutralError { status: StatusCode::BAD_REQUEST, code: "invalid_request", message }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for NeutralError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<AuthFailure> for NeutralError {
    fn from(e: AuthFailure) -> Self {
        match e {
            AuthFailure::Unavailable(_) => ServiceError::from(e).into(),
            other => {
                NeutralError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: other.to_string() }
            }
        }
    }
}

impl From<ServiceError> for NeutralError {
    fn from(e: ServiceError) -> Self {
        let code = match e {
            ServiceError::TaskNotFound(_) => "not_found",
            ServiceError::IdempotencyKeyReused => "idempotency_key_reused",
            ServiceError::Store(_) | ServiceError::Auth(_) => "unavailable",
            ServiceError::RateLimited { .. } => "rate_limited",
            ServiceError::PromptRefused(_) => "prompt_refused",
        };
        NeutralError { status: e.status(), code, message: e.public_message() }
    }
}

/// Any task of the calling key, whatever dialect created it, with fresh image URLs.
#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "tasks", operation_id = "get_task",
    security(("bearer" = []), ("hive_token" = []), ("basic_key" = [])),
    params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task document.", body = crate::openapi::TaskDocument),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::NeutralErrorBody),
        (status = 404, description = "No such task for this key.", body = crate::openapi::NeutralErrorBody),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::NeutralErrorBody),
    )
)]
pub async fn get_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NeutralError> {
    let key = require_key(&state, &headers, Scheme::Any).await?;
    let view = load_task_view(&state, &key, &id).await?;
    Ok(Json(task_json(&view)).into_response())
}

/// `DELETE /v1/tasks/{id}`: cancels a queued or running task (a running one stops between
/// denoising steps, at its worker's next heartbeat). Answers the task document: `200` when it is
/// canceled (now or before), `409` with the document when it had already finished otherwise.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", tag = "tasks", operation_id = "cancel_task",
    security(("bearer" = []), ("hive_token" = []), ("basic_key" = [])),
    params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task, canceled (now or before). Nothing is charged.", body = crate::openapi::TaskDocument),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::NeutralErrorBody),
        (status = 404, description = "No such task for this key.", body = crate::openapi::NeutralErrorBody),
        (status = 409, description = "The task had already finished; its document is included.", body = crate::openapi::CancelConflict),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::NeutralErrorBody),
    )
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NeutralError> {
    let key = require_key(&state, &headers, Scheme::Any).await?;
    let view = load_task_view(&state, &key, &id).await?;
    let task_id = view.task.id;
    let task = state
        .tasks
        .cancel(task_id, time::OffsetDateTime::now_utc())
        .await
        .map_err(ServiceError::Store)?
        .ok_or_else(|| ServiceError::TaskNotFound(id.clone()))?;
    let status = task.status;
    let view = TaskView::mint(task, state.images.as_ref(), state.url_ttl).await.map_err(ServiceError::Store)?;
    if status == TaskStatus::Canceled {
        tracing::info!(%task_id, "task canceled");
        return Ok(Json(task_json(&view)).into_response());
    }
    let message = format!("task {task_id} already finished ({status}); it cannot be canceled");
    let body = json!({"error": {"code": "already_finished", "message": message}, "task": task_json(&view)});
    Ok((StatusCode::CONFLICT, Json(body)).into_response())
}

/// Queues the task's callback again (the same `webhook-id`, fresh image URLs, a new schedule of
/// attempts), whether or not an earlier attempt was delivered.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/callbacks/redeliver", tag = "tasks", operation_id = "redeliver_callback",
    security(("bearer" = []), ("hive_token" = []), ("basic_key" = [])),
    params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 202, description = "Queued for delivery.", body = crate::openapi::RedeliveryQueued),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::NeutralErrorBody),
        (status = 404, description = "No such task for this key.", body = crate::openapi::NeutralErrorBody),
        (status = 409, description = "The task has no callback URL, or has not finished.", body = crate::openapi::NeutralErrorBody),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::NeutralErrorBody),
    )
)]
pub async fn redeliver_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, NeutralError> {
    let key = require_key(&state, &headers, Scheme::Any).await?;
    let task = load_task_view(&state, &key, &id).await?.task;
    let conflict = |message: String| NeutralError { status: StatusCode::CONFLICT, code: "not_redeliverable", message };
    if task.callback_url.is_none() {
        return Err(conflict(format!("task {} has no callback_url", task.id)));
    }
    if !task.status.is_terminal() {
        return Err(conflict(format!(
            "task {} has not finished ({}); its callback is sent when it does",
            task.id, task.status
        )));
    }
    let notice = easel_core::ports::Notice { task_id: task.id, redelivery: true };
    state.notices.send(&notice).await.map_err(ServiceError::Store)?;
    tracing::info!(task_id = %task.id, "callback redelivery queued");
    let body = json!({"task_id": task.id.to_string(), "webhook_id": easel_core::webhook::message_id(task.id), "status": "queued"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The neutral task document.
pub fn task_json(view: &TaskView) -> Value {
    let t = &view.task;
    let images: Vec<Value> = t
        .images
        .iter()
        .zip(&view.image_urls)
        .map(|(i, url)| json!({"index": i.index, "width": i.width, "height": i.height, "seed": i.seed, "bytes": i.bytes, "url": url}))
        .collect();
    json!({
        "id": t.id.to_string(),
        "dialect": t.dialect,
        "status": t.status,
        "progress": t.progress,
        "request": {
            "prompt": t.request.prompt,
            "negative_prompt": t.request.negative_prompt,
            "width": t.request.width,
            "height": t.request.height,
            "steps": t.request.steps,
            "guidance": t.request.guidance,
            "num_images": t.request.num_images(),
            "seeds": t.request.seeds,
            "sampler": t.request.sampler,
            "style_preset": t.request.style_preset,
            "quality": t.request.quality,
            "model": t.request.model,
            "init_image": t.request.init_image.as_ref().map(|i| json!({"strength": i.strength})),
        },
        "end_user": t.end_user,
        "run": t.run,
        "images": images,
        "warnings": t.warnings,
        "error": t.error,
        "attempts": t.attempts,
        "callback_url": t.callback_url,
        "created_at": rfc3339(Some(t.created_at)),
        "started_at": rfc3339(t.started_at),
        "finished_at": rfc3339(t.finished_at),
        "timings": t.timings,
        "deliveries": t.deliveries,
        "callback_status": callback_status(t),
        "moderation": t.moderation,
        "usage": t.usage.map(|u| json!({"images": u.images, "credits": u.credits()})),
    })
}

/// `delivered`, `failed` (no attempt follows), `pending` (owed, or being retried), or `null`
/// without a callback URL.
fn callback_status(t: &easel_core::task::Task) -> Value {
    if t.callback_url.is_none() {
        return Value::Null;
    }
    let status = if t.deliveries.iter().any(|d| d.delivered()) {
        "delivered"
    } else if t.deliveries.last().is_some_and(|d| d.gave_up) {
        "failed"
    } else {
        "pending"
    };
    json!(status)
}

/// A timestamp as RFC 3339 text (`null` when absent); `time`'s own serde form is a tuple.
fn rfc3339(at: Option<time::OffsetDateTime>) -> Value {
    at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()).map_or(Value::Null, Value::String)
}
