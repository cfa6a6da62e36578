//! The models callers may name: each installed model's id, the image sizes it offers, and the
//! aliases it answers to (so that clients sending OpenAI's default names, `dall-e-2`, `dall-e-3`,
//! `gpt-image-1`, work unchanged).
//!
//! The API never loads a model: locally the catalog is built from the loaded model's descriptor,
//! on AWS from the function's configuration (`EASEL_MODEL_ID`, `EASEL_MODEL_SIZES`,
//! `EASEL_MODEL_ALIASES`).

use std::fmt;

use easel_core::generator::ModelDescriptor;

/// OpenAI's image sizes (DALL·E 2 and 3); a model offers those it can make.
pub const OPENAI_SIZES: [Size; 5] = [
    Size { width: 256, height: 256 },
    Size { width: 512, height: 512 },
    Size { width: 1024, height: 1024 },
    Size { width: 1792, height: 1024 },
    Size { width: 1024, height: 1792 },
];

/// The aliases every model answers to unless configured otherwise.
pub const DEFAULT_ALIASES: [&str; 3] = ["dall-e-2", "dall-e-3", "gpt-image-1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl std::str::FromStr for Size {
    type Err = String;

    /// `WIDTHxHEIGHT`, e.g. `1024x1024`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("{s:?} is not a size of the form WIDTHxHEIGHT, e.g. 1024x1024");
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
        let width = w.parse::<u32>().map_err(|_| err())?;
        let height = h.parse::<u32>().map_err(|_| err())?;
        if width == 0 || height == 0 {
            return Err(err());
        }
        Ok(Size { width, height })
    }
}

/// One installed model as the API presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    /// The sizes callers may ask for, in the order listed; never empty.
    pub sizes: Vec<Size>,
    /// Other names that select this model.
    pub aliases: Vec<String>,
}

impl ModelEntry {
    /// `1024x1024` when offered, else the first size.
    pub fn default_size(&self) -> Size {
        let square = Size { width: 1024, height: 1024 };
        if self.sizes.contains(&square) { square } else { self.sizes[0] }
    }

    pub fn size_list(&self) -> String {
        self.sizes.iter().map(Size::to_string).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCatalog {
    models: Vec<ModelEntry>,
}

impl ModelCatalog {
    /// A catalog of the given models. Fails when one has no size, or a name is used twice.
    pub fn new(models: Vec<ModelEntry>) -> Result<Self, String> {
        let mut names = std::collections::BTreeSet::new();
        for model in &models {
            if model.sizes.is_empty() {
                return Err(format!("model {:?} offers no image size", model.id));
            }
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                if !names.insert(name.clone()) {
                    return Err(format!("model name {name:?} is used twice"));
                }
            }
        }
        if models.is_empty() {
            return Err("no model is configured".into());
        }
        Ok(ModelCatalog { models })
    }

    /// The catalog of one loaded model: OpenAI's sizes that it can make (sides multiples of its
    /// latent cell, within its largest side) plus its native size, answering to the default aliases.
    pub fn for_descriptor(model: &ModelDescriptor) -> Self {
        let fits = |s: &Size| {
            s.width.is_multiple_of(model.size_multiple.max(1))
                && s.height.is_multiple_of(model.size_multiple.max(1))
                && s.width.max(s.height) <= model.max_side
        };
        let mut sizes: Vec<Size> = OPENAI_SIZES.into_iter().filter(fits).collect();
        let native = Size { width: model.native_width, height: model.native_height };
        if !sizes.contains(&native) {
            sizes.push(native);
        }
        let entry = ModelEntry {
            id: model.id.clone(),
            sizes,
            aliases: DEFAULT_ALIASES.iter().map(|a| (*a).to_owned()).filter(|a| *a != model.id).collect(),
        };
        ModelCatalog { models: vec![entry] }
    }

    /// The catalog of a server that runs no model (it only queues tasks): OpenAI's square sizes
    /// under the default aliases of a model called `unloaded`.
    pub fn unloaded() -> Self {
        let entry = ModelEntry {
            id: "unloaded".into(),
            sizes: OPENAI_SIZES[..3].to_vec(),
            aliases: DEFAULT_ALIASES.iter().map(|a| (*a).to_owned()).collect(),
        };
        ModelCatalog { models: vec![entry] }
    }

    /// A one-model catalog from configuration text: sizes as `256x256,512x512`, aliases as
    /// `dall-e-2,dall-e-3`. Errors name the setting's value that is wrong.
    pub fn from_settings(id: &str, sizes: &str, aliases: &str) -> Result<Self, String> {
        let sizes =
            sizes.split(',').filter(|s| !s.trim().is_empty()).map(str::parse::<Size>).collect::<Result<Vec<_>, _>>()?;
        let aliases = aliases.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
        ModelCatalog::new(vec![ModelEntry { id: id.trim().to_owned(), sizes, aliases }])
    }

    /// The model called `name` (its id or an alias), if any.
    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == name || m.aliases.iter().any(|a| a == name))
    }

    /// The model used when a request names none: the first.
    pub fn default_model(&self) -> &ModelEntry {
        &self.models[0]
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn descriptor(max_side: u32) -> ModelDescriptor {
        ModelDescriptor {
            id: "tiny-sd".into(),
            hash: "h".into(),
            default_steps: 10,
            default_guidance: 7.5,
            native_width: 1024,
            native_height: 1024,
            size_multiple: 64,
            max_steps: 100,
            max_side,
            default_sampler: "K_EULER".into(),
        }
    }

    #[test]
    fn a_loaded_model_offers_the_openai_sizes_it_can_make_and_answers_to_the_openai_names() {
        let catalog = ModelCatalog::for_descriptor(&descriptor(1024));
        let model = catalog.find("dall-e-3").unwrap();
        assert_eq!(model.id, "tiny-sd");
        assert_eq!(model.size_list(), "256x256, 512x512, 1024x1024");
        assert_eq!(catalog.find("tiny-sd").unwrap().id, "tiny-sd");
        assert!(catalog.find("dall-e-4").is_none());
        let big = ModelCatalog::for_descriptor(&descriptor(2048));
        assert_eq!(big.default_model().sizes.len(), 5);
    }

    #[test]
    fn configured_sizes_and_aliases_are_parsed_and_bad_ones_named() {
        let c = ModelCatalog::from_settings("sd-turbo", "512x512, 768X768", "dall-e-2 ,,gpt-image-1").unwrap();
        let m = c.find("gpt-image-1").unwrap();
        assert_eq!(m.sizes, vec![Size { width: 512, height: 512 }, Size { width: 768, height: 768 }]);
        assert_eq!(m.default_size(), Size { width: 512, height: 512 });
        assert!(ModelCatalog::from_settings("m", "512", "").unwrap_err().contains("\"512\""));
        assert!(ModelCatalog::from_settings("m", "", "").unwrap_err().contains("no image size"));
        assert!(ModelCatalog::from_settings("m", "64x64", "m").unwrap_err().contains("twice"));
    }
}
