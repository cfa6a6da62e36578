//! Stability v1 `style_preset`s as prompt templates, from `data/style_presets.json`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Template {
    prompt: String,
    negative: String,
}

static PRESETS: LazyLock<BTreeMap<String, Template>> = LazyLock::new(|| {
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(include_str!("../data/style_presets.json")).unwrap_or_default();
    raw.into_iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .filter_map(|(name, value)| serde_json::from_value(value).ok().map(|template| (name, template)))
        .collect()
});

/// The preset names, sorted.
pub fn names() -> Vec<&'static str> {
    PRESETS.keys().map(String::as_str).collect()
}

/// A preset name this build does not know; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown style preset {0:?}; valid presets are {list}", list = names().join(", "))]
pub struct UnknownPreset(pub String);

/// `(prompt, negative prompt)` after applying the preset `name`: the prompt is put into the
/// preset's template and the preset's negative text is appended to the caller's.
pub fn apply(name: &str, prompt: &str, negative: &str) -> Result<(String, String), UnknownPreset> {
    let template = PRESETS.get(name).ok_or_else(|| UnknownPreset(name.to_owned()))?;
    let styled = template.prompt.replace("{prompt}", prompt.trim());
    let negative = match negative.trim() {
        "" => template.negative.clone(),
        own => format!("{own}, {}", template.negative),
    };
    Ok((styled, negative))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The `style_preset` enum of the Stability v1 text-to-image seed.
    const STABILITY_PRESETS: [&str; 17] = [
        "3d-model",
        "analog-film",
        "anime",
        "cinematic",
        "comic-book",
        "digital-art",
        "enhance",
        "fantasy-art",
        "isometric",
        "line-art",
        "low-poly",
        "modeling-compound",
        "neon-punk",
        "origami",
        "photographic",
        "pixel-art",
        "tile-texture",
    ];

    #[test]
    fn every_stability_preset_exists_and_places_the_prompt() {
        assert_eq!(names(), STABILITY_PRESETS);
        for name in STABILITY_PRESETS {
            let (prompt, negative) = apply(name, " a red fox ", "").unwrap();
            assert!(prompt.contains("a red fox") && prompt != "a red fox", "{name}: {prompt}");
            assert!(!negative.is_empty(), "{name}");
        }
    }

    #[test]
    fn the_callers_negative_prompt_is_kept_before_the_presets() {
        let (_, negative) = apply("anime", "x", "blurry").unwrap();
        assert!(negative.starts_with("blurry, "), "{negative}");
    }

    #[test]
    fn an_unknown_preset_lists_the_valid_ones() {
        let err = apply("watercolour", "x", "").unwrap_err().to_string();
        assert!(err.contains("watercolour") && err.contains("pixel-art"), "{err}");
    }
}
