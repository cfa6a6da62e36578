//! The Hive dialect: `POST /api/v2/task/async` and `GET /api/v2/task/{id}`.
//!
//! Requests: `{"text_data", "options": {"neg_text", "num_images", "seed"}, "callback_url"}` with
//! `authorization: Token <key>`. `options.seed` is an easel extension (Hive has none). Unknown
//! fields are ignored, as Hive does. Images are 1024x1024. Responses and errors keep Hive's shapes:
//! the task object, and `{"return_code", "message"}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use easel_core::request::{Dialect, GenerationRequest, resolve_seeds};
use easel_core::task::{Task, TaskStatus};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::auth::{AuthFailure, Scheme, require_key};
use crate::body::{Fields, InputError, json_object};
use crate::{AppState, ServiceError, TaskView, checked_callback, load_task_view, new_task, with_retry_after};

pub const ROUTE: &str = "/api/v2/task/async";
pub const MAX_IMAGES: u64 = 6;
pub const IMAGE_SIDE: u32 = 1024;
/// Prompts are cut at 77 CLIP tokens anyway; this bound only keeps bodies sane.
pub const MAX_PROMPT_CHARS: usize = 4000;

/// Hive's error body: `{"return_code": <HTTP status>, "message": "..."}`.
#[derive(Debug)]
pub struct HiveError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl HiveError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HiveError { status, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for HiveError {
    fn into_response(self) -> Response {
        let body = Json(json!({"return_code": self.status.as_u16(), "message": self.message}));
        with_retry_after((self.status, body).into_response(), self.retry_after)
    }
}

impl From<InputError> for HiveError {
    fn from(e: InputError) -> Self {
        HiveError::new(e.status, e.message)
    }
}

impl From<AuthFailure> for HiveError {
    fn from(e: AuthFailure) -> Self {
        match e {
            AuthFailure::Unavailable(_) => ServiceError::from(e).into(),
            other => HiveError::new(StatusCode::UNAUTHORIZED, other.to_string()),
        }
    }
}

impl From<ServiceError> for HiveError {
    fn from(e: ServiceError) -> Self {
        HiveError { retry_after: e.retry_after(), ..HiveError::new(e.status(), e.public_message()) }
    }
}

/// The parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct HiveSubmit {
    pub request: GenerationRequest,
    pub callback_url: Option<String>,
}

pub fn parse_submit(body: &serde_json::Map<String, Value>) -> Result<HiveSubmit, InputError> {
    let root = Fields::new(body);
    let prompt = root.required_text("text_data", "the prompt, a non-empty string", MAX_PROMPT_CHARS)?;
    let callback_url = root.opt_http_url("callback_url")?;
    let options = root.object("options")?;
    let (negative_prompt, num_images, seed) = match options {
        Some(o) => (
            o.opt_string("neg_text", MAX_PROMPT_CHARS)?.filter(|s| !s.trim().is_empty()),
            o.opt_int("num_images", 1, MAX_IMAGES)?.unwrap_or(1),
            o.opt_int("seed", 0, (1 << 53) - 1)?,
        ),
        None => (None, 1, None),
    };
    let num_images = u32::try_from(num_images).unwrap_or(1);
    Ok(HiveSubmit {
        request: GenerationRequest {
            negative_prompt,
            ..GenerationRequest::new(prompt, IMAGE_SIDE, IMAGE_SIDE, resolve_seeds(seed, num_images))
        },
        callback_url,
    })
}

/// Submits a task; the answer is the task object, `QUEUED`. The result comes by callback and at
/// `GET /api/v2/task/{id}`.
#[utoipa::path(
    post, path = "/api/v2/task/async", tag = "hive", operation_id = "hive_submit",
    security(("hive_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key with the same body returns the same task; with another body, 409.", pattern = "^[!-~]{1,255}$")),
    request_body = crate::openapi::HiveTaskRequest,
    responses(
        (status = 200, description = "The task, queued.", body = crate::openapi::HiveTask),
        (status = 400, description = "A field is wrong; the message names it.", body = crate::openapi::HiveError),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::HiveError),
        (status = 409, description = "The Idempotency-Key was used with another body.", body = crate::openapi::HiveError),
        (status = 413, description = "The body is too large.", body = crate::openapi::HiveError),
        (status = 429, description = "The key's rate limit.", body = crate::openapi::HiveError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::HiveError),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HiveError> {
    let key = require_key(&state, &headers, Scheme::Token).await?;
    state.check_rate(&key)?;
    let body = json_object(body)?;
    let parsed = parse_submit(&body)?;
    state.check_prompt(&parsed.request)?;
    let task = new_task(
        &key,
        Dialect::Hive,
        ROUTE,
        &body,
        &headers,
        parsed.request,
        checked_callback(&state, parsed.callback_url)?,
    )?;
    let submitted = state.submit(task).await?;
    let view = TaskView { task: submitted.task, image_urls: vec![] };
    Ok((StatusCode::OK, Json(task_object(&view))).into_response())
}

/// The task object, with fresh image URLs once it succeeded.
#[utoipa::path(
    get, path = "/api/v2/task/{id}", tag = "hive", operation_id = "hive_status",
    security(("hive_token" = [])),
    params(("id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task.", body = crate::openapi::HiveTask),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::HiveError),
        (status = 404, description = "No such task for this key.", body = crate::openapi::HiveError),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::HiveError),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HiveError> {
    let key = require_key(&state, &headers, Scheme::Token).await?;
    let view = load_task_view(&state, &key, &id).await?;
    Ok(Json(task_object(&view)).into_response())
}

/// `status[0].status` of Hive's task object.
fn status_pair(task: &Task) -> (&'static str, String) {
    match task.status {
        TaskStatus::Queued => ("202", "QUEUED".into()),
        TaskStatus::Running => ("202", "PROCESSING".into()),
        TaskStatus::Succeeded => ("0", "SUCCESS".into()),
        TaskStatus::Rejected => ("451", "Images did not pass moderation filters.".into()),
        TaskStatus::Canceled => ("499", "CANCELED".into()),
        TaskStatus::Failed => {
            let code = match task.error.as_ref().map(|e| e.code.as_str()) {
                Some("invalid_request") => "400",
                _ => "500",
            };
            (code, task.error.as_ref().map_or_else(|| "FAILED".to_owned(), |e| e.message.clone()))
        }
    }
}

/// Hive's task object for an image-generation task.
pub fn task_object(view: &TaskView) -> Value {
    let task = &view.task;
    let (code, message) = status_pair(task);
    let created_on = task.created_at.format(&Rfc3339).unwrap_or_default();
    let charged_images = if task.status == TaskStatus::Succeeded { task.images.len() } else { 0 };
    let images: Vec<Value> = task
        .images
        .iter()
        .zip(&view.image_urls)
        .map(|(img, url)| {
            json!({"index": img.index, "width": img.width, "height": img.height, "path": img.key, "message": "200", "url": url})
        })
        .collect();
    let output = if task.status == TaskStatus::Succeeded { json!([{"images": images}]) } else { json!([]) };
    json!({
        "id": task.id.to_string(),
        "metadata": null,
        "callback": task.callback_url,
        "created_on": created_on,
        "status": [{
            "status": {"code": code, "message": message},
            "response": {
                "input": {
                    "id": task.id.to_string(),
                    "created_on": created_on,
                    "text_data": task.request.prompt,
                    "neg_text": task.request.negative_prompt,
                    "num_images": task.request.num_images(),
                    "seeds": task.request.seeds,
                    "model": task.run.as_ref().map(|r| r.model_id.clone()),
                    "charge": charged_images,
                    "media": {"type": "image", "mimetype": "image/png", "width": task.request.width, "height": task.request.height},
                },
                "output": output,
            },
        }],
        "progress": task.progress,
        "error": task.error.as_ref().map(|e| e.message.clone()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<HiveSubmit, InputError> {
        parse_submit(v.as_object().unwrap())
    }

    #[test]
    fn the_documented_example_parses_into_three_1024_images() {
        let s = parse(json!({
            "options": {"neg_text": "grass, pool", "num_images": 3},
            "text_data": "modern architecture house",
            "callback_url": "https://example.com/hook"
        }))
        .unwrap();
        assert_eq!(s.request.prompt, "modern architecture house");
        assert_eq!(s.request.negative_prompt.as_deref(), Some("grass, pool"));
        assert_eq!(s.request.seeds.len(), 3);
        assert_eq!((s.request.width, s.request.height), (1024, 1024));
        assert_eq!(s.callback_url.as_deref(), Some("https://example.com/hook"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_num_images_defaults_to_one() {
        let s = parse(json!({"text_data": "x", "metadata": {"a": 1}, "options": {"whatever": true}})).unwrap();
        assert_eq!(s.request.seeds.len(), 1);
    }

    #[test]
    fn each_bad_field_is_named_in_the_error() {
        let cases = [
            (json!({}), "text_data"),
            (json!({"text_data": ""}), "text_data"),
            (json!({"text_data": 5}), "text_data"),
            (json!({"text_data": "x", "options": {"num_images": 0}}), "options.num_images"),
            (json!({"text_data": "x", "options": {"num_images": 7}}), "options.num_images"),
            (json!({"text_data": "x", "options": {"num_images": "2"}}), "options.num_images"),
            (json!({"text_data": "x", "options": {"num_images": 1.5}}), "options.num_images"),
            (json!({"text_data": "x", "options": "many"}), "options"),
            (json!({"text_data": "x", "callback_url": "example_url"}), "callback_url"),
            (json!({"text_data": "x", "callback_url": "file:///etc/passwd"}), "callback_url"),
        ];
        for (body, field) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}");
            assert!(e.message.contains(field), "{body}: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_seed_option_fixes_consecutive_seeds() {
        let s = parse(json!({"text_data": "x", "options": {"num_images": 2, "seed": 7}})).unwrap();
        assert_eq!(s.request.seeds, vec![7, 8]);
    }
}
