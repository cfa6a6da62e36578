//! `easel serve` as a user runs it: a real process, killed and restarted.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    /// Starts `easel serve` from the workspace root (so it finds `.easel/onnxruntime` on its own)
    /// and waits for `/healthz`. Returns it with the time it took to become ready.
    async fn start(data: &Path, port: u16) -> (Serve, Duration) {
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_easel"))
            .arg("serve")
            .current_dir(workspace_root())
            .env("EASEL_ADDR", format!("127.0.0.1:{port}"))
            .env("EASEL_DATA_DIR", data.join("data"))
            .env("EASEL_DEV_KEY_FILE", data.join("dev-api-key"))
            .env_remove("EASEL_MODEL_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let serve = Serve { child, base: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        loop {
            if let Ok(resp) = client.get(format!("{}/healthz", serve.base)).send().await
                && resp.status().is_success()
            {
                return (serve, started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "easel serve did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn hive(key: &str, req: reqwest::RequestBuilder) -> Value {
    req.header("authorization", format!("Token {key}")).send().await.unwrap().json().await.unwrap()
}

fn message(task: &Value) -> String {
    task["status"][0]["status"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easel_serve_survives_a_kill_mid_task_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let (first, ready) = Serve::start(tmp.path(), port).await;
    eprintln!("easel serve: ready in {} ms", ready.as_millis());

    let key_file = tmp.path().join("dev-api-key");
    let key = std::fs::read_to_string(&key_file).unwrap().trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let client = reqwest::Client::new();
    let submit = client.post(format!("{}/api/v2/task/async", first.base)).json(&json!({
        "text_data": "a lighthouse", "options": {"num_images": 6, "seed": 77}
    }));
    let task = hive(&key, submit).await;
    let id = task["id"].as_str().unwrap().to_owned();

    // Kill the process while the task is running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = client.get(format!("{}/api/v2/task/{id}", first.base));
        let status = message(&hive(&key, get).await);
        if status == "PROCESSING" {
            break;
        }
        assert_eq!(status, "QUEUED", "the task finished before it could be interrupted");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL

    let (mut second, _) = Serve::start(tmp.path(), port).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let get = client.get(format!("{}/api/v2/task/{id}", second.base));
        let task = hive(&key, get).await;
        if !matches!(message(&task).as_str(), "QUEUED" | "PROCESSING") {
            break task;
        }
        assert!(Instant::now() < deadline, "the interrupted task was not completed after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(message(&done), "SUCCESS", "{done}");
    assert_eq!(done["status"][0]["response"]["output"][0]["images"].as_array().unwrap().len(), 6);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), key, "no second development key");

    let term = Command::new("kill").args(["-TERM", &second.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "easel serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
}

/// `easel serve` with `EASEL_MODERATION_MODEL` at `model`: its exit status and error output.
fn serve_with_moderation_model(data: &Path, model: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .arg("serve")
        .current_dir(workspace_root())
        .env("EASEL_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("EASEL_DATA_DIR", data.join("data"))
        .env("EASEL_DEV_KEY_FILE", data.join("dev-api-key"))
        .env("EASEL_MODERATION_MODEL", model)
        .env("EASEL_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn easel_serve_refuses_to_start_without_a_usable_moderation_model_and_says_how_to_install_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = serve_with_moderation_model(tmp.path(), &tmp.path().join("absent/320n.onnx"));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert!(stderr.contains("moderation model") && stderr.contains("make setup"), "{stderr}");

    let corrupt = tmp.path().join("320n.onnx");
    std::fs::write(&corrupt, b"not an onnx graph").unwrap();
    let unusable = serve_with_moderation_model(tmp.path(), &corrupt);
    let stderr = String::from_utf8_lossy(&unusable.stderr);
    assert!(!unusable.status.success(), "{stderr}");
    assert!(stderr.contains("cannot load the image moderation model") && stderr.contains("make setup"), "{stderr}");
    assert!(!tmp.path().join("dev-api-key").exists(), "nothing was served: {stderr}");
}
