//! Samplers (diffusers "schedulers"): which timesteps the UNet is evaluated at and how its output
//! moves the latents.
//!
//! | API name | implementation | UNet evaluations for N steps | noise |
//! |---|---|---|---|
//! | `DDIM` | diffusers `DDIMScheduler` (η = 0) | N | none |
//! | `DDPM` | diffusers `DDPMScheduler` | N | every step with t > 0 |
//! | `PNDM` | diffusers `PNDMScheduler` (PLMS; SD 1.5's default) | N + 1 with `skip_prk_steps`, else N + 9 | none |
//! | `K_EULER` | diffusers `EulerDiscreteScheduler` = k-diffusion `sample_euler` | N | none |
//! | `K_EULER_ANCESTRAL` | diffusers `EulerAncestralDiscreteScheduler` | N | every step |
//! | `K_HEUN` | diffusers `HeunDiscreteScheduler` | 2N − 1 | none |
//! | `K_DPM_2` | diffusers `KDPM2DiscreteScheduler` | 2N − 1 | none |
//! | `K_DPM_2_ANCESTRAL` | diffusers `KDPM2AncestralDiscreteScheduler` | 2N − 1 | N − 1 |
//! | `K_LMS` | diffusers `LMSDiscreteScheduler` (order 4) | N | none |
//! | `K_DPMPP_2M` | diffusers `DPMSolverMultistepScheduler` (DPM-Solver++, order 2, midpoint) | N | none |
//! | `K_DPMPP_2S_ANCESTRAL` | k-diffusion `sample_dpmpp_2s_ancestral` on `EulerDiscreteScheduler`'s σs | 2N − 1 | N − 1 |
//!
//! A [`Sampler`] is built fresh for every generation (and for every batch chunk of it, because
//! multistep samplers keep per-image history), so nothing leaks between requests; the training
//! tables it derives from `scheduler_config.json` cost microseconds. Each is a port of the
//! diffusers 0.42.1 class, keeping its float32/float64 mix and operation order, because the goal
//! is diffusers' images given the same initial latents and the same noise draws.

mod alpha;
mod config;
mod euler;
mod ksamplers;
mod noise;
mod schedule;

use easel_core::generator::SamplerKind;

#[cfg(test)]
pub(crate) use config::SchedulerConfig;
pub(crate) use config::{PredictionType, SchedulerClass, SchedulerFile};
pub(crate) use noise::{ReplayNoise, SeededNoise, StepNoise};

/// One denoising run's sampler state. The pipeline, for each index `i` of [`Sampler::timesteps`]:
/// fills the UNet input with [`Sampler::scale_model_input`], evaluates the UNet at timestep `i`,
/// applies classifier-free guidance, then calls [`Sampler::step`] on the latents in place.
///
/// Slices are flat `[images, channels, h, w]` float32 buffers of equal length.
pub(crate) trait Sampler: Send + std::fmt::Debug {
    /// The UNet timestep of every model evaluation, in order (float32, possibly fractional).
    fn timesteps(&self) -> &[f32];
    /// What unit-variance initial noise is multiplied by (1 for the ᾱ-space samplers).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// Writes the UNet input for evaluation `index` into `out` (the latents unscaled unless the
    /// sampler works in σ space, as diffusers' `SchedulerMixin` default).
    fn scale_model_input(&self, _index: usize, sample: &[f32], out: &mut [f32]) {
        out.copy_from_slice(sample);
    }
    /// Advances `sample` past evaluation `index`, given the (guided) model output. Stochastic
    /// samplers draw from `noise`, exactly when diffusers' class draws.
    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut dyn StepNoise);
    /// Evaluations per step as diffusers counts them (`scheduler.order`): img2img starts at
    /// evaluation `t_start · order`.
    fn order(&self) -> usize {
        1
    }
    /// img2img: `original` noised to the level of evaluation `index` (diffusers' `add_noise`).
    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]);
}

/// A sampler request resolved against a model: which sampler, whether Karras σs are forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SamplerChoice {
    pub kind: SamplerKind,
    pub karras: Option<bool>,
}

/// Whether the sampler has a Karras σ option.
pub(crate) fn has_karras(kind: SamplerKind) -> bool {
    !matches!(kind, SamplerKind::Ddim | SamplerKind::Ddpm | SamplerKind::Pndm | SamplerKind::EulerAncestral)
}

/// Builds the sampler for `steps` steps from the model's scheduler file. Errors name the
/// offending value and are the caller's (a step count, an option the sampler lacks) or the
/// model's (a config this sampler cannot run).
pub(crate) fn build_sampler(
    choice: SamplerChoice,
    file: &SchedulerFile,
    steps: usize,
) -> Result<Box<dyn Sampler>, String> {
    let class = SchedulerClass::of(choice.kind);
    let mut config =
        file.resolve(class).map_err(|e| format!("{} cannot run this model's scheduler config: {e}", choice.kind))?;
    if let Some(karras) = choice.karras {
        if karras && !has_karras(choice.kind) {
            return Err(format!(
                "{} has no Karras σ schedule; use a K_ sampler other than K_EULER_ANCESTRAL",
                choice.kind
            ));
        }
        config.use_karras_sigmas = karras;
    }
    Ok(match choice.kind {
        SamplerKind::Euler => Box::new(euler::EulerDiscrete::new(&config, steps)?),
        SamplerKind::EulerAncestral => Box::new(ksamplers::EulerAncestral::new(&config, steps)?),
        SamplerKind::Heun => Box::new(ksamplers::Heun::new(&config, steps)?),
        SamplerKind::Dpm2 => Box::new(ksamplers::KDpm2::new(&config, steps)?),
        SamplerKind::Dpm2Ancestral => Box::new(ksamplers::KDpm2Ancestral::new(&config, steps)?),
        SamplerKind::Lms => Box::new(ksamplers::Lms::new(&config, steps)?),
        SamplerKind::DpmPp2sAncestral => Box::new(ksamplers::DpmPp2sAncestral::new(&config, steps)?),
        SamplerKind::Ddim => Box::new(alpha::Ddim::new(&config, steps)?),
        SamplerKind::Ddpm => Box::new(alpha::Ddpm::new(&config, steps)?),
        SamplerKind::Pndm => Box::new(alpha::Pndm::new(&config, steps)?),
        SamplerKind::DpmPp2m => Box::new(alpha::DpmSolverMultistep::new(&config, steps)?),
    })
}

/// The x₀ estimate of a σ-space sampler from one model output element (diffusers' σ-space
/// `pred_original_sample`, same operations).
#[inline]
pub(crate) fn sigma_denoised(prediction: PredictionType, sigma: f32, x: f32, output: f32) -> f32 {
    match prediction {
        PredictionType::Epsilon => x - sigma * output,
        PredictionType::VPrediction => {
            let var = sigma * sigma + 1.0;
            output * (-sigma / var.sqrt()) + x / var
        }
        PredictionType::Sample => output,
    }
}

/// `x / √(σ² + 1)`, the σ-space samplers' `scale_model_input`.
pub(crate) fn scale_by_sigma(sigma: f32, sample: &[f32], out: &mut [f32]) {
    let scale = (sigma * sigma + 1.0).sqrt();
    for (o, &x) in out.iter_mut().zip(sample) {
        *o = x / scale;
    }
}

/// `original + noise · σ`, the σ-space samplers' `add_noise`.
pub(crate) fn add_sigma_noise(sigma: f32, original: &[f32], noise: &[f32], out: &mut [f32]) {
    for ((o, &x), &n) in out.iter_mut().zip(original).zip(noise) {
        *o = x + n * sigma;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
