//! `diffseg view`: the gallery of a folder of results, on the tiny
//! random-weight SD fixture (τ 0.004, so each image gets several segments).

use crate::common;

use common::{diffseg, path_str, text, tiny_weights};
use std::path::{Path, PathBuf};

fn example_image(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join(name)
}

/// Segments `photos` into `out` with the tiny model.
fn segment(photos: &Path, out: &Path) {
    let weights = tiny_weights();
    let output = diffseg(&[
        "segment",
        path_str(photos),
        "--out",
        path_str(out),
        "--weights",
        &weights,
        "--tau",
        "0.004",
        "--quiet",
    ]);
    assert!(output.status.success(), "{}", text(&output));
}

/// Two example photos, one in a sub-folder, segmented into `<root>/out`.
fn segmented(root: &Path) -> (PathBuf, PathBuf) {
    let photos = root.join("photos");
    std::fs::create_dir_all(photos.join("cats")).unwrap();
    std::fs::copy(example_image("astronaut.png"), photos.join("astronaut.png")).unwrap();
    std::fs::copy(
        example_image("chelsea.png"),
        photos.join("cats/chelsea.png"),
    )
    .unwrap();
    let out = root.join("out");
    segment(&photos, &out);
    (photos, out)
}

/// The number of segments each result's JSON lists.
fn segment_count(json: &Path) -> usize {
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    value["segments"].as_array().expect("segments").len()
}

/// The `<figure ...>` start tags of a page.
fn figure_tags(html: &str) -> Vec<&str> {
    html.match_indices("<figure ")
        .map(|(start, _)| &html[start..start + html[start..].find('>').unwrap()])
        .collect()
}

#[test]
fn the_gallery_has_one_figure_per_result_with_its_segment_count_and_no_network() {
    let root = tempfile::tempdir().unwrap();
    let (_photos, out) = segmented(root.path());
    // A report beside the results is not a result.
    std::fs::write(out.join("summary.json"), r#"{"done": []}"#).unwrap();

    let output = diffseg(&["view", path_str(&out)]);
    assert!(output.status.success(), "{}", text(&output));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();

    let expected = [
        ("astronaut", segment_count(&out.join("astronaut.json"))),
        (
            "cats/chelsea",
            segment_count(&out.join("cats/chelsea.json")),
        ),
    ];
    assert!(expected.iter().all(|(_, count)| *count > 1), "{expected:?}");
    let tags = figure_tags(&html);
    assert_eq!(tags.len(), expected.len(), "{tags:?}");
    for (tag, (name, count)) in tags.iter().zip(expected) {
        assert!(
            tag.contains(&format!(r#"data-image="{name}" data-segments="{count}""#)),
            "{tag}"
        );
        // One legend entry per segment, links to the result's files.
        for link in [
            format!(r#"href="{name}.json""#),
            format!(r#"href="{name}.png""#),
            format!(r#"src="{name}.overlay.png""#),
        ] {
            assert!(html.contains(&link), "{link} missing");
        }
    }
    assert_eq!(
        html.matches("<li data-label=").count(),
        expected.iter().map(|(_, count)| count).sum::<usize>()
    );
    // Without --images no photo is shown: the label PNG `astronaut.png` has the
    // photo's name, but is not it.
    assert!(!html.contains(r#"class="photo""#));
    // Each figure carries its label map for hovering.
    assert_eq!(html.matches("data-map=\"data:image/png;base64,").count(), 2);
    let lowercase = html.to_lowercase();
    for network in ["http://", "https://", "//cdn", "<link"] {
        assert!(!lowercase.contains(network), "the page refers to {network}");
    }
}

#[test]
fn photos_are_found_with_images_and_linked_relatively() {
    let root = tempfile::tempdir().unwrap();
    let (photos, out) = segmented(root.path());
    let output = diffseg(&["view", path_str(&out), "--images", path_str(&photos)]);
    assert!(output.status.success(), "{}", text(&output));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains(r#"src="../photos/astronaut.png""#));
    assert!(html.contains(r#"src="../photos/cats/chelsea.png""#));
    assert!(html.contains(r#"id="opacity""#), "an overlay slider");
}

#[test]
fn the_gallery_replaces_its_own_page_but_never_another() {
    let root = tempfile::tempdir().unwrap();
    let (_photos, out) = segmented(root.path());
    let index = out.join("index.html");
    for _ in 0..2 {
        let output = diffseg(&["view", path_str(&out)]);
        assert!(output.status.success(), "{}", text(&output));
    }

    std::fs::write(&index, "<!DOCTYPE html><p>my own page</p>").unwrap();
    let output = diffseg(&["view", path_str(&out)]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("index.html"),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&index).unwrap(),
        "<!DOCTYPE html><p>my own page</p>"
    );
}

#[test]
fn a_folder_without_results_is_an_error_and_gets_no_page() {
    let root = tempfile::tempdir().unwrap();
    let output = diffseg(&["view", path_str(root.path())]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no results"),
        "{}",
        text(&output)
    );
    assert!(!root.path().join("index.html").exists());
}

#[test]
fn pages_beyond_the_first_start_hidden() {
    let root = tempfile::tempdir().unwrap();
    let (_photos, out) = segmented(root.path());
    let output = diffseg(&["view", path_str(&out), "--page-size", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let tags = figure_tags(&html);
    assert!(!tags[0].ends_with(" hidden"), "{}", tags[0]);
    assert!(tags[1].ends_with(" hidden"), "{}", tags[1]);
    assert!(html.contains(r#"data-page-size="1""#));
}

#[test]
fn a_result_without_overlay_is_shown_from_its_label_map() {
    let root = tempfile::tempdir().unwrap();
    let (_photos, out) = segmented(root.path());
    std::fs::remove_file(out.join("astronaut.overlay.png")).unwrap();
    let output = diffseg(&["view", path_str(&out)]);
    assert!(output.status.success(), "{}", text(&output));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let start = html.find(r#"data-image="astronaut""#).unwrap();
    let figure = &html[start..start + html[start..].find("</figure>").unwrap()];
    assert!(figure.contains(r#"class="stage map-only""#), "{figure}");
    assert!(!figure.contains("<img"), "{figure}");
    assert!(figure.contains("data-map="), "{figure}");
    assert!(!figure.contains("overlay.png"), "{figure}");
}
