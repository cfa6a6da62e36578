//! The Hive dialect end to end: HTTP → SQLite task + queue → worker → tiny ONNX model → PNG files
//! → signed URLs, through the real local server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use easel_core::ports::{Job, Queue, TaskStore};
use easel_core::task::TaskId;
use easel_tests::{Harness, decode_png, hive_image_urls};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_task_becomes_the_requested_number_of_1024_pngs() {
    let h = Harness::start().await;
    let (status, task) = h
        .hive_submit(&json!({
            "text_data": "modern architecture house",
            "options": {"neg_text": "grass, pool", "num_images": 2},
            "callback_url": "https://example.com/hook"
        }))
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["status"][0]["status"]["message"], "QUEUED");
    assert_eq!(task["callback"], "https://example.com/hook");

    let done = h.hive_wait(id, WAIT).await;
    assert_eq!(done["status"][0]["status"]["message"], "SUCCESS", "{done}");
    assert_eq!(done["status"][0]["response"]["input"]["charge"], 2);
    let images = done["status"][0]["response"]["output"][0]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let mut pixels = Vec::new();
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["index"], i);
        assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(1024), Some(1024)));
        let (code, bytes) = h.download(image["url"].as_str().unwrap()).await;
        assert_eq!(code, 200);
        let (w, hgt, rgb) = decode_png(&bytes);
        assert_eq!((w, hgt), (1024, 1024));
        assert_eq!(rgb.len(), 1024 * 1024 * 3);
        pixels.push(rgb);
    }
    assert_ne!(pixels[0], pixels[1], "two images of one task must have different seeds");

    // The neutral endpoint tells the same story, with what was run.
    let neutral: serde_json::Value =
        h.client.get(h.url(&format!("/v1/tasks/{id}"))).bearer_auth(&h.key).send().await.unwrap().json().await.unwrap();
    assert_eq!(neutral["status"], "succeeded");
    assert_eq!(neutral["dialect"], "hive");
    assert_eq!(neutral["run"]["model_id"], "tiny-sd");
    assert_eq!(neutral["images"].as_array().unwrap().len(), 2);
    assert_eq!(neutral["attempts"], 1);
    // Charged for two 1024x1024 images at the steps that ran.
    let steps = u32::try_from(neutral["run"]["steps"].as_u64().unwrap()).unwrap();
    let millicredits = 2 * easel_core::usage::image_millicredits(1024, 1024, steps);
    assert_eq!(neutral["usage"], json!({"images": 2, "credits": millicredits as f64 / 1000.0}), "{neutral}");

    // The key's usage of the day shows the charge; another key's shows nothing.
    let get = |path: String, key: String| {
        let request = h.client.get(h.url(&path)).bearer_auth(key);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // (A range around today, so that the test passes across midnight UTC too.)
    let today = time::OffsetDateTime::now_utc().date();
    let around = format!("/v1/usage?from={}&to={}", today.previous_day().unwrap(), today.next_day().unwrap());
    let (code, usage) = get(around.clone(), h.key.clone()).await;
    assert_eq!(code, 200, "{usage}");
    let credits = millicredits as f64 / 1000.0;
    assert_eq!(usage["total"], json!({"tasks": 1, "images": 2, "credits": credits}), "{usage}");
    assert_eq!(usage["days"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!(usage["days"][0]["images"], 2);
    let other = easel_core::keys::create_key(h.server().backend().keys.as_ref(), "other").await.unwrap();
    let (_, theirs) = get(around, other.secret.clone()).await;
    assert_eq!(theirs["total"], json!({"tasks": 0, "images": 0, "credits": 0.0}), "{theirs}");
    let (code, error) = get("/v1/usage?from=2026-13-01".into(), h.key.clone()).await;
    assert_eq!(code, 400, "{error}");
    assert_eq!(error["error"]["code"], "invalid_request");
    assert!(error["error"]["message"].as_str().unwrap().contains("`from`"), "{error}");
    assert_eq!(h.queue_depth(), (0, 0), "the job is acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_identical_png_bytes_and_another_negative_prompt_changes_them() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for neg in ["blurry", "blurry", "bright colours"] {
        let (status, task) = h
            .hive_submit(&json!({"text_data": "a lighthouse at dusk", "options": {"neg_text": neg, "seed": 1234}}))
            .await;
        assert_eq!(status, 200, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut bytes = Vec::new();
    for id in &ids {
        let done = h.hive_wait(id, WAIT).await;
        assert_eq!(done["status"][0]["status"]["message"], "SUCCESS", "{done}");
        assert_eq!(done["status"][0]["response"]["input"]["seeds"], json!([1234]));
        let urls = hive_image_urls(&done);
        bytes.push(h.download(&urls[0]).await.1);
    }
    assert_eq!(bytes[0], bytes[1], "same prompt, negative prompt and seed must give the same bytes");
    assert_ne!(decode_png(&bytes[0]).2, decode_png(&bytes[2]).2, "a different negative prompt must change the image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_for_a_finished_task_does_nothing() {
    let h = Harness::start().await;
    let (_, task) = h.hive_submit(&json!({"text_data": "a red bicycle", "options": {"seed": 5}})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = h.hive_wait(&id, WAIT).await;
    assert_eq!(done["status"][0]["status"]["message"], "SUCCESS");
    let backend = h.server().backend();
    let task_id: TaskId = id.parse().unwrap();
    let before = backend.tasks.get(task_id).await.unwrap().unwrap();
    let image_path = backend.images.root().join(&before.images[0].key);
    let modified_before = std::fs::metadata(&image_path).unwrap().modified().unwrap();

    // The queue delivers the job again (as SQS may): the worker must acknowledge it without work.
    backend.jobs.send(&Job { task_id }).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.queue_depth().0 > 0 {
        assert!(std::time::Instant::now() < deadline, "the duplicate job was not acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = backend.tasks.get(task_id).await.unwrap().unwrap();
    assert_eq!(after, before, "the finished task must not change");
    assert_eq!(std::fs::metadata(&image_path).unwrap().modified().unwrap(), modified_before, "no image rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_link_is_refused_when_tampered_with_or_pointed_at_another_image() {
    let h = Harness::start().await;
    let (_, task) = h.hive_submit(&json!({"text_data": "two pears", "options": {"num_images": 2, "seed": 9}})).await;
    let done = h.hive_wait(task["id"].as_str().unwrap(), WAIT).await;
    let urls = hive_image_urls(&done);
    assert_eq!(h.download(&urls[0]).await.0, 200);
    let other_image = urls[0].replace("/0.png?", "/1.png?");
    assert_eq!(h.download(&other_image).await.0, 403);
    let (path, query) = urls[0].split_once('?').unwrap();
    let unsigned = path.to_owned();
    assert_eq!(h.download(&unsigned).await.0, 403);
    let later = query.replacen("expires=", "expires=9", 1);
    assert_eq!(h.download(&format!("{path}?{later}")).await.0, 403);
}
