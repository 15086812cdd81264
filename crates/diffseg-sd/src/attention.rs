//! diffusers' `Attention` module (the `attn1`/`attn2` of every transformer
//! block and the single-head attention of the VAE mid block) and the
//! memory-bounded multi-head attention kernel behind it.

use burn::{
    config::Config,
    module::Module,
    nn::{GroupNorm, GroupNormConfig, Linear},
    tensor::{backend::Backend, Tensor},
};

use crate::capture::{AttentionKind, AttentionLayer, HeadReduction, Recorder};
use crate::cpu;
use crate::precision::{softmax_in_f32, StableNorm};

/// Largest attention-score block the kernel creates, in bytes (f32).
///
/// wgpu on lavapipe cannot allocate a buffer above 128 MiB and softmax keeps
/// a couple of same-sized temporaries alive, so score blocks stay at half of
/// that. The fast path splits queries into blocks of this size; the capture
/// path works one head at a time (`[batch, q, k]`, 64 MiB at 64×64, batch 1).
const MAX_SCORE_BYTES: usize = 64 << 20;

/// Configuration of one diffusers `Attention` module.
#[derive(Config, Debug)]
pub(crate) struct AttentionConfig {
    /// Channels of the queries (and of the output).
    pub query_dim: usize,
    /// Channels of the keys/values source; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// Whether `to_q`, `to_k`, `to_v` have a bias (false in the UNet, true in the VAE).
    #[config(default = false)]
    pub bias: bool,
    /// `Some((groups, eps))` for the VAE's spatial attention, which normalises
    /// its 4-D input with a GroupNorm first.
    pub group_norm: Option<(usize, f64)>,
}

impl AttentionConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let context_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let projection = |d_in: usize| {
            crate::torch_linear(d_in, inner)
                .with_bias(self.bias)
                .init(device)
        };
        Attention {
            group_norm: self.group_norm.map(|(groups, eps)| {
                GroupNormConfig::new(groups, self.query_dim)
                    .with_epsilon(eps)
                    .init(device)
            }),
            to_q: projection(self.query_dim),
            to_k: projection(context_dim),
            to_v: projection(context_dim),
            to_out: crate::torch_linear(inner, self.query_dim).init(device),
            heads: self.heads,
        }
    }
}

/// diffusers `Attention`: `to_out(softmax(q kᵀ / √d) v)` over several heads.
///
/// Keys: `to_q`, `to_k`, `to_v`, `group_norm` as in diffusers; `to_out` is
/// diffusers' `to_out.0` (see [`crate::keys`]).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Only in the VAE mid block.
    pub group_norm: Option<GroupNorm<B>>,
    /// Query projection, `query_dim` → `heads · dim_head` (diffusers `to_q`).
    pub to_q: Linear<B>,
    /// Key projection of the context, or of the input itself for self-attention (diffusers `to_k`).
    pub to_k: Linear<B>,
    /// Value projection, from the same source as the keys (diffusers `to_v`).
    pub to_v: Linear<B>,
    /// Output projection back to `query_dim` (diffusers `to_out.0`; `to_out.1` is a dropout without
    /// weights).
    pub to_out: Linear<B>,
    /// Number of heads the projected channels are split into (not a weight).
    pub heads: usize,
}

/// A request to hand this layer's probabilities to the recorder's sink.
pub(crate) struct Capture<'r, 'a, B: Backend> {
    pub(crate) recorder: &'r mut Recorder<'a, B>,
    pub(crate) kind: AttentionKind,
    pub(crate) layer: AttentionLayer,
}

impl<B: Backend> Attention<B> {
    /// Attention over token sequences.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, queries, query_dim]`
    /// - `context`: `[batch, keys, cross_attention_dim]`, `None` for self-attention
    /// - output: `[batch, queries, query_dim]`
    pub fn forward(&self, hidden: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        self.forward_captured(hidden, context, None)
    }

    pub(crate) fn forward_captured(
        &self,
        hidden: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        mut capture: Option<Capture<'_, '_, B>>,
    ) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| hidden.clone());
        let query = cpu::linear(&self.to_q, hidden);
        if let Some(capture) = capture.as_mut() {
            capture
                .recorder
                .offer_queries(capture.kind, &capture.layer, &query);
        }
        let key = cpu::linear(&self.to_k, context.clone());
        let value = cpu::linear(&self.to_v, context);
        let attended = multi_head_attention(query, key, value, self.heads, capture);
        cpu::linear(&self.to_out, attended)
    }

    /// The VAE mid block's spatial self-attention: GroupNorm, attention over
    /// the `h·w` positions, output projection, residual connection
    /// (diffusers `Attention` with `residual_connection=True`,
    /// `rescale_output_factor=1`).
    ///
    /// # Shapes
    /// - `input`, output: `[batch, channels, height, width]`
    pub fn forward_spatial(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = input.dims();
        let mut hidden = input.clone().reshape([batch, channels, height * width]);
        if let Some(norm) = &self.group_norm {
            hidden = norm.forward_stable(hidden);
        }
        let hidden = self.forward(hidden.swap_dims(1, 2), None);
        let hidden = hidden
            .swap_dims(1, 2)
            .reshape([batch, channels, height, width]);
        hidden + input
    }
}

/// `softmax(q kᵀ / √d) v` for `heads` heads packed along the channel axis.
///
/// Without capture, queries are processed in blocks so that no score tensor
/// exceeds [`MAX_SCORE_BYTES`]. With capture, heads are processed one at a
/// time and each head's probabilities go to the sink (or are summed into one
/// running mean, in place, for [`HeadReduction::Mean`]).
///
/// # Shapes
/// - `query`: `[batch, queries, heads·d]`; `key`, `value`: `[batch, keys, heads·d]`
/// - output: `[batch, queries, heads·d]`
pub(crate) fn multi_head_attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    heads: usize,
    capture: Option<Capture<'_, '_, B>>,
) -> Tensor<B, 3> {
    let [batch, queries, inner] = query.dims();
    let keys = key.dims()[1];
    let head_dim = inner / heads;
    let scale = (head_dim as f64).powf(-0.5);
    let split_heads =
        |x: Tensor<B, 3>, len: usize| x.reshape([batch, len, heads, head_dim]).swap_dims(1, 2);
    // [batch, heads, len, head_dim]
    let query = split_heads(query, queries).mul_scalar(scale);
    let key_t = split_heads(key, keys).swap_dims(2, 3);
    let value = split_heads(value, keys);

    let attended = match capture {
        Some(capture) if capture.recorder.wants(capture.kind) => {
            attention_per_head(query, key_t, value, capture)
        }
        _ => attention_in_query_blocks(query, key_t, value),
    };
    attended.swap_dims(1, 2).reshape([batch, queries, inner])
}

/// Fast path: all heads at once, queries in blocks bounded by [`MAX_SCORE_BYTES`].
fn attention_in_query_blocks<B: Backend>(
    query: Tensor<B, 4>,
    key_t: Tensor<B, 4>,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, heads, queries, _] = query.dims();
    let keys = key_t.dims()[3];
    let bytes_per_query = batch * heads * keys * std::mem::size_of::<f32>();
    let block = (MAX_SCORE_BYTES / bytes_per_query).clamp(1, queries);
    let attend = |q: Tensor<B, 4>| {
        let dtype = q.dtype();
        let probs = softmax_in_f32(cpu::matmul(q, key_t.clone()), 3).cast(dtype);
        cpu::matmul(probs, value.clone())
    };
    if block == queries {
        return attend(query);
    }
    let blocks = (0..queries)
        .step_by(block)
        .map(|start| attend(query.clone().narrow(2, start, block.min(queries - start))))
        .collect();
    Tensor::cat(blocks, 2)
}

/// Capture path: one head at a time, probabilities handed to the sink.
fn attention_per_head<B: Backend>(
    query: Tensor<B, 4>,
    key_t: Tensor<B, 4>,
    value: Tensor<B, 4>,
    capture: Capture<'_, '_, B>,
) -> Tensor<B, 4> {
    let reduction = capture.recorder.sink.heads();
    let (query, key_t, value) = match reduction {
        HeadReduction::Mean => match cpu::try_attention_head_mean(query, key_t, value) {
            Ok((attended, mean)) => {
                capture
                    .recorder
                    .deliver(capture.kind, &capture.layer, None, mean);
                return attended;
            }
            Err(inputs) => inputs,
        },
        HeadReduction::PerHead => (query, key_t, value),
    };
    let [batch, heads, queries, head_dim] = query.dims();
    let keys = key_t.dims()[3];
    let mut probs_sum: Option<Tensor<B, 3>> = None;
    let mut outputs = Vec::with_capacity(heads);
    for head in 0..heads {
        let q = query
            .clone()
            .narrow(1, head, 1)
            .reshape([batch, queries, head_dim]);
        let k_t = key_t
            .clone()
            .narrow(1, head, 1)
            .reshape([batch, head_dim, keys]);
        let v = value
            .clone()
            .narrow(1, head, 1)
            .reshape([batch, keys, head_dim]);
        let dtype = q.dtype();
        let probs = softmax_in_f32(cpu::matmul(q, k_t), 2);
        outputs.push(cpu::matmul(probs.clone().cast(dtype), v));
        match reduction {
            HeadReduction::PerHead => {
                capture
                    .recorder
                    .deliver(capture.kind, &capture.layer, Some(head), probs)
            }
            HeadReduction::Mean => {
                probs_sum = Some(match probs_sum {
                    Some(sum) => sum + probs,
                    None => probs,
                })
            }
        }
    }
    if let Some(sum) = probs_sum {
        let mean = sum.div_scalar(heads as f64);
        capture
            .recorder
            .deliver(capture.kind, &capture.layer, None, mean);
    }
    Tensor::stack(outputs, 1)
}
