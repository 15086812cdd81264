//! diffusers `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.

use burn::{config::Config, module::Module, tensor::backend::Backend, tensor::Tensor};

use crate::{
    capture::Recorder,
    down_block::CrossAttentionSettings,
    resnet::{ResnetBlock2D, ResnetBlock2DConfig},
    transformer::Transformer2DModel,
};

/// Configuration of [`UNetMidBlock2DCrossAttn`].
#[derive(Config, Debug)]
pub(crate) struct UNetMidBlock2DCrossAttnConfig {
    /// Channels in and out (the last `block_out_channels` entry; 1280 for SD 1.x).
    pub channels: usize,
    /// Width of the time embedding fed to each resnet.
    pub temb_channels: usize,
    /// Heads and context width of the spatial transformers.
    pub cross_attention: CrossAttentionSettings,
    /// Number of (transformer, resnet) pairs after the first resnet.
    #[config(default = 1)]
    pub num_layers: usize,
    /// GroupNorm groups (`norm_num_groups`).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm epsilon (`norm_eps`).
    #[config(default = 1e-5)]
    pub eps: f64,
    /// `mid_block_scale_factor`, the resnets' output divisor.
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl UNetMidBlock2DCrossAttnConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> UNetMidBlock2DCrossAttn<B> {
        let resnet = ResnetBlock2DConfig::new(self.channels, self.channels)
            .with_temb_channels(Some(self.temb_channels))
            .with_groups(self.groups)
            .with_eps(self.eps)
            .with_output_scale_factor(self.output_scale_factor);
        let transformer = self.cross_attention.transformer(self.channels, self.groups);
        UNetMidBlock2DCrossAttn {
            resnets: (0..=self.num_layers).map(|_| resnet.init(device)).collect(),
            attentions: (0..self.num_layers)
                .map(|_| transformer.init(device))
                .collect(),
        }
    }
}

/// `resnets[0]`, then `attentions[i]` followed by `resnets[i + 1]`.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    /// `num_layers + 1` resnets (`resnets.i`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `num_layers` spatial transformers, each between two resnets (`attentions.i`).
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> UNetMidBlock2DCrossAttn<B> {
    /// # Shapes
    /// - `hidden`, output: `[batch, channels, h, w]`
    pub(crate) fn forward(
        &self,
        hidden: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        mut recorder: Option<&mut Recorder<'_, B>>,
    ) -> Tensor<B, 4> {
        let mut hidden = self.resnets[0].forward(hidden, Some(temb.clone()));
        for (i, (attention, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            let name = recorder
                .as_ref()
                .map(|_| format!("mid_block.attentions.{i}"));
            let capture = recorder.as_deref_mut().zip(name.as_deref());
            hidden = attention.forward_captured(hidden, context.clone(), capture);
            hidden = resnet.forward(hidden, Some(temb.clone()));
        }
        hidden
    }
}
