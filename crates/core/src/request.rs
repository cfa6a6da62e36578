//! The dialect-neutral generation request every dialect parses into.

use serde::{Deserialize, Serialize};

/// Which request dialect created a task; it decides the shape of status bodies and callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    Hive,
    Openai,
    Stability,
}

/// A validated request. Optional knobs left `None` take the model's defaults in the worker,
/// because only the worker knows the model (the API function never loads it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    #[serde(default)]
    pub steps: Option<u32>,
    #[serde(default)]
    pub guidance: Option<f32>,
    /// `None` = the model's default sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<crate::generator::SamplerKind>,
    /// One seed per image, resolved at submission so that a redelivered job redraws the same images.
    pub seeds: Vec<u64>,
    /// A Stability `style_preset` name (checked against [`crate::presets::names`] at submission);
    /// the worker puts the prompts into its template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_preset: Option<String>,
    /// `High` runs more denoising steps than the model's default (OpenAI's `quality: hd`).
    #[serde(default, skip_serializing_if = "Quality::is_standard")]
    pub quality: Quality,
    /// The model the caller asked for (the installed model's id, aliases already resolved), as
    /// recorded; the task's run record says which model actually ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// img2img: the caller's image, stored by the API before the task is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImageRef>,
}

/// Where a task's input image is stored, and how much of it to replace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImageRef {
    /// Object key in the image store, `inputs/{task_id}/init.png`.
    pub key: String,
    /// In (0, 1], as diffusers defines img2img's `strength`: 1 ignores the image's content.
    pub strength: f32,
}

impl InitImageRef {
    /// The image-store key of a task's input image.
    pub fn key_for(task_id: crate::task::TaskId) -> String {
        format!("inputs/{task_id}/init.png")
    }
}

/// How much work to spend on an image when the caller gives no step count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    #[default]
    Standard,
    /// One and a half times the model's default steps (within its maximum).
    High,
}

impl Quality {
    pub fn is_standard(&self) -> bool {
        *self == Quality::Standard
    }

    /// The step count for a request that names none, given the model's default and maximum.
    pub fn steps(self, default_steps: u32, max_steps: u32) -> u32 {
        match self {
            Quality::Standard => default_steps,
            Quality::High => (default_steps.saturating_mul(3) / 2).clamp(default_steps.min(max_steps), max_steps),
        }
    }
}

impl GenerationRequest {
    /// A text-to-image request with the model's defaults for every optional knob.
    pub fn new(prompt: impl Into<String>, width: u32, height: u32, seeds: Vec<u64>) -> Self {
        GenerationRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            width,
            height,
            steps: None,
            guidance: None,
            sampler: None,
            seeds,
            style_preset: None,
            quality: Quality::Standard,
            model: None,
            init_image: None,
        }
    }

    pub fn num_images(&self) -> u32 {
        u32::try_from(self.seeds.len()).unwrap_or(u32::MAX)
    }
}

/// Seeds for `n` images: `base, base+1, …` when the caller gave a base seed (0 means "pick one"),
/// otherwise independent random seeds. Seeds are kept below 2^53 so JSON clients read them exactly.
pub fn resolve_seeds(base: Option<u64>, n: u32) -> Vec<u64> {
    const JSON_SAFE: u64 = (1 << 53) - 1;
    match base {
        Some(seed) if seed != 0 => (0..u64::from(n)).map(|i| seed.wrapping_add(i) & JSON_SAFE).collect(),
        _ => (0..n).map(|_| rand::random_range(1..=JSON_SAFE)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_quality_runs_half_as_many_steps_again_within_the_maximum() {
        assert_eq!(Quality::Standard.steps(30, 50), 30);
        assert_eq!(Quality::High.steps(30, 50), 45);
        assert_eq!(Quality::High.steps(40, 50), 50);
        assert_eq!(Quality::High.steps(1, 4), 1);
    }

    #[test]
    fn a_base_seed_gives_consecutive_seeds() {
        assert_eq!(resolve_seeds(Some(42), 3), vec![42, 43, 44]);
    }

    #[test]
    fn seed_zero_or_none_picks_distinct_random_nonzero_seeds() {
        for base in [None, Some(0)] {
            let seeds = resolve_seeds(base, 6);
            assert_eq!(seeds.len(), 6);
            assert!(seeds.iter().all(|&s| s != 0 && s < (1 << 53)));
            let mut unique = seeds.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 6, "{seeds:?}");
        }
    }
}
