//! Stable Diffusion 1.x in Burn: the three networks DiffSeg needs (VAE
//! encoder, CLIP text encoder, UNet) with their attention maps exposed through
//! [`capture::AttentionSink`].
//!
//! Module field names mirror diffusers/transformers keys so that weights load
//! by path; the few exceptions are listed in [`keys`].

#![warn(missing_docs)]

pub mod attention;
pub mod capture;
pub mod check;
pub mod clip;
pub mod config;
pub mod down_block;
pub mod embeddings;
pub mod keys;
pub mod mid_block;
pub mod precision;
pub mod resnet;
pub mod sampling;
pub mod transformer;
pub mod unet;
pub mod up_block;
pub mod vae;
pub mod weights;

use std::path::Path;

/// The CPU kernels the networks run on burn-ndarray (see [`diffseg_cpu`]).
pub use diffseg_cpu as cpu;

use burn::nn::{LinearConfig, LinearLayout};
use burn::tensor::backend::Backend;

pub use capture::{AttentionLayer, AttentionSink, HeadReduction};
pub use check::{ensure_finite, NonFiniteError};
pub use clip::{empty_prompt_ids, ClipTextConfig, ClipTextModel, EMPTY_PROMPT_IDS};
pub use config::ConfigError;
pub use unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
pub use vae::{AutoencoderKL, AutoencoderKLConfig};

/// A Linear layer that stores its weight as PyTorch does, `[out, in]`, so
/// that loading maps the file's bytes without a transposed copy (the layer
/// multiplies by a transposed view of it).
pub(crate) fn torch_linear(d_input: usize, d_output: usize) -> LinearConfig {
    LinearConfig::new(d_input, d_output).with_layout(LinearLayout::Col)
}

/// The architectures of the three networks of an SD pipeline.
#[derive(Debug, Clone)]
pub struct StableDiffusionConfig {
    /// The VAE (only its encoder is built).
    pub vae: AutoencoderKLConfig,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextConfig,
    /// The denoising UNet.
    pub unet: UNet2DConditionModelConfig,
}

impl StableDiffusionConfig {
    /// SD 1.5 (and 1.4, which shares the architecture).
    pub fn sd_v1_5() -> Self {
        Self {
            vae: AutoencoderKLConfig::sd_v1_5(),
            text_encoder: ClipTextConfig::sd_v1_5(),
            unet: UNet2DConditionModelConfig::sd_v1_5(),
        }
    }

    /// Reads `vae/config.json`, `text_encoder/config.json` and
    /// `unet/config.json` of a diffusers pipeline folder.
    pub fn from_diffusers_dir(dir: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let dir = dir.as_ref();
        Ok(Self {
            vae: AutoencoderKLConfig::from_json_file(dir.join("vae/config.json"))?,
            text_encoder: ClipTextConfig::from_json_file(dir.join("text_encoder/config.json"))?,
            unet: UNet2DConditionModelConfig::from_json_file(dir.join("unet/config.json"))?,
        })
    }

    /// Builds the three networks with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> StableDiffusion<B> {
        StableDiffusion {
            vae: self.vae.init(device),
            text_encoder: self.text_encoder.init(device),
            unet: self.unet.init(device),
        }
    }
}

/// The three networks of an SD 1.x pipeline that DiffSeg runs. Cloning is
/// cheap: the clones share the parameters' storage (on every Burn backend).
#[derive(Debug, Clone)]
pub struct StableDiffusion<B: Backend> {
    /// The VAE encoder: image → latent (diffusers `vae/`).
    pub vae: AutoencoderKL<B>,
    /// The CLIP text encoder: token ids → text context (diffusers `text_encoder/`).
    pub text_encoder: ClipTextModel<B>,
    /// The UNet whose attention maps DiffSeg reads (diffusers `unet/`).
    pub unet: UNet2DConditionModel<B>,
}
