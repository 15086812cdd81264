//! The encoder half of diffusers `AutoencoderKL` (SD's VAE): image to latent.
//! The decoder is not needed by DiffSeg and is not ported.

use std::path::Path;

use burn::{
    config::Config,
    module::Module,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        GroupNorm, GroupNormConfig, PaddingConfig2d,
    },
    tensor::{backend::Backend, Tensor},
};
use serde::Deserialize;

use crate::{
    attention::{Attention, AttentionConfig},
    config::{
        check_count, check_divides, check_float, read_json, MAX_BLOCKS, MAX_LAYERS_PER_BLOCK,
        MAX_WIDTH,
    },
    cpu,
    precision::group_norm_silu,
    resnet::{ResnetBlock2D, ResnetBlock2DConfig},
    sampling::{Downsample2D, Downsample2DConfig},
    Error,
};

/// The VAE's normalisation epsilon, fixed by diffusers' `Encoder`.
const VAE_EPS: f64 = 1e-6;

/// Architecture of the VAE encoder, normalised from diffusers' `vae/config.json`.
#[derive(Config, Debug)]
pub struct AutoencoderKLConfig {
    /// Image channels (`in_channels`; 3, RGB).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Output channels of each down block (`block_out_channels`; `[128, 256, 512, 512]` for SD
    /// 1.x).
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (`layers_per_block`; 2 for SD 1.x).
    #[config(default = 2)]
    pub layers_per_block: usize,
    /// Channels of the latent (`latent_channels`; 4); the encoder outputs twice as many (mean and
    /// log-variance).
    #[config(default = 4)]
    pub latent_channels: usize,
    /// GroupNorm groups throughout the encoder (`norm_num_groups`; 32).
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Latents are `mean × scaling_factor` (0.18215 for SD 1.x).
    #[config(default = 0.18215)]
    pub scaling_factor: f64,
    /// Whether a 1×1 `quant_conv` follows the encoder (`use_quant_conv`; true for SD).
    #[config(default = true)]
    pub use_quant_conv: bool,
    /// Whether the mid block has its spatial self-attention (`mid_block_add_attention`; true for
    /// SD).
    #[config(default = true)]
    pub mid_block_add_attention: bool,
}

#[derive(Deserialize)]
struct DiffusersVaeConfig {
    #[serde(default = "default_in_channels")]
    in_channels: usize,
    down_block_types: Vec<String>,
    block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    layers_per_block: usize,
    #[serde(default = "default_act_fn")]
    act_fn: String,
    #[serde(default = "default_latent_channels")]
    latent_channels: usize,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_scaling_factor")]
    scaling_factor: f64,
    #[serde(default = "default_true")]
    use_quant_conv: bool,
    #[serde(default = "default_true")]
    mid_block_add_attention: bool,
}

fn default_in_channels() -> usize {
    3
}
fn default_layers_per_block() -> usize {
    1
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_latent_channels() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

impl AutoencoderKLConfig {
    /// SD 1.x's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    pub fn sd_v1_5() -> Self {
        Self::new(vec![128, 256, 512, 512])
    }

    /// Reads a diffusers `vae/config.json` (unknown fields are ignored).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let raw: DiffusersVaeConfig = read_json(path)?;
        let unsupported = |reason: String| Error::UnsupportedConfig {
            path: path.to_path_buf(),
            reason,
        };
        if raw.act_fn != "silu" {
            return Err(unsupported(format!("act_fn = {}", raw.act_fn)));
        }
        if let Some(other) = raw
            .down_block_types
            .iter()
            .find(|t| t.as_str() != "DownEncoderBlock2D")
        {
            return Err(unsupported(format!("down block type {other}")));
        }
        if raw.down_block_types.len() != raw.block_out_channels.len() {
            return Err(unsupported(
                "down_block_types and block_out_channels differ in length".into(),
            ));
        }
        let config = Self::new(raw.block_out_channels)
            .with_in_channels(raw.in_channels)
            .with_layers_per_block(raw.layers_per_block)
            .with_latent_channels(raw.latent_channels)
            .with_norm_num_groups(raw.norm_num_groups)
            .with_scaling_factor(raw.scaling_factor)
            .with_use_quant_conv(raw.use_quant_conv)
            .with_mid_block_add_attention(raw.mid_block_add_attention);
        config
            .validate()
            .map_err(|error| error.in_config_file(path))?;
        Ok(config)
    }

    /// Checks that the encoder can be built from this config, before
    /// anything is allocated: every size positive and within
    /// [`crate::limits`], `norm_num_groups` dividing every block's channels,
    /// a finite scaling factor. [`Self::init`] and the loader call it; the
    /// error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        check_count("in_channels", self.in_channels, MAX_WIDTH)?;
        check_count("norm_num_groups", self.norm_num_groups, MAX_WIDTH)?;
        check_count(
            "block_out_channels (blocks)",
            self.block_out_channels.len(),
            MAX_BLOCKS,
        )?;
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            let field = format!("block_out_channels[{i}]");
            check_count(&field, channels, MAX_WIDTH)?;
            check_divides("norm_num_groups", self.norm_num_groups, &field, channels)?;
        }
        check_count(
            "layers_per_block",
            self.layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        check_count("latent_channels", self.latent_channels, MAX_WIDTH)?;
        check_float("scaling_factor", self.scaling_factor, false)
    }

    /// Builds the encoder with random weights (allocated lazily, on first
    /// use), once [`Self::validate`] accepts the config.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<AutoencoderKL<B>, Error> {
        self.validate()?;
        let channels = &self.block_out_channels;
        let last = channels[channels.len() - 1];
        let groups = self.norm_num_groups;
        let conv3 = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1))
                .init(device)
        };
        let resnet = |c_in, c_out| {
            ResnetBlock2DConfig::new(c_in, c_out)
                .with_groups(groups)
                .with_eps(VAE_EPS)
                .init(device)
        };
        let down_blocks = (0..channels.len())
            .map(|i| {
                let in_channels = if i == 0 { channels[0] } else { channels[i - 1] };
                DownEncoderBlock2D {
                    resnets: (0..self.layers_per_block)
                        .map(|j| {
                            resnet(if j == 0 { in_channels } else { channels[i] }, channels[i])
                        })
                        .collect(),
                    downsamplers: if i + 1 < channels.len() {
                        vec![Downsample2DConfig::new(channels[i])
                            .with_padding(0)
                            .init(device)]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        // One head spanning all channels (`attention_head_dim = channels`).
        let attentions = if self.mid_block_add_attention {
            vec![AttentionConfig::new(last, 1, last)
                .with_group_norm(Some((groups, VAE_EPS)))
                .with_bias(true)
                .init(device)]
        } else {
            Vec::new()
        };
        let double_latent = 2 * self.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder {
                conv_in: conv3(self.in_channels, channels[0]),
                down_blocks,
                mid_block: VaeMidBlock {
                    resnets: vec![resnet(last, last), resnet(last, last)],
                    attentions,
                },
                conv_norm_out: GroupNormConfig::new(groups, last)
                    .with_epsilon(VAE_EPS)
                    .init(device),
                conv_out: conv3(last, double_latent),
            },
            quant_conv: self
                .use_quant_conv
                .then(|| Conv2dConfig::new([double_latent, double_latent], [1, 1]).init(device)),
            scaling_factor: self.scaling_factor,
            latent_channels: self.latent_channels,
        })
    }
}

/// diffusers `DownEncoderBlock2D`: resnets without time embedding, then an
/// asymmetrically padded stride-2 downsampler (all blocks but the last).
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// The block's `layers_per_block` resnets (`resnets.i`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Zero or one downsampler (a `Vec` so that the key stays `downsamplers.0`).
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// diffusers `UNetMidBlock2D` as the VAE uses it: resnet, spatial
/// self-attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMidBlock<B: Backend> {
    /// The resnets before and after the attention (`resnets.0`, `resnets.1`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty when `mid_block_add_attention` is false.
    pub attentions: Vec<Attention<B>>,
}

/// diffusers `Encoder` (`double_z = True`: outputs mean and log-variance).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// 3×3 convolution from the image to `block_out_channels[0]` channels (diffusers `conv_in`).
    pub conv_in: Conv2d<B>,
    /// Down blocks; each but the last halves the resolution (diffusers `down_blocks.i`).
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Resnet, attention, resnet at the lowest resolution (diffusers `mid_block`).
    pub mid_block: VaeMidBlock<B>,
    /// GroupNorm (then SiLU) before `conv_out` (diffusers `conv_norm_out`).
    pub conv_norm_out: GroupNorm<B>,
    /// 3×3 convolution to the `2 · latent_channels` moments (diffusers `conv_out`).
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// - `image`: `[batch, 3, H, W]`; output: `[batch, 2·latent, H/8, W/8]` (for 4 blocks)
    pub fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut hidden = cpu::conv2d(&self.conv_in, image);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                hidden = resnet.forward(hidden, None);
            }
            for downsampler in &block.downsamplers {
                hidden = downsampler.forward(hidden);
            }
        }
        let mid = &self.mid_block;
        hidden = mid.resnets[0].forward(hidden, None);
        for (attention, resnet) in mid.attentions.iter().zip(&mid.resnets[1..]) {
            hidden = attention.forward_spatial(hidden);
            hidden = resnet.forward(hidden, None);
        }
        if mid.attentions.is_empty() {
            hidden = mid.resnets[1].forward(hidden, None);
        }
        cpu::conv2d(&self.conv_out, group_norm_silu(&self.conv_norm_out, hidden))
    }
}

/// The encoder part of diffusers `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// The encoder network (diffusers `encoder`).
    pub encoder: Encoder<B>,
    /// 1×1 convolution over the moments; `None` when `use_quant_conv` is false (diffusers
    /// `quant_conv`).
    pub quant_conv: Option<Conv2d<B>>,
    /// Multiplier of the posterior mean that gives the latent (config `scaling_factor`; 0.18215 for
    /// SD 1.x).
    pub scaling_factor: f64,
    /// Channels of the latent; the first half of the moments is the mean (not a weight).
    pub latent_channels: usize,
}

impl<B: Backend> AutoencoderKL<B> {
    /// The posterior's moments: mean and log-variance stacked on the channels
    /// (what diffusers' `DiagonalGaussianDistribution` is built from).
    ///
    /// # Shapes
    /// - `image`: `[batch, 3, H, W]` in [-1, 1]; output: `[batch, 2·latent, H/8, W/8]`
    pub fn moments(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let moments = self.encoder.forward(image);
        match &self.quant_conv {
            Some(conv) => cpu::conv2d(conv, moments),
            None => moments,
        }
    }

    /// Method step 1: the latent is the posterior **mean** times
    /// `scaling_factor`; nothing is sampled.
    ///
    /// # Shapes
    /// - `image`: `[batch, 3, H, W]` in [-1, 1]; output: `[batch, latent, H/8, W/8]`
    pub fn encode_latent(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        self.moments(image)
            .narrow(1, 0, self.latent_channels)
            .mul_scalar(self.scaling_factor)
    }
}
