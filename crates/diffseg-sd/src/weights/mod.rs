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
//!   diffusers names by the rules in `ldm.rs`.
//!
//! One generic entry point loads any of the three networks
//! ([`WeightsSource::load`], generic over [`Network`]); [`StableDiffusion::load`]
//! loads all three, mapping a single file once. The source layer
//! ([`WeightsSource`]) knows each layout once: where a network's config and
//! weights are, which variant exists, whether the file holds the keys the
//! layout promises. It hands the apply layer (`apply.rs`) an opened file and
//! its layout; the network's config says what each key means there.
//!
//! Files are memory-mapped and each tensor is copied once, straight into the
//! network parameter, converted to the backend's float type (f32, f16 and
//! bf16 files all load into an f32 or f16 network). Then diffusers names
//! become field paths through the crate's remap table (`keys.rs`) and
//! burn-store applies them.
//!
//! Loading is strict: a tensor the network expects but the file lacks, a file
//! tensor the network has no place for, a shape mismatch, a NaN/∞ weight, or
//! an LDM file where a diffusers one was expected (and the reverse) is a
//! [`Error`] naming the file. Only parts that segmentation never runs are
//! skipped by name: the VAE decoder and `post_quant_conv`, CLIP's
//! `position_ids` buffer, and in LDM files the EMA copy and the DDPM schedule
//! buffers.
//!
//! Pickled checkpoints (`.ckpt`, `.bin`, ...) are refused with
//! [`Error::PickleNotSupported`], which says how to convert them.

mod apply;
mod diffusers;
mod dtype;
mod file;
mod ldm;
mod network;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;

pub use diffusers::Variant;
pub use network::{Network, NetworkConfig};

use crate::{Error, StableDiffusion, StableDiffusionConfig};
pub(crate) use file::MappedFile;
use file::SafetensorsFile;
use network::sealed::KeyMap;

/// One of the three networks of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    pub fn detect(path: impl AsRef<Path>) -> Result<Self, Error> {
        detect_and_open(path.as_ref()).map(|(source, _)| source)
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
    /// them ([`Error::UnknownArchitecture`] otherwise).
    ///
    /// Every config is validated ([`Error::InvalidConfig`] names the file
    /// and the field), each on its own and the three together
    /// ([`StableDiffusionConfig::validate`]).
    pub fn config(&self) -> Result<StableDiffusionConfig, Error> {
        match self {
            Self::Diffusers { root, .. } => {
                let config = StableDiffusionConfig {
                    vae: read_config(root)?,
                    text_encoder: read_config(root)?,
                    unet: read_config(root)?,
                };
                // The checks across networks name the UNet's fields.
                config.validate().map_err(|error| {
                    error.in_config_file(&diffusers::config_path(root, Component::Unet))
                })?;
                Ok(config)
            }
            Self::SingleFile(path) => sd_v1_preset_for(&open_single_file(path)?.file),
        }
    }

    /// Loads network `N` (the UNet, the VAE encoder or the text encoder)
    /// with the architecture `config`, or without one the architecture
    /// [`Self::config`] finds for it:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), diffseg_sd::Error> {
    /// use diffseg_sd::{UNet2DConditionModel, WeightsSource};
    /// type B = burn::backend::NdArray<f32>;
    ///
    /// let source = WeightsSource::detect("/models/stable-diffusion-v1-5")?;
    /// let unet: UNet2DConditionModel<B> = source.load(None, &Default::default())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn load<B: Backend, N: Network<B>>(
        &self,
        config: Option<&N::Config>,
        device: &B::Device,
    ) -> Result<N, Error> {
        let component = <N::Config as NetworkConfig>::COMPONENT;
        match self {
            Self::Diffusers { root, .. } => {
                let config = match config {
                    Some(config) => Cow::Borrowed(config),
                    None => Cow::Owned(read_config(root)?),
                };
                apply::load(&*config, &self.open_component(component)?, device)
            }
            Self::SingleFile(path) => {
                let file = open_single_file(path)?;
                match config {
                    Some(config) => apply::load(config, &file, device),
                    None => {
                        let preset = sd_v1_preset_for(&file.file)?;
                        apply::load(<N::Config as KeyMap>::of(&preset), &file, device)
                    }
                }
            }
        }
    }

    /// Opens the weights file of `component` and checks that it holds the
    /// keys its layout promises.
    fn open_component(&self, component: Component) -> Result<LayoutFile, Error> {
        match self {
            Self::Diffusers { root, variant } => {
                check_pipeline_root(root, component)?;
                let file =
                    SafetensorsFile::open(&diffusers::weights_path(root, component, *variant)?)?;
                check_diffusers_layout(&file, component)?;
                Ok(LayoutFile {
                    file,
                    layout: Layout::Diffusers,
                })
            }
            Self::SingleFile(path) => open_single_file(path),
        }
    }
}

/// [`WeightsSource::detect`], keeping a single file it opened to check it.
fn detect_and_open(path: &Path) -> Result<(WeightsSource, Option<LayoutFile>), Error> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    if metadata.is_dir() {
        return if diffusers::is_pipeline_folder(path) {
            Ok((
                WeightsSource::Diffusers {
                    root: path.to_path_buf(),
                    variant: Variant::default(),
                },
                None,
            ))
        } else {
            Err(Error::UnrecognisedSource {
                path: path.to_path_buf(),
                reason: "a folder without model_index.json, unet/, vae/ or text_encoder/".into(),
            })
        };
    }
    let file = open_single_file(path)?;
    Ok((WeightsSource::SingleFile(path.to_path_buf()), Some(file)))
}

/// A [`WeightsSource`] opened for loading: the networks' architectures read,
/// and a single-file checkpoint mapped with its header parsed and checked
/// once, here, for [`StableDiffusion::load_opened`] (detecting, reading the
/// architecture and loading a single file otherwise parse its header three
/// times).
#[derive(Debug, Clone)]
pub struct OpenedWeights {
    source: WeightsSource,
    config: StableDiffusionConfig,
    /// The mapped single file; a diffusers folder's files are opened per
    /// network as it loads.
    single_file: Option<Arc<LayoutFile>>,
}

impl OpenedWeights {
    /// Classifies `path` as [`WeightsSource::detect`] does (a diffusers
    /// folder read with `variant` preferred) and opens it, with the
    /// architectures `config`, or without one those [`WeightsSource::config`]
    /// finds.
    pub fn open(
        path: impl AsRef<Path>,
        variant: Variant,
        config: Option<StableDiffusionConfig>,
    ) -> Result<Self, Error> {
        let (source, single_file) = detect_and_open(path.as_ref())?;
        let source = source.with_variant(variant);
        let config = match (config, &single_file) {
            (Some(config), _) => config,
            (None, Some(file)) => sd_v1_preset_for(&file.file)?,
            (None, None) => source.config()?,
        };
        Ok(Self {
            source,
            config,
            single_file: single_file.map(Arc::new),
        })
    }

    /// What was opened.
    pub fn source(&self) -> &WeightsSource {
        &self.source
    }

    /// The networks' architectures.
    pub fn config(&self) -> &StableDiffusionConfig {
        &self.config
    }
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads all three networks with the architectures `config`, or without
    /// one those [`WeightsSource::config`] finds. A single file is mapped
    /// once for all three.
    ///
    /// The networks keep reading the mapped files: call
    /// [`Self::check_weights_unchanged`] before each pass.
    pub fn load(
        source: &WeightsSource,
        config: Option<&StableDiffusionConfig>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        if let Some(config) = config {
            config.validate()?;
        }
        match source {
            WeightsSource::Diffusers { .. } => {
                let config = match config {
                    Some(config) => Cow::Borrowed(config),
                    None => Cow::Owned(source.config()?),
                };
                let vae = source.open_component(Component::Vae)?;
                let text_encoder = source.open_component(Component::TextEncoder)?;
                let unet = source.open_component(Component::Unet)?;
                Ok(Self {
                    vae: apply::load(&config.vae, &vae, device)?,
                    text_encoder: apply::load(&config.text_encoder, &text_encoder, device)?,
                    unet: apply::load(&config.unet, &unet, device)?,
                    mapped_files: [vae, text_encoder, unet]
                        .iter()
                        .map(|opened| opened.file.mapped().clone())
                        .collect(),
                })
            }
            WeightsSource::SingleFile(path) => {
                let file = open_single_file(path)?;
                let config = match config {
                    Some(config) => Cow::Borrowed(config),
                    None => Cow::Owned(sd_v1_preset_for(&file.file)?),
                };
                Self::from_single_file(&file, &config, device)
            }
        }
    }

    /// [`Error::WeightsChanged`] if a weights file the networks read from
    /// was truncated, grown or rewritten in place since loading. Their
    /// parameters are windows on a memory map of the files, and reading a
    /// truncated mapping ends the process (SIGBUS): call this before each
    /// pass (the `diffseg` facade does). It cannot stop a change made after
    /// it returns; a file replaced by a rename is no change (the mapping
    /// keeps the old one). Networks built by [`StableDiffusionConfig::init`]
    /// read no file.
    pub fn check_weights_unchanged(&self) -> Result<(), Error> {
        self.mapped_files
            .iter()
            .try_for_each(MappedFile::check_unchanged)
    }

    /// Loads all three networks from weights opened before, without
    /// opening a single file again.
    pub fn load_opened(weights: &OpenedWeights, device: &B::Device) -> Result<Self, Error> {
        match &weights.single_file {
            Some(file) => {
                weights.config.validate()?;
                Self::from_single_file(file, &weights.config, device)
            }
            None => Self::load(&weights.source, Some(&weights.config), device),
        }
    }

    fn from_single_file(
        file: &LayoutFile,
        config: &StableDiffusionConfig,
        device: &B::Device,
    ) -> Result<Self, Error> {
        Ok(Self {
            vae: apply::load(&config.vae, file, device)?,
            text_encoder: apply::load(&config.text_encoder, file, device)?,
            unet: apply::load(&config.unet, file, device)?,
            mapped_files: vec![file.file.mapped().clone()],
        })
    }
}

/// Key layout of a weights file.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// diffusers/transformers names, one file per network.
    Diffusers,
    /// Original LDM names, all networks in one file.
    Ldm,
}

/// A weights file whose keys were checked to be in `layout`.
#[derive(Debug)]
struct LayoutFile {
    file: SafetensorsFile,
    layout: Layout,
}

/// Network config `C` read from `root/<component>/config.json`, once `root`
/// is known to be a folder.
fn read_config<C: NetworkConfig>(root: &Path) -> Result<C, Error> {
    check_pipeline_root(root, C::COMPONENT)?;
    C::from_json_file(&diffusers::config_path(root, C::COMPONENT))
}

/// Opens a single-file checkpoint, refusing folders, pickles and files
/// without LDM keys.
fn open_single_file(path: &Path) -> Result<LayoutFile, Error> {
    if path.is_dir() {
        return Err(Error::DiffusersGivenAsSingleFile {
            path: path.to_path_buf(),
            found: "a folder".into(),
        });
    }
    if is_pickle(path) {
        return Err(Error::PickleNotSupported {
            path: path.to_path_buf(),
        });
    }
    let file = SafetensorsFile::open(path)?;
    check_single_file_layout(&file)?;
    Ok(LayoutFile {
        file,
        layout: Layout::Ldm,
    })
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

/// Refuses a file given as a diffusers pipeline folder, saying what it is.
fn check_pipeline_root(root: &Path, component: Component) -> Result<(), Error> {
    let metadata = std::fs::metadata(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        error: source,
    })?;
    if metadata.is_dir() {
        return Ok(());
    }
    if is_pickle(root) {
        return Err(Error::PickleNotSupported {
            path: root.to_path_buf(),
        });
    }
    let file = SafetensorsFile::open(root)?;
    check_diffusers_layout(&file, component)?;
    Err(Error::UnrecognisedSource {
        path: root.to_path_buf(),
        reason: "a diffusers source must be the pipeline folder, not a file".into(),
    })
}

/// Fails if a file expected in diffusers layout holds LDM keys.
fn check_diffusers_layout(file: &SafetensorsFile, component: Component) -> Result<(), Error> {
    match file.keys().find_map(ldm::ldm_prefix_of) {
        Some(ldm_prefix) => Err(Error::SingleFileGivenAsDiffusers {
            path: file.path().to_path_buf(),
            component,
            ldm_prefix,
        }),
        None => Ok(()),
    }
}

/// Fails if a file expected in LDM layout holds no LDM key.
fn check_single_file_layout(file: &SafetensorsFile) -> Result<(), Error> {
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
    Err(Error::DiffusersGivenAsSingleFile {
        path: file.path().to_path_buf(),
        found,
    })
}

/// The SD 1.5 architecture, if the single file's shapes are SD 1.x's.
///
/// Head counts are not visible in weights, so shapes can only confirm a
/// preset, not derive an architecture.
fn sd_v1_preset_for(file: &SafetensorsFile) -> Result<StableDiffusionConfig, Error> {
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
            return Err(Error::UnknownArchitecture {
                path: file.path().to_path_buf(),
                component,
                key: key.to_string(),
                expected,
                found: found.map(<[usize]>::to_vec),
            });
        }
    }
    Ok(preset)
}
