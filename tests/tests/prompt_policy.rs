//! The prompt policy, end to end through the local server: a refused prompt gets each dialect's
//! error naming the policy (never the word), and nothing is stored, queued or charged; negative
//! prompts are checked only when the server is configured to.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use easel_core::prompt_policy::PromptPolicy;
use easel_tests::{Harness, serve_config};
use serde_json::json;

fn assert_names_the_policy_not_the_word(message: &str, word: &str) {
    assert!(message.contains("prompt policy `sexual-content`"), "{message}");
    assert!(!message.to_lowercase().contains(word), "the refused word is not echoed: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prompt_gets_each_dialects_error_and_nothing_is_queued() {
    let h = Harness::start_without_worker().await;

    let (code, e) = h.hive_submit(&json!({"text_data": "a N.U.D.3 figure on a beach"})).await;
    assert_eq!((code, e["return_code"].as_u64()), (400, Some(400)), "{e}");
    assert_names_the_policy_not_the_word(e["message"].as_str().unwrap(), "nud");

    let bearer = [("authorization", format!("Bearer {}", h.key))];
    let (code, _, e) = h.post("/v1/images/generations", &bearer, &json!({"prompt": "pornographic art"})).await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["error"]["code"], "content_policy_violation", "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert_eq!(e["error"]["param"], "prompt", "{e}");
    assert_names_the_policy_not_the_word(e["error"]["message"].as_str().unwrap(), "porn");

    let body = json!({"prompt": "a naked man", "width": 512, "height": 512});
    let (code, _, e) = h.post("/api/generate/basic/textToImage", &[("authorization", h.key.clone())], &body).await;
    assert_eq!((code, e["code"].as_i64()), (400, Some(-1)), "{e}");
    assert_names_the_policy_not_the_word(e["message"].as_str().unwrap(), "naked");

    assert_eq!(h.queue_depth(), (0, 0), "no job was queued");
    let (_, usage) = h.get_json("/v1/usage").await;
    assert_eq!(usage["total"]["tasks"], 0, "{usage}");

    let (code, task) = h.hive_submit(&json!({"text_data": "a nudge in the right direction"})).await;
    assert_eq!(code, 200, "an ordinary word containing a term is accepted: {task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_prompts_are_refused_only_when_the_server_checks_them() {
    let h = Harness::start_without_worker().await;
    let careful = json!({"text_data": "a portrait", "options": {"neg_text": "nsfw, nudity"}});
    let (code, e) = h.hive_submit(&careful).await;
    assert_eq!(code, 200, "by default a negative prompt may name what must not appear: {e}");

    let tmp = tempfile::tempdir().unwrap();
    let mut config = serve_config(tmp.path());
    config.prompt_policy = Arc::new(PromptPolicy::default().checking_negative(true));
    let strict = Harness::start_with(config, false).await;
    let (code, e) = strict.hive_submit(&careful).await;
    assert_eq!(code, 400, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with("the negative prompt was refused"), "{message}");
    let bearer = [("authorization", format!("Bearer {}", strict.key))];
    let body = json!({"prompt": "a portrait", "negative_prompt": "nudity"});
    let (code, _, e) = strict.post("/v1/images/generations", &bearer, &body).await;
    assert_eq!((code, e["error"]["param"].as_str()), (400, Some("negative_prompt")), "{e}");
}
