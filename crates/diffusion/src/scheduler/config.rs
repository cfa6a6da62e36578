//! `scheduler/scheduler_config.json`, read the way diffusers' `from_config` reads it: every key
//! present in the file is kept, every missing key takes the class default of
//! `EulerDiscreteScheduler` (SD 1.5's hub config has no `timestep_spacing`, so it runs
//! `linspace`). Keys of other scheduler classes (`skip_prk_steps`, `set_alpha_to_one`,
//! `clip_sample`...) are ignored, as diffusers ignores them when it swaps scheduler classes.

use serde::Deserialize;

/// The noise-schedule part of a scheduler config; see the module docs for defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; when present they replace `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub interpolation_type: InterpolationType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    /// Overrides of the Karras ramp's end points.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: FinalSigmasType,
    pub timestep_type: TimestepType,
}

impl Default for SchedulerConfig {
    /// `EulerDiscreteScheduler.__init__`'s defaults (diffusers 0.42).
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmasType::Zero,
            timestep_type: TimestepType::Discrete,
        }
    }
}

impl SchedulerConfig {
    /// Inconsistent values, as a message naming the key.
    pub fn invalid(&self) -> Option<String> {
        if self.num_train_timesteps < 2 {
            return Some(format!("num_train_timesteps must be at least 2 (got {})", self.num_train_timesteps));
        }
        match &self.trained_betas {
            Some(betas) if betas.len() != self.num_train_timesteps => Some(format!(
                "trained_betas has {} values but num_train_timesteps is {}",
                betas.len(),
                self.num_train_timesteps
            )),
            _ => None,
        }
    }

    /// Valid options this engine does not implement, named. Unknown values of the enum keys are
    /// already refused by serde with the list of accepted ones.
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.use_exponential_sigmas || self.use_beta_sigmas {
            Some("use_exponential_sigmas / use_beta_sigmas")
        } else if self.interpolation_type != InterpolationType::Linear {
            Some("interpolation_type \"log_linear\"")
        } else if self.timestep_type == TimestepType::Continuous && self.prediction_type == PredictionType::VPrediction
        {
            Some("timestep_type \"continuous\" with v_prediction (EDM-style models)")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredCosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PredictionType {
    /// The UNet predicts the added noise ε (SD 1.x, SD 2.x-base, SD-Turbo).
    Epsilon,
    /// The UNet predicts v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768-v).
    VPrediction,
    /// The UNet predicts x₀ directly ("original_sample" is diffusers' legacy name for it).
    #[serde(alias = "original_sample")]
    Sample,
}

/// How inference timesteps are picked from the training ones (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InterpolationType {
    Linear,
    LogLinear,
}

/// The σ appended after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FinalSigmasType {
    Zero,
    SigmaMin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimestepType {
    Discrete,
    Continuous,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_the_euler_class_defaults() {
        let config: SchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#).unwrap();
        assert_eq!(config, SchedulerConfig::default());
    }

    #[test]
    fn the_sd15_hub_config_runs_linspace_with_scaled_linear_betas() {
        let config: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000,
                "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#,
        )
        .unwrap();
        assert_eq!(config.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(config.timestep_spacing, TimestepSpacing::Linspace);
        assert_eq!(config.steps_offset, 1);
        assert_eq!(config.trained_betas, None);
        assert_eq!(config.invalid(), None);
        assert_eq!(config.unsupported(), None);
    }

    #[test]
    fn an_unknown_spacing_is_refused_with_the_accepted_values() {
        let err = serde_json::from_str::<SchedulerConfig>(r#"{"timestep_spacing": "sideways"}"#).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("sideways") && message.contains("trailing"), "{message}");
    }

    #[test]
    fn unimplemented_options_are_refused_by_name() {
        let config = SchedulerConfig { use_beta_sigmas: true, ..SchedulerConfig::default() };
        assert!(config.unsupported().unwrap().contains("use_beta_sigmas"));
        let config = SchedulerConfig { interpolation_type: InterpolationType::LogLinear, ..SchedulerConfig::default() };
        assert!(config.unsupported().unwrap().contains("log_linear"));
        let config = SchedulerConfig { trained_betas: Some(vec![0.1; 3]), ..SchedulerConfig::default() };
        assert!(config.invalid().unwrap().contains("trained_betas"));
    }
}
