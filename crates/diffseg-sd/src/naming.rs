//! The model's side of naming segments from a vocabulary (issue 20): the cross-attention
//! (`attn2`) layers' queries kept during the one UNet pass, and each vocabulary entry's
//! attention computed from them afterwards as the model would attend to a prompt holding it.
//!
//! DiffSeg's pass reads an empty prompt, so its own cross-attention says nothing about words.
//! But an `attn2` layer's attention to any prompt is `softmax(q kᵀ / √d)` with `q` from the
//! image alone and `k = to_k(text)` from the prompt alone: keeping `q` lets every word be scored
//! after the pass (as OVAM does), without a second UNet pass and without another model.
//!
//! Steps, each a function: [`CrossAttentionQueries`] (capture) → [`encode_vocabulary`] (one
//! text-encoder pass per 77-token chunk, keys through each layer's `to_k`, once per vocabulary)
//! → [`token_attention`] → [`entry_token_mean`] → [`layer_entry_attention`] (all layers). The
//! combination over layers and resolutions and the per-segment scores are diffseg-core's
//! (`diffseg_core::entry_maps`, `diffseg_core::segment_entry_scores`).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::attention::Attention;
use crate::capture::{AttentionLayer, AttentionSink};
use crate::clip::MAX_TOKENS;
use crate::precision::softmax_in_f32;
use crate::{cpu, ClipTextModel, Error, UNet2DConditionModel};

/// One prompt of at most 77 tokens holding some vocabulary entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptChunk {
    /// The token ids the text encoder reads, exactly 77 (BOS, tokens, EOS padding).
    pub ids: Vec<i64>,
    /// For each entry of this chunk, in vocabulary order, the positions of its tokens in `ids`.
    pub entry_columns: Vec<Vec<usize>>,
}

/// Every cross-attention layer's queries from one pass, in execution order.
///
/// Memory: the queries of SD 1.5 at 64×64 latents are `[4096, 320]` (5 layers), `[1024, 640]`
/// (5), `[256, 1280]` (5) and `[64, 1280]` (1): 11.8 M values, 46 MiB in f32 per image.
#[derive(Debug, Clone)]
pub struct CrossAttentionQueries<B: Backend> {
    /// `(layer, queries [batch, h·w, heads·head_dim])`, as handed out by the UNet.
    pub layers: Vec<(AttentionLayer, Tensor<B, 3>)>,
}

impl<B: Backend> Default for CrossAttentionQueries<B> {
    fn default() -> Self {
        Self { layers: Vec::new() }
    }
}

impl<B: Backend> CrossAttentionQueries<B> {
    /// Keeps one layer's queries (for sinks that also do other work).
    pub fn push(&mut self, layer: &AttentionLayer, queries: Tensor<B, 3>) {
        self.layers.push((layer.clone(), queries));
    }
}

impl<B: Backend> AttentionSink<B> for CrossAttentionQueries<B> {
    fn self_attention(&mut self, _: &AttentionLayer, _: Option<usize>, _: Tensor<B, 3>) {}

    fn cross_attention_queries(&mut self, layer: &AttentionLayer, queries: Tensor<B, 3>) {
        self.push(layer, queries);
    }

    fn wants_cross_attention_queries(&self) -> bool {
        true
    }
}

/// The UNet's cross-attention modules in execution order, the order of
/// [`AttentionLayer::index`]: down blocks, mid block, up blocks.
pub(crate) fn cross_attention_modules<B: Backend>(
    unet: &UNet2DConditionModel<B>,
) -> Vec<&Attention<B>> {
    let transformers = unet
        .down_blocks
        .iter()
        .flat_map(|block| &block.attentions)
        .chain(&unet.mid_block.attentions)
        .chain(unet.up_blocks.iter().flat_map(|block| &block.attentions));
    transformers
        .flat_map(|transformer| &transformer.transformer_blocks)
        .map(|block| &block.attn2)
        .collect()
}

/// A vocabulary as every cross-attention layer sees it: computed once per model and
/// vocabulary, reused for every image.
#[derive(Debug, Clone)]
pub struct VocabularyKeys<B: Backend> {
    /// `keys[layer][chunk]`: `to_k` of the chunk's text context, `[1, 77, heads·head_dim]`.
    keys: Vec<Vec<Tensor<B, 3>>>,
    /// Heads of each layer.
    heads: Vec<usize>,
    /// Per chunk, the `[77, entries]` matrix whose column `e` averages entry `e`'s token columns.
    averaging: Vec<Tensor<B, 2>>,
    /// Entries over all chunks.
    entries: usize,
}

impl<B: Backend> VocabularyKeys<B> {
    /// Number of vocabulary entries over all chunks.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

/// Encodes the vocabulary's prompt chunks with the model's text encoder (one pass per chunk)
/// and projects each through every cross-attention layer's `to_k`.
pub fn encode_vocabulary<B: Backend>(
    text_encoder: &ClipTextModel<B>,
    unet: &UNet2DConditionModel<B>,
    chunks: &[PromptChunk],
    device: &B::Device,
) -> Result<VocabularyKeys<B>, Error> {
    if chunks.is_empty() {
        return Err(Error::Naming("the vocabulary has no entries".into()));
    }
    let modules = cross_attention_modules(unet);
    let mut keys: Vec<Vec<Tensor<B, 3>>> = vec![Vec::with_capacity(chunks.len()); modules.len()];
    let mut averaging = Vec::with_capacity(chunks.len());
    let mut entries = 0;
    for (index, chunk) in chunks.iter().enumerate() {
        averaging.push(averaging_matrix(index, chunk, device)?);
        entries += chunk.entry_columns.len();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(chunk.ids.clone(), [1, MAX_TOKENS]),
            device,
        );
        let context = text_encoder.forward(ids);
        for (layer_keys, module) in keys.iter_mut().zip(&modules) {
            layer_keys.push(cpu::linear(&module.to_k, context.clone()));
        }
    }
    Ok(VocabularyKeys {
        keys,
        heads: modules.iter().map(|module| module.heads).collect(),
        averaging,
        entries,
    })
}

/// The `[77, entries]` matrix averaging each entry's token columns (a mean, not a sum, so that
/// multi-token entries are not favoured), checking the chunk on the way.
fn averaging_matrix<B: Backend>(
    index: usize,
    chunk: &PromptChunk,
    device: &B::Device,
) -> Result<Tensor<B, 2>, Error> {
    let invalid = |reason: String| Error::PromptChunk {
        chunk: index,
        reason,
    };
    if chunk.ids.len() != MAX_TOKENS {
        return Err(invalid(format!(
            "{} token ids, the text encoder reads exactly {MAX_TOKENS}",
            chunk.ids.len()
        )));
    }
    if chunk.entry_columns.is_empty() {
        return Err(invalid("holds no entry".into()));
    }
    let entries = chunk.entry_columns.len();
    let mut matrix = vec![0f32; MAX_TOKENS * entries];
    for (entry, columns) in chunk.entry_columns.iter().enumerate() {
        if columns.is_empty() {
            return Err(invalid(format!("entry {entry} has no token columns")));
        }
        for &column in columns {
            if column >= MAX_TOKENS {
                return Err(invalid(format!(
                    "entry {entry} names token column {column}, past the {MAX_TOKENS} positions"
                )));
            }
            matrix[column * entries + entry] += 1.0 / columns.len() as f32;
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(matrix, [MAX_TOKENS, entries]),
        device,
    ))
}

/// A layer's attention from its queries to one prompt's tokens, as the model computes it
/// (`softmax` over the 77 positions of `q kᵀ / √head_dim`, per head, in f32), averaged over
/// the heads.
///
/// # Shapes
/// - `queries`: `[batch, h·w, heads·head_dim]`; `keys`: `[1, 77, heads·head_dim]`
/// - output: `[batch, h·w, 77]`, f32, each row sums to 1
pub fn token_attention<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    heads: usize,
) -> Tensor<B, 3> {
    let [batch, cells, inner] = queries.dims();
    let tokens = keys.dims()[1];
    let head_dim = inner / heads;
    let query = queries
        .reshape([batch, cells, heads, head_dim])
        .swap_dims(1, 2)
        .mul_scalar((head_dim as f64).powf(-0.5));
    let key_t = keys
        .reshape([1, tokens, heads, head_dim])
        .permute([0, 2, 3, 1])
        .expand([batch, heads, head_dim, tokens]);
    let probs = softmax_in_f32(cpu::matmul(query, key_t), 3);
    probs.mean_dim(1).reshape([batch, cells, tokens])
}

/// Each entry's attention: the mean over its token columns.
///
/// # Shapes
/// - `attention`: `[batch, h·w, 77]`; `averaging`: `[77, entries]`
/// - output: `[batch, entries, h·w]`
pub fn entry_token_mean<B: Backend>(
    attention: Tensor<B, 3>,
    averaging: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [batch, cells, tokens] = attention.dims();
    let entries = averaging.dims()[1];
    let averaging = averaging.cast(attention.dtype());
    cpu::matmul(attention.reshape([batch * cells, tokens]), averaging)
        .reshape([batch, cells, entries])
        .swap_dims(1, 2)
}

/// One cross-attention layer's entry attention for a batch.
#[derive(Debug, Clone)]
pub struct LayerEntryAttention<B: Backend> {
    /// The layer (its grid is `height × width`).
    pub layer: AttentionLayer,
    /// `[batch, entries, h·w]`, f32: entry `e`'s attention at every query cell, entries in
    /// vocabulary order.
    pub maps: Tensor<B, 3>,
}

/// Every captured layer's entry attention ([`token_attention`] per chunk, then
/// [`entry_token_mean`]), entries of all chunks concatenated in order.
pub fn layer_entry_attention<B: Backend>(
    queries: &CrossAttentionQueries<B>,
    vocabulary: &VocabularyKeys<B>,
) -> Result<Vec<LayerEntryAttention<B>>, Error> {
    if queries.layers.is_empty() {
        return Err(Error::Naming(
            "no cross-attention queries were captured".into(),
        ));
    }
    queries
        .layers
        .iter()
        .map(|(layer, layer_queries)| {
            let (Some(chunk_keys), Some(&heads)) = (
                vocabulary.keys.get(layer.index),
                vocabulary.heads.get(layer.index),
            ) else {
                return Err(Error::Naming(format!(
                    "queries of layer {} ({}) but the model has {} cross-attention layers",
                    layer.index,
                    layer.name,
                    vocabulary.keys.len()
                )));
            };
            let inner = chunk_keys[0].dims()[2];
            if layer_queries.dims()[2] != inner || heads != layer.heads {
                return Err(Error::Naming(format!(
                    "queries of {} are {:?} with {} heads, its keys {inner} wide with {heads}",
                    layer.name,
                    layer_queries.dims(),
                    layer.heads
                )));
            }
            let per_chunk = chunk_keys
                .iter()
                .zip(&vocabulary.averaging)
                .map(|(keys, averaging)| {
                    entry_token_mean(
                        token_attention(layer_queries.clone(), keys.clone(), heads),
                        averaging.clone(),
                    )
                })
                .collect();
            Ok(LayerEntryAttention {
                layer: layer.clone(),
                maps: Tensor::cat(per_chunk, 1),
            })
        })
        .collect()
}
