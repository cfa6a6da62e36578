//! Nothing is lost when the process stops or dies: queued and running tasks are completed by the
//! next process on the same data folder.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use easel_core::ports::{Claim, Queue, TaskStore};
use easel_core::task::TaskStatus;
use easel_tests::Harness;
use serde_json::json;
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_before_a_restart_is_completed_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Harness::start_in(tmp.path(), false).await;
    let (status, task) = first.hive_submit(&json!({"text_data": "a quiet harbour", "options": {"seed": 3}})).await;
    assert_eq!(status, 200);
    let id = task["id"].as_str().unwrap().to_owned();
    first.stop().await;

    let second = Harness::start_in(tmp.path(), true).await;
    assert_eq!(second.key, first.key, "the development key survives a restart");
    let done = second.hive_wait(&id, WAIT).await;
    assert_eq!(done["status"][0]["status"]["message"], "SUCCESS", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_worker_died_mid_run_is_redelivered_and_completed_on_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Harness::start_in(tmp.path(), false).await;
    let (_, task) = first.hive_submit(&json!({"text_data": "a windmill", "options": {"seed": 4}})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    {
        // Do what a worker does up to the moment it dies: receive the job and claim the task.
        let backend = first.server().backend();
        let deliveries = backend.jobs.receive(1, Duration::from_secs(600), Duration::from_secs(1)).await.unwrap();
        assert_eq!(deliveries.len(), 1);
        let claim = backend.tasks.claim(id.parse().unwrap(), Duration::from_secs(600), OffsetDateTime::now_utc()).await;
        assert!(matches!(claim.unwrap(), Claim::Claimed(_)));
    }
    first.stop().await;

    let second = Harness::start_in(tmp.path(), true).await;
    let done = second.hive_wait(&id, WAIT).await;
    assert_eq!(done["status"][0]["status"]["message"], "SUCCESS", "{done}");
    let task = second.server().backend().tasks.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.attempts, 2, "the dead worker's claim and the new one");
}
