//! The pipeline reads input types and ranks from the graphs: exports that differ only in their
//! I/O contract must give the same images, and contracts it cannot serve must be refused at load.
//!
//! The stand-in graphs (`tests/fixtures/io-variants/`, written by `make_io_variants.py`) have the
//! I/O of real SD exports and trivial arithmetic inside.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use easel_core::generator::{GeneratedImage, GenerationSpec, Generator, InitImage, NoProgress, SamplerKind};
use easel_diffusion::{LoadError, Pipeline};

fn variants() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io-variants")
}

/// A model folder around the given stand-in graphs, with the tiny model's tokenizer and scheduler.
fn folder(text_encoder: &str, unet: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tiny = common::tiny_model_dir();
    for sub in ["text_encoder", "unet", "vae_decoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for file in ["vocab.json", "merges.txt", "special_tokens_map.json"] {
        std::fs::copy(tiny.join("tokenizer").join(file), root.join("tokenizer").join(file)).unwrap();
    }
    std::fs::copy(tiny.join("scheduler/scheduler_config.json"), root.join("scheduler/scheduler_config.json")).unwrap();
    std::fs::copy(variants().join(text_encoder), root.join("text_encoder/model.onnx")).unwrap();
    std::fs::copy(variants().join(unet), root.join("unet/model.onnx")).unwrap();
    std::fs::copy(variants().join("vae_decoder.onnx"), root.join("vae_decoder/model.onnx")).unwrap();
    let write =
        |relative: &str, json: serde_json::Value| std::fs::write(root.join(relative), json.to_string()).unwrap();
    write(
        "unet/config.json",
        serde_json::json!({"in_channels": 4, "sample_size": 8, "down_block_types": ["DownBlock2D"]}),
    );
    write("vae_decoder/config.json", serde_json::json!({"block_out_channels": [1, 1, 1, 1], "latent_channels": 4}));
    dir
}

fn generate(text_encoder: &str, unet: &str, steps: u32) -> (Vec<GeneratedImage>, Vec<String>) {
    let dir = folder(text_encoder, unet);
    let pipeline = Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap();
    let spec = GenerationSpec { width: 64, height: 64, steps, ..common::spec(&[1, 2]) };
    let generation = pipeline.generate(&spec, &NoProgress).unwrap();
    (generation.images, generation.warnings)
}

fn load_error(text_encoder: &str, unet: &str) -> LoadError {
    let dir = folder(text_encoder, unet);
    Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap_err()
}

#[test]
fn every_timestep_type_and_rank_gives_the_same_image_when_timesteps_are_whole() {
    // 10 linspace steps over 1000 training steps: 999, 888, ..., 0, all whole numbers.
    let (reference, warnings) = generate("text_encoder_int64.onnx", "unet_float_scalar.onnx", 10);
    assert!(warnings.is_empty(), "{warnings:?}");
    let distinct: std::collections::HashSet<u8> = reference[0].rgb.iter().copied().collect();
    assert!(distinct.len() > 8, "the stand-in graphs should give a non-trivial image: {distinct:?}");
    for unet in ["unet_float_batch.onnx", "unet_float_one.onnx", "unet_int64_batch.onnx"] {
        let (images, warnings) = generate("text_encoder_int64.onnx", unet, 10);
        assert!(warnings.is_empty(), "{unet}: {warnings:?}");
        assert_eq!(images, reference, "{unet}");
    }
}

#[test]
fn an_integer_timestep_unet_rounds_fractional_timesteps_and_says_so() {
    // 7 linspace steps: 999, 832.5, 666, 499.5, ...
    let (_, warnings) = generate("text_encoder_int64.onnx", "unet_int64_batch.onnx", 7);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("integer timesteps"), "{warnings:?}");
    let (_, warnings) = generate("text_encoder_int64.onnx", "unet_float_scalar.onnx", 7);
    assert!(warnings.is_empty(), "a float UNet gets the exact timesteps: {warnings:?}");
}

#[test]
fn int32_and_int64_text_encoders_give_the_same_image() {
    let (int64, _) = generate("text_encoder_int64.onnx", "unet_float_scalar.onnx", 3);
    let (int32, _) = generate("text_encoder_int32.onnx", "unet_float_scalar.onnx", 3);
    assert_eq!(int32, int64);
}

#[test]
fn a_float16_unet_is_refused_at_load_naming_the_file() {
    let err = load_error("text_encoder_int64.onnx", "unet_float16_scalar.onnx");
    assert!(matches!(err, LoadError::Unsupported { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("unet/model.onnx") && message.contains("float16"), "{message}");
}

#[test]
fn an_sdxl_style_unet_is_refused_at_load_naming_the_extra_input() {
    let err = load_error("text_encoder_int64.onnx", "unet_sdxl_extra_input.onnx");
    assert!(matches!(err, LoadError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("text_embeds"), "{err}");
}

#[test]
fn an_integer_timestep_unet_refuses_samplers_that_evaluate_between_timesteps() {
    let dir = folder("text_encoder_int64.onnx", "unet_int64_batch.onnx");
    let pipeline = Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap();
    for sampler in [SamplerKind::Dpm2, SamplerKind::Dpm2Ancestral, SamplerKind::DpmPp2sAncestral] {
        let spec = GenerationSpec { width: 64, height: 64, steps: 4, sampler: Some(sampler), ..common::spec(&[1]) };
        let err = pipeline.generate(&spec, &NoProgress).unwrap_err().to_string();
        assert!(err.contains("integer timesteps") && err.contains(sampler.api_name()), "{err}");
    }
    let spec =
        GenerationSpec { width: 64, height: 64, steps: 4, sampler: Some(SamplerKind::Ddim), ..common::spec(&[1]) };
    assert!(pipeline.generate(&spec, &NoProgress).is_ok(), "DDIM's timesteps are whole");
}

#[test]
fn a_model_without_a_vae_encoder_refuses_img2img() {
    let dir = folder("text_encoder_int64.onnx", "unet_float_scalar.onnx");
    let pipeline = Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap();
    let init = InitImage { width: 8, height: 8, rgb: vec![128; 8 * 8 * 3] };
    let spec = GenerationSpec { width: 64, height: 64, init_image: Some(init), strength: 0.5, ..common::spec(&[1]) };
    let err = pipeline.generate(&spec, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("vae_encoder"), "{err}");
}

/// img2img through a stand-in VAE encoder of either exporter convention.
fn img2img(encoder: &str, init: &InitImage) -> GeneratedImage {
    let dir = folder("text_encoder_int64.onnx", "unet_float_scalar.onnx");
    std::fs::create_dir_all(dir.path().join("vae_encoder")).unwrap();
    std::fs::copy(variants().join(encoder), dir.path().join("vae_encoder/model.onnx")).unwrap();
    let pipeline = Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap();
    let spec = GenerationSpec {
        width: 64,
        height: 64,
        steps: 10,
        init_image: Some(init.clone()),
        strength: 0.3,
        ..common::spec(&[4])
    };
    pipeline.generate(&spec, &NoProgress).unwrap().images.remove(0)
}

#[test]
fn both_vae_encoder_conventions_start_img2img_from_the_same_latents() {
    // A left-to-right gradient; the stand-in encoders pool it into latents.
    let rgb: Vec<u8> = (0..64 * 64).flat_map(|i| [(i % 64 * 4) as u8, 90, (255 - i % 64 * 4) as u8]).collect();
    let init = InitImage { width: 64, height: 64, rgb };
    // `latent_parameters` is sampled with σ ≈ 4.5e-5 around the mean `latent_sample` returns.
    let from_parameters = img2img("vae_encoder_parameters.onnx", &init);
    let from_sample = img2img("vae_encoder_sample.onnx", &init);
    let worst = from_parameters.rgb.iter().zip(&from_sample.rgb).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
    assert!(worst <= 1, "the two conventions differ by {worst} levels");
    // And the image matters: another init image gives another result.
    let flat = InitImage { width: 64, height: 64, rgb: vec![128; 64 * 64 * 3] };
    assert_ne!(img2img("vae_encoder_sample.onnx", &flat).rgb, from_sample.rgb);
}

#[test]
fn a_vae_encoder_with_the_wrong_channel_count_is_refused_at_load() {
    let dir = folder("text_encoder_int64.onnx", "unet_float_scalar.onnx");
    std::fs::create_dir_all(dir.path().join("vae_encoder")).unwrap();
    // The decoder stand-in outputs 3 channels: neither 4 (a sample) nor 8 (mean and log-variance).
    std::fs::copy(variants().join("vae_decoder.onnx"), dir.path().join("vae_encoder/model.onnx")).unwrap();
    let err = Pipeline::load(common::runtime(), dir.path(), &common::options()).unwrap_err().to_string();
    assert!(err.contains("vae_encoder/model.onnx") && err.contains("has 3 channels"), "{err}");
}
