//! Finding ONNX Runtime and loading the model, for every subcommand that generates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use easel_core::moderation::{ClassThresholds, Moderator};
use easel_diffusion::{Device, NudeNetModerator, OrtRuntime, Pipeline, PipelineOptions};

/// Folders where `easel` looks for `.easel/onnxruntime/` (and their ancestors): the working
/// directory and the executable's folder, so `target/debug/easel` finds the project's copy.
pub fn library_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(dir);
    }
    dirs
}

/// Initialises ONNX Runtime (once per process) and loads the model folder onto `device`.
pub fn load_pipeline(model_dir: &Path, device: Device) -> anyhow::Result<Arc<Pipeline>> {
    let runtime = OrtRuntime::init_discovered(&library_search_dirs())?;
    let pipeline = Pipeline::load(runtime, model_dir, &PipelineOptions { device, ..PipelineOptions::default() })
        .with_context(|| format!("cannot load the model folder {} on {device}", model_dir.display()))?;
    Ok(Arc::new(pipeline))
}

/// Loads the image moderation model (ONNX Runtime initialised once per process). Fails, saying
/// how to install it, when the file is missing or unusable: the server never runs unmoderated.
pub fn load_moderator(path: &Path, policy: ClassThresholds) -> anyhow::Result<Arc<dyn Moderator>> {
    let runtime = OrtRuntime::init_discovered(&library_search_dirs())?;
    let moderator = NudeNetModerator::load(runtime, path, policy).with_context(|| {
        format!(
            "cannot load the image moderation model {}: run `make setup` to install NudeNet's 320n.onnx \
             (or set EASEL_MODERATION_MODEL to a NudeNet-compatible model)",
            path.display()
        )
    })?;
    tracing::info!(model = moderator.model_id(), "image moderation ready");
    Ok(Arc::new(moderator))
}
