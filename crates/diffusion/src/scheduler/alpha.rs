//! The samplers that work on ᾱ at integer timesteps: DDIM, DDPM, PNDM (PLMS) and DPM-Solver++
//! 2M, ports of the diffusers 0.42.1 classes. Their UNet input is the latents unscaled and their
//! initial noise is unit variance.

use super::config::{BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{TrainingSigmas, check_in_table, integer_timesteps, karras_sigmas, linspace_f64};
use super::{Sampler, StepNoise};

/// `√ᾱ·x + √(1 − ᾱ)·noise`: `add_noise` of the ᾱ-space classes.
fn add_alpha_noise(alpha_cumprod: f32, original: &[f32], noise: &[f32], out: &mut [f32]) {
    let (a, b) = (alpha_cumprod.sqrt(), (1.0 - alpha_cumprod).sqrt());
    for ((o, &x), &n) in out.iter_mut().zip(original).zip(noise) {
        *o = a * x + b * n;
    }
}

/// The x₀ estimate from a model output at ᾱ_t (DDIM/DDPM `pred_original_sample`).
#[inline]
fn alpha_denoised(prediction: PredictionType, alpha_t: f32, x: f32, output: f32) -> f32 {
    let beta_t = 1.0 - alpha_t;
    match prediction {
        PredictionType::Epsilon => (x - beta_t.sqrt() * output) / alpha_t.sqrt(),
        PredictionType::Sample => output,
        PredictionType::VPrediction => alpha_t.sqrt() * x - beta_t.sqrt() * output,
    }
}

/// Timesteps as the UNet receives them.
fn as_float(timesteps: &[usize]) -> Vec<f32> {
    timesteps.iter().map(|&t| t as f32).collect()
}

/// `DDIM`: diffusers' `DDIMScheduler` with η = 0 (deterministic), as its pipelines call it.
#[derive(Debug, Clone)]
pub(crate) struct Ddim {
    timesteps: Vec<usize>,
    float_timesteps: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `num_train_timesteps // steps`: how far back each step goes, whatever the spacing.
    ratio: usize,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let timesteps = integer_timesteps(config, steps)?;
        let alphas_cumprod = TrainingSigmas::new(config).alphas_cumprod().to_vec();
        Ok(Ddim {
            float_timesteps: as_float(&timesteps),
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            ratio: config.num_train_timesteps / steps,
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f32] {
        &self.float_timesteps
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_alpha_noise(self.alphas_cumprod[self.timesteps[index]], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        let t = self.timesteps[index];
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = t.checked_sub(self.ratio).map_or(self.final_alpha_cumprod, |prev| self.alphas_cumprod[prev]);
        let beta_t = 1.0 - alpha_t;
        let direction = (1.0 - alpha_prev - 0.0f32).sqrt();
        for (x, &out) in sample.iter_mut().zip(model_output) {
            let mut x0 = alpha_denoised(self.prediction, alpha_t, *x, out);
            let eps = match self.prediction {
                PredictionType::Epsilon => out,
                PredictionType::Sample => (*x - alpha_t.sqrt() * x0) / beta_t.sqrt(),
                PredictionType::VPrediction => alpha_t.sqrt() * out + beta_t.sqrt() * *x,
            };
            if let Some(range) = self.clip {
                x0 = x0.clamp(-range, range);
            }
            *x = alpha_prev.sqrt() * x0 + direction * eps;
        }
    }
}

/// `DDPM`: diffusers' `DDPMScheduler` (ancestral sampling of the original DDPM paper).
#[derive(Debug, Clone)]
pub(crate) struct Ddpm {
    timesteps: Vec<usize>,
    float_timesteps: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    clip: Option<f32>,
    fixed_large: bool,
    noise: Vec<f32>,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let timesteps = integer_timesteps(config, steps)?;
        Ok(Ddpm {
            float_timesteps: as_float(&timesteps),
            timesteps,
            alphas_cumprod: TrainingSigmas::new(config).alphas_cumprod().to_vec(),
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
            fixed_large: config.variance_type.as_deref() == Some("fixed_large"),
            noise: Vec::new(),
        })
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[f32] {
        &self.float_timesteps
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_alpha_noise(self.alphas_cumprod[self.timesteps[index]], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut dyn StepNoise) {
        let t = self.timesteps[index];
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = self.timesteps.get(index + 1).map_or(1.0, |&prev| self.alphas_cumprod[prev]);
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let x0_coeff = alpha_prev.sqrt() * current_beta / beta_t;
        let sample_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        for (x, &out) in sample.iter_mut().zip(model_output) {
            let mut x0 = alpha_denoised(self.prediction, alpha_t, *x, out);
            if let Some(range) = self.clip {
                x0 = x0.clamp(-range, range);
            }
            *x = x0_coeff * x0 + sample_coeff * *x;
        }
        if t > 0 {
            let variance = if self.fixed_large { current_beta } else { (beta_prev / beta_t * current_beta).max(1e-20) };
            let std = variance.sqrt();
            self.noise.resize(sample.len(), 0.0);
            noise.fill(&mut self.noise);
            for (x, &n) in sample.iter_mut().zip(&self.noise) {
                *x += std * n;
            }
        }
    }
}

/// `PNDM`: diffusers' `PNDMScheduler`: pseudo linear multistep (PLMS), after four Runge-Kutta
/// warm-up steps unless `skip_prk_steps` (SD 1.5's config skips them).
#[derive(Debug, Clone)]
pub(crate) struct Pndm {
    timesteps: Vec<usize>,
    float_timesteps: Vec<f32>,
    prk_len: usize,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    ratio: usize,
    prediction: PredictionType,
    counter: usize,
    ets: Vec<Vec<f32>>,
    cur_model_output: Vec<f32>,
    cur_sample: Option<Vec<f32>>,
}

impl Pndm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let train = config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(format!("steps must be between 1 and {train} (got {steps})"));
        }
        let ratio = train / steps;
        // `_timesteps`, ascending.
        let base: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Linspace => {
                linspace_f64(0.0, (train - 1) as f64, steps).into_iter().map(|t| t.round_ties_even() as usize).collect()
            }
            TimestepSpacing::Leading => (0..steps).map(|i| i * ratio + config.steps_offset).collect(),
            TimestepSpacing::Trailing => {
                let start = train as f64;
                let delta = (start - start / steps as f64) - start;
                let mut ts: Vec<usize> = (0..steps)
                    .map(|i| ((start + i as f64 * delta).round_ties_even() as usize).saturating_sub(1))
                    .collect();
                ts.reverse();
                ts
            }
        };
        let (prk, plms): (Vec<usize>, Vec<usize>) = if config.skip_prk_steps {
            let n = base.len();
            let mut plms: Vec<usize> = base[..n - 1].to_vec();
            plms.extend_from_slice(&base[n.saturating_sub(2)..n - 1]);
            plms.push(base[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if steps < 4 {
                return Err(format!("PNDM needs at least 4 steps with this model's config (got {steps})"));
            }
            let half = ratio / 2;
            let doubled: Vec<usize> = base[steps - 4..].iter().flat_map(|&t| [t, t + half]).collect();
            // prk_timesteps[:-1].repeat(2)[1:-1][::-1]
            let repeated: Vec<usize> = doubled[..doubled.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = repeated[1..repeated.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..steps - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let timesteps: Vec<usize> = prk.iter().chain(&plms).copied().collect();
        check_in_table(&timesteps, train)?;
        let alphas_cumprod = TrainingSigmas::new(config).alphas_cumprod().to_vec();
        Ok(Pndm {
            float_timesteps: as_float(&timesteps),
            timesteps,
            prk_len: prk.len(),
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            ratio,
            prediction: config.prediction_type,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: Vec::new(),
            cur_sample: None,
        })
    }

    /// `_get_prev_sample`: formula (9) of the PNDM paper, in place on `sample`.
    fn prev_sample(&self, from: &[f32], t: usize, prev_t: Option<usize>, model_output: &[f32], out: &mut [f32]) {
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = prev_t.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denominator = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let difference = alpha_prev - alpha_t;
        for ((o, &x), &m) in out.iter_mut().zip(from).zip(model_output) {
            let m = match self.prediction {
                PredictionType::VPrediction => alpha_t.sqrt() * m + beta_t.sqrt() * x,
                _ => m,
            };
            *o = sample_coeff * x - difference * m / denominator;
        }
    }

    fn step_prk(&mut self, t: usize, model_output: &[f32], sample: &mut [f32]) {
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { self.ratio / 2 };
        let prev_t = t.checked_sub(diff_to_prev);
        let t = self.timesteps[self.counter / 4 * 4];
        let mut combined = None;
        self.cur_model_output.resize(model_output.len(), 0.0);
        match self.counter % 4 {
            0 => {
                for (c, &m) in self.cur_model_output.iter_mut().zip(model_output) {
                    *c += (1.0f32 / 6.0) * m;
                }
                self.ets.push(model_output.to_vec());
                self.cur_sample = Some(sample.to_vec());
            }
            1 | 2 => {
                for (c, &m) in self.cur_model_output.iter_mut().zip(model_output) {
                    *c += (1.0f32 / 3.0) * m;
                }
            }
            _ => {
                let mixed: Vec<f32> =
                    self.cur_model_output.iter().zip(model_output).map(|(&c, &m)| c + (1.0f32 / 6.0) * m).collect();
                self.cur_model_output.fill(0.0);
                combined = Some(mixed);
            }
        }
        let output = combined.as_deref().unwrap_or(model_output);
        let from = self.cur_sample.clone().unwrap_or_else(|| sample.to_vec());
        self.prev_sample(&from, t, prev_t, output, sample);
        self.counter += 1;
    }

    fn step_plms(&mut self, t: usize, model_output: &[f32], sample: &mut [f32]) {
        let (mut t, mut prev_t) = (t, t.checked_sub(self.ratio));
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.to_vec());
        } else {
            prev_t = Some(t);
            t += self.ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let mut from = None;
        let output: Vec<f32> = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.to_vec());
            model_output.to_vec()
        } else if n == 1 && self.counter == 1 {
            from = self.cur_sample.take();
            model_output.iter().zip(&e[n - 1]).map(|(&m, &e1)| (m + e1) / 2.0).collect()
        } else if n == 2 {
            e[1].iter().zip(&e[0]).map(|(&e1, &e2)| (3.0 * e1 - e2) / 2.0).collect()
        } else if n == 3 {
            (0..model_output.len()).map(|i| (23.0 * e[2][i] - 16.0 * e[1][i] + 5.0 * e[0][i]) / 12.0).collect()
        } else {
            (0..model_output.len())
                .map(|i| (1.0f32 / 24.0) * (55.0 * e[3][i] - 59.0 * e[2][i] + 37.0 * e[1][i] - 9.0 * e[0][i]))
                .collect()
        };
        let from = from.unwrap_or_else(|| sample.to_vec());
        self.prev_sample(&from, t, prev_t, &output, sample);
        self.counter += 1;
    }
}

impl Sampler for Pndm {
    fn timesteps(&self) -> &[f32] {
        &self.float_timesteps
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        add_alpha_noise(self.alphas_cumprod[self.timesteps[index]], original, noise, out);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        let t = self.timesteps[index];
        if self.counter < self.prk_len {
            self.step_prk(t, model_output, sample);
        } else {
            self.step_plms(t, model_output, sample);
        }
    }
}

/// `K_DPMPP_2M`: diffusers' `DPMSolverMultistepScheduler` as DPM-Solver++(2M), midpoint solver,
/// whatever `algorithm_type`/`solver_order` the model's file sets (the sampler's name says 2M).
#[derive(Debug, Clone)]
pub(crate) struct DpmSolverMultistep {
    float_timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    /// First-order last step (`lower_order_final` below 15 steps, `euler_at_final`, final σ 0).
    first_order_final: bool,
    /// Second-order second-to-last step is kept (no third order exists here).
    previous: Vec<f32>,
    lower_order_nums: usize,
}

impl DpmSolverMultistep {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, String> {
        let train = config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(format!("steps must be between 1 and {train} (got {steps})"));
        }
        let training = TrainingSigmas::new(config);
        let alphas_cumprod = training.alphas_cumprod();
        // λ_t = log √ᾱ − log √(1 − ᾱ), float32; clip off the timesteps whose λ is below the minimum.
        let min_lambda = config.lambda_min_clipped();
        let clipped =
            alphas_cumprod.iter().filter(|&&a| f64::from(a.sqrt().ln() - (1.0 - a).sqrt().ln()) < min_lambda).count();
        let last = train - clipped;
        let mut timesteps: Vec<f64> = match config.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut ts: Vec<f64> =
                    linspace_f64(0.0, last as f64 - 1.0, steps + 1).into_iter().map(f64::round_ties_even).collect();
                ts.reverse();
                ts.pop();
                ts
            }
            TimestepSpacing::Leading => {
                let ratio = last / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let start = last as f64;
                let step = train as f64 / steps as f64;
                let count = (start / step).ceil() as usize;
                (0..count.min(steps)).map(|i| (start - i as f64 * step).round_ties_even() - 1.0).collect()
            }
        };
        let mut sigmas: Vec<f64> = if config.use_karras_sigmas {
            // `_convert_to_karras` on the flipped training table: from its largest σ to its smallest.
            let table = training.sigmas();
            let sigmas = karras_sigmas(steps, f64::from(table[0]), f64::from(table[table.len() - 1]));
            let log_sigmas = training.log_sigmas();
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = training.sigma_to_t(s, &log_sigmas);
                    if config.beta_schedule == BetaSchedule::SquaredCosCapV2 { t } else { t.round_ties_even() }
                })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| training.interp(t)).collect()
        };
        let as_index: Vec<usize> = timesteps.iter().map(|&t| t.max(0.0) as usize).collect();
        check_in_table(&as_index, train)?;
        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => {
                let a = alphas_cumprod[0];
                f64::from(((1.0 - a) / a).sqrt())
            }
        });
        let n = timesteps.len();
        Ok(DpmSolverMultistep {
            float_timesteps: timesteps.iter().map(|&t| t as i64 as f32).collect(),
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction: config.prediction_type,
            first_order_final: config.euler_at_final
                || (config.lower_order_final && n < 15)
                || config.final_sigmas_type == FinalSigmasType::Zero,
            previous: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// `_sigma_to_alpha_sigma_t`: (α_t, σ_t) of the VP form.
    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn lambda(alpha: f32, sigma: f32) -> f32 {
        alpha.ln() - sigma.ln()
    }
}

impl Sampler for DpmSolverMultistep {
    fn timesteps(&self) -> &[f32] {
        &self.float_timesteps
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32], out: &mut [f32]) {
        let (alpha, sigma) = Self::alpha_sigma(self.sigmas[index]);
        for ((o, &x), &n) in out.iter_mut().zip(original).zip(noise) {
            *o = alpha * x + sigma * n;
        }
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut dyn StepNoise) {
        let len = self.float_timesteps.len();
        let lower_order_final = index == len - 1 && self.first_order_final;
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[index]);
        // convert_model_output: the x₀ estimate (dpmsolver++ works on data predictions).
        let current: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| match self.prediction {
                PredictionType::Epsilon => (x - sigma_s0 * m) / alpha_s0,
                PredictionType::Sample => m,
                PredictionType::VPrediction => alpha_s0 * x - sigma_s0 * m,
            })
            .collect();
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[index + 1]);
        let lambda_t = Self::lambda(alpha_t, sigma_t);
        let lambda_s0 = Self::lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c0 = alpha_t * ((-h).exp() - 1.0);
        if self.lower_order_nums < 1 || lower_order_final {
            for (x, &d0) in sample.iter_mut().zip(&current) {
                *x = ratio * *x - c0 * d0;
            }
        } else {
            let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[index - 1]);
            let h_0 = lambda_s0 - Self::lambda(alpha_s1, sigma_s1);
            let r0 = h_0 / h;
            let c1 = 0.5 * c0;
            for ((x, &d0), &m1) in sample.iter_mut().zip(&current).zip(&self.previous) {
                let d1 = (1.0 / r0) * (d0 - m1);
                *x = ratio * *x - c0 * d0 - c1 * d1;
            }
        }
        self.previous = current;
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
    }
}
