//! Initial noise in, pixels out: the two ends of the pipeline that touch no graph.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Fills `out` with unit-variance Gaussian noise determined by `seed` alone.
///
/// Each image draws from its own generator, so an image's noise does not depend on its position
/// in a batch: seed s gives the same image alone or among others. The stream is ChaCha8
/// (`rand_chacha` 0.9, `seed_from_u64`) through `rand_distr` 0.5's ziggurat `StandardNormal`,
/// both portable and value-stable within their major versions; a unit test pins the first
/// values, because changing either would silently change every image for every seed. The noise
/// cannot match torch's generator; pass explicit latents to reproduce a diffusers run.
pub(crate) fn seeded_noise(seed: u64, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for value in out {
        *value = rng.sample(StandardNormal);
    }
}

/// The ε of img2img's VAE posterior sample for the image with `seed`, on its own ChaCha8 stream
/// (stream 0 is the initial noise, 1 the sampler's noise).
pub(crate) fn posterior_noise(seed: u64, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    for value in out {
        *value = rng.sample(StandardNormal);
    }
}

/// Converts one decoded image, planar `[3, height, width]` in [−1, 1], to interleaved 8-bit RGB.
///
/// Same float32 operations as diffusers: `clip(x / 2 + 0.5, 0, 1)`, then
/// `(x * 255).round().astype(uint8)`, where numpy rounds half to even.
pub(crate) fn to_rgb8(planar: &[f32], width: usize, height: usize) -> Vec<u8> {
    let plane = width * height;
    let (r, rest) = planar.split_at(plane.min(planar.len()));
    let (g, b) = rest.split_at(plane.min(rest.len()));
    let to_u8 = |x: f32| round_half_even_u8((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0);
    let mut rgb = vec![0u8; plane * 3];
    for (((pixel, &r), &g), &b) in rgb.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
        pixel[0] = to_u8(r);
        pixel[1] = to_u8(g);
        pixel[2] = to_u8(b);
    }
    rgb
}

/// Converts one decoded image, planar `[3, height, width]` in [−1, 1], to `[height, width, 3]`
/// in [0, 1]: diffusers' `clip(x / 2 + 0.5, 0, 1)` and NHWC transpose, before quantization.
pub(crate) fn to_unit_hwc(planar: &[f32], width: usize, height: usize) -> ndarray::Array3<f32> {
    let plane = width * height;
    ndarray::Array3::from_shape_fn((height, width, 3), |(y, x, c)| {
        planar.get(c * plane + y * width + x).map_or(0.0, |&v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
    })
}

/// `x.round_ties_even() as u8` for x in [0, 255] (NaN → 0), without the libm call that
/// `round_ties_even` becomes on baseline x86-64: adding and subtracting 2²³ leaves no fraction
/// bits, so the FPU's default round-to-nearest-even does the rounding.
fn round_half_even_u8(x: f32) -> u8 {
    const SHIFT: f32 = 8_388_608.0; // 2²³
    ((x + SHIFT) - SHIFT) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_pinned_to_its_generator() {
        let mut a = [0.0f32; 4096];
        seeded_noise(42, &mut a);
        // Pinned values: if this fails, a dependency changed its stream and every image changed.
        assert_eq!(&a[..4], &PINNED_SEED_42);
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.08, "mean {mean}, variance {var}");

        let mut b = [0.0f32; 4096];
        seeded_noise(43, &mut b);
        assert_ne!(a, b);
    }

    const PINNED_SEED_42: [f32; 4] = [0.477_981_24, 1.334_070_6, -0.210_866_69, 0.476_346_9];

    #[test]
    fn the_fast_rounding_rounds_half_to_even_like_numpy() {
        for i in 0..=255 * 8 {
            let x = i as f32 / 8.0; // every eighth, so every .5 tie is included
            assert_eq!(round_half_even_u8(x), x.round_ties_even() as u8, "{x}");
        }
        assert_eq!(round_half_even_u8(2.5), 2);
        assert_eq!(round_half_even_u8(3.5), 4);
        assert_eq!(round_half_even_u8(f32::NAN), 0);
    }

    #[test]
    fn pixels_are_clipped_scaled_and_interleaved() {
        // Planar [3, 1, 2]: R = (0, −1), G = (1, 7), B = (−3, NaN).
        let planar = [0.0, -1.0, 1.0, 7.0, -3.0, f32::NAN];
        assert_eq!(to_rgb8(&planar, 2, 1), [128, 255, 0, 0, 255, 0]);
    }
}
