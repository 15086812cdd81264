//! Attention capture: the hook through which the UNet hands its attention
//! probabilities to a caller, one layer (or one head) at a time.
//!
//! DiffSeg only needs the self-attention maps, aggregated over heads and
//! layers. Materialising all of them at once is impossible at 64×64 latents
//! (one `[8, 4096, 4096]` f32 layer is 512 MiB, four times wgpu's largest
//! buffer on lavapipe), so the UNet computes attention one head at a time and
//! gives each result to an [`AttentionSink`] as soon as it exists.

use burn::tensor::{backend::Backend, Tensor};

/// Where one attention layer sits in the UNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionLayer {
    /// Position of the transformer block in execution order (0..16 for SD 1.x:
    /// down blocks, mid block, up blocks). The self- and cross-attention of the
    /// same transformer block share the index.
    pub index: usize,
    /// The diffusers module path, e.g.
    /// `down_blocks.0.attentions.1.transformer_blocks.0.attn1`.
    pub name: String,
    /// Height of the latent grid the queries live on.
    pub height: usize,
    /// Width of the latent grid the queries live on.
    pub width: usize,
    /// Number of attention heads of the layer.
    pub heads: usize,
}

/// How the sink wants heads delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadReduction {
    /// One call per layer with `head = None` and the mean over heads.
    Mean,
    /// One call per head with `head = Some(h)`.
    PerHead,
}

/// Receives attention probabilities while the UNet runs.
///
/// Every `probs` tensor is `[batch, queries, keys]` and each row sums to 1
/// (softmax output). Queries are the `height × width` latent positions in
/// row-major order; keys are the same positions for self-attention and the
/// text tokens for cross-attention. The probabilities are f32 whatever the
/// compute precision: with an f16 model the softmax runs in f32 and its
/// output is handed out before any rounding.
pub trait AttentionSink<B: Backend> {
    /// A self-attention (`attn1`) map.
    fn self_attention(&mut self, layer: &AttentionLayer, head: Option<usize>, probs: Tensor<B, 3>);

    /// A cross-attention (`attn2`) map; only called when
    /// [`wants_cross_attention`](AttentionSink::wants_cross_attention) is true.
    fn cross_attention(
        &mut self,
        _layer: &AttentionLayer,
        _head: Option<usize>,
        _probs: Tensor<B, 3>,
    ) {
    }

    /// The queries of a cross-attention (`attn2`) layer, `[batch, queries, heads·head_dim]`:
    /// `to_q` of the layer's normalised input, before the `1/√head_dim` scale, in the compute
    /// precision. Only called when
    /// [`wants_cross_attention_queries`](AttentionSink::wants_cross_attention_queries) is true.
    /// Naming scores vocabulary words against them after the pass (crate `naming`); the pass
    /// itself is unchanged.
    fn cross_attention_queries(&mut self, _layer: &AttentionLayer, _queries: Tensor<B, 3>) {}

    /// Whether [`cross_attention_queries`](AttentionSink::cross_attention_queries) should be
    /// called (keeping them costs memory: `[4096, 320]` f32 per 64×64 layer of SD 1.5, 46 MiB
    /// for all 16 layers of one image).
    fn wants_cross_attention_queries(&self) -> bool {
        false
    }

    /// Whether heads are averaged before the call or delivered one by one.
    fn heads(&self) -> HeadReduction {
        HeadReduction::Mean
    }

    /// Whether [`cross_attention`](AttentionSink::cross_attention) should be
    /// called at all (computing the probabilities explicitly costs time).
    fn wants_cross_attention(&self) -> bool {
        false
    }
}

/// Which of the two attentions of a transformer block is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionKind {
    SelfAttention,
    CrossAttention,
}

/// The capture state threaded through the UNet's blocks: the sink and the
/// running transformer-block counter that gives [`AttentionLayer::index`].
pub(crate) struct Recorder<'a, B: Backend> {
    pub(crate) sink: &'a mut dyn AttentionSink<B>,
    next_block: usize,
}

impl<'a, B: Backend> Recorder<'a, B> {
    pub(crate) fn new(sink: &'a mut dyn AttentionSink<B>) -> Self {
        Self {
            sink,
            next_block: 0,
        }
    }

    /// Claims the index of the next transformer block in execution order.
    pub(crate) fn next_block_index(&mut self) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        index
    }

    /// Whether the sink wants maps of this kind at all.
    pub(crate) fn wants(&self, kind: AttentionKind) -> bool {
        match kind {
            AttentionKind::SelfAttention => true,
            AttentionKind::CrossAttention => self.sink.wants_cross_attention(),
        }
    }

    /// Hands a cross-attention layer's queries to the sink if it wants them.
    pub(crate) fn offer_queries(
        &mut self,
        kind: AttentionKind,
        layer: &AttentionLayer,
        queries: &Tensor<B, 3>,
    ) {
        if kind == AttentionKind::CrossAttention && self.sink.wants_cross_attention_queries() {
            self.sink.cross_attention_queries(layer, queries.clone());
        }
    }

    /// Hands one map to the sink.
    pub(crate) fn deliver(
        &mut self,
        kind: AttentionKind,
        layer: &AttentionLayer,
        head: Option<usize>,
        probs: Tensor<B, 3>,
    ) {
        match kind {
            AttentionKind::SelfAttention => self.sink.self_attention(layer, head, probs),
            AttentionKind::CrossAttention => self.sink.cross_attention(layer, head, probs),
        }
    }
}
