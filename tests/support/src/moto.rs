//! The AWS emulator for tests: one `moto_server` per test binary on a free loopback port, started
//! on first use and stopped when the test process exits. Every test then creates its own table,
//! queues and bucket under fresh random names ([`AwsEnv`]) and deletes them at the end.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use easel_aws::provision::{self, QueueUrls};
use easel_aws::{AwsBackend, AwsSettings, SdkConfig};

use crate::workspace_root;

#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    /// The watchdog shell; it outlives this process only long enough to stop the server.
    _watchdog: std::process::Child,
}

/// Where `moto_server` is: `$EASEL_MOTO_SERVER`, else the project's tools folder (`make setup`).
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EASEL_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let local = workspace_root().join(".easel/tools/bin/moto_server");
    assert!(
        local.is_file(),
        "moto_server is not installed at {}; run `make setup` (or `bash infra/setup.sh --test-tools`)",
        local.display()
    );
    local
}

/// A watchdog shell owns the server and kills it once the test process is gone (test binaries
/// exit without running destructors of statics, so nothing else would).
const WATCHDOG: &str = r#"parent=$1; bin=$2; port=$3
"$bin" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
child=$!
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
kill "$child" 2>/dev/null
wait"#;

/// The emulator shared by every test of this binary.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(moto_binary())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), _watchdog: watchdog }
    })
}

/// A fresh set of easel resources on the emulator.
#[derive(Debug)]
pub struct AwsEnv {
    pub sdk: SdkConfig,
    pub settings: AwsSettings,
    pub jobs: QueueUrls,
    pub notices: QueueUrls,
    pub backend: AwsBackend,
}

fn unique_name() -> String {
    format!("easel-test-{}", hex_suffix())
}

fn hex_suffix() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AwsEnv {
    /// Creates a table, a jobs and a notices queue (each with a dead-letter queue after
    /// `max_receives`) and a bucket, all under one new random name.
    pub async fn create(max_receives: u32) -> AwsEnv {
        let moto = moto();
        let sdk = provision::emulator_sdk_config(&moto.endpoint).await;
        let name = unique_name();
        provision::create_table(&sdk, &name).await.unwrap();
        let jobs = provision::create_queue(&sdk, &format!("{name}-jobs"), Duration::from_secs(30), max_receives)
            .await
            .unwrap();
        let notices = provision::create_queue(&sdk, &format!("{name}-notices"), Duration::from_secs(30), max_receives)
            .await
            .unwrap();
        provision::create_bucket(&sdk, &name).await.unwrap();
        let settings = AwsSettings {
            table: name.clone(),
            jobs_queue_url: jobs.queue.clone(),
            notices_queue_url: notices.queue.clone(),
            bucket: name,
            retention: Duration::from_secs(7 * 86_400),
            s3_force_path_style: true,
        };
        let backend = AwsBackend::new(&sdk, &settings);
        AwsEnv { sdk, settings, jobs, notices, backend }
    }

    /// The environment a function would read to use these resources.
    pub fn function_env(&self) -> Vec<(String, String)> {
        let moto = moto();
        [
            ("EASEL_TABLE", self.settings.table.as_str()),
            ("EASEL_JOBS_QUEUE_URL", self.settings.jobs_queue_url.as_str()),
            ("EASEL_NOTICES_QUEUE_URL", self.settings.notices_queue_url.as_str()),
            ("EASEL_BUCKET", self.settings.bucket.as_str()),
            ("EASEL_S3_FORCE_PATH_STYLE", "true"),
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            // The tests' callback receivers listen on 127.0.0.1.
            ("EASEL_ALLOW_LOOPBACK_CALLBACKS", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Deletes everything [`AwsEnv::create`] made.
    pub async fn destroy(self) {
        provision::delete_table(&self.sdk, &self.settings.table).await.unwrap();
        provision::delete_queue(&self.sdk, &self.jobs).await.unwrap();
        provision::delete_queue(&self.sdk, &self.notices).await.unwrap();
        provision::delete_bucket(&self.sdk, &self.settings.bucket).await.unwrap();
    }
}
