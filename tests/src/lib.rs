//! Test harness: a local server on a temporary data folder, the tiny model loaded once per test
//! binary, and an HTTP client that speaks the dialects.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod contract;
pub use easel_testkit::{lambda, moto};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use easel_cli::local::{DevKey, LocalServer, ServeConfig};
use easel_core::generator::Generator;
use easel_core::moderation::Moderator;
use easel_core::worker::WorkerConfig;
use easel_diffusion::{NudeNetModerator, OrtRuntime, Pipeline, PipelineOptions};
use serde_json::Value;

pub use easel_testkit::workspace_root;

pub fn tiny_model_dir() -> PathBuf {
    workspace_root().join("models/tiny-sd")
}

/// The committed tiny model, loaded once per test binary (one ONNX Runtime environment per process).
pub fn tiny_model() -> Arc<dyn Generator> {
    static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();
    let pipeline = PIPELINE.get_or_init(|| {
        let runtime = OrtRuntime::init_discovered(&[workspace_root()])
            .unwrap_or_else(|e| panic!("ONNX Runtime is not installed ({e}); run `make setup` first"));
        Arc::new(Pipeline::load(runtime, &tiny_model_dir(), &PipelineOptions::default()).unwrap())
    });
    pipeline.clone()
}

/// The moderation model `make setup` installs, or `EASEL_MODERATION_MODEL`.
pub fn moderation_model() -> PathBuf {
    std::env::var_os("EASEL_MODERATION_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".easel/models/nudenet/320n.onnx"))
}

/// NudeNet under `policy`, a session of its own.
pub fn nudenet_with(policy: easel_core::moderation::ClassThresholds) -> Arc<dyn Moderator> {
    tiny_model(); // initialises ONNX Runtime
    let runtime = OrtRuntime::get().unwrap();
    Arc::new(NudeNetModerator::load(runtime, &moderation_model(), policy).unwrap_or_else(|e| {
        panic!(
            "the moderation model cannot be loaded ({e}: {:?}); run `make setup` first",
            std::error::Error::source(&e)
        )
    }))
}

/// NudeNet under the default policy, loaded once per test binary: the test servers' moderator.
pub fn nudenet() -> Arc<dyn Moderator> {
    static MODERATOR: OnceLock<Arc<dyn Moderator>> = OnceLock::new();
    MODERATOR.get_or_init(|| nudenet_with(easel_core::moderation::ClassThresholds::nudenet_default())).clone()
}

/// A local server on its own data folder.
#[derive(Debug)]
pub struct Harness {
    pub server: Option<LocalServer>,
    pub key: String,
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    _tmp: Option<tempfile::TempDir>,
}

pub fn serve_config(data_dir: &Path) -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        public_url: None,
        url_ttl: Duration::from_secs(3600),
        sync_wait: Duration::from_secs(120),
        rate_limit: None,
        max_receives: 3,
        worker: WorkerConfig {
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(5),
            progress_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        dev_key_file: Some(data_dir.join("dev-api-key")),
        shutdown_grace: Duration::from_secs(60),
        outbound: test_guard(true),
        callback_in_flight: Duration::from_secs(30),
        callback_schedule: easel_core::notify::RetrySchedule::default(),
        moderator: nudenet(),
        prompt_policy: Arc::new(easel_core::prompt_policy::PromptPolicy::default()),
    }
}

/// The SSRF guard of the test servers: plain http to loopback allowed (or not), names resolved by
/// a table (`localhost` only; never the system's resolver), and connections only to loopback, so
/// that no test reaches beyond this machine even if the guard were broken.
pub fn test_guard(allow_loopback: bool) -> easel_callbacks::Guard {
    test_guard_within(allow_loopback, Duration::from_secs(10))
}

/// [`test_guard`] with another deadline per request.
pub fn test_guard_within(allow_loopback: bool, deadline: Duration) -> easel_callbacks::Guard {
    let resolver = easel_callbacks::StaticResolver::new([("localhost", vec!["127.0.0.1".parse().unwrap()])]);
    easel_callbacks::Guard::new(deadline, 0)
        .allow_loopback(allow_loopback)
        .with_resolver(Arc::new(resolver))
        .with_egress(easel_callbacks::loopback_only)
}

impl Harness {
    /// A fresh server with a worker running the tiny model.
    pub async fn start() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = Harness::start_in(tmp.path(), true).await;
        h._tmp = Some(tmp);
        h
    }

    /// A fresh server that queues tasks without running them (no model needed).
    pub async fn start_without_worker() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = Harness::start_in(tmp.path(), false).await;
        h._tmp = Some(tmp);
        h
    }

    /// A server over an existing data folder; `worker` false queues tasks without running them.
    pub async fn start_in(data_dir: &Path, worker: bool) -> Harness {
        Harness::start_with(serve_config(data_dir), worker).await
    }

    /// A server with this configuration; `worker` false queues tasks without running them.
    pub async fn start_with(config: ServeConfig, worker: bool) -> Harness {
        let data_dir = config.data_dir.clone();
        let generator = worker.then(tiny_model);
        let server = LocalServer::start(config, generator).await.unwrap();
        let key = match server.dev_key() {
            DevKey::Created { secret, .. } => secret.clone(),
            _ => std::fs::read_to_string(data_dir.join("dev-api-key")).unwrap().trim().to_owned(),
        };
        let base = format!("http://{}", server.addr());
        Harness {
            server: Some(server),
            key,
            base,
            data_dir: data_dir.to_path_buf(),
            client: reqwest::Client::new(),
            _tmp: None,
        }
    }

    pub fn server(&self) -> &LocalServer {
        self.server.as_ref().unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a Hive task with this harness's key; returns (status, body).
    pub async fn hive_submit(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/api/v2/task/async"))
            .header("authorization", format!("Token {}", self.key))
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn hive_status(&self, id: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(&format!("/api/v2/task/{id}")))
            .header("authorization", format!("Token {}", self.key))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Polls the Hive status endpoint until the task is no longer queued or processing.
    pub async fn hive_wait(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.hive_status(id).await;
            assert_eq!(status, 200, "{body}");
            let message = body["status"][0]["status"]["message"].as_str().unwrap_or_default().to_owned();
            if message != "QUEUED" && message != "PROCESSING" {
                return body;
            }
            assert!(Instant::now() < deadline, "task {id} still {message} after {timeout:?}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs JSON to `path` with the given headers (the key is the caller's to add); returns
    /// (status, headers, body as JSON).
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.post(self.url(path)).json(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let resp = request.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {text}"));
        (status, headers, json)
    }

    /// GETs `path` with this harness's key as a bearer token; returns (status, body as JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).bearer_auth(&self.key).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    pub async fn download(&self, url: &str) -> (u16, Vec<u8>) {
        let resp = self.client.get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    /// Messages in the jobs queue (visible or in flight) and in its dead-letter queue.
    pub fn queue_depth(&self) -> (u64, u64) {
        self.server().backend().jobs.depth().unwrap()
    }
}

/// Image URLs of a finished Hive task object.
pub fn hive_image_urls(task: &Value) -> Vec<String> {
    task["status"][0]["response"]["output"][0]["images"]
        .as_array()
        .map(|images| images.iter().map(|i| i["url"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Decodes a PNG into (width, height, pixels).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
