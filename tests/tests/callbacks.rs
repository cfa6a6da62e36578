//! Callbacks from the local server to a receiver on 127.0.0.1: signed with Standard Webhooks
//! headers that the reference verifier from PyPI (`standardwebhooks`, tests/webhooks/verify.py)
//! accepts, in each dialect's shape, with two signatures while a rotated secret is in its grace
//! period, and every attempt recorded on the task.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use easel_core::ports::KeyStore;
use easel_testkit::lambda::{CallbackReceiver, Received};
use easel_testkit::workspace_root;
use easel_tests::Harness;
use serde_json::{Value, json};

async fn wait_for_callbacks(receiver: &CallbackReceiver, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let received = receiver.received();
        if received.len() >= n {
            return received;
        }
        assert!(Instant::now() < deadline, "only {} of {n} callbacks arrived", received.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the reference verifier over `(secret, callback)` cases; one verdict line per case.
async fn verify(cases: &[(&str, &Received, Option<&[u8]>)]) -> Vec<String> {
    let python = workspace_root().join(".easel/tools/bin/python");
    assert!(python.exists(), "{} is missing; run `bash infra/setup.sh --test-tools`", python.display());
    let mut input = String::new();
    for (secret, received, body_override) in cases {
        let headers: serde_json::Map<String, Value> =
            received.headers.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap()))).collect();
        let body = body_override.unwrap_or(&received.raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        input.push_str(&json!({"secret": secret, "headers": headers, "body_b64": b64}).to_string());
        input.push('\n');
    }
    let mut child = tokio::process::Command::new(python)
        .arg(workspace_root().join("tests/webhooks/verify.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).await.unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_callback_is_signed_so_that_the_reference_verifier_accepts_it_and_refuses_a_forgery() {
    let h = Harness::start().await;
    let receiver = CallbackReceiver::start().await;
    let key = h.server().backend().keys.list().await.unwrap().remove(0);
    let (status, task) =
        h.hive_submit(&json!({"text_data": "a red fox", "options": {"seed": 3}, "callback_url": receiver.url})).await;
    assert_eq!(status, 200, "{task}");
    let received = wait_for_callbacks(&receiver, 1).await.remove(0);

    // Hive's task object, with the image objects {index, width, height, url}.
    assert_eq!(received.body["id"], task["id"]);
    assert_eq!(received.body["status"][0]["status"]["message"], "SUCCESS");
    let image = &received.body["status"][0]["response"]["output"][0]["images"][0];
    assert_eq!(
        (image["index"].as_u64(), image["width"].as_u64(), image["height"].as_u64()),
        (Some(0), Some(1024), Some(1024))
    );
    let (code, png) = h.download(image["url"].as_str().unwrap()).await;
    assert_eq!((code, &png[1..4]), (200, b"PNG".as_slice()), "the URL in the callback serves the image");

    let id = received.headers["webhook-id"].to_str().unwrap().to_owned();
    assert_eq!(id, format!("msg_{}", task["id"].as_str().unwrap().replace('-', "")));
    let timestamp: i64 = received.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    assert!((time::OffsetDateTime::now_utc().unix_timestamp() - timestamp).abs() < 120);
    let mut forged = received.raw.clone();
    forged.extend_from_slice(b" ");
    let other = easel_core::keys::generate_key("other", time::OffsetDateTime::now_utc()).key.callback_secret;
    let verdicts = verify(&[
        (&key.callback_secret, &received, None),
        (&key.callback_secret, &received, Some(&forged)),
        (&other, &received, None),
    ])
    .await;
    assert_eq!(verdicts[0], "verified", "{verdicts:?}");
    assert!(verdicts[1].starts_with("rejected"), "a changed body must not verify: {verdicts:?}");
    assert!(verdicts[2].starts_with("rejected"), "another key's secret must not verify: {verdicts:?}");

    // The delivery is on the task, without the receiver's body.
    let doc = wait_for_callback_status(&h, &task["id"], "delivered").await;
    let deliveries = doc["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{doc}");
    assert_eq!(deliveries[0]["status"], 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_callbacks_carry_the_new_and_the_old_signature_until_the_grace_period_ends() {
    let h = Harness::start().await;
    let receiver = CallbackReceiver::start().await;
    let keys = &h.server().backend().keys;
    let old = keys.list().await.unwrap().remove(0);
    let now = time::OffsetDateTime::now_utc();
    let rotated = easel_core::keys::rotate_callback_secret(keys.as_ref(), &old.id, Duration::from_secs(3600), now)
        .await
        .unwrap()
        .unwrap();
    let body = json!({"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", "callback_url": receiver.url});
    let (status, _, answer) =
        h.post("/v1/images/generations", &[("Authorization", format!("Bearer {}", h.key))], &body).await;
    assert_eq!(status, 200, "{answer}");
    let received = wait_for_callbacks(&receiver, 1).await.remove(0);
    // The OpenAI dialect's callback body is the neutral task document.
    assert_eq!(received.body["dialect"], "openai");
    assert_eq!(received.body["status"], "succeeded");
    assert_eq!(received.body["images"][0]["width"], 256);
    let signatures = received.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    let verdicts =
        verify(&[(&rotated.callback_secret, &received, None), (&old.callback_secret, &received, None)]).await;
    assert_eq!(verdicts, vec!["verified", "verified"], "receivers on either secret accept it");

    // Past the grace period only the new secret signs.
    easel_core::keys::rotate_callback_secret(keys.as_ref(), &old.id, Duration::ZERO, now).await.unwrap().unwrap();
    let current = keys.get(&old.id).await.unwrap().unwrap();
    let body = json!({"prompt": "a harbour", "width": 320, "height": 320, "steps": 10, "callback_url": receiver.url});
    let (status, _, answer) =
        h.post("/api/generate/basic/textToImage", &[("Authorization", h.key.clone())], &body).await;
    assert_eq!(status, 200, "{answer}");
    let received = wait_for_callbacks(&receiver, 2).await.remove(1);
    assert_eq!(received.body["dialect"], "stability");
    assert_eq!(received.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 1);
    let verdicts =
        verify(&[(&current.callback_secret, &received, None), (&rotated.callback_secret, &received, None)]).await;
    assert_eq!(verdicts[0], "verified");
    assert!(verdicts[1].starts_with("rejected"), "{verdicts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_url_the_guard_refuses_is_answered_at_submission_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = easel_tests::serve_config(tmp.path());
    config.outbound = easel_tests::test_guard(false);
    let h = Harness::start_with(config, false).await;
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/",
        "https://u:p@example.com/",
        "http://example.com/hook",
        "http://127.0.0.1:9/hook",
    ] {
        let (status, body) = h.hive_submit(&json!({"text_data": "x", "callback_url": url})).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(body["message"].as_str().unwrap().contains("callback_url is refused"), "{url}: {body}");
    }
    assert_eq!(h.queue_depth().0, 0, "nothing was queued");
}

/// A server whose failed callbacks are retried quickly: `attempts` in all, 300 ms apart.
fn quick_retries(dir: &std::path::Path, attempts: usize) -> easel_cli::local::ServeConfig {
    let mut config = easel_tests::serve_config(dir);
    config.callback_schedule =
        easel_core::notify::RetrySchedule { delays: vec![Duration::from_millis(300); attempts - 1] };
    config.callback_in_flight = Duration::from_secs(1);
    config.outbound = easel_tests::test_guard_within(true, Duration::from_millis(700));
    config
}

async fn task_doc(h: &Harness, id: &Value) -> Value {
    h.get_json(&format!("/v1/tasks/{}", id.as_str().unwrap())).await.1
}

async fn wait_for_callback_status(h: &Harness, id: &Value, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = task_doc(h, id).await;
        if doc["callback_status"] == want {
            return doc;
        }
        assert!(Instant::now() < deadline, "callback_status never became {want}: {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_callback_is_retried_with_the_same_webhook_id_and_retry_after_is_honoured() {
    use easel_testkit::lambda::Scripted;
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::start_with(quick_retries(tmp.path(), 4), true).await;
    let receiver = CallbackReceiver::start().await;
    receiver.script(&[
        Scripted::status(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        Scripted { retry_after: Some(2), ..Scripted::status(axum::http::StatusCode::TOO_MANY_REQUESTS) },
    ]);
    let (_, task) = h.hive_submit(&json!({"text_data": "x", "callback_url": receiver.url})).await;
    let doc = wait_for_callback_status(&h, &task["id"], "delivered").await;
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let ids: Vec<_> = received.iter().map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let deliveries = doc["deliveries"].as_array().unwrap();
    let statuses: Vec<_> = deliveries.iter().map(|d| d["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![500, 429, 204]);
    assert_eq!(deliveries[1]["retry_after_secs"], 2);
    assert_eq!(deliveries[0]["error_class"], "status");
    let at = |i: usize| {
        time::OffsetDateTime::parse(
            deliveries[i]["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(at(2) - at(1) >= time::Duration::seconds(2), "the 429's Retry-After was honoured: {doc}");
    assert!(at(1) - at(0) < time::Duration::seconds(2), "the schedule's own delay is short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_stops_the_callback_and_a_receiver_that_times_out_is_tried_until_the_dead_letter_queue() {
    use easel_testkit::lambda::Scripted;
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::start_with(quick_retries(tmp.path(), 3), true).await;
    let gone = CallbackReceiver::start().await;
    gone.answer_with(axum::http::StatusCode::GONE);
    let (_, task) = h.hive_submit(&json!({"text_data": "x", "callback_url": gone.url})).await;
    let doc = wait_for_callback_status(&h, &task["id"], "failed").await;
    assert_eq!(doc["deliveries"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["deliveries"][0]["gave_up"], true);

    let slow = CallbackReceiver::start().await;
    let stall = Scripted { delay: Duration::from_secs(3), ..Scripted::status(axum::http::StatusCode::NO_CONTENT) };
    slow.script(&[stall, stall, stall]);
    let (_, task) = h.hive_submit(&json!({"text_data": "y", "callback_url": slow.url})).await;
    let doc = wait_for_callback_status(&h, &task["id"], "failed").await;
    let classes: Vec<_> = doc["deliveries"].as_array().unwrap().iter().map(|d| d["error_class"].clone()).collect();
    assert_eq!(classes, vec![json!("timeout"); 3], "{doc}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gone.received().len(), 1, "nothing follows a 410");
    let (visible, dead) = h.server().backend().notices.depth().unwrap();
    assert_eq!((visible, dead), (0, 1), "the exhausted notice is in the dead-letter queue, the 410 one is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_stopped_between_attempts_delivers_once_restarted_with_the_same_webhook_id() {
    use easel_testkit::lambda::Scripted;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = quick_retries(tmp.path(), 4);
    config.callback_schedule = easel_core::notify::RetrySchedule { delays: vec![Duration::from_secs(2); 3] };
    let mut h = Harness::start_with(config.clone(), true).await;
    let receiver = CallbackReceiver::start().await;
    receiver.script(&[Scripted::status(axum::http::StatusCode::SERVICE_UNAVAILABLE)]);
    let (_, task) = h.hive_submit(&json!({"text_data": "x", "callback_url": receiver.url})).await;
    wait_for_callbacks(&receiver, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_doc(&h, &task["id"]).await["deliveries"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the first attempt was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed between attempts: the server's tasks are aborted, nothing is shut down cleanly.
    drop(h.server.take());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);

    let h = Harness::start_with(config, false).await;
    let doc = wait_for_callback_status(&h, &task["id"], "delivered").await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "delivered once after the restart");
    assert_eq!(received[0].headers["webhook-id"], received[1].headers["webhook-id"]);
    let statuses: Vec<_> = doc["deliveries"].as_array().unwrap().iter().map(|d| d["status"].as_u64()).collect();
    assert_eq!(statuses, vec![Some(503), Some(204)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_callback_is_sent_again_on_request_with_the_same_webhook_id() {
    let h = Harness::start().await;
    let receiver = CallbackReceiver::start().await;
    let (_, task) = h.hive_submit(&json!({"text_data": "x", "callback_url": receiver.url})).await;
    wait_for_callbacks(&receiver, 1).await;
    let path = format!("/v1/tasks/{}/callbacks/redeliver", task["id"].as_str().unwrap());
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let (code, _, answer) = h.post(&path, &auth, &json!({})).await;
    assert_eq!(code, 202, "{answer}");
    let received = wait_for_callbacks(&receiver, 2).await;
    assert_eq!(received[1].headers["webhook-id"], received[0].headers["webhook-id"]);
    assert_eq!(answer["webhook_id"], received[0].headers["webhook-id"].to_str().unwrap());
    assert_eq!(received[1].body["id"], task["id"]);
    // The receiver answers before the notifier records the attempt: wait for the record.
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_doc(&h, &task["id"]).await["deliveries"].as_array().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the redelivery was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(task_doc(&h, &task["id"]).await["callback_status"], "delivered");

    // A task without a callback URL, another key's task, an unknown id.
    let (_, plain) = h.hive_submit(&json!({"text_data": "x"})).await;
    let plain_path = format!("/v1/tasks/{}/callbacks/redeliver", plain["id"].as_str().unwrap());
    let (code, _, e) = h.post(&plain_path, &auth, &json!({})).await;
    assert_eq!((code, e["error"]["code"].as_str()), (409, Some("not_redeliverable")), "{e}");
    let other = easel_core::keys::create_key(h.server().backend().keys.as_ref(), "other").await.unwrap();
    let (code, _, _) = h.post(&path, &[("authorization", format!("Bearer {}", other.secret))], &json!({})).await;
    assert_eq!(code, 404, "another key's task is not found");
    assert_eq!(receiver.received().len(), 2);
}
