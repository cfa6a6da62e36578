//! Synchronous dialects over the asynchronous pipeline (DESIGN.md §3.1): submit the task, then
//! wait for it up to `sync_wait`. A task not finished by then is answered with `202 Accepted` and
//! `Location: /v1/tasks/{id}`; it continues, and the caller polls. `Prefer: respond-async` asks
//! for that answer at once.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use easel_core::task::{Task, TaskId};
use serde_json::Value;
use tokio::time::Instant;

use crate::{AppState, ServiceError};

/// How a synchronous submission ended, as far as the caller is concerned.
#[derive(Debug)]
pub enum SyncOutcome {
    /// The task reached a terminal status (succeeded, rejected, failed or canceled).
    Finished(Box<Task>),
    /// Still queued or running: answer 202.
    Pending(Box<Task>),
}

/// Whether the request carries `Prefer: respond-async` (RFC 7240), among other preferences.
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.split(';').next().is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async")))
}

/// Submits `task`, then waits for it unless the caller prefers async.
pub async fn submit_and_wait(state: &AppState, headers: &HeaderMap, task: Task) -> Result<SyncOutcome, ServiceError> {
    let submitted = state.submit(task).await?;
    let wait = if prefers_async(headers) { Duration::ZERO } else { state.sync_wait };
    wait_for(state, submitted.task, wait).await
}

/// Polls the task until it is terminal or `wait` has passed. Polls start at 50 ms and back off to
/// 500 ms: short tasks answer quickly, long ones cost a read every half second.
pub async fn wait_for(state: &AppState, mut task: Task, wait: Duration) -> Result<SyncOutcome, ServiceError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(50);
    loop {
        if task.status.is_terminal() {
            return Ok(SyncOutcome::Finished(Box::new(task)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(SyncOutcome::Pending(Box::new(task)));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
        task = match state.tasks.get(task.id).await.map_err(ServiceError::Store)? {
            Some(task) => task,
            // Expired or deleted meanwhile: report it as the caller last saw it.
            None => return Ok(SyncOutcome::Pending(Box::new(task))),
        };
    }
}

/// The 202 answer for a task still in progress: `Location` of its neutral document, the body in
/// the dialect's shape, and `Preference-Applied: respond-async` when the caller asked for it.
pub fn pending_response(headers: &HeaderMap, task_id: TaskId, body: Value) -> Response {
    let mut response = with_task_id((StatusCode::ACCEPTED, Json(body)).into_response(), task_id);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{task_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if prefers_async(headers) {
        response.headers_mut().insert("preference-applied", HeaderValue::from_static("respond-async"));
    }
    response
}

/// The header that names the task behind a synchronous answer, so that callers can look it up at
/// `GET /v1/tasks/{id}` (what ran, timings, charge).
pub const TASK_ID_HEADER: &str = "x-easel-task-id";

/// `response` with the [`TASK_ID_HEADER`] of `task_id`.
pub fn with_task_id(mut response: Response, task_id: TaskId) -> Response {
    if let Ok(value) = HeaderValue::from_str(&task_id.to_string()) {
        response.headers_mut().insert(TASK_ID_HEADER, value);
    }
    response
}

/// The PNG bytes of a finished task's images, in order.
pub async fn image_bytes(state: &AppState, task: &Task) -> Result<Vec<Vec<u8>>, ServiceError> {
    let mut out = Vec::with_capacity(task.images.len());
    for image in &task.images {
        let bytes = state.images.get(&image.key).await.map_err(ServiceError::Store)?.ok_or_else(|| {
            ServiceError::Store(easel_core::ports::StoreError::Corrupt(format!(
                "image {} of task {} is missing from the image store",
                image.key, task.id
            )))
        })?;
        out.push(bytes);
    }
    Ok(out)
}

/// A message for a caller whose task did not finish within the wait.
pub fn pending_message(task_id: TaskId) -> String {
    format!("the task is still running; poll GET /v1/tasks/{task_id} for its result (task id {task_id})")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn respond_async_is_found_among_other_preferences() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("prefer", v.parse().unwrap());
            prefers_async(&h)
        };
        assert!(with("respond-async"));
        assert!(with("return=minimal, Respond-Async; wait=10"));
        assert!(!with("wait=10"));
        assert!(!prefers_async(&HeaderMap::new()));
    }
}
