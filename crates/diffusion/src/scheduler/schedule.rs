//! The discrete noise schedule shared by diffusers' σ-space ("k-diffusion style") schedulers:
//! the training σ table and `set_timesteps`' choice of inference timesteps and σs.
//!
//! Numerics follow diffusers exactly, including its mix of precisions, because the goal is to
//! reproduce its images given the same initial latents:
//! - the training tables (`betas`, `alphas_cumprod`, σ) are torch float32 tensors; `torch.cumprod`
//!   accumulates in double on CPU and stores float32;
//! - the inference timesteps are numpy float32 (`linspace`, `leading`, `trailing`), or float64 for
//!   Karras σs (`_sigma_to_t`), cast to float32 at the end;
//! - `np.interp` of the σ table and the Karras ramp run in float64; the final σs are cast to
//!   float32.
//!
//! Source: `diffusers/schedulers/scheduling_euler_discrete.py` (0.42), `__init__` and
//! `set_timesteps`, `_convert_to_karras`, `_sigma_to_t`.

use super::config::{BetaSchedule, FinalSigmasType, SchedulerConfig, TimestepSpacing};

/// Karras et al.'s ρ, as diffusers hard-codes it.
const KARRAS_RHO: f64 = 7.0;

/// The σ of every training timestep, `σ_t = √((1 − ᾱ_t) / ᾱ_t)`, in float32 like diffusers' table.
#[derive(Debug, Clone)]
pub(crate) struct TrainingSigmas {
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
}

impl TrainingSigmas {
    pub fn new(config: &SchedulerConfig) -> Self {
        let mut betas = betas(config);
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if config.rescale_betas_zero_snr
            && let Some(last) = alphas_cumprod.last_mut()
        {
            // diffusers: "close to 0 without being 0 so first sigma is not inf"
            *last = 2f32.powi(-24);
        }
        let sigmas = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        TrainingSigmas { alphas_cumprod, sigmas }
    }

    /// σ of every training timestep (float32, ascending in t).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// ᾱ of every training timestep (float32).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `np.log(σ)` of the table, float32 like diffusers' `log_sigmas`.
    pub fn log_sigmas(&self) -> Vec<f32> {
        self.sigmas.iter().map(|s| s.ln()).collect()
    }

    /// `np.interp(t, arange(T), σ)`, in float64 like numpy; `t` outside [0, T−1] clamps.
    pub fn interp(&self, t: f64) -> f64 {
        let table = &self.sigmas;
        let last = table.len() - 1;
        if t.is_nan() {
            return f64::NAN;
        }
        if t <= 0.0 {
            return f64::from(table[0]);
        }
        if t >= last as f64 {
            return f64::from(table[last]);
        }
        // 0 < t < last, so the cast is in range.
        let j = t.floor() as usize;
        let (y0, y1) = (f64::from(table[j]), f64::from(table[j + 1]));
        if t == j as f64 {
            return y0;
        }
        // numpy's C loop `slope*(x - xp[j]) + fp[j]` is compiled with FMA contraction.
        let slope = (y1 - y0) / 1.0;
        slope.mul_add(t - j as f64, y0)
    }

    /// diffusers' `_sigma_to_t`: the fractional timestep whose log σ linearly interpolates to
    /// `log σ` between its two neighbours in the training table.
    pub fn sigma_to_t(&self, sigma: f64, log_sigmas: &[f32]) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        // The last index whose log σ is ≤ log_sigma (0 when there is none), kept off the end.
        let low =
            log_sigmas.iter().rposition(|&l| log_sigma - f64::from(l) >= 0.0).unwrap_or(0).min(log_sigmas.len() - 2);
        let (lo, hi) = (f64::from(log_sigmas[low]), f64::from(log_sigmas[low + 1]));
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }
}

/// What `set_timesteps(steps)` leaves on the scheduler: one timestep per step and `steps + 1` σs
/// (the last being the final σ, 0 by default).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiscreteSchedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

impl DiscreteSchedule {
    /// `EulerDiscreteScheduler.set_timesteps(steps)` (and that of the other σ-space classes,
    /// which differ only in rounding Karras timesteps: `round_karras` for the KDPM2 classes).
    /// `steps` must be in 1..=num_train_timesteps.
    pub fn new(
        config: &SchedulerConfig,
        training: &TrainingSigmas,
        steps: usize,
        round_karras: bool,
    ) -> Result<Self, String> {
        let train = config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(format!("steps must be between 1 and {train} (got {steps})"));
        }
        let spaced = spaced_timesteps(config, steps);
        let interpolated: Vec<f64> = spaced.iter().map(|&t| training.interp(f64::from(t))).collect();

        let (timesteps, mut sigmas): (Vec<f32>, Vec<f64>) = if config.use_karras_sigmas {
            let log_sigmas: Vec<f32> = training.sigmas.iter().map(|s| s.ln()).collect();
            let n = interpolated.len();
            let sigma_min = config.sigma_min.unwrap_or(interpolated[n - 1]);
            let sigma_max = config.sigma_max.unwrap_or(interpolated[0]);
            let sigmas = karras_sigmas(n, sigma_min, sigma_max);
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = training.sigma_to_t(s, &log_sigmas);
                    (if round_karras { t.round_ties_even() } else { t }) as f32
                })
                .collect();
            (timesteps, sigmas)
        } else {
            (spaced, interpolated)
        };

        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => {
                let a = training.alphas_cumprod[0];
                f64::from(((1.0 - a) / a).sqrt())
            }
        });
        Ok(DiscreteSchedule { timesteps, sigmas: sigmas.into_iter().map(|s| s as f32).collect() })
    }

    /// `init_noise_sigma`: the largest σ, or `√(σ_max² + 1)` for "leading" spacing (float32).
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f32 {
        let max = self.sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }
}

/// The inference timesteps before any σ conversion, as numpy float32, highest first.
///
/// `trailing` deviates from diffusers in one way: for some step counts (61, 103, 121, ...) numpy's
/// `arange(T, 0, −T/n)` yields n + 1 values because `T / (T/n)` rounds above n, and diffusers then
/// runs an extra step at timestep −1. Here the first n of those values are kept: identical
/// timesteps, no extra step.
pub(crate) fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f32> {
    let train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, T − 1, n, dtype=float32)[::-1]: float64 `i·step`, last forced to T − 1.
            let end = (train - 1) as f64;
            let mut ts: Vec<f32> = if steps == 1 {
                vec![0.0]
            } else {
                let step = end / (steps - 1) as f64;
                (0..steps).map(|i| if i == steps - 1 { end as f32 } else { (i as f64 * step) as f32 }).collect()
            };
            ts.reverse();
            ts
        }
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            let offset = config.steps_offset as f32;
            (0..steps).rev().map(|i| (i * ratio) as f32 + offset).collect()
        }
        TimestepSpacing::Trailing => {
            // np.arange(T, 0, −T/n).round() − 1, with numpy's fill rule `start + i·(v₁ − start)`.
            let start = train as f64;
            let delta = (start - start / steps as f64) - start;
            (0..steps).map(|i| (start + i as f64 * delta).round_ties_even() as f32 - 1.0).collect()
        }
    }
}

/// `_convert_to_karras`: `n` σs evenly spaced in σ^(1/ρ) from `sigma_max` down to `sigma_min`.
pub(crate) fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / KARRAS_RHO);
    let max_inv_rho = sigma_max.powf(1.0 / KARRAS_RHO);
    linspace_f64(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(KARRAS_RHO))
        .collect()
}

/// `np.linspace(start, end, n)` in float64.
pub(crate) fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { end } else { i as f64 * step + start }).collect()
}

/// The training betas as diffusers' float32 tensor.
fn betas(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    if let Some(trained) = &config.trained_betas {
        return trained.iter().map(|&b| b as f32).collect();
    }
    match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
        }
        BetaSchedule::SquaredCosCapV2 => {
            // betas_for_alpha_bar(T, max_beta=0.999, "cosine"), computed in Python floats.
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` as torch's CPU kernel computes it:
/// `start + step·i` for the first half and `end − step·(n−1−i)` for the second, each a fused
/// multiply-add (the kernel is compiled with FMA contraction; this matches torch 2.x bit for bit,
/// where separately rounded products drift by an ulp on about 15 % of the elements).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// `torch.cumprod` on a float32 CPU tensor: a double accumulator, each prefix stored as float32.
fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1), in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut bar_sqrt: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (bar_sqrt[0], bar_sqrt[bar_sqrt.len() - 1]);
    let scale = first / (first - last);
    for v in &mut bar_sqrt {
        *v -= last;
        *v *= scale;
    }
    let bar: Vec<f32> = bar_sqrt.iter().map(|v| v * v).collect();
    std::iter::once(bar[0]).chain(bar.windows(2).map(|w| w[1] / w[0])).map(|a| 1.0 - a).collect()
}

/// The integer timesteps of `DDIMScheduler` / `DDPMScheduler.set_timesteps(steps)`, highest
/// first. Errors when the spacing and `steps_offset` would index past the training table (where
/// diffusers raises an IndexError mid-generation).
pub(crate) fn integer_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<usize>, String> {
    let train = config.num_train_timesteps;
    if steps == 0 || steps > train {
        return Err(format!("steps must be between 1 and {train} (got {steps})"));
    }
    let timesteps: Vec<usize> = match config.timestep_spacing {
        // np.linspace(0, T − 1, n).round()[::-1]
        TimestepSpacing::Linspace => linspace_f64(0.0, (train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as usize)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps).rev().map(|i| i * ratio + config.steps_offset).collect()
        }
        TimestepSpacing::Trailing => {
            let start = train as f64;
            let delta = (start - start / steps as f64) - start;
            (0..steps).map(|i| ((start + i as f64 * delta).round_ties_even() as usize).saturating_sub(1)).collect()
        }
    };
    check_in_table(&timesteps, train)?;
    Ok(timesteps)
}

/// Refuses timesteps past the training table, naming the cause.
pub(crate) fn check_in_table(timesteps: &[usize], train: usize) -> Result<(), String> {
    match timesteps.iter().find(|&&t| t >= train) {
        Some(t) => Err(format!(
            "this many steps with the model's timestep spacing and steps_offset reach timestep {t}, past the \
             {train} training timesteps; use fewer steps"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_linspace_hits_both_ends_exactly() {
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(v[0], 0.0001f32);
        assert_eq!(v[999], 0.02f32);
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn interpolation_between_training_sigmas_is_linear_in_t() {
        let training = TrainingSigmas::new(&SchedulerConfig::default());
        let s = training.sigmas();
        assert_eq!(training.interp(3.0), f64::from(s[3]));
        let mid = training.interp(3.25);
        let expected = f64::from(s[3]) + 0.25 * (f64::from(s[4]) - f64::from(s[3]));
        assert!((mid - expected).abs() < 1e-12);
        assert_eq!(training.interp(-1.0), f64::from(s[0]));
        assert_eq!(training.interp(5000.0), f64::from(s[999]));
    }

    #[test]
    fn sigma_to_t_inverts_the_training_table() {
        let training = TrainingSigmas::new(&SchedulerConfig::default());
        let logs: Vec<f32> = training.sigmas().iter().map(|s| s.ln()).collect();
        for t in [0usize, 1, 250, 998, 999] {
            let back = training.sigma_to_t(f64::from(training.sigmas()[t]), &logs);
            assert!((back - t as f64).abs() < 1e-3, "t={t} came back as {back}");
        }
    }

    #[test]
    fn zero_snr_rescaling_ends_the_schedule_at_sigma_4096() {
        let config = SchedulerConfig { rescale_betas_zero_snr: true, ..SchedulerConfig::default() };
        let training = TrainingSigmas::new(&config);
        let last = training.sigmas()[999];
        assert!((last - 4096.0).abs() < 1.0, "{last}");
    }
}
