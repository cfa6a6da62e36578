//! Wall-clock benchmark of one txt2img generation, split by stage.
//!
//! ```text
//! cargo bench -p easel-diffusion --bench txt2img -- [--model DIR] [--size PX] [--steps N] [--images N]
//!     [--runs N] [--threads N] [--sampler NAME] [--guidance G] [--prompt TEXT] [--latents FILE.npy] [--stdin]
//! ```
//! Defaults: the committed tiny model, 1024², the model's default steps and guidance, one image,
//! three timed runs after one untimed warm-up run. Prints every run and the median.
//!
//! `--stdin` is for `infra/bench/compare.py`, which alternates easel and diffusers runs: after
//! loading, every line read from stdin runs one generation and prints one JSON line (stage times,
//! UNet calls, the process's peak RSS so far).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use easel_core::generator::{GenerationSpec, Generator, NoProgress};
use easel_diffusion::{OrtRuntime, Overrides, Pipeline, PipelineOptions, Timings, find_onnxruntime_library};

fn main() {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-sd");
    let (mut size, mut steps, mut images, mut runs, mut threads) = (1024u32, None, 1usize, 3usize, None);
    let (mut sampler, mut guidance, mut latents, mut stdin) = (None, None, None, false);
    let mut prompt = "a photo of an astronaut riding a horse on mars".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()),
            "--size" => size = value().parse().unwrap(),
            "--steps" => steps = Some(value().parse().unwrap()),
            "--images" => images = value().parse().unwrap(),
            "--runs" => runs = value().parse().unwrap(),
            "--threads" => threads = Some(value().parse().unwrap()),
            "--sampler" => sampler = Some(value().parse::<easel_core::generator::SamplerKind>().unwrap()),
            "--guidance" => guidance = Some(value().parse().unwrap()),
            "--prompt" => prompt = value(),
            "--latents" => latents = Some(ndarray_npy::read_npy::<_, ndarray::Array4<f32>>(value()).unwrap()),
            "--stdin" => stdin = true,
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }

    let library = find_onnxruntime_library(&[PathBuf::from(env!("CARGO_MANIFEST_DIR"))])
        .expect("ONNX Runtime not found: run `make setup`");
    let runtime = OrtRuntime::init(&library).unwrap();
    let options = PipelineOptions { intra_threads: threads.and_then(NonZeroUsize::new), ..PipelineOptions::default() };
    let started = std::time::Instant::now();
    let pipeline = Pipeline::load(runtime, &model, &options).unwrap();
    let load = started.elapsed();
    let d = pipeline.descriptor().clone();
    let spec = GenerationSpec {
        seeds: (1..=images as u64).collect(),
        sampler,
        ..GenerationSpec::text_to_image(
            prompt,
            size,
            size,
            steps.unwrap_or(d.default_steps),
            guidance.unwrap_or(d.default_guidance),
        )
    };
    let overrides = Overrides { latents, step_noise: None, posterior_noise: None };
    if stdin {
        serve_stdin(&pipeline, &spec, &overrides);
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    println!(
        "model {} ({}), {size}x{size}, {} steps, guidance {}, {images} image(s), {cores} cores, load {}",
        d.id,
        model.display(),
        spec.steps,
        spec.guidance,
        ms(load)
    );
    pipeline.generate(&spec, &NoProgress).unwrap(); // warm-up: first-run allocations, page faults
    let mut all: Vec<Timings> = (0..runs)
        .map(|run| {
            let (_, t) = pipeline.generate_timed(&spec, &overrides, &NoProgress).unwrap();
            println!("run {run}: {}", describe(&t));
            t
        })
        .collect();
    all.sort_by_key(|t| t.total);
    if let Some(median) = all.get(all.len() / 2) {
        println!("median: {}", describe(median));
    }
}

/// One generation per line of stdin, one JSON line of figures per generation on stdout.
fn serve_stdin(pipeline: &Pipeline, spec: &GenerationSpec, overrides: &Overrides) {
    use std::io::{BufRead, Write};
    println!("{{\"ready\": true}}");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let (generation, t) = pipeline.generate_timed(spec, overrides, &NoProgress).unwrap();
        let inside = t.inside_onnx_runtime();
        println!(
            "{}",
            serde_json::json!({
                "total_ms": t.total.as_secs_f64() * 1e3,
                "text_encoder_ms": t.text_encoder.as_secs_f64() * 1e3,
                "unet_ms": t.unet.as_secs_f64() * 1e3,
                "vae_decoder_ms": t.vae_decoder.as_secs_f64() * 1e3,
                "outside_ort_ms": t.total.saturating_sub(inside).as_secs_f64() * 1e3,
                "unet_calls": generation.unet_calls,
                "peak_rss_mib": peak_rss_mib(),
            })
        );
        std::io::stdout().flush().unwrap();
    }
}

/// `VmHWM` of this process, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn describe(t: &Timings) -> String {
    let other = t.total.saturating_sub(t.inside_onnx_runtime());
    format!(
        "total {} = text encoder {} + UNet {} + VAE decoder {} + other {}",
        ms(t.total),
        ms(t.text_encoder),
        ms(t.unet),
        ms(t.vae_decoder),
        ms(other)
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
