//! The CLIP text transformer (transformers `CLIPTextModel`) that turns token
//! ids into SD's text context.

use std::path::Path;

use burn::{
    config::Config,
    module::Module,
    nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear},
    tensor::{
        activation::{gelu, sigmoid},
        backend::Backend,
        Bool, Int, Tensor, TensorData,
    },
};
use serde::Deserialize;

use crate::config::{
    check_count, check_divides, check_float, invalid, read_json, MAX_HIDDEN_LAYERS, MAX_POSITIONS,
    MAX_VOCAB, MAX_WIDTH,
};
use crate::cpu;
use crate::precision::{softmax_in_f32, StableNorm};
use crate::Error;

/// CLIP's start-of-text token.
pub(crate) const BOS_TOKEN_ID: i64 = 49406;
/// CLIP's end-of-text token, which SD 1.x's tokenizer also pads with.
pub(crate) const EOS_TOKEN_ID: i64 = 49407;
/// Context length of SD's text encoder: every prompt is this many token ids.
pub const MAX_TOKENS: usize = 77;

/// Token ids of the empty prompt as SD 1.x's tokenizer produces them:
/// BOS, then EOS repeated as padding to 77 tokens (method section 2).
pub const EMPTY_PROMPT_IDS: [i64; MAX_TOKENS] = {
    let mut ids = [EOS_TOKEN_ID; MAX_TOKENS];
    ids[0] = BOS_TOKEN_ID;
    ids
};

/// [`EMPTY_PROMPT_IDS`] as a `[1, 77]` tensor, ready for [`ClipTextModel::forward`].
pub fn empty_prompt_ids<B: Backend>(device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(EMPTY_PROMPT_IDS.to_vec(), [1, MAX_TOKENS]),
        device,
    )
}

/// Prompts' token ids (one row of 77 per prompt, e.g. from
/// [`crate::ClipTokenizer::prompt_ids`]) as a `[prompts, 77]` tensor for
/// [`ClipTextModel::forward`].
pub fn prompt_ids_tensor<B: Backend>(
    prompts: &[[i64; MAX_TOKENS]],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(prompts.concat(), [prompts.len(), MAX_TOKENS]),
        device,
    )
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)` (SD 1.x, OpenAI CLIP).
    QuickGelu,
    /// Exact erf GELU (SD 2.x, OpenCLIP).
    Gelu,
}

/// Architecture of the text encoder, read from transformers' `text_encoder/config.json`.
#[derive(Config, Debug)]
pub struct ClipTextConfig {
    /// Size of the token vocabulary (`vocab_size`; 49408 for SD 1.x).
    #[config(default = 49408)]
    pub vocab_size: usize,
    /// Width of the embeddings and of every layer (`hidden_size`; 768 for SD 1.x, the UNet's
    /// `cross_attention_dim`).
    #[config(default = 768)]
    pub hidden_size: usize,
    /// Hidden width of each layer's MLP (`intermediate_size`; 3072 for SD 1.x).
    #[config(default = 3072)]
    pub intermediate_size: usize,
    /// Number of encoder layers (`num_hidden_layers`; 12 for SD 1.x).
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`num_attention_heads`; 12 for SD 1.x).
    #[config(default = 12)]
    pub num_attention_heads: usize,
    /// Number of learned positions, i.e. the longest token sequence (`max_position_embeddings`;
    /// 77).
    #[config(default = 77)]
    pub max_position_embeddings: usize,
    /// MLP activation (`hidden_act`: `quick_gelu` for SD 1.x, `gelu` for SD 2.x).
    #[config(default = "ClipActivation::QuickGelu")]
    pub hidden_act: ClipActivation,
    /// Epsilon of every LayerNorm (`layer_norm_eps`; 1e-5).
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

#[derive(Deserialize)]
struct TransformersClipTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl ClipTextConfig {
    /// SD 1.x's text encoder, OpenAI CLIP ViT-L/14
    /// (`runwayml/stable-diffusion-v1-5/text_encoder/config.json`).
    pub fn sd_v1_5() -> Self {
        Self::new()
    }

    /// Reads a transformers `CLIPTextConfig` JSON file (unknown fields are ignored).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let raw: TransformersClipTextConfig = read_json(path)?;
        let hidden_act = match raw.hidden_act.as_str() {
            "quick_gelu" => ClipActivation::QuickGelu,
            "gelu" => ClipActivation::Gelu,
            other => {
                return Err(Error::UnsupportedConfig {
                    path: path.to_path_buf(),
                    reason: format!("hidden_act = {other}"),
                })
            }
        };
        let config = Self::new()
            .with_vocab_size(raw.vocab_size)
            .with_hidden_size(raw.hidden_size)
            .with_intermediate_size(raw.intermediate_size)
            .with_num_hidden_layers(raw.num_hidden_layers)
            .with_num_attention_heads(raw.num_attention_heads)
            .with_max_position_embeddings(raw.max_position_embeddings)
            .with_hidden_act(hidden_act)
            .with_layer_norm_eps(raw.layer_norm_eps);
        config
            .validate()
            .map_err(|error| error.in_config_file(path))?;
        Ok(config)
    }

    /// Checks that the model can be built from this config and run on SD's
    /// prompt, before anything is allocated: every size positive and within
    /// [`crate::limits`], the heads dividing `hidden_size`, room for
    /// [`EMPTY_PROMPT_IDS`] (its token ids and its 77 positions), a finite
    /// epsilon. [`Self::init`] and the loader call it; the error names the
    /// field.
    pub fn validate(&self) -> Result<(), Error> {
        check_count("vocab_size", self.vocab_size, MAX_VOCAB)?;
        if self.vocab_size <= EOS_TOKEN_ID as usize {
            return Err(invalid(
                "vocab_size",
                self.vocab_size,
                format!("must exceed SD's end-of-text token id {EOS_TOKEN_ID}"),
            ));
        }
        check_count("hidden_size", self.hidden_size, MAX_WIDTH)?;
        check_count("intermediate_size", self.intermediate_size, MAX_WIDTH)?;
        check_count(
            "num_hidden_layers",
            self.num_hidden_layers,
            MAX_HIDDEN_LAYERS,
        )?;
        check_count(
            "num_attention_heads",
            self.num_attention_heads,
            self.hidden_size,
        )?;
        check_divides(
            "num_attention_heads",
            self.num_attention_heads,
            "hidden_size",
            self.hidden_size,
        )?;
        check_count(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        if self.max_position_embeddings < MAX_TOKENS {
            return Err(invalid(
                "max_position_embeddings",
                self.max_position_embeddings,
                format!("must be at least SD's prompt length {MAX_TOKENS}"),
            ));
        }
        check_float("layer_norm_eps", self.layer_norm_eps, true)
    }

    /// Builds the model with random weights (allocated lazily, on first
    /// use), once [`Self::validate`] accepts the config.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ClipTextModel<B>, Error> {
        self.validate()?;
        let width = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(width)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let linear = |d_in, d_out| crate::torch_linear(d_in, d_out).init(device);
        let layer = || ClipEncoderLayer {
            self_attn: ClipAttention {
                q_proj: linear(width, width),
                k_proj: linear(width, width),
                v_proj: linear(width, width),
                out_proj: linear(width, width),
                heads: self.num_attention_heads,
            },
            layer_norm1: norm(),
            mlp: ClipMlp {
                fc1: linear(width, self.intermediate_size),
                fc2: linear(self.intermediate_size, width),
                quick_gelu: self.hidden_act == ClipActivation::QuickGelu,
            },
            layer_norm2: norm(),
        };
        Ok(ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: EmbeddingConfig::new(self.vocab_size, width).init(device),
                    position_embedding: EmbeddingConfig::new(self.max_position_embeddings, width)
                        .init(device),
                },
                encoder: ClipEncoder {
                    layers: (0..self.num_hidden_layers).map(|_| layer()).collect(),
                },
                final_layer_norm: norm(),
            },
        })
    }
}

/// transformers `CLIPTextModel`; its only child mirrors the `text_model.` key prefix.
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// The transformer itself (key prefix `text_model.`).
    pub text_model: ClipTextTransformer<B>,
}

/// transformers `CLIPTextTransformer`.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    /// Token and position embeddings (`embeddings`).
    pub embeddings: ClipTextEmbeddings<B>,
    /// The stack of transformer layers (`encoder`).
    pub encoder: ClipEncoder<B>,
    /// LayerNorm over the last layer's output (`final_layer_norm`); its output is SD's text
    /// context.
    pub final_layer_norm: LayerNorm<B>,
}

/// Token plus learned absolute position embeddings.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    /// Token id → `hidden_size` vector (`token_embedding`, `[vocab_size, hidden_size]`).
    pub token_embedding: Embedding<B>,
    /// Learned absolute position → vector, added to the token embedding (`position_embedding`,
    /// `[max_position_embeddings, hidden_size]`).
    pub position_embedding: Embedding<B>,
}

/// The stack of pre-LayerNorm encoder layers.
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// The `num_hidden_layers` layers, run in order (`layers.i`).
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// One pre-LayerNorm transformer layer with causal self-attention.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// Causal multi-head self-attention (`self_attn`).
    pub self_attn: ClipAttention<B>,
    /// LayerNorm before the self-attention (`layer_norm1`).
    pub layer_norm1: LayerNorm<B>,
    /// Feed-forward block (`mlp`).
    pub mlp: ClipMlp<B>,
    /// LayerNorm before the MLP (`layer_norm2`).
    pub layer_norm2: LayerNorm<B>,
}

/// Multi-head self-attention with biases on every projection.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// Query projection (`q_proj`).
    pub q_proj: Linear<B>,
    /// Key projection (`k_proj`).
    pub k_proj: Linear<B>,
    /// Value projection (`v_proj`).
    pub v_proj: Linear<B>,
    /// Projection of the merged heads back to `hidden_size` (`out_proj`).
    pub out_proj: Linear<B>,
    /// Number of attention heads (`num_attention_heads`; not a weight).
    pub heads: usize,
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// Expansion to `intermediate_size` (`fc1`).
    pub fc1: Linear<B>,
    /// Projection back to `hidden_size` (`fc2`).
    pub fc2: Linear<B>,
    /// quick-GELU (SD 1.x) rather than exact GELU.
    pub quick_gelu: bool,
}

impl<B: Backend> ClipTextModel<B> {
    /// The last hidden state after the final layer norm: SD's text context.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, tokens]` (tokens ≤ `max_position_embeddings`)
    /// - output: `[batch, tokens, hidden_size]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let model = &self.text_model;
        let [batch, tokens] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .expand([batch, tokens]);
        let mut hidden = model.embeddings.token_embedding.forward(input_ids)
            + model.embeddings.position_embedding.forward(positions);
        // `true` above the diagonal: a token attends to itself and earlier tokens only.
        let causal_mask = Tensor::<B, 2, Bool>::tril_mask([tokens, tokens], 0, &device);
        for layer in &model.encoder.layers {
            hidden = layer.forward(hidden, causal_mask.clone());
        }
        model.final_layer_norm.forward_stable(hidden)
    }
}

impl<B: Backend> ClipEncoderLayer<B> {
    fn forward(&self, hidden: Tensor<B, 3>, causal_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let hidden = self
            .self_attn
            .forward(self.layer_norm1.forward_stable(hidden.clone()), causal_mask)
            + hidden;
        self.mlp
            .forward(self.layer_norm2.forward_stable(hidden.clone()))
            + hidden
    }
}

impl<B: Backend> ClipAttention<B> {
    /// # Shapes
    /// - `hidden`, output: `[batch, tokens, width]`; `causal_mask`: `[tokens, tokens]`
    fn forward(&self, hidden: Tensor<B, 3>, causal_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let [batch, tokens, width] = hidden.dims();
        let head_dim = width / self.heads;
        let split = |x: Tensor<B, 3>| {
            x.reshape([batch, tokens, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let query = split(cpu::linear(&self.q_proj, hidden.clone()))
            .mul_scalar((head_dim as f64).powf(-0.5));
        let key = split(cpu::linear(&self.k_proj, hidden.clone()));
        let value = split(cpu::linear(&self.v_proj, hidden));
        let scores = cpu::matmul(query, key.swap_dims(2, 3)).mask_fill(
            causal_mask.reshape([1, 1, tokens, tokens]),
            f32::NEG_INFINITY,
        );
        let dtype = scores.dtype();
        let attended = cpu::matmul(softmax_in_f32(scores, 3).cast(dtype), value);
        self.out_proj
            .forward(attended.swap_dims(1, 2).reshape([batch, tokens, width]))
    }
}

impl<B: Backend> ClipMlp<B> {
    fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = cpu::linear(&self.fc1, hidden);
        let hidden = if self.quick_gelu {
            hidden.clone() * sigmoid(hidden.mul_scalar(1.702))
        } else {
            gelu(hidden)
        };
        cpu::linear(&self.fc2, hidden)
    }
}
