//! The txt2img pipeline end to end on the committed tiny model (random weights: it does not follow
//! prompts, but every graph, shape and dtype is SD 1.x's).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Recorder, pipeline, spec};
use easel_core::generator::{GenerateError, GenerationSpec, Generator, InitImage, NoProgress, SamplerKind};
use easel_diffusion::{LoadError, Pipeline, PipelineOptions};
use ndarray::Array4;

fn invalid_message(result: Result<easel_core::generator::Generation, GenerateError>) -> String {
    match result {
        Err(GenerateError::InvalidRequest(message)) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn a_1024_square_generation_gives_one_image_of_the_right_size_per_seed() {
    let pipeline = pipeline();
    let d = pipeline.descriptor();
    let request = easel_core::generator::GenerationSpec {
        width: 1024,
        height: 1024,
        steps: d.default_steps,
        guidance: d.default_guidance,
        ..spec(&[1, 2])
    };
    let generation = pipeline.generate(&request, &NoProgress).unwrap();
    assert_eq!(generation.images.len(), 2);
    for (image, seed) in generation.images.iter().zip([1, 2]) {
        assert_eq!((image.width, image.height, image.seed), (1024, 1024, seed));
        assert_eq!(image.rgb.len(), 1024 * 1024 * 3);
        let distinct: std::collections::HashSet<u8> = image.rgb.iter().copied().collect();
        assert!(distinct.len() > 16, "a flat image means the pipeline lost the signal");
    }
    assert_ne!(generation.images[0].rgb, generation.images[1].rgb);
    assert_eq!(generation.unet_calls, d.default_steps, "two guided images fit in one UNet call per step");
    assert!(generation.warnings.is_empty(), "{:?}", generation.warnings);
}

#[test]
fn same_seed_gives_identical_pixels() {
    let a = pipeline().generate(&spec(&[42]), &NoProgress).unwrap();
    let b = pipeline().generate(&spec(&[42]), &NoProgress).unwrap();
    assert_eq!(a.images[0].rgb, b.images[0].rgb);
    let c = pipeline().generate(&spec(&[43]), &NoProgress).unwrap();
    assert_ne!(a.images[0].rgb, c.images[0].rgb);
}

#[test]
fn a_different_negative_prompt_gives_different_pixels() {
    let plain = pipeline().generate(&spec(&[5]), &NoProgress).unwrap();
    let negative =
        easel_core::generator::GenerationSpec { negative_prompt: "blurry, low quality".to_owned(), ..spec(&[5]) };
    let with_negative = pipeline().generate(&negative, &NoProgress).unwrap();
    assert_ne!(plain.images[0].rgb, with_negative.images[0].rgb);
}

#[test]
fn a_seed_gives_the_same_image_alone_and_in_a_batch() {
    let alone = pipeline().generate(&spec(&[77]), &NoProgress).unwrap();
    let batch = pipeline().generate(&spec(&[11, 77]), &NoProgress).unwrap();
    assert_eq!(batch.images[1].seed, 77);
    assert_eq!(alone.images[0].rgb, batch.images[1].rgb);
}

#[test]
fn batches_above_max_batch_are_chunked_without_changing_any_image() {
    let options = PipelineOptions { max_batch: std::num::NonZeroUsize::MIN, ..common::options() };
    let one_at_a_time = Pipeline::load(common::runtime(), &common::tiny_model_dir(), &options).unwrap();
    let chunked = one_at_a_time.generate(&spec(&[3, 4, 5]), &NoProgress).unwrap();
    assert_eq!(chunked.unet_calls, 3 * 4, "three chunks of one image, four steps");
    let together = pipeline().generate(&spec(&[3, 4, 5]), &NoProgress).unwrap();
    assert_eq!(together.unet_calls, 4);
    for (a, b) in chunked.images.iter().zip(&together.images) {
        assert_eq!(a.rgb, b.rgb, "seed {}", a.seed);
    }
}

#[test]
fn guidance_of_one_runs_without_classifier_free_guidance() {
    let unguided = easel_core::generator::GenerationSpec { guidance: 1.0, ..spec(&[9]) };
    let generation = pipeline().generate(&unguided, &NoProgress).unwrap();
    assert_eq!(generation.images.len(), 1);
    assert_eq!(generation.unet_calls, 4);
    // Without guidance the negative prompt is not encoded at all, so it cannot change the image.
    let with_negative = easel_core::generator::GenerationSpec { negative_prompt: "anything".to_owned(), ..unguided };
    let ignored = pipeline().generate(&with_negative, &NoProgress).unwrap();
    assert_eq!(generation.images[0].rgb, ignored.images[0].rgb);
    assert!(ignored.warnings.iter().any(|w| w.contains("negative prompt")), "{:?}", ignored.warnings);
    let guided = pipeline().generate(&spec(&[9]), &NoProgress).unwrap();
    assert_ne!(generation.images[0].rgb, guided.images[0].rgb);
}

#[test]
fn invalid_sizes_steps_guidance_and_seeds_are_refused_naming_the_field() {
    let p = pipeline();
    let multiple = p.descriptor().size_multiple;
    let cases = [
        (easel_core::generator::GenerationSpec { width: 250, ..spec(&[1]) }, "width"),
        (easel_core::generator::GenerationSpec { height: 0, ..spec(&[1]) }, "height"),
        (easel_core::generator::GenerationSpec { width: p.descriptor().max_side + multiple, ..spec(&[1]) }, "width"),
        (easel_core::generator::GenerationSpec { steps: 0, ..spec(&[1]) }, "steps"),
        (easel_core::generator::GenerationSpec { steps: p.descriptor().max_steps + 1, ..spec(&[1]) }, "steps"),
        (easel_core::generator::GenerationSpec { guidance: -0.5, ..spec(&[1]) }, "guidance"),
        (easel_core::generator::GenerationSpec { guidance: f32::NAN, ..spec(&[1]) }, "guidance"),
        (easel_core::generator::GenerationSpec { guidance: 51.0, ..spec(&[1]) }, "guidance"),
        (spec(&[]), "seeds"),
    ];
    for (request, field) in cases {
        let message = invalid_message(p.generate(&request, &NoProgress));
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let message =
        invalid_message(p.generate(&easel_core::generator::GenerationSpec { width: 250, ..spec(&[1]) }, &NoProgress));
    assert!(message.contains(&format!("multiple of {multiple}")) && message.contains("250"), "{message}");
}

#[test]
fn an_empty_prompt_generates_rather_than_panics() {
    let empty = easel_core::generator::GenerationSpec { prompt: String::new(), ..spec(&[1]) };
    assert_eq!(pipeline().generate(&empty, &NoProgress).unwrap().images.len(), 1);
}

#[test]
fn explicit_latents_replace_the_seeded_noise() {
    let shape = (1, 4, 256 / 8, 256 / 8);
    let latents = Array4::from_shape_fn(shape, |(_, c, y, x)| ((c * 31 + y * 7 + x) as f32 * 0.37).sin());
    let a = pipeline()
        .generate_with(
            &spec(&[1]),
            &easel_diffusion::Overrides { latents: Some(latents.clone()), step_noise: None, posterior_noise: None },
            &NoProgress,
        )
        .unwrap();
    let b = pipeline()
        .generate_with(
            &spec(&[2]),
            &easel_diffusion::Overrides { latents: Some(latents), step_noise: None, posterior_noise: None },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(a.images[0].rgb, b.images[0].rgb, "the seed must not matter once latents are given");
    let seeded = pipeline().generate(&spec(&[1]), &NoProgress).unwrap();
    assert_ne!(a.images[0].rgb, seeded.images[0].rgb);
}

#[test]
fn explicit_latents_of_the_wrong_shape_or_with_nan_are_refused() {
    let wrong = Array4::<f32>::zeros((1, 4, 16, 32));
    let message = invalid_message(pipeline().generate_with(
        &spec(&[1]),
        &easel_diffusion::Overrides { latents: Some(wrong), step_noise: None, posterior_noise: None },
        &NoProgress,
    ));
    assert!(message.contains("latents") && message.contains("[1, 4, 32, 32]"), "{message}");
    let mut nan = Array4::<f32>::zeros((1, 4, 32, 32));
    nan[[0, 2, 3, 4]] = f32::NAN;
    let message = invalid_message(pipeline().generate_with(
        &spec(&[1]),
        &easel_diffusion::Overrides { latents: Some(nan), step_noise: None, posterior_noise: None },
        &NoProgress,
    ));
    assert!(message.contains("finite"), "{message}");
}

#[test]
fn progress_is_reported_after_every_step() {
    let recorder = Recorder::default();
    pipeline().generate(&spec(&[1]), &recorder).unwrap();
    assert_eq!(*recorder.steps.lock().unwrap(), [(1, 4), (2, 4), (3, 4), (4, 4)]);
}

#[test]
fn a_sink_that_cancels_after_step_two_stops_the_generation() {
    let recorder = Recorder { cancel_after: Some(2), ..Recorder::default() };
    let result = pipeline().generate(&spec(&[1, 2]), &recorder);
    assert!(matches!(result, Err(GenerateError::Cancelled)), "{result:?}");
    assert_eq!(*recorder.steps.lock().unwrap(), [(1, 4), (2, 4)]);
}

#[test]
fn an_overlong_prompt_is_generated_with_a_truncation_warning() {
    let long = "a very detailed painting of a lighthouse on a cliff at dusk ".repeat(10);
    let request = easel_core::generator::GenerationSpec { prompt: long.clone(), negative_prompt: long, ..spec(&[1]) };
    let generation = pipeline().generate(&request, &NoProgress).unwrap();
    assert_eq!(
        generation.warnings,
        [
            "negative prompt is longer than 77 CLIP tokens; the end was dropped",
            "prompt is longer than 77 CLIP tokens; the end was dropped"
        ]
    );
}

#[test]
fn the_descriptor_comes_from_the_manifest_and_the_configs() {
    let read = |relative: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(common::tiny_model_dir().join(relative)).unwrap()).unwrap()
    };
    let (manifest, unet, vae) = (read("easel.json"), read("unet/config.json"), read("vae_decoder/config.json"));
    let levels = |config: &serde_json::Value, key: &str| config[key].as_array().unwrap().len() as u32;
    let vae_factor = 1 << (levels(&vae, "block_out_channels") - 1);
    let unet_factor = 1 << (levels(&unet, "down_block_types") - 1);

    let d = pipeline().descriptor();
    assert_eq!(d.id, manifest["name"]);
    assert_eq!(u64::from(d.native_width), manifest["native_width"].as_u64().unwrap());
    assert_eq!(u64::from(d.native_height), manifest["native_height"].as_u64().unwrap());
    assert_eq!(u64::from(d.default_steps), manifest["default_steps"].as_u64().unwrap());
    assert_eq!(f64::from(d.default_guidance), manifest["default_guidance"].as_f64().unwrap());
    assert_eq!(d.size_multiple, vae_factor * unet_factor);
    assert_eq!(d.max_side, 2048 / d.size_multiple * d.size_multiple);
    assert_eq!(d.max_steps, 150);
    assert_eq!(d.default_sampler, "K_EULER");
    assert_eq!(d.hash.len(), 64);
    assert!(d.hash.chars().all(|c| c.is_ascii_hexdigit()));
    let again = Pipeline::load(common::runtime(), &common::tiny_model_dir(), &common::options()).unwrap();
    assert_eq!(again.descriptor(), d, "loading twice describes the same model");
}

#[test]
fn a_folder_missing_the_unet_graph_fails_to_load_naming_the_file() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&common::tiny_model_dir(), copy.path());
    std::fs::remove_file(copy.path().join("unet/model.onnx")).unwrap();
    let err = Pipeline::load(common::runtime(), copy.path(), &common::options()).unwrap_err();
    assert!(matches!(&err, LoadError::MissingFile { path, .. } if path.ends_with("unet/model.onnx")), "{err:?}");
    assert!(err.to_string().contains("unet/model.onnx"), "{err}");
}

#[test]
fn a_corrupt_graph_fails_to_load_naming_the_file() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&common::tiny_model_dir(), copy.path());
    std::fs::write(copy.path().join("vae_decoder/model.onnx"), b"not onnx").unwrap();
    let err = Pipeline::load(common::runtime(), copy.path(), &common::options()).unwrap_err();
    assert!(matches!(&err, LoadError::Session { path, .. } if path.ends_with("vae_decoder/model.onnx")), "{err:?}");
}

#[test]
fn a_request_above_the_max_generation_side_is_generated_smaller_and_upscaled() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&common::tiny_model_dir(), copy.path());
    let manifest_path = copy.path().join("easel.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["max_generation_side"] = 128.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let capped = Pipeline::load(common::runtime(), copy.path(), &common::options()).unwrap();

    let request = GenerationSpec { width: 512, height: 256, ..spec(&[3]) };
    let generation = capped.generate(&request, &NoProgress).unwrap();
    let image = &generation.images[0];
    assert_eq!((image.width, image.height, image.rgb.len()), (512, 256, 512 * 256 * 3));
    assert_eq!(
        generation.warnings,
        ["generated at 128x64 (this model's largest generation side is 128) and upscaled to 512x256"]
    );
    // The same image as the uncapped model's at 128x64, resized.
    let small = pipeline().generate(&GenerationSpec { width: 128, height: 64, ..spec(&[3]) }, &NoProgress).unwrap();
    assert_eq!(image.rgb, easel_core::generator::resize_rgb8(&small.images[0].rgb, (128, 64), (512, 256)));
    // Within the cap nothing changes.
    let within = capped.generate(&GenerationSpec { width: 128, height: 64, ..spec(&[3]) }, &NoProgress).unwrap();
    assert_eq!(within.images[0].rgb, small.images[0].rgb);
    assert!(within.warnings.is_empty(), "{:?}", within.warnings);

    manifest["max_generation_side"] = 100.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = Pipeline::load(common::runtime(), copy.path(), &common::options()).unwrap_err();
    assert!(err.to_string().contains("max_generation_side must be a positive multiple of"), "{err}");
}

/// Copies a model folder, linking the (read-only) graphs instead of copying them.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn every_sampler_gives_a_seed_the_same_image_alone_and_in_a_batch() {
    for sampler in SamplerKind::ALL {
        let with = |seeds: &[u64]| GenerationSpec { width: 128, height: 128, sampler: Some(sampler), ..spec(seeds) };
        let alone = pipeline().generate(&with(&[77]), &NoProgress).unwrap();
        let batch = pipeline().generate(&with(&[11, 77]), &NoProgress).unwrap();
        assert_eq!(alone.images[0].rgb, batch.images[1].rgb, "{sampler}");
        assert_ne!(batch.images[0].rgb, batch.images[1].rgb, "{sampler}");
    }
}

#[test]
fn samplers_give_different_images_and_report_what_they_cost() {
    // Four steps: two-evaluation samplers make 2N − 1 UNet calls; PNDM on this config (no
    // skip_prk_steps) runs twelve Runge-Kutta warm-up evaluations, then N − 3 PLMS ones.
    let expected_calls = |kind: SamplerKind| match kind {
        SamplerKind::Heun | SamplerKind::Dpm2 | SamplerKind::Dpm2Ancestral | SamplerKind::DpmPp2sAncestral => 7,
        SamplerKind::Pndm => 13,
        _ => 4,
    };
    let mut images = Vec::new();
    for sampler in SamplerKind::ALL {
        let request = GenerationSpec { width: 128, height: 128, sampler: Some(sampler), ..spec(&[5]) };
        let recorder = Recorder::default();
        let generation = pipeline().generate(&request, &recorder).unwrap();
        assert_eq!(generation.unet_calls, expected_calls(sampler), "{sampler}");
        let steps = recorder.steps.lock().unwrap().clone();
        assert_eq!(steps.last(), Some(&(expected_calls(sampler), expected_calls(sampler))), "{sampler}");
        images.push((sampler, generation.images[0].rgb.clone()));
    }
    for (i, (a, pixels_a)) in images.iter().enumerate() {
        for (b, pixels_b) in &images[i + 1..] {
            assert_ne!(pixels_a, pixels_b, "{a} and {b} gave the same image");
        }
    }
}

#[test]
fn karras_sigmas_change_the_image_and_are_refused_where_they_do_not_exist() {
    let request =
        |karras| GenerationSpec { width: 128, height: 128, sampler: Some(SamplerKind::DpmPp2m), karras, ..spec(&[5]) };
    let plain = pipeline().generate(&request(None), &NoProgress).unwrap();
    let karras = pipeline().generate(&request(Some(true)), &NoProgress).unwrap();
    assert_ne!(plain.images[0].rgb, karras.images[0].rgb);
    let ddim = GenerationSpec { sampler: Some(SamplerKind::Ddim), ..request(Some(true)) };
    let message = invalid_message(pipeline().generate(&ddim, &NoProgress));
    assert!(message.contains("DDIM") && message.contains("Karras"), "{message}");
}

#[test]
fn img2img_follows_the_init_image_more_the_lower_the_strength() {
    // With random weights "keeping the image" cannot be judged by looks; what strength controls is
    // how much fresh noise replaces the encoded image. So with the same seed, two different init
    // images give clearly different outputs at strength 0.1 (only the last step, from σ ≈ 0.03)
    // and nearly the same one at strength 1 (the image drowned in noise of σ ≈ 14.6).
    let size = 128;
    let sources = pipeline().generate(&GenerationSpec { width: size, height: size, ..spec(&[21, 22]) }, &NoProgress);
    let sources = sources.unwrap().images;
    // Smaller init images: they are resized to the requested size.
    let inits: Vec<InitImage> = sources
        .iter()
        .map(|image| InitImage { width: size, height: size, rgb: image.rgb.clone() }.resized(96, 80))
        .collect();
    let image_influence = |strength: f32| {
        let outputs: Vec<Vec<u8>> = inits
            .iter()
            .map(|init| {
                let request = GenerationSpec {
                    width: size,
                    height: size,
                    steps: 10,
                    init_image: Some(init.clone()),
                    strength,
                    ..spec(&[8])
                };
                let generation = pipeline().generate(&request, &NoProgress).unwrap();
                let again = pipeline().generate(&request, &NoProgress).unwrap();
                assert_eq!(generation.images, again.images, "img2img is deterministic per seed");
                generation.images[0].rgb.clone()
            })
            .collect();
        let diff: f64 =
            outputs[0].iter().zip(&outputs[1]).map(|(&a, &b)| f64::from((i16::from(a) - i16::from(b)).abs())).sum();
        diff / outputs[0].len() as f64
    };
    let (low, high) = (image_influence(0.1), image_influence(1.0));
    assert!(low > high * 4.0, "the init image should matter more at strength 0.1 ({low:.2}) than at 1.0 ({high:.2})");
}

#[test]
fn img2img_strength_outside_its_range_or_leaving_no_step_is_refused() {
    let init = InitImage { width: 64, height: 64, rgb: vec![200; 64 * 64 * 3] };
    for (strength, words) in [(0.0, "strength must be"), (1.5, "strength must be"), (0.1, "no denoising step")] {
        let request = GenerationSpec { init_image: Some(init.clone()), strength, ..spec(&[1]) };
        let message = invalid_message(pipeline().generate(&request, &NoProgress));
        assert!(message.contains(words), "{strength}: {message}");
    }
}

#[test]
fn asking_for_cuda_where_onnx_runtime_lacks_it_fails_at_load_and_says_so() {
    use ort::ep::ExecutionProvider as _;
    let options = PipelineOptions { device: easel_diffusion::Device::Cuda { device_id: 0 }, ..common::options() };
    let loaded = Pipeline::load(common::runtime(), &common::tiny_model_dir(), &options);
    if ort::ep::CUDA::is_available().unwrap_or(false) {
        // A CUDA build of ONNX Runtime (onnxruntime-gpu) on a GPU host: the model loads there.
        loaded.unwrap();
        return;
    }
    // The CPU wheel: no silent fallback to the CPU, and the error chain names the provider.
    let err = loaded.unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("CUDA"), "{chain}");
}
