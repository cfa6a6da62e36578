//! `DELETE /v1/tasks/{id}` through the real local server: a queued task is canceled at once, a
//! running one stops between denoising steps (its worker moves on), a finished one is left alone,
//! and nothing canceled is charged.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use easel_tests::Harness;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BASIC: &str = "/api/generate/basic/textToImage";

async fn delete(h: &Harness, id: &str, key: &str) -> (u16, Value) {
    let resp = h.client.delete(h.url(&format!("/v1/tasks/{id}"))).bearer_auth(key).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn submit_async(h: &Harness, body: Value) -> String {
    let headers = [("authorization", h.key.clone()), ("prefer", "respond-async".to_owned())];
    let (code, _, answer) = h.post(BASIC, &headers, &body).await;
    assert_eq!(code, 202, "{answer}");
    answer["data"]["task_id"].as_str().unwrap().to_owned()
}

async fn wait_until(h: &Harness, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, task) = h.get_json(&format!("/v1/tasks/{id}")).await;
        if done(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "{task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn at(task: &Value, field: &str) -> OffsetDateTime {
    OffsetDateTime::parse(task[field].as_str().unwrap(), &Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_is_canceled_at_once_and_only_by_its_own_key() {
    let h = Harness::start_without_worker().await;
    let id = submit_async(&h, json!({"prompt": "x", "width": 320, "height": 320})).await;
    let other = easel_core::keys::create_key(h.server().backend().keys.as_ref(), "other").await.unwrap();
    assert_eq!(delete(&h, &id, &other.secret).await.0, 404, "another key's task is not found");
    let (code, task) = delete(&h, &id, &h.key).await;
    assert_eq!((code, task["status"].as_str()), (200, Some("canceled")), "{task}");
    assert!(task["finished_at"].is_string() && task["usage"].is_null(), "{task}");
    let (code, again) = delete(&h, &id, &h.key).await;
    assert_eq!((code, again["status"].as_str()), (200, Some("canceled")), "canceling twice is harmless");
    assert_eq!(delete(&h, "not-a-task", &h.key).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_stops_between_steps_and_a_finished_one_cannot_be_canceled() {
    let h = Harness::start().await;
    // 50 steps at 1536x1536: seconds of work on the tiny model.
    let long = submit_async(&h, json!({"prompt": "x", "width": 1536, "height": 1536, "steps": 50, "seed": 1})).await;
    let running = wait_until(&h, &long, |t| t["progress"]["step"].as_u64().is_some_and(|s| s >= 2)).await;
    let (code, canceled) = delete(&h, &long, &h.key).await;
    let canceled_at = OffsetDateTime::now_utc();
    assert_eq!((code, canceled["status"].as_str()), (200, Some("canceled")), "{canceled}");
    let steps_done = canceled["progress"]["step"].as_u64().unwrap().max(2);
    assert!(steps_done < 40, "the task was nearly done before it was canceled: {canceled}");
    let per_step = (canceled_at - at(&running, "started_at")) / steps_done as u32;

    // The worker is free again long before the remaining steps could have run.
    let short = submit_async(&h, json!({"prompt": "x", "width": 320, "height": 320, "steps": 10})).await;
    let done = wait_until(&h, &short, |t| t["status"] == "succeeded").await;
    let freed_after = at(&done, "started_at") - canceled_at;
    let remaining = per_step * (50 - steps_done) as u32;
    assert!(
        freed_after < remaining / 4,
        "the worker went on for {freed_after} after the cancel (the rest: {remaining})"
    );

    // The canceled task stays canceled and uncharged; the finished one cannot be canceled.
    let (_, long_task) = h.get_json(&format!("/v1/tasks/{long}")).await;
    assert_eq!((long_task["status"].as_str(), long_task["usage"].is_null()), (Some("canceled"), true), "{long_task}");
    let (code, refused) = delete(&h, &short, &h.key).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "already_finished");
    assert_eq!(refused["task"]["status"], "succeeded");
    let (_, usage) = h.get_json("/v1/usage").await;
    assert_eq!(usage["total"]["images"], 1, "only the finished task is charged: {usage}");
}
