//! The three Lambda functions, fed real event JSON, against the AWS emulator (moto): an API
//! Gateway v2 request into the api function, the SQS message it queued into the worker, the
//! notice the worker queued into the notifier, and the callback into a local receiver.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use easel_aws::provision;
use easel_core::keys::create_key;
use easel_core::ports::{ImageStore, Inserted, Queue, TaskStore};
use easel_core::request::Dialect;
use easel_core::task::{Task, TaskStatus};
use easel_tests::lambda::{CallbackReceiver, SqsRecord, apigw_event, sqs_event};
use easel_tests::moto::{AwsEnv, moto};
use easel_tests::{contract, decode_png, tiny_model, tiny_model_dir};
use lambda_http::request::LambdaRequest;
use lambda_http::tower::Service as _;
use lambda_http::{Adapter, Context, LambdaEvent};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn lookup(env: &AwsEnv, extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let mut vars: HashMap<String, String> = env.function_env().into_iter().collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    move |name| vars.get(name).cloned()
}

/// Invokes the api function's handler the way `lambda_http::run` does; returns the v2 response.
async fn invoke_api(router: axum::Router, event: Value) -> Value {
    let request: LambdaRequest = serde_json::from_value(event).unwrap();
    let mut adapter = Adapter::from(router);
    let response = adapter.call(LambdaEvent::new(request, Context::default())).await.unwrap();
    serde_json::to_value(response).unwrap()
}

fn response_body(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap()).unwrap()
}

/// Receives everything waiting in a queue, as event records (the event source mapping's view).
async fn drain(env: &AwsEnv, url: &str) -> Vec<SqsRecord> {
    provision::receive_raw(&env.sdk, url, 10, Duration::from_secs(1))
        .await
        .unwrap()
        .into_iter()
        .map(|(body, receipt, message_id)| SqsRecord { message_id, receipt, body, receive_count: 1 })
        .collect()
}

/// The worker's engines as the function loads them: the tiny model and NudeNet.
fn engines() -> easel_fn_worker::Engines {
    easel_fn_worker::Engines { generator: tiny_model(), moderator: easel_tests::nudenet() }
}

fn worker_handler(env: &AwsEnv, sdk: &easel_aws::SdkConfig) -> easel_fn_worker::JobHandler {
    let model = tiny_model_dir();
    let moderation = easel_tests::moderation_model().to_string_lossy().into_owned();
    let config = easel_fn_worker::Config::from_lookup(&lookup(
        env,
        &[("EASEL_MODEL_DIR", model.to_str().unwrap()), ("EASEL_MODERATION_MODEL", &moderation)],
    ))
    .unwrap();
    easel_fn_worker::JobHandler::new(easel_fn_worker::worker(&config, sdk, engines()))
}

fn notifier_handler(env: &AwsEnv) -> easel_fn_notifier::NoticeHandler {
    let config = easel_fn_notifier::Config::from_lookup(&lookup(env, &[])).unwrap();
    easel_fn_notifier::NoticeHandler::new(&config, &env.sdk).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_task_flows_from_the_api_function_through_the_worker_and_notifier_to_its_callback() {
    let env = AwsEnv::create(3).await;
    let receiver = CallbackReceiver::start().await;
    let key = create_key(env.backend.keys.as_ref(), "e2e").await.unwrap();
    let api_config = easel_fn_api::Config::from_lookup(&lookup(&env, &[])).unwrap();
    let api = easel_fn_api::app(&api_config, &env.sdk);

    // 1. API Gateway → api function: the task is queued in DynamoDB and its job in SQS.
    let submit = json!({"text_data": "a red fox in snow", "options": {"num_images": 1, "seed": 7}, "callback_url": receiver.url});
    let auth = format!("Token {}", key.secret);
    let response =
        invoke_api(api.clone(), apigw_event("POST", "/api/v2/task/async", &[("authorization", &auth)], Some(&submit)))
            .await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let task_id = response_body(&response)["id"].as_str().unwrap().to_owned();
    let stored = env.backend.tasks.get(task_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Queued);
    let jobs = drain(&env, &env.jobs.queue).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&jobs[0].body).unwrap(), json!({"task_id": task_id}));

    // 2. SQS → worker function: queued → running → succeeded, the PNG in the bucket.
    let worker = worker_handler(&env, &env.sdk);
    let done = worker.handle(sqs_event(&jobs)).await;
    assert!(done.batch_item_failures.is_empty(), "{done:?}");
    env.backend.jobs.ack(&jobs[0].receipt).await.unwrap(); // what the event source mapping does on success
    let finished = env.backend.tasks.get(task_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(finished.status, TaskStatus::Succeeded, "{:?}", finished.error);
    assert_eq!((finished.attempts, finished.images.len()), (1, 1));
    assert!(finished.started_at.is_some() && finished.timings.queued_ms.is_some());
    // DynamoDB's TTL (which the emulator never runs) will delete the item after the retention.
    assert_eq!(provision::ttl_attribute(&env.sdk, &env.settings.table).await.unwrap().as_deref(), Some("expires_at"));
    let expires_at =
        provision::item_number(&env.sdk, &env.settings.table, &format!("task#{task_id}"), "expires_at").await.unwrap();
    assert_eq!(expires_at, Some((finished.created_at + env.settings.retention).unix_timestamp()));
    let png = env.backend.images.get(&finished.images[0].key).await.unwrap().expect("the PNG is in the bucket");
    let (width, height, _) = decode_png(&png);
    assert_eq!((width, height), (1024, 1024));

    // The status endpoint, through the api function, hands out a presigned URL that serves it.
    let status = invoke_api(
        api.clone(),
        apigw_event("GET", &format!("/api/v2/task/{task_id}"), &[("authorization", &auth)], None),
    )
    .await;
    assert_eq!(status["statusCode"], 200, "{status}");
    let status = response_body(&status);
    let url = status["status"][0]["response"]["output"][0]["images"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&moto().endpoint) && url.contains("X-Amz-Signature="), "{url}");
    assert_eq!(reqwest::get(&url).await.unwrap().bytes().await.unwrap().to_vec(), png);

    // The key's usage, through the api function (DynamoDB usage item, read through the index).
    let usage = invoke_api(api.clone(), apigw_event("GET", "/v1/usage", &[("authorization", &auth)], None)).await;
    assert_eq!(usage["statusCode"], 200, "{usage}");
    let usage = response_body(&usage);
    assert_eq!(usage["total"]["tasks"], 1, "{usage}");
    assert_eq!(usage["total"]["images"], 1, "{usage}");

    // 3. SQS → notifier function → the callback receiver, with a fresh URL to the same bytes.
    let notices = drain(&env, &env.notices.queue).await;
    assert_eq!(notices.len(), 1, "one notice for the task's callback");
    let notified = notifier_handler(&env).handle(sqs_event(&notices)).await;
    assert!(notified.batch_item_failures.is_empty(), "{notified:?}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["content-type"], "application/json");
    let body = &received[0].body;
    assert_eq!(body["id"], task_id.as_str());
    assert_eq!(body["status"][0]["status"]["message"], "SUCCESS");
    let callback_url = body["status"][0]["response"]["output"][0]["images"][0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(callback_url).await.unwrap().bytes().await.unwrap().to_vec(), png);
    let delivered = env.backend.tasks.get(task_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(delivered.deliveries.len(), 1);
    assert_eq!(delivered.deliveries[0].status, Some(204));

    // A redelivered notice for a delivered task posts nothing again.
    let again = notifier_handler(&env).handle(sqs_event(&notices)).await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(receiver.received().len(), 1);
    env.destroy().await;
}

fn queued_task(callback: Option<&str>) -> Task {
    let mut task = contract::new_task("key_x", None);
    task.dialect = Dialect::Hive;
    task.callback_url = callback.map(str::to_owned);
    task
}

fn job_record(message_id: &str, body: String, receive_count: u32) -> SqsRecord {
    SqsRecord { message_id: message_id.into(), receipt: format!("receipt-{message_id}"), body, receive_count }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_lists_only_transient_failures_and_fails_a_task_on_its_last_receive() {
    let env = AwsEnv::create(3).await;
    let (retried, exhausted) = (queued_task(None), queued_task(None));
    for t in [&retried, &exhausted] {
        assert_eq!(env.backend.tasks.insert(t).await.unwrap(), Inserted::New);
    }
    // A worker whose bucket does not exist: storing the images fails, a transient failure.
    let mut broken = env.settings.clone();
    broken.bucket = format!("{}-missing", broken.bucket);
    let model = tiny_model_dir();
    let moderation = easel_tests::moderation_model().to_string_lossy().into_owned();
    let mut config = easel_fn_worker::Config::from_lookup(&lookup(
        &env,
        &[("EASEL_MODEL_DIR", model.to_str().unwrap()), ("EASEL_MODERATION_MODEL", &moderation)],
    ))
    .unwrap();
    config.aws = broken;
    let handler = easel_fn_worker::JobHandler::new(easel_fn_worker::worker(&config, &env.sdk, engines()));

    let job = |t: &Task| json!({"task_id": t.id}).to_string();
    let batch = sqs_event(&[
        job_record("m-garbage", "{not json".into(), 1),
        job_record("m-unknown", json!({"task_id": contract::new_task("k", None).id}).to_string(), 1),
        job_record("m-retry", job(&retried), 1),
        job_record("m-last", job(&exhausted), 3),
    ]);
    let response = handler.handle(batch).await;
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    assert_eq!(failed, vec!["m-retry"], "only the transient failure with receives left comes back");

    let retried = env.backend.tasks.get(retried.id).await.unwrap().unwrap();
    assert_eq!(retried.status, TaskStatus::Running);
    let now = OffsetDateTime::now_utc();
    assert!(
        matches!(
            env.backend.tasks.claim(retried.id, Duration::from_secs(60), now).await.unwrap(),
            easel_core::ports::Claim::Claimed(_)
        ),
        "its lease was released, so the redelivery can claim it at once"
    );
    let exhausted = env.backend.tasks.get(exhausted.id).await.unwrap().unwrap();
    assert_eq!(exhausted.status, TaskStatus::Failed);
    assert_eq!(exhausted.error.unwrap().code, "generation_failed");
    env.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_retries_a_refused_callback_and_records_every_attempt() {
    let env = AwsEnv::create(3).await;
    let receiver = CallbackReceiver::start().await;
    let key = easel_core::keys::create_key(env.backend.keys.as_ref(), "hooks").await.unwrap().key;
    let mut task = queued_task(Some(&receiver.url));
    task.key_id = key.id.clone();
    env.backend.tasks.insert(&task).await.unwrap();
    let now = OffsetDateTime::now_utc();
    env.backend.tasks.claim(task.id, Duration::from_secs(60), now).await.unwrap();
    env.backend.tasks.complete(task.id, easel_core::task::Completion::Canceled, now).await.unwrap();
    let handler = notifier_handler(&env);
    let notice = json!({"task_id": task.id}).to_string();

    receiver.answer_with(StatusCode::INTERNAL_SERVER_ERROR);
    let batch = sqs_event(&[
        job_record("n-garbage", "[]".into(), 1),
        job_record("n-unknown", json!({"task_id": contract::new_task("k", None).id}).to_string(), 1),
        job_record("n-task", notice.clone(), 1),
    ]);
    let response = handler.handle(batch).await;
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    assert_eq!(failed, vec!["n-task"]);

    receiver.answer_with(StatusCode::OK);
    let response = handler.handle(sqs_event(&[job_record("n-task", notice, 2)])).await;
    assert!(response.batch_item_failures.is_empty());
    let statuses: Vec<Option<u16>> =
        env.backend.tasks.get(task.id).await.unwrap().unwrap().deliveries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(200)]);
    assert_eq!(receiver.received().len(), 2);
    assert_eq!(receiver.received()[1].body["status"][0]["status"]["message"], "CANCELED");
    let ids: Vec<_> = receiver.received().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids[0], ids[1], "a retry carries the same webhook-id");
    assert!(receiver.received()[1].headers["webhook-signature"].to_str().unwrap().starts_with("v1,"));

    // A task whose key is gone is not posted unsigned: the attempt is recorded and not retried.
    let mut orphan = queued_task(Some(&receiver.url));
    orphan.key_id = "key_deleted".into();
    env.backend.tasks.insert(&orphan).await.unwrap();
    env.backend.tasks.claim(orphan.id, Duration::from_secs(60), now).await.unwrap();
    env.backend.tasks.complete(orphan.id, easel_core::task::Completion::Canceled, now).await.unwrap();
    let notice = json!({"task_id": orphan.id}).to_string();
    let response = handler.handle(sqs_event(&[job_record("n-orphan", notice, 1)])).await;
    assert!(response.batch_item_failures.is_empty());
    let attempt = env.backend.tasks.get(orphan.id).await.unwrap().unwrap().deliveries.remove(0);
    assert_eq!(attempt.error_class.as_deref(), Some("signing"), "{attempt:?}");
    assert_eq!(receiver.received().len(), 2, "nothing unsigned was sent");
    env.destroy().await;
}

#[test]
fn a_function_missing_its_settings_names_every_missing_variable() {
    let err = easel_fn_worker::Config::from_lookup(&|_| None).unwrap_err().to_string();
    for name in [
        "EASEL_TABLE",
        "EASEL_JOBS_QUEUE_URL",
        "EASEL_NOTICES_QUEUE_URL",
        "EASEL_BUCKET",
        "EASEL_MODEL_DIR",
        "EASEL_MODERATION_MODEL",
    ] {
        assert!(err.contains(name), "{err}");
    }
    let err = easel_fn_api::Config::from_lookup(&|name| (name == "EASEL_RETENTION_DAYS").then(|| "soon".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("EASEL_RETENTION_DAYS=\"soon\" is not a whole number of days"), "{err}");
    assert!(err.contains("EASEL_NOTICES_QUEUE_URL"), "the api function queues callback redeliveries: {err}");
    let err = easel_fn_notifier::Config::from_lookup(&|_| None).unwrap_err().to_string();
    assert!(err.contains("EASEL_NOTICES_QUEUE_URL"), "the notifier puts failed callbacks off: {err}");
    let bad = |name: &str| (name == "EASEL_CALLBACK_RETRY_DELAYS").then(|| "5,soon".to_owned());
    let err = easel_fn_notifier::Config::from_lookup(&bad).unwrap_err().to_string();
    assert!(err.contains("EASEL_CALLBACK_RETRY_DELAYS must be seconds"), "{err}");
    let err = easel_fn_worker::Config::from_lookup(&|name| (name == "EASEL_DEVICE").then(|| "gpu".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("EASEL_DEVICE=\"gpu\" is not a device (cpu, cuda or cuda:N)"), "{err}");
}
