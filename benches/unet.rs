//! UNet pass with attention capture at the full SD 1.5 configuration (random
//! weights from `Config::init`; parity is the tests' job) on a 64×64 latent,
//! i.e. a 512×512 image: what one DiffSeg segmentation costs in the UNet.
//! The sink sums the per-layer head means in place, as DiffSeg's aggregation
//! does, so the capture path is timed in full.
//!
//! `cargo bench --bench unet` (ndarray), `cargo bench --bench unet --features wgpu`.
//! One pass takes tens of seconds on a 2-core CPU, so the group uses
//! criterion's minimum of 10 samples in flat sampling mode.

use std::time::Duration;

use burn::tensor::{backend::Backend, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use diffseg_sd::{AttentionLayer, AttentionSink, UNet2DConditionModelConfig};

/// Keeps one running sum per latent resolution, like DiffSeg's accumulator.
struct SummingSink<B: Backend> {
    sums: Vec<(usize, Tensor<B, 3>)>,
}

impl<B: Backend> AttentionSink<B> for SummingSink<B> {
    fn self_attention(
        &mut self,
        layer: &AttentionLayer,
        _head: Option<usize>,
        probs: Tensor<B, 3>,
    ) {
        match self.sums.iter_mut().find(|(side, _)| *side == layer.height) {
            Some((_, sum)) => *sum = sum.clone() + probs,
            None => self.sums.push((layer.height, probs)),
        }
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let unet = UNet2DConditionModelConfig::sd_v1_5()
        .init::<B>(&device)
        .expect("the SD 1.5 preset is a valid config");
    let latent = Tensor::<B, 4>::random([1, 4, 64, 64], Distribution::Normal(0.0, 0.2), &device);
    let context = Tensor::<B, 3>::random([1, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    let mut group = c.benchmark_group("unet_capture_sd15_64x64");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(60));
    group.bench_function(name, |b| {
        b.iter(|| {
            let mut sink = SummingSink { sums: Vec::new() };
            unet.capture_attention(latent.clone(), 300.0, context.clone(), &mut sink);
            // Wait for the (possibly asynchronous) backend to finish.
            for (_, sum) in sink.sums {
                let _ = sum.sum().into_scalar();
            }
        })
    });
    group.finish();
}

fn unet_capture(c: &mut Criterion) {
    bench_backend::<burn::backend::NdArray<f32>>(c, "ndarray");
    #[cfg(feature = "wgpu")]
    bench_backend::<burn::backend::Wgpu>(c, "wgpu");
}

criterion_group!(benches, unet_capture);
criterion_main!(benches);
