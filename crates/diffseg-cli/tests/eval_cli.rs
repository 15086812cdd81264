//! `diffseg eval --predictions` end to end on the synthetic dataset of
//! `tools/reference/eval_reference.py`: the JSON report against the reference's
//! values, the Markdown report, and the error messages.

#[path = "../../diffseg/tests/eval_support/mod.rs"]
mod eval_support;

use std::path::Path;
use std::process::{Command, Output};

use eval_support::{images, load_fixture, write_labels, write_predictions};
use serde_json::Value;

/// Ratios of identical integer counts, summed in another order.
const RATIO_TOLERANCE: f64 = 1e-12;

fn diffseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffseg"))
        .arg("eval")
        .args(args)
        .output()
        .expect("diffseg runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
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
            path(root.path()),
            "--predictions",
            path(predictions.path()),
            "--limit",
            &count,
            "--out",
            path(&json),
            "--markdown",
            path(&markdown),
        ]);
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));

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
            text(&output.stdout),
            table,
            "the Markdown report is printed too"
        );
        assert!(text(&output.stderr).contains(&format!("scored {count} of {count} images")));
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
        path(root.path()),
        "--predictions",
        path(predictions.path()),
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
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
        path(root.path()),
        "--predictions",
        path(predictions.path()),
    ];

    // A prediction missing.
    let missing = predictions
        .path()
        .join("lindau_000001_000019_leftImg8bit.png");
    std::fs::rename(&missing, predictions.path().join("elsewhere.png")).unwrap();
    let output = diffseg(&args);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("lindau_000001_000019_leftImg8bit.png") && stderr.contains("1 of 3"),
        "{stderr}"
    );

    // A prediction of the wrong size.
    image::GrayImage::new(256, 256).save(&missing).unwrap();
    let output = diffseg(&args);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
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
        path(coco.path()),
        "--predictions",
        path(predictions.path()),
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("000000000872.png") && stderr.contains("2172 of 2175"),
        "{stderr}"
    );

    // An unknown dataset name.
    let output = diffseg(&["--dataset", "ade20k", "--root", path(coco.path())]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("cocostuff27 or cityscapes"));
}
