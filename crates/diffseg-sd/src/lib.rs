//! Stable Diffusion 1.x in Burn: the three networks DiffSeg needs (VAE
//! encoder, CLIP text encoder, UNet) with their attention maps exposed through
//! [`capture::AttentionSink`].
//!
//! Weights load from a diffusers folder or a single-file LDM checkpoint
//! ([`WeightsSource`]): one network with [`WeightsSource::load`], all three
//! with [`StableDiffusion::load`]. Module field names mirror
//! diffusers/transformers keys so that weights load by path; the few
//! exceptions are listed in the crate's remap table (`keys.rs`). Every
//! failure is an [`Error`].

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

mod attention;
mod capture;
mod check;
mod clip;
mod config;
mod down_block;
mod embeddings;
mod error;
mod keys;
mod mid_block;
mod naming;
mod precision;
mod resnet;
mod sampling;
mod schedule;
mod tokenizer;
mod transformer;
mod unet;
mod up_block;
mod vae;
mod weights;

#[cfg(test)]
mod burn_ops_tests;

/// The CPU kernels the networks run on burn-ndarray (see [`diffseg_cpu`]).
pub use diffseg_cpu as cpu;

use burn::nn::{LinearConfig, LinearLayout};
use burn::tensor::backend::Backend;

pub use capture::{AttentionLayer, AttentionSink, HeadReduction};
pub use check::ensure_finite;
pub use clip::{
    empty_prompt_ids, prompt_ids_tensor, ClipActivation, ClipTextConfig, ClipTextModel,
    EMPTY_PROMPT_IDS, MAX_TOKENS,
};
pub use config::limits;
pub use error::{Error, MismatchReport, ShapeMismatch};
pub use naming::{
    encode_vocabulary, entry_token_mean, layer_entry_attention, token_attention,
    CrossAttentionQueries, LayerEntryAttention, PromptChunk, VocabularyKeys,
};
pub use precision::StableNorm;
pub use schedule::{add_noise, alpha_cumprod, TRAIN_TIMESTEPS};
pub use tokenizer::{ClipTokenizer, TOKENIZER_FILES};
pub use unet::{UNet2DConditionModel, UNet2DConditionModelConfig, UNetBlockKind};
pub use vae::{AutoencoderKL, AutoencoderKLConfig};
pub use weights::{Component, Network, NetworkConfig, OpenedWeights, Variant, WeightsSource};

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

    /// The side of the square image the model was trained on: the UNet's
    /// latent `sample_size` times the VAE's downscaling factor (2 per VAE
    /// block after the first). SD 1.x: 64 × 8 = 512. Saturates for a config
    /// [`Self::validate`] refuses.
    pub fn input_size(&self) -> usize {
        let shift = self.vae.block_out_channels.len().saturating_sub(1);
        let factor = u32::try_from(shift)
            .ok()
            .and_then(|shift| 1usize.checked_shl(shift))
            .unwrap_or(usize::MAX);
        self.unet.sample_size.saturating_mul(factor)
    }

    /// Checks each network's config ([`UNet2DConditionModelConfig::validate`],
    /// [`AutoencoderKLConfig::validate`], [`ClipTextConfig::validate`]) and
    /// that they fit together: the UNet reads the text encoder's width and
    /// the VAE's latent channels, and the input side stays within
    /// [`limits::MAX_INPUT_SIZE`] pixels.
    pub fn validate(&self) -> Result<(), Error> {
        self.vae.validate()?;
        self.text_encoder.validate()?;
        self.unet.validate()?;
        if self.unet.cross_attention_dim != self.text_encoder.hidden_size {
            return Err(config::invalid(
                "cross_attention_dim",
                self.unet.cross_attention_dim,
                format!(
                    "must equal the text encoder's hidden_size = {}",
                    self.text_encoder.hidden_size
                ),
            ));
        }
        if self.unet.in_channels != self.vae.latent_channels {
            return Err(config::invalid(
                "in_channels",
                self.unet.in_channels,
                format!(
                    "must equal the VAE's latent_channels = {}",
                    self.vae.latent_channels
                ),
            ));
        }
        let input_size = self.input_size();
        if input_size > limits::MAX_INPUT_SIZE {
            return Err(config::invalid(
                "sample_size",
                self.unet.sample_size,
                format!(
                    "times the VAE's downscaling is a {input_size}-pixel input, more than {}",
                    limits::MAX_INPUT_SIZE
                ),
            ));
        }
        Ok(())
    }

    /// Builds the three networks with random weights (allocated lazily, on
    /// first use), once [`Self::validate`] accepts the configs.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<StableDiffusion<B>, Error> {
        self.validate()?;
        Ok(StableDiffusion {
            vae: self.vae.init(device)?,
            text_encoder: self.text_encoder.init(device)?,
            unet: self.unet.init(device)?,
            mapped_files: Vec::new(),
        })
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
    /// The weights files the parameters are windows on.
    mapped_files: Vec<weights::MappedFile>,
}
