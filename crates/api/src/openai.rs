//! The OpenAI-compatible dialect: `POST /v1/images/generations` (also at
//! `/api/images/generations`, as the AIGNE Hub document routes it) and `GET /v1/models`.
//!
//! Request fields as OpenAI's: `prompt`, `model` (an installed model's id or alias; default the
//! first installed model), `n` 1..10, `size` (the model's list), `response_format` `url` |
//! `b64_json`, `quality` (`hd`/`high` run more steps), `style` (`vivid` → the `cinematic` preset,
//! `natural` → `photographic`), `user` (recorded). gpt-image-1's `output_format` (png only),
//! `background` (auto/opaque) and `moderation` are accepted. easel's extensions: `seed`,
//! `negative_prompt`, `callback_url`. Any other field is refused, as OpenAI does. Errors have
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use easel_core::generator::{GeneratedImage, InitImage};
use easel_core::keys::ApiKey;
use easel_core::png::{decode_image, encode_png};
use easel_core::request::{Dialect, GenerationRequest, InitImageRef, Quality, resolve_seeds};
use easel_core::task::{Task, TaskStatus};
use serde_json::{Map, Value, json};

use crate::auth::{AuthFailure, Scheme, require_key};
use crate::body::{Fields, InputError, json_object};
use crate::models::{ModelCatalog, ModelEntry, Size};
use crate::sync::{SyncOutcome, image_bytes, pending_message, pending_response, submit_and_wait, with_task_id};
use crate::{AppState, ServiceError, checked_callback, new_task, with_retry_after};

pub const ROUTE: &str = "/v1/images/generations";
pub const EDITS_ROUTE: &str = "/v1/images/edits";
/// img2img `strength` when the caller gives none (an easel extension; OpenAI has none).
pub const DEFAULT_STRENGTH: f64 = 0.75;
pub const MAX_IMAGES: u64 = 10;
/// gpt-image-1's limit; DALL·E's are lower, but the prompt is cut at 77 CLIP tokens anyway.
pub const MAX_PROMPT_CHARS: usize = 32_000;

const KNOWN_FIELDS: [&str; 17] = [
    "image",
    "strength",
    "mask",
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "quality",
    "style",
    "user",
    "output_format",
    "background",
    "moderation",
    "seed",
    "negative_prompt",
    "callback_url",
];

/// OpenAI's error body with an HTTP status.
#[derive(Debug)]
pub struct OpenaiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl OpenaiError {
    fn invalid(param: Option<String>, message: impl Into<String>) -> Self {
        OpenaiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    fn with_code(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> Option<&'static str> {
        self.code
    }
}

impl IntoResponse for OpenaiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        with_retry_after((self.status, Json(body)).into_response(), self.retry_after)
    }
}

impl From<InputError> for OpenaiError {
    fn from(e: InputError) -> Self {
        let status = e.status;
        let mut error = OpenaiError::invalid(e.field, e.message);
        error.status = status;
        error
    }
}

impl From<AuthFailure> for OpenaiError {
    fn from(e: AuthFailure) -> Self {
        match e {
            AuthFailure::Unavailable(_) => ServiceError::from(e).into(),
            other => {
                OpenaiError::invalid(None, other.to_string()).with_code(StatusCode::UNAUTHORIZED, "invalid_api_key")
            }
        }
    }
}

impl From<ServiceError> for OpenaiError {
    fn from(e: ServiceError) -> Self {
        let status = e.status();
        let (kind, code) = match e {
            ServiceError::TaskNotFound(_) => ("invalid_request_error", "not_found"),
            ServiceError::IdempotencyKeyReused => ("invalid_request_error", "idempotency_key_reused"),
            ServiceError::Store(_) | ServiceError::Auth(_) => ("server_error", "service_unavailable"),
            ServiceError::RateLimited { .. } => ("requests", "rate_limit_exceeded"),
            ServiceError::PromptRefused(_) => ("invalid_request_error", "content_policy_violation"),
        };
        let param = match &e {
            ServiceError::PromptRefused(refusal) => Some(
                match refusal.field {
                    easel_core::prompt_policy::PromptField::Prompt => "prompt",
                    easel_core::prompt_policy::PromptField::NegativePrompt => "negative_prompt",
                }
                .to_owned(),
            ),
            _ => None,
        };
        let retry_after = e.retry_after();
        OpenaiError { status, message: e.public_message(), kind, param, code: Some(code), retry_after }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

/// Where an input image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Sent in the request (base64 or a file upload), decoded and checked.
    Inline(InitImage),
    /// An `https` URL to download, behind the SSRF guard, when the task is submitted.
    Url(String),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagesRequest {
    pub request: GenerationRequest,
    /// The input image (edits) with its `strength`.
    pub image: Option<(ImageSource, f32)>,
    pub response_format: ResponseFormat,
    pub callback_url: Option<String>,
    pub user: Option<String>,
}

fn model_not_found(name: &str) -> OpenaiError {
    OpenaiError::invalid(
        Some("model".into()),
        format!("The model `{name}` does not exist or you do not have access to it."),
    )
    .with_code(StatusCode::NOT_FOUND, "model_not_found")
}

fn size(root: &Fields<'_>, model: &ModelEntry) -> Result<Size, OpenaiError> {
    let Some(raw) = root.opt_string("size", 32)? else { return Ok(model.default_size()) };
    if raw == "auto" {
        return Ok(model.default_size());
    }
    raw.parse::<Size>().ok().filter(|s| model.sizes.contains(s)).ok_or_else(|| {
        OpenaiError::invalid(
            Some("size".into()),
            format!("'{raw}' is not one of the sizes of model {}: {} (or auto)", model.id, model.size_list()),
        )
    })
}

pub fn parse(body: &Map<String, Value>, catalog: &ModelCatalog) -> Result<ImagesRequest, OpenaiError> {
    let root = Fields::new(body);
    if let Some(unknown) = root.unknown(&KNOWN_FIELDS).into_iter().next() {
        return Err(OpenaiError::invalid(
            Some(unknown.clone()),
            format!("Unrecognized request argument supplied: {unknown}"),
        ));
    }
    let prompt = root.required_text("prompt", "a text description of the desired image", MAX_PROMPT_CHARS)?;
    let model = match root.opt_string("model", 256)? {
        None => catalog.default_model(),
        Some(name) => catalog.find(&name).ok_or_else(|| model_not_found(&name))?,
    };
    let n = root.opt_int("n", 1, MAX_IMAGES)?.unwrap_or(1) as u32;
    let size = size(&root, model)?;
    let response_format = match root.opt_enum("response_format", &["url", "b64_json"])?.as_deref() {
        Some("b64_json") => ResponseFormat::B64Json,
        _ => ResponseFormat::Url,
    };
    let quality = match root.opt_enum("quality", &["standard", "hd", "auto", "low", "medium", "high"])?.as_deref() {
        Some("hd" | "high") => Quality::High,
        _ => Quality::Standard,
    };
    let style_preset = match root.opt_enum("style", &["vivid", "natural"])?.as_deref() {
        Some("vivid") => Some("cinematic".to_owned()),
        Some("natural") => Some("photographic".to_owned()),
        _ => None,
    };
    let user = root.opt_string("user", 256)?;
    root.opt_enum("output_format", &["png"])?;
    root.opt_enum("background", &["auto", "opaque"])?;
    root.opt_enum("moderation", &["auto", "low"])?;
    let seed = root.opt_int("seed", 0, (1 << 53) - 1)?;
    let negative_prompt = root.opt_string("negative_prompt", MAX_PROMPT_CHARS)?.filter(|s| !s.trim().is_empty());
    let callback_url = root.opt_http_url("callback_url")?;
    if body.get("mask").is_some_and(|m| !m.is_null()) {
        return Err(OpenaiError::invalid(
            Some("mask".into()),
            "mask is not supported: easel edits the whole image (img2img); leave mask out",
        ));
    }
    let strength = root.opt_number("strength", 0.01, 1.0)?.unwrap_or(DEFAULT_STRENGTH) as f32;
    let image = input_image(body.get("image"))?.map(|image| (image, strength));
    Ok(ImagesRequest {
        image,
        request: GenerationRequest {
            negative_prompt,
            style_preset,
            quality,
            model: Some(model.id.clone()),
            ..GenerationRequest::new(prompt, size.width, size.height, resolve_seeds(seed, n))
        },
        response_format,
        callback_url,
        user,
    })
}

/// The `image` field: one base64 string (optionally a `data:` URL) or an image URL, or an array of
/// one.
fn input_image(value: Option<&Value>) -> Result<Option<ImageSource>, OpenaiError> {
    let param = || Some("image".to_owned());
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => items[0].as_str().unwrap_or_default(),
        Some(Value::Array(_)) => {
            return Err(OpenaiError::invalid(param(), "image must be one image: easel edits a single input image"));
        }
        Some(_) => return Err(OpenaiError::invalid(param(), "image must be a base64-encoded PNG, JPEG or WebP file")),
    };
    let text = text.trim();
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(Some(ImageSource::Url(text.to_owned())));
    }
    let encoded = match text.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| OpenaiError::invalid(param(), format!("image is not valid base64: {e}")))?;
    decode_image(&bytes).map(|i| Some(ImageSource::Inline(i))).map_err(|e| OpenaiError::invalid(param(), e.to_string()))
}

/// Downloads an input image given as a URL (SSRF rules of DESIGN.md §7, size-capped) and decodes it.
async fn fetch_image(state: &AppState, url: &str) -> Result<InitImage, OpenaiError> {
    let refused = |message: String| OpenaiError::invalid(Some("image".into()), message);
    easel_core::egress::check_url(url, state.allow_loopback_urls)
        .map_err(|e| refused(format!("the image URL is refused: {e}")))?;
    let fetcher =
        state.image_fetcher.as_ref().ok_or_else(|| refused("this server does not fetch image URLs".into()))?;
    let bytes = fetcher.fetch(url).await.map_err(|e| match e {
        easel_core::ports::FetchError::Refused(why) => refused(format!("the image URL is refused: {why}")),
        easel_core::ports::FetchError::Failed(why) => refused(format!("the image could not be downloaded: {why}")),
    })?;
    decode_image(&bytes).map_err(|e| refused(format!("the downloaded image: {e}")))
}

/// Stores the input image of `task` (as PNG) and points its request at it.
async fn attach_image(state: &AppState, task: &mut Task, image: InitImage, strength: f32) -> Result<(), OpenaiError> {
    let key = InitImageRef::key_for(task.id);
    let png = encode_png(&GeneratedImage { width: image.width, height: image.height, seed: 0, rgb: image.rgb })
        .map_err(|e| OpenaiError::invalid(Some("image".into()), format!("the image could not be stored: {e}")))?;
    state.images.put_png(&key, png).await.map_err(ServiceError::Store)?;
    task.request.init_image = Some(InitImageRef { key, strength });
    Ok(())
}

/// Submits a parsed request, waits, and answers in OpenAI's shape.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    key: &ApiKey,
    route: &str,
    body: &Map<String, Value>,
    parsed: ImagesRequest,
) -> Result<Response, OpenaiError> {
    state.check_prompt(&parsed.request)?;
    let mut task = new_task(
        key,
        Dialect::Openai,
        route,
        body,
        headers,
        parsed.request,
        checked_callback(state, parsed.callback_url)?,
    )?;
    task.end_user = parsed.user;
    if let Some((source, strength)) = parsed.image {
        let image = match source {
            ImageSource::Inline(image) => image,
            ImageSource::Url(url) => fetch_image(state, &url).await?,
        };
        attach_image(state, &mut task, image, strength).await?;
    }
    match submit_and_wait(state, headers, task).await? {
        SyncOutcome::Pending(task) => {
            let body = json!({"error": {"message": pending_message(task.id), "type": "task_pending", "param": null,
                "code": "task_pending", "task_id": task.id.to_string()}});
            Ok(pending_response(headers, task.id, body))
        }
        SyncOutcome::Finished(task) => {
            // Errors name the task too: its document says what happened (moderation scores, the cause).
            let response =
                finished(state, &task, parsed.response_format).await.unwrap_or_else(IntoResponse::into_response);
            Ok(with_task_id(response, task.id))
        }
    }
}

/// `POST /v1/images/edits`: OpenAI's multipart form (`image` file, `prompt`, `n`, `size`,
/// `response_format`, …) → img2img. The text fields are read as the JSON fields of a generation.
#[utoipa::path(
    post, path = "/v1/images/edits", tag = "openai", operation_id = "create_image_edit",
    security(("bearer" = [])),
    params(crate::openapi::SyncHeaders),
    request_body(content = crate::openapi::OpenaiEditForm, content_type = "multipart/form-data"),
    responses(crate::openapi::OpenaiImageResponses)
)]
pub async fn edits(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, OpenaiError> {
    let key = require_key(&state, &headers, Scheme::Bearer).await?;
    state.check_rate(&key)?;
    let mut multipart = multipart.map_err(|e| {
        OpenaiError::invalid(None, format!("the body must be multipart/form-data, as OpenAI's image edits take: {e}"))
    })?;
    let mut body = Map::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        let mut error = OpenaiError::invalid(None, format!("the multipart body could not be read: {}", e.body_text()));
        error.status = e.status();
        error
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().trim_end_matches("[]").to_owned();
        if name == "image" || name == "mask" {
            let bytes = field.bytes().await.map_err(bad)?;
            let encoded = Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes));
            match body.get_mut(&name) {
                Some(Value::Array(items)) => items.push(encoded),
                _ => {
                    body.insert(name, Value::Array(vec![encoded]));
                }
            }
        } else {
            let text = field.text().await.map_err(bad)?;
            // Form fields are text; numbers are sent as their digits.
            let value = match name.as_str() {
                "n" | "seed" | "strength" => {
                    serde_json::from_str::<serde_json::Number>(text.trim()).map_or(Value::String(text), Value::Number)
                }
                _ => Value::String(text),
            };
            body.insert(name, value);
        }
    }
    if !body.contains_key("image") {
        return Err(OpenaiError::invalid(Some("image".into()), "image is required: the picture to edit, as a file"));
    }
    let parsed = parse(&body, &state.models)?;
    run(&state, &headers, &key, EDITS_ROUTE, &body, parsed).await
}

/// Creates images from a prompt (or edits `image`), waiting up to `EASEL_SYNC_WAIT_SECONDS`.
#[utoipa::path(
    post, path = "/v1/images/generations", tag = "openai", operation_id = "create_image",
    security(("bearer" = [])),
    params(crate::openapi::SyncHeaders),
    request_body = crate::openapi::OpenaiImagesRequest,
    responses(crate::openapi::OpenaiImageResponses)
)]
pub async fn generations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenaiError> {
    let key = require_key(&state, &headers, Scheme::Bearer).await?;
    state.check_rate(&key)?;
    let body = json_object(body)?;
    let parsed = parse(&body, &state.models)?;
    run(&state, &headers, &key, ROUTE, &body, parsed).await
}

async fn finished(state: &AppState, task: &Task, format: ResponseFormat) -> Result<Response, OpenaiError> {
    let data: Vec<Value> = match task.status {
        TaskStatus::Succeeded => match format {
            ResponseFormat::B64Json => {
                let engine = base64::engine::general_purpose::STANDARD;
                image_bytes(state, task).await?.iter().map(|png| json!({"b64_json": engine.encode(png)})).collect()
            }
            ResponseFormat::Url => {
                let mut urls = Vec::with_capacity(task.images.len());
                for image in &task.images {
                    let url = state.images.url(&image.key, state.url_ttl).await.map_err(ServiceError::Store)?;
                    urls.push(json!({"url": url}));
                }
                urls
            }
        },
        TaskStatus::Rejected => {
            return Err(OpenaiError::invalid(
                None,
                "Your request was rejected by the image moderation of this service; nothing was charged.",
            )
            .with_code(StatusCode::BAD_REQUEST, "content_policy_violation"));
        }
        TaskStatus::Canceled => {
            return Err(OpenaiError::invalid(None, "The task was canceled; nothing was charged.")
                .with_code(StatusCode::CONFLICT, "task_canceled"));
        }
        _ => {
            let (status, message) = crate::stability::failure(task);
            let mut error = OpenaiError::invalid(None, message);
            error.status = status;
            if status.is_server_error() {
                error.kind = "server_error";
                error.code = Some("generation_failed");
            }
            return Err(error);
        }
    };
    Ok(Json(json!({"created": task.created_at.unix_timestamp(), "data": data})).into_response())
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "easel"})
}

/// `GET /v1/models`: every installed model and alias, as OpenAI lists models.
#[utoipa::path(
    get, path = "/v1/models", tag = "openai", operation_id = "list_models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The installed models and their aliases.", body = crate::openapi::ModelList),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::OpenaiError),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::OpenaiError),
    )
)]
pub async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, OpenaiError> {
    require_key(&state, &headers, Scheme::Bearer).await?;
    let data: Vec<Value> = state
        .models
        .models()
        .iter()
        .flat_map(|m| std::iter::once(&m.id).chain(&m.aliases))
        .map(|name| model_object(name))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}`.
#[utoipa::path(
    get, path = "/v1/models/{id}", tag = "openai", operation_id = "retrieve_model",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A model id or alias")),
    responses(
        (status = 200, description = "The model.", body = crate::openapi::ModelObject),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::OpenaiError),
        (status = 404, description = "No such model: `model_not_found`.", body = crate::openapi::OpenaiError),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::OpenaiError),
    )
)]
pub async fn get_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, OpenaiError> {
    require_key(&state, &headers, Scheme::Bearer).await?;
    state.models.find(&id).ok_or_else(|| model_not_found(&id))?;
    Ok(Json(model_object(&id)).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn catalog() -> ModelCatalog {
        ModelCatalog::from_settings("tiny-sd", "256x256,512x512,1024x1024", "dall-e-2,dall-e-3,gpt-image-1").unwrap()
    }

    fn parse_json(v: Value) -> Result<ImagesRequest, OpenaiError> {
        parse(v.as_object().unwrap(), &catalog())
    }

    #[test]
    fn the_documented_examples_parse() {
        let r = parse_json(json!({"prompt": "A photorealistic image of a cat", "n": 1, "size": "1024x1024"})).unwrap();
        assert_eq!((r.request.width, r.request.height, r.request.seeds.len()), (1024, 1024, 1));
        assert_eq!(r.response_format, ResponseFormat::Url);
        assert_eq!(r.request.model.as_deref(), Some("tiny-sd"));
        let r = parse_json(json!({"model": "dall-e-2", "prompt": "city", "n": 3, "size": "512x512", "quality": "hd",
            "style": "natural", "response_format": "b64_json", "user": "u-1"}))
        .unwrap();
        assert_eq!(r.response_format, ResponseFormat::B64Json);
        assert_eq!(r.request.quality, Quality::High);
        assert_eq!(r.request.style_preset.as_deref(), Some("photographic"));
        assert_eq!((r.request.width, r.request.seeds.len(), r.user.as_deref()), (512, 3, Some("u-1")));
    }

    #[test]
    fn an_unknown_model_is_openais_404_model_not_found() {
        let e = parse_json(json!({"prompt": "x", "model": "dall-e-9"})).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, Some("model_not_found")));
        assert!(e.message.contains("dall-e-9"));
    }

    #[test]
    fn bad_fields_are_refused_naming_the_param_and_what_it_accepts() {
        let cases = [
            (json!({"prompt": "x", "size": "1792x1024"}), "size", "256x256, 512x512, 1024x1024"),
            (json!({"prompt": "x", "n": 11}), "n", "from 1 to 10"),
            (json!({"prompt": "x", "n": 0}), "n", "from 1 to 10"),
            (json!({"prompt": "x", "response_format": "png"}), "response_format", "url, b64_json"),
            (json!({"prompt": "x", "quality": "ultra"}), "quality", "standard, hd"),
            (json!({"prompt": "x", "style": "bold"}), "style", "vivid, natural"),
            (json!({"prompt": "x", "output_format": "webp"}), "output_format", "png"),
            (json!({"prompt": "x", "temperature": 1}), "temperature", "Unrecognized request argument"),
            (json!({"n": 1}), "prompt", "is required"),
        ];
        for (body, param, expect) in cases {
            let e = parse_json(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(expect), "{body}: {}", e.message);
        }
    }
}
