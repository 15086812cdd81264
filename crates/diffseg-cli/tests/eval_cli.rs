//! `diffseg eval --predictions` end to end on the synthetic dataset of
//! `tools/reference/eval_reference.py`: the JSON report against the reference's
//! values, the Markdown report, and the error messages.

use crate::common;

use crate::eval_support;

use common::{diffseg_subcommand, path_str, stderr_of, stdout_of};
use std::process::Output;

use eval_support::{
    images, load_diffcut_reference, load_fixture, write_diffcut_predictions, write_labels,
    write_predictions,
};
use serde_json::Value;

/// Ratios of identical integer counts, summed in another order.
const RATIO_TOLERANCE: f64 = 1e-12;

fn diffseg(args: &[&str]) -> Output {
    diffseg_subcommand("eval", args)
}

#[test]
fn scores_prediction_folders_like_the_reference() {
    let (inputs, expected) = load_fixture();
    for name in ["cocostuff27", "cityscapes"] {
        let root = tempfile::tempdir().unwrap();
        let predictions = tempfile::tempdir().unwrap();
        let reports = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), false);
        write_predictions(&inputs, name, predictions.path(), false);
        let count = images(&inputs, name).len().to_string();
        let json = reports.path().join("report.json");
        let markdown = reports.path().join("report.md");
        let output = diffseg(&[
            "--dataset",
            name,
            "--root",
            path_str(root.path()),
            "--predictions",
            path_str(predictions.path()),
            "--limit",
            &count,
            "--out",
            path_str(&json),
            "--markdown",
            path_str(&markdown),
        ]);
        assert!(output.status.success(), "{name}: {}", stderr_of(&output));

        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let want = &expected[name];
        assert_eq!(report["dataset"], name);
        assert_eq!(report["images_scored"], want["images"]);
        assert_eq!(report["labelled_pixels"], want["labelled"]);
        for metric in ["acc", "miou"] {
            let (ours, theirs) = (
                report[metric].as_f64().unwrap(),
                want[metric].as_f64().unwrap(),
            );
            assert!(
                (ours - theirs).abs() <= RATIO_TOLERANCE,
                "{name} {metric}: {ours} != {theirs}"
            );
        }
        let classes = report["classes"].as_array().unwrap();
        assert_eq!(classes.len(), 27);
        for (class, (ours, theirs)) in classes
            .iter()
            .zip(want["iou"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(ours["tp"], want["tp"][class], "{name} class {class} TP");
            assert_eq!(ours["fp"], want["fp"][class], "{name} class {class} FP");
            assert_eq!(ours["fn"], want["fn"][class], "{name} class {class} FN");
            match (ours["iou"].as_f64(), theirs.as_f64()) {
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() <= RATIO_TOLERANCE, "{name} class {class}")
                }
                (None, None) => {}
                other => panic!("{name} class {class}: {other:?}"),
            }
        }

        let table = std::fs::read_to_string(&markdown).unwrap();
        let acc = format!("| ACC | {:.2} |", want["acc"].as_f64().unwrap() * 100.0);
        assert!(table.contains(&acc), "{table}");
        assert!(
            table.contains(&format!("Images scored: {count} of {count}.")),
            "{table}"
        );
        assert_eq!(
            stdout_of(&output),
            table,
            "the Markdown report is printed too"
        );
        assert!(stderr_of(&output).contains(&format!("scored {count} of {count} images")));
    }
}

#[test]
fn names_the_missing_or_wrong_file() {
    let (inputs, _) = load_fixture();
    let root = tempfile::tempdir().unwrap();
    let predictions = tempfile::tempdir().unwrap();

    // Missing dataset folder.
    let output = diffseg(&[
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--predictions",
        path_str(predictions.path()),
    ]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("gtFine") && stderr.contains("does not exist"),
        "{stderr}"
    );

    write_labels(&inputs, "cityscapes", root.path(), false);
    write_predictions(&inputs, "cityscapes", predictions.path(), false);
    let args = [
        "--dataset",
        "cityscapes",
        "--root",
        path_str(root.path()),
        "--predictions",
        path_str(predictions.path()),
    ];

    // A prediction missing.
    let missing = predictions
        .path()
        .join("lindau_000001_000019_leftImg8bit.png");
    std::fs::rename(&missing, predictions.path().join("elsewhere.png")).unwrap();
    let output = diffseg(&args);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("lindau_000001_000019_leftImg8bit.png") && stderr.contains("1 of 3"),
        "{stderr}"
    );

    // A prediction of the wrong size.
    image::GrayImage::new(256, 256).save(&missing).unwrap();
    let output = diffseg(&args);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("lindau_000001_000019_leftImg8bit.png") && stderr.contains("256×256"),
        "{stderr}"
    );

    // COCO: the curated list has 2175 images; only 3 labels exist.
    let coco = tempfile::tempdir().unwrap();
    write_labels(&inputs, "cocostuff27", coco.path(), false);
    let output = diffseg(&[
        "--dataset",
        "cocostuff27",
        "--root",
        path_str(coco.path()),
        "--predictions",
        path_str(predictions.path()),
    ]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("000000000872.png") && stderr.contains("2172 of 2175"),
        "{stderr}"
    );

    // An unknown dataset name.
    let output = diffseg(&["--dataset", "ade20k", "--root", path_str(coco.path())]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("cocostuff27 or cityscapes"));
}

/// `--protocol diffcut` scores 128² predictions as DiffCut's eval_diffcut.py does (its
/// input size 1024), against tools/reference/eval_diffcut_reference.py; without
/// --predictions it is a usage error.
#[test]
fn diffcut_protocol_scores_like_its_reference() {
    let (inputs, _) = load_fixture();
    let reference = load_diffcut_reference();
    for case in reference["cases"].as_array().unwrap() {
        if case["input_size"] != 1024 {
            continue;
        }
        let name = case["dataset"].as_str().unwrap();
        let root = tempfile::tempdir().unwrap();
        let predictions = tempfile::tempdir().unwrap();
        let reports = tempfile::tempdir().unwrap();
        write_labels(&inputs, name, root.path(), false);
        write_diffcut_predictions(&inputs, &reference, name, predictions.path());
        let count = images(&inputs, name).len().to_string();
        let json = reports.path().join("report.json");
        let common = [
            "--dataset",
            name,
            "--root",
            path_str(root.path()),
            "--limit",
            &count,
            "--protocol",
            "diffcut",
        ];
        let mut args = common.to_vec();
        args.extend([
            "--predictions",
            path_str(predictions.path()),
            "--out",
            path_str(&json),
        ]);
        let output = diffseg(&args);
        assert!(output.status.success(), "{name}: {}", stderr_of(&output));
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["labelled_pixels"], case["labelled"]);
        for metric in ["acc", "miou"] {
            let (ours, theirs) = (
                report[metric].as_f64().unwrap(),
                case[metric].as_f64().unwrap(),
            );
            assert!(
                (ours - theirs).abs() <= RATIO_TOLERANCE,
                "{name} {metric}: {ours} != {theirs}"
            );
        }
        let output = diffseg(&common);
        assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
        assert!(
            stderr_of(&output).contains("--predictions"),
            "{}",
            stderr_of(&output)
        );
    }
}
