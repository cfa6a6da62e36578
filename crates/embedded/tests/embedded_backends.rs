//! The embedded adapters keep the contracts the use cases rely on: conditional task transitions,
//! SQS-like redelivery and dead-lettering, idempotent inserts.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use easel_core::ports::{Claim, Inserted, Job, Queue, TaskStore};
use easel_core::request::{Dialect, GenerationRequest};
use easel_core::task::{Completion, Progress, Task, TaskError, TaskStatus};
use easel_embedded::{EmbeddedBackend, EmbeddedOptions};
use time::OffsetDateTime;

fn open(dir: &std::path::Path, max_receives: u32) -> EmbeddedBackend {
    EmbeddedBackend::open(dir, &EmbeddedOptions { public_base_url: "http://127.0.0.1:9".into(), max_receives }).unwrap()
}

fn task(idempotency_key: Option<&str>) -> Task {
    Task::new(
        "key_a",
        Dialect::Hive,
        GenerationRequest {
            prompt: "a cat".into(),
            negative_prompt: None,
            width: 64,
            height: 64,
            steps: None,
            guidance: None,
            sampler: None,
            seeds: vec![1],
        },
        None,
        idempotency_key.map(str::to_owned),
        OffsetDateTime::now_utc(),
    )
}

const LEASE: Duration = Duration::from_secs(60);

fn failed() -> Completion {
    Completion::Failed { error: TaskError { code: "x".into(), message: "y".into() }, run: None, warnings: vec![] }
}

#[tokio::test]
async fn a_queued_task_can_be_claimed_once_and_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let t = task(None);
    assert_eq!(b.tasks.insert(&t).await.unwrap(), Inserted::New);
    let now = OffsetDateTime::now_utc();

    let Claim::Claimed(claimed) = b.tasks.claim(t.id, LEASE, now).await.unwrap() else { panic!("first claim") };
    assert_eq!((claimed.status, claimed.attempts), (TaskStatus::Running, 1));
    assert_eq!(b.tasks.claim(t.id, LEASE, now).await.unwrap(), Claim::NotClaimable(TaskStatus::Running));

    b.tasks.set_progress(t.id, Progress { step: 3, steps: 10 }).await.unwrap();
    assert_eq!(b.tasks.get(t.id).await.unwrap().unwrap().progress, Some(Progress { step: 3, steps: 10 }));

    let done = b.tasks.complete(t.id, failed(), now).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(b.tasks.complete(t.id, Completion::Canceled, now).await.unwrap(), None, "second completion refused");
    assert_eq!(b.tasks.claim(t.id, LEASE, now).await.unwrap(), Claim::NotClaimable(TaskStatus::Failed));
    assert!(!b.tasks.extend_lease(t.id, LEASE, now).await.unwrap(), "no lease on a finished task");
}

#[tokio::test]
async fn a_running_task_is_claimable_again_only_after_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let t = task(None);
    b.tasks.insert(&t).await.unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(matches!(b.tasks.claim(t.id, LEASE, now).await.unwrap(), Claim::Claimed(_)));
    let before_expiry = now + time::Duration::seconds(59);
    assert_eq!(b.tasks.claim(t.id, LEASE, before_expiry).await.unwrap(), Claim::NotClaimable(TaskStatus::Running));
    let after_expiry = now + time::Duration::seconds(61);
    let Claim::Claimed(again) = b.tasks.claim(t.id, LEASE, after_expiry).await.unwrap() else { panic!("reclaim") };
    assert_eq!(again.attempts, 2);
}

#[tokio::test]
async fn a_heartbeat_keeps_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let t = task(None);
    b.tasks.insert(&t).await.unwrap();
    let now = OffsetDateTime::now_utc();
    b.tasks.claim(t.id, LEASE, now).await.unwrap();
    let later = now + time::Duration::seconds(50);
    assert!(b.tasks.extend_lease(t.id, LEASE, later).await.unwrap());
    let after_first_lease = now + time::Duration::seconds(70);
    assert_eq!(b.tasks.claim(t.id, LEASE, after_first_lease).await.unwrap(), Claim::NotClaimable(TaskStatus::Running));
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_task() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let first = task(Some("abc"));
    assert_eq!(b.tasks.insert(&first).await.unwrap(), Inserted::New);
    let Inserted::Existing(existing) = b.tasks.insert(&task(Some("abc"))).await.unwrap() else { panic!("dedup") };
    assert_eq!(existing.id, first.id);
    assert_eq!(b.tasks.insert(&task(Some("other"))).await.unwrap(), Inserted::New);
}

#[tokio::test]
async fn an_unacknowledged_job_comes_back_after_its_visibility_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let job = Job { task_id: task(None).id };
    b.jobs.send(&job).await.unwrap();
    let vis = Duration::from_millis(300);
    let first = b.jobs.receive(10, vis, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].message, first[0].receive_count), (job, 1));
    assert!(b.jobs.receive(10, vis, Duration::ZERO).await.unwrap().is_empty(), "invisible while in flight");
    let again = b.jobs.receive(10, vis, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    b.jobs.ack(&first[0].receipt).await.unwrap();
    assert_eq!(b.jobs.depth().unwrap(), (1, 0), "a stale receipt deletes nothing");
    b.jobs.ack(&again[0].receipt).await.unwrap();
    assert_eq!(b.jobs.depth().unwrap(), (0, 0));
}

#[tokio::test]
async fn a_job_received_too_often_goes_to_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 2);
    b.jobs.send(&Job { task_id: task(None).id }).await.unwrap();
    for _ in 0..2 {
        assert_eq!(b.jobs.receive(1, Duration::ZERO, Duration::ZERO).await.unwrap().len(), 1);
    }
    assert!(b.jobs.receive(1, Duration::ZERO, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(b.jobs.depth().unwrap(), (0, 1));
}

#[tokio::test]
async fn a_waiting_receive_wakes_when_a_job_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let jobs = b.jobs.clone();
    let waiter = tokio::spawn(async move { jobs.receive(1, LEASE, Duration::from_secs(10)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    b.jobs.send(&Job { task_id: task(None).id }).await.unwrap();
    assert_eq!(waiter.await.unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn taking_ownership_releases_what_a_dead_process_held_and_excludes_a_second_owner() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 3);
    let t = task(None);
    b.tasks.insert(&t).await.unwrap();
    b.jobs.send(&Job { task_id: t.id }).await.unwrap();
    assert_eq!(b.jobs.receive(1, LEASE, Duration::ZERO).await.unwrap().len(), 1);
    b.tasks.claim(t.id, LEASE, OffsetDateTime::now_utc()).await.unwrap();

    let restarted = open(dir.path(), 3);
    let lock = restarted.take_ownership().unwrap();
    assert_eq!(restarted.jobs.receive(1, LEASE, Duration::ZERO).await.unwrap().len(), 1, "job visible again");
    assert!(matches!(restarted.tasks.claim(t.id, LEASE, OffsetDateTime::now_utc()).await.unwrap(), Claim::Claimed(_)));
    assert!(open(dir.path(), 3).take_ownership().is_err(), "one owner at a time");
    drop(lock);
    assert!(open(dir.path(), 3).take_ownership().is_ok());
}
