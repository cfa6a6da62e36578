//! `easel-worker --poll`, the long-running form GPU hosts run, as a real process against the AWS
//! emulator: it runs queued jobs, stops on SIGTERM, and hands back a job it cannot finish in time.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use easel_core::ports::{Claim, Inserted, Job, Queue, TaskStore};
use easel_core::request::{Dialect, GenerationRequest};
use easel_core::task::{Task, TaskStatus};
use easel_testkit::moto::AwsEnv;
use easel_testkit::workspace_root;
use time::OffsetDateTime;

fn spawn_worker(env: &AwsEnv, grace_seconds: u32) -> Child {
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("easel-poll-{}.log", env.settings.table))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_easel-worker"))
        .arg("--poll")
        .current_dir(workspace_root())
        .env_clear()
        .envs(env.function_env())
        .env("EASEL_MODEL_DIR", workspace_root().join("models/tiny-sd"))
        .env("EASEL_MODERATION_MODEL", workspace_root().join(".easel/models/nudenet/320n.onnx"))
        .env("EASEL_SHUTDOWN_GRACE_SECONDS", grace_seconds.to_string())
        .env("EASEL_LEASE_SECONDS", "60")
        .envs(std::env::var("ORT_DYLIB_PATH").map(|p| ("ORT_DYLIB_PATH", p)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn terminate(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the worker did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn queue_task(env: &AwsEnv, images: u64, side: u32) -> Task {
    let request = GenerationRequest::new("a paper boat", side, side, (1..=images).collect());
    let task = Task::new("key_poll", Dialect::Hive, request, None, None, OffsetDateTime::now_utc());
    assert_eq!(env.backend.tasks.insert(&task).await.unwrap(), Inserted::New);
    env.backend.jobs.send(&Job { task_id: task.id }).await.unwrap();
    task
}

async fn wait_status(env: &AwsEnv, task: &Task, wanted: TaskStatus, within: Duration) -> Task {
    let deadline = Instant::now() + within;
    loop {
        let current = env.backend.tasks.get(task.id).await.unwrap().unwrap();
        if current.status == wanted {
            return current;
        }
        assert!(Instant::now() < deadline, "task still {} after {within:?}", current.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polling_worker_runs_queued_jobs_and_exits_cleanly_on_sigterm() {
    let env = AwsEnv::create(3).await;
    let mut worker = spawn_worker(&env, 20);
    let task = queue_task(&env, 1, 256).await;
    let done = wait_status(&env, &task, TaskStatus::Succeeded, Duration::from_secs(120)).await;
    assert_eq!(done.images.len(), 1);
    let jobs: Vec<_> = env.backend.jobs.receive(10, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap();
    assert!(jobs.is_empty(), "the finished job was deleted");
    terminate(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(10)).success());
    env.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_generation_hands_the_task_and_its_job_back_at_once() {
    let env = AwsEnv::create(3).await;
    let mut worker = spawn_worker(&env, 0);
    // Six 1024x1024 images keep the tiny model busy for seconds.
    let task = queue_task(&env, 6, 1024).await;
    wait_status(&env, &task, TaskStatus::Running, Duration::from_secs(120)).await;
    terminate(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());

    let left = env.backend.tasks.get(task.id).await.unwrap().unwrap();
    assert_eq!(left.status, TaskStatus::Running, "not failed, not canceled: handed back");
    let back = env.backend.jobs.receive(1, Duration::from_secs(60), Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 1, "the job is visible again without waiting out its visibility timeout");
    assert_eq!((back[0].message.task_id, back[0].receive_count), (task.id, 2));
    let now = OffsetDateTime::now_utc();
    assert!(
        matches!(env.backend.tasks.claim(task.id, Duration::from_secs(60), now).await.unwrap(), Claim::Claimed(_)),
        "the lease was released, so the next worker claims it at once"
    );
    env.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_its_moderation_model_stops_at_start_and_runs_nothing() {
    let env = AwsEnv::create(3).await;
    let task = queue_task(&env, 1, 256).await;
    let output = Command::new(env!("CARGO_BIN_EXE_easel-worker"))
        .arg("--poll")
        .current_dir(workspace_root())
        .env_clear()
        .envs(env.function_env())
        .env("EASEL_MODEL_DIR", workspace_root().join("models/tiny-sd"))
        .env("EASEL_MODERATION_MODEL", "/nonexistent/320n.onnx")
        .envs(std::env::var("ORT_DYLIB_PATH").map(|p| ("ORT_DYLIB_PATH", p)))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("moderation model") && log.contains("make setup"), "{log}");
    let left = env.backend.tasks.get(task.id).await.unwrap().unwrap();
    assert_eq!(left.status, TaskStatus::Queued, "no image was made without moderation");
    env.destroy().await;
}
