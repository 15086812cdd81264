//! Naming segments from a vocabulary (issue 20) on the tiny random-weight SD fixture, against
//! `tools/reference/names_reference.py` (diffusers' attention processors, PyTorch f32 on CPU):
//! per-entry maps, per-segment scores and names.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use diffseg_core::{
    entry_maps, name_segments, segment_entry_scores, EntryMaps, LayerEntryMaps, Segmentation,
};
use diffseg_sd::{
    encode_vocabulary, layer_entry_attention, CrossAttentionQueries, PromptChunk, StableDiffusion,
    WeightsSource,
};
use safetensors::SafeTensors;

type B = NdArray<f32>;

/// The maps are L2-normalised over 256 cells, so their values are ≈ 1/16; the fixture's
/// cross-attention noise floor (f32 vs f64 diffusers) is 2.2e-6 on values ≈ 1/77, which the
/// normalisation scales by ≈ 5. 2e-5 is twice that floor's scaled size.
const MAP_ATOL: f32 = 2e-5;
/// Segment scores are means of the maps, bilinear weights summing to 1: the same bound.
const SCORE_ATOL: f32 = 2e-5;

fn tiny() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(path: PathBuf) -> Self {
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    fn f32s(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let view = SafeTensors::deserialize(&self.bytes).unwrap();
        let tensor = view.tensor(name).unwrap();
        let values = tensor
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, tensor.shape().to_vec())
    }
    fn i64s(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let view = SafeTensors::deserialize(&self.bytes).unwrap();
        let tensor = view.tensor(name).unwrap();
        let values = tensor
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, tensor.shape().to_vec())
    }
}

fn names_fixture() -> Fixture {
    Fixture::open(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/names/names.safetensors"
    )))
}

/// The reference's prompt chunks: ids per chunk, each entry's chunk and token columns.
fn chunks(names: &Fixture) -> Vec<PromptChunk> {
    let (ids, ids_shape) = names.i64s("chunk_ids");
    let (entry_chunk, _) = names.i64s("entry_chunk");
    let (columns, columns_shape) = names.i64s("entry_columns");
    let mut chunks: Vec<PromptChunk> = ids
        .chunks_exact(ids_shape[1])
        .map(|ids| PromptChunk {
            ids: ids.to_vec(),
            entry_columns: Vec::new(),
        })
        .collect();
    for (entry, &chunk) in entry_chunk.iter().enumerate() {
        let entry_columns = columns[entry * columns_shape[1]..][..columns_shape[1]]
            .iter()
            .filter(|&&column| column >= 0)
            .map(|&column| column as usize)
            .collect();
        chunks[chunk as usize].entry_columns.push(entry_columns);
    }
    chunks
}

/// One pass over the fixture's latent with the empty prompt, keeping the `attn2` queries.
fn captured_queries(sd: &StableDiffusion<B>) -> CrossAttentionQueries<B> {
    let device = Default::default();
    let io = Fixture::open(tiny().join("io.safetensors"));
    let (latent, shape) = io.f32s("latent");
    let latent = Tensor::<B, 4>::from_data(
        TensorData::new(latent, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let context = sd.text_encoder.forward(Tensor::<B, 2, Int>::from_data(
        TensorData::new(diffseg_sd::EMPTY_PROMPT_IDS.to_vec(), [1, 77]),
        &device,
    ));
    let mut queries = CrossAttentionQueries::default();
    sd.unet
        .capture_attention(latent, 300.0, context, &mut queries);
    queries
}

fn load() -> StableDiffusion<B> {
    let source = WeightsSource::detect(tiny()).unwrap();
    StableDiffusion::load(&source, None, &Default::default()).unwrap()
}

/// The entry maps of image 0 of the batch.
fn maps_for(sd: &StableDiffusion<B>, chunks: &[PromptChunk]) -> EntryMaps<B> {
    let queries = captured_queries(sd);
    let vocabulary =
        encode_vocabulary(&sd.text_encoder, &sd.unet, chunks, &Default::default()).unwrap();
    let layers: Vec<LayerEntryMaps<B>> = layer_entry_attention(&queries, &vocabulary)
        .unwrap()
        .into_iter()
        .map(|layer| {
            let [_, entries, cells] = layer.maps.dims();
            LayerEntryMaps {
                maps: layer.maps.narrow(0, 0, 1).reshape([entries, cells]),
                height: layer.layer.height,
                width: layer.layer.width,
            }
        })
        .collect();
    entry_maps(&layers).unwrap()
}

fn label_map(names: &Fixture) -> Segmentation {
    let (labels, shape) = names.i64s("label_map");
    Segmentation::from_labels(
        labels.iter().map(|&l| l as u32).collect(),
        shape[1],
        shape[0],
    )
    .unwrap()
}

#[test]
fn entry_maps_scores_and_names_match_the_reference() {
    let names = names_fixture();
    let sd = load();
    let maps = maps_for(&sd, &chunks(&names));
    let (expected, shape) = names.f32s("entry_maps");
    assert_eq!(maps.maps.dims(), [shape[0], shape[1] * shape[2]]);
    let ours: Vec<f32> = maps.maps.clone().into_data().iter::<f32>().collect();
    let gap = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(gap <= MAP_ATOL, "entry maps differ by {gap:e}");

    let segmentation = label_map(&names);
    let scores = segment_entry_scores(&maps, &segmentation).unwrap();
    let (expected, shape) = names.f32s("segment_scores");
    assert_eq!((scores.len(), scores[0].len()), (shape[0], shape[1]));
    let gap = scores
        .iter()
        .flatten()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(gap <= SCORE_ATOL, "segment scores differ by {gap:e}");

    let (top, shape) = names.i64s("top_entries");
    let ranked: Vec<i64> = name_segments(&scores, shape[1])
        .iter()
        .flat_map(|names| names.ranked.iter().map(|&(entry, _)| entry as i64))
        .collect();
    assert_eq!(ranked, top, "top-{} entries per segment", shape[1]);
}

#[test]
fn a_one_entry_vocabulary_names_every_segment_with_it() {
    let names = names_fixture();
    let sd = load();
    let mut ids = vec![49407; 77];
    ids[..3].copy_from_slice(&[49406, 1125, 2368]);
    let chunk = PromptChunk {
        ids,
        entry_columns: vec![vec![1, 2]],
    };
    let maps = maps_for(&sd, &[chunk]);
    let scores = segment_entry_scores(&maps, &label_map(&names)).unwrap();
    let named = name_segments(&scores, 3);
    assert_eq!(named.len(), 5);
    assert!(named
        .iter()
        .all(|names| names.ranked.len() == 1 && names.best().unwrap().0 == 0));
}

#[test]
fn keeping_queries_leaves_the_pass_unchanged() {
    let sd = load();
    let device = Default::default();
    let latent = Tensor::<B, 4>::random(
        [1, 4, 16, 16],
        burn::tensor::Distribution::Normal(0.0, 0.1),
        &device,
    );
    let context = Tensor::<B, 3>::random([1, 77, 24], burn::tensor::Distribution::Default, &device);
    let plain = sd.unet.forward(latent.clone(), 300.0, context.clone());
    let mut queries = CrossAttentionQueries::default();
    let kept = sd
        .unet
        .forward_with_attention(latent, 300.0, context, &mut queries);
    assert_eq!(queries.layers.len(), 16);
    plain.into_data().assert_eq(&kept.into_data(), true);
}

#[test]
fn malformed_chunks_are_errors() {
    let sd = load();
    let device = Default::default();
    let short = PromptChunk {
        ids: vec![49406, 49407],
        entry_columns: vec![vec![1]],
    };
    let past_end = PromptChunk {
        ids: vec![49407; 77],
        entry_columns: vec![vec![77]],
    };
    for chunk in [short, past_end] {
        let error = encode_vocabulary(&sd.text_encoder, &sd.unet, &[chunk], &device).unwrap_err();
        assert!(
            matches!(error, diffseg_sd::Error::PromptChunk { chunk: 0, .. }),
            "{error}"
        );
    }
}
