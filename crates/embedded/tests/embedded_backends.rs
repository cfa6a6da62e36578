//! What only the embedded adapters do: a waiting receive woken by a send in the same process, and
//! one owning process per data folder that releases what a dead one held. The contracts shared
//! with the AWS adapters are in `tests/tests/contracts.rs`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use easel_core::ports::{Claim, Job, Queue, TaskStore};
use easel_core::request::{Dialect, GenerationRequest};
use easel_core::task::Task;
use easel_embedded::{EmbeddedBackend, EmbeddedOptions};
use time::OffsetDateTime;

fn open(dir: &std::path::Path, max_receives: u32) -> EmbeddedBackend {
    EmbeddedBackend::open(
        dir,
        &EmbeddedOptions {
            public_base_url: "http://127.0.0.1:9".into(),
            max_receives,
            notice_max_receives: max_receives,
        },
    )
    .unwrap()
}

fn task(idempotency_key: Option<&str>) -> Task {
    Task::new(
        "key_a",
        Dialect::Hive,
        GenerationRequest::new("a cat", 64, 64, vec![1]),
        None,
        idempotency_key.map(str::to_owned),
        OffsetDateTime::now_utc(),
    )
}

const LEASE: Duration = Duration::from_secs(60);

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
