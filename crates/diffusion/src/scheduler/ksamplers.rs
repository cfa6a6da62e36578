//! The σ-space ("k-diffusion style") samplers besides plain Euler: Euler ancestral, Heun, DPM2,
//! DPM2 ancestral, LMS (ports of the diffusers 0.42.1 classes) and DPM++ 2S ancestral (a port of
//! k-diffusion's `sample_dpmpp_2s_ancestral`, which diffusers lacks).
//!
//! The two-evaluation samplers follow diffusers' layout: their timestep list interleaves the
//! second evaluation of each step, so the pipeline loop is the same for every sampler and every
//! `step` call follows exactly one UNet evaluation. Scalar σ arithmetic is float32 like the
//! torch 0-dim tensors diffusers uses; schedule construction is float64 where numpy's is.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{DiscreteSchedule, TrainingSigmas};
use super::{Sampler, StepNoise, add_sigma_noise, scale_by_sigma, sigma_denoised};

/// `init_noise_sigma` of the σ-space classes: the largest σ, or `√(σ_max² + 1)` for "leading".
fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().filter(|s| !s.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// `torch.cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`.
fn interleave_sigmas(values: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len() * 2);
    out.push(values[0]);
    for &v in &values[1..] {
        out.extend([v, v]);
    }
    out.push(values[values.len() - 1]);
    out
}

/// `exp(torch.lerp(log a, log b, 0.5))` as torch computes it (weight ≥ 0.5 branch):
/// `end − (end − start)·0.5`. A zero `a` gives 0; a zero `b` gives NaN, as in torch.
fn log_midpoint(a: f32, b: f32) -> f32 {
    let (start, end) = (a.ln(), b.ln());
    (end - (end - start) * 0.5).exp()
}

/// The ancestral split of a step from σ_from to σ_to (η = 1): `(σ_down, σ_up)`.
fn ancestral_step(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}

/// `K_EULER_ANCESTRAL`: diffusers' `EulerAncestralDiscreteScheduler`.
#[derive(Debug, Clone)]
pub(crate) struct EulerAncestral {
    schedule: DiscreteSchedule,
    init_noise_sigma: f32,
    prediction: PredictionType,
    noise: Vec<f32>,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let schedule = DiscreteSchedule::new(config, &TrainingSigmas::new(config), steps, false)?;
        let init_noise_sigma = init_noise_sigma(&schedule.sigmas, config.timestep_spacing);
        Ok(EulerAncestral { schedule, init_noise_sigma, prediction: config.prediction_type, noise: Vec::new() })
    }
}

impl Sampler for EulerAncestral {
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

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut dyn StepNoise) {
        let sigma = self.schedule.sigmas[index];
        let (sigma_down, sigma_up) = ancestral_step(sigma, self.schedule.sigmas[index + 1]);
        let dt = sigma_down - sigma;
        for (x, &out) in sample.iter_mut().zip(model_output) {
            let denoised = sigma_denoised(self.prediction, sigma, *x, out);
            let derivative = (*x - denoised) / sigma;
            *x += derivative * dt;
        }
        self.noise.resize(sample.len(), 0.0);
        noise.fill(&mut self.noise);
        for (x, &n) in sample.iter_mut().zip(&self.noise) {
            *x += n * sigma_up;
        }
    }
}

/// `K_HEUN`: diffusers' `HeunDiscreteScheduler` (Karras et al.'s Heun, `s_churn` = 0).
#[derive(Debug, Clone)]
pub(crate) struct Heun {
    /// `[σ₀, σ₁, σ₁, …, σ_{N−1}, σ_{N−1}, 0]`.
    sigmas: Vec<f32>,
    /// `[t₀, t₁, t₁, …, t_{N−1}, t_{N−1}]`.
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    clip: Option<f32>,
    /// Set between the two evaluations of a step (diffusers' `self.dt`).
    dt: Option<f32>,
    prev_derivative: Vec<f32>,
    first_sample: Vec<f32>,
}

impl Heun {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let schedule = DiscreteSchedule::new(config, &TrainingSigmas::new(config), steps, false)?;
        let n = schedule.sigmas.len();
        let mut sigmas = vec![schedule.sigmas[0]];
        for &s in &schedule.sigmas[1..n - 1] {
            sigmas.extend([s, s]);
        }
        sigmas.push(schedule.sigmas[n - 1]);
        let mut timesteps = vec![schedule.timesteps[0]];
        for &t in &schedule.timesteps[1..] {
            timesteps.extend([t, t]);
        }
        Ok(Heun {
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            timesteps,
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
            dt: None,
            prev_derivative: Vec::new(),
            first_sample: Vec::new(),
        })
    }
}

/// Heun's x₀ estimate: the σ-space one, clamped to ±range when `clip_sample` is set.
fn heun_denoised(prediction: PredictionType, clip: Option<f32>, sigma: f32, x: f32, output: f32) -> f32 {
    let denoised = sigma_denoised(prediction, sigma, x, output);
    clip.map_or(denoised, |range| denoised.clamp(-range, range))
}

impl Sampler for Heun {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]) {
        scale_by_sigma(self.sigmas[index], sample, out);
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_sigma_noise(self.sigmas[index], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        match self.dt.take() {
            None => {
                let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
                let dt = sigma_next - sigma;
                self.prev_derivative.resize(sample.len(), 0.0);
                self.first_sample.clear();
                self.first_sample.extend_from_slice(sample);
                for ((x, &out), d) in sample.iter_mut().zip(model_output).zip(&mut self.prev_derivative) {
                    let denoised = heun_denoised(self.prediction, self.clip, sigma, *x, out);
                    *d = (*x - denoised) / sigma;
                    *x += *d * dt;
                }
                self.dt = Some(dt);
            }
            Some(dt) => {
                let sigma_next = self.sigmas[index];
                for (((x, &out), &prev), &first) in
                    sample.iter_mut().zip(model_output).zip(&self.prev_derivative).zip(&self.first_sample)
                {
                    let denoised = heun_denoised(self.prediction, self.clip, sigma_next, *x, out);
                    let derivative = (*x - denoised) / sigma_next;
                    let derivative = (prev + derivative) / 2.0;
                    *x = first + derivative * dt;
                }
            }
        }
    }
}

/// `K_DPM_2`: diffusers' `KDPM2DiscreteScheduler` (k-diffusion `sample_dpm_2`).
#[derive(Debug, Clone)]
pub(crate) struct KDpm2 {
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    /// The sample at the start of the current step, while its second evaluation is pending.
    first_sample: Option<Vec<f32>>,
}

impl KDpm2 {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let training = TrainingSigmas::new(config);
        let schedule = DiscreteSchedule::new(config, &training, steps, true)?;
        let s = &schedule.sigmas;
        let log_sigmas = training.log_sigmas();
        // σ_interpol[i] = exp(lerp(log σᵢ, log σᵢ₋₁, ½)), with σ₋₁ = the last σ (torch's roll).
        let interpol: Vec<f32> = (0..s.len()).map(|i| log_midpoint(s[i], s[(i + s.len() - 1) % s.len()])).collect();
        let t_interpol: Vec<f32> =
            interpol.iter().map(|&sigma| training.sigma_to_t(f64::from(sigma), &log_sigmas) as f32).collect();
        let mut timesteps = vec![schedule.timesteps[0]];
        for (ti, &t) in t_interpol[1..interpol.len() - 1].iter().zip(&schedule.timesteps[1..]) {
            timesteps.extend([*ti, t]);
        }
        let sigmas = interleave_sigmas(s);
        Ok(KDpm2 {
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            sigmas_interpol: interleave_sigmas(&interpol),
            timesteps,
            prediction: config.prediction_type,
            first_sample: None,
        })
    }
}

impl Sampler for KDpm2 {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]) {
        let sigma = if self.first_sample.is_none() { self.sigmas[index] } else { self.sigmas_interpol[index] };
        scale_by_sigma(sigma, sample, out);
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_sigma_noise(self.sigmas[index], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        match self.first_sample.take() {
            None => {
                let (sigma, sigma_interpol) = (self.sigmas[index], self.sigmas_interpol[index + 1]);
                let dt = sigma_interpol - sigma;
                self.first_sample = Some(sample.to_vec());
                for (x, &out) in sample.iter_mut().zip(model_output) {
                    let denoised = sigma_denoised(self.prediction, sigma, *x, out);
                    let derivative = (*x - denoised) / sigma;
                    *x += derivative * dt;
                }
            }
            Some(first) => {
                let (sigma, sigma_interpol, sigma_next) =
                    (self.sigmas[index - 1], self.sigmas_interpol[index], self.sigmas[index]);
                let dt = sigma_next - sigma;
                for ((x, &out), &first) in sample.iter_mut().zip(model_output).zip(&first) {
                    let denoised = sigma_denoised(self.prediction, sigma_interpol, *x, out);
                    let derivative = (*x - denoised) / sigma_interpol;
                    *x = first + derivative * dt;
                }
            }
        }
    }
}

/// `K_DPM_2_ANCESTRAL`: diffusers' `KDPM2AncestralDiscreteScheduler`.
#[derive(Debug, Clone)]
pub(crate) struct KDpm2Ancestral {
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    first_sample: Option<Vec<f32>>,
    noise: Vec<f32>,
}

impl KDpm2Ancestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let training = TrainingSigmas::new(config);
        let schedule = DiscreteSchedule::new(config, &training, steps, true)?;
        let s = &schedule.sigmas;
        let n = s.len();
        let log_sigmas = training.log_sigmas();
        let (mut down, mut up) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let next = if i + 1 < n { s[i + 1] } else { 0.0 };
            let (d, u) = ancestral_step(s[i], next);
            down.push(d);
            up.push(u);
        }
        down[n - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..n).map(|i| log_midpoint(s[i], down[i])).collect();
        for value in &mut interpol[n.saturating_sub(2)..] {
            *value = 0.0;
        }
        let t_interpol: Vec<f32> =
            interpol.iter().map(|&sigma| training.sigma_to_t(f64::from(sigma), &log_sigmas) as f32).collect();
        let mut timesteps = vec![schedule.timesteps[0]];
        for (ti, &t) in t_interpol[..n.saturating_sub(2)].iter().zip(&schedule.timesteps[1..]) {
            timesteps.extend([*ti, t]);
        }
        let sigmas = interleave_sigmas(s);
        Ok(KDpm2Ancestral {
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            sigmas_interpol: interleave_sigmas(&interpol),
            sigmas_up: interleave_sigmas(&up),
            sigmas_down: interleave_sigmas(&down),
            timesteps,
            prediction: config.prediction_type,
            first_sample: None,
            noise: Vec::new(),
        })
    }
}

impl Sampler for KDpm2Ancestral {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]) {
        let sigma = if self.first_sample.is_none() { self.sigmas[index] } else { self.sigmas_interpol[index - 1] };
        scale_by_sigma(sigma, sample, out);
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_sigma_noise(self.sigmas[index], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut dyn StepNoise) {
        match self.first_sample.take() {
            None => {
                let (sigma, sigma_interpol) = (self.sigmas[index], self.sigmas_interpol[index]);
                let dt = sigma_interpol - sigma;
                self.first_sample = Some(sample.to_vec());
                for (x, &out) in sample.iter_mut().zip(model_output) {
                    let denoised = sigma_denoised(self.prediction, sigma, *x, out);
                    let derivative = (*x - denoised) / sigma;
                    *x += derivative * dt;
                }
            }
            Some(first) => {
                let sigma = self.sigmas[index - 1];
                let sigma_interpol = self.sigmas_interpol[index - 1];
                let (sigma_up, sigma_down) = (self.sigmas_up[index - 1], self.sigmas_down[index - 1]);
                let dt = sigma_down - sigma;
                for ((x, &out), &first) in sample.iter_mut().zip(model_output).zip(&first) {
                    let denoised = sigma_denoised(self.prediction, sigma_interpol, *x, out);
                    let derivative = (*x - denoised) / sigma_interpol;
                    *x = first + derivative * dt;
                }
                self.noise.resize(sample.len(), 0.0);
                noise.fill(&mut self.noise);
                for (x, &n) in sample.iter_mut().zip(&self.noise) {
                    *x += n * sigma_up;
                }
            }
        }
    }
}

/// `K_LMS`: diffusers' `LMSDiscreteScheduler` (linear multistep, order 4).
#[derive(Debug, Clone)]
pub(crate) struct Lms {
    schedule: DiscreteSchedule,
    init_noise_sigma: f32,
    prediction: PredictionType,
    /// The last (up to) four derivatives, oldest first.
    derivatives: Vec<Vec<f32>>,
}

impl Lms {
    const ORDER: usize = 4;

    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let schedule = DiscreteSchedule::new(config, &TrainingSigmas::new(config), steps, false)?;
        let init_noise_sigma = init_noise_sigma(&schedule.sigmas, config.timestep_spacing);
        Ok(Lms { schedule, init_noise_sigma, prediction: config.prediction_type, derivatives: Vec::new() })
    }

    /// `get_lms_coefficient(order, t, current_order)`: the integral from σₜ to σₜ₊₁ of the
    /// Lagrange basis polynomial of node `current_order`. diffusers integrates it numerically
    /// (`scipy.integrate.quad`); the polynomial has degree ≤ 3, so three-point Gauss-Legendre
    /// quadrature is exact (no quadrature crate needed for a fixed-degree polynomial).
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let sigma = |i: usize| f64::from(self.schedule.sigmas[i]);
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - sigma(t - k)) / (sigma(t - current) - sigma(t - k)))
                .product::<f64>()
        };
        let (a, b) = (sigma(t), sigma(t + 1));
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let node = (3.0f64 / 5.0).sqrt();
        half * (5.0 / 9.0 * basis(mid - half * node) + 8.0 / 9.0 * basis(mid) + 5.0 / 9.0 * basis(mid + half * node))
    }
}

impl Sampler for Lms {
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
        let mut derivative =
            if self.derivatives.len() == Self::ORDER { self.derivatives.remove(0) } else { Vec::new() };
        derivative.clear();
        derivative.extend(
            sample
                .iter()
                .zip(model_output)
                .map(|(&x, &out)| (x - sigma_denoised(self.prediction, sigma, x, out)) / sigma),
        );
        self.derivatives.push(derivative);
        let order = (index + 1).min(Self::ORDER);
        let coefficients: Vec<f32> = (0..order).map(|j| self.coefficient(order, index, j) as f32).collect();
        // `sample + sum(coeff * derivative ...)`, newest derivative first, summed left to right.
        for (i, x) in sample.iter_mut().enumerate() {
            let mut terms = coefficients.iter().zip(self.derivatives.iter().rev()).map(|(&c, d)| c * d[i]);
            let first = terms.next().unwrap_or(0.0);
            *x += terms.fold(first, |acc, term| acc + term);
        }
    }
}

/// What one evaluation of DPM++ 2S ancestral is for.
#[derive(Debug, Clone, Copy)]
enum Evaluation {
    /// The step's first evaluation, at σᵢ, ending the step with an Euler move (σ_down = 0).
    Euler { sigma: f32, sigma_next: f32 },
    /// The step's first evaluation, moving to the midpoint σ_s.
    First { sigma: f32, ratio_s: f32, expm1_half: f32 },
    /// The second evaluation, at σ_s, finishing the step.
    Second { ratio_down: f32, expm1_h: f32, sigma_up: f32, add_noise: bool },
}

/// `K_DPMPP_2S_ANCESTRAL`: k-diffusion's `sample_dpmpp_2s_ancestral` (η = 1, s_noise = 1) on the
/// σs of `EulerDiscreteScheduler`. The UNet sees the schedule's own timesteps at σᵢ and the
/// log-σ-interpolated timestep (`_sigma_to_t`) at each midpoint.
#[derive(Debug, Clone)]
pub(crate) struct DpmPp2sAncestral {
    evaluations: Vec<Evaluation>,
    /// σ whose `x / √(σ² + 1)` is the UNet input, per evaluation.
    input_sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    first_sample: Vec<f32>,
    noise: Vec<f32>,
}

impl DpmPp2sAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let training = TrainingSigmas::new(config);
        let schedule = DiscreteSchedule::new(config, &training, steps, false)?;
        let log_sigmas = training.log_sigmas();
        let (mut evaluations, mut input_sigmas, mut timesteps) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &t_i) in schedule.timesteps.iter().enumerate() {
            let (sigma, sigma_next) = (schedule.sigmas[i], schedule.sigmas[i + 1]);
            let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next);
            input_sigmas.push(sigma);
            timesteps.push(t_i);
            if sigma_down == 0.0 {
                evaluations.push(Evaluation::Euler { sigma, sigma_next });
                continue;
            }
            // t = −log σ; h = t_next − t; s = t + h/2; σ(t) = exp(−t).
            let (t, t_next) = (-sigma.ln(), -sigma_down.ln());
            let h = t_next - t;
            let s = t + 0.5 * h;
            let (sigma_t, sigma_s) = ((-t).exp(), (-s).exp());
            evaluations.push(Evaluation::First { sigma, ratio_s: sigma_s / sigma_t, expm1_half: (-h * 0.5).exp_m1() });
            evaluations.push(Evaluation::Second {
                ratio_down: (-t_next).exp() / sigma_t,
                expm1_h: (-h).exp_m1(),
                sigma_up,
                add_noise: sigma_next > 0.0,
            });
            input_sigmas.push(sigma_s);
            timesteps.push(training.sigma_to_t(f64::from(sigma_s), &log_sigmas) as f32);
        }
        Ok(DpmPp2sAncestral {
            init_noise_sigma: init_noise_sigma(&schedule.sigmas, config.timestep_spacing),
            evaluations,
            input_sigmas,
            timesteps,
            prediction: config.prediction_type,
            first_sample: Vec::new(),
            noise: Vec::new(),
        })
    }
}

impl Sampler for DpmPp2sAncestral {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]) {
        scale_by_sigma(self.input_sigmas[index], sample, out);
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_sigma_noise(self.input_sigmas[index], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut dyn StepNoise) {
        let input_sigma = self.input_sigmas[index];
        match self.evaluations[index] {
            Evaluation::Euler { sigma, sigma_next } => {
                let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next);
                let dt = sigma_down - sigma;
                for (x, &out) in sample.iter_mut().zip(model_output) {
                    let denoised = sigma_denoised(self.prediction, sigma, *x, out);
                    *x += (*x - denoised) / sigma * dt;
                }
                if sigma_next > 0.0 {
                    self.add_noise_scaled(sample, sigma_up, noise);
                }
            }
            Evaluation::First { sigma, ratio_s, expm1_half } => {
                self.first_sample.clear();
                self.first_sample.extend_from_slice(sample);
                for (x, &out) in sample.iter_mut().zip(model_output) {
                    let denoised = sigma_denoised(self.prediction, sigma, *x, out);
                    *x = ratio_s * *x - expm1_half * denoised;
                }
            }
            Evaluation::Second { ratio_down, expm1_h, sigma_up, add_noise } => {
                for ((x, &out), &first) in sample.iter_mut().zip(model_output).zip(&self.first_sample) {
                    let denoised = sigma_denoised(self.prediction, input_sigma, *x, out);
                    *x = ratio_down * first - expm1_h * denoised;
                }
                if add_noise {
                    self.add_noise_scaled(sample, sigma_up, noise);
                }
            }
        }
    }
}

impl DpmPp2sAncestral {
    fn add_noise_scaled(&mut self, sample: &mut [f32], sigma_up: f32, noise: &mut dyn StepNoise) {
        self.noise.resize(sample.len(), 0.0);
        noise.fill(&mut self.noise);
        for (x, &n) in sample.iter_mut().zip(&self.noise) {
            *x += n * sigma_up;
        }
    }
}
