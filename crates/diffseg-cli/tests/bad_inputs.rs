//! The CLI on bad inputs: one clear error line, a non-zero exit, no output
//! files, never a panic.

use crate::common;

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

/// Each exit status means one thing: 0 all done, 1 some inputs failed, 2 a
/// usage error, 3 nothing could run; and the top-level help lists them.
#[test]
fn exit_codes_say_what_happened() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let good = dir.join("good.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]))
        .save(&good)
        .unwrap();
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n not really a png").unwrap();
    let weights = tiny_weights();
    let (good, corrupt) = (good.to_str().unwrap(), corrupt.to_str().unwrap());
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let code = |args: &[&str]| {
        let output = diffseg(args, dir);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (output.status.code(), stderr)
    };
    let with_weights = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--weights", &weights]);
        code(&all)
    };

    let (status, stderr) = with_weights(&["segment", good, "--out", &out("all-good")]);
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr) = with_weights(&["segment", good, corrupt, "--out", &out("one-bad")]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("corrupt.png"), "{stderr}");
    // Usage errors: clap's, and values refused once parsed, before any work.
    for bad in [
        &["--batch-size", "0"][..],
        &["--tau=-1"],
        &["--precision", "f16"],
        &["--outputs", "labels,thumbnail"],
    ] {
        let usage_out = out("usage");
        let mut args = vec!["segment", good, "--out", &usage_out];
        args.extend_from_slice(bad);
        let (status, stderr) = with_weights(&args);
        assert_eq!(status, Some(2), "{bad:?}: {stderr}");
    }
    // No weights anywhere, offline: nothing could run.
    let (status, stderr) = code(&["segment", good, "--out", &out("no-weights")]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(stderr.contains("--weights"), "{stderr}");
    assert!(!dir.join("usage").exists() && !dir.join("no-weights").exists());

    let help = diffseg(&["--help"], dir);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Exit status:"), "{help}");
    for line in ["  0  ", "  1  ", "  2  ", "  3  "] {
        assert!(help.contains(line), "`{line}` not in: {help}");
    }
}
