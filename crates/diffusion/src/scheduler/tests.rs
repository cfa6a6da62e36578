//! Golden numbers from diffusers 0.42.1 itself (`testdata/euler_golden.py`).

use super::euler::EulerDiscrete;
use super::noise::SeededNoise;
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
        let config = SchedulerConfig::euler(case.config.clone());
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
    let config = SchedulerConfig::euler(serde_json::json!({"beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012}));
    let euler = EulerDiscrete::new(&config, 7).unwrap();
    assert_eq!(euler.timesteps(), [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]);
}

#[test]
fn euler_steps_match_diffusers_bit_for_bit_for_each_prediction_type() {
    for case in golden().trajectories {
        let config = SchedulerConfig::euler(case.config.clone());
        let mut euler = EulerDiscrete::new(&config, case.steps_count).unwrap();
        let mut x = case.start.clone();
        for (i, step) in case.steps.iter().enumerate() {
            let mut scaled = vec![0.0; x.len()];
            euler.scale_model_input(i, &x, &mut scaled);
            assert_close(&scaled, &step.scaled, 0.0, &format!("scaled input {i}, {}", case.config));
            euler.step(i, &step.model_output, &mut x, &mut SeededNoise::new(&[0]));
            assert_close(&x, &step.prev, 0.0, &format!("step {i}, {}", case.config));
            // Continue from diffusers' own latents so errors cannot compound.
            x.clone_from(&step.prev);
        }
    }
}

#[test]
fn zero_or_too_many_steps_are_refused() {
    let file = SchedulerFile::new(serde_json::Map::new());
    for kind in SamplerKind::ALL {
        let choice = SamplerChoice { kind, karras: None };
        let err = build_sampler(choice, &file, 0).unwrap_err();
        assert!(err.contains("steps"), "{kind}: {err}");
        let err = build_sampler(choice, &file, 1001).unwrap_err();
        assert!(err.contains("1000"), "{kind}: {err}");
    }
    let euler = SamplerChoice { kind: SamplerKind::Euler, karras: None };
    assert_eq!(build_sampler(euler, &file, 1000).unwrap().timesteps().len(), 1000);
}

#[test]
fn sampler_names_round_trip_and_unknown_names_list_the_valid_ones() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.api_name().parse::<SamplerKind>().unwrap(), kind);
    }
    assert_eq!("k_euler".parse::<SamplerKind>().unwrap(), SamplerKind::Euler);
    let err = "K_NOPE".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("K_NOPE") && err.contains("K_DPMPP_2S_ANCESTRAL") && err.contains("DDIM"), "{err}");
}

#[test]
fn karras_is_refused_by_the_samplers_that_have_no_karras_schedule() {
    let file = SchedulerFile::new(serde_json::Map::new());
    let err = build_sampler(SamplerChoice { kind: SamplerKind::Ddim, karras: Some(true) }, &file, 10).unwrap_err();
    assert!(err.contains("Karras"), "{err}");
    assert!(build_sampler(SamplerChoice { kind: SamplerKind::Ddim, karras: Some(false) }, &file, 10).is_ok());
    assert!(build_sampler(SamplerChoice { kind: SamplerKind::Lms, karras: Some(true) }, &file, 10).is_ok());
}

#[derive(serde::Deserialize)]
struct SamplersGolden {
    cases: Vec<SamplerCase>,
}

#[derive(serde::Deserialize)]
struct SamplerCase {
    sampler: String,
    config: serde_json::Map<String, serde_json::Value>,
    steps: usize,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    start: Vec<f32>,
    evaluations: Vec<GoldenEvaluation>,
}

#[derive(serde::Deserialize)]
struct GoldenEvaluation {
    scaled: Vec<f32>,
    model_output: Vec<f32>,
    noise: Vec<Vec<f32>>,
    prev: Vec<f32>,
}

/// The largest difference relative to max(|a|, |b|, 1), and where.
fn worst(ours: &[f32], theirs: &[f32]) -> (f32, usize) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1.0))
        .enumerate()
        .fold((0.0, 0), |(w, wi), (i, d)| if d > w || d.is_nan() { (d, i) } else { (w, wi) })
}

/// Every sampler, config and step count of `testdata/samplers_golden.json` (made by diffusers
/// 0.42.1 and k-diffusion's algorithm): same timesteps, same initial σ, and step by step the same
/// model input and the same latents given the same model outputs and noise draws.
#[test]
fn every_sampler_matches_diffusers_step_by_step() {
    let golden: SamplersGolden = serde_json::from_str(include_str!("testdata/samplers_golden.json")).unwrap();
    assert!(golden.cases.len() > 150);
    let mut failures = Vec::new();
    for case in &golden.cases {
        let kind: SamplerKind = case.sampler.parse().unwrap();
        let what = format!("{} × {} steps, {:?}", case.sampler, case.steps, case.config);
        let file = SchedulerFile::new(case.config.clone());
        let mut sampler = match build_sampler(SamplerChoice { kind, karras: None }, &file, case.steps) {
            Ok(sampler) => sampler,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        if sampler.timesteps().len() != case.timesteps.len() {
            failures.push(format!("{what}: timesteps {:?} vs diffusers {:?}", sampler.timesteps(), case.timesteps));
            continue;
        }
        // diffusers interpolates some midpoint timesteps through float32 logs (`_sigma_to_t` on
        // torch tensors): near t = 0 that leaves ~6e-5 where float64 gives 0.
        let (d, i) = worst(sampler.timesteps(), &case.timesteps);
        if d > 1e-4 {
            failures.push(format!("{what}: timestep {i}: {:?} vs {:?}", sampler.timesteps(), case.timesteps));
        }
        let (d, _) = worst(&[sampler.init_noise_sigma()], &[case.init_noise_sigma]);
        if d > 1e-6 {
            failures.push(format!("{what}: init σ {} vs {}", sampler.init_noise_sigma(), case.init_noise_sigma));
        }
        let mut x = case.start.clone();
        for (index, e) in case.evaluations.iter().enumerate() {
            let mut scaled = vec![0.0; x.len()];
            sampler.scale_model_input(index, &x, &mut scaled);
            let (d, i) = worst(&scaled, &e.scaled);
            if d > 1e-5 {
                failures.push(format!("{what}: eval {index} input[{i}] {} vs {} ({d})", scaled[i], e.scaled[i]));
            }
            let mut noise = noise::ReplayNoise::new(e.noise.clone());
            sampler.step(index, &e.model_output, &mut x, &mut noise);
            if let Some(problem) = noise.problem() {
                failures.push(format!("{what}: eval {index}: {problem}"));
            }
            let (d, i) = worst(&x, &e.prev);
            if d > 1e-5 {
                failures.push(format!("{what}: eval {index} latents[{i}] {} vs {} ({d})", x[i], e.prev[i]));
            }
            x.clone_from(&e.prev);
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
