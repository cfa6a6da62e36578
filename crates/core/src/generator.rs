//! The image generator port: what the worker needs from a diffusion engine.
//!
//! The engine is synchronous and CPU/GPU bound; the worker calls it on a blocking thread.

use std::fmt;

/// What a loaded model is and what it does by default. Built once per process at model load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelDescriptor {
    /// Short name (the model folder's manifest `name`, or the folder name).
    pub id: String,
    /// Stable fingerprint of the model files, recorded on every task for reproducibility.
    pub hash: String,
    pub default_steps: u32,
    pub default_guidance: f32,
    pub native_width: u32,
    pub native_height: u32,
    /// Pixels per latent cell (8 for SD's VAE); image sides must be multiples of it.
    pub size_multiple: u32,
    /// Inclusive step bounds the engine accepts.
    pub max_steps: u32,
    /// Largest side (pixels) the engine accepts.
    pub max_side: u32,
    /// The sampler used when a request names none.
    pub default_sampler: String,
}

/// One generation, fully resolved: every default already applied, one seed per image.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    pub prompt: String,
    /// Empty string = unconditional.
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    /// One seed per image; its length is the number of images.
    pub seeds: Vec<u64>,
}

/// One generated image as 8-bit RGB pixels, row-major, `width * height * 3` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub rgb: Vec<u8>,
}

impl fmt::Debug for GeneratedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("seed", &self.seed)
            .field("rgb_len", &self.rgb.len())
            .finish()
    }
}

/// Result of a generation: the images plus anything the caller should know.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub images: Vec<GeneratedImage>,
    /// Non-fatal notes, e.g. "prompt truncated to 77 tokens".
    pub warnings: Vec<String>,
    /// How many UNet evaluations were made (batched calls count once per call).
    pub unet_calls: u32,
}

/// Receives progress between denoising steps and tells the engine whether to go on.
pub trait ProgressSink: Sync {
    /// Called after each completed denoising step (`done` of `total`).
    fn step(&self, done: u32, total: u32);
    /// Checked between steps: true stops the generation with [`GenerateError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// A sink that ignores progress and never cancels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn step(&self, _done: u32, _total: u32) {}
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The request does not fit this model (size, steps...). The message names the field and the allowed range.
    #[error("{0}")]
    InvalidRequest(String),
    /// The progress sink asked to stop.
    #[error("generation was cancelled")]
    Cancelled,
    /// The engine failed (ONNX Runtime error, out of memory...). Not the caller's fault.
    #[error("the diffusion engine failed: {message}")]
    Engine {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl GenerateError {
    pub fn engine(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        GenerateError::Engine { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// The diffusion engine as the worker sees it.
pub trait Generator: Send + Sync {
    fn descriptor(&self) -> &ModelDescriptor;
    /// Runs one generation. Blocking; call it from a blocking thread.
    fn generate(&self, spec: &GenerationSpec, progress: &dyn ProgressSink) -> Result<Generation, GenerateError>;
}
