//! easel's images against diffusers' own ONNX pipeline on the same ONNX folder.
//!
//! `fixtures/parity/` holds what `fixtures/parity/make_parity.py` recorded from diffusers 0.42.1's
//! `OnnxStableDiffusionPipeline` (and k-diffusion's DPM++ 2S ancestral) on `models/tiny-sd`: the
//! initial latents, every noise draw of the stochastic samplers, and the output images in [0, 1]
//! before 8-bit quantization. Each case is rerun here through easel's pipeline with the same
//! latents, draws, prompt, negative prompt, guidance and steps; no Python is needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use easel_core::generator::{GenerationSpec, InitImage, SamplerKind};
use easel_diffusion::{Overrides, Pipeline};
use ndarray::{Array3, Array4, Array5, Axis};

/// The bar: max |easel − diffusers| in [0, 1] pixel space.
const TOLERANCE: f32 = 1e-3;

#[derive(Debug, serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
    /// Cases on the other exported folders (the conversion script's convention, the SD 2.x family).
    families: Vec<Case>,
    img2img: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    sampler: String,
    steps: u32,
    guidance: f32,
    n: usize,
    width: u32,
    height: u32,
    karras: Option<bool>,
    scheduler: serde_json::Map<String, serde_json::Value>,
    prompt: String,
    negative_prompt: String,
    noise_draws: usize,
    /// img2img cases only.
    strength: Option<f32>,
    /// Another model folder than models/tiny-sd, relative to the repository root.
    #[serde(default)]
    model: Option<String>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

/// A copy of the tiny model whose scheduler config has `replacements`, in `dir`.
fn model_with_scheduler(dir: &Path, replacements: &serde_json::Map<String, serde_json::Value>) -> PathBuf {
    let source = common::tiny_model_dir();
    let target = dir.join("model");
    copy_dir(&source, &target);
    let config_path = target.join("scheduler/scheduler_config.json");
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.extend(replacements.clone());
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    target
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// Runs one recorded case through easel; returns the largest pixel difference.
fn run_case(case: &Case, pipeline: &Pipeline) -> f32 {
    let dir = fixtures();
    let latents: Array4<f32> = ndarray_npy::read_npy(dir.join(format!("{}.latents.npy", case.name))).unwrap();
    let reference: Array4<f32> = ndarray_npy::read_npy(dir.join(format!("{}.images.npy", case.name))).unwrap();
    let step_noise = (case.noise_draws > 0).then(|| {
        let draws: Array5<f32> = ndarray_npy::read_npy(dir.join(format!("{}.noise.npy", case.name))).unwrap();
        draws.axis_iter(Axis(0)).map(|draw| draw.to_owned()).collect::<Vec<Array4<f32>>>()
    });
    let sampler: SamplerKind = case.sampler.parse().unwrap();
    let (init_image, posterior_noise) = match case.strength {
        None => (None, None),
        Some(_) => {
            let rgb: Array3<u8> = ndarray_npy::read_npy(dir.join(format!("{}.init.npy", case.name))).unwrap();
            let (height, width, _) = rgb.dim();
            let init = InitImage { width: width as u32, height: height as u32, rgb: rgb.iter().copied().collect() };
            let posterior: Array4<f32> =
                ndarray_npy::read_npy(dir.join(format!("{}.posterior.npy", case.name))).unwrap();
            (Some(init), Some(posterior))
        }
    };
    let spec = GenerationSpec {
        negative_prompt: case.negative_prompt.clone(),
        seeds: (0..case.n as u64).collect(),
        sampler: Some(sampler),
        karras: case.karras,
        init_image,
        strength: case.strength.unwrap_or(1.0),
        ..GenerationSpec::text_to_image(&case.prompt, case.width, case.height, case.steps, case.guidance)
    };
    let overrides = Overrides { latents: Some(latents), step_noise, posterior_noise };
    let (images, _) = pipeline
        .generate_unit_pixels(&spec, &overrides)
        .unwrap_or_else(|e| panic!("{}: {}", case.name, common::chain(&e)));
    assert_eq!(images.len(), case.n, "{}", case.name);
    images
        .iter()
        .zip(reference.outer_iter())
        .flat_map(|(ours, theirs)| {
            assert_eq!(ours.shape(), theirs.shape(), "{}", case.name);
            ours.iter().zip(theirs.iter()).map(|(a, b)| (a - b).abs()).collect::<Vec<f32>>()
        })
        .fold(0.0, f32::max)
}

fn cases() -> Cases {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap()).unwrap()
}

/// Runs every case (with the tiny model, or a copy whose scheduler config the case changes),
/// prints the table of differences and fails naming every case over the tolerance.
fn check_cases(cases: &[Case]) {
    let mut table = vec![format!("{:<32} {:<22} {:>8} {:>14}", "case", "sampler", "strength", "max |Δ| (0..1)")];
    let mut failed = Vec::new();
    for case in cases {
        let diff = if let Some(model) = &case.model {
            let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(model);
            let pipeline = Pipeline::load(common::runtime(), &folder, &common::options()).unwrap();
            run_case(case, &pipeline)
        } else if case.scheduler.is_empty() {
            run_case(case, common::pipeline())
        } else {
            let dir = tempfile::tempdir().unwrap();
            let model = model_with_scheduler(dir.path(), &case.scheduler);
            let pipeline = Pipeline::load(common::runtime(), &model, &common::options()).unwrap();
            run_case(case, &pipeline)
        };
        let strength = case.strength.map_or_else(|| "-".to_owned(), |s| s.to_string());
        table.push(format!("{:<32} {:<22} {strength:>8} {diff:>14.2e}", case.name, case.sampler));
        if diff.is_nan() || diff > TOLERANCE {
            failed.push(case.name.clone());
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failed.is_empty(), "over {TOLERANCE}: {failed:?}\n{}", table.join("\n"));
}

#[test]
fn every_sampler_reproduces_the_diffusers_onnx_pipeline_within_1e_3() {
    let cases = cases().cases;
    let covered: std::collections::HashSet<SamplerKind> = cases.iter().map(|c| c.sampler.parse().unwrap()).collect();
    assert_eq!(covered.len(), SamplerKind::ALL.len(), "every sampler has a parity case");
    check_cases(&cases);
}

#[test]
fn the_conversion_script_convention_and_an_sd2_v_prediction_export_reproduce_diffusers_within_1e_3() {
    let cases = cases().families;
    let models: std::collections::HashSet<&str> = cases.iter().filter_map(|c| c.model.as_deref()).collect();
    assert_eq!(models.len(), 2, "both exported folders have cases");
    check_cases(&cases);
}

#[test]
fn img2img_reproduces_diffusers_img2img_definition_within_1e_3() {
    let cases = cases().img2img;
    assert!(cases.len() >= 5 && cases.iter().all(|c| c.strength.is_some()));
    check_cases(&cases);
}

#[test]
fn replayed_noise_of_the_wrong_count_is_refused() {
    let dir = fixtures();
    let latents: Array4<f32> = ndarray_npy::read_npy(dir.join("k_euler_ancestral.latents.npy")).unwrap();
    let draws: Array5<f32> = ndarray_npy::read_npy(dir.join("k_euler_ancestral.noise.npy")).unwrap();
    let mut step_noise: Vec<Array4<f32>> = draws.axis_iter(Axis(0)).map(|d| d.to_owned()).collect();
    step_noise.pop();
    let spec = GenerationSpec {
        sampler: Some(SamplerKind::EulerAncestral),
        ..GenerationSpec::text_to_image("x", 64, 64, 6, 7.5)
    };
    let overrides = Overrides { latents: Some(latents), step_noise: Some(step_noise), posterior_noise: None };
    let err = common::pipeline().generate_unit_pixels(&spec, &overrides).unwrap_err().to_string();
    assert!(err.contains("step_noise") && err.contains("more than the 5"), "{err}");
}
