//! `K_EULER`: diffusers' `EulerDiscreteScheduler` with its defaults (`s_churn = 0`, so no noise
//! is added and the sampler is deterministic), which is k-diffusion's `sample_euler`.
//!
//! Per step i with σ = σᵢ: the UNet sees `x / √(σ² + 1)` at timestep tᵢ; from its output the
//! denoised estimate x₀ is formed (per prediction type), `d = (x − x₀) / σ` and
//! `x ← x + d·(σᵢ₊₁ − σ)`. All elementwise math is float32 with the same operations in the same
//! order as diffusers' torch code, so given the same UNet outputs the latents agree bit for bit.

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{DiscreteSchedule, TrainingSigmas};
use super::{Sampler, StepNoise, add_sigma_noise, scale_by_sigma};

#[derive(Debug, Clone)]
pub(crate) struct EulerDiscrete {
    schedule: DiscreteSchedule,
    init_noise_sigma: f32,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let training = TrainingSigmas::new(config);
        let schedule = DiscreteSchedule::new(config, &training, steps, false)?;
        let init_noise_sigma = schedule.init_noise_sigma(config.timestep_spacing);
        Ok(EulerDiscrete { schedule, init_noise_sigma, prediction: config.prediction_type })
    }

    #[cfg(test)]
    pub fn sigmas(&self) -> &[f32] {
        &self.schedule.sigmas
    }
}

impl Sampler for EulerDiscrete {
    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]) {
        scale_by_sigma(self.schedule.sigmas[index], sample, out);
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_sigma_noise(self.schedule.sigmas[index], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        let sigma = self.schedule.sigmas[index];
        // s_churn = 0 ⇒ γ = 0 ⇒ σ̂ = σ·(γ + 1) = σ.
        let sigma_hat = sigma;
        let dt = self.schedule.sigmas[index + 1] - sigma_hat;
        match self.prediction {
            PredictionType::Epsilon => {
                for (x, &eps) in sample.iter_mut().zip(model_output) {
                    let denoised = *x - sigma_hat * eps;
                    let derivative = (*x - denoised) / sigma_hat;
                    *x += derivative * dt;
                }
            }
            PredictionType::VPrediction => {
                // x₀ = v·c_out + x·c_skip with c_out = −σ/√(σ²+1), c_skip = 1/(σ²+1).
                let var = sigma * sigma + 1.0;
                let c_out = -sigma / var.sqrt();
                for (x, &v) in sample.iter_mut().zip(model_output) {
                    let denoised = v * c_out + *x / var;
                    let derivative = (*x - denoised) / sigma_hat;
                    *x += derivative * dt;
                }
            }
            PredictionType::Sample => {
                for (x, &denoised) in sample.iter_mut().zip(model_output) {
                    let derivative = (*x - denoised) / sigma_hat;
                    *x += derivative * dt;
                }
            }
        }
    }
}
