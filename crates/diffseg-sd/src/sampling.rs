//! diffusers `Downsample2D` and `Upsample2D` (the `use_conv=True` variants SD uses).

use crate::cpu;

use burn::{
    config::Config,
    module::Module,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        PaddingConfig2d,
    },
    tensor::{
        backend::Backend,
        module::interpolate,
        ops::{InterpolateMode, InterpolateOptions},
        Tensor,
    },
};

/// Configuration of [`Downsample2D`].
#[derive(Config, Debug)]
pub(crate) struct Downsample2DConfig {
    /// Channels in and out.
    pub channels: usize,
    /// Symmetric convolution padding: 1 in the UNet (`downsample_padding`),
    /// 0 in the VAE, where diffusers pads right and bottom by one instead.
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> Downsample2D<B> {
        Downsample2D {
            conv: Conv2dConfig::new([self.channels, self.channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(self.padding, self.padding))
                .init(device),
            padding: self.padding,
        }
    }
}

/// Stride-2 3×3 convolution halving the resolution.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The stride-2 3×3 convolution (diffusers `conv`).
    pub conv: Conv2d<B>,
    /// Symmetric padding of `conv`; 0 means diffusers' right/bottom padding by one is applied
    /// before it (not a weight).
    pub padding: usize,
}

impl<B: Backend> Downsample2D<B> {
    /// # Shapes
    /// - `input`: `[batch, c, h, w]`; output: `[batch, c, ⌈h/2⌉, ⌈w/2⌉]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        // With padding 0 diffusers pads (left 0, right 1, top 0, bottom 1):
        // https://github.com/huggingface/diffusers/blob/v0.32.0/src/diffusers/models/downsampling.py#L141
        let input = if self.padding == 0 {
            input.pad((0, 1, 0, 1), burn::tensor::ops::PadMode::Constant(0.0))
        } else {
            input
        };
        cpu::conv2d(&self.conv, input)
    }
}

/// Configuration of [`Upsample2D`].
#[derive(Config, Debug)]
pub(crate) struct Upsample2DConfig {
    /// Channels in and out.
    pub channels: usize,
}

impl Upsample2DConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> Upsample2D<B> {
        Upsample2D {
            conv: Conv2dConfig::new([self.channels, self.channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1))
                .init(device),
        }
    }
}

/// Nearest-neighbour ×2 upsampling followed by a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The 3×3 convolution after the upsampling (diffusers `conv`).
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// `size` overrides the ×2 target, as diffusers' `upsample_size` does when
    /// the latent side is not a multiple of 2^(number of upsamplers).
    ///
    /// # Shapes
    /// - `input`: `[batch, c, h, w]`; output: `[batch, c, 2h, 2w]` or `[batch, c, size]`
    pub fn forward(&self, input: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, height, width] = input.dims();
        let size = size.unwrap_or([2 * height, 2 * width]);
        let upsampled = interpolate(
            input,
            size,
            InterpolateOptions::new(InterpolateMode::Nearest),
        );
        cpu::conv2d(&self.conv, upsampled)
    }
}
