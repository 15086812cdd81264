//! DiffCut's cut stage at its SD 1.x size: 32×32 features of 1280 channels (the hooked
//! layer at a 1024 input) with six regions, τ 0.5, α 10, 128² labels. The whole stage, its
//! two heavy steps, and the two eigensolvers on the first (full-size) cut.
//! `tools/reference/diffcut_reference.py --time 5` times the published code on the very
//! same features (it computes the same splitmix64 values).
//!
//! `cargo bench --bench cut`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use diffseg_core::{
    affinity_matrix, cut_features, normalize_features, recursive_normalized_cut,
    second_smallest_eigenvector_dense, second_smallest_eigenvector_lanczos, CutOptions, FeatureMap,
};

const SIDE: usize = 32;
const CHANNELS: usize = 1280;
const REGIONS: usize = 6;

/// A deterministic uniform sample in [-1, 1) from an index (splitmix64).
fn noise(index: u64) -> f32 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Six Voronoi regions: a vector shared by all pixels, plus 0.6 × the region's own, plus
/// 0.4 × the pixel's own noise. The shared part keeps regions similar enough that the graph
/// stays connected in float32 (with unrelated regions, α = 10 leaves cross-region
/// affinities ~1e-10 of the rest, which the published float32 eigensolver cannot resolve).
fn features() -> FeatureMap {
    let seeds: Vec<(f32, f32)> = (0..REGIONS as u64)
        .map(|r| (0.5 + 0.4 * noise(2 * r), 0.5 + 0.4 * noise(2 * r + 1)))
        .collect();
    let mut values = Vec::with_capacity(SIDE * SIDE * CHANNELS);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (py, px) = (
                (y as f32 + 0.5) / SIDE as f32,
                (x as f32 + 0.5) / SIDE as f32,
            );
            let region = (0..REGIONS)
                .min_by(|&a, &b| {
                    let d = |(sy, sx): (f32, f32)| (sy - py).powi(2) + (sx - px).powi(2);
                    d(seeds[a]).total_cmp(&d(seeds[b]))
                })
                .unwrap();
            let pixel = (y * SIDE + x) as u64;
            values.extend((0..CHANNELS as u64).map(|c| {
                noise(5_000 + c)
                    + 0.6 * noise(10_000 + region as u64 * CHANNELS as u64 + c)
                    + 0.4 * noise(1_000_000 + pixel * CHANNELS as u64 + c)
            }));
        }
    }
    FeatureMap::new(values, SIDE, SIDE, CHANNELS).expect("valid features")
}

fn cut_stage(c: &mut Criterion) {
    let features = features();
    let options = CutOptions::default();
    let normalized = normalize_features(&features);
    let affinity = affinity_matrix(&normalized, options.alpha()).expect("structured");
    let n = affinity.pixels();
    let a: Vec<f64> = affinity.values().iter().map(|&v| v as f64).collect();
    let degrees: Vec<f64> = a.chunks_exact(n).map(|row| row.iter().sum()).collect();

    let mut group = c.benchmark_group("cut 32x32x1280");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.bench_function("cut_features (no PAMR)", |b| {
        b.iter(|| {
            cut_features(&features, &options, None)
                .expect("cut")
                .segment_count()
        })
    });
    group.bench_function("affinity_matrix", |b| {
        b.iter(|| affinity_matrix(&normalized, options.alpha()).expect("structured"))
    });
    group.bench_function("recursive_normalized_cut", |b| {
        b.iter(|| {
            recursive_normalized_cut(&affinity, options.tau())
                .expect("cut")
                .len()
        })
    });
    group.bench_function("eigenvector 1024 lanczos", |b| {
        b.iter(|| second_smallest_eigenvector_lanczos(&a, &degrees).expect("converges"))
    });
    group.bench_function("eigenvector 1024 dense", |b| {
        b.iter(|| second_smallest_eigenvector_dense(&a, &degrees).expect("eigen"))
    });
    group.finish();
}

criterion_group!(benches, cut_stage);
criterion_main!(benches);
