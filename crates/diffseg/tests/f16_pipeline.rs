//! The generic [`Pipeline`] in half precision, on the tiny random-weight SD fixture of
//! diffseg-sd. An integration test, not a unit test: the fixture and the photo stay in the
//! repository, outside the published crate, whose own tests must run from the package.

#![cfg(feature = "ndarray")]

use std::path::Path;

use burn::tensor::backend::Backend;
use diffseg::weights::{Variant, WeightsSource};
use diffseg::{Fit, MergeOptions, Pipeline};

/// Half precision end to end: the networks in f16 from the fp16 files, f32 probabilities
/// into the accumulator, the merge in f32, compared with the f32 pipeline on the CPU.
/// Tolerance: diffseg-sd's f16 parity bound on single layers (three times diffusers' own
/// fp16 gap, 5e-3); averaging layers does not add error.
fn f16_networks_follow_the_f32_pipeline<Half: Backend>() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    );
    let photo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images/rocket.jpg"
    );
    let source = WeightsSource::detect(Path::new(tiny)).unwrap();
    let full = Pipeline::<diffseg::backend::Cpu>::load(&source, Default::default()).unwrap();
    let half =
        Pipeline::<Half>::load(&source.with_variant(Variant::F16), Default::default()).unwrap();
    let image = diffseg::open_image(Path::new(photo)).unwrap();

    let (ours, theirs) = (
        half.attention(&image, Fit::Pad).unwrap(),
        full.attention(&image, Fit::Pad).unwrap(),
    );
    assert_eq!(ours.maps.len(), theirs.maps.len());
    for (ours, theirs) in ours.maps.iter().zip(&theirs.maps) {
        assert!(ours.probs.iter().all(|p| p.is_finite()), "finite attention");
        let worst = ours
            .probs
            .iter()
            .zip(&theirs.probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{}x{}: f16 attention off by {worst:e}",
            ours.height, ours.width
        );
        assert!(
            worst <= 5e-3,
            "{}x{}: f16 attention off by {worst}",
            ours.height,
            ours.width
        );
    }
    let segmentation = half
        .segment(&image, Fit::Pad, &MergeOptions::default())
        .unwrap();
    assert_eq!(
        (segmentation.width(), segmentation.height()),
        (image.width() as usize, image.height() as usize)
    );
    assert!(segmentation.segment_count() >= 1);
}

/// The facade offers f16 on GPU backends only, and lavapipe (the CI and development
/// machines' Vulkan) cannot compile their f16 kernels, so the same generic pipeline also
/// runs in real f16 arithmetic on the CPU through Burn's Candle backend.
#[test]
fn candle_f16_networks_follow_the_f32_pipeline() {
    f16_networks_follow_the_f32_pipeline::<burn::backend::Candle<half::f16, i64>>();
}

#[cfg(feature = "wgpu")]
#[test]
#[ignore = "needs f16 kernels: Burn's WGSL f16 does not compile on lavapipe; run on a GPU"]
fn wgpu_f16_networks_follow_the_f32_pipeline() {
    f16_networks_follow_the_f32_pipeline::<diffseg::backend::WgpuF16>();
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_f16_networks_follow_the_f32_pipeline() {
    f16_networks_follow_the_f32_pipeline::<diffseg::backend::CudaF16>();
}
