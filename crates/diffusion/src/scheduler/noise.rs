//! The Gaussian draws stochastic samplers add between steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Source of the standard normal noise a stochastic sampler adds during denoising.
pub trait StepNoise: Send + std::fmt::Debug {
    /// Fills `out` (flat `[images, channels, h, w]` for the images being denoised together) with
    /// unit-variance Gaussian noise.
    fn fill(&mut self, out: &mut [f32]);
}

/// Each image's noise from its own seed, on a ChaCha8 stream separate from the one its initial
/// latents come from: an image with seed s gets the same draws alone or in a batch.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rngs: Vec<ChaCha8Rng>,
}

impl SeededNoise {
    /// The stream used for sampler noise (stream 0 gives the initial latents).
    const STREAM: u64 = 1;

    pub fn new(seeds: &[u64]) -> Self {
        let rngs = seeds
            .iter()
            .map(|&seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(Self::STREAM);
                rng
            })
            .collect();
        SeededNoise { rngs }
    }
}

impl StepNoise for SeededNoise {
    fn fill(&mut self, out: &mut [f32]) {
        let per_image = out.len() / self.rngs.len().max(1);
        for (rng, image) in self.rngs.iter_mut().zip(out.chunks_mut(per_image.max(1))) {
            for value in image {
                *value = rng.sample(StandardNormal);
            }
        }
    }
}

/// Recorded draws played back in order (diffusers' draws, to prove parity of the ancestral
/// samplers). Each draw must have the length the sampler asks for.
#[derive(Debug, Clone, Default)]
pub struct ReplayNoise {
    draws: Vec<Vec<f32>>,
    next: usize,
    problem: Option<String>,
}

impl ReplayNoise {
    pub fn new(draws: Vec<Vec<f32>>) -> Self {
        ReplayNoise { draws, next: 0, problem: None }
    }

    /// What went wrong, if the sampler asked for more draws than were given, for draws of
    /// another size, or used fewer than were given. Checked after the run.
    pub fn problem(&self) -> Option<String> {
        if let Some(problem) = &self.problem {
            return Some(problem.clone());
        }
        (self.next < self.draws.len())
            .then(|| format!("{} step-noise draws were given but the sampler used {}", self.draws.len(), self.next))
    }
}

impl StepNoise for ReplayNoise {
    fn fill(&mut self, out: &mut [f32]) {
        match self.draws.get(self.next) {
            Some(draw) if draw.len() == out.len() => out.copy_from_slice(draw),
            Some(draw) => {
                out.fill(0.0);
                self.problem.get_or_insert_with(|| {
                    format!("step-noise draw {} has {} values; the sampler needs {}", self.next, draw.len(), out.len())
                });
            }
            None => {
                out.fill(0.0);
                self.problem.get_or_insert_with(|| {
                    format!("the sampler needs more than the {} step-noise draws given", self.draws.len())
                });
            }
        }
        self.next += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_of_an_image_does_not_depend_on_its_batch() {
        let mut alone = vec![0.0; 8];
        SeededNoise::new(&[7]).fill(&mut alone);
        let mut batch = vec![0.0; 16];
        SeededNoise::new(&[3, 7]).fill(&mut batch);
        assert_eq!(alone, batch[8..]);
        assert_ne!(batch[..8], batch[8..]);
    }

    #[test]
    fn seeded_step_noise_differs_from_the_initial_latents_of_the_same_seed() {
        let mut step = vec![0.0; 8];
        SeededNoise::new(&[7]).fill(&mut step);
        let mut initial = vec![0.0; 8];
        crate::latents::seeded_noise(7, &mut initial);
        assert_ne!(step, initial);
    }

    #[test]
    fn replay_reports_missing_extra_and_misshapen_draws() {
        let mut out = vec![0.0; 2];
        let mut replay = ReplayNoise::new(vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        replay.fill(&mut out);
        assert_eq!(out, [1.0, 2.0]);
        assert!(replay.problem().unwrap().contains("used 1"));
        replay.fill(&mut out);
        assert_eq!(replay.problem(), None);
        replay.fill(&mut out);
        assert!(replay.problem().unwrap().contains("more than the 2"));
        let mut short = ReplayNoise::new(vec![vec![1.0]]);
        short.fill(&mut out);
        assert!(short.problem().unwrap().contains("has 1 values"));
    }
}
