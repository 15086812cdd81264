//! `diffseg segment` for large runs, on the tiny random-weight SD fixture:
//! shards, file lists and the run summary; progress lines in a log; resume that
//! redoes results of other settings; the output folder inside the input;
//! symbolic link loops; damaged images refused.

use crate::common;

use common::{command, stderr_of, text, tiny_weights};
use std::collections::BTreeSet;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

/// Runs `diffseg` with stderr captured (so not a terminal, as in a batch log).
fn diffseg_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn diffseg(args: &[&str]) -> Output {
    diffseg_with_input(args, b"")
}

fn encoded(seed: u32, format: ImageFormat) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(ImageBuffer::from_fn(48, 40, |x, y| {
        Rgb([(x * 5 + seed) as u8, (y * 6) as u8, ((x + y) * seed) as u8])
    }));
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// `count` small PNGs spread over `folder` and two sub-folders.
fn image_folder(folder: &Path, count: u32) {
    for n in 0..count {
        let sub = folder.join(["", "one", "two/deeper"][n as usize % 3]);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("{n}.png")), encoded(n, ImageFormat::Png)).unwrap();
    }
}

/// The lines of a `--dry-run` listing, as (state, input).
fn dry_run(args: &[&str]) -> Vec<(String, String)> {
    let mut args = args.to_vec();
    args.push("--dry-run");
    let output = diffseg(&args);
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            (
                fields.next().unwrap().to_string(),
                fields.next().unwrap().to_string(),
            )
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn shards_and_file_lists_cover_the_images_exactly_once() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    image_folder(&images, 11);
    let out = folder.path().join("out");
    let (images_arg, out_arg) = (images.to_str().unwrap(), out.to_str().unwrap());
    let weights = tiny_weights();
    let base = [
        "segment",
        images_arg,
        "--out",
        out_arg,
        "--weights",
        &weights,
    ];
    let all: BTreeSet<String> = dry_run(&base).into_iter().map(|(_, path)| path).collect();
    assert_eq!(all.len(), 11);
    for count in [2, 3, 4, 11, 12] {
        let mut seen = Vec::new();
        for index in 0..count {
            let shard = format!("{index}/{count}");
            let mut args = base.to_vec();
            args.extend(["--shard", &shard]);
            seen.extend(dry_run(&args).into_iter().map(|(_, path)| path));
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), unique.len(), "{count} shards overlap");
        assert_eq!(unique, all, "{count} shards miss images");
    }

    // The index from an environment variable, as a SLURM array task reads it.
    let output = Command::new(env!("CARGO_BIN_EXE_diffseg"))
        .args(base)
        .args(["--shard", "SLURM_ARRAY_TASK_ID/3", "--dry-run"])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    let mut args = base.to_vec();
    args.extend(["--shard", "2/3"]);
    let expected: Vec<String> = dry_run(&args)
        .into_iter()
        .map(|(state, path)| format!("{state}\t{path}\n"))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        expected.concat(),
        "{}",
        text(&output)
    );

    // Two shards really run, each with a summary: together they did every
    // image once, and each records its settings.
    let mut done = Vec::new();
    for index in 0..2 {
        let summary = folder.path().join(format!("summary-{index}.json"));
        let shard = format!("{index}/2");
        let mut args = base.to_vec();
        args.extend(["--shard", &shard, "--summary", summary.to_str().unwrap()]);
        let output = diffseg(&args);
        assert!(output.status.success(), "{}", text(&output));
        let summary = json(&summary);
        assert_eq!(summary["listed"], 11);
        assert_eq!(summary["shard"]["count"], 2);
        assert_eq!(
            summary["settings"]["merge"]["tau"],
            serde_json::json!([1.1])
        );
        assert_eq!(summary["failed"], serde_json::json!([]));
        assert!(summary["seconds"].as_f64().unwrap() > 0.0);
        done.extend(
            summary["done"]
                .as_array()
                .unwrap()
                .iter()
                .map(|path| path.as_str().unwrap().to_string()),
        );
    }
    done.sort();
    assert_eq!(done, all.iter().cloned().collect::<Vec<_>>());

    // A file list from standard input: one path per line, results mirror the
    // listed folders; a listed file that is missing is a failure in the summary.
    let listed_out = folder.path().join("listed");
    let summary = folder.path().join("listed.json");
    let list = format!(
        "{}\n\n{}\n{}\n",
        images.join("one/1.png").display(),
        images.join("two/deeper/2.png").display(),
        images.join("gone.png").display()
    );
    let output = diffseg_with_input(
        &[
            "segment",
            "--files-from",
            "-",
            "--out",
            listed_out.to_str().unwrap(),
            "--weights",
            &weights,
            "--summary",
            summary.to_str().unwrap(),
        ],
        list.as_bytes(),
    );
    assert!(!output.status.success(), "{}", text(&output));
    let summary = json(&summary);
    assert_eq!(summary["done"].as_array().unwrap().len(), 2, "{summary}");
    assert_eq!(
        summary["failed"][0]["path"],
        images.join("gone.png").to_str().unwrap()
    );
    let mirrored = |path: &Path| {
        let relative: PathBuf = path
            .parent()
            .unwrap()
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        listed_out.join(relative)
    };
    assert!(mirrored(&images.join("one/1.png")).join("1.json").is_file());
    assert!(mirrored(&images.join("two/deeper/2.png"))
        .join("2.json")
        .is_file());
}

#[test]
fn resume_redoes_results_of_other_settings_and_logs_progress() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    image_folder(&images, 3);
    // The output folder inside the input folder.
    let out = images.join("results");
    let (images_arg, out_arg) = (images.to_str().unwrap(), out.to_str().unwrap());
    let weights = tiny_weights();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "segment",
            images_arg,
            "--out",
            out_arg,
            "--weights",
            &weights,
            "--log-every",
            "1",
        ];
        args.extend(extra);
        diffseg(&args)
    };

    let first = run(&[]);
    assert!(first.status.success(), "{}", text(&first));
    let log = stderr_of(&first);
    // stderr is a pipe here: one progress line per image, with rate and ETA.
    for done in 1..=3 {
        assert!(
            log.contains(&format!("progress: {done}/3 images")),
            "{}",
            text(&first)
        );
    }
    assert!(log.contains("images/min") && log.contains("left"), "{log}");
    assert!(log.contains("loading weights"), "{log}");
    let recorded = json(&out.join("0.json"));
    assert_eq!(
        recorded["settings"]["merge"]["tau"],
        serde_json::json!([1.1])
    );
    assert_eq!(recorded["settings"]["fit"], "pad");
    assert_eq!(recorded["settings"]["precision"], "f32");
    assert!(recorded["settings"]["version"].is_string());
    assert!(recorded["segments"].is_array() && recorded["width"] == 48);
    let modified = || {
        std::fs::metadata(out.join("0.png"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let written = modified();

    // Unchanged settings: nothing redone, the results folder not read as input.
    let again = run(&[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        stderr_of(&again).contains("0 segmented, 3 skipped"),
        "{}",
        text(&again)
    );
    assert!(
        stderr_of(&again).contains("not read as input"),
        "{}",
        text(&again)
    );
    assert_eq!(modified(), written);

    // Another τ: the finished results are outdated; kept on request...
    let kept = run(&["--tau", "0.9", "--keep-outdated"]);
    assert!(kept.status.success(), "{}", text(&kept));
    assert!(
        stderr_of(&kept).contains("3 kept with other settings"),
        "{}",
        text(&kept)
    );
    assert_eq!(modified(), written);
    // ... and redone by default.
    let redo = run(&["--tau", "0.9", "--quiet"]);
    assert!(redo.status.success(), "{}", text(&redo));
    assert_eq!(stderr_of(&redo), "", "--quiet prints nothing on success");
    assert_eq!(
        json(&out.join("0.json"))["settings"]["merge"]["tau"],
        serde_json::json!([0.9])
    );
    assert_ne!(modified(), written);
    let listing = dry_run(&[
        "segment",
        images_arg,
        "--out",
        out_arg,
        "--weights",
        &weights,
        "--tau",
        "0.9",
    ]);
    assert_eq!(listing.len(), 3, "{listing:?}");
    assert!(
        listing.iter().all(|(state, _)| state == "done"),
        "{listing:?}"
    );
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_ends() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    image_folder(&images, 2);
    std::os::unix::fs::symlink(&images, images.join("one/loop")).unwrap();
    let out = folder.path().join("out");
    let listing = diffseg(&[
        "segment",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--weights",
        &tiny_weights(),
        "--dry-run",
    ]);
    assert!(listing.status.success(), "{}", text(&listing));
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).lines().count(),
        2,
        "{}",
        text(&listing)
    );
    assert!(
        stderr_of(&listing).contains("symbolic link"),
        "{}",
        text(&listing)
    );
}

#[test]
fn truncated_images_are_refused_and_named() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let jpeg = encoded(3, ImageFormat::Jpeg);
    let png = encoded(4, ImageFormat::Png);
    std::fs::write(images.join("cut.jpg"), &jpeg[..jpeg.len() - 30]).unwrap();
    std::fs::write(images.join("cut.png"), &png[..png.len() - 4]).unwrap();
    std::fs::write(images.join("whole.png"), &png).unwrap();
    let out = folder.path().join("out");
    let weights = tiny_weights();
    let args = [
        "segment",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--weights",
        &weights,
    ];
    let refused = diffseg(&args);
    assert!(!refused.status.success(), "{}", text(&refused));
    let log = stderr_of(&refused);
    for name in ["cut.jpg", "cut.png"] {
        assert!(
            log.lines()
                .any(|line| line.contains(name) && line.contains("truncated or corrupt")),
            "{name} not named as damaged: {log}"
        );
    }
    assert!(
        log.contains("1 segmented") && log.contains("2 failed"),
        "{log}"
    );
    assert!(!out.join("cut.jpg.json").exists() && !out.join("cut.png.json").exists());

    let mut accepting = args.to_vec();
    accepting.push("--allow-truncated");
    let accepted = diffseg(&accepting);
    assert!(accepted.status.success(), "{}", text(&accepted));
    let log = stderr_of(&accepted);
    assert!(
        log.contains("warning") && log.contains("cut.jpg") && log.contains("2 segmented"),
        "{log}"
    );
    assert!(out.join("cut.jpg.json").is_file() && out.join("cut.png.json").is_file());
}
