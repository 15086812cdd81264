//! Naming segments through the facade (issue 20) on the tiny random-weight SD fixture with
//! CLIP's published tokenizer: names come with the segments, the segmentation itself is the
//! same bit for bit with or without a vocabulary, and what cannot name is a typed error.

use crate::tokenizer_fixture;

use std::path::PathBuf;

use diffseg::{
    BackendKind, DiffCutOptions, Error, MergeOptions, Method, Segmenter, SegmenterBuilder,
    Vocabulary, VocabularyError,
};
use image::{DynamicImage, Rgb, RgbImage};

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

/// The tiny model's attention is nearly uniform: at the paper's τ every image is one
/// segment, which would make naming's per-segment checks vacuous; this τ gives several.
const TAU: f32 = 0.004;

fn builder() -> SegmenterBuilder {
    Segmenter::builder()
        .backend(BackendKind::Cpu)
        .weights(tiny_weights())
        .allow_download(false)
        .merge_options(MergeOptions::default().with_tau(TAU))
}

/// A non-square picture (so the names go through the padded square's mapping).
fn picture() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(40, 28, |x, y| {
        Rgb([(x * 6) as u8, (y * 9) as u8, ((x + y) * 3) as u8])
    }))
}

fn vocabulary(entries: &[&str]) -> Vocabulary {
    Vocabulary::new(entries.iter().copied(), "test").unwrap()
}

#[test]
fn named_segments_keep_the_plain_segmentation_bit_for_bit() {
    let tokenizer = tokenizer_fixture::unpacked();
    let image = picture();
    let plain = builder().build().unwrap().segment(&image).unwrap();
    assert!(plain.names().is_none());
    assert!(plain
        .describe(None)
        .segments
        .iter()
        .all(|s| s.name.is_none()));
    let named_segmenter = builder()
        .vocabulary(vocabulary(&["sky", "a red car", "person", "tree"]))
        .top_k(2)
        .tokenizer(tokenizer.path())
        .build()
        .unwrap();
    assert_eq!(named_segmenter.top_k(), Some(2));
    let named = named_segmenter.segment(&image).unwrap();
    assert_eq!(named.labels(), plain.labels(), "the label map changed");
    let names = named.names().expect("names with a vocabulary");
    assert!(named.segment_count() > 1);
    assert_eq!(names.len(), named.segment_count());
    for name in names {
        assert_eq!(name.top.len(), 2);
        assert_eq!(
            (name.top[0].name.as_str(), name.top[0].score),
            (name.name.as_str(), name.score)
        );
        assert!(name.top[0].score >= name.top[1].score);
    }
    let description = named.describe(None);
    for (record, name) in description.segments.iter().zip(names) {
        assert_eq!(record.name.as_deref(), Some(name.name.as_str()));
        assert_eq!(record.name_score, Some(name.score));
        assert_eq!(record.names, name.top);
    }
    // The model-input grid names its segments too.
    let square = named_segmenter.segment_model_input(&image).unwrap();
    assert_eq!(square.names().map(<[_]>::len), Some(square.segment_count()));
}

#[test]
fn a_one_entry_vocabulary_names_every_segment_with_it() {
    let tokenizer = tokenizer_fixture::unpacked();
    let segmentation = builder()
        .vocabulary(vocabulary(&["road surface"]))
        .tokenizer(tokenizer.path())
        .build()
        .unwrap()
        .segment(&picture())
        .unwrap();
    let names = segmentation.names().unwrap();
    assert!(segmentation.segment_count() > 1);
    assert!(names
        .iter()
        .all(|name| name.name == "road surface" && name.top.len() == 1));
}

#[test]
fn a_model_folder_without_a_tokenizer_is_an_error_naming_it() {
    let error = builder()
        .vocabulary(vocabulary(&["sky"]))
        .build()
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            Error::Vocabulary(VocabularyError::Tokenizer(
                diffseg_sd::Error::MissingTokenizer { .. }
            ))
        ),
        "{error:?}"
    );
    let folder = tiny_weights().join("tokenizer");
    assert!(message.contains(&folder.display().to_string()), "{message}");
    assert!(message.contains("vocab.json"), "{message}");
}

#[test]
fn diffcut_with_a_vocabulary_is_unsupported() {
    let tokenizer = tokenizer_fixture::unpacked();
    let error = builder()
        .method(Method::DiffCut(DiffCutOptions::default()))
        .vocabulary(vocabulary(&["sky"]))
        .tokenizer(tokenizer.path())
        .build()
        .unwrap_err();
    assert!(
        matches!(&error, Error::IncompatibleOptions(message) if message.contains("DiffCut")),
        "{error:?}"
    );
    // Switching a naming segmenter to DiffCut is refused the same way.
    let mut segmenter = builder()
        .vocabulary(vocabulary(&["sky"]))
        .tokenizer(tokenizer.path())
        .build()
        .unwrap();
    assert!(matches!(
        segmenter.set_method(Method::DiffCut(DiffCutOptions::default())),
        Err(Error::IncompatibleOptions(_))
    ));
    assert!(matches!(
        builder().vocabulary(vocabulary(&["sky"])).top_k(0).build(),
        Err(Error::Segment(_))
    ));
}
