//! `diffseg eval` running the model (no `--predictions`) on the tiny random-weight
//! SD fixtures of diffseg-sd: predictions land in the cache folder, a second run
//! reuses them, a run with other settings refuses the cache.

use crate::common;

use crate::eval_support;

use common::{diffseg_subcommand, path_str, stderr_of, tiny_weights};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

use eval_support::{images, label_path, load_fixture};
use serde_json::Value;

fn diffseg(args: &[&str]) -> Output {
    diffseg_subcommand("eval", args)
}

/// Writes an RGB image for every Cityscapes label of the fixture, at the label's
/// size (or `override_size` for the image named), where the official layout has it.
fn write_images(inputs: &Value, root: &Path, override_size: Option<(&str, u32, u32)>) {
    for image in images(inputs, "cityscapes") {
        let id = image["id"].as_str().unwrap();
        let (mut width, mut height) = (
            image["width"].as_u64().unwrap() as u32,
            image["height"].as_u64().unwrap() as u32,
        );
        if let Some((name, w, h)) = override_size {
            if name == id {
                (width, height) = (w, h);
            }
        }
        let label = label_path(root, "cityscapes", image, false);
        let city = label.parent().unwrap().file_name().unwrap();
        let path = root
            .join("leftImg8bit/val")
            .join(city)
            .join(format!("{id}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 7) as u8, ((x + y) * 5) as u8])
        })
        .save(&path)
        .unwrap();
    }
}

fn modified_times(folder: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut times: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let time = std::fs::metadata(&path).unwrap().modified().unwrap();
            (path, time)
        })
        .collect();
    times.sort();
    times
}

#[test]
fn runs_the_model_caches_its_predictions_and_resumes() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    eval_support::write_labels(&inputs, "cityscapes", root.path(), false);
    write_images(&inputs, root.path(), None);
    let cache = work.path().join("cache");
    let json = work.path().join("report.json");
    let weights = tiny_weights();
    let args = [
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--cache",
        path_str(&cache),
        "--weights",
        &weights,
        "--backend",
        "cpu",
        "--out",
        path_str(&json),
    ];

    let first = diffseg(&args);
    assert!(first.status.success(), "{}", stderr_of(&first));
    assert!(
        stderr_of(&first).contains("segmenting 3 of 3 images"),
        "{}",
        stderr_of(&first)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["images_scored"], 3);
    let acc = report["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{report}");
    assert!(
        report["source"].as_str().unwrap().contains("0.9"),
        "Cityscapes' τ: {report}"
    );
    // One label PNG per image, at the model's input side (128 for the tiny model).
    for image in images(&inputs, "cityscapes") {
        let png = cache.join(format!("{}.png", image["id"].as_str().unwrap()));
        let decoded = image::open(&png).unwrap_or_else(|e| panic!("{png:?}: {e}"));
        assert_eq!((decoded.width(), decoded.height()), (128, 128));
    }

    // Everything cached: nothing is segmented or rewritten, the report is the same.
    let before = modified_times(&cache);
    let second = diffseg(&args);
    assert!(second.status.success(), "{}", stderr_of(&second));
    assert!(
        !stderr_of(&second).contains("segmenting"),
        "{}",
        stderr_of(&second)
    );
    assert_eq!(modified_times(&cache), before);
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(again, report);

    // An interrupted run: only the missing prediction is made, and it is the same.
    std::fs::remove_file(cache.join("lindau_000001_000019_leftImg8bit.png")).unwrap();
    let third = diffseg(&args);
    assert!(third.status.success(), "{}", stderr_of(&third));
    assert!(
        stderr_of(&third).contains("segmenting 1 of 3 images"),
        "{}",
        stderr_of(&third)
    );
    let resumed: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(resumed, report);

    // Other settings do not mix with the cached predictions.
    let mut other = args.to_vec();
    other.extend(["--tau", "0.5"]);
    let refused = diffseg(&other);
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("other settings"),
        "{}",
        stderr_of(&refused)
    );
}

#[test]
fn an_image_and_its_labels_of_different_sizes_are_refused() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    eval_support::write_labels(&inputs, "cityscapes", root.path(), false);
    write_images(
        &inputs,
        root.path(),
        Some(("frankfurt_000001_000538_leftImg8bit", 41, 20)),
    );
    let weights = tiny_weights();
    let output = diffseg(&[
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--cache",
        path_str(&work.path().join("cache")),
        "--weights",
        &weights,
    ]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("frankfurt_000001_000538_leftImg8bit.png is 41×20")
            && stderr.contains("frankfurt_000001_000538_gtFine_labelIds.png are 40×20"),
        "{stderr}"
    );
}

/// The model part of the tests below: `eval --method diffcut` on the Cityscapes
/// fixture at a 128-pixel input (a 4×4 feature map on the tiny model), its report.
fn eval_diffcut(root: &Path, cache: &Path, json: &Path, extra: &[&str]) -> Value {
    let weights = tiny_weights();
    let mut args = vec![
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root),
        "--cache",
        path_str(cache),
        "--weights",
        &weights,
        "--method",
        "diffcut",
        "--input-size",
        "128",
        "--out",
        path_str(json),
    ];
    args.extend_from_slice(extra);
    let output = diffseg(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// `eval --predictions` on `folder` with `extra`, its report.
fn eval_folder(root: &Path, folder: &Path, json: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root),
        "--predictions",
        path_str(folder),
        "--out",
        path_str(json),
    ];
    args.extend_from_slice(extra);
    let output = diffseg(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// The square eval_diffcut.py's data loader crops, written here from its code
/// (side `min(h, w) - 1`, offsets Python's `round`, half to even) rather than
/// taken from the library: `(left, top, side)`.
fn diffcut_crop(width: u32, height: u32) -> (u32, u32, u32) {
    let side = width.min(height) - 1;
    let offset = |extent: u32| ((extent - side) as f64 / 2.0).round_ties_even() as u32;
    (offset(width), offset(height), side)
}

/// With DiffCut's protocol, `eval --method diffcut` labels each image as `features`
/// then `cut` label the square eval_diffcut.py crops (128×128, the same labels pixel
/// for pixel), and scores them as `eval --predictions` scores those.
#[test]
fn diffcut_protocol_labels_the_cropped_image_as_features_then_cut() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    eval_support::write_labels(&inputs, "cityscapes", root.path(), false);
    write_images(&inputs, root.path(), None);
    let cache = work.path().join("cache");
    let protocol = ["--protocol", "diffcut"];
    let report = eval_diffcut(
        root.path(),
        &cache,
        &work.path().join("model.json"),
        &protocol,
    );
    assert_eq!(report["images_scored"], 3);

    let weights = tiny_weights();
    let predictions = work.path().join("predictions");
    std::fs::create_dir(&predictions).unwrap();
    for image in images(&inputs, "cityscapes") {
        let id = image["id"].as_str().unwrap();
        let city = id.split('_').next().unwrap();
        let source = root.path().join(format!("leftImg8bit/val/{city}/{id}.png"));
        let photo = image::open(&source).unwrap();
        let (left, top, side) = diffcut_crop(photo.width(), photo.height());
        let crop = work.path().join(format!("{id}.crop.png"));
        photo.crop_imm(left, top, side, side).save(&crop).unwrap();
        let features = work.path().join(format!("{id}.safetensors"));
        let output = common::diffseg(&[
            "features",
            path_str(&crop),
            "--out",
            path_str(&features),
            "--input-size",
            "128",
            "--weights",
            &weights,
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        // Without the placement, `cut` labels its 128² square, not the crop's pixels.
        let bytes = std::fs::read(&features).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let bare =
            safetensors::serialize([("features", tensors.tensor("features").unwrap())], None)
                .unwrap();
        std::fs::write(&features, bare).unwrap();
        let labels = predictions.join(format!("{id}.png"));
        let output = common::diffseg(&["cut", path_str(&features), "--out", path_str(&labels)]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        let cached = common::read_labels(&cache.join(format!("{id}.png")));
        assert_eq!(cached.dimensions(), (128, 128), "{id}");
        assert_eq!(cached, common::read_labels(&labels), "{id}");
    }
    let mut folder_args = protocol.to_vec();
    folder_args.extend(["--input-size", "128"]);
    let folder = eval_folder(
        root.path(),
        &predictions,
        &work.path().join("folder.json"),
        &folder_args,
    );
    for metric in ["acc", "miou", "labelled_pixels", "classes"] {
        assert_eq!(report[metric], folder[metric], "{metric}");
    }
}

/// With the paper's protocol, `eval --method diffcut` labels each image at its own
/// size as `segment --method diffcut --fit center-crop` does, and scores as `eval
/// --predictions` scores those; its cache refuses DiffCut's protocol.
#[test]
fn diffcut_paper_protocol_scores_as_segment_then_predictions() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    eval_support::write_labels(&inputs, "cityscapes", root.path(), false);
    write_images(&inputs, root.path(), None);
    let cache = work.path().join("cache");
    let report = eval_diffcut(root.path(), &cache, &work.path().join("model.json"), &[]);

    let out = work.path().join("segmented");
    let weights = tiny_weights();
    let output = common::diffseg(&[
        "segment",
        path_str(&root.path().join("leftImg8bit/val")),
        "--out",
        path_str(&out),
        "--weights",
        &weights,
        "--method",
        "diffcut",
        "--input-size",
        "128",
        "--fit",
        "center-crop",
        "--outputs",
        "labels",
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let folder = eval_folder(root.path(), &out, &work.path().join("folder.json"), &[]);
    for metric in ["acc", "miou", "labelled_pixels", "classes"] {
        assert_eq!(report[metric], folder[metric], "{metric}");
    }
    for image in images(&inputs, "cityscapes") {
        let id = image["id"].as_str().unwrap();
        let cached = common::read_labels(&cache.join(format!("{id}.png")));
        let width = image["width"].as_u64().unwrap() as u32;
        let height = image["height"].as_u64().unwrap() as u32;
        assert_eq!(cached.dimensions(), (width, height), "{id}");
    }

    let weights = tiny_weights();
    let refused = diffseg(&[
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--cache",
        path_str(&cache),
        "--weights",
        &weights,
        "--method",
        "diffcut",
        "--input-size",
        "128",
        "--protocol",
        "diffcut",
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("other settings"),
        "{}",
        stderr_of(&refused)
    );
}

/// `eval --semantic` (the open-vocabulary protocol): the model names each segment from the
/// Cityscapes class names, the cache keeps class maps, the report counts them by name, and
/// what cannot name is refused before any work.
#[test]
fn semantic_runs_name_segments_and_score_the_class_maps() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    eval_support::write_labels(&inputs, "cityscapes", root.path(), false);
    write_images(&inputs, root.path(), None);
    let tokenizer = crate::tokenizer_fixture::unpacked();
    let cache = work.path().join("cache");
    let json = work.path().join("report.json");
    let weights = tiny_weights();
    let args = [
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--cache",
        path_str(&cache),
        "--weights",
        &weights,
        "--backend",
        "cpu",
        "--semantic",
        "--tokenizer",
        path_str(tokenizer.path()),
        "--out",
        path_str(&json),
    ];
    let output = diffseg(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["matching"], "names", "{report}");

    // The cache holds class maps on the model's grid (128 for the tiny model), every pixel
    // one of the 27 classes (every name is a class name), and the report is their sum.
    let dataset = diffseg::eval::Dataset::Cityscapes;
    let samples = dataset.samples(root.path()).unwrap();
    let mut scores = diffseg::eval::Scores::default();
    for sample in &samples {
        let png = cache.join(sample.prediction_file_name());
        let classes = image::open(&png).unwrap().to_luma8();
        assert_eq!(classes.dimensions(), (128, 128), "{png:?}");
        assert!(classes.pixels().all(|p| p[0] < 27), "{png:?}");
        let predicted: Vec<u16> = classes.pixels().map(|p| p[0] as u16).collect();
        scores
            .add(&diffseg::eval::score_sample_by_class(dataset, sample, &predicted, 128).unwrap());
    }
    for (class, counts) in report["classes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(counts["tp"], scores.counts.tp[class], "class {class}");
        assert_eq!(counts["fp"], scores.counts.fp[class], "class {class}");
        assert_eq!(counts["fn"], scores.counts.fn_[class], "class {class}");
    }

    // Segment labels and class maps never share a cache.
    let unnamed: Vec<&str> = args
        .iter()
        .copied()
        .filter(|arg| !["--semantic", "--tokenizer", path_str(tokenizer.path())].contains(arg))
        .collect();
    let refused = diffseg(&unnamed);
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("other settings"),
        "{}",
        stderr_of(&refused)
    );

    // DiffCut cannot name: a usage error before the model loads.
    let mut diffcut = args.to_vec();
    diffcut.extend(["--method", "diffcut"]);
    let refused = diffseg(&diffcut);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("DiffCut cannot name"),
        "{}",
        stderr_of(&refused)
    );
}
