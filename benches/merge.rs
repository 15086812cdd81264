//! Merge stage speed: aggregation + 3 merge iterations on a 64×64 aggregate (and the full
//! `segment_attention` with its 512×512 label map), on ndarray and, with the `wgpu` feature,
//! on wgpu. Input: the synthetic attention of tools/reference/diffseg_reference.py, rebuilt
//! from its committed per-cell features, so `diffseg_reference.py --time` times the
//! reference on the very same input.
//!
//! `cargo bench --bench merge --features wgpu`

use std::time::Duration;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use diffseg_core::{
    aggregate, kl_matrix, kl_matrix_composed, merge_attention, segment_attention, AttentionMaps,
    MergeOptions,
};
use safetensors::SafeTensors;

const FIXTURE: &str = "crates/diffseg-core/tests/fixtures/merge.safetensors";
const SIDES: [usize; 4] = [64, 32, 16, 8];
const TEMPERATURE: f32 = 0.01;
const UNIFORM_FLOOR: f32 = 0.01;

/// `(1 − ε) softmax_k(−|f_q − f_k|² / T) + ε / n`, as in the reference script.
fn attention_from_features(features: &[f32], channels: usize) -> Vec<f32> {
    let cells = features.len() / channels;
    let mut probs = vec![0f32; cells * cells];
    for (query, row) in probs.chunks_exact_mut(cells).enumerate() {
        for (key, logit) in row.iter_mut().enumerate() {
            let distance: f32 = (0..channels)
                .map(|c| features[query * channels + c] - features[key * channels + c])
                .map(|d| d * d)
                .sum();
            *logit = -distance / TEMPERATURE;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = (*v - max).exp());
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        row.iter_mut().for_each(|v| {
            *v = *v / sum as f32 * (1.0 - UNIFORM_FLOOR) + UNIFORM_FLOOR / cells as f32
        });
    }
    probs
}

fn host_attention() -> Vec<(usize, Vec<f32>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let bytes =
        std::fs::read(&path).expect("the merge fixture (tools/reference/diffseg_reference.py)");
    let tensors = SafeTensors::deserialize(&bytes).expect("fixture parses");
    SIDES
        .iter()
        .map(|&side| {
            let view = tensors
                .tensor(&format!("features.{side}"))
                .expect("features");
            let features: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (side, attention_from_features(&features, view.shape()[1]))
        })
        .collect()
}

fn bench_backend<B: Backend>(
    c: &mut Criterion,
    backend: &str,
    device: B::Device,
    attention: &[(usize, Vec<f32>)],
) {
    let maps = AttentionMaps::<B>::from_maps(
        attention
            .iter()
            .map(|(side, probs)| {
                let cells = side * side;
                let data = TensorData::new(probs.clone(), [cells, cells]).convert::<B::FloatElem>();
                (Tensor::from_data(data, &device), *side, *side)
            })
            .collect(),
    )
    .expect("maps");
    let options = MergeOptions::default();
    let mut group = c.benchmark_group(format!("merge/{backend}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    // Proposal membership is read back to the host at every iteration, so each run is synced.
    group.bench_function("aggregate + 3 iterations", |b| {
        b.iter(|| merge_attention(&maps, &options).expect("merge").len())
    });
    group.bench_function("segment_attention 512x512", |b| {
        b.iter(|| {
            segment_attention(&maps, &options, 512, 512)
                .expect("segment")
                .segment_count()
        })
    });
    // Iteration 0's KL alone: 256 maps against all 4096 (on ndarray, diffseg-cpu's one-pass
    // kernel, and beside it Burn's composition, which gives the same values bit for bit).
    let maps_64 = aggregate(&maps).maps;
    let anchors = maps_64.clone().slice([0..256]);
    group.bench_function("kl 256x4096 against 4096x4096", |b| {
        b.iter(|| kl_matrix(anchors.clone(), maps_64.clone()).dims())
    });
    group.bench_function("kl 256x4096 against 4096x4096, composed", |b| {
        b.iter(|| kl_matrix_composed(anchors.clone(), maps_64.clone()).dims())
    });
    group.finish();
}

fn merge_stage(c: &mut Criterion) {
    let attention = host_attention();
    bench_backend::<burn::backend::NdArray<f32>>(c, "ndarray", Default::default(), &attention);
    #[cfg(feature = "wgpu")]
    bench_backend::<burn::backend::Wgpu>(c, "wgpu", Default::default(), &attention);
}

criterion_group!(benches, merge_stage);
criterion_main!(benches);
