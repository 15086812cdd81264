//! diffusers `Transformer2DModel` (the UNet's spatial transformer) with its
//! `BasicTransformerBlock`s and GEGLU feed-forward.

use burn::{
    config::Config,
    module::Module,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    },
    tensor::{activation::gelu, backend::Backend, Tensor},
};

use crate::{
    attention::{Attention, AttentionConfig, Capture},
    capture::{AttentionKind, AttentionLayer, Recorder},
    cpu,
    precision::StableNorm,
};

/// Configuration of [`Transformer2DModel`].
#[derive(Config, Debug)]
pub(crate) struct Transformer2DModelConfig {
    /// Channels in and out (the block's channel count).
    pub in_channels: usize,
    /// Heads of each attention layer.
    pub num_attention_heads: usize,
    /// Channels per head; `num_attention_heads · attention_head_dim` is the inner width.
    pub attention_head_dim: usize,
    /// Width of the text context (768 for SD 1.x).
    pub cross_attention_dim: usize,
    /// Number of `BasicTransformerBlock`s (`transformer_layers_per_block`).
    #[config(default = 1)]
    pub num_layers: usize,
    /// Groups of the input GroupNorm (`norm_num_groups`; 32).
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// `proj_in`/`proj_out` are linear layers (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl Transformer2DModelConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> Transformer2DModel<B> {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let projection = |c_in, c_out| {
            if self.use_linear_projection {
                Projection::Linear(crate::torch_linear(c_in, c_out).init(device))
            } else {
                Projection::Conv(Conv2dConfig::new([c_in, c_out], [1, 1]).init(device))
            }
        };
        let block = BasicTransformerBlockConfig::new(
            inner,
            self.num_attention_heads,
            self.attention_head_dim,
            self.cross_attention_dim,
        );
        Transformer2DModel {
            // diffusers hard-codes eps 1e-6 here, whatever `norm_eps` says.
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: projection(self.in_channels, inner),
            transformer_blocks: (0..self.num_layers).map(|_| block.init(device)).collect(),
            proj_out: projection(inner, self.in_channels),
        }
    }
}

/// `proj_in`/`proj_out` of a [`Transformer2DModel`]: a 1×1 convolution (SD
/// 1.x) or a linear layer (`use_linear_projection`, SD 2.x).
///
/// This is an enum module: load with burn-store's `skip_enum_variants(true)`
/// so that the variant name does not appear in the key (see [`crate::keys`]).
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// A 1×1 convolution (SD 1.x).
    Conv(Conv2d<B>),
    /// A linear layer applied to each position's channels (`use_linear_projection`, SD 2.x).
    Linear(Linear<B>),
}

impl<B: Backend> Projection<B> {
    /// Applies the projection to a feature map.
    ///
    /// # Shapes
    /// - `input`: `[batch, c_in, h, w]`; output: `[batch, c_out, h, w]`
    fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Projection::Conv(conv) => cpu::conv2d(conv, input),
            Projection::Linear(linear) => {
                let [batch, channels, height, width] = input.dims();
                let tokens = input
                    .reshape([batch, channels, height * width])
                    .swap_dims(1, 2);
                let out = cpu::linear(linear, tokens);
                let out_channels = out.dims()[2];
                out.swap_dims(1, 2)
                    .reshape([batch, out_channels, height, width])
            }
        }
    }
}

/// diffusers `Transformer2DModel` for continuous inputs.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// GroupNorm of the input, epsilon fixed at 1e-6 as in diffusers (diffusers `norm`).
    pub norm: GroupNorm<B>,
    /// Projection of the normalised input to the inner width (diffusers `proj_in`).
    pub proj_in: Projection<B>,
    /// The blocks run over the `h·w` tokens (diffusers `transformer_blocks.i`).
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Projection back to `in_channels`, added to the input (diffusers `proj_out`).
    pub proj_out: Projection<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// # Shapes
    /// - `input`: `[batch, channels, h, w]`; `context`: `[batch, tokens, cross_attention_dim]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(&self, input: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        self.forward_captured(input, context, None)
    }

    /// `path` is this module's diffusers path (e.g. `down_blocks.0.attentions.1`),
    /// used to name the captured layers.
    pub(crate) fn forward_captured(
        &self,
        input: Tensor<B, 4>,
        context: Tensor<B, 3>,
        mut capture: Option<(&mut Recorder<'_, B>, &str)>,
    ) -> Tensor<B, 4> {
        let [batch, _, height, width] = input.dims();
        let mut tokens = self.tokens_in(input.clone());
        let inner = tokens.dims()[2];
        for (index, block) in self.transformer_blocks.iter().enumerate() {
            let block_capture = capture.as_mut().map(|(recorder, path)| {
                let layer = AttentionLayer {
                    index: recorder.next_block_index(),
                    name: format!("{path}.transformer_blocks.{index}"),
                    height,
                    width,
                    heads: block.attn1.heads,
                };
                (&mut **recorder, layer)
            });
            tokens = block.forward_captured(tokens, context.clone(), block_capture);
        }
        let hidden = tokens
            .swap_dims(1, 2)
            .reshape([batch, inner, height, width]);
        self.proj_out.forward(hidden) + input
    }
    /// The output of the last block's self-attention (before its residual
    /// add), skipping the rest of the last block and `proj_out`.
    ///
    /// # Shapes
    /// - `input`: `[batch, channels, h, w]`; output: `[batch, h, w, inner]`
    pub(crate) fn last_self_attention(
        &self,
        input: Tensor<B, 4>,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let [batch, _, height, width] = input.dims();
        let mut tokens = self.tokens_in(input);
        let (last, before) = self
            .transformer_blocks
            .split_last()
            .expect("a spatial transformer has at least one block");
        for block in before {
            tokens = block.forward(tokens, context.clone());
        }
        let out = last.self_attention(tokens);
        let inner = out.dims()[2];
        out.reshape([batch, height, width, inner])
    }

    /// The normalised, projected input as `[batch, h·w, inner]` tokens in
    /// row-major order over the grid.
    fn tokens_in(&self, input: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, _, height, width] = input.dims();
        let hidden = self.proj_in.forward(self.norm.forward_stable(input));
        let inner = hidden.dims()[1];
        hidden
            .reshape([batch, inner, height * width])
            .swap_dims(1, 2)
    }
}

/// Configuration of [`BasicTransformerBlock`].
#[derive(Config, Debug)]
pub(crate) struct BasicTransformerBlockConfig {
    /// Token width (the spatial transformer's inner width).
    pub dim: usize,
    /// Heads of both attentions.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Width of the text context `attn2` reads (768 for SD 1.x).
    pub cross_attention_dim: usize,
    /// LayerNorm epsilon (diffusers `norm_eps`, default 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl BasicTransformerBlockConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> BasicTransformerBlock<B> {
        let norm = || {
            LayerNormConfig::new(self.dim)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let attention = |cross| {
            AttentionConfig::new(self.dim, self.num_attention_heads, self.attention_head_dim)
                .with_cross_attention_dim(cross)
                .init(device)
        };
        BasicTransformerBlock {
            norm1: norm(),
            attn1: attention(None),
            norm2: norm(),
            attn2: attention(Some(self.cross_attention_dim)),
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim).init(device),
        }
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention and
/// feed-forward, each pre-normalised and residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// LayerNorm before `attn1`.
    pub norm1: LayerNorm<B>,
    /// Self-attention over the spatial tokens: DiffSeg's self-attention maps come from here
    /// (diffusers `attn1`).
    pub attn1: Attention<B>,
    /// LayerNorm before `attn2`.
    pub norm2: LayerNorm<B>,
    /// Cross-attention from the spatial tokens to the text context (diffusers `attn2`).
    pub attn2: Attention<B>,
    /// LayerNorm before `ff`.
    pub norm3: LayerNorm<B>,
    /// GEGLU feed-forward (diffusers `ff`).
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// # Shapes
    /// - `tokens`: `[batch, h·w, dim]`; `context`: `[batch, text_tokens, cross_attention_dim]`
    /// - output: `[batch, h·w, dim]`
    pub fn forward(&self, tokens: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_captured(tokens, context, None)
    }

    /// `capture` carries the recorder and the layer description (named after
    /// the block; `.attn1`/`.attn2` is appended here).
    pub(crate) fn forward_captured(
        &self,
        tokens: Tensor<B, 3>,
        context: Tensor<B, 3>,
        capture: Option<(&mut Recorder<'_, B>, AttentionLayer)>,
    ) -> Tensor<B, 3> {
        let (mut recorder, layer) = match capture {
            Some((recorder, layer)) => (Some(recorder), Some(layer)),
            None => (None, None),
        };
        let self_capture = request(&mut recorder, &layer, AttentionKind::SelfAttention);
        let tokens = self.attn1.forward_captured(
            self.norm1.forward_stable(tokens.clone()),
            None,
            self_capture,
        ) + tokens;
        let cross_capture = request(&mut recorder, &layer, AttentionKind::CrossAttention);
        let tokens = self.attn2.forward_captured(
            self.norm2.forward_stable(tokens.clone()),
            Some(context),
            cross_capture,
        ) + tokens;
        self.ff.forward(self.norm3.forward_stable(tokens.clone())) + tokens
    }

    /// `attn1` on the normalised tokens: the self-attention's output after
    /// `to_out`, before the residual add.
    ///
    /// # Shapes
    /// - `tokens`, output: `[batch, h·w, dim]`
    pub fn self_attention(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        self.attn1.forward(self.norm1.forward_stable(tokens), None)
    }
}

/// The capture request for one of a block's two attentions, if capturing.
fn request<'r, 'a, B: Backend>(
    recorder: &'r mut Option<&mut Recorder<'a, B>>,
    layer: &Option<AttentionLayer>,
    kind: AttentionKind,
) -> Option<Capture<'r, 'a, B>> {
    let layer = layer.as_ref()?;
    let suffix = match kind {
        AttentionKind::SelfAttention => "attn1",
        AttentionKind::CrossAttention => "attn2",
    };
    Some(Capture {
        recorder: recorder.as_deref_mut()?,
        kind,
        layer: AttentionLayer {
            name: format!("{}.{suffix}", layer.name),
            ..layer.clone()
        },
    })
}

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub(crate) struct FeedForwardConfig {
    /// Token width in and out.
    pub dim: usize,
    /// Hidden width is `mult · dim`.
    #[config(default = 4)]
    pub mult: usize,
}

impl FeedForwardConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        let hidden = self.mult * self.dim;
        FeedForward {
            geglu: Geglu {
                proj: crate::torch_linear(self.dim, 2 * hidden).init(device),
            },
            proj_out: crate::torch_linear(hidden, self.dim).init(device),
        }
    }
}

/// diffusers `FeedForward` with the GEGLU activation. Its keys are
/// `ff.net.0.proj` → `geglu.proj` and `ff.net.2` → `proj_out` (see [`crate::keys`]).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// The gated expansion, `dim` → `mult · dim` (diffusers `ff.net.0`).
    pub geglu: Geglu<B>,
    /// Projection back to `dim` (diffusers `ff.net.2`).
    pub proj_out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    /// # Shapes
    /// - `tokens`, output: `[batch, n, dim]`
    pub fn forward(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        cpu::linear(&self.proj_out, self.geglu.forward(tokens))
    }
}

/// GEGLU: `hidden · gelu(gate)` where `[hidden, gate] = proj(x)` split in
/// halves; the GELU is the exact erf form (PyTorch's default), as diffusers uses.
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `dim` → `2 · hidden`: the hidden half, then the gate half (diffusers `ff.net.0.proj`).
    pub proj: Linear<B>,
}

impl<B: Backend> Geglu<B> {
    /// # Shapes
    /// - `tokens`: `[batch, n, dim]`; output: `[batch, n, hidden]`
    pub fn forward(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        let projected = cpu::linear(&self.proj, tokens);
        let half = projected.dims()[2] / 2;
        let hidden = projected.clone().narrow(2, 0, half);
        let gate = projected.narrow(2, half, half);
        hidden * gelu(gate)
    }
}
