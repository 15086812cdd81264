//! The three networks a [`WeightsSource`](super::WeightsSource) loads, and
//! what each needs to know to be loaded: its config file, its part of a
//! pipeline's architecture, and what the keys of its file mean.

use std::fmt;
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;

use super::{diffusers, ldm, Component, KeyRole, Layout};
use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, StableDiffusionConfig};

/// A network of a Stable Diffusion pipeline that loads from a
/// [`WeightsSource`](super::WeightsSource): [`UNet2DConditionModel`],
/// [`AutoencoderKL`] (its encoder) or [`ClipTextModel`].
pub trait Network<B: Backend>: Module<B> {
    /// The architecture it is built from.
    type Config: NetworkConfig;

    /// Builds it with random weights (lazily allocated), to be overwritten
    /// by the file's; [`Error::InvalidConfig`] for a config that cannot be built.
    fn init(config: &Self::Config, device: &B::Device) -> Result<Self, Error>;
}

/// The architecture of one network: [`UNet2DConditionModelConfig`],
/// [`AutoencoderKLConfig`] or [`ClipTextConfig`]. Sealed: the loader knows
/// the key layout of these three only.
pub trait NetworkConfig: Clone + fmt::Debug + sealed::KeyMap {
    /// Which network of the pipeline this configures.
    const COMPONENT: Component;
}

pub(super) mod sealed {
    use super::*;

    /// What the loader needs from a network's config; not for implementing
    /// outside the crate.
    pub trait KeyMap: Sized {
        /// Reads a diffusers/transformers `config.json`.
        fn from_json_file(path: &Path) -> Result<Self, Error>;
        /// Its part of a pipeline's architecture.
        fn of(pipeline: &StableDiffusionConfig) -> &Self;
        /// What `key` of a file in `layout` means for the network built
        /// from this config.
        fn key_role(&self, layout: Layout, key: &str) -> KeyRole;
    }
}

impl<B: Backend> Network<B> for UNet2DConditionModel<B> {
    type Config = UNet2DConditionModelConfig;

    fn init(config: &Self::Config, device: &B::Device) -> Result<Self, Error> {
        config.init(device)
    }
}

impl NetworkConfig for UNet2DConditionModelConfig {
    const COMPONENT: Component = Component::Unet;
}

impl sealed::KeyMap for UNet2DConditionModelConfig {
    fn from_json_file(path: &Path) -> Result<Self, Error> {
        UNet2DConditionModelConfig::from_json_file(path)
    }

    fn of(pipeline: &StableDiffusionConfig) -> &Self {
        &pipeline.unet
    }

    fn key_role(&self, layout: Layout, key: &str) -> KeyRole {
        match layout {
            Layout::Diffusers => diffusers::key_role(Component::Unet, key),
            // LDM numbers the UNet's blocks by `layers_per_block`.
            Layout::Ldm => ldm::unet_key_role(key, self.layers_per_block),
        }
    }
}

impl<B: Backend> Network<B> for AutoencoderKL<B> {
    type Config = AutoencoderKLConfig;

    fn init(config: &Self::Config, device: &B::Device) -> Result<Self, Error> {
        config.init(device)
    }
}

impl NetworkConfig for AutoencoderKLConfig {
    const COMPONENT: Component = Component::Vae;
}

impl sealed::KeyMap for AutoencoderKLConfig {
    fn from_json_file(path: &Path) -> Result<Self, Error> {
        AutoencoderKLConfig::from_json_file(path)
    }

    fn of(pipeline: &StableDiffusionConfig) -> &Self {
        &pipeline.vae
    }

    fn key_role(&self, layout: Layout, key: &str) -> KeyRole {
        match layout {
            Layout::Diffusers => diffusers::key_role(Component::Vae, key),
            Layout::Ldm => ldm::vae_key_role(key),
        }
    }
}

impl<B: Backend> Network<B> for ClipTextModel<B> {
    type Config = ClipTextConfig;

    fn init(config: &Self::Config, device: &B::Device) -> Result<Self, Error> {
        config.init(device)
    }
}

impl NetworkConfig for ClipTextConfig {
    const COMPONENT: Component = Component::TextEncoder;
}

impl sealed::KeyMap for ClipTextConfig {
    fn from_json_file(path: &Path) -> Result<Self, Error> {
        ClipTextConfig::from_json_file(path)
    }

    fn of(pipeline: &StableDiffusionConfig) -> &Self {
        &pipeline.text_encoder
    }

    fn key_role(&self, layout: Layout, key: &str) -> KeyRole {
        match layout {
            Layout::Diffusers => diffusers::key_role(Component::TextEncoder, key),
            Layout::Ldm => ldm::text_encoder_key_role(key),
        }
    }
}
