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
//! let spec = GenerationSpec {
//!     prompt: "a lighthouse at dusk".into(),
//!     negative_prompt: String::new(),
//!     width: 512,
//!     height: 512,
//!     steps: pipeline.descriptor().default_steps,
//!     guidance: pipeline.descriptor().default_guidance,
//!     seeds: vec![7, 8],
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
//! - Samplers: `K_EULER` (diffusers' `EulerDiscreteScheduler`), reproducing diffusers numerically
//!   given the same initial latents.

mod error;
mod latents;
mod model;
mod onnx;
mod pipeline;
pub mod runtime;
mod scheduler;
mod tokenizer;

pub use error::{LoadError, RuntimeError};
pub use pipeline::{Pipeline, PipelineOptions, Timings};
pub use runtime::{OrtRuntime, find_onnxruntime_library};
pub use scheduler::SamplerKind;
pub use tokenizer::{ClipTokenizer, TokenizedPrompt};
