//! diffusers `ResnetBlock2D`, shared by the UNet (with a time embedding) and
//! the VAE encoder (without).

use burn::{
    config::Config,
    module::Module,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        GroupNorm, GroupNormConfig, Linear, PaddingConfig2d,
    },
    tensor::{activation::silu, backend::Backend, Tensor},
};

use crate::{cpu, precision::group_norm_silu};

/// Configuration of [`ResnetBlock2D`].
#[derive(Config, Debug)]
pub(crate) struct ResnetBlock2DConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels of the output; a 1×1 `conv_shortcut` is added when they differ from `in_channels`.
    pub out_channels: usize,
    /// Width of the time embedding; `None` in the VAE (no `time_emb_proj`).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups of `norm1` and `norm2` (32 in SD).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm epsilon: `norm_eps` (1e-5) in the UNet, 1e-6 in the VAE.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// The output is divided by this (`mid_block_scale_factor`, 1 in SD).
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> ResnetBlock2D<B> {
        let norm = |channels| {
            GroupNormConfig::new(self.groups, channels)
                .with_epsilon(self.eps)
                .init(device)
        };
        let conv3 = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1))
                .init(device)
        };
        ResnetBlock2D {
            norm1: norm(self.in_channels),
            conv1: conv3(self.in_channels, self.out_channels),
            time_emb_proj: self
                .temb_channels
                .map(|t| crate::torch_linear(t, self.out_channels).init(device)),
            norm2: norm(self.out_channels),
            conv2: conv3(self.out_channels, self.out_channels),
            conv_shortcut: (self.in_channels != self.out_channels).then(|| {
                Conv2dConfig::new([self.in_channels, self.out_channels], [1, 1]).init(device)
            }),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

/// diffusers `ResnetBlock2D` (`time_embedding_norm = "default"`, swish).
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// GroupNorm before `conv1`, followed by SiLU (diffusers `norm1`).
    pub norm1: GroupNorm<B>,
    /// First 3×3 convolution, `in_channels` → `out_channels` (diffusers `conv1`).
    pub conv1: Conv2d<B>,
    /// Projects the SiLU'd time embedding to `out_channels`, added per channel after `conv1`;
    /// `None` in the VAE (diffusers `time_emb_proj`).
    pub time_emb_proj: Option<Linear<B>>,
    /// GroupNorm before `conv2`, followed by SiLU (diffusers `norm2`).
    pub norm2: GroupNorm<B>,
    /// Second 3×3 convolution, `out_channels` → `out_channels` (diffusers `conv2`).
    pub conv2: Conv2d<B>,
    /// 1×1 convolution when the channel count changes.
    pub conv_shortcut: Option<Conv2d<B>>,
    /// The sum of shortcut and residual is divided by this (diffusers `output_scale_factor`; 1 in
    /// SD).
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// # Shapes
    /// - `input`: `[batch, in_channels, h, w]`; `temb`: `[batch, temb_channels]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(&self, input: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let hidden = cpu::conv2d(&self.conv1, group_norm_silu(&self.norm1, input.clone()));
        let hidden = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [batch, channels] = [hidden.dims()[0], hidden.dims()[1]];
                let temb = cpu::linear(proj, silu(temb));
                hidden + temb.reshape([batch, channels, 1, 1])
            }
            _ => hidden,
        };
        let hidden = cpu::conv2d(&self.conv2, group_norm_silu(&self.norm2, hidden));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => cpu::conv2d(conv, input),
            None => input,
        };
        let output = shortcut + hidden;
        if self.output_scale_factor == 1.0 {
            output
        } else {
            output.div_scalar(self.output_scale_factor)
        }
    }
}
