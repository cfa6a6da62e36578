//! Shared set-up for the tests that run the tiny model through ONNX Runtime.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use easel_core::generator::{GenerationSpec, ProgressSink};
use easel_diffusion::{OrtRuntime, Pipeline, PipelineOptions, find_onnxruntime_library};

/// The ONNX Runtime of this test process. Fails (never skips) when the library is missing.
pub fn runtime() -> &'static OrtRuntime {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(library) = find_onnxruntime_library(&[start]) else {
        panic!(
            "the ONNX Runtime library was not found in .easel/onnxruntime/ and ORT_DYLIB_PATH is unset: \
             run `make setup` first"
        );
    };
    OrtRuntime::init(&library).unwrap_or_else(|e| panic!("{}; run `make setup`", chain(&e)))
}

/// An error and its sources, "outer: inner: innermost".
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// The committed tiny SD-1.x model.
pub fn tiny_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-sd")
}

/// One pipeline per test binary, shared by its tests (sessions are created once, as in production).
pub fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::load(runtime(), &tiny_model_dir(), &options()).unwrap())
}

pub fn options() -> PipelineOptions {
    // Tests run in parallel on two cores: one intra-op thread per session avoids oversubscription.
    PipelineOptions { intra_threads: std::num::NonZeroUsize::new(1), ..PipelineOptions::default() }
}

/// A small, quick request: 256², 4 steps, guided.
pub fn spec(seeds: &[u64]) -> GenerationSpec {
    GenerationSpec {
        prompt: "a watercolor fox in the snow".to_owned(),
        negative_prompt: String::new(),
        width: 256,
        height: 256,
        steps: 4,
        guidance: 7.5,
        seeds: seeds.to_vec(),
        sampler: None,
        karras: None,
        init_image: None,
        strength: 1.0,
    }
}

/// Records every progress report; cancels once `cancel_after` steps are done.
#[derive(Debug, Default)]
pub struct Recorder {
    pub cancel_after: Option<u32>,
    pub steps: Mutex<Vec<(u32, u32)>>,
}

impl ProgressSink for Recorder {
    fn step(&self, done: u32, total: u32) {
        self.steps.lock().unwrap().push((done, total));
    }

    fn cancelled(&self) -> bool {
        let done = self.steps.lock().unwrap().last().map_or(0, |s| s.0);
        self.cancel_after.is_some_and(|after| done >= after)
    }
}
