//! What each dialect answers when image moderation rejects a task, end to end through the local
//! server, with a moderator that flags every image plugged into the worker's port: Hive fails the
//! task with its 451 error (and calls back with it), OpenAI answers `content_policy_violation`,
//! basic textToImage answers `code: -1`. No image is stored and nothing is charged.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use easel_core::generator::GeneratedImage;
use easel_core::moderation::{ImageVerdict, ModerationError, Moderator};
use easel_core::ports::ImageStore;
use easel_testkit::lambda::CallbackReceiver;
use easel_tests::{Harness, serve_config};
use serde_json::{Value, json};

/// Flags every image, with a score per class as a detector would report.
#[derive(Debug)]
struct FlagEveryImage;

impl Moderator for FlagEveryImage {
    fn model_id(&self) -> &str {
        "test-flag-every-image"
    }

    fn moderate(&self, image: &GeneratedImage) -> Result<ImageVerdict, ModerationError> {
        assert!(!image.rgb.is_empty(), "the moderator sees the pixels");
        let scores = BTreeMap::from([("FEMALE_BREAST_EXPOSED".to_owned(), 0.91), ("FACE_FEMALE".to_owned(), 0.4)]);
        Ok(ImageVerdict {
            flagged: true,
            scores,
            reasons: vec!["FEMALE_BREAST_EXPOSED 0.91 ≥ 0.50".into()],
            detections: vec![],
        })
    }
}

async fn flagging_server(tmp: &tempfile::TempDir) -> Harness {
    let mut config = serve_config(tmp.path());
    config.moderator = Arc::new(FlagEveryImage);
    Harness::start_with(config, true).await
}

async fn assert_not_stored_nor_charged(h: &Harness, task_id: &str, images: u32) {
    let (_, doc) = h.get_json(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(doc["status"], "rejected", "{doc}");
    assert_eq!(doc["usage"], Value::Null, "{doc}");
    assert_eq!(doc["images"], json!([]), "{doc}");
    assert_eq!(doc["error"]["code"], "content_policy_violation", "{doc}");
    assert_eq!(doc["moderation"]["model"], "test-flag-every-image");
    let judged = doc["moderation"]["images"].as_array().unwrap();
    assert_eq!(judged.len(), images as usize, "every image was judged: {doc}");
    assert_eq!(judged[0]["flagged"], true);
    assert!(judged[0]["scores"]["FEMALE_BREAST_EXPOSED"].as_f64().unwrap() > 0.9);
    let store = &h.server().backend().images;
    for index in 0..images {
        let key = easel_core::worker::image_key(task_id.parse().unwrap(), index);
        assert_eq!(store.get(&key).await.unwrap(), None, "a rejected image is never stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_fails_a_rejected_task_with_its_451_error_and_calls_back_with_it_free_of_charge() {
    let tmp = tempfile::tempdir().unwrap();
    let h = flagging_server(&tmp).await;
    let receiver = CallbackReceiver::start().await;
    let (_, task) = h
        .hive_submit(&json!({"text_data": "a person", "options": {"num_images": 2}, "callback_url": receiver.url}))
        .await;
    let id = task["id"].as_str().unwrap();
    let done = h.hive_wait(id, Duration::from_secs(120)).await;
    assert_eq!(
        done["status"][0]["status"],
        json!({"code": "451", "message": "Images did not pass moderation filters."})
    );
    assert_eq!(done["status"][0]["response"]["output"], json!([]));
    assert_eq!(done["status"][0]["response"]["input"]["charge"], 0);
    assert!(done["error"].as_str().unwrap().contains("did not pass moderation"), "{done}");
    assert_not_stored_nor_charged(&h, id, 2).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no callback for the rejected task");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let callback = &receiver.received()[0].body;
    assert_eq!(callback["status"][0]["status"]["code"], "451", "{callback}");
    let (_, usage) = h.get_json("/v1/usage").await;
    assert_eq!(usage["total"], json!({"tasks": 0, "images": 0, "credits": 0.0}), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_answers_content_policy_violation_and_basic_answers_code_minus_one() {
    let tmp = tempfile::tempdir().unwrap();
    let h = flagging_server(&tmp).await;
    let (code, headers, e) = h
        .post(
            "/v1/images/generations",
            &[("authorization", format!("Bearer {}", h.key))],
            &json!({"prompt": "a person", "size": "256x256"}),
        )
        .await;
    assert_eq!((code, e["error"]["code"].as_str()), (400, Some("content_policy_violation")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("nothing was charged"), "{e}");
    assert_not_stored_nor_charged(&h, headers["x-easel-task-id"].to_str().unwrap(), 1).await;

    let body = json!({"prompt": "a person", "width": 320, "height": 320, "steps": 10});
    let (code, headers, e) =
        h.post("/api/generate/basic/textToImage", &[("authorization", h.key.clone())], &body).await;
    assert_eq!((code, e["code"].as_i64(), &e["data"]), (400, Some(-1), &Value::Null), "{e}");
    assert!(e["message"].as_str().unwrap().contains("moderation"), "{e}");
    assert_not_stored_nor_charged(&h, headers["x-easel-task-id"].to_str().unwrap(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_detector_judges_every_image_and_records_each_classs_score() {
    let h = Harness::start().await;
    let (_, task) = h.hive_submit(&json!({"text_data": "a lighthouse", "options": {"num_images": 2}})).await;
    h.hive_wait(task["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    let (_, doc) = h.get_json(&format!("/v1/tasks/{}", task["id"].as_str().unwrap())).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert!(doc["moderation"]["model"].as_str().unwrap().starts_with("nudenet:320n@"), "{doc}");
    let judged = doc["moderation"]["images"].as_array().unwrap();
    assert_eq!(judged.len(), 2);
    for image in judged {
        assert_eq!(image["flagged"], false, "{image}");
        let scores = image["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 18, "NudeNet's 18 classes: {image}");
        assert!(scores.values().all(|s| (0.0..=1.0).contains(&s.as_f64().unwrap())), "{image}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_detector_with_a_low_threshold_on_a_benign_class_rejects_the_task_in_every_dialect() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = serve_config(tmp.path());
    // The tiny model draws noise; any score above a millionth on FACE_FEMALE flags it.
    let policy = easel_core::moderation::ClassThresholds::parse("FACE_FEMALE=0.000001").unwrap();
    config.moderator = easel_tests::nudenet_with(policy);
    let h = Harness::start_with(config, true).await;

    let (_, task) = h.hive_submit(&json!({"text_data": "a lighthouse"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = h.hive_wait(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"][0]["status"]["code"], "451", "{done}");
    let (_, doc) = h.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!((doc["status"].as_str(), doc["usage"].is_null()), (Some("rejected"), true), "{doc}");
    let reason = doc["moderation"]["images"][0]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("FACE_FEMALE "), "{doc}");
    let key = easel_core::worker::image_key(id.parse().unwrap(), 0);
    assert_eq!(h.server().backend().images.get(&key).await.unwrap(), None, "a rejected image is never stored");

    let body = json!({"prompt": "a lighthouse", "size": "256x256"});
    let (code, _, e) = h.post("/v1/images/generations", &[("authorization", format!("Bearer {}", h.key))], &body).await;
    assert_eq!((code, e["error"]["code"].as_str()), (400, Some("content_policy_violation")), "{e}");

    let body = json!({"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 4});
    let (code, _, e) = h.post("/api/generate/basic/textToImage", &[("authorization", h.key.clone())], &body).await;
    assert_eq!((code, e["code"].as_i64()), (400, Some(-1)), "{e}");
    let (_, usage) = h.get_json("/v1/usage").await;
    assert_eq!(usage["total"]["images"], 0, "{usage}");
}
