//! UNet up blocks: diffusers `CrossAttnUpBlock2D` and `UpBlock2D` as one flat
//! module (the plain block simply has no `attentions`).

use burn::{config::Config, module::Module, tensor::backend::Backend, tensor::Tensor};

use crate::{
    capture::Recorder,
    down_block::CrossAttentionSettings,
    resnet::{ResnetBlock2D, ResnetBlock2DConfig},
    sampling::{Upsample2D, Upsample2DConfig},
    transformer::Transformer2DModel,
};

/// Configuration of [`UpBlock2D`], with diffusers' channel bookkeeping.
#[derive(Config, Debug)]
pub(crate) struct UpBlock2DConfig {
    /// Channels of the skip connection consumed by the block's last resnet
    /// (diffusers `in_channels`).
    pub in_channels: usize,
    /// Channels coming from the previous up block (or the mid block).
    pub prev_output_channels: usize,
    /// Channels of every resnet's output (this block's entry of the reversed `block_out_channels`).
    pub out_channels: usize,
    /// Width of the time embedding fed to each resnet.
    pub temb_channels: usize,
    /// Resnets in the block (`layers_per_block + 1`).
    pub num_layers: usize,
    /// Every block but the last ends with a ×2 upsampler.
    pub add_upsample: bool,
    /// `Some` for `CrossAttnUpBlock2D`, `None` for `UpBlock2D`.
    pub cross_attention: Option<CrossAttentionSettings>,
    /// GroupNorm groups (`norm_num_groups`).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm epsilon (`norm_eps`).
    #[config(default = 1e-5)]
    pub eps: f64,
}

impl UpBlock2DConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> UpBlock2D<B> {
        let resnets = (0..self.num_layers)
            .map(|i| {
                let skip_channels = if i + 1 == self.num_layers {
                    self.in_channels
                } else {
                    self.out_channels
                };
                let input_channels = if i == 0 {
                    self.prev_output_channels
                } else {
                    self.out_channels
                };
                ResnetBlock2DConfig::new(input_channels + skip_channels, self.out_channels)
                    .with_temb_channels(Some(self.temb_channels))
                    .with_groups(self.groups)
                    .with_eps(self.eps)
                    .init(device)
            })
            .collect();
        let attentions = match &self.cross_attention {
            Some(settings) => {
                let config = settings.transformer(self.out_channels, self.groups);
                (0..self.num_layers).map(|_| config.init(device)).collect()
            }
            None => Vec::new(),
        };
        let upsamplers = if self.add_upsample {
            vec![Upsample2DConfig::new(self.out_channels).init(device)]
        } else {
            Vec::new()
        };
        UpBlock2D {
            resnets,
            attentions,
            upsamplers,
        }
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (empty `attentions`).
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    /// `num_layers` resnets, each fed the running output concatenated with one skip connection
    /// (`resnets.i`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One spatial transformer after each resnet, or none (`attentions.i`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// Zero or one upsampler (a `Vec` so that the key stays `upsamplers.0`).
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock2D<B> {
    /// Runs the block, popping one skip connection per resnet from the end
    /// of `skips` and concatenating it to the channels.
    ///
    /// `upsample_size` is diffusers' `upsample_size`; `path` the block's
    /// diffusers path (`up_blocks.i`), used to name captured layers.
    // Mirrors diffusers' `CrossAttnUpBlock2D.forward` argument list one to one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        mut hidden: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        upsample_size: Option<[usize; 2]>,
        mut recorder: Option<&mut Recorder<'_, B>>,
        path: &str,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down blocks produce one skip connection per up-block resnet");
            hidden = resnet.forward(Tensor::cat(vec![hidden, skip], 1), Some(temb.clone()));
            if let Some(attention) = self.attentions.get(i) {
                let name = recorder.as_ref().map(|_| format!("{path}.attentions.{i}"));
                let capture = recorder.as_deref_mut().zip(name.as_deref());
                hidden = attention.forward_captured(hidden, context.clone(), capture);
            }
        }
        for upsampler in &self.upsamplers {
            hidden = upsampler.forward(hidden, upsample_size);
        }
        hidden
    }
}
