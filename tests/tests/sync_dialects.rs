//! The synchronous dialects end to end through the real local server and the tiny model: basic
//! textToImage (Stability v1 style) and the OpenAI-compatible images API, with the bounded wait,
//! `202` + `Location`, idempotency and OpenAI's error shapes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use easel_tests::{Harness, decode_png, serve_config};
use serde_json::{Value, json};

const BASIC: &str = "/api/generate/basic/textToImage";
const OPENAI: &str = "/v1/images/generations";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Polls the neutral task document until the task is terminal.
async fn neutral_wait(h: &Harness, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, task) = h.get_json(&format!("/v1/tasks/{id}")).await;
        assert_eq!(code, 200, "{task}");
        if !matches!(task["status"].as_str(), Some("queued" | "running")) {
            return task;
        }
        assert!(Instant::now() < deadline, "{task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_text_to_image_answers_with_a_base64_png_and_its_seed_and_charges_for_it() {
    let h = Harness::start().await;
    let auth = [("authorization", h.key.clone())];
    let body = json!({"prompt": "A lighthouse on a cliff", "cfg_scale": 7, "height": 384, "width": 320, "steps": 10,
        "sampler": "K_DPMPP_2M", "style_preset": "neon-punk", "seed": 1050625087});
    let (code, headers, answer) = h.post(BASIC, &auth, &body).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!((answer["code"].as_i64(), answer["message"].as_str()), (Some(0), Some("success")), "{answer}");
    assert_eq!(answer["data"]["seed"], 1050625087);
    let (w, hgt, first) = decode_png(&b64(answer["data"]["image"].as_str().unwrap()));
    assert_eq!((w, hgt), (320, 384));

    // What ran is on the task the answer names: the sampler, the preset, the steps and guidance.
    let id = headers["x-easel-task-id"].to_str().unwrap();
    let (_, task) = h.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["dialect"], "stability");
    assert_eq!(task["request"]["style_preset"], "neon-punk", "{task}");
    assert_eq!(
        (task["run"]["sampler"].as_str(), task["run"]["steps"].as_u64()),
        (Some("K_DPMPP_2M"), Some(10)),
        "{task}"
    );
    assert_eq!(task["run"]["guidance"], 7.0);
    // The preset changes the prompts, so the picture: the same request without it differs.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("style_preset");
    let (_, _, unstyled) = h.post(BASIC, &auth, &plain).await;
    assert_ne!(
        decode_png(&b64(unstyled["data"]["image"].as_str().unwrap())).2,
        first,
        "the style preset was not applied"
    );

    // The same seed and parameters give the same image; the document's `Authentication` header works too.
    let (code, _, again) = h.post(BASIC, &[("authentication", h.key.clone())], &body).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(decode_png(&b64(again["data"]["image"].as_str().unwrap())).2, first);

    // Seed 0 picks a random 32-bit seed and returns it.
    let (code, _, random) =
        h.post(BASIC, &auth, &json!({"prompt": "x", "width": 320, "height": 320, "steps": 10, "seed": 0})).await;
    assert_eq!(code, 200, "{random}");
    let seed = random["data"]["seed"].as_u64().unwrap();
    assert!((1..=4_294_967_295).contains(&seed), "{seed}");

    // The key was charged for each image.
    let (_, usage) = h.get_json("/v1/usage").await;
    assert_eq!(usage["total"]["images"], 4, "{usage}");
    let expected =
        easel_core::usage::image_millicredits(320, 384, 10) * 3 + easel_core::usage::image_millicredits(320, 320, 10);
    assert_eq!(usage["total"]["credits"], json!(expected as f64 / 1000.0), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_text_to_image_refuses_bad_input_in_its_own_error_shape() {
    let h = Harness::start_without_worker().await;
    let auth = [("authorization", h.key.clone())];
    let cases = [
        (json!({"prompt": "x", "width": 300, "height": 512}), "width"),
        (json!({"prompt": "x", "width": 512, "height": 520}), "multiple of 64"),
        (json!({"prompt": "x", "width": 512, "height": 512, "sampler": "EULER"}), "K_EULER_ANCESTRAL"),
        (json!({"prompt": "x", "width": 512, "height": 512, "steps": 60}), "from 10 to 50"),
        (json!({"prompt": "x", "width": 512, "height": 512, "style_preset": "oil"}), "pixel-art"),
        (json!({"width": 512, "height": 512}), "prompt is required"),
    ];
    for (body, expect) in cases {
        let (code, _, answer) = h.post(BASIC, &auth, &body).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(answer["code"], -1, "{answer}");
        assert!(answer["data"].is_null(), "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(expect), "{body}: {answer}");
    }
    let (code, _, answer) = h.post(BASIC, &[], &json!({"prompt": "x", "width": 512, "height": 512})).await;
    assert_eq!((code, answer["code"].as_i64()), (401, Some(-1)), "{answer}");
    assert_eq!(h.queue_depth(), (0, 0), "nothing may be queued for refused requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_not_done_within_the_wait_gets_202_with_the_task_location_and_the_task_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let config = easel_cli::local::ServeConfig { sync_wait: Duration::from_millis(300), ..serve_config(tmp.path()) };
    let h = Harness::start_with(config, false).await;
    let started = Instant::now();
    let (code, headers, answer) = h
        .post(OPENAI, &[("authorization", format!("Bearer {}", h.key))], &json!({"prompt": "x", "size": "256x256"}))
        .await;
    assert_eq!(code, 202, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let id = answer["error"]["task_id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/v1/tasks/{id}"));
    assert_eq!(answer["error"]["code"], "task_pending");
    let (_, task) = h.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "queued", "{task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_respond_async_answers_at_once_and_the_neutral_task_holds_the_result() {
    let h = Harness::start().await;
    let headers = [("authorization", h.key.clone()), ("prefer", "respond-async".to_owned())];
    let (code, response_headers, answer) =
        h.post(BASIC, &headers, &json!({"prompt": "x", "width": 320, "height": 320, "steps": 10, "seed": 5})).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(response_headers["preference-applied"], "respond-async");
    let id = answer["data"]["task_id"].as_str().unwrap();
    assert_eq!(response_headers["location"], format!("/v1/tasks/{id}"));
    let task = neutral_wait(&h, id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["dialect"], "stability");
    assert_eq!(task["images"][0]["seed"], 5);
    let (code, png) = h.download(task["images"][0]["url"].as_str().unwrap()).await;
    assert_eq!((code, decode_png(&png).0), (200, 320));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_generations_return_urls_or_base64_for_n_images_of_the_asked_size() {
    let h = Harness::start().await;
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let (code, _, answer) =
        h.post(OPENAI, &auth, &json!({"prompt": "a cat programming", "n": 2, "size": "256x256", "user": "u-42"})).await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer["created"].as_i64().unwrap() > 1_700_000_000);
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut pictures = vec![];
    for item in data {
        let (code, png) = h.download(item["url"].as_str().unwrap()).await;
        assert_eq!(code, 200);
        let (w, hgt, rgb) = decode_png(&png);
        assert_eq!((w, hgt), (256, 256));
        pictures.push(rgb);
    }
    assert_ne!(pictures[0], pictures[1]);

    // The other route of the document, b64_json, an alias, hd quality and a style.
    let body = json!({"model": "dall-e-3", "prompt": "city skyline", "size": "512x512", "quality": "hd",
        "style": "vivid", "response_format": "b64_json"});
    let (code, _, answer) = h.post("/api/images/generations", &auth, &body).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);
    assert!(answer["data"][0].get("url").is_none());
    assert_eq!(decode_png(&b64(answer["data"][0]["b64_json"].as_str().unwrap())).0, 512);

    // The models it answers to.
    let (code, models) = h.get_json("/v1/models").await;
    assert_eq!(code, 200);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny-sd", "dall-e-2", "dall-e-3", "gpt-image-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_have_openais_shape_and_statuses() {
    let h = Harness::start_without_worker().await;
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let (code, _, e) = h.post(OPENAI, &auth, &json!({"prompt": "x", "model": "dall-e-9"})).await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let (code, _, e) = h.post(OPENAI, &auth, &json!({"prompt": "x", "size": "100x100"})).await;
    assert_eq!((code, e["error"]["param"].as_str()), (400, Some("size")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("256x256"), "{e}");
    let (code, _, e) = h.post(OPENAI, &auth, &json!({"prompt": "x", "n": 11})).await;
    assert_eq!((code, e["error"]["param"].as_str()), (400, Some("n")), "{e}");
    let (code, _, e) = h.post(OPENAI, &[("authorization", "Bearer nope".to_owned())], &json!({"prompt": "x"})).await;
    assert_eq!((code, e["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{e}");
    let (code, _, e) = h.post(OPENAI, &auth, &json!("just a string")).await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(h.queue_depth(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_task_for_the_same_body_and_409_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let config = easel_cli::local::ServeConfig { sync_wait: Duration::ZERO, ..serve_config(tmp.path()) };
    let h = Harness::start_with(config, false).await;
    let headers = |key: &str| vec![("authorization", format!("Bearer {}", h.key)), ("idempotency-key", key.to_owned())];
    let body = json!({"prompt": "a boat", "n": 2, "size": "256x256"});
    let (code, _, first) = h.post(OPENAI, &headers("k-1"), &body).await;
    assert_eq!(code, 202, "{first}");
    // The same body with its keys in another order is the same request.
    let reordered: Value = serde_json::from_str(r#"{"size": "256x256", "n": 2, "prompt": "a boat"}"#).unwrap();
    let (code, _, second) = h.post(OPENAI, &headers("k-1"), &reordered).await;
    assert_eq!(code, 202, "{second}");
    assert_eq!(first["error"]["task_id"], second["error"]["task_id"]);
    let (code, _, conflict) =
        h.post(OPENAI, &headers("k-1"), &json!({"prompt": "a boat", "n": 3, "size": "256x256"})).await;
    assert_eq!(code, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_key_reused");
    let (code, _, other) = h.post(OPENAI, &headers("k-2"), &body).await;
    assert_eq!(code, 202);
    assert_ne!(other["error"]["task_id"], first["error"]["task_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_the_json_body_makes_an_edit_of_that_image() {
    let h = Harness::start().await;
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let generate = |prompt: &str, seed: u64| json!({"prompt": prompt, "size": "256x256", "seed": seed, "response_format": "b64_json"});
    let (_, _, a) = h.post(OPENAI, &auth, &generate("a red square", 1)).await;
    let (_, _, b) = h.post(OPENAI, &auth, &generate("a blue circle", 2)).await;
    let (a, b) =
        (a["data"][0]["b64_json"].as_str().unwrap().to_owned(), b["data"][0]["b64_json"].as_str().unwrap().to_owned());
    let edit = |image: Value| {
        json!({"prompt": "at night", "size": "256x256", "seed": 7, "strength": 0.5,
        "response_format": "b64_json", "image": image})
    };
    let mut outputs = vec![];
    for image in [json!(a.clone()), json!(format!("data:image/png;base64,{b}")), json!([a.clone()])] {
        let (code, headers, answer) = h.post(OPENAI, &auth, &edit(image)).await;
        assert_eq!(code, 200, "{answer}");
        let (w, hgt, rgb) = decode_png(&b64(answer["data"][0]["b64_json"].as_str().unwrap()));
        assert_eq!((w, hgt), (256, 256));
        outputs.push(rgb);
        let (_, task) = h.get_json(&format!("/v1/tasks/{}", headers["x-easel-task-id"].to_str().unwrap())).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    assert_ne!(outputs[0], outputs[1], "the edit depends on its input image");
    assert_eq!(outputs[0], outputs[2], "one image in an array is the same as the image");
    let (_, _, plain) = h
        .post(
            OPENAI,
            &auth,
            &json!({"prompt": "at night", "size": "256x256", "seed": 7, "response_format": "b64_json"}),
        )
        .await;
    assert_ne!(
        decode_png(&b64(plain["data"][0]["b64_json"].as_str().unwrap())).2,
        outputs[0],
        "an edit is not a generation"
    );

    for (image, expect) in [
        (json!("https://example.com/cat.png"), "could not be resolved"),
        (json!("https://169.254.169.254/latest/meta-data/"), "link-local"),
        (json!("bm90IGFuIGltYWdl"), "PNG, JPEG or WebP"),
        (json!("%%%"), "base64"),
        (json!([a.clone(), b.clone()]), "one image"),
    ] {
        let (code, _, e) = h.post(OPENAI, &auth, &edit(image)).await;
        assert_eq!((code, e["error"]["param"].as_str()), (400, Some("image")), "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(expect), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after_in_each_dialect_and_other_keys_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let config = easel_cli::local::ServeConfig {
        rate_limit: Some(easel_api::RateLimit { per_minute: 2, burst: 2 }),
        sync_wait: Duration::ZERO,
        ..serve_config(tmp.path())
    };
    let h = Harness::start_with(config, false).await;
    let body = json!({"prompt": "x", "width": 320, "height": 320, "size": "256x256"});
    let bearer = [("authorization", format!("Bearer {}", h.key))];
    for _ in 0..2 {
        let (code, _, answer) = h.post(OPENAI, &bearer, &json!({"prompt": "x", "size": "256x256"})).await;
        assert_eq!(code, 202, "{answer}");
    }
    let (code, headers, openai) = h.post(OPENAI, &bearer, &json!({"prompt": "x", "size": "256x256"})).await;
    assert_eq!((code, openai["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{openai}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "one token every 30 s: {retry_after}");
    let (code, headers, basic) = h.post(BASIC, &[("authorization", h.key.clone())], &body).await;
    assert_eq!((code, basic["code"].as_i64()), (429, Some(-1)), "{basic}");
    assert!(headers.contains_key("retry-after"));
    let (code, hive) = h.hive_submit(&json!({"text_data": "x"})).await;
    assert_eq!((code, hive["return_code"].as_u64()), (429, Some(429)), "{hive}");
    // Reads are not limited, and another key has its own bucket.
    assert_eq!(h.get_json("/v1/usage").await.0, 200);
    let other = easel_core::keys::create_key(h.server().backend().keys.as_ref(), "other").await.unwrap();
    let (code, _, answer) = h
        .post(
            OPENAI,
            &[("authorization", format!("Bearer {}", other.secret))],
            &json!({"prompt": "x", "size": "256x256"}),
        )
        .await;
    assert_eq!(code, 202, "{answer}");
}
