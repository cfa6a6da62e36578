//! Test support that any crate of the workspace can use as a dev-dependency.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod lambda;
pub mod moto;

use std::path::{Path, PathBuf};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}
