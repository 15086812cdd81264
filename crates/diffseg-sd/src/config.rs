//! Reading the `config.json` files that ship with each diffusers/transformers model.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize};

/// A model configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read model config {path}: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// The file is not valid JSON or lacks a required field.
    #[error("invalid model config {path}: {error}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The JSON error, with line and column.
        error: serde_json::Error,
    },
    /// The config asks for an architecture this port does not implement.
    #[error("unsupported model config {path}: {reason}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The option that was refused and its value, e.g. `hidden_act = gelu_new`.
        reason: String,
    },
}

/// Reads and deserialises a JSON config file; unknown fields are ignored.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        error: source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        error: source,
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
