//! Contract suites: one set of tests per port, written once against the traits of `easel-core`
//! and run against every adapter (`tests/tests/contracts.rs`): the embedded ones (SQLite, files)
//! and the AWS ones (DynamoDB, SQS, S3 on the emulator).

use std::sync::Arc;
use std::time::Duration;

use easel_core::keys::{ApiKey, generate_key};
use easel_core::ports::{Claim, ImageStore, Inserted, Job, JobQueue, KeyStore, TaskStore};
use easel_core::request::{Dialect, GenerationRequest};
use easel_core::task::{CallbackAttempt, Completion, ImageRecord, Progress, RunRecord, Task, TaskError, TaskStatus};
use easel_core::usage::{DailyUsage, Usage};
use easel_embedded::{EmbeddedBackend, EmbeddedOptions};
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::moto::AwsEnv;

/// A job received this many times goes to the dead-letter queue, in every fixture.
pub const MAX_RECEIVES: u32 = 2;

/// The ports under test, and what the contracts need to look behind them.
#[allow(missing_debug_implementations)]
pub struct Ports {
    pub tasks: Arc<dyn TaskStore>,
    pub jobs: Arc<JobQueue>,
    pub images: Arc<dyn ImageStore>,
    pub keys: Arc<dyn KeyStore>,
    pub backend: Backend,
}

#[allow(missing_debug_implementations)]
pub enum Backend {
    Embedded { backend: EmbeddedBackend, _dir: tempfile::TempDir, _server: tokio::task::JoinHandle<()> },
    Aws(Box<AwsEnv>),
}

impl Ports {
    /// Embedded adapters in a fresh data folder, with the local file route serving image URLs.
    pub async fn embedded() -> Ports {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let backend = EmbeddedBackend::open(
            dir.path(),
            &EmbeddedOptions { public_base_url: base, max_receives: MAX_RECEIVES, notice_max_receives: MAX_RECEIVES },
        )
        .unwrap();
        let files = easel_cli::local::files_router(backend.images.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, files).await;
        });
        Ports {
            tasks: backend.tasks.clone(),
            jobs: backend.jobs.clone(),
            images: backend.images.clone(),
            keys: backend.keys.clone(),
            backend: Backend::Embedded { backend, _dir: dir, _server: server },
        }
    }

    /// AWS adapters on fresh resources in the emulator.
    pub async fn aws() -> Ports {
        let env = AwsEnv::create(MAX_RECEIVES).await;
        Ports {
            tasks: env.backend.tasks.clone(),
            jobs: env.backend.jobs.clone(),
            images: env.backend.images.clone(),
            keys: env.backend.keys.clone(),
            backend: Backend::Aws(Box::new(env)),
        }
    }

    /// Messages in the jobs dead-letter queue.
    pub async fn dead_lettered_jobs(&self) -> u64 {
        match &self.backend {
            Backend::Embedded { backend, .. } => backend.jobs.depth().unwrap().1,
            Backend::Aws(env) => easel_aws::provision::queue_depth(&env.sdk, &env.jobs.dead_letter).await.unwrap(),
        }
    }

    pub async fn cleanup(self) {
        if let Backend::Aws(env) = self.backend {
            env.destroy().await;
        }
    }
}

pub fn request() -> GenerationRequest {
    GenerationRequest {
        negative_prompt: Some("blurry".into()),
        steps: Some(4),
        guidance: Some(7.5),
        ..GenerationRequest::new("a lighthouse at dusk", 64, 64, vec![11, 12])
    }
}

pub fn new_task(key_id: &str, idempotency_key: Option<&str>) -> Task {
    Task::new(
        key_id,
        Dialect::Hive,
        request(),
        Some("http://127.0.0.1:9/hook".into()),
        idempotency_key.map(str::to_owned),
        OffsetDateTime::now_utc(),
    )
}

fn succeeded(task: &Task) -> Completion {
    Completion::Succeeded {
        images: vec![ImageRecord {
            index: 0,
            key: format!("images/{}/0.png", task.id),
            width: 64,
            height: 64,
            seed: 11,
            bytes: 3,
        }],
        run: RunRecord {
            model_id: "tiny".into(),
            model_hash: "abc".into(),
            sampler: "K_EULER".into(),
            steps: 4,
            guidance: 7.5,
            unet_calls: 8,
        },
        warnings: vec!["prompt truncated".into()],
        generate_ms: 12,
        moderation: easel_core::moderation::ModerationRecord { model: "none".into(), images: vec![] },
    }
}

const LEASE: Duration = Duration::from_secs(60);

// ---- TaskStore ----

pub async fn a_task_reads_back_exactly_as_inserted(p: &Ports) {
    let task = new_task("key_a", None);
    assert_eq!(p.tasks.insert(&task).await.unwrap(), Inserted::New);
    assert_eq!(p.tasks.get(task.id).await.unwrap(), Some(task));
    assert_eq!(p.tasks.get(new_task("key_a", None).id).await.unwrap(), None);
}

pub async fn the_same_idempotency_key_of_the_same_api_key_returns_the_first_task(p: &Ports) {
    let first = new_task("key_a", Some("order-1"));
    assert_eq!(p.tasks.insert(&first).await.unwrap(), Inserted::New);
    let Inserted::Existing(existing) = p.tasks.insert(&new_task("key_a", Some("order-1"))).await.unwrap() else {
        panic!("a second insert with the same idempotency key must return the first task")
    };
    assert_eq!(existing.id, first.id);
    assert_eq!(p.tasks.insert(&new_task("key_b", Some("order-1"))).await.unwrap(), Inserted::New, "other API key");
    assert_eq!(
        p.tasks.insert(&new_task("key_a", Some("order-2"))).await.unwrap(),
        Inserted::New,
        "other idempotency key"
    );
}

pub async fn of_two_concurrent_claims_exactly_one_wins(p: &Ports) {
    let task = new_task("key_a", None);
    p.tasks.insert(&task).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let (a, b) = tokio::join!(p.tasks.claim(task.id, LEASE, now), p.tasks.claim(task.id, LEASE, now));
    let outcomes = [a.unwrap(), b.unwrap()];
    let winners = outcomes.iter().filter(|c| matches!(c, Claim::Claimed(_))).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    assert!(outcomes.contains(&Claim::NotClaimable(TaskStatus::Running)), "{outcomes:?}");
    let stored = p.tasks.get(task.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts), (TaskStatus::Running, 1));
    assert!(stored.started_at.is_some());
}

pub async fn a_running_task_is_claimed_again_only_after_its_lease_expires(p: &Ports) {
    let task = new_task("key_a", None);
    p.tasks.insert(&task).await.unwrap();
    let t0 = OffsetDateTime::now_utc();
    assert!(matches!(p.tasks.claim(task.id, LEASE, t0).await.unwrap(), Claim::Claimed(_)));
    let during = t0 + Duration::from_secs(30);
    assert_eq!(p.tasks.claim(task.id, LEASE, during).await.unwrap(), Claim::NotClaimable(TaskStatus::Running));
    // A heartbeat pushes the lease out; after it runs out, a new worker takes over.
    assert!(p.tasks.extend_lease(task.id, LEASE, during).await.unwrap());
    let old_expiry = t0 + Duration::from_secs(61);
    assert_eq!(p.tasks.claim(task.id, LEASE, old_expiry).await.unwrap(), Claim::NotClaimable(TaskStatus::Running));
    let after = during + Duration::from_secs(61);
    let Claim::Claimed(again) = p.tasks.claim(task.id, LEASE, after).await.unwrap() else { panic!("lease expired") };
    assert_eq!(again.attempts, 2);
    assert_eq!(again.started_at, p.tasks.get(task.id).await.unwrap().unwrap().started_at, "first start kept");
}

pub async fn a_task_completes_once_and_only_while_running(p: &Ports) {
    let task = new_task("key_a", None);
    p.tasks.insert(&task).await.unwrap();
    let now = OffsetDateTime::now_utc();
    assert_eq!(p.tasks.complete(task.id, succeeded(&task), now).await.unwrap(), None, "queued: not running yet");
    p.tasks.claim(task.id, LEASE, now).await.unwrap();
    let done = p.tasks.complete(task.id, succeeded(&task), now).await.unwrap().expect("running → succeeded");
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.images.len(), 1);
    assert_eq!(done.warnings, vec!["prompt truncated".to_owned()]);
    let failed = Completion::Failed {
        error: TaskError { code: "generation_failed".into(), message: "late".into() },
        run: None,
        warnings: vec![],
    };
    assert_eq!(p.tasks.complete(task.id, failed, now).await.unwrap(), None, "a second terminal write is refused");
    assert_eq!(p.tasks.claim(task.id, LEASE, now).await.unwrap(), Claim::NotClaimable(TaskStatus::Succeeded));
    assert_eq!(p.tasks.get(task.id).await.unwrap(), Some(done));
}

pub async fn a_queued_or_running_task_is_canceled_but_a_finished_one_stays_as_it_is(p: &Ports) {
    let now = OffsetDateTime::now_utc();
    let queued = new_task("key_a", None);
    p.tasks.insert(&queued).await.unwrap();
    let canceled = p.tasks.cancel(queued.id, now).await.unwrap().expect("queued → canceled");
    assert_eq!((canceled.status, canceled.usage), (TaskStatus::Canceled, None));
    assert!(canceled.finished_at.is_some());
    assert_eq!(p.tasks.claim(queued.id, LEASE, now).await.unwrap(), Claim::NotClaimable(TaskStatus::Canceled));

    let running = new_task("key_a", None);
    p.tasks.insert(&running).await.unwrap();
    p.tasks.claim(running.id, LEASE, now).await.unwrap();
    assert_eq!(p.tasks.cancel(running.id, now).await.unwrap().unwrap().status, TaskStatus::Canceled);
    // Its worker's progress, heartbeat and late result are refused: nothing is charged.
    assert!(!p.tasks.set_progress(running.id, Progress { step: 1, steps: 2 }).await.unwrap());
    assert!(!p.tasks.extend_lease(running.id, LEASE, now).await.unwrap());
    assert_eq!(p.tasks.complete(running.id, succeeded(&running), now).await.unwrap(), None);
    assert_eq!(p.tasks.usage("key_a", now.date(), now.date()).await.unwrap(), vec![]);

    let finished = new_task("key_a", None);
    p.tasks.insert(&finished).await.unwrap();
    p.tasks.claim(finished.id, LEASE, now).await.unwrap();
    let done = p.tasks.complete(finished.id, succeeded(&finished), now).await.unwrap().unwrap();
    assert_eq!(p.tasks.cancel(finished.id, now).await.unwrap(), Some(done), "a finished task is left alone");
    assert_eq!(p.tasks.cancel(new_task("key_a", None).id, now).await.unwrap(), None);
}

pub async fn a_key_is_charged_once_per_succeeded_task_by_day_and_never_for_a_failure(p: &Ports) {
    let day = OffsetDateTime::now_utc();
    let next_day = day + Duration::from_secs(86_400);
    let finish = |key: &'static str, at: OffsetDateTime, images: usize, fail: bool| async move {
        let task = new_task(key, None);
        p.tasks.insert(&task).await.unwrap();
        p.tasks.claim(task.id, LEASE, at).await.unwrap();
        let completion = if fail {
            Completion::Failed {
                error: TaskError { code: "generation_failed".into(), message: "boom".into() },
                run: None,
                warnings: vec![],
            }
        } else {
            let Completion::Succeeded { images: one, run, warnings, generate_ms, moderation } = succeeded(&task) else {
                unreachable!()
            };
            Completion::Succeeded { images: vec![one[0].clone(); images], run, warnings, generate_ms, moderation }
        };
        p.tasks.complete(task.id, completion, at).await.unwrap().unwrap()
    };
    // Each image of the fixture (64×64, 4 steps) costs the minimum, 0.4 credits.
    let one = finish("key_a", day, 1, false).await;
    assert_eq!(one.usage, Some(Usage { images: 1, millicredits: 400 }));
    let two = finish("key_a", day, 2, false).await;
    assert_eq!(two.usage, Some(Usage { images: 2, millicredits: 800 }));
    let failed = finish("key_a", day, 1, true).await;
    assert_eq!(failed.usage, None, "a failed task costs nothing");
    finish("key_a", next_day, 1, false).await;
    finish("key_b", day, 1, false).await;
    // A repeated terminal write (a redelivered job) charges nothing more.
    assert_eq!(p.tasks.complete(one.id, succeeded(&one), day).await.unwrap(), None);

    let usage = |key: &'static str, from: OffsetDateTime, to: OffsetDateTime| async move {
        // The AWS store reads usage through an index, which is eventually consistent.
        p.tasks.usage(key, from.date(), to.date()).await.unwrap()
    };
    let daily =
        |at: OffsetDateTime, tasks, images, millicredits| DailyUsage { day: at.date(), tasks, images, millicredits };
    assert_eq!(usage("key_a", day, next_day).await, vec![daily(day, 2, 3, 1_200), daily(next_day, 1, 1, 400)]);
    assert_eq!(
        usage("key_a", next_day, next_day + Duration::from_secs(86_400)).await,
        vec![daily(next_day, 1, 1, 400)]
    );
    assert_eq!(usage("key_a", day - Duration::from_secs(5 * 86_400), day - Duration::from_secs(86_400)).await, vec![]);
    assert_eq!(usage("key_b", day, next_day).await, vec![daily(day, 1, 1, 400)]);
    assert_eq!(usage("key_c", day, next_day).await, vec![]);
}

pub async fn progress_and_heartbeats_apply_only_to_running_tasks(p: &Ports) {
    let task = new_task("key_a", None);
    p.tasks.insert(&task).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let progress = Progress { step: 3, steps: 10 };
    assert!(!p.tasks.extend_lease(task.id, LEASE, now).await.unwrap(), "queued");
    assert!(!p.tasks.set_progress(task.id, progress).await.unwrap(), "queued");
    assert_eq!(p.tasks.get(task.id).await.unwrap().unwrap().progress, None, "queued tasks have no progress");
    p.tasks.claim(task.id, LEASE, now).await.unwrap();
    assert!(p.tasks.set_progress(task.id, progress).await.unwrap(), "running");
    assert_eq!(p.tasks.get(task.id).await.unwrap().unwrap().progress, Some(progress));
    p.tasks.complete(task.id, Completion::Canceled, now).await.unwrap();
    assert!(!p.tasks.extend_lease(task.id, LEASE, now).await.unwrap(), "finished");
    let missing = new_task("key_a", None).id;
    assert_eq!(p.tasks.claim(missing, LEASE, now).await.unwrap(), Claim::Missing);
    assert!(!p.tasks.extend_lease(missing, LEASE, now).await.unwrap());
}

pub async fn callback_attempts_are_appended_in_order(p: &Ports) {
    let task = new_task("key_a", None);
    p.tasks.insert(&task).await.unwrap();
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let refused = CallbackAttempt {
        at,
        status: None,
        error: Some("could not connect".into()),
        error_class: Some("connect".into()),
        retry_after_secs: None,
        duration_ms: 3,
        gave_up: false,
    };
    let accepted = CallbackAttempt {
        at,
        status: Some(204),
        error: None,
        error_class: None,
        retry_after_secs: None,
        duration_ms: 9,
        gave_up: false,
    };
    assert!(p.tasks.record_delivery(task.id, refused.clone()).await.unwrap());
    assert!(p.tasks.record_delivery(task.id, accepted.clone()).await.unwrap());
    assert_eq!(p.tasks.get(task.id).await.unwrap().unwrap().deliveries, vec![refused, accepted]);
    assert!(
        !p.tasks
            .record_delivery(
                new_task("key_a", None).id,
                CallbackAttempt {
                    at,
                    status: Some(200),
                    error: None,
                    error_class: None,
                    retry_after_secs: None,
                    duration_ms: 1,
                    gave_up: false,
                }
            )
            .await
            .unwrap()
    );
}

// ---- Queue ----

pub async fn an_unacknowledged_job_comes_back_after_its_visibility_timeout(p: &Ports) {
    let job = Job { task_id: new_task("key_a", None).id };
    p.jobs.send(&job).await.unwrap();
    let visibility = Duration::from_secs(1);
    let first = p.jobs.receive(10, visibility, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].message, first[0].receive_count), (job, 1));
    assert!(p.jobs.receive(10, visibility, Duration::ZERO).await.unwrap().is_empty(), "invisible while in flight");
    let again = p.jobs.receive(10, visibility, Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!((again[0].message, again[0].receive_count), (job, 2));
    p.jobs.ack(&again[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(p.jobs.receive(10, visibility, Duration::ZERO).await.unwrap().is_empty(), "acknowledged: gone");
}

pub async fn extending_a_job_keeps_it_hidden_and_zero_hands_it_back(p: &Ports) {
    let job = Job { task_id: new_task("key_a", None).id };
    p.jobs.send(&job).await.unwrap();
    let got = p.jobs.receive(1, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    p.jobs.extend(&got[0].receipt, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(p.jobs.receive(1, Duration::from_secs(1), Duration::ZERO).await.unwrap().is_empty(), "still hidden");
    p.jobs.extend(&got[0].receipt, Duration::ZERO).await.unwrap();
    let back = p.jobs.receive(1, Duration::from_secs(30), Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 1, "visible again at once");
    assert_eq!(back[0].message, job);
}

pub async fn a_job_received_too_often_goes_to_the_dead_letter_queue(p: &Ports) {
    p.jobs.send(&Job { task_id: new_task("key_a", None).id }).await.unwrap();
    for n in 1..=MAX_RECEIVES {
        let got = p.jobs.receive(1, Duration::from_secs(1), Duration::from_secs(3)).await.unwrap();
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].receive_count, n);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(p.jobs.receive(1, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap().is_empty());
    assert_eq!(p.dead_lettered_jobs().await, 1);
}

// ---- ImageStore ----

pub async fn a_stored_image_reads_back_and_its_url_serves_it_over_http(p: &Ports) {
    let key = format!("images/{}/0.png", new_task("key_a", None).id);
    let png = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
    p.images.put_png(&key, png.clone()).await.unwrap();
    assert_eq!(p.images.get(&key).await.unwrap(), Some(png.clone()));
    assert_eq!(p.images.get("images/none/0.png").await.unwrap(), None);
    let url = p.images.url(&key, Duration::from_secs(3600)).await.unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);
}

/// Expiry: the embedded store refuses an expired link itself. The emulator does not check
/// presigned signatures or expiry at all (moto answers 200 either way), so for S3 the contract is
/// the URL's SigV4 form: signed, and `X-Amz-Expires` equal to the lifetime asked for. Real S3
/// enforces that; the deployment guide has the manual check.
pub async fn an_image_url_stops_working_when_it_expires(p: &Ports) {
    let key = format!("images/{}/0.png", new_task("key_a", None).id);
    p.images.put_png(&key, b"png".to_vec()).await.unwrap();
    let url = p.images.url(&key, Duration::from_secs(1)).await.unwrap();
    match &p.backend {
        Backend::Embedded { .. } => {
            tokio::time::sleep(Duration::from_millis(2100)).await;
            assert_eq!(reqwest::get(&url).await.unwrap().status(), 403, "{url}");
            let mut forged = url::Url::parse(&url).unwrap();
            let expires = OffsetDateTime::now_utc().unix_timestamp() + 3600;
            let pairs: Vec<(String, String)> = forged
                .query_pairs()
                .map(|(k, v)| (k.to_string(), if k == "expires" { expires.to_string() } else { v.to_string() }))
                .collect();
            forged.query_pairs_mut().clear().extend_pairs(pairs);
            assert_eq!(
                reqwest::get(forged.as_str()).await.unwrap().status(),
                403,
                "a later expiry needs a new signature"
            );
        }
        Backend::Aws(_) => {
            let parsed = url::Url::parse(&url).unwrap();
            let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
            assert_eq!(query.get("X-Amz-Expires").map(String::as_str), Some("1"), "{url}");
            assert_eq!(query.get("X-Amz-Algorithm").map(String::as_str), Some("AWS4-HMAC-SHA256"));
            assert!(query.get("X-Amz-Signature").is_some_and(|s| s.len() == 64), "{url}");
        }
    }
}

// ---- KeyStore ----

pub async fn keys_are_found_by_secret_hash_listed_and_revoked(p: &Ports) {
    let now = OffsetDateTime::now_utc();
    let a = generate_key("first", now);
    let b = generate_key("second", now + Duration::from_secs(1));
    p.keys.insert(&a.key).await.unwrap();
    p.keys.insert(&b.key).await.unwrap();
    assert_eq!(p.keys.find_by_hash(&a.key.secret_hash).await.unwrap(), Some(a.key.clone()));
    assert_eq!(p.keys.find_by_hash("0".repeat(64).as_str()).await.unwrap(), None);
    let listed: Vec<ApiKey> = p.keys.list().await.unwrap();
    assert_eq!(listed, vec![a.key.clone(), b.key.clone()], "oldest first");
    assert!(p.keys.revoke(&a.key.id, now).await.unwrap());
    assert!(p.keys.revoke(&a.key.id, now).await.unwrap(), "revoking twice is fine");
    assert!(!p.keys.revoke("key_missing", now).await.unwrap());
    let revoked = p.keys.find_by_hash(&a.key.secret_hash).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(p.keys.find_by_hash(&b.key.secret_hash).await.unwrap().unwrap().is_active());
}

pub async fn a_rotated_callback_secret_signs_beside_the_new_one_until_its_grace_period_ends(p: &Ports) {
    let now = OffsetDateTime::now_utc();
    let new = generate_key("rotating", now);
    p.keys.insert(&new.key).await.unwrap();
    assert_eq!(p.keys.get(&new.key.id).await.unwrap(), Some(new.key.clone()));
    assert_eq!(p.keys.get("key_missing").await.unwrap(), None);
    let grace = Duration::from_secs(3600);
    let rotated =
        easel_core::keys::rotate_callback_secret(p.keys.as_ref(), &new.key.id, grace, now).await.unwrap().unwrap();
    assert_ne!(rotated.callback_secret, new.key.callback_secret);
    let stored = p.keys.find_by_hash(&new.key.secret_hash).await.unwrap().unwrap();
    assert_eq!(stored, rotated, "the secret still authenticates and the record carries both callback secrets");
    assert_eq!(stored.signing_secrets(now), vec![rotated.callback_secret.as_str(), new.key.callback_secret.as_str()]);
    assert_eq!(stored.signing_secrets(now + grace), vec![rotated.callback_secret.as_str()]);
    let missing = easel_core::keys::rotate_callback_secret(p.keys.as_ref(), "key_missing", grace, now).await;
    assert_eq!(missing.unwrap(), None);
}
