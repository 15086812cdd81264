//! Loading published Stable Diffusion 1.x weights into the networks.
//!
//! Two sources are read ([`WeightsSource`]):
//!
//! - a **diffusers folder** (`model_index.json`, `unet/`, `vae/`,
//!   `text_encoder/`, each with `config.json` and
//!   `diffusion_pytorch_model[.fp16|.bf16].safetensors` or
//!   `model[.fp16|.bf16].safetensors`); the precision [`Variant`] picks among
//!   the files, falling back to what exists;
//! - a **single-file LDM checkpoint** (`.safetensors` with
//!   `model.diffusion_model.*`, `first_stage_model.*`,
//!   `cond_stage_model.transformer.*` keys). It carries no config, so the
//!   SD 1.x presets are used after checking the tensor shapes against them,
//!   or the caller passes a [`StableDiffusionConfig`]. Its keys are mapped to
//!   diffusers names by the rules in [`ldm`].
//!
//! Files are memory-mapped and each tensor is copied once, straight into the
//! network parameter, converted to the backend's float type (f32, f16 and
//! bf16 files all load into an f32 or f16 network; see [`CastingAdapter`]).
//! Then diffusers names become field paths through
//! [`crate::keys::DIFFUSERS_KEY_REMAP`] and burn-store applies them.
//!
//! Loading is strict: a tensor the network expects but the file lacks, a file
//! tensor the network has no place for, a shape mismatch, a NaN/∞ weight, or
//! an LDM file where a diffusers one was expected (and the reverse) is a
//! [`LoadError`] naming the file. Only parts that segmentation never runs are
//! skipped by name: the VAE decoder and `post_quant_conv`, CLIP's
//! `position_ids` buffer, and in LDM files the EMA copy and the DDPM schedule
//! buffers.
//!
//! Pickled checkpoints (`.ckpt`, `.bin`, ...) are refused with
//! [`LoadError::PickleNotSupported`], which says how to convert them.

mod diffusers;
mod dtype;
mod error;
mod file;
pub mod ldm;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ApplyError, KeyRemapper, ModuleSnapshot};

pub use diffusers::{diffusers_key_role, required_files, Variant};
pub use dtype::CastingAdapter;
pub use error::{LoadError, MismatchReport, ShapeMismatch};

use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::keys::DIFFUSERS_KEY_REMAP;
use crate::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{StableDiffusion, StableDiffusionConfig};
use file::SafetensorsFile;

/// One of the three networks of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// The denoising UNet (`unet/`, `model.diffusion_model.*`).
    Unet,
    /// The VAE; only its encoder and `quant_conv` are loaded (`vae/`,
    /// `first_stage_model.*`).
    Vae,
    /// The CLIP text encoder (`text_encoder/`, `cond_stage_model.transformer.*`).
    TextEncoder,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Unet => "UNet",
            Component::Vae => "VAE",
            Component::TextEncoder => "text encoder",
        })
    }
}

/// What one key of a weights file means for the network being loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRole {
    /// Load it under this diffusers key. With `conv_to_linear`, a
    /// `[out, in, 1, 1]` 1×1-convolution weight feeds a linear layer.
    Load {
        /// The diffusers key (the network's parameter path) the tensor loads into.
        key: String,
        /// Squeeze a `[out, in, 1, 1]` tensor to `[out, in]` for a linear layer.
        conv_to_linear: bool,
    },
    /// Belongs to another network or to a part that is never run (VAE
    /// decoder, EMA weights, scheduler buffers): skipped without error.
    NotNeeded,
    /// Looks like this network's but matches no known parameter: an error.
    Unexpected,
}

/// Where the weights of a Stable Diffusion pipeline live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A diffusers pipeline folder, read in the preferred precision variant.
    Diffusers {
        /// The pipeline folder that holds `unet/`, `vae/` and `text_encoder/`.
        root: PathBuf,
        /// The precision variant preferred when a component has several weights files.
        variant: Variant,
    },
    /// A single-file checkpoint in the original LDM key layout.
    SingleFile(PathBuf),
}

impl WeightsSource {
    /// Classifies `path`: a folder with `model_index.json` or a `unet/`,
    /// `vae/` or `text_encoder/` sub-folder is a diffusers pipeline (read
    /// with [`Variant::F32`] preferred; see [`Self::with_variant`]); a
    /// `.safetensors` file must hold LDM keys. Pickled checkpoints and
    /// single diffusers component files are refused with an error saying
    /// what to do instead.
    pub fn detect(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let metadata = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        if metadata.is_dir() {
            return if diffusers::is_pipeline_folder(path) {
                Ok(Self::Diffusers {
                    root: path.to_path_buf(),
                    variant: Variant::default(),
                })
            } else {
                Err(LoadError::UnrecognisedSource {
                    path: path.to_path_buf(),
                    reason: "a folder without model_index.json, unet/, vae/ or text_encoder/"
                        .into(),
                })
            };
        }
        if is_pickle(path) {
            return Err(LoadError::PickleNotSupported {
                path: path.to_path_buf(),
            });
        }
        let file = SafetensorsFile::open(path)?;
        check_single_file_layout(&file)?;
        Ok(Self::SingleFile(path.to_path_buf()))
    }

    /// The same source with another preferred precision variant (no effect
    /// on single files).
    pub fn with_variant(self, variant: Variant) -> Self {
        match self {
            Self::Diffusers { root, .. } => Self::Diffusers { root, variant },
            single => single,
        }
    }

    /// The path this source was made from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Diffusers { root, .. } => root,
            Self::SingleFile(path) => path,
        }
    }

    /// The networks' architectures: the folder's `config.json` files, or for
    /// a single file the SD 1.5 presets once its shapes are checked against
    /// them ([`LoadError::UnknownArchitecture`] otherwise).
    pub fn config(&self) -> Result<StableDiffusionConfig, LoadError> {
        match self {
            Self::Diffusers { root, .. } => Ok(StableDiffusionConfig {
                vae: AutoencoderKLConfig::from_json_file(config_path(root, Component::Vae)?)?,
                text_encoder: ClipTextConfig::from_json_file(config_path(
                    root,
                    Component::TextEncoder,
                )?)?,
                unet: UNet2DConditionModelConfig::from_json_file(config_path(
                    root,
                    Component::Unet,
                )?)?,
            }),
            Self::SingleFile(path) => sd_v1_preset_for(&open_single_file(path)?),
        }
    }
}

/// Loads the UNet with the architecture from [`WeightsSource::config`].
pub fn load_unet<B: Backend>(
    source: &WeightsSource,
    device: &B::Device,
) -> Result<UNet2DConditionModel<B>, LoadError> {
    let config = match source {
        WeightsSource::Diffusers { root, .. } => {
            UNet2DConditionModelConfig::from_json_file(config_path(root, Component::Unet)?)?
        }
        WeightsSource::SingleFile(_) => source.config()?.unet,
    };
    load_unet_with_config(source, &config, device)
}

/// Loads the UNet with the given architecture.
pub fn load_unet_with_config<B: Backend>(
    source: &WeightsSource,
    config: &UNet2DConditionModelConfig,
    device: &B::Device,
) -> Result<UNet2DConditionModel<B>, LoadError> {
    let layout = Layout::of(source, config);
    let file = open_component_file(source, Component::Unet)?;
    load_network(config.init(device), &file, Component::Unet, layout)
}

/// Loads the VAE encoder (and `quant_conv`) with the architecture from
/// [`WeightsSource::config`].
pub fn load_vae_encoder<B: Backend>(
    source: &WeightsSource,
    device: &B::Device,
) -> Result<AutoencoderKL<B>, LoadError> {
    let config = match source {
        WeightsSource::Diffusers { root, .. } => {
            AutoencoderKLConfig::from_json_file(config_path(root, Component::Vae)?)?
        }
        WeightsSource::SingleFile(_) => source.config()?.vae,
    };
    load_vae_encoder_with_config(source, &config, device)
}

/// Loads the VAE encoder (and `quant_conv`) with the given architecture.
pub fn load_vae_encoder_with_config<B: Backend>(
    source: &WeightsSource,
    config: &AutoencoderKLConfig,
    device: &B::Device,
) -> Result<AutoencoderKL<B>, LoadError> {
    let file = open_component_file(source, Component::Vae)?;
    let layout = match source {
        WeightsSource::Diffusers { .. } => Layout::Diffusers,
        // The VAE mapping does not depend on the UNet's block arithmetic.
        WeightsSource::SingleFile(_) => Layout::Ldm {
            unet_layers_per_block: 0,
        },
    };
    load_network(config.init(device), &file, Component::Vae, layout)
}

/// Loads the CLIP text encoder with the architecture from
/// [`WeightsSource::config`].
pub fn load_text_encoder<B: Backend>(
    source: &WeightsSource,
    device: &B::Device,
) -> Result<ClipTextModel<B>, LoadError> {
    let config = match source {
        WeightsSource::Diffusers { root, .. } => {
            ClipTextConfig::from_json_file(config_path(root, Component::TextEncoder)?)?
        }
        WeightsSource::SingleFile(_) => source.config()?.text_encoder,
    };
    load_text_encoder_with_config(source, &config, device)
}

/// Loads the CLIP text encoder with the given architecture.
pub fn load_text_encoder_with_config<B: Backend>(
    source: &WeightsSource,
    config: &ClipTextConfig,
    device: &B::Device,
) -> Result<ClipTextModel<B>, LoadError> {
    let file = open_component_file(source, Component::TextEncoder)?;
    let layout = match source {
        WeightsSource::Diffusers { .. } => Layout::Diffusers,
        WeightsSource::SingleFile(_) => Layout::Ldm {
            unet_layers_per_block: 0,
        },
    };
    load_network(config.init(device), &file, Component::TextEncoder, layout)
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads all three networks with the architecture from
    /// [`WeightsSource::config`]. A single file is mapped once for all three.
    pub fn load(source: &WeightsSource, device: &B::Device) -> Result<Self, LoadError> {
        match source {
            WeightsSource::Diffusers { .. } => {
                Self::load_with_config(source, &source.config()?, device)
            }
            WeightsSource::SingleFile(path) => {
                let file = open_single_file(path)?;
                let config = sd_v1_preset_for(&file)?;
                Self::load_single_file(&file, &config, device)
            }
        }
    }

    /// Loads all three networks with the given architectures.
    pub fn load_with_config(
        source: &WeightsSource,
        config: &StableDiffusionConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        match source {
            WeightsSource::Diffusers { .. } => Ok(Self {
                vae: load_vae_encoder_with_config(source, &config.vae, device)?,
                text_encoder: load_text_encoder_with_config(source, &config.text_encoder, device)?,
                unet: load_unet_with_config(source, &config.unet, device)?,
            }),
            WeightsSource::SingleFile(path) => {
                Self::load_single_file(&open_single_file(path)?, config, device)
            }
        }
    }

    fn load_single_file(
        file: &SafetensorsFile,
        config: &StableDiffusionConfig,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let layout = Layout::Ldm {
            unet_layers_per_block: config.unet.layers_per_block,
        };
        Ok(Self {
            vae: load_network(config.vae.init(device), file, Component::Vae, layout)?,
            text_encoder: load_network(
                config.text_encoder.init(device),
                file,
                Component::TextEncoder,
                layout,
            )?,
            unet: load_network(config.unet.init(device), file, Component::Unet, layout)?,
        })
    }
}

/// Key layout of a weights file.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// diffusers/transformers names, one file per network.
    Diffusers,
    /// Original LDM names, all networks in one file.
    Ldm { unet_layers_per_block: usize },
}

impl Layout {
    fn of(source: &WeightsSource, unet: &UNet2DConditionModelConfig) -> Self {
        match source {
            WeightsSource::Diffusers { .. } => Layout::Diffusers,
            WeightsSource::SingleFile(_) => Layout::Ldm {
                unet_layers_per_block: unet.layers_per_block,
            },
        }
    }

    fn key_role(self, component: Component, key: &str) -> KeyRole {
        match self {
            Layout::Diffusers => diffusers_key_role(component, key),
            Layout::Ldm {
                unet_layers_per_block,
            } => ldm::ldm_key_role(component, key, unet_layers_per_block),
        }
    }
}

/// Extensions of pickled PyTorch checkpoints.
fn is_pickle(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "ckpt" | "pt" | "pth" | "bin"
        )
    })
}

/// Opens the file of one network of `source`, refusing layout mix-ups that
/// can be seen from the path alone.
fn open_component_file(
    source: &WeightsSource,
    component: Component,
) -> Result<SafetensorsFile, LoadError> {
    match source {
        WeightsSource::Diffusers { root, variant } => {
            check_pipeline_root(root, component)?;
            SafetensorsFile::open(&diffusers::weights_path(root, component, *variant)?)
        }
        WeightsSource::SingleFile(path) => open_single_file(path),
    }
}

/// Refuses a file given as a diffusers pipeline folder, saying what it is.
fn check_pipeline_root(root: &Path, component: Component) -> Result<(), LoadError> {
    let metadata = std::fs::metadata(root).map_err(|source| LoadError::Io {
        path: root.to_path_buf(),
        error: source,
    })?;
    if metadata.is_dir() {
        return Ok(());
    }
    if is_pickle(root) {
        return Err(LoadError::PickleNotSupported {
            path: root.to_path_buf(),
        });
    }
    let file = SafetensorsFile::open(root)?;
    check_diffusers_layout(&file, component)?;
    Err(LoadError::UnrecognisedSource {
        path: root.to_path_buf(),
        reason: "a diffusers source must be the pipeline folder, not a file".into(),
    })
}

/// `root/<component>/config.json`, once `root` is known to be a folder.
fn config_path(root: &Path, component: Component) -> Result<PathBuf, LoadError> {
    check_pipeline_root(root, component)?;
    Ok(diffusers::config_path(root, component))
}

/// Opens a single-file checkpoint, refusing folders and pickles.
fn open_single_file(path: &Path) -> Result<SafetensorsFile, LoadError> {
    if path.is_dir() {
        return Err(LoadError::DiffusersGivenAsSingleFile {
            path: path.to_path_buf(),
            found: "a folder".into(),
        });
    }
    if is_pickle(path) {
        return Err(LoadError::PickleNotSupported {
            path: path.to_path_buf(),
        });
    }
    SafetensorsFile::open(path)
}

/// Fails if a file expected in diffusers layout holds LDM keys.
fn check_diffusers_layout(file: &SafetensorsFile, component: Component) -> Result<(), LoadError> {
    match file.keys().find_map(ldm::ldm_prefix_of) {
        Some(ldm_prefix) => Err(LoadError::SingleFileGivenAsDiffusers {
            path: file.path().to_path_buf(),
            component,
            ldm_prefix,
        }),
        None => Ok(()),
    }
}

/// Fails if a file expected in LDM layout holds no LDM key.
fn check_single_file_layout(file: &SafetensorsFile) -> Result<(), LoadError> {
    if file.keys().any(|key| ldm::ldm_prefix_of(key).is_some()) {
        return Ok(());
    }
    let found = match file.keys().next() {
        Some(key) => match diffusers::guess_component(file.keys()) {
            Some(component) => format!("diffusers {component} keys (e.g. `{key}`)"),
            None => format!("no LDM keys (e.g. `{key}`)"),
        },
        None => "no tensors at all".into(),
    };
    Err(LoadError::DiffusersGivenAsSingleFile {
        path: file.path().to_path_buf(),
        found,
    })
}

/// The SD 1.5 architecture, if the single file's shapes are SD 1.x's.
///
/// Head counts are not visible in weights, so shapes can only confirm a
/// preset, not derive an architecture.
fn sd_v1_preset_for(file: &SafetensorsFile) -> Result<StableDiffusionConfig, LoadError> {
    check_single_file_layout(file)?;
    let preset = StableDiffusionConfig::sd_v1_5();
    let unet_width = preset.unet.block_out_channels[0];
    let checks = [
        (
            Component::Unet,
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![unet_width, preset.unet.in_channels, 3, 3],
        ),
        (
            Component::Unet,
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            vec![unet_width, preset.unet.cross_attention_dim],
        ),
        (
            Component::Vae,
            "first_stage_model.encoder.conv_in.weight",
            vec![
                preset.vae.block_out_channels[0],
                preset.vae.in_channels,
                3,
                3,
            ],
        ),
        (
            Component::TextEncoder,
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            vec![
                preset.text_encoder.vocab_size,
                preset.text_encoder.hidden_size,
            ],
        ),
    ];
    for (component, key, expected) in checks {
        let found = file.shape(key);
        if found != Some(expected.as_slice()) {
            return Err(LoadError::UnknownArchitecture {
                path: file.path().to_path_buf(),
                component,
                reason: match found {
                    Some(shape) => format!("`{key}` is {shape:?}, SD 1.x has {expected:?}"),
                    None => format!("no `{key}`"),
                },
            });
        }
    }
    Ok(preset)
}

/// Applies the tensors of `file` that belong to `component` to `module`.
fn load_network<B: Backend, M: Module<B>>(
    mut module: M,
    file: &SafetensorsFile,
    component: Component,
    layout: Layout,
) -> Result<M, LoadError> {
    match layout {
        Layout::Diffusers => check_diffusers_layout(file, component)?,
        Layout::Ldm { .. } => check_single_file_layout(file)?,
    }
    let mut report = MismatchReport::default();
    let mut snapshots = Vec::new();
    // Diffusers key -> file key, to report problems under the file's names.
    let mut file_keys = HashMap::new();
    for key in file.keys() {
        match layout.key_role(component, key) {
            KeyRole::Load {
                key: diffusers_key,
                conv_to_linear,
            } => {
                snapshots.push(file.snapshot(key, &diffusers_key, conv_to_linear)?);
                file_keys.insert(diffusers_key, key.to_string());
            }
            KeyRole::NotNeeded => {}
            KeyRole::Unexpected => report.unexpected.push(key.to_string()),
        }
    }
    // Diffusers keys -> field paths; remember field path -> file key.
    let (snapshots, renamed) = field_path_remapper().remap(snapshots);
    let file_keys: HashMap<String, String> = renamed
        .into_iter()
        .filter_map(|(field_path, diffusers_key)| {
            file_keys
                .remove(&diffusers_key)
                .map(|file_key| (field_path, file_key))
        })
        .collect();
    let file_key = |path: &str| {
        file_keys
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    };

    let adapter = CastingAdapter::for_backend::<B>();
    // `skip_enum_variants`: `proj_in`/`proj_out` are an enum (conv or linear).
    let result = module.apply(snapshots, None, Some(Box::new(adapter.clone())), true);

    report.applied = result.applied.len();
    report.missing = result.missing.into_iter().map(|(path, _)| path).collect();
    let applied: HashSet<&str> = result.applied.iter().map(String::as_str).collect();
    report.unexpected.extend(
        result
            .unused
            .iter()
            .filter(|path| !applied_under_norm_name(path, &applied))
            .map(|path| file_key(path)),
    );
    for error in result.errors {
        match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                report.shape_mismatches.push(ShapeMismatch {
                    key: file_key(&path),
                    expected,
                    found,
                });
            }
            other => report.unreadable.push(other.to_string()),
        }
    }
    if !report.is_empty() {
        return Err(LoadError::Mismatch {
            path: file.path().to_path_buf(),
            component,
            report: Box::new(report),
        });
    }
    let non_finite = adapter.non_finite();
    if !non_finite.is_empty() {
        return Err(LoadError::NonFinite {
            path: file.path().to_path_buf(),
            component,
            dtype: format!("{:?}", adapter.target()),
            tensors: non_finite
                .iter()
                .map(|(path, count)| format!("{} ({count} values)", file_key(path)))
                .collect(),
        });
    }
    Ok(module)
}

/// Whether burn-store applied `path` (`….weight`/`….bias`) to a norm layer's
/// `gamma`/`beta`.
///
/// burn-store 0.20.1 finds norm parameters through the adapter's alternative
/// name but still lists the file key as unused; without this every
/// GroupNorm/LayerNorm would look like an unexpected key.
fn applied_under_norm_name(path: &str, applied: &HashSet<&str>) -> bool {
    let burn_name = |prefix: &str, name: &str| applied.contains(format!("{prefix}{name}").as_str());
    if let Some(prefix) = path.strip_suffix("weight") {
        burn_name(prefix, "gamma")
    } else if let Some(prefix) = path.strip_suffix("bias") {
        burn_name(prefix, "beta")
    } else {
        false
    }
}

/// The [`DIFFUSERS_KEY_REMAP`] patterns, compiled.
fn field_path_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(DIFFUSERS_KEY_REMAP.to_vec())
        .expect("DIFFUSERS_KEY_REMAP holds valid regexes (checked by a unit test)")
}
