//! Reading the `config.json` files that ship with each diffusers/transformers
//! model: the one place config JSON is parsed.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize};

use crate::Error;

/// Reads and deserialises a JSON config file; unknown fields are ignored.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| {
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
    serde_json::from_str(&text).map_err(|error| Error::BadConfig {
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
