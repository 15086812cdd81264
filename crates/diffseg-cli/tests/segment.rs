//! `diffseg segment` end to end on the tiny random-weight SD fixture: a folder
//! with good and bad images in, results out, a resumed run skipping done work.

use crate::common;

use common::{diffseg, read_labels, text, tiny_weights};
use std::path::{Path, PathBuf};

use image::{DynamicImage, GenericImageView, ImageFormat};

fn example_image(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join(name)
}

/// Every file under `folder`, relative, sorted.
fn files_under(folder: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(folder)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

/// Checks one image's three results against the image.
fn check_results(out: &Path, stem: &str, image: &DynamicImage) {
    let (width, height) = image.dimensions();
    let labels = read_labels(&out.join(format!("{stem}.png")));
    assert_eq!(labels.dimensions(), (width, height));
    let overlay = image::open(out.join(format!("{stem}.overlay.png"))).unwrap();
    assert_eq!(overlay.dimensions(), (width, height));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    assert_eq!(json["width"], width);
    assert_eq!(json["height"], height);
    let segments = json["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let mut total_area = 0;
    for segment in segments {
        let label = segment["label"].as_u64().unwrap() as u16;
        let area = segment["area"].as_u64().unwrap();
        total_area += area;
        // The RLE covers the image, its runs of 1 add up to the area, and
        // decoding it (column-major) gives exactly the label PNG's pixels.
        let rle = &segment["segmentation"];
        assert_eq!(rle["size"], serde_json::json!([height, width]));
        assert!(rle["counts"].is_string(), "compressed RLE: {rle}");
        let rle: diffseg::CocoRle = serde_json::from_value(rle.clone()).unwrap();
        let counts = rle.runs();
        assert_eq!(counts.iter().sum::<u64>(), (width * height) as u64);
        assert_eq!(counts.iter().skip(1).step_by(2).sum::<u64>(), area);
        let mut pixel = 0u64;
        for (run, &count) in counts.iter().enumerate() {
            for offset in 0..count {
                let index = pixel + offset;
                let (x, y) = (
                    (index / height as u64) as u32,
                    (index % height as u64) as u32,
                );
                assert_eq!(
                    labels.get_pixel(x, y).0[0] == label,
                    run % 2 == 1,
                    "{stem}: label {label} at ({x}, {y})"
                );
            }
            pixel += count;
        }
        let bbox: Vec<u64> = segment["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(bbox[0] + bbox[2] <= width as u64 && bbox[1] + bbox[3] <= height as u64);
    }
    assert_eq!(total_area, (width * height) as u64);
}

fn segments_a_folder_and_resumes(backend: &str) {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    let coffee = image::open(example_image("coffee.png"))
        .unwrap()
        .thumbnail(150, 150);
    let rocket = image::open(example_image("rocket.jpg"))
        .unwrap()
        .thumbnail(100, 130);
    coffee
        .save_with_format(images.join("coffee.png"), ImageFormat::Png)
        .unwrap();
    rocket
        .save_with_format(images.join("nested/rocket.jpg"), ImageFormat::Jpeg)
        .unwrap();
    let rocket = image::open(images.join("nested/rocket.jpg")).unwrap();
    std::fs::write(images.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(images.join("empty.jpg"), b"").unwrap();
    std::fs::write(images.join("readme.txt"), b"not an image, not picked up").unwrap();
    let out = folder.path().join("out");
    let (images_arg, out_arg, weights) = (
        images.to_str().unwrap(),
        out.to_str().unwrap(),
        tiny_weights(),
    );

    let first = diffseg(&[
        "segment",
        images_arg,
        "--out",
        out_arg,
        "--weights",
        &weights,
        "--backend",
        backend,
        "--batch-size",
        "2",
    ]);
    // Two bad images: reported, skipped, and the exit status says so.
    assert!(!first.status.success(), "{}", text(&first));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("broken.png") && stderr.contains("empty.jpg"),
        "{}",
        text(&first)
    );
    assert!(
        stderr.contains("2 segmented") && stderr.contains("2 failed"),
        "{}",
        text(&first)
    );
    assert_eq!(
        files_under(&out),
        vec![
            "coffee.json",
            "coffee.overlay.png",
            "coffee.png",
            "nested/rocket.json",
            "nested/rocket.overlay.png",
            "nested/rocket.png"
        ],
        "only whole results, no temporary or partial files"
    );
    check_results(&out, "coffee", &coffee);
    check_results(&out, "nested/rocket", &rocket);

    // The same command again resumes: nothing redone, the bad images retried
    // (and failing again).
    let written = std::fs::metadata(out.join("coffee.png"))
        .unwrap()
        .modified()
        .unwrap();
    let again = diffseg(&[
        "segment",
        images_arg,
        "--out",
        out_arg,
        "--weights",
        &weights,
        "--backend",
        backend,
    ]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("0 segmented, 2 skipped (already done), 2 failed"),
        "{}",
        text(&again)
    );
    assert_eq!(
        std::fs::metadata(out.join("coffee.png"))
            .unwrap()
            .modified()
            .unwrap(),
        written
    );
    // Only done images named: success without loading the model.
    let coffee_path = images.join("coffee.png");
    let done = diffseg(&[
        "segment",
        coffee_path.to_str().unwrap(),
        "--out",
        out_arg,
        "--weights",
        &weights,
        "--backend",
        backend,
    ]);
    assert!(done.status.success(), "{}", text(&done));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("0 segmented, 1 skipped"), "{}", text(&done));
    assert!(!stderr.contains("loading"), "{}", text(&done));

    // --overwrite redoes them.
    let redo = diffseg(&[
        "segment",
        coffee_path.to_str().unwrap(),
        "--out",
        out_arg,
        "--weights",
        &weights,
        "--backend",
        backend,
        "--overwrite",
    ]);
    assert!(redo.status.success(), "{}", text(&redo));
    assert!(
        String::from_utf8_lossy(&redo.stderr).contains("1 segmented"),
        "{}",
        text(&redo)
    );
}

#[test]
fn segments_a_folder_and_resumes_on_ndarray() {
    segments_a_folder_and_resumes("cpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn segments_a_folder_and_resumes_on_wgpu() {
    if diffseg_device::ready_for_tests::<burn::backend::Wgpu>() {
        segments_a_folder_and_resumes("wgpu");
    }
}

/// `diffseg attention` then `diffseg merge` gives what `diffseg segment` gives,
/// at the image's own size: on the tiny model's grids (16, 8, 4, 2) and a
/// non-square image, so the padding's placement must travel in the file.
#[test]
fn attention_then_merge_equals_segment() {
    let folder = tempfile::tempdir().unwrap();
    let image_path = example_image("chelsea.png");
    let (width, height) = image::image_dimensions(&image_path).unwrap();
    assert_ne!(width, height, "the check needs a non-square image");
    let image_path = image_path.to_str().unwrap();
    let weights = tiny_weights();
    let attention = folder.path().join("chelsea.safetensors");
    let merged = folder.path().join("merged.png");
    let out = folder.path().join("out");
    for args in [
        vec![
            "attention",
            image_path,
            "--out",
            attention.to_str().unwrap(),
        ],
        vec!["segment", image_path, "--out", out.to_str().unwrap()],
    ] {
        let step = diffseg(&[args, vec!["--weights", &weights]].concat());
        assert!(step.status.success(), "{}", text(&step));
    }
    let step = diffseg(&[
        "merge",
        attention.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(step.status.success(), "{}", text(&step));

    let merged = read_labels(&merged);
    let segmented = read_labels(&out.join("chelsea.png"));
    assert_eq!(merged.dimensions(), (width, height));
    assert!(
        merged == segmented,
        "merged attention and segment label maps differ"
    );
}

/// `-v` logs the run's steps to stderr (weights resolved, the plan), which a
/// default run does not print; RUST_LOG alone does too.
#[test]
fn verbose_logs_steps_a_default_run_does_not() {
    let folder = tempfile::tempdir().unwrap();
    let image = folder.path().join("small.png");
    image::RgbImage::new(8, 8).save(&image).unwrap();
    let out = folder.path().join("out");
    let weights = tiny_weights();
    let args = [
        "segment",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--weights",
        &weights,
        "--dry-run",
    ];
    let stderr_of = |mut command: std::process::Command| {
        let output = command.env_remove("RUST_LOG").output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let plain = stderr_of(common::command(&args));
    assert!(!plain.contains("weights resolved"), "{plain}");
    let mut verbose = common::command(&["-v"]);
    verbose.args(args);
    let verbose = stderr_of(verbose);
    assert!(
        verbose.contains("INFO") && verbose.contains("weights resolved"),
        "{verbose}"
    );
    assert!(
        verbose.contains("planned") && verbose.contains("todo=1"),
        "{verbose}"
    );
    let mut logged = common::command(&args);
    logged.env("RUST_LOG", "diffseg=info");
    let output = logged.output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("weights resolved"),
        "{}",
        text(&output)
    );
}
