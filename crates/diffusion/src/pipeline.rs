//! The txt2img pipeline: tokenize → text encoder → denoising loop with classifier-free guidance
//! → VAE decode, as diffusers' `OnnxStableDiffusionPipeline` / optimum's `ORTStableDiffusionPipeline`
//! run it.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use easel_core::generator::{
    GenerateError, GeneratedImage, Generation, GenerationSpec, Generator, ModelDescriptor, ProgressSink, SamplerKind,
    resize_rgb8,
};
use ndarray::{Array3, Array4};

use crate::device::Device;
use crate::error::LoadError;
use crate::latents::{seeded_noise, to_rgb8, to_unit_hwc};
use crate::model::{self, Manifest, ModelFolder, TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER};
use crate::onnx::{
    EncoderOutput, SessionSettings, TextEncoder, TimestepType, Unet, UnetInputs, VaeDecoder, VaeEncoder,
};
use crate::runtime::OrtRuntime;
use crate::scheduler::{ReplayNoise, Sampler, SamplerChoice, SeededNoise, StepNoise, build_sampler};
use crate::tokenizer::ClipTokenizer;

/// Defaults when `easel.json` does not say.
const DEFAULT_STEPS: u32 = 30;
const DEFAULT_GUIDANCE: f32 = 7.5;
/// The largest guidance scale accepted; the Stability dialect allows up to 35.
const MAX_GUIDANCE: f32 = 50.0;
const DEFAULT_MAX_BATCH: NonZeroUsize = match NonZeroUsize::new(4) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// How a [`Pipeline`] is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Intra-op threads of each ONNX Runtime session; `None` = the available parallelism.
    pub intra_threads: Option<NonZeroUsize>,
    /// The most images denoised in one UNet call (the call has twice as many rows under
    /// classifier-free guidance). More images than this are processed in chunks.
    pub max_batch: NonZeroUsize,
    /// The largest image side accepted, in pixels (rounded down to the model's size multiple).
    pub max_side: u32,
    /// The most denoising steps accepted (capped by the schedule's training timesteps).
    pub max_steps: u32,
    /// Where the graphs run.
    pub device: Device,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            intra_threads: None,
            max_batch: DEFAULT_MAX_BATCH,
            max_side: 2048,
            max_steps: 150,
            device: Device::Cpu,
        }
    }
}

/// Where one generation's time went. `text_encoder`, `unet`, `vae_encoder` (img2img only) and
/// `vae_decoder` count only time inside ONNX Runtime; the rest of `total` is tokenization, noise,
/// sampler math, guidance, resizing and pixel conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub text_encoder: Duration,
    pub unet: Duration,
    pub vae_encoder: Duration,
    pub vae_decoder: Duration,
    pub total: Duration,
}

impl Timings {
    /// Time spent inside ONNX Runtime.
    pub fn inside_onnx_runtime(&self) -> Duration {
        self.text_encoder + self.unet + self.vae_encoder + self.vae_decoder
    }
}

/// A loaded SD-family model: three ONNX Runtime sessions, the tokenizer and the scheduler config,
/// created once per process and shared by every generation.
///
/// Sessions are behind mutexes, so concurrent generations are safe but take turns per graph;
/// on a CPU they would only compete for the same cores.
#[derive(Debug)]
pub struct Pipeline {
    folder: ModelFolder,
    descriptor: ModelDescriptor,
    tokenizer: ClipTokenizer,
    text_encoder: TextEncoder,
    unet: Unet,
    vae_decoder: VaeDecoder,
    /// Present when the folder has `vae_encoder/model.onnx`: img2img needs it.
    vae_encoder: Option<VaeEncoder>,
    max_batch: usize,
}

/// Inputs that replace the pipeline's own random draws, to reproduce another implementation's
/// run exactly (diffusers' `latents=`, and the noise its stochastic schedulers drew).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Unit-variance initial noise `[images, channels, height / f, width / f]` (f = the VAE
    /// factor); the pipeline multiplies it by the sampler's initial σ, as diffusers does.
    pub latents: Option<Array4<f32>>,
    /// Every noise draw of a stochastic sampler, in order, each `[images, channels, h, w]`. The
    /// count must be exactly what the sampler draws.
    pub step_noise: Option<Vec<Array4<f32>>>,
    /// img2img: the unit noise ε of the VAE posterior sample `mean + σ·ε`, `[images, channels,
    /// h, w]` (diffusers draws it from its `generator`).
    pub posterior_noise: Option<Array4<f32>>,
}

impl Pipeline {
    /// Validates the model folder and loads its text encoder, UNet and VAE decoder.
    pub fn load(runtime: &OrtRuntime, model_dir: &Path, options: &PipelineOptions) -> Result<Pipeline, LoadError> {
        let started = Instant::now();
        let folder = ModelFolder::read(model_dir)?;
        let seq_len = folder.text_encoder.max_position_embeddings;
        let tokenizer = ClipTokenizer::load(&folder.root.join("tokenizer"), seq_len)?;
        let descriptor = describe(&folder, options)?;

        let threads =
            options.intra_threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get);
        let settings = SessionSettings { intra_threads: threads, device: options.device };
        let text_path = folder.component_path(TEXT_ENCODER);
        let text_encoder = TextEncoder::load(runtime, &text_path, seq_len, settings)?;
        let unet_path = folder.component_path(UNET);
        let unet = Unet::load(runtime, &unet_path, folder.unet.in_channels, settings)?;
        if let (Some(text), Some(unet)) = (text_encoder.hidden_size, unet.hidden_size)
            && text != unet
        {
            return Err(LoadError::invalid(
                unet_path,
                format!("the UNet expects {unet}-wide text states but the text encoder produces {text}"),
            ));
        }
        let vae_path = folder.component_path(VAE_DECODER);
        let vae_decoder = VaeDecoder::load(runtime, &vae_path, folder.vae.latent_channels, settings)?;
        let encoder_path = folder.component_path(VAE_ENCODER);
        let vae_encoder = match encoder_path.is_file() {
            true => Some(VaeEncoder::load(runtime, &encoder_path, folder.vae.latent_channels, settings)?),
            false => None,
        };

        tracing::info!(
            model = %descriptor.id,
            hash = %descriptor.hash,
            threads,
            seconds = started.elapsed().as_secs_f32(),
            "diffusion model loaded"
        );
        Ok(Pipeline {
            folder,
            descriptor,
            tokenizer,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
            max_batch: options.max_batch.get(),
        })
    }

    /// Runs one generation with some random draws replaced (see [`Overrides`]).
    pub fn generate_with(
        &self,
        spec: &GenerationSpec,
        overrides: &Overrides,
        progress: &dyn ProgressSink,
    ) -> Result<Generation, GenerateError> {
        self.generate_timed(spec, overrides, progress).map(|(generation, _)| generation)
    }

    /// [`Pipeline::generate_with`], also telling where the time went.
    pub fn generate_timed(
        &self,
        spec: &GenerationSpec,
        overrides: &Overrides,
        progress: &dyn ProgressSink,
    ) -> Result<(Generation, Timings), GenerateError> {
        let run = self.run(spec, overrides, progress, |pixels, plan| {
            let rgb = to_rgb8(pixels, plan.width, plan.height);
            if !plan.upscaled() {
                return rgb; // the common case: no copy
            }
            resize_rgb8(&rgb, (plan.width as u32, plan.height as u32), (plan.out_width, plan.out_height))
        })?;
        let images = run
            .images
            .into_iter()
            .zip(&spec.seeds)
            .map(|(rgb, &seed)| GeneratedImage { width: spec.width, height: spec.height, seed, rgb })
            .collect();
        Ok((Generation { images, warnings: run.warnings, unet_calls: run.unet_calls }, run.timings))
    }

    /// The decoded images before 8-bit quantization: `[height, width, 3]` in [0, 1], exactly
    /// what diffusers' pipelines return with `output_type="np"`. For parity checks. These are at
    /// the generation size, before any upscaling (see `max_generation_side` in `easel.json`).
    pub fn generate_unit_pixels(
        &self,
        spec: &GenerationSpec,
        overrides: &Overrides,
    ) -> Result<(Vec<Array3<f32>>, Generation), GenerateError> {
        let run = self.run(spec, overrides, &easel_core::generator::NoProgress, |pixels, plan| {
            to_unit_hwc(pixels, plan.width, plan.height)
        })?;
        let generation = Generation { images: Vec::new(), warnings: run.warnings, unet_calls: run.unet_calls };
        Ok((run.images, generation))
    }

    /// The sampler a spec runs with.
    pub fn sampler_for(&self, spec: &GenerationSpec) -> SamplerKind {
        spec.sampler.unwrap_or(self.folder.default_sampler)
    }

    /// Validation, text encoding, denoising and decoding; `convert` turns each decoded planar
    /// `[3, H, W]` image into the caller's output.
    fn run<T>(
        &self,
        spec: &GenerationSpec,
        overrides: &Overrides,
        progress: &dyn ProgressSink,
        convert: impl Fn(&[f32], &Plan) -> T,
    ) -> Result<Run<T>, GenerateError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let mut warnings = Vec::new();
        let plan = self.validate(spec)?;
        if plan.upscaled() {
            warnings.push(format!(
                "generated at {}x{} (this model's largest generation side is {}) and upscaled to {}x{}",
                plan.width,
                plan.height,
                self.folder.manifest.max_generation_side.unwrap_or_default(),
                plan.out_width,
                plan.out_height
            ));
        }
        let choice = SamplerChoice { kind: self.sampler_for(spec), karras: spec.karras };
        let sampler_error =
            |message: String| GenerateError::InvalidRequest(format!("sampler {}: {message}", choice.kind));

        // One sampler (and one noise source) per chunk of images: multistep samplers keep
        // per-image history, and each image's noise comes from its own seed.
        let mut chunks = Vec::new();
        let mut first_image = 0;
        for images in chunk_sizes(plan.images, self.max_batch) {
            let sampler = build_sampler(choice, &self.folder.scheduler, spec.steps as usize).map_err(sampler_error)?;
            let seeds = &spec.seeds[first_image..first_image + images];
            let noise = match &overrides.step_noise {
                None => ChunkNoise::Seeded(SeededNoise::new(seeds)),
                Some(draws) => ChunkNoise::Replay(replay_slice(draws, first_image, images, &plan)?),
            };
            chunks.push(Chunk { images, sampler, noise });
            first_image += images;
        }
        let Some(first) = chunks.first().map(|chunk| &chunk.sampler) else {
            return Err(GenerateError::InvalidRequest("seeds must name at least one image".to_owned()));
        };
        if matches!(self.unet.timestep_type, TimestepType::Int(_)) && first.timesteps().iter().any(|t| t.fract() != 0.0)
        {
            if matches!(choice.kind, SamplerKind::Dpm2 | SamplerKind::Dpm2Ancestral | SamplerKind::DpmPp2sAncestral) {
                return Err(sampler_error(
                    "this model's UNet takes integer timesteps, and this sampler evaluates it between them \
                     (at interpolated σs); use K_EULER, K_HEUN, K_LMS, DDIM or K_DPMPP_2M"
                        .to_owned(),
                ));
            }
            warnings
                .push("this UNet takes integer timesteps; the schedule's fractional timesteps were rounded".to_owned());
        }

        let noise = self.initial_latents(spec, &plan, overrides.latents.as_ref())?;
        let (mut latents, begin) = match &spec.init_image {
            None => {
                let init_noise_sigma = first.init_noise_sigma();
                (noise.into_iter().map(|value| value * init_noise_sigma).collect(), 0)
            }
            Some(_) => self.img2img_latents(spec, &plan, noise, overrides, &chunks, &mut timings)?,
        };
        let text = self.encode_text(spec, plan.guided(), &mut warnings, &mut timings)?;
        let unet_calls = self.denoise(&mut latents, begin, &text, &mut chunks, &plan, progress, &mut timings)?;
        if let Some(problem) = chunks.iter().find_map(|chunk| chunk.noise.problem()) {
            return Err(GenerateError::InvalidRequest(format!("step_noise: {problem}")));
        }
        let images = self.decode(&latents, &plan, progress, &mut timings, convert)?;

        timings.total = started.elapsed();
        tracing::debug!(
            images = images.len(),
            steps = spec.steps,
            sampler = %choice.kind,
            unet_calls,
            text_encoder_ms = timings.text_encoder.as_millis() as u64,
            unet_ms = timings.unet.as_millis() as u64,
            vae_decoder_ms = timings.vae_decoder.as_millis() as u64,
            total_ms = timings.total.as_millis() as u64,
            "generation finished"
        );
        Ok(Run { images, warnings, unet_calls, timings })
    }

    /// img2img's starting point, as diffusers' `StableDiffusionImg2ImgPipeline` makes it: the
    /// init image (resized to the request's size) is encoded, its latent distribution sampled
    /// with each image's own noise and scaled; the sampler's schedule is entered at
    /// `t_start = steps − ⌊steps · strength⌋` and the latents noised to that level with the
    /// image's initial noise. Returns the latents and the first evaluation index.
    fn img2img_latents(
        &self,
        spec: &GenerationSpec,
        plan: &Plan,
        noise: Vec<f32>,
        overrides: &Overrides,
        chunks: &[Chunk],
        timings: &mut Timings,
    ) -> Result<(Vec<f32>, usize), GenerateError> {
        let invalid = |m: String| GenerateError::InvalidRequest(m);
        let Some(init) = &spec.init_image else { return Ok((noise, 0)) };
        if !(spec.strength > 0.0 && spec.strength <= 1.0) {
            return Err(invalid(format!("strength must be greater than 0 and at most 1 (got {})", spec.strength)));
        }
        let Some(encoder) = &self.vae_encoder else {
            return Err(invalid("init_image: this model has no vae_encoder, so it cannot start from an image".into()));
        };
        if init.rgb.len() != init.width as usize * init.height as usize * 3 || init.width == 0 || init.height == 0 {
            return Err(invalid("init_image: the pixel buffer does not match its size".to_owned()));
        }
        let steps = spec.steps as usize;
        let init_timestep = ((steps as f64 * f64::from(spec.strength)) as usize).min(steps);
        if init_timestep == 0 {
            return Err(invalid(format!(
                "strength {} with {steps} steps leaves no denoising step; raise strength or steps",
                spec.strength
            )));
        }
        let t_start = steps - init_timestep;
        let posterior = match &overrides.posterior_noise {
            Some(given) => Some(self.checked_latents(given, plan, "posterior_noise")?),
            None => None,
        };

        // [0, 255] → [−1, 1], planar.
        let image = init.resized(plan.width as u32, plan.height as u32);
        let plane = plan.width * plan.height;
        let mut pixels = vec![0.0f32; 3 * plane];
        for (i, rgb) in image.rgb.chunks_exact(3).enumerate() {
            for (c, &v) in rgb.iter().enumerate() {
                pixels[c * plane + i] = f32::from(v) / 255.0 * 2.0 - 1.0;
            }
        }
        let encode_started = Instant::now();
        let encoded =
            encoder.encode(&pixels, [1, 3, plan.height, plan.width], [plan.latent_height, plan.latent_width])?;
        timings.vae_encoder += encode_started.elapsed();

        let per_image = plan.latent_len();
        let scaling = self.folder.vae.scaling_factor;
        let mut latents = vec![0.0f32; noise.len()];
        let mut offset = 0;
        for chunk in chunks {
            let begin = t_start * chunk.sampler.order();
            if begin >= chunk.sampler.timesteps().len() {
                return Err(invalid(format!("strength {} leaves no denoising step with this sampler", spec.strength)));
            }
            for image_index in offset..offset + chunk.images {
                let seed = spec.seeds[image_index];
                let range = image_index * per_image..(image_index + 1) * per_image;
                let mut clean = vec![0.0f32; per_image];
                match encoder.output {
                    EncoderOutput::Sample => {
                        for (c, &v) in clean.iter_mut().zip(&encoded) {
                            *c = v * scaling;
                        }
                    }
                    EncoderOutput::Parameters => {
                        // latent_dist.sample(): mean + exp(½·clamp(logvar, −30, 20))·ε.
                        let (mean, logvar) = encoded.split_at(per_image);
                        let mut eps = vec![0.0f32; per_image];
                        match &posterior {
                            Some(given) => eps.copy_from_slice(&given[range.clone()]),
                            None => crate::latents::posterior_noise(seed, &mut eps),
                        }
                        for (((c, &m), &lv), &e) in clean.iter_mut().zip(mean).zip(logvar).zip(&eps) {
                            let std = (0.5 * lv.clamp(-30.0, 20.0)).exp();
                            *c = (m + std * e) * scaling;
                        }
                    }
                }
                chunk.sampler.add_noise(begin, &clean, &noise[range.clone()], &mut latents[range]);
            }
            offset += chunk.images;
        }
        Ok((latents, t_start * chunks.first().map_or(1, |chunk| chunk.sampler.order())))
    }

    /// Tokenizes and encodes the prompts: `[negative, prompt]` under guidance, `[prompt]` without.
    ///
    /// The unconditional (negative prompt) row comes first because that is how diffusers batches
    /// it: its `noise_uncond, noise_text = split(noise, 2)` relies on the order, and reproducing
    /// diffusers' images needs the same rows in the same UNet batch positions.
    fn encode_text(
        &self,
        spec: &GenerationSpec,
        guided: bool,
        warnings: &mut Vec<String>,
        timings: &mut Timings,
    ) -> Result<TextStates, GenerateError> {
        let mut prompts = Vec::with_capacity(2);
        if guided {
            prompts.push(("negative prompt", spec.negative_prompt.as_str()));
        } else if !spec.negative_prompt.is_empty() {
            warnings.push("the negative prompt has no effect when guidance is 1 or less".to_owned());
        }
        prompts.push(("prompt", spec.prompt.as_str()));

        let seq_len = self.tokenizer.max_len();
        let mut ids = Vec::with_capacity(prompts.len() * seq_len);
        for (field, text) in &prompts {
            let tokens = self
                .tokenizer
                .encode(text)
                .map_err(|e| GenerateError::Engine { message: format!("tokenizing the {field}"), source: Some(e) })?;
            if tokens.truncated {
                warnings.push(format!("{field} is longer than {seq_len} CLIP tokens; the end was dropped"));
            }
            ids.extend_from_slice(&tokens.ids);
        }
        let encode_started = Instant::now();
        let (states, hidden) = self.text_encoder.encode(&ids, prompts.len(), seq_len)?;
        timings.text_encoder += encode_started.elapsed();
        Ok(TextStates { states, seq_len, hidden })
    }

    /// The denoising loop: every step, every chunk of images goes through the UNet once (with
    /// its unconditional and conditional rows together under guidance), then its sampler. Returns
    /// the number of UNet calls. All buffers are allocated once, for the largest chunk.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        latents: &mut [f32],
        begin: usize,
        text: &TextStates,
        chunks: &mut [Chunk],
        plan: &Plan,
        progress: &dyn ProgressSink,
        timings: &mut Timings,
    ) -> Result<u32, GenerateError> {
        let guided = plan.guided();
        let rows_per_image = text.prompts();
        let per_image = plan.latent_len();
        let largest = chunks.iter().map(|chunk| chunk.images).max().unwrap_or(1);
        let mut unet_in = vec![0.0f32; largest * rows_per_image * per_image];
        let mut unet_out = vec![0.0f32; largest * rows_per_image * per_image];
        let mut guided_noise = if guided { vec![0.0f32; largest * per_image] } else { Vec::new() };
        // Text states per chunk size: [uncond × k, cond × k] under guidance, [cond × k] without.
        let chunk_states: Vec<Vec<f32>> = chunks.iter().map(|chunk| text.repeated(chunk.images)).collect();
        let timesteps = chunks.first().map(|chunk| chunk.sampler.timesteps().to_vec()).unwrap_or_default();

        let mut unet_calls = 0u32;
        let total = (timesteps.len() - begin.min(timesteps.len())) as u32;
        for (index, &timestep) in timesteps.iter().enumerate().skip(begin) {
            if progress.cancelled() {
                return Err(GenerateError::Cancelled);
            }
            let mut offset = 0;
            for (Chunk { images: k, sampler, noise }, states) in chunks.iter_mut().zip(&chunk_states) {
                let len = *k * per_image;
                let rows = rows_per_image * *k;
                let x = &mut latents[offset..offset + len];
                offset += len;

                let input = &mut unet_in[..rows * per_image];
                let (first_half, second_half) = input.split_at_mut(len);
                sampler.scale_model_input(index, x, first_half);
                if guided {
                    second_half.copy_from_slice(first_half);
                }
                let output = &mut unet_out[..rows * per_image];
                let inputs = UnetInputs {
                    sample: input,
                    sample_shape: [rows, plan.channels, plan.latent_height, plan.latent_width],
                    timestep,
                    encoder_hidden_states: states,
                    states_shape: [rows, text.seq_len, text.hidden],
                };
                let unet_started = Instant::now();
                self.unet.predict(&inputs, output)?;
                timings.unet += unet_started.elapsed();
                unet_calls += 1;

                if guided {
                    // noise = uncond + g·(cond − uncond), in diffusers' float32 operation order.
                    let (uncond, cond) = output.split_at(len);
                    for ((n, &u), &c) in guided_noise[..len].iter_mut().zip(uncond).zip(cond) {
                        *n = u + plan.guidance * (c - u);
                    }
                    sampler.step(index, &guided_noise[..len], x, noise.source());
                } else {
                    sampler.step(index, output, x, noise.source());
                }
            }
            progress.step((index - begin) as u32 + 1, total);
        }
        Ok(unet_calls)
    }

    /// Decodes the latents, one image at a time, converting each with `convert`.
    ///
    /// One at a time, as diffusers' ONNX pipeline does: its authors saw wrong results from
    /// half-precision VAE decoders at batch > 1, and one 1024² SD decode already needs gigabytes
    /// of activations, which a batch would multiply. The cancellation flag is checked between
    /// images, since each decode can take seconds.
    fn decode<T>(
        &self,
        latents: &[f32],
        plan: &Plan,
        progress: &dyn ProgressSink,
        timings: &mut Timings,
        convert: impl Fn(&[f32], &Plan) -> T,
    ) -> Result<Vec<T>, GenerateError> {
        let per_image = plan.latent_len();
        let scaling = self.folder.vae.scaling_factor;
        let latent_shape = [1, plan.channels, plan.latent_height, plan.latent_width];
        let image_shape = [1, 3, plan.height, plan.width];
        let mut scaled = vec![0.0f32; per_image];
        let mut images = Vec::with_capacity(plan.images);
        for image_latents in latents.chunks_exact(per_image) {
            if progress.cancelled() {
                return Err(GenerateError::Cancelled);
            }
            for (s, &x) in scaled.iter_mut().zip(image_latents) {
                *s = x / scaling;
            }
            let decode_started = Instant::now();
            let mut decode_time = Duration::ZERO;
            let image = self.vae_decoder.decode(&scaled, latent_shape, image_shape, |pixels| {
                decode_time = decode_started.elapsed();
                convert(pixels, plan)
            })?;
            timings.vae_decoder += decode_time;
            images.push(image);
        }
        Ok(images)
    }

    /// Checks the request against the model; errors name the field and the accepted range.
    fn validate(&self, spec: &GenerationSpec) -> Result<Plan, GenerateError> {
        let d = &self.descriptor;
        let invalid = |m: String| Err(GenerateError::InvalidRequest(m));
        for (field, value) in [("width", spec.width), ("height", spec.height)] {
            if value < d.size_multiple || value > d.max_side || value % d.size_multiple != 0 {
                return invalid(format!(
                    "{field} must be a multiple of {} between {} and {} (got {value})",
                    d.size_multiple, d.size_multiple, d.max_side
                ));
            }
        }
        if spec.steps == 0 || spec.steps > d.max_steps {
            return invalid(format!("steps must be between 1 and {} (got {})", d.max_steps, spec.steps));
        }
        if !(spec.guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&spec.guidance)) {
            return invalid(format!("guidance must be between 0 and {MAX_GUIDANCE} (got {})", spec.guidance));
        }
        if spec.seeds.is_empty() {
            return invalid("seeds must name at least one image".to_owned());
        }
        let factor = self.folder.vae.factor;
        let (width, height) = self.generation_size(spec.width, spec.height);
        Ok(Plan {
            images: spec.seeds.len(),
            channels: self.folder.vae.latent_channels,
            width: width as usize,
            height: height as usize,
            latent_width: (width / factor) as usize,
            latent_height: (height / factor) as usize,
            out_width: spec.width,
            out_height: spec.height,
            guidance: spec.guidance,
        })
    }

    /// The size a request is generated at: its own, or, when `easel.json` caps the generation
    /// side and the request is larger, the largest size of the same aspect ratio within the cap,
    /// each side rounded to the size multiple (the image is then upscaled to the request's size).
    fn generation_size(&self, width: u32, height: u32) -> (u32, u32) {
        let longest = width.max(height);
        match self.folder.manifest.max_generation_side {
            Some(cap) if longest > cap => {
                let multiple = self.descriptor.size_multiple;
                let scaled = |side: u32| {
                    let exact = u64::from(side) * u64::from(cap) / u64::from(longest);
                    let rounded = (exact + u64::from(multiple) / 2) / u64::from(multiple) * u64::from(multiple);
                    (rounded as u32).clamp(multiple, cap)
                };
                (scaled(width), scaled(height))
            }
            _ => (width, height),
        }
    }

    /// Flat `[images, C, h, w]` unit-variance latents: the caller's, checked, or seeded noise.
    fn initial_latents(
        &self,
        spec: &GenerationSpec,
        plan: &Plan,
        given: Option<&Array4<f32>>,
    ) -> Result<Vec<f32>, GenerateError> {
        let per_image = plan.latent_len();
        let Some(given) = given else {
            let mut latents = vec![0.0f32; plan.images * per_image];
            for (seed, image) in spec.seeds.iter().zip(latents.chunks_exact_mut(per_image)) {
                seeded_noise(*seed, image);
            }
            return Ok(latents);
        };
        self.checked_latents(given, plan, "latents")
    }

    /// A caller's `[images, C, h, w]` noise, flat, after checking its shape and values.
    fn checked_latents(&self, given: &Array4<f32>, plan: &Plan, field: &str) -> Result<Vec<f32>, GenerateError> {
        let expected = [plan.images, plan.channels, plan.latent_height, plan.latent_width];
        if given.shape() != expected {
            return Err(GenerateError::InvalidRequest(format!(
                "{field} must have shape {expected:?} (images, channels, height / {f}, width / {f}); got {:?}",
                given.shape(),
                f = self.folder.vae.factor
            )));
        }
        if given.iter().any(|v| !v.is_finite()) {
            return Err(GenerateError::InvalidRequest(format!("{field} must be finite (found NaN or infinity)")));
        }
        Ok(given.iter().copied().collect())
    }
}

impl Generator for Pipeline {
    fn descriptor(&self) -> &ModelDescriptor {
        &self.descriptor
    }

    fn generate(&self, spec: &GenerationSpec, progress: &dyn ProgressSink) -> Result<Generation, GenerateError> {
        self.generate_with(spec, &Overrides::default(), progress)
    }
}

/// The text encoder's output: one `[seq_len, hidden]` block per prompt, unconditional first.
#[derive(Debug)]
struct TextStates {
    states: Vec<f32>,
    seq_len: usize,
    hidden: usize,
}

impl TextStates {
    fn prompts(&self) -> usize {
        self.states.len() / (self.seq_len * self.hidden).max(1)
    }

    /// Each prompt's block repeated `k` times: the UNet's `encoder_hidden_states` for k images.
    fn repeated(&self, k: usize) -> Vec<f32> {
        let block = self.seq_len * self.hidden;
        let mut rows = Vec::with_capacity(self.states.len() * k);
        for prompt in self.states.chunks_exact(block.max(1)) {
            for _ in 0..k {
                rows.extend_from_slice(prompt);
            }
        }
        rows
    }
}

/// One validated request: the size it is generated at, in pixels and latent cells, the size it
/// is delivered at (larger when the model upscales), and its guidance scale.
#[derive(Debug, Clone, Copy)]
struct Plan {
    images: usize,
    channels: usize,
    width: usize,
    height: usize,
    latent_width: usize,
    latent_height: usize,
    out_width: u32,
    out_height: u32,
    guidance: f32,
}

impl Plan {
    fn upscaled(&self) -> bool {
        (self.width, self.height) != (self.out_width as usize, self.out_height as usize)
    }

    fn latent_len(&self) -> usize {
        self.channels * self.latent_height * self.latent_width
    }

    /// Classifier-free guidance is on only above 1, as in diffusers (`guidance_scale > 1.0`).
    fn guided(&self) -> bool {
        self.guidance > 1.0
    }
}

/// Up to `max_batch` images denoised together, with their sampler and noise.
#[derive(Debug)]
struct Chunk {
    images: usize,
    sampler: Box<dyn Sampler>,
    noise: ChunkNoise,
}

/// Where a chunk's sampler noise comes from.
#[derive(Debug)]
enum ChunkNoise {
    Seeded(SeededNoise),
    Replay(ReplayNoise),
}

impl ChunkNoise {
    fn source(&mut self) -> &mut dyn StepNoise {
        match self {
            ChunkNoise::Seeded(noise) => noise,
            ChunkNoise::Replay(noise) => noise,
        }
    }

    fn problem(&self) -> Option<String> {
        match self {
            ChunkNoise::Seeded(_) => None,
            ChunkNoise::Replay(noise) => noise.problem(),
        }
    }
}

/// One generation's output before it is packaged for the caller.
struct Run<T> {
    images: Vec<T>,
    warnings: Vec<String>,
    unet_calls: u32,
    timings: Timings,
}

/// The rows `first..first + images` of every recorded draw, checked against the plan's shape.
fn replay_slice(draws: &[Array4<f32>], first: usize, images: usize, plan: &Plan) -> Result<ReplayNoise, GenerateError> {
    let expected = [plan.images, plan.channels, plan.latent_height, plan.latent_width];
    let mut slices = Vec::with_capacity(draws.len());
    for (i, draw) in draws.iter().enumerate() {
        if draw.shape() != expected {
            return Err(GenerateError::InvalidRequest(format!(
                "step_noise[{i}] must have shape {expected:?}; got {:?}",
                draw.shape()
            )));
        }
        if draw.iter().any(|v| !v.is_finite()) {
            return Err(GenerateError::InvalidRequest(format!("step_noise[{i}] must be finite")));
        }
        slices.push(
            draw.outer_iter()
                .skip(first)
                .take(images)
                .flat_map(|image| image.iter().copied().collect::<Vec<_>>())
                .collect(),
        );
    }
    Ok(ReplayNoise::new(slices))
}

/// Splits `images` into chunks of at most `max_batch`, as evenly as possible (5 by 4 → 3 + 2,
/// not 4 + 1: both take two UNet calls, and even chunks need less memory per call).
fn chunk_sizes(images: usize, max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let count = images.div_ceil(max_batch);
    (0..count).map(|i| images / count + usize::from(i < images % count)).collect()
}

/// The descriptor the worker records on tasks, from the folder and the options.
fn describe(folder: &ModelFolder, options: &PipelineOptions) -> Result<ModelDescriptor, LoadError> {
    let manifest_path = folder.root.join(Manifest::FILE);
    let multiple = folder.size_multiple();
    let max_side = options.max_side / multiple * multiple;
    if max_side == 0 {
        return Err(LoadError::invalid(
            &folder.root,
            format!("image sides must be multiples of {multiple}, above the configured max side {}", options.max_side),
        ));
    }
    let max_steps = options.max_steps.min(u32::try_from(folder.num_train_timesteps).unwrap_or(u32::MAX));
    let manifest = &folder.manifest;
    let native = folder.unet.sample_size * folder.vae.factor;
    let descriptor = ModelDescriptor {
        id: manifest.name.clone().unwrap_or_else(|| folder.folder_name()),
        hash: model::fingerprint(&folder.root)?,
        default_steps: manifest.default_steps.unwrap_or(DEFAULT_STEPS.min(max_steps)),
        default_guidance: manifest.default_guidance.unwrap_or(DEFAULT_GUIDANCE),
        native_width: manifest.native_width.unwrap_or(native).min(max_side),
        native_height: manifest.native_height.unwrap_or(native).min(max_side),
        size_multiple: multiple,
        max_steps,
        max_side,
        default_sampler: folder.default_sampler.api_name().to_owned(),
    };
    if descriptor.default_steps == 0 || descriptor.default_steps > max_steps {
        return Err(LoadError::invalid(manifest_path, format!("default_steps must be between 1 and {max_steps}")));
    }
    let guidance = descriptor.default_guidance;
    if !(guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&guidance)) {
        return Err(LoadError::invalid(
            manifest_path,
            format!("default_guidance must be between 0 and {MAX_GUIDANCE}"),
        ));
    }
    let cap = manifest.max_generation_side;
    for (field, side) in [
        ("native_width", Some(descriptor.native_width)),
        ("native_height", Some(descriptor.native_height)),
        ("max_generation_side", cap),
    ]
    .into_iter()
    .filter_map(|(field, side)| Some((field, side?)))
    {
        if side == 0 || side % multiple != 0 {
            return Err(LoadError::invalid(
                &manifest_path,
                format!("{field} must be a positive multiple of {multiple} (got {side})"),
            ));
        }
    }
    Ok(descriptor)
}

#[cfg(test)]
mod tests {
    use super::chunk_sizes;

    #[test]
    fn images_are_split_into_even_chunks_of_at_most_max_batch() {
        assert_eq!(chunk_sizes(1, 4), [1]);
        assert_eq!(chunk_sizes(4, 4), [4]);
        assert_eq!(chunk_sizes(5, 4), [3, 2]);
        assert_eq!(chunk_sizes(10, 4), [4, 3, 3]);
        assert_eq!(chunk_sizes(3, 1), [1, 1, 1]);
        assert_eq!(chunk_sizes(2, 0), [1, 1]);
    }
}
