//! easel-diffusion: Stable-Diffusion-family text-to-image on ONNX Runtime (the only crate of the
//! workspace that links `ort`).
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use easel_core::generator::{GenerationSpec, Generator, NoProgress};
//! use easel_diffusion::{OrtRuntime, Pipeline, PipelineOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = OrtRuntime::init_discovered(&[PathBuf::from(".")])?; // once per process
//! let pipeline = Pipeline::load(runtime, Path::new("models/tiny-sd"), &PipelineOptions::default())?;
//! let d = pipeline.descriptor();
//! let spec = GenerationSpec {
//!     seeds: vec![7, 8],
//!     ..GenerationSpec::text_to_image("a lighthouse at dusk", 512, 512, d.default_steps, d.default_guidance)
//! };
//! let generation = pipeline.generate(&spec, &NoProgress)?;
//! assert_eq!(generation.images.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! - [`runtime`]: finding the ONNX Runtime library and creating the process's one environment.
//! - [`Pipeline`]: loads a diffusers/optimum ONNX model folder once and implements
//!   [`easel_core::generator::Generator`].
//! - [`ClipTokenizer`]: CLIP BPE identical to HF transformers' `CLIPTokenizer`.
//! - Samplers: the ten Stability v1 samplers plus PNDM, ports of diffusers' schedulers (and of
//!   k-diffusion for `K_DPMPP_2S_ANCESTRAL`) that reproduce diffusers' images given the same
//!   initial latents and noise draws; see the table in `scheduler/mod.rs`.
//! - [`nudenet`]: the image moderation detector (NudeNet's YOLOv8), with the `nudenet` Python
//!   package's pre- and post-processing, and [`NudeNetModerator`], the worker's moderator.

pub mod device;
mod error;
mod latents;
mod model;
pub mod nudenet;
mod onnx;
mod pipeline;
pub mod runtime;
mod scheduler;
mod tokenizer;

pub use device::Device;
pub use easel_core::generator::SamplerKind;
pub use error::{LoadError, RuntimeError};
pub use nudenet::{NudeNet, NudeNetModerator};
pub use pipeline::{Overrides, Pipeline, PipelineOptions, Timings};
pub use runtime::{OrtRuntime, find_onnxruntime_library};
pub use tokenizer::{ClipTokenizer, TokenizedPrompt};
