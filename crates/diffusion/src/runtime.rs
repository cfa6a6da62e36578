//! The process-wide ONNX Runtime: finding its shared library and creating the one environment.
//!
//! `ort` is built with `load-dynamic`: nothing links against ONNX Runtime at build time and the
//! library is opened at run time. ONNX Runtime allows exactly one environment per process, ever
//! (a second one fails even after the first is dropped), so [`OrtRuntime::init`] keeps it in a
//! static and hands out `&'static` references. It uses `ort::init_from`, so a missing or wrong
//! library is an error instead of the panic that `ort`'s lazy `ORT_DYLIB_PATH` loading gives.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::error::RuntimeError;

/// The environment variable naming the ONNX Runtime library file (not its directory).
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// Where `make setup` puts the library, relative to the repository (or deployment) root.
pub const LOCAL_LIBRARY_DIR: &str = ".easel/onnxruntime";

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The loaded ONNX Runtime library and its process-wide environment.
///
/// Obtain it with [`OrtRuntime::init`]; pass it to [`crate::Pipeline::load`]. Holding a reference
/// is the proof that the library is loaded, so no later `ort` call can hit `ort`'s panicking
/// fallback loader.
#[derive(Debug)]
pub struct OrtRuntime {
    environment: Environment,
    library: PathBuf,
}

impl OrtRuntime {
    /// Loads ONNX Runtime from `library` (the `libonnxruntime.so.1.x` file itself) and creates the
    /// process's environment. Idempotent: later calls naming the same file return the same
    /// runtime; naming a different file is [`RuntimeError::AlreadyLoaded`].
    pub fn init(library: &Path) -> Result<&'static OrtRuntime, RuntimeError> {
        let requested = canonical(library);
        if let Some(runtime) = RUNTIME.get() {
            return runtime.check_same(requested);
        }
        // Serialise first initialisation: two threads must not both try to build an environment.
        let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(runtime) = RUNTIME.get() {
            return runtime.check_same(requested);
        }
        let builder =
            ort::init_from(&requested).map_err(|source| RuntimeError::Load { path: requested.clone(), source })?;
        let environment =
            builder.with_name("easel").with_telemetry(false).build().map_err(RuntimeError::Environment)?;
        tracing::info!(library = %requested.display(), "ONNX Runtime loaded");
        Ok(RUNTIME.get_or_init(|| OrtRuntime { environment, library: requested }))
    }

    /// The runtime, if [`OrtRuntime::init`] has succeeded in this process.
    pub fn get() -> Option<&'static OrtRuntime> {
        RUNTIME.get()
    }

    /// Finds the library with [`find_onnxruntime_library`] and initialises from it; returns the
    /// runtime already loaded, if any, without searching.
    pub fn init_discovered(start_dirs: &[PathBuf]) -> Result<&'static OrtRuntime, RuntimeError> {
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        match find_onnxruntime_library(start_dirs) {
            Some(path) => OrtRuntime::init(&path),
            None => Err(RuntimeError::NotFound { searched: describe_search(start_dirs) }),
        }
    }

    /// The library file this runtime was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }

    fn check_same(&'static self, requested: PathBuf) -> Result<&'static OrtRuntime, RuntimeError> {
        if requested == self.library {
            Ok(self)
        } else {
            Err(RuntimeError::AlreadyLoaded { loaded: self.library.clone(), requested })
        }
    }
}

/// Finds the ONNX Runtime shared library.
///
/// 1. `$ORT_DYLIB_PATH`, when set and non-empty, wins: it is returned as given (even if it does not
///    exist, so that the load error names the file the operator asked for).
/// 2. Otherwise, for each start directory in order, that directory and each of its ancestors is
///    searched for `.easel/onnxruntime/libonnxruntime.so*` (`.dylib` / `.dll` on other systems);
///    the first directory holding a match wins. Within one directory the highest version wins
///    (`libonnxruntime.so.1.31.1` over `libonnxruntime.so.1.22.0`; the bare `.so` ranks last).
///
/// Tests pass `env!("CARGO_MANIFEST_DIR")`, which finds the repository's `.easel/`; a deployed
/// worker passes the directory of its executable.
pub fn find_onnxruntime_library(start_dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(ORT_DYLIB_PATH).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    search_local(start_dirs)
}

/// Step 2 of [`find_onnxruntime_library`]: the `.easel/onnxruntime/` walk.
fn search_local(start_dirs: &[PathBuf]) -> Option<PathBuf> {
    start_dirs.iter().flat_map(|start| start.ancestors()).find_map(|dir| best_library_in(&dir.join(LOCAL_LIBRARY_DIR)))
}

/// The best-looking ONNX Runtime library file directly inside `dir`.
fn best_library_in(dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{}onnxruntime{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            // "" (the bare name) or ".1.31.1": anything else (".bak", "_providers_shared") is not it.
            let version = if rest.is_empty() { Vec::new() } else { parse_version(rest.strip_prefix('.')?)? };
            entry.path().is_file().then(|| (version, entry.path()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, path)| path)
}

fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

fn describe_search(start_dirs: &[PathBuf]) -> String {
    if start_dirs.is_empty() {
        return "no other directory".to_owned();
    }
    let dirs: Vec<String> = start_dirs.iter().map(|d| d.display().to_string()).collect();
    format!("{LOCAL_LIBRARY_DIR}/ in {} and their parent directories", dirs.join(", "))
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), b"").unwrap();
    }

    #[test]
    fn the_highest_library_version_in_the_nearest_ancestor_wins() {
        let root = tempfile::tempdir().unwrap();
        let lib_dir = root.path().join(LOCAL_LIBRARY_DIR);
        let prefix = format!("{}onnxruntime{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
        touch(&lib_dir, &format!("{prefix}.1.9.0"));
        touch(&lib_dir, &format!("{prefix}.1.31.1"));
        touch(&lib_dir, &prefix);
        touch(&lib_dir, &format!("{prefix}.bak"));
        touch(
            &lib_dir,
            &format!("{}onnxruntime_providers_shared{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX),
        );
        let deep = root.path().join("crates/diffusion");
        std::fs::create_dir_all(&deep).unwrap();

        assert_eq!(best_library_in(&lib_dir), Some(lib_dir.join(format!("{prefix}.1.31.1"))));
        // (find_onnxruntime_library consults ORT_DYLIB_PATH first, which the test process may set.)
        let elsewhere = tempfile::tempdir().unwrap();
        let found = search_local(&[elsewhere.path().to_path_buf(), deep]);
        assert_eq!(found, Some(lib_dir.join(format!("{prefix}.1.31.1"))));
    }

    #[test]
    fn a_directory_without_the_library_finds_nothing() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join(LOCAL_LIBRARY_DIR), "README");
        assert_eq!(best_library_in(&root.path().join(LOCAL_LIBRARY_DIR)), None);
        assert_eq!(best_library_in(&root.path().join("nope")), None);
    }

    #[test]
    fn not_found_message_tells_the_user_to_run_make_setup() {
        let message = RuntimeError::NotFound { searched: describe_search(&[PathBuf::from("/srv/app")]) }.to_string();
        assert!(message.contains("make setup"), "{message}");
        assert!(message.contains("/srv/app"), "{message}");
    }
}
