//! Naming segments with a 27-entry vocabulary (issue 20) at the full SD 1.5 configuration
//! (random weights; parity is the tests' job), 64×64 latent, 512×512 label map: what naming
//! adds to one segmentation, to set beside the UNet pass of `benches/unet.rs` (target: at most
//! 5 % of it on the CPU).
//!
//! - `per_image`: every `attn2` layer's queries scored against the vocabulary's cached keys,
//!   the maps combined over layers and resolutions, then scored over 20 segments;
//! - `per_vocabulary`: the text encoder on the prompt chunks and every layer's `to_k`, done
//!   once per model and vocabulary.
//!
//! The queries are random tensors of the shapes the UNet hands out (their values do not
//! change the cost). `cargo bench --bench naming --profile dev`.

use std::time::Duration;

use burn::tensor::{backend::Backend, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use diffseg_core::{entry_maps, name_segments, segment_entry_scores, LayerEntryMaps, Segmentation};
use diffseg_sd::{
    encode_vocabulary, layer_entry_attention, AttentionLayer, CrossAttentionQueries, PromptChunk,
    StableDiffusionConfig,
};

/// Entries per vocabulary, as the COCO-Stuff-27 and Cityscapes-27 presets.
const ENTRIES: usize = 27;

/// 27 entries over two 77-token chunks: alternately one and two tokens each, comma-separated
/// (what a comma-joined list of class names tokenises to).
fn chunks() -> Vec<PromptChunk> {
    let mut chunks = Vec::new();
    let mut entry = 0;
    while entry < ENTRIES {
        let mut ids = vec![49406];
        let mut entry_columns = Vec::new();
        while entry < ENTRIES && ids.len() + 4 < 77 {
            let tokens = 1 + entry % 2;
            entry_columns.push((ids.len()..ids.len() + tokens).collect());
            ids.extend((0..tokens).map(|t| 1000 + (entry * 2 + t) as i64));
            ids.push(267); // ","
            entry += 1;
        }
        ids.resize(77, 49407);
        chunks.push(PromptChunk { ids, entry_columns });
    }
    chunks
}

/// Queries of SD 1.5's 16 cross-attention layers at a 64×64 latent, in execution order.
fn queries<B: Backend>(device: &B::Device) -> CrossAttentionQueries<B> {
    let grids = [
        (64, 320, 2),
        (32, 640, 2),
        (16, 1280, 2),
        (8, 1280, 1),
        (16, 1280, 3),
        (32, 640, 3),
        (64, 320, 3),
    ];
    let mut queries = CrossAttentionQueries::default();
    for (side, width, count) in grids {
        for _ in 0..count {
            let layer = AttentionLayer {
                index: queries.layers.len(),
                name: format!("layer {}", queries.layers.len()),
                height: side,
                width: side,
                heads: 8,
            };
            let tensor = Tensor::random(
                [1, side * side, width],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            queries.push(&layer, tensor);
        }
    }
    queries
}

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let sd = StableDiffusionConfig::sd_v1_5()
        .init::<B>(&device)
        .expect("the SD 1.5 preset is a valid config");
    let chunks = chunks();
    let queries = queries::<B>(&device);
    // 20 horizontal bands over a 512×512 label map.
    let labels = (0..512 * 512)
        .map(|pixel| (pixel / 512 * 20 / 512) as u32)
        .collect();
    let segmentation = Segmentation::from_labels(labels, 512, 512).expect("a full label map");
    let vocabulary =
        encode_vocabulary(&sd.text_encoder, &sd.unet, &chunks, &device).expect("valid chunks");
    assert_eq!(vocabulary.entries(), ENTRIES);

    let mut group = c.benchmark_group("naming_27_entries_sd15_64x64");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group.bench_function(format!("per_image/{name}"), |b| {
        b.iter(|| {
            let layers: Vec<LayerEntryMaps<B>> = layer_entry_attention(&queries, &vocabulary)
                .expect("queries fit the keys")
                .into_iter()
                .map(|layer| LayerEntryMaps {
                    maps: layer
                        .maps
                        .reshape([ENTRIES, layer.layer.height * layer.layer.width]),
                    height: layer.layer.height,
                    width: layer.layer.width,
                })
                .collect();
            let maps = entry_maps(&layers).expect("16 layers");
            let scores = segment_entry_scores(&maps, &segmentation).expect("sizes fit");
            name_segments(&scores, 3)
        })
    });
    group.bench_function(format!("per_vocabulary/{name}"), |b| {
        b.iter(|| {
            let vocabulary = encode_vocabulary(&sd.text_encoder, &sd.unet, &chunks, &device)
                .expect("valid chunks");
            vocabulary.entries()
        })
    });
    group.finish();
}

fn naming(c: &mut Criterion) {
    bench_backend::<burn::backend::NdArray<f32>>(c, "ndarray");
}

criterion_group!(benches, naming);
criterion_main!(benches);
