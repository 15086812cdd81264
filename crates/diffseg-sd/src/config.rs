//! Reading the `config.json` files that ship with each diffusers/transformers
//! model: the one place config JSON is parsed.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize};

use crate::Error;

/// Reads and deserialises a JSON config file; unknown fields are ignored.
/// Read as bytes, so that a file that is not UTF-8 is a JSON error like any
/// other, not an I/O error.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::MissingConfig {
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                error,
            }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|error| Error::BadConfig {
        path: path.to_path_buf(),
        error,
    })
}

/// A diffusers option given either once for all blocks or per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrPerBlock {
    One(usize),
    PerBlock(Vec<usize>),
}

impl OneOrPerBlock {
    /// The per-block list for `blocks` blocks.
    pub(crate) fn per_block(&self, blocks: usize) -> Vec<usize> {
        match self {
            OneOrPerBlock::One(value) => vec![*value; blocks],
            OneOrPerBlock::PerBlock(values) => values.clone(),
        }
    }
}

/// Upper bounds on config values, checked before any network is built
/// ([`Error::InvalidConfig`]). Each is far above every Stable Diffusion
/// release yet small enough that an absurd value (a typo, a fuzzer, a hostile
/// file) fails with a typed error instead of building millions of layers or
/// asking for terabytes later.
pub mod limits {
    /// Channel counts and hidden widths (SD 1.x: at most 1280 in the UNet, 768 in
    /// CLIP; OpenCLIP bigG: 1280, MLP 5120).
    pub const MAX_WIDTH: usize = 16384;
    /// Down blocks of the UNet and of the VAE (SD: 4). Also keeps the VAE's
    /// downscaling factor `2^(blocks - 1)` and the input size in range.
    pub const MAX_BLOCKS: usize = 8;
    /// Resnets per block (`layers_per_block`; SD: 2) and transformer blocks per
    /// spatial transformer (`transformer_layers_per_block`; SD: 1, SDXL: 10).
    pub const MAX_LAYERS_PER_BLOCK: usize = 16;
    /// Side of the UNet's square latent (`sample_size`; SD 1.x: 64, SD 2.x: 96).
    /// The captured self-attention of the highest resolution holds `side⁴` values
    /// per image: 64 MiB of f32 at 64, 16 GiB at this bound.
    pub const MAX_SAMPLE_SIZE: usize = 256;
    /// Side of the model's square input in pixels: `sample_size` times the VAE's
    /// downscaling (SD 1.x: 512, SD 2.x: 768). The VAE's first activation at
    /// this side holds 2 GiB of f32 per image (128 channels).
    pub const MAX_INPUT_SIZE: usize = 2048;
    /// CLIP encoder layers (`num_hidden_layers`; SD 1.x: 12, OpenCLIP bigG: 32).
    pub const MAX_HIDDEN_LAYERS: usize = 64;
    /// CLIP vocabulary (`vocab_size`; 49408).
    pub const MAX_VOCAB: usize = 1 << 20;
    /// CLIP positions (`max_position_embeddings`; 77).
    pub const MAX_POSITIONS: usize = 4096;
}

pub(crate) use limits::*;

/// An [`Error::InvalidConfig`] without a file yet (see `Error::in_config_file`).
pub(crate) fn invalid(
    field: &str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidConfig {
        path: None,
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `value` lies in `1..=max`.
pub(crate) fn check_count(field: &str, value: usize, max: usize) -> Result<(), Error> {
    match value {
        0 => Err(invalid(field, value, "must be at least 1")),
        v if v > max => Err(invalid(field, value, format!("must be at most {max}"))),
        _ => Ok(()),
    }
}

/// `divisor` (the value of `field`) divides `value` (the value of `of`).
pub(crate) fn check_divides(
    field: &str,
    divisor: usize,
    of: &str,
    value: usize,
) -> Result<(), Error> {
    if divisor == 0 || value % divisor != 0 {
        return Err(invalid(
            field,
            divisor,
            format!("must divide {of} = {value}"),
        ));
    }
    Ok(())
}

/// `value` is finite and, with `positive`, above zero.
pub(crate) fn check_float(field: &str, value: f64, positive: bool) -> Result<(), Error> {
    if !value.is_finite() {
        return Err(invalid(field, value, "must be finite"));
    }
    if positive && value <= 0.0 {
        return Err(invalid(field, value, "must be positive"));
    }
    Ok(())
}

/// A per-block list has one entry per block.
pub(crate) fn check_len(field: &str, len: usize, blocks: usize) -> Result<(), Error> {
    if len != blocks {
        return Err(invalid(
            field,
            format!("{len} entries"),
            format!("must have one entry per block ({blocks})"),
        ));
    }
    Ok(())
}
