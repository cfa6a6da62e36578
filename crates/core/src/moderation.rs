//! Image moderation: every generated image passes a [`Moderator`] before it is stored or seen
//! (DESIGN.md §6). A flagged image rejects its whole task: nothing is stored, nothing is charged,
//! and each dialect answers with its own moderation error. The scores of every image are kept on
//! the task, so a rejection can be explained.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::generator::GeneratedImage;

/// What a moderator found in one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageVerdict {
    /// The policy flags the image: its task is rejected.
    pub flagged: bool,
    /// The highest score per class the model reports (e.g. `FEMALE_BREAST_EXPOSED`).
    #[serde(default)]
    pub scores: BTreeMap<String, f32>,
    /// The classes over their thresholds, in words (empty when not flagged).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// What the detector found and where, as the detector itself reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detections: Vec<Detection>,
}

/// One object a detector found: its class, confidence and box (`[x, y, width, height]` in the
/// image's pixels, from its top-left corner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [i32; 4],
}

/// Which classes of a detector flag an image, each from its own score (DESIGN.md §6).
///
/// A class flags an image when its highest score anywhere in the image reaches the class's
/// threshold, whether or not it was the strongest class at that spot: stricter than counting the
/// detector's final detections only, which keep one class per box.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassThresholds(BTreeMap<String, f32>);

impl ClassThresholds {
    /// NudeNet's sexual `*_EXPOSED` classes. Covered classes, faces, feet, bellies, armpits and
    /// male breasts never flag an image.
    pub fn nudenet_default() -> Self {
        ClassThresholds(
            [
                ("ANUS_EXPOSED", 0.35),
                ("BUTTOCKS_EXPOSED", 0.45),
                ("FEMALE_BREAST_EXPOSED", 0.45),
                ("FEMALE_GENITALIA_EXPOSED", 0.35),
                ("MALE_GENITALIA_EXPOSED", 0.35),
            ]
            .into_iter()
            .map(|(class, t)| (class.to_owned(), t))
            .collect(),
        )
    }

    /// `CLASS=SCORE,CLASS=SCORE…` (the whole policy: classes not named never flag). Scores are in
    /// (0, 1].
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (class, score) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not CLASS=SCORE (e.g. FEMALE_BREAST_EXPOSED=0.45)"))?;
            let score: f32 = score.trim().parse().map_err(|_| format!("{part:?}: {score:?} is not a number"))?;
            if !(score > 0.0 && score <= 1.0) {
                return Err(format!("{part:?}: a threshold must be in (0, 1]"));
            }
            map.insert(class.trim().to_owned(), score);
        }
        if map.is_empty() {
            return Err("no class is named: the policy would flag nothing".to_owned());
        }
        Ok(ClassThresholds(map))
    }

    pub fn classes(&self) -> impl Iterator<Item = (&str, f32)> {
        self.0.iter().map(|(c, &t)| (c.as_str(), t))
    }

    /// The verdict on an image whose highest score per class is `scores`.
    pub fn judge(&self, scores: BTreeMap<String, f32>, detections: Vec<Detection>) -> ImageVerdict {
        let reasons: Vec<String> = self
            .0
            .iter()
            .filter_map(|(class, &threshold)| {
                let score = *scores.get(class)?;
                (score >= threshold).then(|| format!("{class} {score:.2} ≥ {threshold}"))
            })
            .collect();
        ImageVerdict { flagged: !reasons.is_empty(), scores, reasons, detections }
    }
}

impl std::fmt::Display for ClassThresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(c, t)| format!("{c}={t}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// A moderator's verdict on one image of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageModeration {
    pub index: u32,
    #[serde(flatten)]
    pub verdict: ImageVerdict,
}

/// What moderation found in a task's images, recorded on the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModerationRecord {
    /// The moderator that judged them (`none` when image moderation is not configured).
    pub model: String,
    pub images: Vec<ImageModeration>,
}

impl ModerationRecord {
    pub fn flagged(&self) -> bool {
        self.images.iter().any(|i| i.verdict.flagged)
    }
}

/// The moderator could not judge an image. The task fails: an image that was not judged is never
/// stored or returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image moderation failed: {0}")]
pub struct ModerationError(pub String);

/// Judges images. Implementations are CPU-bound and synchronous; the worker calls them off the
/// async threads.
pub trait Moderator: Send + Sync + std::fmt::Debug {
    /// The model's id, recorded on every task it judged.
    fn model_id(&self) -> &str;
    fn moderate(&self, image: &GeneratedImage) -> Result<ImageVerdict, ModerationError>;
}

/// No image moderation: every image passes, and tasks record `model: "none"`. For servers whose
/// operator has not installed a moderation model yet; the worker logs a warning at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unmoderated;

impl Moderator for Unmoderated {
    fn model_id(&self) -> &str {
        "none"
    }

    fn moderate(&self, _image: &GeneratedImage) -> Result<ImageVerdict, ModerationError> {
        Ok(ImageVerdict { flagged: false, scores: BTreeMap::new(), reasons: Vec::new(), detections: Vec::new() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scores(pairs: &[(&str, f32)]) -> BTreeMap<String, f32> {
        pairs.iter().map(|&(c, s)| (c.to_owned(), s)).collect()
    }

    #[test]
    fn only_the_sexual_exposed_classes_flag_an_image_by_default() {
        let policy = ClassThresholds::nudenet_default();
        let benign = scores(&[("FACE_FEMALE", 0.99), ("FEET_EXPOSED", 0.9), ("FEMALE_BREAST_COVERED", 0.9)]);
        assert!(!policy.judge(benign, vec![]).flagged);
        let verdict = policy.judge(scores(&[("FEMALE_BREAST_EXPOSED", 0.6), ("FACE_FEMALE", 0.9)]), vec![]);
        assert!(verdict.flagged);
        assert_eq!(verdict.reasons, vec!["FEMALE_BREAST_EXPOSED 0.60 ≥ 0.45".to_owned()]);
    }

    #[test]
    fn a_score_just_under_its_threshold_does_not_flag() {
        let policy = ClassThresholds::parse("BUTTOCKS_EXPOSED=0.5").unwrap();
        assert!(!policy.judge(scores(&[("BUTTOCKS_EXPOSED", 0.4999)]), vec![]).flagged);
        assert!(policy.judge(scores(&[("BUTTOCKS_EXPOSED", 0.5)]), vec![]).flagged);
    }

    #[test]
    fn thresholds_parse_from_configuration_and_print_back() {
        let policy = ClassThresholds::parse(" FACE_MALE=0.1 , ANUS_EXPOSED=0.3").unwrap();
        assert_eq!(policy.to_string(), "ANUS_EXPOSED=0.3,FACE_MALE=0.1");
        assert_eq!(
            ClassThresholds::parse(&ClassThresholds::nudenet_default().to_string()).unwrap(),
            ClassThresholds::nudenet_default()
        );
        for bad in ["", "FACE_MALE", "FACE_MALE=high", "FACE_MALE=0", "FACE_MALE=1.5"] {
            assert!(ClassThresholds::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
