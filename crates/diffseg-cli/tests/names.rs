//! `diffseg segment --vocabulary` on the tiny random-weight SD fixture with CLIP's published
//! tokenizer (issue 20): names in the JSON, a one-entry vocabulary naming every segment with
//! it, a vocabulary change redoing results, and a model without a tokenizer refused clearly.

use crate::common::{diffseg_subcommand, path_str, stderr_of, stdout_of, text, tiny_weights};
use crate::tokenizer_fixture;
use std::path::{Path, PathBuf};

fn example_image() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images/coffee.png"
    ))
}

fn segments(out: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("coffee.json")).unwrap()).unwrap();
    json["segments"].as_array().unwrap().clone()
}

fn segment(out: &Path, extra: &[&str]) -> std::process::Output {
    let weights = tiny_weights();
    let image = example_image();
    let mut args = vec![
        path_str(&image),
        "--out",
        path_str(out),
        "--weights",
        &weights,
        // The tiny model's attention is nearly uniform: at the paper's τ every image is one
        // segment; this τ gives several.
        "--tau",
        "0.004",
    ];
    args.extend_from_slice(extra);
    diffseg_subcommand("segment", &args)
}

#[test]
fn names_appear_in_the_json_and_a_new_vocabulary_redoes_the_image() {
    let tokenizer = tokenizer_fixture::unpacked();
    let out = tempfile::tempdir().unwrap();
    let plain = segment(out.path(), &["--outputs", "json,overlay"]);
    assert!(plain.status.success(), "{}", text(&plain));
    let plain_segments = segments(out.path());
    assert!(plain_segments.iter().all(|s| s.get("name").is_none()));
    let plain_overlay = std::fs::read(out.path().join("coffee.overlay.png")).unwrap();

    let entries = "sky,a red car,person";
    let naming = [
        "--outputs",
        "json,overlay",
        "--vocabulary",
        entries,
        "--top-k",
        "2",
        "--tokenizer",
        path_str(tokenizer.path()),
    ];
    let listed = segment(out.path(), &[&naming[..], &["--dry-run"]].concat());
    let listing = stdout_of(&listed);
    assert!(
        listing.contains("outdated") && listing.contains("vocabulary none"),
        "a result without names is outdated: {}",
        text(&listed)
    );
    let named = segment(out.path(), &naming);
    assert!(named.status.success(), "{}", text(&named));
    let named_segments = segments(out.path());
    assert_eq!(named_segments.len(), plain_segments.len());
    for (named, plain) in named_segments.iter().zip(&plain_segments) {
        assert_eq!(
            named["segmentation"], plain["segmentation"],
            "the masks changed"
        );
        let name = named["name"].as_str().unwrap();
        assert!(entries.split(',').any(|entry| entry == name), "{name}");
        let names = named["names"].as_array().unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[0]["name"], named["name"]);
        assert_eq!(names[0]["score"], named["name_score"]);
    }
    let overlay = std::fs::read(out.path().join("coffee.overlay.png")).unwrap();
    assert_ne!(overlay, plain_overlay, "the overlay has no legend");

    // A one-entry vocabulary names every segment with it.
    let one = segment(
        out.path(),
        &[
            "--vocabulary",
            "road surface",
            "--tokenizer",
            path_str(tokenizer.path()),
        ],
    );
    assert!(one.status.success(), "{}", text(&one));
    let segments = segments(out.path());
    assert!(segments.len() > 1);
    assert!(
        segments.iter().all(|s| s["name"] == "road surface"),
        "{segments:?}"
    );
}

#[test]
fn a_model_without_a_tokenizer_is_a_usage_error_naming_the_folder() {
    let out = tempfile::tempdir().unwrap();
    let run = segment(out.path(), &["--vocabulary", "coco-stuff-27"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let stderr = stderr_of(&run);
    let folder = Path::new(&tiny_weights()).join("tokenizer");
    assert!(stderr.contains(&folder.display().to_string()), "{stderr}");
    assert!(stderr.contains("no CLIP tokenizer"), "{stderr}");
    assert!(!out.path().join("coffee.json").exists());
    let diffcut = segment(out.path(), &["--vocabulary", "sky", "--method", "diffcut"]);
    assert_eq!(diffcut.status.code(), Some(2), "{}", text(&diffcut));
}
