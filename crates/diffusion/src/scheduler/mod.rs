//! Samplers (diffusers "schedulers"): which timesteps the UNet is evaluated at and how its output
//! moves the latents.
//!
//! A [`Sampler`] is built fresh for every generation (and for every batch chunk of it, because
//! multistep samplers keep per-image history); the training tables it derives from
//! `scheduler_config.json` cost microseconds. Only `K_EULER` exists so far; the other Stability
//! sampler names map onto diffusers classes as listed in `shared/reference/inference-engine.md` §2.

mod config;
mod euler;
mod schedule;

pub(crate) use config::SchedulerConfig;

/// The sampler a request names, by its Stability v1 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// diffusers `EulerDiscreteScheduler` / k-diffusion `sample_euler`.
    Euler,
}

impl SamplerKind {
    /// Every sampler this engine implements.
    pub const ALL: [SamplerKind; 1] = [SamplerKind::Euler];

    /// The Stability v1 name (`K_EULER`...).
    pub fn api_name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "K_EULER",
        }
    }

    /// Parses a Stability v1 name; `None` for names this engine does not implement.
    pub fn from_api_name(name: &str) -> Option<SamplerKind> {
        SamplerKind::ALL.into_iter().find(|kind| kind.api_name() == name)
    }
}

/// One denoising run's sampler state. The pipeline, for each index `i` of [`Sampler::timesteps`]:
/// fills the UNet input with [`Sampler::scale_model_input`], evaluates the UNet at timestep `i`,
/// applies classifier-free guidance, then calls [`Sampler::step`] on the latents in place.
///
/// Slices are flat `[images, channels, h, w]` float32 buffers of equal length.
pub(crate) trait Sampler: Send + std::fmt::Debug {
    /// The UNet timestep of every model evaluation, in order (float32, possibly fractional).
    fn timesteps(&self) -> &[f32];
    /// What unit-variance initial noise is multiplied by.
    fn init_noise_sigma(&self) -> f32;
    /// Writes the UNet input for evaluation `index` into `out`.
    fn scale_model_input(&self, index: usize, sample: &[f32], out: &mut [f32]);
    /// Advances `sample` past evaluation `index`, given the (guided) model output.
    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32]);
}

/// Builds the sampler `kind` for `steps` steps. Errors name the offending value.
pub(crate) fn build_sampler(
    kind: SamplerKind,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Sampler>, String> {
    match kind {
        SamplerKind::Euler => Ok(Box::new(euler::EulerDiscrete::new(config, steps)?)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Golden numbers from diffusers 0.42.1 itself (`testdata/euler_golden.py`).

    use super::euler::EulerDiscrete;
    use super::*;

    #[derive(serde::Deserialize)]
    struct Golden {
        schedules: Vec<GoldenSchedule>,
        trajectories: Vec<GoldenTrajectory>,
    }

    #[derive(serde::Deserialize)]
    struct GoldenSchedule {
        config: serde_json::Value,
        steps: usize,
        timesteps: Vec<f32>,
        sigmas: Vec<f32>,
        init_noise_sigma: f32,
    }

    #[derive(serde::Deserialize)]
    struct GoldenTrajectory {
        config: serde_json::Value,
        steps_count: usize,
        start: Vec<f32>,
        steps: Vec<GoldenStep>,
    }

    #[derive(serde::Deserialize)]
    struct GoldenStep {
        model_output: Vec<f32>,
        scaled: Vec<f32>,
        prev: Vec<f32>,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("testdata/euler_golden.json")).unwrap()
    }

    /// Relative closeness (0.0 = bit-exact).
    fn assert_close(ours: &[f32], theirs: &[f32], tolerance: f32, what: &str) {
        assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let scale = a.abs().max(b.abs()).max(1.0);
            assert!((a - b).abs() <= tolerance * scale, "{what}[{i}]: ours {a}, diffusers {b}");
        }
    }

    #[test]
    fn euler_schedules_match_diffusers_for_every_spacing_and_option() {
        let golden = golden();
        assert!(golden.schedules.len() >= 30);
        for case in golden.schedules {
            let config: SchedulerConfig = serde_json::from_value(case.config.clone()).unwrap();
            let euler = EulerDiscrete::new(&config, case.steps).unwrap();
            let what = format!("{} steps of {}", case.steps, case.config);
            let (timesteps, sigmas) = if case.timesteps.len() == case.steps {
                (&case.timesteps[..], &case.sigmas[..])
            } else {
                // numpy's arange gave diffusers one timestep too many (see `spaced_timesteps`):
                // the first `steps` agree and the schedule still ends at σ = 0.
                assert_eq!(case.timesteps.len(), case.steps + 1, "{what}");
                assert_eq!(euler.sigmas().last(), Some(&0.0));
                (&case.timesteps[..case.steps], &case.sigmas[..case.steps])
            };
            // Timesteps are exact except Karras' (log-interpolated through float32 logs).
            let t_tol = if config.use_karras_sigmas { 1e-5 } else { 0.0 };
            assert_close(&euler.timesteps()[..timesteps.len()], timesteps, t_tol, &format!("timesteps, {what}"));
            // torch's `** 0.5` is SLEEF's pow (1 ulp), not a correctly rounded sqrt: 6 of SD's 1000
            // training σs are one ulp apart, and so are σs interpolated next to them.
            assert_close(&euler.sigmas()[..sigmas.len()], sigmas, 2.5e-7, &format!("sigmas, {what}"));
            let init = [case.init_noise_sigma];
            assert_close(&[euler.init_noise_sigma()], &init, 2.5e-7, &format!("init σ, {what}"));
        }
    }

    #[test]
    fn sd15_ten_step_schedules_are_as_diffusers_documents_them() {
        let sd15 = |spacing: &str| -> SchedulerConfig {
            serde_json::from_value(serde_json::json!({
                "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "steps_offset": 1, "timestep_spacing": spacing
            }))
            .unwrap()
        };
        let linspace = EulerDiscrete::new(&sd15("linspace"), 10).unwrap();
        assert_eq!(linspace.timesteps(), [999., 888., 777., 666., 555., 444., 333., 222., 111., 0.]);
        let leading = EulerDiscrete::new(&sd15("leading"), 10).unwrap();
        assert_eq!(leading.timesteps(), [901., 801., 701., 601., 501., 401., 301., 201., 101., 1.]);
        let trailing = EulerDiscrete::new(&sd15("trailing"), 10).unwrap();
        assert_eq!(trailing.timesteps(), [999., 899., 799., 699., 599., 499., 399., 299., 199., 99.]);
        // σ_max of SD's schedule, and leading's √(σ²+1) initial noise scale over its first σ.
        assert!((linspace.init_noise_sigma() - 14.614_647).abs() < 1e-5);
        let s0 = leading.sigmas()[0];
        assert!((leading.init_noise_sigma() - (s0 * s0 + 1.0).sqrt()).abs() < 1e-6);
        for euler in [&linspace, &leading, &trailing] {
            assert_eq!(euler.sigmas().len(), 11);
            assert_eq!(euler.sigmas()[10], 0.0);
            assert!(euler.sigmas().windows(2).all(|w| w[0] > w[1]));
        }
    }

    #[test]
    fn linspace_with_seven_steps_has_fractional_timesteps() {
        let config: SchedulerConfig = serde_json::from_value(serde_json::json!({"beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "beta_end": 0.012}))
        .unwrap();
        let euler = EulerDiscrete::new(&config, 7).unwrap();
        assert_eq!(euler.timesteps(), [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]);
    }

    #[test]
    fn euler_steps_match_diffusers_bit_for_bit_for_each_prediction_type() {
        for case in golden().trajectories {
            let config: SchedulerConfig = serde_json::from_value(case.config.clone()).unwrap();
            let mut euler = EulerDiscrete::new(&config, case.steps_count).unwrap();
            let mut x = case.start.clone();
            for (i, step) in case.steps.iter().enumerate() {
                let mut scaled = vec![0.0; x.len()];
                euler.scale_model_input(i, &x, &mut scaled);
                assert_close(&scaled, &step.scaled, 0.0, &format!("scaled input {i}, {}", case.config));
                euler.step(i, &step.model_output, &mut x);
                assert_close(&x, &step.prev, 0.0, &format!("step {i}, {}", case.config));
                // Continue from diffusers' own latents so errors cannot compound.
                x.clone_from(&step.prev);
            }
        }
    }

    #[test]
    fn zero_or_too_many_steps_are_refused() {
        let config = SchedulerConfig::default();
        assert!(build_sampler(SamplerKind::Euler, &config, 0).unwrap_err().contains("steps"));
        assert!(build_sampler(SamplerKind::Euler, &config, 1001).unwrap_err().contains("1000"));
        assert_eq!(build_sampler(SamplerKind::Euler, &config, 1000).unwrap().timesteps().len(), 1000);
    }

    #[test]
    fn sampler_names_round_trip() {
        for kind in SamplerKind::ALL {
            assert_eq!(SamplerKind::from_api_name(kind.api_name()), Some(kind));
        }
        assert_eq!(SamplerKind::from_api_name("K_NOPE"), None);
    }
}
