//! DiffCut through the library on the tiny random-weight SD fixture of
//! diffseg-sd: features → cut gives what `segment_diffcut` gives, at the
//! image's own size, through a saved file too. Random weights give
//! meaningless segments, so these check what must hold for any weights.

use std::path::PathBuf;

use diffseg::{
    BackendKind, CutOptions, FeatureOptions, Features, Fit, Method, MethodKind, MethodSettings,
    Segmenter,
};
use image::DynamicImage;

fn segmenter(fit: Fit) -> Segmenter {
    Segmenter::builder()
        .backend(BackendKind::Cpu)
        .weights(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../diffseg-sd/tests/fixtures/tiny"
        ))
        .fit(fit)
        .allow_download(false)
        .build()
        .unwrap()
}

fn photo(name: &str) -> DynamicImage {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ));
    diffseg::open_image(path.join(name)).unwrap()
}

/// 256 px on the tiny UNet: an 8×8 feature map of 16 channels.
fn options(seed: u64) -> FeatureOptions {
    FeatureOptions::new(256, 50, seed).unwrap()
}

#[test]
fn features_then_cut_is_segment_diffcut() {
    // A non-square crop of a real photo, neither side a multiple of 8.
    let image = photo("coffee.png").crop_imm(40, 20, 203, 141);
    let dir = tempfile::tempdir().unwrap();
    for (fit, pamr) in [(Fit::Pad, false), (Fit::CenterCrop, true)] {
        let segmenter = segmenter(fit);
        let cut = CutOptions::new(0.5, 10.0, 64, pamr, pamr).unwrap();
        let features = segmenter.features(&image, &options(42)).unwrap();
        assert_eq!(
            (
                features.map.height(),
                features.map.width(),
                features.map.channels()
            ),
            (8, 8, 16)
        );
        let direct = segmenter
            .segment_diffcut(&image, &options(42), &cut)
            .unwrap();
        assert_eq!((direct.width(), direct.height()), (203, 141), "{fit:?}");
        let recut = features.cut(&cut, Some(&image)).unwrap();
        assert_eq!(recut.labels(), direct.labels(), "{fit:?}");

        let path = dir.path().join("features.safetensors");
        features.save_safetensors(&path).unwrap();
        let loaded = Features::load_safetensors(&path).unwrap();
        assert_eq!(loaded, features);
        assert_eq!(
            loaded.cut(&cut, Some(&image)).unwrap().labels(),
            direct.labels()
        );
    }
}

#[test]
fn the_seed_fixes_the_features() {
    let image = photo("astronaut.png");
    let segmenter = segmenter(Fit::CenterCrop);
    let first = segmenter.features(&image, &options(1)).unwrap();
    assert_eq!(segmenter.features(&image, &options(1)).unwrap(), first);
    assert_ne!(
        segmenter.features(&image, &options(2)).unwrap().map,
        first.map
    );
    // Without its placement, the cut labels the mask-size square.
    let square = Features {
        placement: None,
        ..first
    }
    .cut(&CutOptions::default(), None)
    .unwrap();
    assert_eq!((square.width(), square.height()), (128, 128));
}

/// `tau auto` (`--tau auto`, Python `tau="auto"`) is DiffCut's eigengap variant, refused
/// for DiffSeg and together with a τ value.
#[test]
fn tau_auto_is_diffcuts_eigengap_variant_only() {
    let auto = MethodSettings {
        auto_tau: Some(true),
        ..MethodSettings::default()
    };
    let Method::DiffCut(options) = Method::from_settings(MethodKind::DiffCut, &auto).unwrap()
    else {
        panic!("DiffCut asked for");
    };
    assert!(options.cut.auto_tau());
    let error = Method::from_settings(MethodKind::DiffSeg, &auto).unwrap_err();
    assert!(error.to_string().contains("tau auto"), "{error}");
    let both = MethodSettings {
        tau: Some(vec![0.5]),
        ..auto
    };
    let error = Method::from_settings(MethodKind::DiffCut, &both).unwrap_err();
    assert!(error.to_string().contains("takes no tau"), "{error}");
}
