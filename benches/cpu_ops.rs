//! The CPU kernels of `diffseg_cpu` beside burn-ndarray's own ops, at the
//! shapes that dominate one 512×512 DiffSeg pass: the UNet's 320-channel 3×3
//! convolutions at 64×64, the VAE's 128-channel ones at 256×256, a UNet
//! attention projection and one head's attention product.
//!
//! `cargo bench --bench cpu_ops`. Throughput is reported in FLOP/s (criterion
//! calls them elements): 2 per multiply-add.

use std::time::Duration;

use burn::{
    backend::NdArray,
    nn::{
        conv::{Conv2d, Conv2dConfig},
        LinearConfig, PaddingConfig2d,
    },
    tensor::{Distribution, Tensor},
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use diffseg_cpu as cpu;

type B = NdArray<f32>;

fn conv3x3(channels: usize) -> Conv2d<B> {
    Conv2dConfig::new([channels, channels], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1))
        .init(&Default::default())
}

fn convolutions(c: &mut Criterion) {
    let device = Default::default();
    for (name, channels, side) in [("unet_320x64x64", 320, 64), ("vae_128x256x256", 128, 256)] {
        let conv = conv3x3(channels);
        let input = Tensor::<B, 4>::random(
            [1, channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let flops = 2 * channels * channels * 9 * side * side;
        let mut group = c.benchmark_group(format!("conv3x3_{name}"));
        group
            .throughput(Throughput::Elements(flops as u64))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(10));
        group.bench_function("diffseg_cpu", |b| {
            b.iter(|| cpu::conv2d(&conv, input.clone()))
        });
        group.bench_function("burn-ndarray", |b| b.iter(|| conv.forward(input.clone())));
        group.finish();
    }
}

fn products(c: &mut Criterion) {
    let device = Default::default();
    let tokens = Tensor::<B, 3>::random([1, 4096, 320], Distribution::Normal(0.0, 1.0), &device);
    let linear = LinearConfig::new(320, 320).init::<B>(&device);
    let mut group = c.benchmark_group("linear_4096x320x320");
    group
        .throughput(Throughput::Elements(2 * 4096 * 320 * 320))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("diffseg_cpu", |b| {
        b.iter(|| cpu::linear(&linear, tokens.clone()))
    });
    group.bench_function("burn-ndarray", |b| {
        b.iter(|| linear.forward(tokens.clone()))
    });
    group.finish();

    // One head of a 64×64 self-attention layer: q [4096, 40] · kᵀ, k stored [4096, 40].
    let query = Tensor::<B, 3>::random([1, 4096, 40], Distribution::Normal(0.0, 1.0), &device);
    let key_t = Tensor::<B, 3>::random([1, 4096, 40], Distribution::Normal(0.0, 1.0), &device)
        .swap_dims(1, 2);
    let mut group = c.benchmark_group("attention_scores_4096x40x4096");
    group
        .throughput(Throughput::Elements(2 * 4096 * 40 * 4096))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("diffseg_cpu", |b| {
        b.iter(|| cpu::matmul(query.clone(), key_t.clone()))
    });
    group.bench_function("burn-ndarray", |b| {
        b.iter(|| query.clone().matmul(key_t.clone()))
    });
    group.finish();

    // Each iteration gets its own scores tensor (made outside the timing): the kernel
    // works in place on a tensor nobody else holds, as in the networks.
    let scores = Tensor::<B, 3>::random([1, 4096, 4096], Distribution::Normal(0.0, 3.0), &device);
    let fresh = || scores.clone().mul_scalar(1.0);
    let mut group = c.benchmark_group("softmax_4096x4096");
    group
        .throughput(Throughput::Elements(4096 * 4096))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("diffseg_cpu", |b| {
        b.iter_batched(fresh, cpu::softmax_last, BatchSize::LargeInput)
    });
    group.bench_function("burn-ndarray", |b| {
        b.iter_batched(
            fresh,
            |s| burn::tensor::activation::softmax(s, 2),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // One 64×64 self-attention layer of SD 1.5 (8 heads of 40) with its head-mean
    // probabilities, as DiffSeg captures it: fused query blocks vs the same kernels op by op.
    let heads =
        |std| Tensor::<B, 4>::random([1, 8, 4096, 40], Distribution::Normal(0.0, std), &device);
    let (query, key, value) = (heads(0.3), heads(0.3), heads(1.0));
    let key_t = key.swap_dims(2, 3);
    let mut group = c.benchmark_group("attention_with_head_mean_8x4096x40");
    group
        .throughput(Throughput::Elements(8 * 2 * 2 * 4096 * 4096 * 40))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("fused", |b| {
        b.iter(|| {
            cpu::try_attention_head_mean(query.clone(), key_t.clone(), value.clone())
                .unwrap_or_else(|_| unreachable!("burn-ndarray f32"))
        })
    });
    group.bench_function("op_by_op", |b| {
        b.iter(|| {
            let mut sum: Option<Tensor<B, 3>> = None;
            let mut outputs = Vec::new();
            for head in 0..8 {
                let pick = |x: &Tensor<B, 4>, rows, cols| {
                    x.clone().narrow(1, head, 1).reshape([1, rows, cols])
                };
                let scores = cpu::matmul(pick(&query, 4096, 40), pick(&key_t, 40, 4096));
                let probs = cpu::softmax_last(scores);
                outputs.push(cpu::matmul(probs.clone(), pick(&value, 4096, 40)));
                sum = Some(match sum {
                    Some(sum) => sum + probs,
                    None => probs,
                });
            }
            (
                Tensor::stack::<4>(outputs, 1),
                sum.map(|s| s.div_scalar(8.0)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, convolutions, products);
criterion_main!(benches);
