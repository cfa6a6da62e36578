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

/// A sampler, by the name the Stability v1 API gives it (plus `PNDM`, SD 1.5's own default).
///
/// Which diffusers scheduler each one is, and what it costs, is documented in the diffusion crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SamplerKind {
    #[serde(rename = "DDIM")]
    Ddim,
    #[serde(rename = "DDPM")]
    Ddpm,
    #[serde(rename = "PNDM")]
    Pndm,
    #[serde(rename = "K_EULER")]
    Euler,
    #[serde(rename = "K_EULER_ANCESTRAL")]
    EulerAncestral,
    #[serde(rename = "K_HEUN")]
    Heun,
    #[serde(rename = "K_DPM_2")]
    Dpm2,
    #[serde(rename = "K_DPM_2_ANCESTRAL")]
    Dpm2Ancestral,
    #[serde(rename = "K_LMS")]
    Lms,
    #[serde(rename = "K_DPMPP_2M")]
    DpmPp2m,
    #[serde(rename = "K_DPMPP_2S_ANCESTRAL")]
    DpmPp2sAncestral,
}

impl SamplerKind {
    /// Every sampler, in the order the Stability v1 enum lists them (PNDM last).
    pub const ALL: [SamplerKind; 11] = [
        SamplerKind::Ddim,
        SamplerKind::Ddpm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2Ancestral,
        SamplerKind::Lms,
        SamplerKind::DpmPp2sAncestral,
        SamplerKind::DpmPp2m,
        SamplerKind::Pndm,
    ];

    /// The API name (`K_EULER`...).
    pub fn api_name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Ddpm => "DDPM",
            SamplerKind::Pndm => "PNDM",
            SamplerKind::Euler => "K_EULER",
            SamplerKind::EulerAncestral => "K_EULER_ANCESTRAL",
            SamplerKind::Heun => "K_HEUN",
            SamplerKind::Dpm2 => "K_DPM_2",
            SamplerKind::Dpm2Ancestral => "K_DPM_2_ANCESTRAL",
            SamplerKind::Lms => "K_LMS",
            SamplerKind::DpmPp2m => "K_DPMPP_2M",
            SamplerKind::DpmPp2sAncestral => "K_DPMPP_2S_ANCESTRAL",
        }
    }

    /// Whether the sampler adds fresh noise during denoising (its images still depend only on
    /// the seed: the noise is drawn from the image's own seeded stream).
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::Ddpm
                | SamplerKind::EulerAncestral
                | SamplerKind::Dpm2Ancestral
                | SamplerKind::DpmPp2sAncestral
        )
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = UnknownSampler;

    /// Parses an API name exactly (`K_EULER`), or case-insensitively (`k_euler`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SamplerKind::ALL
            .into_iter()
            .find(|kind| kind.api_name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownSampler(name.to_owned()))
    }
}

/// A sampler name that is not one of [`SamplerKind::ALL`]; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {0:?}; valid samplers are {list}", list = SamplerKind::ALL.map(SamplerKind::api_name).join(", "))]
pub struct UnknownSampler(pub String);

/// An image to start from (img2img): 8-bit RGB, row-major, `width * height * 3` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct InitImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl InitImage {
    /// The image resized to `width` x `height` with a Lanczos filter (what diffusers'
    /// `VaeImageProcessor` does with PIL); the same image when the size already matches.
    pub fn resized(&self, width: u32, height: u32) -> InitImage {
        InitImage { width, height, rgb: resize_rgb8(&self.rgb, (self.width, self.height), (width, height)) }
    }
}

/// Interleaved 8-bit RGB of size `from` resized to `to` with a Lanczos filter (a copy when the
/// sizes match). A malformed buffer (wrong length) gives black rather than a panic.
pub fn resize_rgb8(rgb: &[u8], from: (u32, u32), to: (u32, u32)) -> Vec<u8> {
    if from == to {
        return rgb.to_vec();
    }
    let Some(buffer) = image::RgbImage::from_raw(from.0, from.1, rgb.to_vec()) else {
        return vec![0; to.0 as usize * to.1 as usize * 3];
    };
    image::imageops::resize(&buffer, to.0, to.1, image::imageops::FilterType::Lanczos3).into_raw()
}

impl fmt::Debug for InitImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitImage").field("width", &self.width).field("height", &self.height).finish_non_exhaustive()
    }
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
    /// `None` = the model's default sampler.
    pub sampler: Option<SamplerKind>,
    /// `Some(true)` forces Karras σs, `Some(false)` forbids them, `None` follows the model's
    /// scheduler config. Only the σ-space samplers and `K_DPMPP_2M` have Karras σs.
    pub karras: Option<bool>,
    /// img2img: the image to start from (resized to `width` x `height`) and how much of it to
    /// replace, in (0, 1] as diffusers defines `strength`: 1 ignores the image's content.
    pub init_image: Option<InitImage>,
    pub strength: f32,
}

impl GenerationSpec {
    /// A text-to-image spec with the engine's defaults for everything else.
    pub fn text_to_image(prompt: impl Into<String>, width: u32, height: u32, steps: u32, guidance: f32) -> Self {
        GenerationSpec {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width,
            height,
            steps,
            guidance,
            seeds: vec![0],
            sampler: None,
            karras: None,
            init_image: None,
            strength: 1.0,
        }
    }
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
