//! UNet down blocks: diffusers `CrossAttnDownBlock2D` and `DownBlock2D` as one
//! flat module (the plain block simply has no `attentions`).

use burn::{config::Config, module::Module, tensor::backend::Backend, tensor::Tensor};

use crate::{
    capture::Recorder,
    resnet::{ResnetBlock2D, ResnetBlock2DConfig},
    sampling::{Downsample2D, Downsample2DConfig},
    transformer::{Transformer2DModel, Transformer2DModelConfig},
};

/// Settings of the spatial transformers in a cross-attention block.
#[derive(Config, Debug)]
pub(crate) struct CrossAttentionSettings {
    /// Heads of every attention in the block; each head gets `channels / num_attention_heads`
    /// channels (8 for SD 1.x).
    pub num_attention_heads: usize,
    /// Width of the text context the cross-attention reads (768 for SD 1.x).
    pub cross_attention_dim: usize,
    /// Transformer blocks per `Transformer2DModel`.
    #[config(default = 1)]
    pub transformer_layers: usize,
    /// `proj_in`/`proj_out` are linear layers (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl CrossAttentionSettings {
    /// The spatial transformer for a block with `channels` channels; diffusers
    /// gives each head `channels / num_attention_heads` channels.
    pub(crate) fn transformer(&self, channels: usize, groups: usize) -> Transformer2DModelConfig {
        Transformer2DModelConfig::new(
            channels,
            self.num_attention_heads,
            channels / self.num_attention_heads,
            self.cross_attention_dim,
        )
        .with_num_layers(self.transformer_layers)
        .with_norm_num_groups(groups)
        .with_use_linear_projection(self.use_linear_projection)
    }
}

/// Configuration of [`DownBlock2D`].
#[derive(Config, Debug)]
pub(crate) struct DownBlock2DConfig {
    /// Channels entering the block (the previous block's output, or `conv_in`'s).
    pub in_channels: usize,
    /// Channels of every resnet's output (this block's `block_out_channels` entry).
    pub out_channels: usize,
    /// Width of the time embedding fed to each resnet (1280 for SD 1.x).
    pub temb_channels: usize,
    /// Resnets (and transformers) in the block (`layers_per_block`).
    pub num_layers: usize,
    /// A stride-2 downsampler closes every block but the last.
    pub add_downsample: bool,
    /// `Some` for `CrossAttnDownBlock2D`, `None` for `DownBlock2D`.
    pub cross_attention: Option<CrossAttentionSettings>,
    /// GroupNorm groups (`norm_num_groups`; 32).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm epsilon (`norm_eps`; 1e-5).
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Padding of the downsampling convolution (`downsample_padding`).
    #[config(default = 1)]
    pub downsample_padding: usize,
}

impl DownBlock2DConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> DownBlock2D<B> {
        let resnets = (0..self.num_layers)
            .map(|i| {
                let in_channels = if i == 0 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                ResnetBlock2DConfig::new(in_channels, self.out_channels)
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
        let downsamplers = if self.add_downsample {
            vec![Downsample2DConfig::new(self.out_channels)
                .with_padding(self.downsample_padding)
                .init(device)]
        } else {
            Vec::new()
        };
        DownBlock2D {
            resnets,
            attentions,
            downsamplers,
        }
    }
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (empty `attentions`).
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    /// The block's `num_layers` resnets (`resnets.i`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One spatial transformer after each resnet, or none.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// Zero or one downsampler (a `Vec` so that the key stays `downsamplers.0`).
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock2D<B> {
    /// Runs the block; returns the output and the skip connections it
    /// produces (one per resnet plus one after the downsampler).
    ///
    /// `path` is the block's diffusers path (`down_blocks.i`), used to name
    /// captured attention layers.
    pub(crate) fn forward(
        &self,
        mut hidden: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        mut recorder: Option<&mut Recorder<'_, B>>,
        path: &str,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut skips = Vec::with_capacity(self.resnets.len() + self.downsamplers.len());
        for (i, resnet) in self.resnets.iter().enumerate() {
            hidden = resnet.forward(hidden, Some(temb.clone()));
            if let Some(attention) = self.attentions.get(i) {
                let name = recorder.as_ref().map(|_| format!("{path}.attentions.{i}"));
                let capture = recorder.as_deref_mut().zip(name.as_deref());
                hidden = attention.forward_captured(hidden, context.clone(), capture);
            }
            skips.push(hidden.clone());
        }
        for downsampler in &self.downsamplers {
            hidden = downsampler.forward(hidden);
            skips.push(hidden.clone());
        }
        (hidden, skips)
    }

    /// Runs the block up to its last transformer's last self-attention and
    /// returns that attention's output (see
    /// [`crate::UNet2DConditionModel::diffcut_features`]); the caller checks
    /// that the block has transformers.
    ///
    /// # Shapes
    /// - output: `[batch, h, w, channels]`
    pub(crate) fn last_self_attention(
        &self,
        mut hidden: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let last = self.attentions.len() - 1;
        for (resnet, attention) in self.resnets.iter().zip(&self.attentions).take(last) {
            hidden = resnet.forward(hidden, Some(temb.clone()));
            hidden = attention.forward(hidden, context.clone());
        }
        hidden = self.resnets[last].forward(hidden, Some(temb));
        self.attentions[last].last_self_attention(hidden, context)
    }
}
