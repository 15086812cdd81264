//! The evaluation harness against values computed independently by
//! `tools/reference/eval_reference.py` (PIL, numpy, scipy's linear_sum_assignment)
//! on a synthetic dataset written here as PNGs in the official layouts.
//!
//! Counts are integers and must match exactly; ACC, mIoU and IoU are ratios of
//! those integers, compared to 1e-12 (float summation order differs).

use crate::eval_support;

use std::path::Path;

use diffseg::eval::{
    check_images, check_labels, class_map, load_ground_truth, match_segments, save_class_png,
    score_class_predictions, score_image, score_predictions, score_predictions_with, score_sample,
    score_sample_by_class, Confusion, Dataset, EvalReport, Matching, Protocol, Scores,
    DIFFCUT_EVAL_SIDE, EVAL_SIDE, IGNORED, NUM_CLASSES,
};
use diffseg::{Error, NameScore, SegmentName, Segmentation};
use eval_support::{
    class_prediction, images, load_diffcut_reference, load_fixture, numbers, prediction,
    write_diffcut_predictions, write_labels, write_predictions,
};
use serde_json::Value;

/// Ratios of identical integer counts, summed in another order.
const RATIO_TOLERANCE: f64 = 1e-12;

fn dataset(name: &str) -> Dataset {
    name.parse().unwrap()
}

/// The dataset's samples under `root`: COCO's synthetic images are the first three
/// ids of the curated list, so the list is cut to the fixture's length.
fn samples(name: &str, root: &Path, count: usize) -> Vec<diffseg::eval::Sample> {
    let mut samples = dataset(name).samples(root).unwrap();
    samples.truncate(count);
    samples
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= RATIO_TOLERANCE,
        "{what}: {actual} != {expected}"
    );
}

fn assert_scores_match(scores: &Scores, expected: &Value) {
    assert_eq!(scores.images as u64, expected["images"].as_u64().unwrap());
    assert_eq!(
        scores.counts.labelled,
        expected["labelled"].as_u64().unwrap()
    );
    assert_eq!(
        scores.counts.tp.to_vec(),
        numbers::<u64>(&expected["tp"]),
        "TP"
    );
    assert_eq!(
        scores.counts.fp.to_vec(),
        numbers::<u64>(&expected["fp"]),
        "FP"
    );
    assert_eq!(
        scores.counts.fn_.to_vec(),
        numbers::<u64>(&expected["fn"]),
        "FN"
    );
    assert_close(
        scores.accuracy().unwrap(),
        expected["acc"].as_f64().unwrap(),
        "ACC",
    );
    assert_close(
        scores.mean_iou().unwrap(),
        expected["miou"].as_f64().unwrap(),
        "mIoU",
    );
    for (class, (iou, want)) in scores
        .class_iou()
        .iter()
        .zip(expected["iou"].as_array().unwrap())
        .enumerate()
    {
        match (iou, want.as_f64()) {
            (Some(iou), Some(want)) => assert_close(*iou, want, &format!("IoU of class {class}")),
            (None, None) => {}
            _ => panic!("class {class}: IoU {iou:?}, expected {want}"),
        }
    }
}

/// Per image: the ground truth read from the PNGs (crop, resize, class map,
/// channel 0 of the RGB file), the matching and the counts.
#[test]
fn per_image_counts_match_the_reference() {
    let (inputs, expected) = load_fixture();
    for name in ["cocostuff27", "cityscapes"] {
        let root = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), false);
        let fixture_images = images(&inputs, name);
        let samples = samples(name, root.path(), fixture_images.len());
        for (image, want) in fixture_images
            .iter()
            .zip(expected[name]["per_image"].as_array().unwrap())
        {
            let id = image["id"].as_str().unwrap();
            let sample = samples
                .iter()
                .find(|s| s.id == id)
                .unwrap_or_else(|| panic!("{id} listed"));
            let segments = prediction(&inputs, image);
            let classes = load_ground_truth(dataset(name), sample, EVAL_SIDE).unwrap();
            let confusion = Confusion::new(&classes, &segments);
            assert_eq!(
                confusion.columns() as u64,
                want["columns"].as_u64().unwrap(),
                "{id} K"
            );
            // scipy's choice among the tied optima, column for column.
            let matched = match_segments(&confusion);
            assert_eq!(
                matched.to_vec(),
                numbers::<usize>(&want["matched"]),
                "{id} matching"
            );
            let counts = score_sample(dataset(name), sample, &segments, EVAL_SIDE).unwrap();
            assert_eq!(
                counts.labelled,
                want["labelled"].as_u64().unwrap(),
                "{id} labelled"
            );
            assert_eq!(counts.tp.to_vec(), numbers::<u64>(&want["tp"]), "{id} TP");
            assert_eq!(counts.fp.to_vec(), numbers::<u64>(&want["fp"]), "{id} FP");
            assert_eq!(counts.fn_.to_vec(), numbers::<u64>(&want["fn"]), "{id} FN");
        }
    }
}

#[test]
fn prediction_folders_score_as_the_reference() {
    let (inputs, expected) = load_fixture();
    for (name, authors_layout, nested) in [
        ("cocostuff27", false, false),
        ("cocostuff27", true, false),
        ("cityscapes", false, false),
        ("cityscapes", false, true),
    ] {
        let root = tempfile::tempdir().unwrap();
        let predictions = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), authors_layout);
        write_predictions(&inputs, name, predictions.path(), nested);
        let count = images(&inputs, name).len();
        let samples = samples(name, root.path(), count);
        let mut seen = Vec::new();
        let folder_scores = score_predictions(
            dataset(name),
            &samples,
            predictions.path(),
            |sample, running| {
                seen.push((sample.id.clone(), running.images));
            },
        )
        .unwrap();
        assert_eq!(folder_scores.resized, 0, "all on the protocol's grid");
        let scores = folder_scores.scores;
        assert_eq!(seen.len(), count);
        assert_eq!(
            seen.last().unwrap().1,
            count,
            "progress sees the running sums"
        );
        assert_scores_match(&scores, &expected[name]);
        let report = EvalReport::new(dataset(name), &scores, count, "synthetic");
        assert_eq!(report.classes.len(), NUM_CLASSES);
        assert_eq!(report.images_scored, count);
        // The empty classes are reported as null and left out of the mean.
        let nulls = expected[name]["iou"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.is_null())
            .count();
        assert_eq!(
            report.classes.iter().filter(|c| c.iou.is_none()).count(),
            nulls
        );
    }
}

/// The open-vocabulary protocol (`eval --semantic`): class maps written by the library's
/// own writer, read back from a folder and compared pixel by pixel, as the reference's
/// numpy bincount does, image by image and in total.
#[test]
fn class_maps_score_by_name_as_the_reference() {
    let (inputs, expected) = load_fixture();
    for name in ["cocostuff27", "cityscapes"] {
        let want = &expected["semantic"][name];
        let root = tempfile::tempdir().unwrap();
        let predictions = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), false);
        let fixture_images = images(&inputs, name);
        let samples = samples(name, root.path(), fixture_images.len());
        for ((image, sample), want) in fixture_images
            .iter()
            .zip(&samples)
            .zip(want["per_image"].as_array().unwrap())
        {
            let id = image["id"].as_str().unwrap();
            assert_eq!(sample.id, id);
            let classes = class_prediction(&inputs, image);
            let path = predictions.path().join(format!("{id}.png"));
            save_class_png(&path, EVAL_SIDE as u32, EVAL_SIDE as u32, &classes).unwrap();
            let wide: Vec<u16> = classes.iter().map(|&class| class as u16).collect();
            let counts = score_sample_by_class(dataset(name), sample, &wide, EVAL_SIDE).unwrap();
            assert_eq!(counts.labelled, want["labelled"].as_u64().unwrap(), "{id}");
            assert_eq!(counts.tp.to_vec(), numbers::<u64>(&want["tp"]), "{id} TP");
            assert_eq!(counts.fp.to_vec(), numbers::<u64>(&want["fp"]), "{id} FP");
            assert_eq!(counts.fn_.to_vec(), numbers::<u64>(&want["fn"]), "{id} FN");
        }
        let folder_scores =
            score_class_predictions(dataset(name), &samples, predictions.path(), |_, _| {})
                .unwrap();
        assert_eq!(folder_scores.resized, 0, "all on the protocol's grid");
        assert_scores_match(&folder_scores.scores, want);
        // Naming every segment after the next class leaves the Hungarian protocol's accuracy
        // as it was (matching undoes any renaming; per-class FP may move with the choice among
        // tied optima) but not the score by name.
        let renamed = tempfile::tempdir().unwrap();
        for (image, sample) in fixture_images.iter().zip(&samples) {
            let next: Vec<u8> = class_prediction(&inputs, image)
                .iter()
                .map(|&class| match class {
                    IGNORED => IGNORED,
                    class => (class + 1) % NUM_CLASSES as u8,
                })
                .collect();
            let path = renamed.path().join(format!("{}.png", sample.id));
            save_class_png(&path, EVAL_SIDE as u32, EVAL_SIDE as u32, &next).unwrap();
        }
        let hungarian = |folder: &Path| {
            score_predictions(dataset(name), &samples, folder, |_, _| {})
                .unwrap()
                .scores
                .accuracy()
        };
        assert_eq!(
            hungarian(renamed.path()),
            hungarian(predictions.path()),
            "{name}"
        );
        let by_name = score_class_predictions(dataset(name), &samples, renamed.path(), |_, _| {})
            .unwrap()
            .scores;
        assert!(
            by_name.accuracy().unwrap() < folder_scores.scores.accuracy().unwrap() / 2.0,
            "{name}"
        );
        let mut report = EvalReport::new(dataset(name), &folder_scores.scores, 3, "synthetic");
        report.matching = Matching::Names;
        assert!(report.to_json().contains("\"matching\": \"names\""));
        assert!(report.to_markdown().contains("compared by name"));
    }
}

/// A named segmentation's class map: each pixel its segment's class, a name that is no
/// class of the dataset gives no class, and an unnamed segmentation gives none.
#[test]
fn class_maps_follow_segment_names() {
    let named = |name: &str| SegmentName {
        name: name.into(),
        score: 1.0,
        top: vec![NameScore {
            name: name.into(),
            score: 1.0,
        }],
    };
    let segmentation = Segmentation::from_labels(vec![0, 0, 1, 2, 2, 1], 3, 2).unwrap();
    assert_eq!(class_map(Dataset::Cityscapes, &segmentation), None);
    let segmentation = segmentation
        .with_names(vec![named("car"), named("sky"), named("a cloud")])
        .unwrap();
    let car = 19;
    let sky = Dataset::Cityscapes
        .class_names()
        .iter()
        .position(|class| *class == "sky")
        .unwrap() as u8;
    assert_eq!(
        class_map(Dataset::Cityscapes, &segmentation).unwrap(),
        vec![car, car, sky, IGNORED, IGNORED, sky]
    );
}

#[test]
fn missing_files_and_folders_are_named() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let predictions = tempfile::tempdir().unwrap();

    // No dataset folder at all.
    let error = Dataset::Cityscapes.samples(root.path()).unwrap_err();
    assert!(matches!(error, Error::MissingFolder { .. }), "{error}");
    assert!(error.to_string().contains("gtFine"), "{error}");
    let error = Dataset::CocoStuff27.samples(root.path()).unwrap_err();
    assert!(
        error.to_string().contains("stuffthingmaps_trainval2017"),
        "{error}"
    );

    // The whole curated list, of which only three labels exist.
    write_labels(&inputs, "cocostuff27", root.path(), false);
    let all = Dataset::CocoStuff27.samples(root.path()).unwrap();
    let error = check_labels(&all).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("000000000872.png") && message.contains("2172 of 2175"),
        "{message}"
    );

    // One prediction missing, one of the wrong size, one in colour.
    let samples = samples("cocostuff27", root.path(), 3);
    write_predictions(&inputs, "cocostuff27", predictions.path(), false);
    let second = predictions.path().join("000000000724.png");
    std::fs::remove_file(&second).unwrap();
    let error = score_predictions(
        Dataset::CocoStuff27,
        &samples,
        predictions.path(),
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::MissingPrediction {
                missing: 1,
                total: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("000000000724.png"), "{error}");

    image::GrayImage::new(511, 512).save(&second).unwrap();
    let error = score_predictions(
        Dataset::CocoStuff27,
        &samples,
        predictions.path(),
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::PredictionSize {
                width: 511,
                height: 512,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("000000000724.png"), "{error}");

    image::RgbImage::new(512, 512).save(&second).unwrap();
    let error = score_predictions(
        Dataset::CocoStuff27,
        &samples,
        predictions.path(),
        |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(error, Error::PredictionFormat { .. }), "{error}");

    let error = score_predictions(
        Dataset::CocoStuff27,
        &samples,
        &root.path().join("nowhere"),
        |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(error, Error::MissingFolder { .. }), "{error}");
}

/// A prediction at its image's own size (as `diffseg segment` writes them) is cropped
/// and resized like the labels. Predicting every raw label id as its own segment
/// then matches each class to exactly its pixels: ACC and every present class's IoU
/// are 1, and the other classes only meet segments of ignored pixels (no IoU).
#[test]
fn image_size_predictions_are_cropped_and_resized_like_the_labels() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let predictions = tempfile::tempdir().unwrap();
    write_labels(&inputs, "cityscapes", root.path(), false);
    for image in images(&inputs, "cityscapes") {
        let (width, height) = (
            image["width"].as_u64().unwrap() as u32,
            image["height"].as_u64().unwrap() as u32,
        );
        let raw: Vec<u16> = numbers(&image["label"]);
        let path = predictions
            .path()
            .join(format!("{}.png", image["id"].as_str().unwrap()));
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(width, height, raw)
            .unwrap()
            .save(&path)
            .unwrap();
    }
    let samples = samples("cityscapes", root.path(), 3);
    let result =
        score_predictions(Dataset::Cityscapes, &samples, predictions.path(), |_, _| {}).unwrap();
    assert_eq!(result.resized, 3);
    assert_eq!(result.scores.accuracy(), Some(1.0));
    assert_eq!(result.scores.mean_iou(), Some(1.0));
    assert_eq!(result.scores.counts.fp, [0; NUM_CLASSES]);
    assert_eq!(result.scores.counts.fn_, [0; NUM_CLASSES]);

    // Neither the protocol's grid nor the image's size: refused, both sizes named.
    let transposed = predictions
        .path()
        .join("lindau_000001_000019_leftImg8bit.png");
    image::GrayImage::new(30, 18).save(&transposed).unwrap();
    let error = score_predictions(Dataset::Cityscapes, &samples, predictions.path(), |_, _| {})
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("is 30×18, expected 512×512") && message.contains("or 18×30"),
        "{message}"
    );
}

#[test]
fn images_must_exist_and_match_their_labels() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    write_labels(&inputs, "cityscapes", root.path(), false);
    let samples = samples("cityscapes", root.path(), 3);
    // No images yet: the first one is named.
    let error = check_images(&samples).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("frankfurt_000000_000294_leftImg8bit.png"),
        "{error}"
    );
    for (sample, image) in samples.iter().zip(images(&inputs, "cityscapes")) {
        let width = image["width"].as_u64().unwrap() as u32;
        let height = image["height"].as_u64().unwrap() as u32;
        // The last image is one pixel too wide.
        let width = if sample.id.starts_with("lindau") {
            width + 1
        } else {
            width
        };
        std::fs::create_dir_all(sample.image.parent().unwrap()).unwrap();
        image::RgbImage::new(width, height)
            .save(&sample.image)
            .unwrap();
    }
    check_images(&samples[..2]).unwrap();
    let error = check_images(&samples).unwrap_err();
    assert!(
        matches!(
            error,
            Error::SizeMismatch {
                image_width: 19,
                label_width: 18,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("lindau_000001_000019_gtFine_labelIds.png are 18×30"),
        "{error}"
    );
}

/// DiffCut's protocol (`eval_diffcut.py`: labels cropped to `min(H, W) − 1`, resized to
/// the input size then to 128², per-image Hungarian) against
/// `tools/reference/eval_diffcut_reference.py`, which resizes with torch's own
/// `F.interpolate`; at two input sizes, from 128² prediction PNGs.
#[test]
fn diffcut_protocol_scores_as_its_reference() {
    let (inputs, _) = load_fixture();
    let reference = load_diffcut_reference();
    let side = reference["mask_size"].as_u64().unwrap() as u32;
    assert_eq!(side as usize, DIFFCUT_EVAL_SIDE);
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "two datasets at two input sizes");
    for case in cases {
        let name = case["dataset"].as_str().unwrap();
        let input_size = case["input_size"].as_u64().unwrap() as usize;
        let root = tempfile::tempdir().unwrap();
        let predictions = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), false);
        let fixture_images = images(&inputs, name);
        write_diffcut_predictions(&inputs, &reference, name, predictions.path());
        let samples = samples(name, root.path(), fixture_images.len());
        let protocol = Protocol::DiffCut { input_size };
        for (sample, want) in samples.iter().zip(case["per_image"].as_array().unwrap()) {
            assert_eq!(sample.id, want["id"].as_str().unwrap());
            let segments = diffseg::eval::decode_prediction_png(
                predictions.path().join(sample.prediction_file_name()),
            )
            .unwrap()
            .segments;
            let counts = score_image(
                &protocol.ground_truth(dataset(name), sample).unwrap(),
                &segments,
            );
            let what = format!("{} at {input_size}", sample.id);
            assert_eq!(
                counts.labelled,
                want["labelled"].as_u64().unwrap(),
                "{what}"
            );
            assert_eq!(counts.tp.to_vec(), numbers::<u64>(&want["tp"]), "{what} TP");
            assert_eq!(counts.fp.to_vec(), numbers::<u64>(&want["fp"]), "{what} FP");
            assert_eq!(
                counts.fn_.to_vec(),
                numbers::<u64>(&want["fn"]),
                "{what} FN"
            );
        }
        let scores = score_predictions_with(
            protocol,
            dataset(name),
            &samples,
            predictions.path(),
            |_, _| {},
        )
        .unwrap()
        .scores;
        assert_eq!(scores.counts.tp.to_vec(), numbers::<u64>(&case["tp"]));
        assert_eq!(scores.counts.fp.to_vec(), numbers::<u64>(&case["fp"]));
        assert_eq!(scores.counts.fn_.to_vec(), numbers::<u64>(&case["fn"]));
        assert_close(
            scores.accuracy().unwrap(),
            case["acc"].as_f64().unwrap(),
            "ACC",
        );
        assert_close(
            scores.mean_iou().unwrap(),
            case["miou"].as_f64().unwrap(),
            "mIoU",
        );
        // The paper's 512² predictions are not DiffCut's grid: refused, naming the size.
        let paper = tempfile::tempdir().unwrap();
        write_predictions(&inputs, name, paper.path(), false);
        let error =
            score_predictions_with(protocol, dataset(name), &samples, paper.path(), |_, _| {})
                .unwrap_err();
        assert!(
            matches!(error, Error::PredictionSize { width: 512, .. }),
            "{error}"
        );
    }
}
