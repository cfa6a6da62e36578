//! The basic textToImage dialect (Stability v1 style): `POST /api/generate/basic/textToImage`.
//!
//! Request: `prompt`, `width`/`height` (320..1536, multiples of 64), `cfg_scale` (0..35, 7),
//! `clip_guidance_preset` (accepted and recorded; easel has no CLIP guidance), `sampler` (the ten
//! Stability names; the model's default when absent), `seed` (0 or absent = random, returned),
//! `steps` (10..50, 30), `style_preset` (17 names). easel also accepts `negative_prompt` and
//! `callback_url`. The key comes as `Authorization: <key>` (or `Authentication`, as the document
//! names it). Synchronous: the answer is `{"code": 0, "message": "success", "data": {"image":
//! <base64 PNG>, "seed"}}`; every failure is `{"code": -1, "message", "data": null}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use easel_core::generator::SamplerKind;
use easel_core::presets;
use easel_core::request::{Dialect, GenerationRequest, resolve_seeds};
use easel_core::task::{Task, TaskStatus};
use serde_json::{Map, Value, json};

use crate::auth::{AuthFailure, Scheme, require_key};
use crate::body::{Fields, InputError, json_object};
use crate::sync::{SyncOutcome, image_bytes, pending_message, pending_response, submit_and_wait, with_task_id};
use crate::{AppState, ServiceError, checked_callback, new_task, with_retry_after};

pub const ROUTE: &str = "/api/generate/basic/textToImage";
pub const MIN_SIDE: u64 = 320;
pub const MAX_SIDE: u64 = 1536;
pub const SIDE_STEP: u64 = 64;
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Stability's seeds are 32-bit.
pub const MAX_SEED: u64 = 4_294_967_295;

/// The sampler enum of the document (easel's PNDM is not offered in this dialect).
pub const SAMPLERS: [SamplerKind; 10] = [
    SamplerKind::Ddim,
    SamplerKind::Ddpm,
    SamplerKind::DpmPp2m,
    SamplerKind::DpmPp2sAncestral,
    SamplerKind::Dpm2,
    SamplerKind::Dpm2Ancestral,
    SamplerKind::Euler,
    SamplerKind::EulerAncestral,
    SamplerKind::Heun,
    SamplerKind::Lms,
];

pub const CLIP_GUIDANCE_PRESETS: [&str; 7] = ["FAST_BLUE", "FAST_GREEN", "NONE", "SIMPLE", "SLOW", "SLOWER", "SLOWEST"];

/// The dialect's failure body, `{"code": -1, "message", "data"}`, with an HTTP status.
#[derive(Debug)]
pub struct BasicError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl BasicError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        BasicError { status, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for BasicError {
    fn into_response(self) -> Response {
        let body = Json(json!({"code": -1, "message": self.message, "data": null}));
        with_retry_after((self.status, body).into_response(), self.retry_after)
    }
}

impl From<InputError> for BasicError {
    fn from(e: InputError) -> Self {
        BasicError::new(e.status, e.message)
    }
}

impl From<AuthFailure> for BasicError {
    fn from(e: AuthFailure) -> Self {
        match e {
            AuthFailure::Unavailable(_) => ServiceError::from(e).into(),
            other => BasicError::new(StatusCode::UNAUTHORIZED, other.to_string()),
        }
    }
}

impl From<ServiceError> for BasicError {
    fn from(e: ServiceError) -> Self {
        BasicError { retry_after: e.retry_after(), ..BasicError::new(e.status(), e.public_message()) }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicRequest {
    pub request: GenerationRequest,
    pub clip_guidance_preset: Option<String>,
    pub callback_url: Option<String>,
}

fn side(root: &Fields<'_>, name: &str) -> Result<u32, InputError> {
    let value = root.required_int(name, MIN_SIDE as i64, MAX_SIDE)?;
    if !value.is_multiple_of(SIDE_STEP) {
        return Err(InputError::field(
            name,
            format!("{name} must be a multiple of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}; got {value}"),
        ));
    }
    Ok(value as u32)
}

pub fn parse(body: &Map<String, Value>) -> Result<BasicRequest, InputError> {
    let root = Fields::new(body);
    let prompt = root.required_text("prompt", "the text description of the image", MAX_PROMPT_CHARS)?;
    let width = side(&root, "width")?;
    let height = side(&root, "height")?;
    let cfg_scale = root.opt_number("cfg_scale", 0.0, 35.0)?.unwrap_or(7.0);
    let clip_guidance_preset = root.opt_enum("clip_guidance_preset", &CLIP_GUIDANCE_PRESETS)?;
    let sampler_names = SAMPLERS.map(SamplerKind::api_name);
    let sampler = root
        .opt_enum("sampler", &sampler_names)?
        .map(|name| name.parse::<SamplerKind>().map_err(|e| InputError::field("sampler", e.to_string())))
        .transpose()?;
    let seed = root.opt_int("seed", 0, MAX_SEED)?.unwrap_or(0);
    let steps = root.opt_int("steps", 10, 50)?.unwrap_or(30);
    let style_preset = root.opt_enum("style_preset", &presets::names())?;
    let negative_prompt = root.opt_string("negative_prompt", MAX_PROMPT_CHARS)?.filter(|s| !s.trim().is_empty());
    let callback_url = root.opt_http_url("callback_url")?;
    // Seed 0 means "pick one"; the pick stays within the dialect's 32-bit range.
    let seed = if seed == 0 { resolve_seeds(None, 1)[0] % MAX_SEED + 1 } else { seed };
    Ok(BasicRequest {
        request: GenerationRequest {
            negative_prompt,
            steps: Some(steps as u32),
            guidance: Some(cfg_scale as f32),
            sampler,
            style_preset,
            ..GenerationRequest::new(prompt, width, height, vec![seed])
        },
        clip_guidance_preset,
        callback_url,
    })
}

/// Generates one image, waiting up to `EASEL_SYNC_WAIT_SECONDS`.
#[utoipa::path(
    post, path = "/api/generate/basic/textToImage", tag = "basic", operation_id = "basic_text_to_image",
    security(("basic_key" = [])),
    params(crate::openapi::SyncHeaders),
    request_body = crate::openapi::BasicRequest,
    responses(
        (status = 200, description = "The images.", body = crate::openapi::BasicResponse, headers(("X-Easel-Task-Id" = String, description = "The task behind the answer"))),
        (status = 202, description = "Still running after the wait: `data.task_id` names it.", body = crate::openapi::BasicError, headers(("Location" = String, description = "/v1/tasks/{id}"), ("X-Easel-Task-Id" = String))),
        (status = 400, description = "A field is wrong (the error names it), or moderation refused the image.", body = crate::openapi::BasicError),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::BasicError),
        (status = 409, description = "The Idempotency-Key was used with another body, or the task was canceled.", body = crate::openapi::BasicError),
        (status = 413, description = "The body is too large.", body = crate::openapi::BasicError),
        (status = 429, description = "The key's rate limit.", body = crate::openapi::BasicError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "The generation failed; nothing was charged.", body = crate::openapi::BasicError),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::BasicError),
    )
)]
pub async fn text_to_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BasicError> {
    let key = require_key(&state, &headers, Scheme::Basic).await?;
    state.check_rate(&key)?;
    let body = json_object(body)?;
    let parsed = parse(&body)?;
    state.check_prompt(&parsed.request)?;
    let mut task = new_task(
        &key,
        Dialect::Stability,
        ROUTE,
        &body,
        &headers,
        parsed.request,
        checked_callback(&state, parsed.callback_url)?,
    )?;
    if let Some(preset) = parsed.clip_guidance_preset.filter(|p| p != "NONE") {
        task.warnings
            .push(format!("clip_guidance_preset {preset} was recorded but not applied: easel has no CLIP guidance"));
    }
    match submit_and_wait(&state, &headers, task).await? {
        SyncOutcome::Pending(task) => {
            let body =
                json!({"code": -1, "message": pending_message(task.id), "data": {"task_id": task.id.to_string()}});
            Ok(pending_response(&headers, task.id, body))
        }
        // Errors name the task too: its document says what happened (moderation scores, the cause).
        SyncOutcome::Finished(task) => {
            Ok(with_task_id(finished(&state, &task).await.unwrap_or_else(IntoResponse::into_response), task.id))
        }
    }
}

async fn finished(state: &AppState, task: &Task) -> Result<Response, BasicError> {
    match task.status {
        TaskStatus::Succeeded => {
            let images = image_bytes(state, task).await?;
            let (Some(png), Some(record)) = (images.first(), task.images.first()) else {
                return Err(BasicError::new(StatusCode::INTERNAL_SERVER_ERROR, "the task finished without an image"));
            };
            let image = base64::engine::general_purpose::STANDARD.encode(png);
            Ok(Json(json!({"code": 0, "message": "success", "data": {"image": image, "seed": record.seed}}))
                .into_response())
        }
        TaskStatus::Rejected => {
            Err(BasicError::new(StatusCode::BAD_REQUEST, "the image did not pass moderation; nothing was charged"))
        }
        TaskStatus::Canceled => {
            Err(BasicError::new(StatusCode::CONFLICT, "the task was canceled; nothing was charged"))
        }
        _ => {
            let (status, message) = failure(task);
            Err(BasicError::new(status, message))
        }
    }
}

/// The HTTP status and message of a failed task: the caller's fault (400) or the service's (500).
pub fn failure(task: &Task) -> (StatusCode, String) {
    match &task.error {
        Some(e) if e.code == "invalid_request" => (StatusCode::BAD_REQUEST, e.message.clone()),
        Some(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}; nothing was charged", e.message)),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "the generation failed; nothing was charged".to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_json(v: Value) -> Result<BasicRequest, InputError> {
        parse(v.as_object().unwrap())
    }

    #[test]
    fn the_documented_example_takes_the_documented_defaults() {
        let r = parse_json(
            json!({"prompt": "A lighthouse on a cliff", "cfg_scale": 7, "height": 1024, "width": 1024, "steps": 20}),
        )
        .unwrap()
        .request;
        assert_eq!((r.width, r.height, r.steps, r.guidance), (1024, 1024, Some(20), Some(7.0)));
        assert_eq!(r.seeds.len(), 1);
        assert!((1..=MAX_SEED).contains(&r.seeds[0]));
        let d = parse_json(json!({"prompt": "x", "height": 320, "width": 1536})).unwrap().request;
        assert_eq!((d.steps, d.guidance, d.sampler, d.style_preset), (Some(30), Some(7.0), None, None));
    }

    #[test]
    fn sampler_seed_and_style_preset_are_passed_through() {
        let r =
            parse_json(json!({"prompt": "x", "height": 512, "width": 512, "sampler": "K_DPMPP_2M", "seed": 1050625087,
            "style_preset": "neon-punk", "clip_guidance_preset": "FAST_BLUE", "cfg_scale": 0}))
            .unwrap();
        assert_eq!(r.request.sampler, Some(SamplerKind::DpmPp2m));
        assert_eq!(r.request.seeds, vec![1050625087]);
        assert_eq!(r.request.style_preset.as_deref(), Some("neon-punk"));
        assert_eq!(r.request.guidance, Some(0.0));
        assert_eq!(r.clip_guidance_preset.as_deref(), Some("FAST_BLUE"));
    }

    #[test]
    fn each_bad_field_is_named_with_what_it_accepts() {
        let ok = json!({"prompt": "x", "width": 512, "height": 512});
        let cases = [
            ("prompt", json!(""), "must not be empty"),
            ("width", json!(300), "from 320 to 1536"),
            ("width", json!(1600), "from 320 to 1536"),
            ("height", json!(520), "multiple of 64"),
            ("cfg_scale", json!(36), "from 0 to 35"),
            ("steps", json!(9), "from 10 to 50"),
            ("steps", json!(51), "from 10 to 50"),
            ("seed", json!(4_294_967_296u64), "from 0 to 4294967295"),
            ("seed", json!(-1), "from 0 to 4294967295"),
            ("sampler", json!("K_EULER_A"), "DDIM, DDPM, K_DPMPP_2M"),
            ("sampler", json!("PNDM"), "K_LMS"),
            ("style_preset", json!("watercolor"), "3d-model"),
            ("clip_guidance_preset", json!("FAST"), "FAST_BLUE"),
            ("callback_url", json!("nope"), "http"),
        ];
        for (field, value, expect) in cases {
            let mut body = ok.clone();
            body[field] = value.clone();
            let e = parse_json(body).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{field}={value}");
            assert!(e.message.contains(expect), "{field}={value}: {}", e.message);
        }
        for missing in ["width", "height", "prompt"] {
            let mut body = ok.clone();
            body.as_object_mut().unwrap().remove(missing);
            assert!(parse_json(body).unwrap_err().message.contains("is required"), "{missing}");
        }
    }
}
