//! The api function as a real Lambda process under cargo-lambda's local runtime (`cargo lambda
//! watch`, the Lambda Runtime API emulator): the runtime loop, the environment-driven AWS
//! configuration (`AWS_ENDPOINT_URL` → moto) and API Gateway payload v2 conversion end to end.
//! Prints the function's init time (its cold start without the download of the package).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use easel_core::keys::create_key;
use easel_core::ports::TaskStore;
use easel_tests::moto::AwsEnv;
use easel_tests::workspace_root;
use serde_json::{Value, json};

struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cargo_lambda() -> std::path::PathBuf {
    let path = workspace_root().join(".easel/tools/bin/cargo-lambda");
    assert!(path.is_file(), "cargo-lambda is not installed; run `make setup-test`");
    path
}

fn start_watch(env: &AwsEnv, port: u16) -> Watch {
    let tools = workspace_root().join(".easel/tools/bin");
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new(cargo_lambda());
    // `cargo test` gives this process its package's CARGO_* variables; build scripts of the
    // dependencies track some of them, so a nested cargo that inherits them would rebuild half
    // the dependency tree on every run. The nested cargo gets the environment `make test` has.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR") || name == "OUT_DIR" {
            command.env_remove(name.as_ref());
        }
    }
    let mut child = command
        .args(["lambda", "watch", "--ignore-changes", "-A", "127.0.0.1", "-P", &port.to_string()])
        .current_dir(workspace_root())
        .env("PATH", path)
        .envs(env.function_env())
        .env("EASEL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    Watch { child, lines }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_function_serves_a_hive_submission_under_the_lambda_runtime_emulator() {
    let env = AwsEnv::create(3).await;
    let key = create_key(env.backend.keys.as_ref(), "watch").await.unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let watch = start_watch(&env, port);
    let base = format!("http://127.0.0.1:{port}/lambda-url/easel-api");
    let client = reqwest::Client::new();

    // The emulator listens at once; the first invocation builds (if needed) and starts the function.
    let deadline = Instant::now() + Duration::from_secs(600);
    let first = Instant::now();
    let health = loop {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(resp) if resp.status().as_u16() != 502 && resp.status().as_u16() != 404 => break resp,
            _ => {}
        }
        assert!(Instant::now() < deadline, "cargo lambda watch did not serve the function in time");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(health.status(), 200);
    let first_ms = first.elapsed().as_millis();

    let submit = json!({"text_data": "a kite over dunes", "options": {"num_images": 2}});
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/api/v2/task/async"))
        .header("authorization", format!("Token {}", key.secret))
        .json(&submit)
        .send()
        .await
        .unwrap();
    let warm_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let task = env.backend.tasks.get(body["id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(task.request.num_images(), 2);
    let jobs = easel_aws::provision::queue_depth(&env.sdk, &env.jobs.queue).await.unwrap();
    assert_eq!(jobs, 1, "the api function queued the job in SQS");

    let refused = client.post(format!("{base}/api/v2/task/async")).json(&submit).send().await.unwrap();
    assert_eq!(refused.status(), 401, "no key: the dialect's own error, not a runtime failure");

    let init_ms: Option<f64> = watch.lines.try_iter().find_map(|line| {
        let start = line.find('{')?;
        let v: Value = serde_json::from_str(&line[start..]).ok()?;
        v["fields"]["init_ms"].as_f64()
    });
    let init_ms = init_ms.expect("the function logged its init time");
    println!(
        "api function under cargo lambda watch: init {init_ms:.1} ms; first response {first_ms} ms (build check + start + init); warm submit {warm_ms:.1} ms"
    );
    drop(watch);
    env.destroy().await;
}
