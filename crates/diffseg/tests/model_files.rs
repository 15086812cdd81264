//! Absurd model configs and weights files changed under a running
//! `Segmenter` (issue 19), through the facade: a typed load error naming the
//! file and the field, never a panic, an abort or the machine's memory.

use std::path::{Path, PathBuf};

use diffseg::{Error, Segmenter};
use image::{DynamicImage, RgbImage};

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

/// A copy of the tiny diffusers folder (configs and f32 weights).
fn tiny_copy(root: &Path) -> PathBuf {
    std::fs::copy(
        tiny_weights().join("model_index.json"),
        root.join("model_index.json"),
    )
    .unwrap();
    for (folder, weights) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        std::fs::create_dir(root.join(folder)).unwrap();
        for file in ["config.json", weights] {
            std::fs::copy(
                tiny_weights().join(folder).join(file),
                root.join(folder).join(file),
            )
            .unwrap();
        }
    }
    root.to_path_buf()
}

fn build(weights: &Path) -> Result<Segmenter, Error> {
    Segmenter::builder()
        .weights(weights)
        .allow_download(false)
        .build()
}

/// Each absurd value that used to panic, divide by zero or exhaust memory.
#[test]
fn absurd_configs_are_load_errors_naming_the_file_and_field() {
    for (folder, field, value, named) in [
        ("unet", "norm_num_groups", "0", "norm_num_groups"),
        ("unet", "attention_head_dim", "0", "attention_head_dim[0]"),
        ("unet", "sample_size", "100000", "sample_size"),
        ("unet", "layers_per_block", "100000000", "layers_per_block"),
        (
            "text_encoder",
            "num_attention_heads",
            "0",
            "num_attention_heads",
        ),
        (
            "text_encoder",
            "num_hidden_layers",
            "1000000000",
            "num_hidden_layers",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = tiny_copy(dir.path());
        let config = root.join(folder).join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&config, json.to_string()).unwrap();
        match build(&root) {
            Err(Error::Load { error, .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains(&config.display().to_string())
                        && message.contains(&format!("`{named}`")),
                    "{field} = {value}: {message}"
                );
            }
            Err(other) => panic!("{field} = {value}: expected a load error, got {other}"),
            Ok(_) => panic!("{field} = {value} loaded"),
        }
    }
}

/// Truncating the weights under a loaded segmenter makes the next call fail
/// with a typed error instead of SIGBUS inside it.
#[test]
fn weights_truncated_under_a_segmenter_fail_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_copy(dir.path());
    let segmenter = build(&root).unwrap();
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
    }));
    segmenter.segment(&image).expect("the intact copy segments");
    let weights = root.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(0)
        .unwrap();
    match segmenter.segment(&image) {
        Err(Error::Load { error, .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&weights.display().to_string())
                    && message.contains("changed on disk"),
                "{message}"
            );
        }
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("segmented from a truncated weights file"),
    }
}
