//! The whole pipeline, image in → segments out, on the tiny random-weight SD
//! fixture of diffseg-sd (128-px input, 16×16 latent), on ndarray and, with the
//! `wgpu` feature, on WGPU.
//!
//! Random weights give meaningless segments, so these tests check what must
//! hold for any weights: sizes, label ranges, statistics, batching, the
//! attention maps' structure, and agreement between the library's paths.

use std::path::PathBuf;

use diffseg::{BackendKind, Fit, MergeOptions, Precision, Segmentation, Segmenter};
use image::DynamicImage;

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

fn photo(name: &str) -> DynamicImage {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join(name);
    diffseg::open_image(&path).unwrap()
}

fn segmenter(backend: BackendKind, fit: Fit) -> Segmenter {
    Segmenter::builder()
        .backend(backend)
        .weights(tiny_weights())
        .fit(fit)
        .allow_download(false)
        .build()
        .unwrap()
}

/// What every segmentation must satisfy.
fn assert_valid(segmentation: &Segmentation, width: u32, height: u32) {
    assert_eq!(
        (segmentation.width(), segmentation.height()),
        (width as usize, height as usize)
    );
    let count = segmentation.segment_count();
    assert!(count >= 1);
    assert!(segmentation
        .labels()
        .iter()
        .all(|&label| (label as usize) < count));
    let total: usize = segmentation
        .segments()
        .iter()
        .map(|segment| segment.area)
        .sum();
    assert_eq!(total, (width * height) as usize);
    assert!(segmentation
        .segments()
        .iter()
        .all(|segment| segment.area > 0));
}

fn segments_at_the_image_size(backend: BackendKind) {
    let pipeline = segmenter(backend, Fit::Pad);
    assert_eq!(
        pipeline.input_size(),
        128,
        "the tiny UNet's 16×16 latent × 8"
    );
    // A non-square crop of a real photo, neither side a multiple of 8.
    let image = photo("coffee.png").crop_imm(40, 20, 203, 141);
    let segmentation = pipeline.segment(&image).unwrap();
    assert_valid(&segmentation, 203, 141);

    let mut cropping = pipeline;
    cropping.set_fit(Fit::CenterCrop);
    let segmentation = cropping.segment(&image).unwrap();
    assert_valid(&segmentation, 203, 141);
    let square = cropping.segment_model_input(&image).unwrap();
    assert_valid(&square, 128, 128);
}

fn batch_equals_one_by_one(backend: BackendKind) {
    let pipeline = segmenter(backend, Fit::Pad);
    let images = [
        photo("chelsea.png").thumbnail(160, 160),
        photo("astronaut.png").thumbnail(90, 120),
    ];
    let batch = pipeline.segment_batch(&images).unwrap();
    assert_eq!(batch.len(), 2);
    for (image, batched) in images.iter().zip(&batch) {
        let alone = pipeline.segment(image).unwrap();
        assert_valid(batched, image.width(), image.height());
        // Batched convolutions and matmuls may sum in another order, so a label
        // can flip where two proposals are within float rounding; allow 1%.
        let differing = alone
            .labels()
            .iter()
            .zip(batched.labels())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differing * 100 <= alone.labels().len(),
            "{differing} of {} labels differ between batch and single",
            alone.labels().len()
        );
    }
}

fn attention_has_every_resolution(backend: BackendKind) {
    let pipeline = segmenter(backend, Fit::Pad);
    let attention = pipeline.attention(&photo("rocket.jpg")).unwrap();
    // Tiny UNet: attention at the 16×16 latent and below (down blocks 0–2, mid).
    let sides: Vec<usize> = attention.maps.iter().map(|map| map.height).collect();
    assert_eq!(sides, vec![16, 8, 4, 2]);
    for map in &attention.maps {
        let cells = map.height * map.width;
        assert_eq!(map.probs.len(), cells * cells);
        for row in map.probs.chunks(cells) {
            let sum: f32 = row.iter().sum();
            // A mean of softmax rows: sums to 1 up to f32 rounding.
            assert!((sum - 1.0).abs() < 1e-4, "row sums to {sum}");
            assert!(row.iter().all(|&p| p >= 0.0));
        }
    }
}

fn merge_options_change_the_result(backend: BackendKind) {
    let mut pipeline = segmenter(backend, Fit::Pad);
    let image = photo("astronaut.png").thumbnail(128, 128);
    // τ = 0 keeps every anchor apart (none is below 0 from another), a huge τ merges all.
    pipeline
        .set_merge_options(MergeOptions::default().with_tau(1e6))
        .unwrap();
    assert_eq!(pipeline.segment(&image).unwrap().segment_count(), 1);
    assert!(pipeline
        .set_merge_options(MergeOptions::default().with_anchors(0))
        .is_err());
}

macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod ndarray {
            $(#[test] fn $test() { super::$test(diffseg::BackendKind::Cpu) })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $test() {
                if diffseg_device::ready_for_tests::<diffseg::backend::Wgpu>() {
                    super::$test(diffseg::BackendKind::Wgpu)
                }
            })*
        }
    };
}

on_each_backend!(
    segments_at_the_image_size,
    batch_equals_one_by_one,
    attention_has_every_resolution,
    merge_options_change_the_result,
);

#[test]
fn f16_on_the_cpu_is_a_typed_error() {
    let error = Segmenter::builder()
        .weights(tiny_weights())
        .precision(Precision::F16)
        .build()
        .unwrap_err();
    assert!(
        matches!(error, diffseg::Error::PrecisionUnavailable { .. }),
        "{error}"
    );
}

/// Half precision on WGPU through the public builder: the fp16 weight files are chosen, the
/// f16 backend runs, and segments come out. The numbers against the f32 pipeline are checked
/// by the facade's unit tests `*_f16_networks_follow_the_f32_pipeline` (on the CPU in real f16
/// arithmetic, and on WGPU/CUDA with `--ignored`). Needs f16 kernels, which Burn's WGSL compiler
/// cannot produce on Mesa lavapipe (the CI and development machines): run on a GPU.
#[cfg(feature = "wgpu")]
#[test]
#[ignore = "needs f16 kernels: Burn's WGSL f16 does not compile on lavapipe; run on a GPU"]
fn f16_on_wgpu_segments() {
    let image = photo("rocket.jpg");
    let half = Segmenter::builder()
        .backend(BackendKind::Wgpu)
        .weights(tiny_weights())
        .fit(Fit::Pad)
        .precision(Precision::F16)
        .allow_download(false)
        .build()
        .unwrap();
    let segmentation = half.segment(&image).unwrap();
    assert_valid(&segmentation, image.width(), image.height());
}

#[test]
fn the_attention_round_trips_through_safetensors() {
    let pipeline = segmenter(BackendKind::Cpu, Fit::Pad);
    let image = photo("chelsea.png").resize_exact(128, 128, image::imageops::FilterType::Triangle);
    let attention = pipeline.attention(&image).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("attn.safetensors");
    attention.save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        vec!["self_attn.16", "self_attn.2", "self_attn.4", "self_attn.8"]
    );
    let map16 = file.tensor("self_attn.16").unwrap();
    assert_eq!(map16.shape(), &[256, 256]);
    assert_eq!(map16.dtype(), safetensors::Dtype::F32);
    let stored: Vec<f32> = map16
        .data()
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    assert_eq!(stored, attention.maps[0].probs);

    // Merging the saved maps gives the segmentation `segment` gives: a square
    // image at the model size is neither padded nor resampled.
    let loaded = diffseg::SelfAttention::load_safetensors(&path).unwrap();
    assert_eq!(loaded, attention);
    let merged = loaded
        .merge(&MergeOptions::default(), BackendKind::Cpu)
        .unwrap();
    assert_eq!(merged, pipeline.segment(&image).unwrap());
}

/// A re-merge of saved attention with other options is what `segment` gives
/// with them, at the image's own size (a padded, non-square image).
#[test]
fn a_re_merge_maps_back_like_segment() {
    let image = photo("chelsea.png");
    assert_ne!(image.width(), image.height());
    let options = MergeOptions::default().with_tau(0.9);
    let segmenter = Segmenter::builder()
        .weights(tiny_weights())
        .merge_options(options.clone())
        .allow_download(false)
        .build()
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("attn.safetensors");
    segmenter
        .attention(&image)
        .unwrap()
        .save_safetensors(&path)
        .unwrap();
    let merged = diffseg::SelfAttention::load_safetensors(&path)
        .unwrap()
        .merge(&options, BackendKind::Cpu)
        .unwrap();
    assert_eq!(
        (merged.width(), merged.height()),
        (image.width() as usize, image.height() as usize)
    );
    assert_eq!(merged, segmenter.segment(&image).unwrap());
}

/// One `Segmenter` shared by threads that segment at the same time gives each of them what it
/// gives a single caller.
#[test]
fn one_segmenter_serves_threads_at_once() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Segmenter>();

    let shared = std::sync::Arc::new(segmenter(BackendKind::Cpu, Fit::Pad));
    let images = [photo("rocket.jpg"), photo("coffee.png")];
    let expected: Vec<Segmentation> = images
        .iter()
        .map(|image| shared.segment(image).unwrap())
        .collect();
    let barrier = std::sync::Barrier::new(images.len() * 2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .chain(&images)
            .map(|image| {
                let (shared, barrier) = (&shared, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    shared.segment(image).unwrap()
                })
            })
            .collect();
        for (handle, expected) in handles.into_iter().zip(expected.iter().cycle()) {
            assert_eq!(handle.join().unwrap().labels(), expected.labels());
        }
    });
    assert_eq!(shared.stage_times().images, 6);
}

/// The generic layer: a Burn user's own backend type and device give what `Segmenter` gives.
#[test]
fn a_pipeline_on_a_chosen_backend_matches_the_segmenter() {
    use burn::backend::{ndarray::NdArrayDevice, NdArray};
    use diffseg::weights::WeightsSource;

    let source = WeightsSource::detect(tiny_weights()).unwrap();
    let pipeline = diffseg::Pipeline::<NdArray<f32>>::load(&source, NdArrayDevice::Cpu).unwrap();
    let image = photo("astronaut.png");
    let options = MergeOptions::default();
    let generic = pipeline.segment(&image, Fit::Pad, &options).unwrap();
    let easy = segmenter(BackendKind::Cpu, Fit::Pad)
        .segment(&image)
        .unwrap();
    assert_eq!(generic.labels(), easy.labels());
    // A clone shares the weights and its stage times.
    let clone = pipeline.clone();
    clone.segment(&image, Fit::Pad, &options).unwrap();
    assert_eq!(pipeline.stage_times().images, 2);
}

/// `wgpu:N` runs on adapter N of `diffseg info`; an index past the last adapter is a typed
/// error naming the adapters there are.
#[cfg(feature = "wgpu")]
#[test]
fn a_wgpu_adapter_is_chosen_by_index() {
    if !diffseg_device::ready_for_tests::<diffseg::backend::Wgpu>() {
        return;
    }
    let image = photo("rocket.jpg");
    let segmentation = segmenter(BackendKind::WgpuAdapter(0), Fit::Pad)
        .segment(&image)
        .unwrap();
    assert_valid(&segmentation, image.width(), image.height());
    let error = Segmenter::builder()
        .backend(BackendKind::WgpuAdapter(99))
        .weights(tiny_weights())
        .allow_download(false)
        .build()
        .unwrap_err();
    assert!(matches!(error, diffseg::Error::NoDevice(_)), "{error}");
    assert!(error.to_string().contains("no adapter 99"), "{error}");
}

/// `wgpu:NAME` picks the first adapter whose description contains NAME (any
/// case), and a name no adapter has is an error that lists the adapters.
#[cfg(feature = "wgpu")]
#[test]
fn a_wgpu_adapter_is_chosen_by_name() {
    if !diffseg_device::ready_for_tests::<diffseg::backend::Wgpu>() {
        return;
    }
    let adapters = diffseg::backend::wgpu_adapters().unwrap();
    let last = adapters.len() - 1;
    // The last adapter's own first word, shouted: it or an earlier namesake.
    let word = adapters[last]
        .split_whitespace()
        .next()
        .unwrap()
        .to_uppercase();
    let expected = adapters
        .iter()
        .position(|adapter| adapter.to_uppercase().contains(&word))
        .unwrap();
    assert_eq!(
        format!("wgpu:{word}").parse::<BackendKind>().unwrap(),
        BackendKind::WgpuAdapter(expected)
    );
    let error = "wgpu:no-such-adapter"
        .parse::<BackendKind>()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no-such-adapter") && error.contains(&adapters[0]),
        "{error}"
    );
}
