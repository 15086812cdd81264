//! The CLI on bad inputs: one clear error line, a non-zero exit, no output
//! files, never a panic.

mod common;

use common::{command, tiny_weights};
use std::path::Path;
use std::process::Output;

fn diffseg(args: &[&str], hf_home: &Path) -> Output {
    command(args).env("HF_HOME", hf_home).output().unwrap()
}

fn assert_clean_failure(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for text in expected {
        assert!(stderr.contains(text), "`{text}` not in: {stderr}");
    }
}

#[test]
fn bad_inputs_fail_cleanly() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let good = dir.join("good.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]))
        .save(&good)
        .unwrap();
    let corrupt = dir.join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xFF\xD8\xFF\xE0 not really a jpeg").unwrap();
    let out = dir.join("out");
    let weights = tiny_weights();
    let (good, corrupt, out_arg) = (
        good.to_str().unwrap(),
        corrupt.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    // A path that does not exist, next to a corrupt image: both reported.
    let missing = dir.join("missing.png");
    let output = diffseg(
        &[
            "segment",
            missing.to_str().unwrap(),
            corrupt,
            "--out",
            out_arg,
            "--weights",
            &weights,
        ],
        dir,
    );
    assert_clean_failure(&output, &["missing.png", "corrupt.jpg", "2 failed"]);
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());

    // No weights anywhere and offline: the error says which files to put where.
    let output = diffseg(&["segment", good, "--out", out_arg], dir);
    assert_clean_failure(
        &output,
        &[
            "unet/config.json",
            "text_encoder/model.safetensors",
            "--weights",
        ],
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());

    // Weights that are not weights.
    let output = diffseg(
        &["segment", good, "--out", out_arg, "--weights", corrupt],
        dir,
    );
    assert_clean_failure(&output, &["corrupt.jpg"]);

    // A backend that is not compiled in or does not exist.
    let output = diffseg(
        &["segment", good, "--out", out_arg, "--backend", "tpu"],
        dir,
    );
    assert_clean_failure(&output, &["tpu"]);

    // f16 on the CPU.
    let output = diffseg(
        &[
            "segment",
            good,
            "--out",
            out_arg,
            "--weights",
            &weights,
            "--precision",
            "f16",
        ],
        dir,
    );
    assert_clean_failure(&output, &["f16"]);

    // `attention` on a corrupt image: no output file.
    let attention = dir.join("attn.safetensors");
    let output = diffseg(
        &[
            "attention",
            corrupt,
            "--out",
            attention.to_str().unwrap(),
            "--weights",
            &weights,
        ],
        dir,
    );
    assert_clean_failure(&output, &["corrupt.jpg"]);
    assert!(!attention.exists());
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// An error's cause is said once: a message that already quotes its cause does
/// not also hand it on to be printed again after it.
#[test]
fn causes_are_printed_once() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let image = dir.join("good.png");
    image::RgbImage::new(8, 8).save(&image).unwrap();
    // A weights folder whose config files cannot be read: each is a folder.
    let weights = dir.join("weights");
    for component in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(weights.join(component).join("config.json")).unwrap();
    }
    std::fs::write(weights.join("model_index.json"), "{}").unwrap();
    let output = diffseg(
        &[
            "segment",
            image.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ],
        dir,
    );
    assert_clean_failure(&output, &["config.json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let cause = "Is a directory";
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
}
