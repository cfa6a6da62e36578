//! `easel serve`: the API and an in-process worker over the embedded backends, in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use easel_api::models::ModelCatalog;
use easel_api::{ApiSettings, AppState, RateLimit};
pub use easel_callbacks::Guard;
use easel_callbacks::{HttpCallbackSender, HttpImageFetcher, MAX_CALLBACK_ANSWER_BYTES};
use easel_core::generator::Generator;
use easel_core::keys::create_key;
use easel_core::moderation::Moderator;
use easel_core::notify::{Notifier, RetrySchedule};
use easel_core::ports::KeyStore;
use easel_core::prompt_policy::PromptPolicy;
use easel_core::worker::{Worker, WorkerConfig};
use easel_embedded::{EmbeddedBackend, EmbeddedOptions, FileAccessError, FsImageStore, OpenError, OwnerLock};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Base of image URLs; defaults to `http://{bound address}`.
    pub public_url: Option<String>,
    pub url_ttl: Duration,
    /// How long the synchronous dialects wait for their task before answering 202.
    pub sync_wait: Duration,
    /// Per-key limit on submissions; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    pub max_receives: u32,
    pub worker: WorkerConfig,
    /// Where the development key is written on first start (mode 0600); `None` creates no key.
    pub dev_key_file: Option<PathBuf>,
    /// How long shutdown waits for the generation in progress before leaving it for the next start.
    pub shutdown_grace: Duration,
    /// The SSRF guard every callback and input-image download goes through: its deadline, whether
    /// plain http to loopback is allowed, its resolver.
    pub outbound: Guard,
    /// How long a callback notice stays hidden while it is delivered; a notifier stopped meanwhile
    /// leaves it to come back after this.
    pub callback_in_flight: Duration,
    /// When failed callbacks are tried again.
    pub callback_schedule: RetrySchedule,
    /// Judges every generated image before it is stored.
    pub moderator: Arc<dyn Moderator>,
    /// Refuses prompts before anything is stored or queued.
    pub prompt_policy: Arc<PromptPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot set up the development API key")]
    DevKey(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What `easel serve` created or found for the developer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevKey {
    /// Created now; the secret is shown once.
    Created {
        secret: String,
        file: PathBuf,
    },
    /// Keys already exist; the file (if still there) holds the development key.
    Existing {
        file: PathBuf,
    },
    None,
}

/// A running local server. Dropping it without [`LocalServer::shutdown`] aborts it.
#[derive(Debug)]
pub struct LocalServer {
    addr: SocketAddr,
    backend: EmbeddedBackend,
    dev_key: DevKey,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    worker: Option<JoinHandle<()>>,
    notifier: JoinHandle<()>,
    grace: Duration,
    _owner: OwnerLock,
}

impl LocalServer {
    /// Opens the data folder, recovers work a previous process left in flight, and starts serving.
    /// Without a generator, tasks are accepted and queued but not run.
    pub async fn start(config: ServeConfig, generator: Option<Arc<dyn Generator>>) -> Result<LocalServer, ServeError> {
        let listener =
            TcpListener::bind(config.addr).await.map_err(|source| ServeError::Bind { addr: config.addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.addr, source })?;
        let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
        let backend = EmbeddedBackend::open(
            &config.data_dir,
            &EmbeddedOptions {
                public_base_url: public_url,
                max_receives: config.max_receives,
                notice_max_receives: config.callback_schedule.attempts(),
            },
        )?;
        let owner = backend.take_ownership()?;
        let dev_key = match &config.dev_key_file {
            Some(file) => ensure_dev_key(backend.keys.as_ref(), file).await?,
            None => DevKey::None,
        };

        // The catalog of the loaded model (without a worker, tasks are only queued).
        let models = match &generator {
            Some(generator) => ModelCatalog::for_descriptor(generator.descriptor()),
            None => ModelCatalog::unloaded(),
        };
        let fetch_guard = config.outbound.clone().with_max_body(easel_api::body::MAX_IMAGE_BODY_BYTES);
        let settings = ApiSettings {
            url_ttl: config.url_ttl,
            sync_wait: config.sync_wait,
            models,
            rate_limit: config.rate_limit,
            allow_loopback_urls: config.outbound.allows_loopback(),
            image_fetcher: Some(Arc::new(HttpImageFetcher::new(fetch_guard))),
            prompt_policy: Arc::clone(&config.prompt_policy),
        };
        let state = AppState::new(
            backend.tasks.clone(),
            backend.jobs.clone(),
            backend.notices.clone(),
            backend.images.clone(),
            backend.keys.clone(),
            settings,
        );
        let app = easel_api::router(state).merge(files_router(Arc::clone(&backend.images))).merge(docs_router());
        let (shutdown, rx) = watch::channel(false);
        let mut server_rx = rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        let worker = generator.map(|generator| {
            let worker = Worker::new(
                backend.tasks.clone(),
                backend.jobs.clone(),
                backend.notices.clone(),
                backend.images.clone(),
                generator,
                Arc::clone(&config.moderator),
                config.worker.clone(),
            );
            let rx = rx.clone();
            tokio::spawn(async move { worker.run(rx).await })
        });
        let sender = HttpCallbackSender::new(config.outbound.clone().with_max_body(MAX_CALLBACK_ANSWER_BYTES));
        let notifier = Notifier::new(
            backend.tasks.clone(),
            backend.keys.clone(),
            backend.images.clone(),
            Arc::new(sender),
            easel_api::callback_body,
            config.url_ttl,
            config.callback_schedule.clone(),
        );
        let notices = backend.notices.clone();
        let in_flight = config.callback_in_flight;
        let notifier = tokio::spawn(async move { notifier.run(notices.as_ref(), in_flight, rx).await });
        Ok(LocalServer {
            addr,
            backend,
            dev_key,
            shutdown,
            server,
            worker,
            notifier,
            grace: config.shutdown_grace,
            _owner: owner,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn backend(&self) -> &EmbeddedBackend {
        &self.backend
    }

    pub fn dev_key(&self) -> &DevKey {
        &self.dev_key
    }

    /// Stops accepting requests and jobs, lets the generation in progress finish within the grace
    /// period (otherwise it is redelivered at the next start), then returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(worker) = self.worker.as_mut()
            && tokio::time::timeout(self.grace, worker).await.is_err()
        {
            tracing::warn!(
                "the generation in progress did not finish in time; it will be redelivered at the next start"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.notifier).await;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Err(_) => tracing::warn!("open connections did not close in time"),
            _ => {}
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.server.abort();
        self.notifier.abort();
        if let Some(worker) = &self.worker {
            worker.abort();
        }
    }
}

async fn ensure_dev_key(keys: &dyn KeyStore, file: &Path) -> Result<DevKey, ServeError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| ServeError::DevKey(e);
    if !keys.list().await.map_err(|e| err(Box::new(e)))?.is_empty() {
        return Ok(DevKey::Existing { file: file.to_path_buf() });
    }
    let new = create_key(keys, "development").await.map_err(|e| err(Box::new(e)))?;
    write_secret_file(file, &new.secret).map_err(|e| err(Box::new(e)))?;
    Ok(DevKey::Created { secret: new.secret, file: file.to_path_buf() })
}

/// Writes a secret to a file only its owner can read.
pub fn write_secret_file(file: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file)?;
    #[cfg(unix)]
    std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(f, "{secret}")
}

/// `GET /docs`: Swagger UI (bundled in the binary, nothing loaded from elsewhere) over `/openapi.json`.
pub fn docs_router() -> Router {
    use utoipa_swagger_ui::{Config, SwaggerUi};
    SwaggerUi::new("/docs").config(Config::from("/openapi.json").try_it_out_enabled(true)).into()
}

#[derive(Debug, serde::Deserialize)]
struct FileQuery {
    expires: Option<String>,
    signature: Option<String>,
}

/// `GET /files/{key}?expires=…&signature=…`: what an S3 presigned URL does, for local images.
pub fn files_router(store: Arc<FsImageStore>) -> Router {
    Router::new().route("/files/{*key}", get(serve_file)).with_state(store)
}

async fn serve_file(
    State(store): State<Arc<FsImageStore>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<FileQuery>,
) -> Response {
    let (Some(expires), Some(signature)) = (q.expires, q.signature) else {
        return file_error(FileAccessError::Malformed);
    };
    let path = match store.authorize(&key, &expires, &signature, OffsetDateTime::now_utc()) {
        Ok(path) => path,
        Err(e) => return file_error(e),
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], bytes)
            .into_response(),
        Err(_) => file_error(FileAccessError::NotFound),
    }
}

fn file_error(e: FileAccessError) -> Response {
    let status = match e {
        FileAccessError::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::FORBIDDEN,
    };
    (status, axum::Json(serde_json::json!({"error": {"code": "file_access_denied", "message": e.to_string()}})))
        .into_response()
}
