//! Naming segments from a vocabulary (issue 20), as the facade runs it: the vocabulary packed
//! into prompts once ([`prompt_chunks`]), encoded once per pipeline ([`EncodedVocabulary`]),
//! and each batch's kept cross-attention queries turned into every segment's ranked names
//! ([`batch_entry_maps`], [`square_names`]). docs/method.md §10 describes the steps.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use diffseg_core::{
    entry_maps, name_segments, segment_entry_scores, EntryMaps, LayerEntryMaps, SegmentNames,
};
use diffseg_sd::{
    encode_vocabulary, layer_entry_attention, ClipTokenizer, CrossAttentionQueries, PromptChunk,
    StableDiffusion, VocabularyKeys,
};
use serde::{Deserialize, Serialize};

use crate::vocabulary::{Vocabulary, VocabularyError};
use crate::Error;

/// How many of a segment's best entries are kept by default.
pub const DEFAULT_TOP_K: usize = 3;

/// One vocabulary entry and a segment's score for it: the mean over the segment's pixels of
/// the entry's normalised cross-attention map (comparable between entries of one image, not
/// a probability).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameScore {
    /// The entry, as given in the vocabulary.
    pub name: String,
    /// Its score for the segment.
    pub score: f32,
}

/// A segment's name: its best entry, and its best `top_k` entries, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentName {
    /// The best entry.
    pub name: String,
    /// The best entry's score.
    pub score: f32,
    /// The best entries with their scores, best first (the first is `name`).
    pub top: Vec<NameScore>,
}

/// The vocabulary's prompts for the text encoder, as the model crate takes them.
pub(crate) fn prompt_chunks(
    vocabulary: &Vocabulary,
    tokenizer: &ClipTokenizer,
) -> Result<Vec<PromptChunk>, VocabularyError> {
    Ok(vocabulary
        .prompts(tokenizer)?
        .into_iter()
        .map(|prompt| PromptChunk {
            ids: prompt.ids.to_vec(),
            entry_columns: prompt
                .entries
                .iter()
                .map(|entry| entry.columns.clone().collect())
                .collect(),
        })
        .collect())
}

/// A vocabulary as one loaded model sees it: every cross-attention layer's keys, computed
/// once when the pipeline is given the vocabulary and reused for every image.
#[derive(Debug, Clone)]
pub(crate) struct EncodedVocabulary<B: Backend> {
    keys: VocabularyKeys<B>,
    entries: Arc<[String]>,
    top_k: usize,
}

impl<B: Backend> EncodedVocabulary<B> {
    /// Encodes `chunks` (of `entries`, in order) with the model's text encoder and `to_k`s.
    pub(crate) fn new(
        model: &StableDiffusion<B>,
        entries: &[String],
        chunks: &[PromptChunk],
        top_k: usize,
        device: &B::Device,
    ) -> Result<Self, Error> {
        if top_k == 0 {
            return Err(diffseg_core::Error::Options("top_k must be at least 1".into()).into());
        }
        let keys = encode_vocabulary(&model.text_encoder, &model.unet, chunks, device)
            .map_err(|error| Error::Model(format!("encoding the vocabulary: {error}")))?;
        if keys.entries() != entries.len() {
            return Err(Error::Model(format!(
                "the vocabulary's prompts hold {} entries, the vocabulary {}",
                keys.entries(),
                entries.len()
            )));
        }
        Ok(Self {
            keys,
            entries: entries.into(),
            top_k,
        })
    }
}

/// Each image's entry maps on the largest attention grid, from the batch's kept queries.
pub(crate) fn batch_entry_maps<B: Backend>(
    queries: &CrossAttentionQueries<B>,
    vocabulary: &EncodedVocabulary<B>,
    batch: usize,
) -> Result<Vec<EntryMaps<B>>, Error> {
    let layers = layer_entry_attention(queries, &vocabulary.keys)
        .map_err(|error| Error::Model(format!("naming segments: {error}")))?;
    (0..batch)
        .map(|image| {
            let image_layers: Vec<LayerEntryMaps<B>> = layers
                .iter()
                .map(|layer| {
                    let [_, entries, cells] = layer.maps.dims();
                    LayerEntryMaps {
                        maps: layer
                            .maps
                            .clone()
                            .narrow(0, image, 1)
                            .reshape([entries, cells]),
                        height: layer.layer.height,
                        width: layer.layer.width,
                    }
                })
                .collect();
            Ok(entry_maps(&image_layers)?)
        })
        .collect()
}

/// The ranked names of every segment of `square`, a label map of the model's input square
/// (where the maps lie), by its labels.
pub(crate) fn square_names<B: Backend>(
    maps: &EntryMaps<B>,
    square: &diffseg_core::Segmentation,
    vocabulary: &EncodedVocabulary<B>,
) -> Result<Vec<SegmentName>, Error> {
    let scores = segment_entry_scores(maps, square)?;
    name_segments(&scores, vocabulary.top_k)
        .iter()
        .map(|ranked| named(ranked, &vocabulary.entries))
        .collect()
}

/// Entry indices replaced by the entries.
fn named(ranked: &SegmentNames, entries: &[String]) -> Result<SegmentName, Error> {
    let top = ranked
        .ranked
        .iter()
        .map(|&(entry, score)| {
            let name = entries.get(entry).ok_or_else(|| {
                Error::Model(format!("naming scored entry {entry} of {}", entries.len()))
            })?;
            Ok(NameScore {
                name: name.clone(),
                score,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let best = top
        .first()
        .cloned()
        .ok_or_else(|| Error::Model("naming ranked no entry".into()))?;
    Ok(SegmentName {
        name: best.name,
        score: best.score,
        top,
    })
}
