//! `diffseg merge` end to end: the built binary on attention files written here.

use crate::common;

use common::{diffseg_subcommand, path_str, read_labels};
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize_to_file, Dtype, TensorView};

/// Attention of each side where every cell attends uniformly to its own grid quadrant:
/// four obvious segments (and exact zeros, which the merge must survive).
fn quadrant_attention(side: usize) -> Vec<f32> {
    let cells = side * side;
    let quadrant = |cell: usize| ((cell / side) * 2 / side) * 2 + (cell % side) * 2 / side;
    let mut probs = vec![0f32; cells * cells];
    for query in 0..cells {
        for key in 0..cells {
            if quadrant(query) == quadrant(key) {
                probs[query * cells + key] = 4.0 / cells as f32;
            }
        }
    }
    probs
}

/// Writes `tensors` (name, shape, f32 values) as f16 or f32 safetensors.
fn write_file(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>, f16: bool) {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = if f16 {
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect()
            } else {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            (name, shape, bytes)
        })
        .collect();
    let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
    let views: Vec<(String, TensorView)> = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    serialize_to_file(views, None, path).unwrap();
}

fn all_sides(f16: bool, folder: &Path) -> PathBuf {
    let path = folder.join("attention.safetensors");
    let tensors = [64usize, 32, 16, 8]
        .iter()
        .map(|&side| {
            (
                format!("self_attn.{side}"),
                vec![side * side, side * side],
                quadrant_attention(side),
            )
        })
        .collect();
    write_file(&path, tensors, f16);
    path
}

fn diffseg(args: &[&str]) -> std::process::Output {
    diffseg_subcommand("merge", args)
}

#[test]
fn merges_into_four_segments() {
    let folder = tempfile::tempdir().unwrap();
    let attention = all_sides(true, folder.path());
    let out = folder.path().join("labels.png");
    let json = folder.path().join("labels.json");
    let output = diffseg(&[
        path_str(&attention),
        "--out",
        path_str(&out),
        "--json",
        path_str(&json),
        "--size",
        "128",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let labels = read_labels(&out);
    assert_eq!(labels.dimensions(), (128, 128));
    assert_eq!(
        [
            labels.get_pixel(0, 0)[0],
            labels.get_pixel(127, 0)[0],
            labels.get_pixel(0, 127)[0],
            labels.get_pixel(127, 127)[0]
        ],
        [0, 1, 2, 3]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // The one segmentation schema `diffseg segment` writes too.
    assert_eq!(summary["width"], 128);
    assert_eq!(summary["segments"].as_array().unwrap().len(), 4);
    assert_eq!(summary["segments"][0]["area"], 64 * 64);
    assert_eq!(
        summary["segments"][0]["bbox"],
        serde_json::json!([0, 0, 64, 64])
    );
    assert_eq!(
        summary["segments"][0]["segmentation"]["size"],
        serde_json::json!([128, 128])
    );
}

/// Runs the command expecting failure; the error must be one line naming `expected`, and no
/// output file may be left.
fn assert_fails(attention: &Path, expected: &[&str]) {
    let folder = attention.parent().unwrap();
    let out = folder.join("labels.png");
    let output = diffseg(&[
        path_str(attention),
        "--out",
        path_str(&out),
        "--json",
        path_str(&folder.join("l.json")),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "should fail: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }
    assert!(
        !out.exists() && !folder.join("l.json").exists(),
        "no output may be left"
    );
}

#[test]
fn no_attention_tensor() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("a.safetensors");
    write_file(
        &path,
        vec![("attention.8".into(), vec![64, 64], quadrant_attention(8))],
        false,
    );
    assert_fails(&path, &["a.safetensors", "no self_attn"]);
}

#[test]
fn wrong_shape() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("a.safetensors");
    write_file(
        &path,
        vec![("self_attn.8".into(), vec![8, 8], vec![0.125; 64])],
        false,
    );
    assert_fails(&path, &["self_attn.8", "shape [8, 8]", "[64, 64]"]);
}

#[test]
fn nan_values() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("a.safetensors");
    let mut values = quadrant_attention(8);
    values[100] = f32::NAN;
    write_file(
        &path,
        vec![("self_attn.8".into(), vec![1, 64, 64], values)],
        true,
    );
    assert_fails(&path, &["self_attn.8", "non-finite"]);
}

#[test]
fn rows_not_distributions() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("a.safetensors");
    let mut values = quadrant_attention(8);
    values[64 * 3] += 0.5;
    write_file(
        &path,
        vec![("self_attn.8".into(), vec![64, 64], values)],
        false,
    );
    assert_fails(&path, &["self_attn.8", "row 3", "sums to 1.5"]);
}

#[test]
fn unreadable_file() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("a.safetensors");
    assert_fails(&path, &["a.safetensors", "cannot read"]);
    std::fs::write(&path, b"not safetensors").unwrap();
    assert_fails(&path, &["a.safetensors", "not a safetensors file"]);
}
