//! Bad input to the Hive dialect: each gets a Hive-shaped error with the right status that names
//! the field, and none creates a task.
#![allow(clippy::unwrap_used)]

use easel_tests::Harness;
use serde_json::{Value, json};

async fn raw_submit(h: &Harness, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = h.client.post(h.url("/api/v2/task/async")).header("content-type", "application/json").body(body);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_else(|e| panic!("status {status}: body is not JSON: {e}")))
}

fn assert_hive_error(status: u16, body: &Value, expected_status: u16, needle: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["return_code"], expected_status, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(needle), "message {message:?} should mention {needle:?}");
}

#[tokio::test]
async fn malformed_or_invalid_bodies_get_a_400_naming_the_field_and_create_nothing() {
    let h = Harness::start_without_worker().await;
    let token = format!("Token {}", h.key);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid JSON"),
        (b"[1, 2]".to_vec(), "JSON object"),
        (json!({}).to_string().into_bytes(), "text_data"),
        (json!({"text_data": ""}).to_string().into_bytes(), "text_data"),
        (json!({"text_data": "   "}).to_string().into_bytes(), "text_data"),
        (json!({"text_data": 42}).to_string().into_bytes(), "text_data"),
        (json!({"text_data": "x", "options": {"num_images": 0}}).to_string().into_bytes(), "options.num_images"),
        (json!({"text_data": "x", "options": {"num_images": 7}}).to_string().into_bytes(), "options.num_images"),
        (json!({"text_data": "x", "options": {"num_images": "3"}}).to_string().into_bytes(), "options.num_images"),
        (json!({"text_data": "x", "options": {"num_images": 2.5}}).to_string().into_bytes(), "options.num_images"),
        (json!({"text_data": "x", "callback_url": "example_url"}).to_string().into_bytes(), "callback_url"),
        (json!({"text_data": "x", "callback_url": "/relative/hook"}).to_string().into_bytes(), "callback_url"),
        (json!({"text_data": "x", "callback_url": "ftp://example.com/x"}).to_string().into_bytes(), "callback_url"),
    ];
    for (body, needle) in cases {
        let (status, resp) = raw_submit(&h, Some(&token), body).await;
        assert_hive_error(status, &resp, 400, needle);
    }
    assert_eq!(h.queue_depth(), (0, 0), "no bad request may queue a job");
}

#[tokio::test]
async fn a_body_over_one_mebibyte_gets_a_413() {
    let h = Harness::start_without_worker().await;
    let body = json!({"text_data": "x".repeat(1024 * 1024)}).to_string().into_bytes();
    let (status, resp) = raw_submit(&h, Some(&format!("Token {}", h.key)), body).await;
    assert_hive_error(status, &resp, 413, "too large");
    assert_eq!(h.queue_depth(), (0, 0));
}

#[tokio::test]
async fn a_missing_malformed_unknown_or_revoked_key_gets_a_401() {
    let h = Harness::start_without_worker().await;
    let body = || json!({"text_data": "a cat"}).to_string().into_bytes();
    let (status, resp) = raw_submit(&h, None, body()).await;
    assert_hive_error(status, &resp, 401, "authorization: Token");
    for malformed in ["Bearer abc", "Token", "abc", "Token a b"] {
        let (status, resp) = raw_submit(&h, Some(malformed), body()).await;
        assert_hive_error(status, &resp, 401, "malformed");
    }
    let (status, resp) = raw_submit(&h, Some("Token easel_sk_not_a_real_key"), body()).await;
    assert_hive_error(status, &resp, 401, "invalid API key");

    let backend = h.server().backend();
    let other = easel_core::keys::create_key(backend.keys.as_ref(), "to revoke").await.unwrap();
    easel_core::ports::KeyStore::revoke(backend.keys.as_ref(), &other.key.id, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let (status, resp) = raw_submit(&h, Some(&format!("Token {}", other.secret)), body()).await;
    assert_hive_error(status, &resp, 401, "revoked");
    assert_eq!(h.queue_depth(), (0, 0));
}

#[tokio::test]
async fn an_unknown_task_id_or_another_keys_task_is_a_404() {
    let h = Harness::start_without_worker().await;
    let (status, resp) = h.hive_status("0191d9a2-7c4f-7000-8000-000000000000").await;
    assert_hive_error(status, &resp, 404, "no task");
    let (status, resp) = h.hive_status("not-a-task-id").await;
    assert_hive_error(status, &resp, 404, "no task");

    let (_, task) = h.hive_submit(&json!({"text_data": "mine"})).await;
    let id = task["id"].as_str().unwrap();
    let other = easel_core::keys::create_key(h.server().backend().keys.as_ref(), "other").await.unwrap();
    let resp = h
        .client
        .get(h.url(&format!("/api/v2/task/{id}")))
        .header("authorization", format!("Token {}", other.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "a key must not see another key's task");
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let h = Harness::start_without_worker().await;
    let (status, task) = h
        .hive_submit(
            &json!({"text_data": "a boat", "metadata": "m", "options": {"num_images": 1, "future": 1}, "extra": [1]}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(h.queue_depth(), (1, 0));
}
