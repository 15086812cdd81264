//! `diffseg cut` end to end: the built binary on feature files written here.

use crate::common;

use common::{diffseg_subcommand, path_str};
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize_to_file, Dtype, TensorView};

const HEIGHT: usize = 6;
const WIDTH: usize = 8;

/// `[6, 8, 3]` features: columns 0–2 point one way, columns 3–7 the opposite way, with a
/// little noise. Two obvious segments.
fn two_group_features() -> Vec<f32> {
    let mut values = Vec::new();
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let noise = ((y * WIDTH + x) as f32 * 0.618).fract() * 0.1;
            if x < 3 {
                values.extend([1.0, noise, 0.0]);
            } else {
                values.extend([-1.0, 0.0, noise]);
            }
        }
    }
    values
}

fn write_features(folder: &Path, values: &[f32]) -> PathBuf {
    let path = folder.join("features.safetensors");
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![HEIGHT, WIDTH, 3], &bytes).unwrap();
    serialize_to_file(vec![("features".to_string(), view)], None, &path).unwrap();
    path
}

fn diffseg(args: &[&str]) -> std::process::Output {
    diffseg_subcommand("cut", args)
}

/// Runs `cut` expecting success and returns the label PNG's values.
fn cut(features: &Path, extra: &[&str]) -> image::GrayImage {
    let out = features.parent().unwrap().join("labels.png");
    let mut args = vec![path_str(features), "--out", path_str(&out)];
    args.extend_from_slice(extra);
    let output = diffseg(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The label PNG is a palette PNG: its values, not its colours, are the labels.
    let (labels, width, height) = diffseg::read_label_png(&out).unwrap();
    let labels = labels
        .into_iter()
        .map(|label| u8::try_from(label).unwrap())
        .collect();
    image::GrayImage::from_raw(width, height, labels).unwrap()
}

#[test]
fn cuts_two_groups_apart() {
    let folder = tempfile::tempdir().unwrap();
    let features = write_features(folder.path(), &two_group_features());
    let labels = cut(&features, &["--mask-size", "16", "--tau", "0.5"]);
    assert_eq!(labels.dimensions(), (16, 16));
    // Feature column x/2 at label column x: the first group covers label columns 0..6.
    let first = labels.get_pixel(0, 0)[0];
    assert_eq!(
        labels.get_pixel(15, 15)[0],
        1 - first,
        "two labels, 0 and 1"
    );
    for y in 0..16 {
        for x in 0..16 {
            assert_eq!(labels.get_pixel(x, y)[0] == first, x < 6, "({x}, {y})");
        }
    }
    // The default label map is DiffCut's 128².
    assert_eq!(cut(&features, &[]).dimensions(), (128, 128));
}

#[test]
fn refines_with_pamr_on_the_image() {
    let folder = tempfile::tempdir().unwrap();
    let features = write_features(folder.path(), &two_group_features());
    let image_path = folder.path().join("image.png");
    // The image's edge at column 10 of 16, not 6: PAMR moves the labels towards it.
    image::RgbImage::from_fn(16, 16, |x, _| {
        if x < 10 {
            image::Rgb([250, 20, 20])
        } else {
            image::Rgb([20, 20, 250])
        }
    })
    .save(&image_path)
    .unwrap();
    let plain = cut(&features, &["--mask-size", "16"]);
    let refined = cut(
        &features,
        &[
            "--mask-size",
            "16",
            "--pamr",
            "--median",
            "--image",
            path_str(&image_path),
        ],
    );
    let first_group = |labels: &image::GrayImage| {
        labels
            .pixels()
            .filter(|p| p[0] == labels.get_pixel(0, 0)[0])
            .count()
    };
    assert!(
        first_group(&refined) > first_group(&plain),
        "PAMR grew the first group towards the image's edge"
    );
}

/// Runs the command expecting failure; the error must be one line naming `expected`, and no
/// output file may be left.
fn assert_fails(features: &Path, extra: &[&str], expected: &[&str]) {
    let out = features.parent().unwrap().join("failed.png");
    let mut args = vec![path_str(features), "--out", path_str(&out)];
    args.extend_from_slice(extra);
    let output = diffseg(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "should fail: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn bad_inputs_are_errors() {
    let folder = tempfile::tempdir().unwrap();
    let mut values = two_group_features();
    values[4] = f32::NAN;
    let features = write_features(folder.path(), &values);
    assert_fails(
        &features,
        &[],
        &[
            "features.safetensors",
            "row 0, column 1, channel 1",
            "not finite",
        ],
    );
    let good = write_features(folder.path(), &two_group_features());
    assert_fails(&good, &["--tau", "0"], &["tau"]);
    assert_fails(&good, &["--alpha=-1"], &["alpha"]);
    assert_fails(&good, &["--mask-size", "0"], &["mask size"]);
    assert_fails(&good, &["--pamr"], &["--image"]);
    let not_safetensors = folder.path().join("junk.safetensors");
    std::fs::write(&not_safetensors, b"not a safetensors file").unwrap();
    assert_fails(&not_safetensors, &[], &["junk.safetensors", "safetensors"]);
}

/// `diffseg features` then `diffseg cut` labels the image at its own size (the
/// placement travels in the file), on the tiny model at a small input size; the
/// file is diffseg's, so a second run may replace it.
#[test]
fn features_then_cut_labels_the_image() {
    let folder = tempfile::tempdir().unwrap();
    let image = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join("chelsea.png");
    let (width, height) = image::image_dimensions(&image).unwrap();
    let features = folder.path().join("chelsea.features.safetensors");
    let weights = common::tiny_weights();
    for _ in 0..2 {
        let output = common::diffseg(&[
            "features",
            path_str(&image),
            "--out",
            path_str(&features),
            "--input-size",
            "128",
            "--weights",
            &weights,
        ]);
        assert!(output.status.success(), "{}", common::text(&output));
    }
    let labels = cut(&features, &[]);
    assert_eq!(labels.dimensions(), (width, height));
}

/// `segment --method diffcut` on a folder labels each image as `features` then
/// `cut` do with the same options (the same labels, pixel for pixel), records
/// DiffCut's options in its JSON, and a second run finds the results done.
#[test]
fn segment_with_diffcut_equals_features_then_cut() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let photo = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join("chelsea.png");
    std::fs::copy(&photo, images.join("chelsea.png")).unwrap();
    let out = folder.path().join("out");
    let weights = common::tiny_weights();
    let segment = |extra: &[&str]| {
        let mut args = vec![
            "segment",
            path_str(&images),
            "--out",
            path_str(&out),
            "--weights",
            &weights,
            "--method",
            "diffcut",
            "--input-size",
            "128",
            "--outputs",
            "labels,json",
        ];
        args.extend_from_slice(extra);
        common::diffseg(&args)
    };
    let output = segment(&[]);
    assert!(output.status.success(), "{}", common::text(&output));
    let (segmented, width, height) = diffseg::read_label_png(&out.join("chelsea.png")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("chelsea.json")).unwrap()).unwrap();
    let settings = &json["settings"];
    assert!(settings.get("merge").is_none(), "{settings}");
    assert_eq!(settings["diffcut"]["input_size"], 128, "{settings}");

    let features = folder.path().join("chelsea.features.safetensors");
    let output = common::diffseg(&[
        "features",
        path_str(&images.join("chelsea.png")),
        "--out",
        path_str(&features),
        "--input-size",
        "128",
        "--weights",
        &weights,
    ]);
    assert!(output.status.success(), "{}", common::text(&output));
    let labels = cut(&features, &[]);
    assert_eq!(labels.dimensions(), (width, height));
    let labels: Vec<u32> = labels.into_raw().into_iter().map(u32::from).collect();
    assert_eq!(labels, segmented);

    // The eigengap variant: `segment --tau auto` labels as `cut --tau auto` does, and
    // records it; DiffSeg refuses it by name.
    let auto_out = folder.path().join("auto");
    let mut args = vec![
        "segment",
        path_str(&images),
        "--out",
        path_str(&auto_out),
        "--weights",
        &weights,
        "--outputs",
        "labels,json",
        "--tau",
        "auto",
    ];
    let refused = common::diffseg(&args);
    assert_eq!(refused.status.code(), Some(2), "{}", common::text(&refused));
    assert!(
        common::text(&refused).contains("tau auto is DiffCut's eigengap variant"),
        "{}",
        common::text(&refused)
    );
    args.extend(["--method", "diffcut", "--input-size", "128"]);
    let output = common::diffseg(&args);
    assert!(output.status.success(), "{}", common::text(&output));
    let (auto, _, _) = diffseg::read_label_png(&auto_out.join("chelsea.png")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(auto_out.join("chelsea.json")).unwrap()).unwrap();
    assert_eq!(json["settings"]["diffcut"]["auto_tau"], true, "{json}");
    let auto_cut = cut(&features, &["--tau", "auto"]);
    let auto_cut: Vec<u32> = auto_cut.into_raw().into_iter().map(u32::from).collect();
    assert_eq!(auto_cut, auto);

    // Done already: the second run skips it; DiffSeg's options are refused with DiffCut.
    let again = segment(&[]);
    assert!(again.status.success(), "{}", common::text(&again));
    assert!(
        common::text(&again).contains("0 segmented, 1 skipped"),
        "{}",
        common::text(&again)
    );
    let refused = segment(&["--anchors", "8"]);
    assert_eq!(refused.status.code(), Some(2), "{}", common::text(&refused));
    assert!(
        common::text(&refused).contains("anchors is an option of DiffSeg"),
        "{}",
        common::text(&refused)
    );
}
