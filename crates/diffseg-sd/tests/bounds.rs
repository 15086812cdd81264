//! Absurd configs and weights files changed under a loaded model (issue 19):
//! each is a typed error naming the file and the field, never a panic, an
//! abort or an allocation the size of the absurd value.
//!
//! Each config test edits one `config.json` of a temporary copy of the tiny
//! fixture and loads it through the public loader.

use crate::common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use burn::tensor::Tensor;
use diffseg_sd::{
    AutoencoderKLConfig, ClipTextConfig, Error, StableDiffusion, StableDiffusionConfig,
    UNet2DConditionModel, UNet2DConditionModelConfig, WeightsSource,
};
use serde_json::{json, Value};

use common::fixtures;

type B = burn::backend::NdArray<f32>;

/// A copy of the tiny diffusers folder (configs and f32 weights only).
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::copy(
        fixtures().join("model_index.json"),
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
                fixtures().join(folder).join(file),
                root.join(folder).join(file),
            )
            .unwrap();
        }
    }
    dir
}

/// Sets `field` of `folder/config.json` to `value` (JSON `null` removes it).
fn set_field(root: &Path, folder: &str, field: &str, value: Value) {
    let path = root.join(folder).join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let object = config.as_object_mut().unwrap();
    if value.is_null() {
        object.remove(field);
    } else {
        object.insert(field.to_string(), value);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Sets `field` of `folder/config.json` and writes it as raw JSON text
/// (numbers serde_json would not produce, e.g. `1e400`).
fn set_raw_field(root: &Path, folder: &str, field: &str, raw: &str) {
    let path = root.join(folder).join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(&format!("\"{field}\""))
        .unwrap_or_else(|| panic!("{field} in {}", path.display()));
    let value_start = start + text[start..].find(':').unwrap() + 1;
    let value_end = value_start + text[value_start..].find([',', '\n', '}']).unwrap();
    let edited = format!("{} {raw}{}", &text[..value_start], &text[value_end..]);
    std::fs::write(&path, edited).unwrap();
}

/// Loads all three networks of the folder at `root`.
fn load(root: &Path) -> Result<StableDiffusion<B>, Error> {
    let source = WeightsSource::detect(root)?;
    StableDiffusion::<B>::load(&source, None, &Default::default())
}

/// The error of loading `root`, which must be [`Error::InvalidConfig`] on
/// `folder/config.json` and `field`; returns its message.
fn assert_invalid(root: &Path, folder: &str, field: &str) -> String {
    let error = load(root).err().expect("an absurd config must not load");
    let message = error.to_string();
    match &error {
        Error::InvalidConfig {
            path: Some(path),
            field: found,
            ..
        } => {
            assert_eq!(path, &root.join(folder).join("config.json"), "{message}");
            assert_eq!(found, field, "{message}");
        }
        other => panic!("expected InvalidConfig on {folder}/{field}, got {other:?}"),
    }
    assert!(
        message.contains(folder) && message.contains(field),
        "{message}"
    );
    message
}

/// The config is refused with `field` named, through the loader.
fn refused(folder: &str, field: &str, value: Value, named: &str) -> String {
    let dir = tiny_copy();
    set_field(dir.path(), folder, field, value);
    assert_invalid(dir.path(), folder, named)
}

#[test]
fn unmodified_copy_loads() {
    let dir = tiny_copy();
    let model = load(dir.path()).expect("the untouched copy loads");
    model.check_weights_unchanged().unwrap();
}

#[test]
fn zero_norm_groups_are_refused() {
    refused("unet", "norm_num_groups", json!(0), "norm_num_groups");
    refused("vae", "norm_num_groups", json!(0), "norm_num_groups");
}

#[test]
fn norm_groups_that_do_not_divide_the_channels_are_refused() {
    let message = refused("unet", "norm_num_groups", json!(3), "norm_num_groups");
    assert!(message.contains("block_out_channels[0] = 8"), "{message}");
    refused("vae", "norm_num_groups", json!(5), "norm_num_groups");
}

#[test]
fn zero_clip_heads_are_refused() {
    refused(
        "text_encoder",
        "num_attention_heads",
        json!(0),
        "num_attention_heads",
    );
}

#[test]
fn clip_heads_that_do_not_divide_the_width_are_refused() {
    // hidden_size 24.
    refused(
        "text_encoder",
        "num_attention_heads",
        json!(5),
        "num_attention_heads",
    );
}

/// SD 1.x configs give the UNet's head count as `attention_head_dim`: the
/// error names that field, not the normalised one.
#[test]
fn zero_unet_heads_are_refused_under_the_field_the_file_uses() {
    let message = refused(
        "unet",
        "attention_head_dim",
        json!(0),
        "attention_head_dim[0]",
    );
    assert!(message.contains("at least 1"), "{message}");
    refused(
        "unet",
        "attention_head_dim",
        json!([2, 2, 2, 3]),
        "attention_head_dim[3]",
    );
    let dir = tiny_copy();
    set_field(dir.path(), "unet", "num_attention_heads", json!(0));
    assert_invalid(dir.path(), "unet", "num_attention_heads[0]");
}

#[test]
fn huge_sample_size_is_refused() {
    let message = refused("unet", "sample_size", json!(100_000), "sample_size");
    assert!(message.contains("at most 256"), "{message}");
}

/// Within the UNet's bound but, times the VAE's downscaling (16 with five
/// blocks), a larger input than the limit.
#[test]
fn sample_size_times_vae_downscaling_is_bounded() {
    let dir = tiny_copy();
    set_field(
        dir.path(),
        "vae",
        "block_out_channels",
        json!([8, 16, 16, 16, 16]),
    );
    set_field(
        dir.path(),
        "vae",
        "down_block_types",
        json!(vec!["DownEncoderBlock2D"; 5]),
    );
    set_field(dir.path(), "unet", "sample_size", json!(256));
    let message = assert_invalid(dir.path(), "unet", "sample_size");
    assert!(message.contains("4096-pixel input"), "{message}");
}

#[test]
fn huge_layer_counts_are_refused() {
    refused(
        "unet",
        "layers_per_block",
        json!(100_000_000),
        "layers_per_block",
    );
    refused(
        "vae",
        "layers_per_block",
        json!(100_000_000),
        "layers_per_block",
    );
    refused(
        "unet",
        "transformer_layers_per_block",
        json!(1_000_000),
        "transformer_layers_per_block[0]",
    );
    refused(
        "text_encoder",
        "num_hidden_layers",
        json!(1_000_000_000),
        "num_hidden_layers",
    );
}

#[test]
fn huge_widths_are_refused() {
    refused(
        "text_encoder",
        "vocab_size",
        json!(1u64 << 40),
        "vocab_size",
    );
    refused(
        "text_encoder",
        "hidden_size",
        json!(1u64 << 40),
        "hidden_size",
    );
    refused(
        "text_encoder",
        "intermediate_size",
        json!(0),
        "intermediate_size",
    );
    refused(
        "text_encoder",
        "max_position_embeddings",
        json!(1u64 << 40),
        "max_position_embeddings",
    );
    refused(
        "unet",
        "block_out_channels",
        json!([8, 16, 16, 1u64 << 40]),
        "block_out_channels[3]",
    );
    refused("vae", "latent_channels", json!(0), "latent_channels");
}

/// The pipeline feeds the text encoder SD's 77 token ids up to 49407.
#[test]
fn a_text_encoder_too_small_for_the_prompt_is_refused() {
    refused(
        "text_encoder",
        "max_position_embeddings",
        json!(76),
        "max_position_embeddings",
    );
    refused("text_encoder", "vocab_size", json!(1000), "vocab_size");
}

#[test]
fn no_blocks_are_refused() {
    let dir = tiny_copy();
    for field in ["block_out_channels", "down_block_types", "up_block_types"] {
        set_field(dir.path(), "unet", field, json!([]));
    }
    assert_invalid(dir.path(), "unet", "block_out_channels (blocks)");
    let dir = tiny_copy();
    for field in ["block_out_channels", "down_block_types"] {
        set_field(dir.path(), "vae", field, json!([]));
    }
    assert_invalid(dir.path(), "vae", "block_out_channels (blocks)");
}

#[test]
fn non_positive_epsilons_are_refused() {
    refused("unet", "norm_eps", json!(-1.0), "norm_eps");
    refused(
        "text_encoder",
        "layer_norm_eps",
        json!(0.0),
        "layer_norm_eps",
    );
}

/// The UNet reads the text encoder's output and the VAE's latent.
#[test]
fn networks_that_do_not_fit_together_are_refused() {
    let message = refused(
        "unet",
        "cross_attention_dim",
        json!(16),
        "cross_attention_dim",
    );
    assert!(message.contains("hidden_size = 24"), "{message}");
    refused("unet", "in_channels", json!(8), "in_channels");
}

/// Negative, fractional, out-of-range and missing values never reach the
/// checks: serde refuses them, and the error names the file.
#[test]
fn numbers_serde_cannot_read_are_bad_configs() {
    for (folder, field, raw) in [
        ("unet", "layers_per_block", "-1"),
        ("unet", "layers_per_block", "2.5"),
        ("unet", "layers_per_block", "1e8"),
        ("unet", "norm_num_groups", "18446744073709551616"),
        ("unet", "norm_eps", "1e400"),
        ("vae", "norm_num_groups", "-4"),
        ("text_encoder", "num_hidden_layers", "1e9"),
        ("text_encoder", "num_attention_heads", "\"three\""),
    ] {
        let dir = tiny_copy();
        set_raw_field(dir.path(), folder, field, raw);
        match load(dir.path()) {
            Err(Error::BadConfig { path, .. }) => {
                assert_eq!(
                    path,
                    dir.path().join(folder).join("config.json"),
                    "{field} = {raw}"
                )
            }
            other => panic!("{folder} {field} = {raw}: expected BadConfig, got {other:?}"),
        }
    }
    let dir = tiny_copy();
    set_field(dir.path(), "text_encoder", "hidden_size", Value::Null);
    let error = load(dir.path()).err().unwrap();
    assert!(
        matches!(error, Error::BadConfig { .. }) && error.to_string().contains("hidden_size"),
        "{error}"
    );
}

/// Configs built in code are checked by `init` and by the loader too; the
/// error has no file to name.
#[test]
fn configs_built_in_code_are_checked_by_init_and_the_loader() {
    let device = Default::default();
    let unet = UNet2DConditionModelConfig::sd_v1_5().with_norm_num_groups(0);
    match unet.init::<B>(&device) {
        Err(Error::InvalidConfig {
            path: None, field, ..
        }) => assert_eq!(field, "norm_num_groups"),
        other => panic!("expected InvalidConfig, got {:?}", other.err()),
    }
    let vae = AutoencoderKLConfig::new(Vec::new());
    assert!(matches!(
        vae.init::<B>(&device),
        Err(Error::InvalidConfig { .. })
    ));
    let clip = ClipTextConfig::sd_v1_5().with_num_attention_heads(0);
    assert!(matches!(
        clip.init::<B>(&device),
        Err(Error::InvalidConfig { .. })
    ));
    let mut pipeline = StableDiffusionConfig::sd_v1_5();
    pipeline.text_encoder.num_hidden_layers = 1_000_000_000;
    assert!(matches!(
        pipeline.init::<B>(&device),
        Err(Error::InvalidConfig { .. })
    ));

    let source = WeightsSource::detect(fixtures()).unwrap();
    let mut tiny = source.config().unwrap();
    tiny.unet.layers_per_block = 100_000_000;
    let error = StableDiffusion::<B>::load(&source, Some(&tiny), &device).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { ref field, .. } if field == "layers_per_block"));
    let error = source
        .load::<B, UNet2DConditionModel<B>>(Some(&tiny.unet), &device)
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
}

/// One network loaded alone reads and checks its config file too.
#[test]
fn one_network_loaded_alone_checks_its_config() {
    let dir = tiny_copy();
    set_field(dir.path(), "unet", "norm_num_groups", json!(0));
    let source = WeightsSource::detect(dir.path()).unwrap();
    let error = source
        .load::<B, UNet2DConditionModel<B>>(None, &Default::default())
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidConfig { path: Some(ref path), .. } if path.ends_with("unet/config.json")),
        "{error}"
    );
}

fn unet_weights(root: &Path) -> PathBuf {
    root.join("unet/diffusion_pytorch_model.safetensors")
}

fn assert_changed(model: &StableDiffusion<B>, file: &Path) -> String {
    match model.check_weights_unchanged() {
        Err(Error::WeightsChanged { path, change }) => {
            assert_eq!(path, file);
            change
        }
        other => panic!(
            "expected WeightsChanged for {}, got {other:?}",
            file.display()
        ),
    }
}

/// Truncating a mapped weights file is caught before the next pass instead
/// of ending the process with SIGBUS in it.
#[test]
fn a_truncated_weights_file_is_reported_before_the_next_pass() {
    let dir = tiny_copy();
    let model = load(dir.path()).unwrap();
    let weights = unet_weights(dir.path());
    File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(100)
        .unwrap();
    let change = assert_changed(&model, &weights);
    assert!(change.contains("-> 100 bytes"), "{change}");
}

/// A rewrite that keeps the length still changes the modification time.
#[test]
fn a_weights_file_rewritten_in_place_is_reported() {
    let dir = tiny_copy();
    let model = load(dir.path()).unwrap();
    let weights = dir.path().join("text_encoder/model.safetensors");
    let file = File::options().write(true).open(&weights).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let change = assert_changed(&model, &weights);
    assert!(change.contains("modified in place"), "{change}");
}

/// A file replaced by a rename (as downloaders do) leaves the mapped one
/// intact: the model keeps working from it.
#[test]
fn a_weights_file_replaced_by_a_rename_is_no_change() {
    let dir = tiny_copy();
    let model = load(dir.path()).unwrap();
    let weights = unet_weights(dir.path());
    let replacement = dir.path().join("replacement");
    std::fs::write(&replacement, b"not weights").unwrap();
    std::fs::rename(&replacement, &weights).unwrap();
    model.check_weights_unchanged().unwrap();
    let device = Default::default();
    let context = model
        .text_encoder
        .forward(diffseg_sd::empty_prompt_ids::<B>(&device));
    let latent = Tensor::<B, 4>::zeros([1, 4, 16, 16], &device);
    let noise = model.unet.forward(latent, 300.0, context);
    diffseg_sd::ensure_finite(&noise, "noise prediction").unwrap();
}

/// A single-file checkpoint is one mapping for all three networks.
#[test]
fn a_truncated_single_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-ldm.safetensors");
    std::fs::copy(fixtures().join("tiny-ldm.safetensors"), &file).unwrap();
    let source = WeightsSource::detect(&file).unwrap();
    let config = WeightsSource::detect(fixtures()).unwrap().config().unwrap();
    let model = StableDiffusion::<B>::load(&source, Some(&config), &Default::default()).unwrap();
    model.check_weights_unchanged().unwrap();
    File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(8)
        .unwrap();
    assert_changed(&model, &file);
}

/// Found by `readers_prop`: a config file that is not UTF-8 was an I/O error.
#[test]
fn a_config_file_that_is_not_utf8_is_a_bad_config() {
    let dir = tiny_copy();
    let config = dir.path().join("vae/config.json");
    std::fs::write(&config, [0x80]).unwrap();
    match load(dir.path()) {
        Err(Error::BadConfig { path, .. }) => assert_eq!(path, config),
        other => panic!("expected BadConfig, got {other:?}"),
    }
}
