//! Metering: what a task costs the key that created it.
//!
//! A task is charged once, by the task store, in the same conditional write that makes it
//! `succeeded`; failed and canceled tasks cost nothing (the write that ends them charges nothing).
//! The store keeps the charge on the task and adds it to the key's total for that UTC day.
//!
//! Credits follow the basic text-to-image dialect's published range, "0.4–2 credits per successful
//! result", scaled by the work an image takes, pixels × steps:
//!
//! ```text
//! credits per image = 0.4 + 1.6 × clamp((w·h·steps − 320²·10) / (1536²·50 − 320²·10), 0, 1)
//! ```
//!
//! so the dialect's smallest request (320×320, 10 steps) costs 0.4 and its largest (1536×1536, 50
//! steps) costs 2. A 1024×1024 image at 30 steps costs 0.816. Requests outside that range (other
//! dialects) are clamped to it. Credits are kept in thousandths, as integers, so sums are exact.

use serde::{Deserialize, Serialize};
use time::Date;

/// The cheapest image, in thousandths of a credit.
pub const MIN_MILLICREDITS: u64 = 400;
/// The dearest image, in thousandths of a credit.
pub const MAX_MILLICREDITS: u64 = 2_000;
const MIN_WORK: u64 = 320 * 320 * 10;
const MAX_WORK: u64 = 1536 * 1536 * 50;

/// The cost of one image of `width`×`height` pixels denoised in `steps` steps, in thousandths of a
/// credit (rounded to the nearest).
pub fn image_millicredits(width: u32, height: u32, steps: u32) -> u64 {
    let work = (u64::from(width) * u64::from(height)).saturating_mul(u64::from(steps));
    let scaled = work.clamp(MIN_WORK, MAX_WORK) - MIN_WORK;
    let span = MAX_WORK - MIN_WORK;
    let range = MAX_MILLICREDITS - MIN_MILLICREDITS;
    // Integer arithmetic, rounded to the nearest thousandth; u128 keeps the product exact.
    let extra = (u128::from(scaled) * u128::from(range) + u128::from(span) / 2) / u128::from(span);
    MIN_MILLICREDITS + u64::try_from(extra).unwrap_or(range)
}

/// What one task was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub images: u32,
    pub millicredits: u64,
}

impl Usage {
    /// The charge for `images` images of this size and step count.
    pub fn for_images(images: u32, width: u32, height: u32, steps: u32) -> Usage {
        Usage { images, millicredits: u64::from(images) * image_millicredits(width, height, steps) }
    }

    /// Credits as a decimal number (for display; sums are made on `millicredits`).
    pub fn credits(&self) -> f64 {
        millicredits_to_credits(self.millicredits)
    }
}

pub fn millicredits_to_credits(millicredits: u64) -> f64 {
    // Exact for any realistic total (below 2^53 thousandths).
    millicredits as f64 / 1000.0
}

/// `YYYY-MM-DD`, the form days take in stores and in the API: it sorts as the dates do, so a text
/// range (`BETWEEN`) selects a range of days.
pub fn day_text(day: Date) -> String {
    format!("{:04}-{:02}-{:02}", day.year(), u8::from(day.month()), day.day())
}

/// Reads a day written by [`day_text`].
pub fn parse_day(text: &str) -> Option<Date> {
    Date::parse(text, &time::format_description::well_known::Iso8601::DATE).ok()
}

/// A key's usage over one UTC day: the sum of the charges of the tasks that succeeded that day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    pub day: Date,
    pub tasks: u64,
    pub images: u64,
    pub millicredits: u64,
}

impl DailyUsage {
    pub fn credits(&self) -> f64 {
        millicredits_to_credits(self.millicredits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_dialects_extremes_cost_its_published_range() {
        assert_eq!(image_millicredits(320, 320, 10), 400);
        assert_eq!(image_millicredits(1536, 1536, 50), 2_000);
    }

    #[test]
    fn credits_grow_with_pixels_and_with_steps() {
        assert_eq!(image_millicredits(1024, 1024, 30), 816);
        assert!(image_millicredits(1024, 1024, 31) > image_millicredits(1024, 1024, 30));
        assert!(image_millicredits(1088, 1024, 30) > image_millicredits(1024, 1024, 30));
        assert_eq!(image_millicredits(512, 512, 25), 476);
    }

    #[test]
    fn requests_outside_the_range_are_clamped_to_it() {
        assert_eq!(image_millicredits(64, 64, 1), MIN_MILLICREDITS);
        assert_eq!(image_millicredits(2048, 2048, 150), MAX_MILLICREDITS);
        assert_eq!(image_millicredits(u32::MAX, u32::MAX, u32::MAX), MAX_MILLICREDITS);
    }

    #[test]
    fn a_tasks_charge_is_its_images_times_the_price_of_one() {
        let usage = Usage::for_images(3, 1024, 1024, 30);
        assert_eq!(usage, Usage { images: 3, millicredits: 2_448 });
        assert!((usage.credits() - 2.448).abs() < 1e-12);
    }
}
