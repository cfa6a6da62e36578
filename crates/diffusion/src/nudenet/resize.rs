//! NudeNet's input image, made exactly as its Python package makes it: pad right and bottom with
//! black to a square, then `cv2.dnn.blobFromImage(…, (side, side))`, whose resize is OpenCV's
//! 8-bit `INTER_LINEAR`.
//!
//! Written by hand because no crate reproduces OpenCV's fixed-point arithmetic, and the detector's
//! scores depend on it (a plain float bilinear resize differs by one level on ~10 % of the
//! values). What OpenCV 5.1 (`opencv-python-headless`) does, checked bit for bit against
//! `cv2.resize` on photographs and random images from 1×1 to 2048×2048
//! (`infra/moderation/make_parity.py` records digests of its output):
//! - coefficients: `f = (float)((d + 0.5) · src/dst − 0.5)`, `s = floor(f)`, weights
//!   `round_half_even((1 − f) · 2048)` and `round_half_even(f · 2048)`; columns are clamped to
//!   the image (weight 1 on the edge), rows keep their weights and read clamped row indices;
//! - a horizontal pass into `i32` (`a·p₀ + b·p₁`), then the vertical pass of OpenCV's SIMD kernel
//!   (`VResizeLinearVec_32s8u`): `((((r₀ >> 4) · b₀) >> 16) + (((r₁ >> 4) · b₁) >> 16) + 2) >> 2`,
//!   which is not the same rounding as its scalar fallback;
//! - an exact 2× reduction is OpenCV's `INTER_AREA` instead: `(a + b + c + d + 2) >> 2`;
//! - the same size is copied.

/// One output position: the two source indices and their fixed-point weights (sum 2048).
#[derive(Debug, Clone, Copy)]
struct Tap {
    first: usize,
    second: usize,
    w_first: i32,
    w_second: i32,
}

const COEF_SCALE: f32 = 2048.0;

/// The taps of a `src` → `dst` linear resize along one axis. `clamp_weights`: OpenCV clamps the
/// position itself along x (weight 1 on the edge pixel) but only the indices along y.
fn taps(src: usize, dst: usize, clamp_weights: bool) -> Vec<Tap> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if clamp_weights {
                if s < 0 {
                    (s, frac) = (0, 0.0);
                }
                if s >= last {
                    (s, frac) = (last, 0.0);
                }
            }
            Tap {
                first: s.clamp(0, last) as usize,
                second: (s + 1).clamp(0, last) as usize,
                w_first: ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32,
                w_second: (frac * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

/// The `rgb` image (`width`×`height`, 3 bytes a pixel) padded right and bottom with black to a
/// square and resized to `side`×`side`, as interleaved RGB bytes.
pub fn pad_and_resize(rgb: &[u8], width: usize, height: usize, side: usize) -> Vec<u8> {
    let square = width.max(height);
    let pixel = |x: usize, y: usize, c: usize| -> i32 {
        if x < width && y < height { i32::from(rgb[(y * width + x) * 3 + c]) } else { 0 }
    };
    let mut out = vec![0u8; side * side * 3];
    if square == side {
        for y in 0..side {
            for x in 0..side {
                for c in 0..3 {
                    out[(y * side + x) * 3 + c] = pixel(x, y, c) as u8;
                }
            }
        }
        return out;
    }
    if square == 2 * side {
        for y in 0..side {
            for x in 0..side {
                for c in 0..3 {
                    let sum = pixel(2 * x, 2 * y, c)
                        + pixel(2 * x + 1, 2 * y, c)
                        + pixel(2 * x, 2 * y + 1, c)
                        + pixel(2 * x + 1, 2 * y + 1, c);
                    out[(y * side + x) * 3 + c] = ((sum + 2) >> 2) as u8;
                }
            }
        }
        return out;
    }
    let columns = taps(square, side, true);
    let rows = taps(square, side, false);
    // The horizontal pass of each source row that some output row reads, computed once.
    let mut horizontal: Vec<Option<Vec<i32>>> = vec![None; square];
    let row_pass = |y: usize| -> Vec<i32> {
        let mut line = Vec::with_capacity(side * 3);
        for tap in &columns {
            for c in 0..3 {
                line.push(pixel(tap.first, y, c) * tap.w_first + pixel(tap.second, y, c) * tap.w_second);
            }
        }
        line
    };
    for tap in &rows {
        for y in [tap.first, tap.second] {
            if horizontal[y].is_none() {
                horizontal[y] = Some(row_pass(y));
            }
        }
    }
    for (dy, tap) in rows.iter().enumerate() {
        let (Some(top), Some(bottom)) = (&horizontal[tap.first], &horizontal[tap.second]) else {
            unreachable!("both rows were computed above")
        };
        let target = &mut out[dy * side * 3..(dy + 1) * side * 3];
        for ((value, &r0), &r1) in target.iter_mut().zip(top).zip(bottom) {
            let mixed = (((r0 >> 4) * tap.w_first) >> 16) + (((r1 >> 4) * tap.w_second) >> 16);
            *value = ((mixed + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_the_target_size_is_copied_and_padding_is_black() {
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|i| i as u8 + 1).collect();
        let out = pad_and_resize(&rgb, 4, 2, 4);
        assert_eq!(&out[..24], &rgb[..]);
        assert!(out[24..].iter().all(|&v| v == 0), "the two padded rows are black");
    }

    #[test]
    fn a_flat_image_stays_flat_at_any_scale() {
        for side in [1usize, 7, 64, 333, 640, 1024] {
            let rgb = vec![200u8; side * side * 3];
            let out = pad_and_resize(&rgb, side, side, 320);
            assert!(out.iter().all(|&v| v == 200), "{side}x{side}: min {:?}", out.iter().min());
        }
    }

    #[test]
    fn an_exact_halving_averages_two_by_two_blocks_rounding_half_up() {
        let mut rgb = vec![0u8; 640 * 640 * 3];
        for (i, v) in [1u8, 2, 2, 2].into_iter().enumerate() {
            let (x, y) = (i % 2, i / 2);
            rgb[(y * 640 + x) * 3] = v;
        }
        // (1 + 2 + 2 + 2 + 2) >> 2 = 2
        assert_eq!(pad_and_resize(&rgb, 640, 640, 320)[0], 2);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (src, dst) in [(512, 320), (451, 320), (64, 320), (1024, 320)] {
            for tap in taps(src, dst, true).into_iter().chain(taps(src, dst, false)) {
                assert_eq!(tap.w_first + tap.w_second, 2048, "{src}->{dst}: {tap:?}");
                assert!(tap.first < src && tap.second < src);
            }
        }
    }
}
