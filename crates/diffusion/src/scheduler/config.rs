//! `scheduler/scheduler_config.json`, read the way diffusers' `SomeScheduler.from_config(config)`
//! reads it when a pipeline swaps scheduler classes: every key the target class accepts that is
//! present in the file is kept, every key it accepts that is missing takes **that class's**
//! default, and keys the class does not accept are ignored. So on SD 1.5's hub config (a
//! `PNDMScheduler` file without `timestep_spacing`) `K_EULER` runs `linspace` while `DDIM` runs
//! `leading`, exactly as in diffusers.
//!
//! Defaults are those of diffusers 0.42.1's `__init__` signatures (`testdata/golden.py` checks
//! them against the installed package when it regenerates the golden files).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use easel_core::generator::SamplerKind;

/// The diffusers scheduler classes easel implements, by their `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchedulerClass {
    Ddim,
    Ddpm,
    Pndm,
    EulerDiscrete,
    EulerAncestralDiscrete,
    HeunDiscrete,
    KDpm2Discrete,
    KDpm2AncestralDiscrete,
    LmsDiscrete,
    DpmSolverMultistep,
}

impl SchedulerClass {
    const ALL: [SchedulerClass; 10] = [
        SchedulerClass::Ddim,
        SchedulerClass::Ddpm,
        SchedulerClass::Pndm,
        SchedulerClass::EulerDiscrete,
        SchedulerClass::EulerAncestralDiscrete,
        SchedulerClass::HeunDiscrete,
        SchedulerClass::KDpm2Discrete,
        SchedulerClass::KDpm2AncestralDiscrete,
        SchedulerClass::LmsDiscrete,
        SchedulerClass::DpmSolverMultistep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Ddpm => "DDPMScheduler",
            SchedulerClass::Pndm => "PNDMScheduler",
            SchedulerClass::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerClass::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerClass::HeunDiscrete => "HeunDiscreteScheduler",
            SchedulerClass::KDpm2Discrete => "KDPM2DiscreteScheduler",
            SchedulerClass::KDpm2AncestralDiscrete => "KDPM2AncestralDiscreteScheduler",
            SchedulerClass::LmsDiscrete => "LMSDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    pub fn from_name(name: &str) -> Option<SchedulerClass> {
        SchedulerClass::ALL.into_iter().find(|class| class.name() == name)
    }

    /// The class a sampler runs on. `K_DPMPP_2S_ANCESTRAL` has no diffusers class; it is
    /// k-diffusion's sampler on the σ schedule `EulerDiscreteScheduler` would build.
    pub fn of(kind: SamplerKind) -> SchedulerClass {
        match kind {
            SamplerKind::Ddim => SchedulerClass::Ddim,
            SamplerKind::Ddpm => SchedulerClass::Ddpm,
            SamplerKind::Pndm => SchedulerClass::Pndm,
            SamplerKind::Euler | SamplerKind::DpmPp2sAncestral => SchedulerClass::EulerDiscrete,
            SamplerKind::EulerAncestral => SchedulerClass::EulerAncestralDiscrete,
            SamplerKind::Heun => SchedulerClass::HeunDiscrete,
            SamplerKind::Dpm2 => SchedulerClass::KDpm2Discrete,
            SamplerKind::Dpm2Ancestral => SchedulerClass::KDpm2AncestralDiscrete,
            SamplerKind::Lms => SchedulerClass::LmsDiscrete,
            SamplerKind::DpmPp2m => SchedulerClass::DpmSolverMultistep,
        }
    }

    /// The sampler a model whose config names this class runs by default.
    pub fn default_sampler(self) -> SamplerKind {
        match self {
            SchedulerClass::Ddim => SamplerKind::Ddim,
            SchedulerClass::Ddpm => SamplerKind::Ddpm,
            SchedulerClass::Pndm => SamplerKind::Pndm,
            SchedulerClass::EulerDiscrete => SamplerKind::Euler,
            SchedulerClass::EulerAncestralDiscrete => SamplerKind::EulerAncestral,
            SchedulerClass::HeunDiscrete => SamplerKind::Heun,
            SchedulerClass::KDpm2Discrete => SamplerKind::Dpm2,
            SchedulerClass::KDpm2AncestralDiscrete => SamplerKind::Dpm2Ancestral,
            SchedulerClass::LmsDiscrete => SamplerKind::Lms,
            SchedulerClass::DpmSolverMultistep => SamplerKind::DpmPp2m,
        }
    }

    /// Every key the class's `__init__` accepts, with its default (diffusers 0.42.1).
    fn defaults(self) -> Value {
        let common = json!({
            "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "trained_betas": null, "prediction_type": "epsilon", "steps_offset": 0,
        });
        let specific = match self {
            SchedulerClass::Ddim => json!({
                "clip_sample": true, "set_alpha_to_one": true, "thresholding": false,
                "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
                "timestep_spacing": "leading", "rescale_betas_zero_snr": false,
            }),
            SchedulerClass::Ddpm => json!({
                "variance_type": "fixed_small", "clip_sample": true, "thresholding": false,
                "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
                "timestep_spacing": "leading", "rescale_betas_zero_snr": false,
            }),
            SchedulerClass::Pndm => json!({
                "skip_prk_steps": false, "set_alpha_to_one": false, "timestep_spacing": "leading",
            }),
            SchedulerClass::EulerDiscrete => json!({
                "interpolation_type": "linear", "use_karras_sigmas": false, "use_exponential_sigmas": false,
                "use_beta_sigmas": false, "sigma_min": null, "sigma_max": null, "timestep_spacing": "linspace",
                "timestep_type": "discrete", "rescale_betas_zero_snr": false, "final_sigmas_type": "zero",
            }),
            SchedulerClass::EulerAncestralDiscrete => json!({
                "timestep_spacing": "linspace", "rescale_betas_zero_snr": false,
            }),
            SchedulerClass::HeunDiscrete => json!({
                "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": false,
                "use_exponential_sigmas": false, "use_beta_sigmas": false, "clip_sample": false,
                "clip_sample_range": 1.0, "timestep_spacing": "linspace",
            }),
            SchedulerClass::KDpm2Discrete | SchedulerClass::KDpm2AncestralDiscrete => json!({
                "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": false,
                "use_exponential_sigmas": false, "use_beta_sigmas": false, "timestep_spacing": "linspace",
            }),
            SchedulerClass::LmsDiscrete => json!({
                "use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
                "timestep_spacing": "linspace",
            }),
            SchedulerClass::DpmSolverMultistep => json!({
                "solver_order": 2, "thresholding": false, "dynamic_thresholding_ratio": 0.995,
                "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "lower_order_final": true, "euler_at_final": false, "use_karras_sigmas": false,
                "use_exponential_sigmas": false, "use_beta_sigmas": false, "use_lu_lambdas": false,
                "use_flow_sigmas": false, "flow_shift": 1.0, "final_sigmas_type": "zero",
                "lambda_min_clipped": null, "variance_type": null, "timestep_spacing": "linspace",
                "rescale_betas_zero_snr": false, "use_dynamic_shifting": false,
            }),
        };
        let mut merged = common;
        if let (Some(merged), Value::Object(specific)) = (merged.as_object_mut(), specific) {
            merged.extend(specific);
        }
        merged
    }
}

/// `scheduler_config.json` as written, before any class is chosen.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SchedulerFile {
    raw: Map<String, Value>,
}

impl SchedulerFile {
    pub fn new(raw: Map<String, Value>) -> Self {
        SchedulerFile { raw }
    }

    /// What diffusers' Stable Diffusion pipelines (ONNX ones included) do to every scheduler
    /// they are given: `steps_offset` becomes 1 and `clip_sample` false, "fixing" configs that
    /// predate those keys (`pipeline_onnx_stable_diffusion.py`, `__init__`). Applied to the
    /// file, they reach only the classes that have those keys, as in diffusers.
    pub fn with_stable_diffusion_fixups(mut self) -> Self {
        self.raw.insert("steps_offset".to_owned(), Value::from(1));
        self.raw.insert("clip_sample".to_owned(), Value::from(false));
        self
    }

    /// `_class_name`, when present.
    pub fn class_name(&self) -> Option<&str> {
        self.raw.get("_class_name").and_then(Value::as_str)
    }

    /// The sampler the model runs when a request names none: its class's, or `K_EULER` for
    /// classes easel does not implement (UniPC, DEIS...), which every SD-family model supports.
    pub fn default_sampler(&self) -> SamplerKind {
        self.class_name()
            .and_then(SchedulerClass::from_name)
            .map_or(SamplerKind::Euler, SchedulerClass::default_sampler)
    }

    /// The config `class.from_config(file)` would hold; errors name the key.
    pub fn resolve(&self, class: SchedulerClass) -> Result<SchedulerConfig, String> {
        let mut merged = class.defaults();
        if let Some(merged) = merged.as_object_mut() {
            for (key, value) in &self.raw {
                if let Some(slot) = merged.get_mut(key) {
                    *slot = value.clone();
                }
            }
        }
        let config: SchedulerConfig = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        if let Some(message) = config.invalid() {
            return Err(message);
        }
        if let Some(feature) = config.unsupported(class) {
            return Err(format!("{} with {feature} is not supported", class.name()));
        }
        Ok(config)
    }
}

/// One class's view of the scheduler config: the union of the keys of the classes easel
/// implements. Keys a class does not accept hold the values of [`SchedulerConfig::default`] and
/// are never read by that class's sampler.
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
    /// Overrides of the Karras ramp's end points (`EulerDiscreteScheduler` only).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: FinalSigmasType,
    pub timestep_type: TimestepType,
    /// DDIM, DDPM, Heun: clamp the x₀ estimate to ±`clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f32,
    /// DDIM, PNDM: ᾱ after the last step is 1 (true) or ᾱ₀ (false).
    pub set_alpha_to_one: bool,
    pub thresholding: bool,
    /// DDPM: "fixed_small" (default) or "fixed_large"...; DPM-Solver: null or "learned...".
    pub variance_type: Option<String>,
    /// PNDM: skip the four Runge-Kutta warm-up steps (SD 1.5's config sets it).
    pub skip_prk_steps: bool,
    /// DPM-Solver (multistep).
    pub solver_order: usize,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub use_dynamic_shifting: bool,
    /// `null` means −∞ (no clipping), as diffusers' `-float("inf")` serializes.
    pub lambda_min_clipped: Option<f64>,
}

impl Default for SchedulerConfig {
    /// `EulerDiscreteScheduler.__init__`'s defaults, plus the other classes' for their own keys.
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
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: false,
            thresholding: false,
            variance_type: None,
            skip_prk_steps: false,
            solver_order: 2,
            algorithm_type: "dpmsolver++".to_owned(),
            solver_type: "midpoint".to_owned(),
            lower_order_final: true,
            euler_at_final: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            use_dynamic_shifting: false,
            lambda_min_clipped: None,
        }
    }
}

impl SchedulerConfig {
    /// The config of `EulerDiscreteScheduler.from_config(file)`, for tests.
    #[cfg(test)]
    pub fn euler(raw: Value) -> Self {
        let Value::Object(raw) = raw else { panic!("not an object") };
        match SchedulerFile::new(raw).resolve(SchedulerClass::EulerDiscrete) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        }
    }

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

    /// Valid options of `class` this engine does not implement, named. Unknown values of the
    /// enum keys are already refused by serde with the list of accepted ones.
    pub fn unsupported(&self, class: SchedulerClass) -> Option<String> {
        let named = |what: &str| Some(what.to_owned());
        if self.use_exponential_sigmas || self.use_beta_sigmas {
            return named("use_exponential_sigmas / use_beta_sigmas");
        }
        if self.interpolation_type != InterpolationType::Linear {
            return named("interpolation_type \"log_linear\"");
        }
        if self.timestep_type == TimestepType::Continuous {
            return named("timestep_type \"continuous\" (EDM-style models)");
        }
        if self.thresholding {
            return named("thresholding (dynamic thresholding is for pixel-space models)");
        }
        match class {
            SchedulerClass::Ddpm => match self.variance_type.as_deref() {
                None | Some("fixed_small" | "fixed_large") => None,
                Some(other) => Some(format!("variance_type {other:?} (supported: fixed_small, fixed_large)")),
            },
            SchedulerClass::DpmSolverMultistep => {
                if self.variance_type.is_some() {
                    named("variance_type (learned variance)")
                } else if self.use_lu_lambdas || self.use_flow_sigmas || self.use_dynamic_shifting {
                    named("use_lu_lambdas / use_flow_sigmas / use_dynamic_shifting")
                } else {
                    None
                }
            }
            SchedulerClass::EulerAncestralDiscrete
            | SchedulerClass::KDpm2Discrete
            | SchedulerClass::KDpm2AncestralDiscrete
            | SchedulerClass::Pndm
                if self.prediction_type == PredictionType::Sample =>
            {
                named("prediction_type \"sample\"")
            }
            _ => None,
        }
    }

    /// `λ_min_clipped`, −∞ when unset.
    pub fn lambda_min_clipped(&self) -> f64 {
        self.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY)
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

    fn file(json: &str) -> SchedulerFile {
        SchedulerFile::new(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn missing_keys_take_the_defaults_of_the_class_that_runs() {
        let file = file(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#);
        let euler = file.resolve(SchedulerClass::EulerDiscrete).unwrap();
        assert_eq!(euler, SchedulerConfig::default());
        let ddim = file.resolve(SchedulerClass::Ddim).unwrap();
        assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
        assert!(ddim.clip_sample && ddim.set_alpha_to_one);
        let heun = file.resolve(SchedulerClass::HeunDiscrete).unwrap();
        assert_eq!((heun.beta_start, heun.beta_end), (0.00085, 0.012));
        assert!(file.resolve(SchedulerClass::Pndm).unwrap().skip_prk_steps);
    }

    #[test]
    fn the_sd15_hub_config_runs_linspace_euler_and_leading_ddim() {
        let file = file(
            r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000,
                "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#,
        );
        let euler = file.resolve(SchedulerClass::EulerDiscrete).unwrap();
        assert_eq!(euler.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
        assert_eq!(euler.steps_offset, 1);
        let ddim = file.resolve(SchedulerClass::Ddim).unwrap();
        assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
        assert!(!ddim.clip_sample && !ddim.set_alpha_to_one);
        assert_eq!(file.default_sampler(), SamplerKind::Pndm);
    }

    #[test]
    fn keys_of_other_classes_are_ignored_even_with_values_this_engine_refuses() {
        // A DPM-Solver key with an unsupported value does not stop Euler.
        let file = file(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true}"#);
        assert!(file.resolve(SchedulerClass::EulerDiscrete).is_ok());
        let err = file.resolve(SchedulerClass::DpmSolverMultistep).unwrap_err();
        assert!(err.contains("use_lu_lambdas"), "{err}");
    }

    #[test]
    fn an_unknown_spacing_is_refused_with_the_accepted_values() {
        let message = file(r#"{"timestep_spacing": "sideways"}"#).resolve(SchedulerClass::Ddim).unwrap_err();
        assert!(message.contains("sideways") && message.contains("trailing"), "{message}");
    }

    #[test]
    fn unimplemented_options_are_refused_by_name() {
        let err = file(r#"{"use_beta_sigmas": true}"#).resolve(SchedulerClass::EulerDiscrete).unwrap_err();
        assert!(err.contains("use_beta_sigmas"), "{err}");
        let err = file(r#"{"interpolation_type": "log_linear"}"#).resolve(SchedulerClass::EulerDiscrete).unwrap_err();
        assert!(err.contains("log_linear"), "{err}");
        let err = file(r#"{"trained_betas": [0.1, 0.2, 0.3]}"#).resolve(SchedulerClass::Ddim).unwrap_err();
        assert!(err.contains("trained_betas"), "{err}");
        let err = file(r#"{"variance_type": "learned_range"}"#).resolve(SchedulerClass::Ddpm).unwrap_err();
        assert!(err.contains("learned_range"), "{err}");
    }

    #[test]
    fn unknown_classes_default_to_euler() {
        assert_eq!(file(r#"{"_class_name": "UniPCMultistepScheduler"}"#).default_sampler(), SamplerKind::Euler);
        assert_eq!(file("{}").default_sampler(), SamplerKind::Euler);
        assert_eq!(file(r#"{"_class_name": "DDIMScheduler"}"#).default_sampler(), SamplerKind::Ddim);
    }
}
