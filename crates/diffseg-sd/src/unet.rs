//! diffusers `UNet2DConditionModel` (SD 1.x/2.x layout) with attention capture.

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
use serde::{Deserialize, Serialize};

use crate::{
    capture::{AttentionSink, Recorder},
    config::{
        check_count, check_divides, check_float, check_len, invalid, read_json, OneOrPerBlock,
        MAX_BLOCKS, MAX_LAYERS_PER_BLOCK, MAX_SAMPLE_SIZE, MAX_WIDTH,
    },
    cpu,
    down_block::{CrossAttentionSettings, DownBlock2D, DownBlock2DConfig},
    embeddings::{timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig},
    mid_block::{UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig},
    precision::group_norm_silu,
    up_block::{UpBlock2D, UpBlock2DConfig},
    Error,
};

/// Whether a down or up block carries spatial transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UNetBlockKind {
    /// `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`.
    CrossAttention,
    /// `DownBlock2D` / `UpBlock2D`.
    Plain,
}

/// Architecture of a [`UNet2DConditionModel`], normalised from diffusers' `config.json`.
#[derive(Config, Debug)]
pub struct UNet2DConditionModelConfig {
    /// Channels of the latent input (`in_channels`; 4).
    #[config(default = 4)]
    pub in_channels: usize,
    /// Channels of the noise prediction (`out_channels`; 4).
    #[config(default = 4)]
    pub out_channels: usize,
    /// Output channels of each down block (`block_out_channels`; `[320, 640, 1280, 1280]` for SD
    /// 1.x); the up blocks use them reversed.
    pub block_out_channels: Vec<usize>,
    /// Kind of each down block, highest resolution first (`down_block_types`).
    pub down_block_types: Vec<UNetBlockKind>,
    /// In execution order (lowest resolution first).
    pub up_block_types: Vec<UNetBlockKind>,
    /// Resnets per down block; each up block has one more (`layers_per_block`; 2).
    #[config(default = 2)]
    pub layers_per_block: usize,
    /// Heads per down block (the up blocks use the reversed list). For SD 1.x
    /// diffusers stores this in `attention_head_dim`; see [`Self::from_json_file`].
    pub num_attention_heads: Vec<usize>,
    /// Transformer blocks per spatial transformer, per down block.
    pub transformer_layers_per_block: Vec<usize>,
    /// Width of the text context (`cross_attention_dim`; 768 for SD 1.x, 1024 for SD 2.x).
    #[config(default = 768)]
    pub cross_attention_dim: usize,
    /// GroupNorm groups throughout the UNet (`norm_num_groups`; 32).
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Epsilon of the resnets' GroupNorms and of `conv_norm_out` (`norm_eps`; 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Timestep features are `[cos, sin]` rather than `[sin, cos]` (`flip_sin_to_cos`; true for
    /// SD).
    #[config(default = true)]
    pub flip_sin_to_cos: bool,
    /// Shift in the denominator of the timestep frequencies (`freq_shift`; 0 for SD), as in diffusers'
    /// `get_timestep_embedding`.
    #[config(default = 0.0)]
    pub freq_shift: f64,
    /// Padding of the down blocks' stride-2 convolutions (`downsample_padding`; 1).
    #[config(default = 1)]
    pub downsample_padding: usize,
    /// Divisor of the mid block's resnet outputs (`mid_block_scale_factor`; 1).
    #[config(default = 1.0)]
    pub mid_block_scale_factor: f64,
    /// Spatial transformers project with linear layers instead of 1×1 convolutions
    /// (`use_linear_projection`; false for SD 1.x, true for SD 2.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
    /// Map the input from [0, 1] to [-1, 1] (`2x − 1`) before `conv_in` (`center_input_sample`;
    /// false for SD).
    #[config(default = false)]
    pub center_input_sample: bool,
    /// Side of the square latent the model was trained on (`sample_size`; 64
    /// for SD 1.x, i.e. 512-pixel images). Not a shape constraint: any
    /// latent size runs.
    #[config(default = 64)]
    pub sample_size: usize,
}

/// The subset of diffusers' `UNet2DConditionModel` config this port reads;
/// options that change the architecture in ways not ported are read too so
/// that they can be rejected instead of silently ignored.
#[derive(Deserialize)]
struct DiffusersUNetConfig {
    /// A side, or `[height, width]` in some non-SD configs.
    #[serde(default)]
    sample_size: Option<OneOrPerBlock>,
    #[serde(default = "default_latent_channels")]
    in_channels: usize,
    #[serde(default = "default_latent_channels")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "default_true")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    down_block_types: Vec<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
    up_block_types: Vec<String>,
    block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    layers_per_block: OneOrPerBlock,
    #[serde(default = "default_downsample_padding")]
    downsample_padding: usize,
    #[serde(default = "default_one")]
    mid_block_scale_factor: f64,
    #[serde(default = "default_act_fn")]
    act_fn: String,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    norm_eps: f64,
    cross_attention_dim: OneOrPerBlock,
    #[serde(default)]
    transformer_layers_per_block: Option<OneOrPerBlock>,
    #[serde(default)]
    attention_head_dim: Option<OneOrPerBlock>,
    #[serde(default)]
    num_attention_heads: Option<OneOrPerBlock>,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    only_cross_attention: serde_json::Value,
    #[serde(default)]
    dual_cross_attention: bool,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    encoder_hid_dim: Option<usize>,
    #[serde(default)]
    time_embedding_dim: Option<usize>,
    #[serde(default)]
    time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    conv_in_kernel: Option<usize>,
    #[serde(default)]
    conv_out_kernel: Option<usize>,
    #[serde(default)]
    attention_type: Option<String>,
}

fn default_latent_channels() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_layers_per_block() -> OneOrPerBlock {
    OneOrPerBlock::One(2)
}
fn default_downsample_padding() -> usize {
    1
}
fn default_one() -> f64 {
    1.0
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}

impl UNet2DConditionModelConfig {
    /// SD 1.5's UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`;
    /// SD 1.4 has the same architecture).
    pub fn sd_v1_5() -> Self {
        use UNetBlockKind::{CrossAttention, Plain};
        Self::new(
            vec![320, 640, 1280, 1280],
            vec![CrossAttention, CrossAttention, CrossAttention, Plain],
            vec![Plain, CrossAttention, CrossAttention, CrossAttention],
            vec![8; 4],
            vec![1; 4],
        )
    }

    /// Reads a diffusers `unet/config.json`.
    ///
    /// diffusers quirk: SD 1.x/2.x configs name the number of heads
    /// `attention_head_dim`; the heads are `num_attention_heads` when set,
    /// otherwise `attention_head_dim` (as diffusers itself does).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let raw: DiffusersUNetConfig = read_json(path)?;
        let unsupported = |reason: String| Error::UnsupportedConfig {
            path: path.to_path_buf(),
            reason,
        };
        let blocks = raw.block_out_channels.len();
        let kinds = |names: &[String], cross: &str, plain: &str| {
            names
                .iter()
                .map(|name| match name.as_str() {
                    n if n == cross => Ok(UNetBlockKind::CrossAttention),
                    n if n == plain => Ok(UNetBlockKind::Plain),
                    other => Err(unsupported(format!("block type {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let down_block_types = kinds(&raw.down_block_types, "CrossAttnDownBlock2D", "DownBlock2D")?;
        let up_block_types = kinds(&raw.up_block_types, "CrossAttnUpBlock2D", "UpBlock2D")?;
        if down_block_types.len() != blocks || up_block_types.len() != blocks {
            return Err(unsupported(format!(
                "{} down and {} up block types for {blocks} block_out_channels",
                down_block_types.len(),
                up_block_types.len()
            )));
        }
        let layers_per_block = match raw.layers_per_block {
            OneOrPerBlock::One(layers) => layers,
            OneOrPerBlock::PerBlock(_) => {
                return Err(unsupported("per-block layers_per_block".into()))
            }
        };
        let cross_attention_dim = match raw.cross_attention_dim {
            OneOrPerBlock::One(dim) => dim,
            OneOrPerBlock::PerBlock(_) => {
                return Err(unsupported("per-block cross_attention_dim".into()))
            }
        };
        // The field the head counts came from, for error messages.
        let heads_field = if raw.num_attention_heads.is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let heads = raw
            .num_attention_heads
            .or(raw.attention_head_dim)
            .unwrap_or(OneOrPerBlock::One(8))
            .per_block(blocks);
        let transformer_layers = raw
            .transformer_layers_per_block
            .unwrap_or(OneOrPerBlock::One(1))
            .per_block(blocks);
        if heads.len() != blocks || transformer_layers.len() != blocks {
            return Err(unsupported("per-block lists of the wrong length".into()));
        }
        let not_default = [
            ("act_fn", Some(raw.act_fn.as_str()), "silu"),
            (
                "mid_block_type",
                raw.mid_block_type.as_deref(),
                "UNetMidBlock2DCrossAttn",
            ),
            (
                "resnet_time_scale_shift",
                raw.resnet_time_scale_shift.as_deref(),
                "default",
            ),
            (
                "time_embedding_type",
                raw.time_embedding_type.as_deref(),
                "positional",
            ),
            ("attention_type", raw.attention_type.as_deref(), "default"),
        ];
        for (name, value, expected) in not_default {
            if let Some(value) = value.filter(|v| *v != expected) {
                return Err(unsupported(format!("{name} = {value}")));
            }
        }
        let unported = [
            ("class_embed_type", raw.class_embed_type.is_some()),
            ("addition_embed_type", raw.addition_embed_type.is_some()),
            ("encoder_hid_dim", raw.encoder_hid_dim.is_some()),
            ("time_cond_proj_dim", raw.time_cond_proj_dim.is_some()),
            ("time_embedding_dim", raw.time_embedding_dim.is_some()),
            (
                "reverse_transformer_layers_per_block",
                raw.reverse_transformer_layers_per_block
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
            ),
            ("dual_cross_attention", raw.dual_cross_attention),
            (
                "only_cross_attention",
                !matches!(
                    raw.only_cross_attention,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                ),
            ),
            ("conv_in_kernel", raw.conv_in_kernel.is_some_and(|k| k != 3)),
            (
                "conv_out_kernel",
                raw.conv_out_kernel.is_some_and(|k| k != 3),
            ),
        ];
        if let Some((name, _)) = unported.iter().find(|(_, set)| *set) {
            return Err(unsupported(format!("{name} is not supported")));
        }
        let config = Self::new(
            raw.block_out_channels,
            down_block_types,
            up_block_types,
            heads,
            transformer_layers,
        )
        .with_in_channels(raw.in_channels)
        .with_out_channels(raw.out_channels)
        .with_layers_per_block(layers_per_block)
        .with_cross_attention_dim(cross_attention_dim)
        .with_norm_num_groups(raw.norm_num_groups)
        .with_norm_eps(raw.norm_eps)
        .with_flip_sin_to_cos(raw.flip_sin_to_cos)
        .with_freq_shift(raw.freq_shift)
        .with_downsample_padding(raw.downsample_padding)
        .with_mid_block_scale_factor(raw.mid_block_scale_factor)
        .with_use_linear_projection(raw.use_linear_projection)
        .with_center_input_sample(raw.center_input_sample)
        .with_sample_size(match raw.sample_size {
            Some(OneOrPerBlock::One(side)) => side,
            Some(OneOrPerBlock::PerBlock(sides)) => sides.first().copied().unwrap_or(64),
            None => 64,
        });
        config.validate().map_err(|error| match error {
            Error::InvalidConfig {
                field,
                value,
                reason,
                ..
            } => Error::InvalidConfig {
                path: Some(path.to_path_buf()),
                field: field.replacen("num_attention_heads", heads_field, 1),
                value,
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks that the network can be built from this config, before
    /// anything is allocated: every size positive and within
    /// [`crate::limits`], per-block lists of the right length,
    /// `norm_num_groups` dividing every block's channels, each used head
    /// count dividing its block's channels, finite epsilons and factors.
    /// [`Self::init`] and the loader call it; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        check_count("in_channels", self.in_channels, MAX_WIDTH)?;
        check_count("out_channels", self.out_channels, MAX_WIDTH)?;
        let blocks = self.block_out_channels.len();
        check_count("block_out_channels (blocks)", blocks, MAX_BLOCKS)?;
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            check_count(&format!("block_out_channels[{i}]"), channels, MAX_WIDTH)?;
        }
        check_len("down_block_types", self.down_block_types.len(), blocks)?;
        check_len("up_block_types", self.up_block_types.len(), blocks)?;
        check_len(
            "num_attention_heads",
            self.num_attention_heads.len(),
            blocks,
        )?;
        check_len(
            "transformer_layers_per_block",
            self.transformer_layers_per_block.len(),
            blocks,
        )?;
        check_count(
            "layers_per_block",
            self.layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        for (i, &layers) in self.transformer_layers_per_block.iter().enumerate() {
            let field = format!("transformer_layers_per_block[{i}]");
            check_count(&field, layers, MAX_LAYERS_PER_BLOCK)?;
        }
        check_count("cross_attention_dim", self.cross_attention_dim, MAX_WIDTH)?;
        check_count("norm_num_groups", self.norm_num_groups, MAX_WIDTH)?;
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            let of = format!("block_out_channels[{i}]");
            check_divides("norm_num_groups", self.norm_num_groups, &of, channels)?;
            // Block i's heads serve its down block, its mirrored up block and,
            // for the last block, the mid block.
            let used = self.down_block_types[i] == UNetBlockKind::CrossAttention
                || self.up_block_types[blocks - 1 - i] == UNetBlockKind::CrossAttention
                || i == blocks - 1;
            if used {
                let field = format!("num_attention_heads[{i}]");
                let heads = self.num_attention_heads[i];
                check_count(&field, heads, channels)?;
                check_divides(&field, heads, &of, channels)?;
            }
        }
        check_float("norm_eps", self.norm_eps, true)?;
        check_float("freq_shift", self.freq_shift, false)?;
        check_float("mid_block_scale_factor", self.mid_block_scale_factor, true)?;
        if self.downsample_padding > 1 {
            return Err(invalid(
                "downsample_padding",
                self.downsample_padding,
                "must be 0 or 1, as in diffusers",
            ));
        }
        check_count("sample_size", self.sample_size, MAX_SAMPLE_SIZE)
    }

    /// Number of transformer blocks, i.e. of self-attention layers a capture
    /// reports (16 for SD 1.x). Counts what the lists describe, even for a
    /// config [`Self::validate`] refuses.
    pub fn attention_layer_count(&self) -> usize {
        let layers = &self.transformer_layers_per_block;
        let down: usize = self
            .down_block_types
            .iter()
            .zip(layers)
            .filter(|(kind, _)| **kind == UNetBlockKind::CrossAttention)
            .map(|(_, layers)| self.layers_per_block.saturating_mul(*layers))
            .fold(0, usize::saturating_add);
        // Up block i mirrors down block `blocks - 1 - i`.
        let up: usize = self
            .up_block_types
            .iter()
            .zip(layers.iter().rev())
            .filter(|(kind, _)| **kind == UNetBlockKind::CrossAttention)
            .map(|(_, layers)| {
                self.layers_per_block
                    .saturating_add(1)
                    .saturating_mul(*layers)
            })
            .fold(0, usize::saturating_add);
        let mid = layers.last().copied().unwrap_or(0);
        down.saturating_add(mid).saturating_add(up)
    }

    fn cross_attention(
        &self,
        kind: UNetBlockKind,
        heads: usize,
        layers: usize,
    ) -> Option<CrossAttentionSettings> {
        (kind == UNetBlockKind::CrossAttention).then(|| {
            CrossAttentionSettings::new(heads, self.cross_attention_dim)
                .with_transformer_layers(layers)
                .with_use_linear_projection(self.use_linear_projection)
        })
    }

    /// Builds the model with random weights (allocated lazily, on first
    /// use), once [`Self::validate`] accepts the config.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<UNet2DConditionModel<B>, Error> {
        self.validate()?;
        let channels = &self.block_out_channels;
        let blocks = channels.len();
        let time_channels = channels[0];
        let temb = 4 * time_channels;
        let groups = self.norm_num_groups;
        let conv3 = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1))
                .init(device)
        };

        let down_blocks = (0..blocks)
            .map(|i| {
                let in_channels = if i == 0 { channels[0] } else { channels[i - 1] };
                DownBlock2DConfig::new(
                    in_channels,
                    channels[i],
                    temb,
                    self.layers_per_block,
                    i + 1 < blocks,
                )
                .with_cross_attention(self.cross_attention(
                    self.down_block_types[i],
                    self.num_attention_heads[i],
                    self.transformer_layers_per_block[i],
                ))
                .with_groups(groups)
                .with_eps(self.norm_eps)
                .with_downsample_padding(self.downsample_padding)
                .init(device)
            })
            .collect();

        let last = blocks - 1;
        let mid_block = UNetMidBlock2DCrossAttnConfig::new(
            channels[last],
            temb,
            CrossAttentionSettings::new(self.num_attention_heads[last], self.cross_attention_dim)
                .with_transformer_layers(self.transformer_layers_per_block[last])
                .with_use_linear_projection(self.use_linear_projection),
        )
        .with_groups(groups)
        .with_eps(self.norm_eps)
        .with_output_scale_factor(self.mid_block_scale_factor)
        .init(device);

        // Up block i mirrors down block `blocks - 1 - i`.
        let up_blocks = (0..blocks)
            .map(|i| {
                let mirror = last - i;
                let prev_output = if i == 0 {
                    channels[last]
                } else {
                    channels[mirror + 1]
                };
                let skip_in = channels[mirror.saturating_sub(1)];
                UpBlock2DConfig::new(
                    skip_in,
                    prev_output,
                    channels[mirror],
                    temb,
                    self.layers_per_block + 1,
                    i < last,
                )
                .with_cross_attention(self.cross_attention(
                    self.up_block_types[i],
                    self.num_attention_heads[mirror],
                    self.transformer_layers_per_block[mirror],
                ))
                .with_groups(groups)
                .with_eps(self.norm_eps)
                .init(device)
            })
            .collect();

        Ok(UNet2DConditionModel {
            conv_in: conv3(self.in_channels, channels[0]),
            time_embedding: TimestepEmbeddingConfig::new(time_channels, temb).init(device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(groups, channels[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv3(channels[0], self.out_channels),
            time_proj_channels: time_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            center_input_sample: self.center_input_sample,
        })
    }
}

/// diffusers `UNet2DConditionModel`: predicts the noise of a latent at a
/// timestep given a text context, and can report its attention maps.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// 3×3 convolution from the latent to `block_out_channels[0]` channels (diffusers `conv_in`).
    pub conv_in: Conv2d<B>,
    /// MLP turning the sinusoidal timestep features into the `4 · block_out_channels[0]`-wide time
    /// embedding (diffusers `time_embedding`).
    pub time_embedding: TimestepEmbedding<B>,
    /// Down blocks, highest resolution first (diffusers `down_blocks.i`).
    pub down_blocks: Vec<DownBlock2D<B>>,
    /// The block at the lowest resolution, between the down and up paths (diffusers `mid_block`).
    pub mid_block: UNetMidBlock2DCrossAttn<B>,
    /// Up blocks, lowest resolution first, consuming the down path's skip connections (diffusers
    /// `up_blocks.i`).
    pub up_blocks: Vec<UpBlock2D<B>>,
    /// GroupNorm (then SiLU) before `conv_out` (diffusers `conv_norm_out`).
    pub conv_norm_out: GroupNorm<B>,
    /// 3×3 convolution to the `out_channels` of the noise prediction (diffusers `conv_out`).
    pub conv_out: Conv2d<B>,
    /// Width of the sinusoidal timestep features (`time_proj`, no weights).
    pub time_proj_channels: usize,
    /// From the config: timestep features are `[cos, sin]`.
    pub flip_sin_to_cos: bool,
    /// From the config: shift of the timestep frequencies.
    pub freq_shift: f64,
    /// From the config: map the input to `2x − 1` before `conv_in`.
    pub center_input_sample: bool,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// The noise prediction.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]` (the latent)
    /// - `context`: `[batch, tokens, cross_attention_dim]` (text encoder output)
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.run(sample, timestep, context, None, true)
            .expect("a finished pass returns the noise prediction")
    }

    /// The noise prediction, handing every attention map to `sink` on the way
    /// (self-attention always, cross-attention if the sink wants it).
    pub fn forward_with_attention(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
        sink: &mut impl AttentionSink<B>,
    ) -> Tensor<B, 4> {
        let mut recorder = Recorder::new(sink);
        self.run(sample, timestep, context, Some(&mut recorder), true)
            .expect("a finished pass returns the noise prediction")
    }

    /// Runs the UNet only as far as its last transformer block, handing every
    /// attention map to `sink`; the output head (`conv_norm_out`, `conv_out`)
    /// is skipped since only the maps are wanted.
    pub fn capture_attention(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
        sink: &mut impl AttentionSink<B>,
    ) {
        let mut recorder = Recorder::new(sink);
        self.run(sample, timestep, context, Some(&mut recorder), false);
    }

    /// The output of the self-attention DiffCut reads (docs/method.md §9):
    /// `down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1` after
    /// `to_out` and before its residual add. The pass stops there: the last
    /// down block, the mid and the up blocks are never computed.
    ///
    /// Fails (with nothing computed) when the model has fewer than two down
    /// blocks or the second-to-last has no transformers.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`; `context`: `[batch, tokens, cross_attention_dim]`
    /// - output: `[batch, h', w', channels]` at that block's resolution
    ///   (`h / 4` for SD 1.x), channels last
    pub fn diffcut_features(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>, Error> {
        let hooked = match self.down_blocks.len().checked_sub(2) {
            Some(index) if !self.down_blocks[index].attentions.is_empty() => index,
            _ => {
                return Err(invalid(
                    "down_block_types",
                    format!("{} down blocks", self.down_blocks.len()),
                    "DiffCut reads the second-to-last down block's self-attention: \
                     the model needs at least two down blocks, the second-to-last \
                     with transformers",
                ))
            }
        };
        let (mut hidden, temb) = self.embed(sample, timestep);
        for block in &self.down_blocks[..hooked] {
            hidden = block
                .forward(hidden, temb.clone(), context.clone(), None, "")
                .0;
        }
        Ok(self.down_blocks[hooked].last_self_attention(hidden, temb, context))
    }

    /// Steps 0–2 of diffusers' `forward`: the centred input through `conv_in`,
    /// and the time embedding.
    fn embed(&self, sample: Tensor<B, 4>, timestep: f32) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let batch = sample.dims()[0];
        let device = sample.device();
        // 0. centre input
        let sample = if self.center_input_sample {
            sample.mul_scalar(2.0).sub_scalar(1.0)
        } else {
            sample
        };
        // 1. time
        let features = timestep_embedding::<B>(
            &vec![timestep; batch],
            self.time_proj_channels,
            self.flip_sin_to_cos,
            self.freq_shift as f32,
            &device,
        );
        let temb = self.time_embedding.forward(features);
        // 2. pre-process
        (cpu::conv2d(&self.conv_in, sample), temb)
    }

    /// The pass itself, following diffusers' `forward` step by step. Returns
    /// `None` when `finish` is false (stopped after the up blocks).
    fn run(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
        mut recorder: Option<&mut Recorder<'_, B>>,
        finish: bool,
    ) -> Option<Tensor<B, 4>> {
        let [_, _, height, width] = sample.dims();
        // Whether upsamplers need explicit sizes because the side is not a
        // multiple of 2^(number of upsamplers).
        let up_factor = 1usize << (self.up_blocks.len().saturating_sub(1));
        let explicit_upsample_size = height % up_factor != 0 || width % up_factor != 0;
        let (mut hidden, temb) = self.embed(sample, timestep);

        // 3. down
        let mut skips = vec![hidden.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, block_skips) = block.forward(
                hidden,
                temb.clone(),
                context.clone(),
                recorder.as_deref_mut(),
                &format!("down_blocks.{i}"),
            );
            hidden = out;
            skips.extend(block_skips);
        }

        // 4. mid
        hidden = self.mid_block.forward(
            hidden,
            temb.clone(),
            context.clone(),
            recorder.as_deref_mut(),
        );

        // 5. up
        for (i, block) in self.up_blocks.iter().enumerate() {
            let consumed = block.resnets.len();
            let upsample_size = (explicit_upsample_size && skips.len() > consumed).then(|| {
                let [_, _, h, w] = skips[skips.len() - consumed - 1].dims();
                [h, w]
            });
            hidden = block.forward(
                hidden,
                &mut skips,
                temb.clone(),
                context.clone(),
                upsample_size,
                recorder.as_deref_mut(),
                &format!("up_blocks.{i}"),
            );
        }
        if !finish {
            return None;
        }

        // 6. post-process
        let hidden = group_norm_silu(&self.conv_norm_out, hidden);
        Some(cpu::conv2d(&self.conv_out, hidden))
    }
}
