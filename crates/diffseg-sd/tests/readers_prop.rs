//! Property tests of the readers of outside bytes: config files and
//! safetensors files. Whatever they hold, the result is a typed error or a
//! usable value; never a panic, and never an allocation sized by a number in
//! the file. A config the loader accepts must also build.
//!
//! Case counts are small (a few seconds in all); a failure is shrunk to a
//! minimal input by proptest and belongs in a named regression test.

use crate::common;

use std::path::Path;

use diffseg_sd::{
    AutoencoderKLConfig, ClipTextConfig, Error, StableDiffusion, UNet2DConditionModelConfig,
    WeightsSource,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use common::fixtures;

type B = burn::backend::NdArray<f32>;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// The error kinds a config reader may return.
fn is_config_error(error: &Error) -> bool {
    matches!(
        error,
        Error::BadConfig { .. } | Error::UnsupportedConfig { .. } | Error::InvalidConfig { .. }
    )
}

/// JSON values aimed at the checks: small counts, the bounds and one past
/// them, huge and negative numbers, fractions, the strings the configs
/// know, lists of counts, and the odd object.
fn json_value() -> impl Strategy<Value = Value> {
    let edges = prop::sample::select(vec![
        0u64,
        1,
        2,
        3,
        76,
        77,
        255,
        256,
        257,
        2048,
        16384,
        16385,
        49407,
        49408,
        1 << 20,
        (1 << 20) + 1,
        u64::MAX,
    ]);
    let names = prop::sample::select(vec![
        "silu",
        "gelu",
        "quick_gelu",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
        "DownEncoderBlock2D",
        "",
    ]);
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0u64..40).prop_map(Value::from),
        edges.prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        names.clone().prop_map(Value::from),
        prop::collection::vec(0u64..40, 0..10).prop_map(Value::from),
        prop::collection::vec(names, 0..10).prop_map(Value::from),
        Just(json!({ "nested": [1, 2] })),
    ]
}

/// Edits of a config: each sets one field (one the file has, or one of
/// `extra`) to an arbitrary value, or removes it.
fn edits(fields: Vec<String>) -> impl Strategy<Value = Vec<(String, Option<Value>)>> {
    let edit = (
        prop::sample::select(fields),
        prop::option::weighted(0.9, json_value()),
    );
    prop::collection::vec(edit, 1..4)
}

/// The keys of `folder/config.json` in the tiny fixture, plus the options
/// that file leaves out but the reader looks at.
fn fields(folder: &str, extra: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join(folder).join("config.json")).unwrap();
    let config: Map<String, Value> = serde_json::from_str(&text).unwrap();
    config
        .keys()
        .cloned()
        .chain(extra.iter().map(|field| field.to_string()))
        .collect()
}

/// Writes the tiny fixture's `folder/config.json` with `edits` applied to `dir`.
fn write_edited(dir: &Path, folder: &str, edits: &[(String, Option<Value>)]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(fixtures().join(folder).join("config.json")).unwrap();
    let mut config: Map<String, Value> = serde_json::from_str(&text).unwrap();
    for (field, value) in edits {
        match value {
            Some(value) => config.insert(field.clone(), value.clone()),
            None => config.remove(field),
        };
    }
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// A config the reader returns builds; anything else is a config error
/// naming the file.
fn check_config<C>(
    path: &Path,
    read: impl Fn(&Path) -> Result<C, Error>,
    init: impl Fn(&C) -> Result<(), Error>,
) -> Result<(), TestCaseError> {
    match read(path) {
        Ok(config) => {
            let built = init(&config);
            prop_assert!(built.is_ok(), "accepted but not built: {:?}", built.err());
        }
        Err(error) => {
            prop_assert!(is_config_error(&error), "{error:?}");
            prop_assert!(
                error.to_string().contains(&path.display().to_string()),
                "{error}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unet_config_fields_take_any_value(
        edits in edits(fields("unet", &["num_attention_heads", "sample_size"]))
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_edited(dir.path(), "unet", &edits);
        check_config(&path, |p| UNet2DConditionModelConfig::from_json_file(p), |c| {
            c.init::<B>(&Default::default()).map(drop)
        })?;
    }

    #[test]
    fn vae_config_fields_take_any_value(edits in edits(fields("vae", &[]))) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_edited(dir.path(), "vae", &edits);
        check_config(&path, |p| AutoencoderKLConfig::from_json_file(p), |c| {
            c.init::<B>(&Default::default()).map(drop)
        })?;
    }

    #[test]
    fn text_encoder_config_fields_take_any_value(edits in edits(fields("text_encoder", &[]))) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_edited(dir.path(), "text_encoder", &edits);
        check_config(&path, |p| ClipTextConfig::from_json_file(p), |c| {
            c.init::<B>(&Default::default()).map(drop)
        })?;
    }

    #[test]
    fn config_files_of_arbitrary_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, &bytes).unwrap();
        check_config(&path, |p| UNet2DConditionModelConfig::from_json_file(p), |c| {
            c.init::<B>(&Default::default()).map(drop)
        })?;
        check_config(&path, |p| ClipTextConfig::from_json_file(p), |c| {
            c.init::<B>(&Default::default()).map(drop)
        })?;
    }
}

/// A small valid single-file checkpoint: the 8-byte header length, the JSON
/// header (LDM keys, three dtypes), the data.
fn valid_checkpoint() -> Vec<u8> {
    let header = json!({
        "__metadata__": { "format": "pt" },
        "model.diffusion_model.input_blocks.0.0.weight":
            { "dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16] },
        "first_stage_model.encoder.conv_in.bias":
            { "dtype": "F16", "shape": [3], "data_offsets": [16, 22] },
        "cond_stage_model.transformer.text_model.final_layer_norm.weight":
            { "dtype": "BF16", "shape": [1, 1], "data_offsets": [22, 24] },
    });
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend((0..24u8).map(|i| i.wrapping_mul(37)));
    bytes
}

/// Ways to damage a file.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR these bytes in at these positions (taken modulo the length).
    Flip(Vec<(usize, u8)>),
    /// A different header length.
    HeaderLength(u64),
    /// Keep only this many bytes (modulo the length + 1).
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1u8..), 1..8).prop_map(Damage::Flip),
        prop_oneof![any::<u64>(), 0u64..400].prop_map(Damage::HeaderLength),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
    ]
}

fn apply(damage: &Damage, mut bytes: Vec<u8>) -> Vec<u8> {
    match damage {
        Damage::Flip(flips) => {
            let len = bytes.len();
            for &(at, mask) in flips {
                bytes[at % len] ^= mask;
            }
        }
        Damage::HeaderLength(length) => bytes[..8].copy_from_slice(&length.to_le_bytes()),
        Damage::Truncate(keep) => bytes.truncate(keep % (bytes.len() + 1)),
        Damage::Insert(at, inserted) => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
    }
    bytes
}

/// Detects and loads a single file with the tiny architecture: a typed
/// error or a model, never a panic.
fn load_single_file(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let tiny = WeightsSource::detect(fixtures()).unwrap().config().unwrap();
    let result = WeightsSource::detect(&path)
        .and_then(|source| StableDiffusion::<B>::load(&source, Some(&tiny), &Default::default()));
    if let Err(error) = result {
        prop_assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safetensors_of_arbitrary_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        load_single_file(&bytes)?;
    }

    #[test]
    fn damaged_safetensors_headers_are_errors(damages in prop::collection::vec(damage(), 1..3)) {
        let bytes = damages.iter().fold(valid_checkpoint(), |bytes, d| apply(d, bytes));
        load_single_file(&bytes)?;
    }
}

/// The undamaged checkpoint is read (and refused only for not being SD).
#[test]
fn the_valid_checkpoint_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, valid_checkpoint()).unwrap();
    let source = WeightsSource::detect(&path).expect("a valid LDM file");
    let tiny = WeightsSource::detect(fixtures()).unwrap().config().unwrap();
    let error = StableDiffusion::<B>::load(&source, Some(&tiny), &Default::default()).unwrap_err();
    assert!(matches!(error, Error::Mismatch { .. }), "{error}");
}
