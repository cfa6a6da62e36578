//! The model folder: the diffusers/optimum ONNX layout, its JSON configs and easel's optional
//! manifest, validated before any graph is loaded.
//!
//! ```text
//! model_index.json                      (not read: the components are fixed for txt2img)
//! scheduler/scheduler_config.json       required
//! tokenizer/tokenizer.json              or vocab.json + merges.txt; special_tokens_map.json
//! text_encoder/model.onnx  config.json  config optional (sequence length, default 77)
//! unet/model.onnx          config.json  config optional (SD 1.x values when absent)
//! vae_decoder/model.onnx   config.json  config optional (SD 1.x values when absent)
//! vae_encoder/                          img2img only; not loaded
//! easel.json                            optional manifest: name, defaults, native size, max generation side
//! ```
//!
//! The component `config.json` files are optional because diffusers' own ONNX export script
//! (`convert_stable_diffusion_checkpoint_to_onnx.py`) does not write them; optimum does. The
//! defaults are SD 1.x's, which SD 2.x shares for everything read here.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::LoadError;
use easel_core::generator::SamplerKind;

use crate::scheduler::{SchedulerClass, SchedulerFile};

/// The three graphs txt2img runs.
pub(crate) const TEXT_ENCODER: &str = "text_encoder";
pub(crate) const UNET: &str = "unet";
pub(crate) const VAE_DECODER: &str = "vae_decoder";
/// Optional: img2img needs it.
pub(crate) const VAE_ENCODER: &str = "vae_encoder";

/// Everything read from a model folder's JSON files, validated and with defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct ModelFolder {
    pub root: PathBuf,
    pub scheduler: SchedulerFile,
    /// The sampler requests without one get: the manifest's, else the scheduler class's.
    pub default_sampler: SamplerKind,
    /// Training timesteps of the noise schedule (the most steps any sampler can take).
    pub num_train_timesteps: usize,
    pub text_encoder: TextEncoderConfig,
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub manifest: Manifest,
}

impl ModelFolder {
    /// Reads and validates the folder's configs; checks every file txt2img needs is present.
    pub fn read(root: &Path) -> Result<ModelFolder, LoadError> {
        if !root.is_dir() {
            return Err(LoadError::MissingFile {
                path: root.to_path_buf(),
                expected: "a model folder in the diffusers/optimum ONNX layout",
            });
        }
        if root.join("text_encoder_2").exists() {
            return Err(LoadError::unsupported(
                root.join("text_encoder_2"),
                "a second text encoder (SDXL and SD3 pipelines); easel runs SD 1.x, 2.x and SD-Turbo folders",
            ));
        }
        for component in [TEXT_ENCODER, UNET, VAE_DECODER] {
            require(&root.join(component).join("model.onnx"), "the ONNX graph of this pipeline component")?;
        }
        let tokenizer = root.join("tokenizer");
        if !tokenizer.join("tokenizer.json").is_file() {
            require(&tokenizer.join("vocab.json"), "the CLIP vocabulary (or a tokenizer/tokenizer.json)")?;
            require(&tokenizer.join("merges.txt"), "the CLIP BPE merges (or a tokenizer/tokenizer.json)")?;
        }

        let scheduler_path = root.join("scheduler").join("scheduler_config.json");
        let scheduler =
            SchedulerFile::new(read_json(&scheduler_path, "the scheduler config (diffusers' scheduler_config.json)")?)
                .with_stable_diffusion_fixups();
        let manifest = Manifest::read(root)?;
        let default_sampler = match &manifest.default_sampler {
            Some(name) => name
                .parse::<SamplerKind>()
                .map_err(|e| LoadError::invalid(root.join(Manifest::FILE), format!("default_sampler: {e}")))?,
            None => scheduler.default_sampler(),
        };
        // The default sampler must run on this config; other samplers are checked per request.
        let config = scheduler
            .resolve(SchedulerClass::of(default_sampler))
            .map_err(|message| LoadError::invalid(&scheduler_path, message))?;

        let text_encoder = TextEncoderConfig::read(root)?;
        let unet = UnetConfig::read(root)?;
        let vae = VaeConfig::read(root)?;
        if unet.in_channels != vae.latent_channels {
            let path = root.join(UNET).join("config.json");
            return Err(if unet.in_channels == vae.latent_channels * 2 + 1 {
                LoadError::unsupported(path, "inpainting UNets (9 input channels) for txt2img")
            } else {
                LoadError::invalid(
                    path,
                    format!(
                        "in_channels is {} but the VAE's latent_channels is {}",
                        unet.in_channels, vae.latent_channels
                    ),
                )
            });
        }
        Ok(ModelFolder {
            root: root.to_path_buf(),
            scheduler,
            default_sampler,
            num_train_timesteps: config.num_train_timesteps,
            text_encoder,
            unet,
            vae,
            manifest,
        })
    }

    pub fn component_path(&self, component: &str) -> PathBuf {
        self.root.join(component).join("model.onnx")
    }

    /// Image sides must be multiples of this: the VAE's factor times the UNet's.
    pub fn size_multiple(&self) -> u32 {
        self.vae.factor * self.unet.factor
    }

    /// The folder's name, the model id when the manifest names none.
    pub fn folder_name(&self) -> String {
        self.root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone())
            .file_name()
            .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned())
    }
}

/// `text_encoder/config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct TextEncoderConfig {
    /// The tokenizer's sequence length, BOS and EOS included.
    pub max_position_embeddings: usize,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        TextEncoderConfig { max_position_embeddings: 77 }
    }
}

impl TextEncoderConfig {
    fn read(root: &Path) -> Result<Self, LoadError> {
        let path = root.join(TEXT_ENCODER).join("config.json");
        let config: TextEncoderConfig = read_optional_json(&path)?.unwrap_or_default();
        if config.max_position_embeddings < 2 {
            return Err(LoadError::invalid(path, "max_position_embeddings must be at least 2"));
        }
        Ok(config)
    }
}

/// The parts of `unet/config.json` the pipeline needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnetConfig {
    pub in_channels: usize,
    /// Latent side the UNet was trained at (64 for SD 1.x, 96 for SD 2.x-768).
    pub sample_size: u32,
    /// 2^(down blocks − 1): the last down block does not downsample. Latent sides must be
    /// multiples of it, or the skip connections of an exported graph do not line up.
    pub factor: u32,
}

impl UnetConfig {
    fn read(root: &Path) -> Result<Self, LoadError> {
        #[derive(Deserialize)]
        #[serde(default)]
        struct Raw {
            in_channels: usize,
            sample_size: serde_json::Value,
            down_block_types: Vec<String>,
        }
        impl Default for Raw {
            fn default() -> Self {
                let down = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
                Raw { in_channels: 4, sample_size: 64.into(), down_block_types: down.map(str::to_owned).to_vec() }
            }
        }
        let path = root.join(UNET).join("config.json");
        let raw: Raw = read_optional_json(&path)?.unwrap_or_default();
        // sample_size is an int, or [h, w] in some configs.
        let sample_size = match &raw.sample_size {
            serde_json::Value::Array(sides) => sides.first().and_then(serde_json::Value::as_u64),
            other => other.as_u64(),
        };
        let sample_size = sample_size
            .and_then(|s| u32::try_from(s).ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| LoadError::invalid(&path, "sample_size must be a positive integer"))?;
        let levels = raw.down_block_types.len();
        if levels == 0 || levels > 8 {
            return Err(LoadError::invalid(&path, format!("down_block_types has {levels} entries; expected 1 to 8")));
        }
        if raw.in_channels == 0 {
            return Err(LoadError::invalid(&path, "in_channels must be positive"));
        }
        Ok(UnetConfig { in_channels: raw.in_channels, sample_size, factor: 1 << (levels - 1) })
    }
}

/// The parts of `vae_decoder/config.json` the pipeline needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VaeConfig {
    /// Latents are divided by it before decoding (0.18215 for SD 1.x/2.x VAEs).
    pub scaling_factor: f32,
    pub latent_channels: usize,
    /// Pixels per latent cell: 2^(blocks − 1).
    pub factor: u32,
}

impl VaeConfig {
    fn read(root: &Path) -> Result<Self, LoadError> {
        #[derive(Deserialize)]
        #[serde(default)]
        struct Raw {
            scaling_factor: f64,
            latent_channels: usize,
            block_out_channels: Vec<u64>,
            shift_factor: Option<f64>,
            latents_mean: Option<serde_json::Value>,
        }
        impl Default for Raw {
            fn default() -> Self {
                Raw {
                    scaling_factor: 0.18215,
                    latent_channels: 4,
                    block_out_channels: vec![128, 256, 512, 512],
                    shift_factor: None,
                    latents_mean: None,
                }
            }
        }
        let path = root.join(VAE_DECODER).join("config.json");
        let raw: Raw = read_optional_json(&path)?.unwrap_or_default();
        if !(raw.scaling_factor.is_finite() && raw.scaling_factor > 0.0) {
            return Err(LoadError::invalid(&path, "scaling_factor must be a positive number"));
        }
        if raw.shift_factor.is_some() || raw.latents_mean.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(LoadError::unsupported(&path, "VAEs with shift_factor or latents_mean (SD3, Flux)"));
        }
        let levels = raw.block_out_channels.len();
        if levels == 0 || levels > 8 {
            return Err(LoadError::invalid(&path, format!("block_out_channels has {levels} entries; expected 1 to 8")));
        }
        if raw.latent_channels == 0 {
            return Err(LoadError::invalid(&path, "latent_channels must be positive"));
        }
        Ok(VaeConfig {
            scaling_factor: raw.scaling_factor as f32,
            latent_channels: raw.latent_channels,
            factor: 1 << (levels - 1),
        })
    }
}

/// `easel.json`, easel's optional manifest; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct Manifest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub default_steps: Option<u32>,
    pub default_guidance: Option<f32>,
    pub native_width: Option<u32>,
    pub native_height: Option<u32>,
    /// A sampler API name (`K_EULER`...); default: the one of the scheduler config's class.
    pub default_sampler: Option<String>,
    /// The largest side the model is generated at. A larger request is generated at the largest
    /// size of its aspect ratio within this side and upscaled: for a model trained at one small
    /// size, which composes a scene once instead of tiling it. Default: no limit.
    pub max_generation_side: Option<u32>,
}

impl Manifest {
    pub const FILE: &'static str = "easel.json";

    fn read(root: &Path) -> Result<Self, LoadError> {
        Ok(read_optional_json(&root.join(Manifest::FILE))?.unwrap_or_default())
    }
}

/// A stable fingerprint of the model folder that does not read multi-GB weight files.
///
/// SHA-256 over a version tag, then for every regular file under `root` (recursively, in byte
/// order of its `/`-separated relative path, skipping names that start with `.`): the relative
/// path, a NUL, the size as 8 little-endian bytes, the SHA-256 of its first MiB and the SHA-256
/// of its last MiB. Any re-export changes the graph's header or its tail, and the size catches
/// the rest in practice; a change confined to the middle of a weight file of unchanged size
/// would go unnoticed. Cost: at most 2 MiB read per file.
pub(crate) fn fingerprint(root: &Path) -> Result<String, LoadError> {
    const WINDOW: u64 = 1 << 20;
    let mut files = Vec::new();
    collect_files(root, root, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"easel-model-fingerprint-v1\0");
    let mut buffer = vec![0u8; WINDOW as usize];
    for relative in files {
        let path = root.join(&relative);
        let io = |source| LoadError::Io { path: path.clone(), source };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update(size.to_le_bytes());
        for start in [0, size.saturating_sub(WINDOW)] {
            let len = (size - start).min(WINDOW) as usize;
            file.seek(SeekFrom::Start(start)).map_err(io)?;
            file.read_exact(&mut buffer[..len]).map_err(io)?;
            hasher.update(Sha256::digest(&buffer[..len]));
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // metadata() follows symlinks: a folder of links into a model cache fingerprints as the model.
        let metadata = std::fs::metadata(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
        if metadata.is_dir() {
            collect_files(root, &path, out)?;
        } else if metadata.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

fn require(path: &Path, expected: &'static str) -> Result<(), LoadError> {
    if path.is_file() { Ok(()) } else { Err(LoadError::MissingFile { path: path.to_path_buf(), expected }) }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, expected: &'static str) -> Result<T, LoadError> {
    read_optional_json(path)?.ok_or_else(|| LoadError::MissingFile { path: path.to_path_buf(), expected })
}

fn read_optional_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|source| LoadError::Json { path: path.to_path_buf(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(root: &Path, relative: &str, content: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// A folder with every file txt2img needs; the graphs are empty files (never loaded here).
    fn minimal_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for component in [TEXT_ENCODER, UNET, VAE_DECODER] {
            write(dir.path(), &format!("{component}/model.onnx"), "");
        }
        write(dir.path(), "tokenizer/vocab.json", "{}");
        write(dir.path(), "tokenizer/merges.txt", "#version: 0.2\n");
        write(dir.path(), "scheduler/scheduler_config.json", r#"{"_class_name": "PNDMScheduler"}"#);
        dir
    }

    #[test]
    fn a_folder_without_component_configs_gets_sd1_defaults() {
        let dir = minimal_folder();
        let folder = ModelFolder::read(dir.path()).unwrap();
        assert_eq!(folder.vae, VaeConfig { scaling_factor: 0.18215, latent_channels: 4, factor: 8 });
        assert_eq!(folder.unet, UnetConfig { in_channels: 4, sample_size: 64, factor: 8 });
        assert_eq!(folder.text_encoder.max_position_embeddings, 77);
        assert_eq!(folder.size_multiple(), 64);
        assert_eq!(folder.manifest, Manifest::default());
    }

    #[test]
    fn factors_come_from_the_block_lists() {
        let dir = minimal_folder();
        write(dir.path(), "vae_decoder/config.json", r#"{"block_out_channels": [8, 16], "scaling_factor": 0.5}"#);
        write(dir.path(), "unet/config.json", r#"{"down_block_types": ["A", "B", "C"], "sample_size": [32, 32]}"#);
        let folder = ModelFolder::read(dir.path()).unwrap();
        assert_eq!(folder.vae.factor, 2);
        assert_eq!(folder.vae.scaling_factor, 0.5);
        assert_eq!(folder.unet.factor, 4);
        assert_eq!(folder.unet.sample_size, 32);
        assert_eq!(folder.size_multiple(), 8);
    }

    #[test]
    fn a_missing_unet_graph_is_named() {
        let dir = minimal_folder();
        std::fs::remove_file(dir.path().join("unet/model.onnx")).unwrap();
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(matches!(&err, LoadError::MissingFile { path, .. } if path.ends_with("unet/model.onnx")), "{err}");
    }

    #[test]
    fn a_missing_scheduler_config_is_named() {
        let dir = minimal_folder();
        std::fs::remove_file(dir.path().join("scheduler/scheduler_config.json")).unwrap();
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("scheduler_config.json"), "{err}");
    }

    #[test]
    fn an_inpainting_unet_is_refused_as_unsupported() {
        let dir = minimal_folder();
        write(dir.path(), "unet/config.json", r#"{"in_channels": 9}"#);
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_scheduler_value_of_the_wrong_type_names_the_file() {
        let dir = minimal_folder();
        write(dir.path(), "scheduler/scheduler_config.json", r#"{"beta_start": "tiny"}"#);
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(matches!(&err, LoadError::Invalid { path, .. } if path.ends_with("scheduler_config.json")), "{err}");
        write(dir.path(), "scheduler/scheduler_config.json", "not json");
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(matches!(&err, LoadError::Json { path, .. } if path.ends_with("scheduler_config.json")), "{err}");
    }

    #[test]
    fn an_sdxl_folder_is_refused_naming_its_second_text_encoder() {
        let dir = minimal_folder();
        std::fs::create_dir_all(dir.path().join("text_encoder_2")).unwrap();
        let err = ModelFolder::read(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("text_encoder_2"), "{err}");
    }

    #[test]
    fn the_default_sampler_is_the_manifests_or_the_scheduler_class() {
        let dir = minimal_folder();
        write(dir.path(), "scheduler/scheduler_config.json", r#"{"_class_name": "DDIMScheduler"}"#);
        assert_eq!(ModelFolder::read(dir.path()).unwrap().default_sampler, SamplerKind::Ddim);
        write(dir.path(), "easel.json", r#"{"default_sampler": "K_DPMPP_2M"}"#);
        assert_eq!(ModelFolder::read(dir.path()).unwrap().default_sampler, SamplerKind::DpmPp2m);
        write(dir.path(), "easel.json", r#"{"default_sampler": "K_FAST"}"#);
        let err = ModelFolder::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("K_FAST") && err.contains("K_EULER"), "{err}");
    }

    #[test]
    fn the_fingerprint_is_stable_and_sees_edits_at_either_end_of_large_files() {
        let dir = minimal_folder();
        let big: Vec<u8> = (0..3 * (1 << 20) + 5).map(|i: usize| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("unet/model.onnx"), &big).unwrap();
        let first = fingerprint(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(fingerprint(dir.path()).unwrap(), first);

        let mut tail_edit = big.clone();
        *tail_edit.last_mut().unwrap() ^= 1;
        std::fs::write(dir.path().join("unet/model.onnx"), &tail_edit).unwrap();
        let tail = fingerprint(dir.path()).unwrap();
        assert_ne!(tail, first);

        std::fs::write(dir.path().join("unet/model.onnx"), &big).unwrap();
        write(dir.path(), ".cache/notes", "ignored");
        assert_eq!(fingerprint(dir.path()).unwrap(), first, "dot-files are not part of the model");
        write(dir.path(), "scheduler/scheduler_config.json", r#"{"timestep_spacing": "trailing"}"#);
        assert_ne!(fingerprint(dir.path()).unwrap(), first);
    }
}
