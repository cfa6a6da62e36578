//! easel-embedded: the backends `easel serve` uses on one machine, in one data folder:
//! a SQLite database (`easel.db`: tasks, API keys, the jobs and notices queues with their
//! dead-letter queues) and a
//! folder of images served back through signed, expiring URLs.
//!
//! One process owns a data folder at a time ([`EmbeddedBackend::open`] takes a lock on it); CLI
//! commands such as `easel keys` may open the database alongside it.

mod db;
mod images;
mod keys;
mod queue;
mod tasks;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use easel_core::ports::{Job, Notice, StoreError};

pub use images::{FILES_ROUTE, FileAccessError, FsImageStore};
pub use keys::SqliteKeyStore;
pub use queue::{RawDelivery, SqliteQueue};
pub use tasks::SqliteTaskStore;

/// Name of the jobs queue in the database.
pub const JOBS_QUEUE: &str = "jobs";
/// Name of the callback notices queue in the database.
pub const NOTICES_QUEUE: &str = "notices";

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Base URL that image links start with, e.g. `http://127.0.0.1:8080`.
    pub public_base_url: String,
    /// A job received this many times without being acknowledged goes to the dead-letter queue.
    pub max_receives: u32,
    /// The same for callback notices: the notifier's attempts (`RetrySchedule::attempts`).
    pub notice_max_receives: u32,
}

/// All embedded adapters over one data folder.
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    pub tasks: Arc<SqliteTaskStore>,
    pub jobs: Arc<SqliteQueue<Job>>,
    pub notices: Arc<SqliteQueue<Notice>>,
    pub images: Arc<FsImageStore>,
    pub keys: Arc<SqliteKeyStore>,
    data_dir: PathBuf,
}

/// Held while a process owns a data folder; dropping it releases the folder.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use the data folder {path}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another easel process is already serving from {0}; stop it or set EASEL_DATA_DIR to another folder")]
    InUse(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn folder_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Folder { path: path.to_path_buf(), source }
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the data folder.
    pub fn open(data_dir: &Path, options: &EmbeddedOptions) -> Result<EmbeddedBackend, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(folder_err(data_dir))?;
        let db = db::Db::open(&data_dir.join("easel.db"))?;
        let signing_key = read_or_create_secret(&data_dir.join("url-signing.key"))?;
        Ok(EmbeddedBackend {
            tasks: Arc::new(SqliteTaskStore::new(db.clone())),
            jobs: Arc::new(SqliteQueue::new(db.clone(), JOBS_QUEUE, options.max_receives)),
            notices: Arc::new(SqliteQueue::new(db.clone(), NOTICES_QUEUE, options.notice_max_receives)),
            images: Arc::new(FsImageStore::new(data_dir.join("objects"), &options.public_base_url, signing_key)),
            keys: Arc::new(SqliteKeyStore::new(db)),
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Takes ownership of the data folder for a serving process, then recovers what a previous
    /// owner left in flight: its jobs become visible again and its task leases end, so the tasks
    /// it was running are redelivered and completed now instead of after their timeouts.
    pub fn take_ownership(&self) -> Result<OwnerLock, OpenError> {
        let path = self.data_dir.join("serve.lock");
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(folder_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse(self.data_dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(folder_err(&path)(e)),
        }
        let jobs = self.jobs.release_in_flight()? + self.notices.release_in_flight()?;
        let leases = self.tasks.expire_all_leases()?;
        if jobs + leases > 0 {
            tracing::info!(jobs, running_tasks = leases, "recovered work left in flight by a previous process");
        }
        Ok(OwnerLock { _file: file })
    }
}

/// Reads a 32-byte secret, creating it (mode 0600) on first use.
fn read_or_create_secret(path: &Path) -> Result<Vec<u8>, OpenError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(folder_err(path)(e)),
    }
    let secret: [u8; 32] = rand::random();
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(folder_err(path))?;
    file.write_all(&secret).map_err(folder_err(path))?;
    Ok(secret.to_vec())
}
