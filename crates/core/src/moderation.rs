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
        Ok(ImageVerdict { flagged: false, scores: BTreeMap::new(), reasons: Vec::new() })
    }
}
