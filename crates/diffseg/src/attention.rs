//! An image's aggregated self-attention, off the device: what
//! `diffseg attention` writes and `diffseg merge` reads.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffseg_core::AttentionMaps;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::output::write_atomically;
use crate::Error;

/// Self-attention averaged over heads and layers, one map per latent resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfAttention {
    /// Largest grid first (64, 32, 16, 8 for SD 1.x at 512 px).
    pub maps: Vec<SelfAttentionMap>,
}

/// One resolution's map: `probs` is row-major `[h*w, h*w]`, every row a
/// distribution over the key cells.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfAttentionMap {
    /// Latent grid rows.
    pub height: usize,
    /// Latent grid columns.
    pub width: usize,
    /// `(h*w)²` probabilities, row = query cell, column = key cell.
    pub probs: Vec<f32>,
}

impl SelfAttentionMap {
    /// The safetensors name: `self_attn.{side}` for square grids (what
    /// `diffseg merge` reads), `self_attn.{h}x{w}` otherwise.
    pub fn tensor_name(&self) -> String {
        if self.height == self.width {
            format!("self_attn.{}", self.height)
        } else {
            format!("self_attn.{}x{}", self.height, self.width)
        }
    }
}

impl SelfAttention {
    /// Writes every map as an f32 `[h*w, h*w]` tensor named by
    /// [`SelfAttentionMap::tensor_name`], atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), Error> {
        let bytes: Vec<Vec<u8>> = self
            .maps
            .iter()
            .map(|map| {
                map.probs
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect()
            })
            .collect();
        let write_error = |reason: String| Error::Write {
            path: path.to_path_buf(),
            reason,
        };
        let views = self
            .maps
            .iter()
            .zip(&bytes)
            .map(|(map, bytes)| {
                let cells = map.height * map.width;
                TensorView::new(Dtype::F32, vec![cells, cells], bytes)
                    .map(|view| (map.tensor_name(), view))
                    .map_err(|error| write_error(error.to_string()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        write_atomically(path, |temporary| {
            safetensors::serialize_to_file(views, None, temporary)
                .map_err(|error| write_error(error.to_string()))
        })
    }

    /// The maps as diffseg-core's [`AttentionMaps`] on `device`.
    pub fn to_maps<B: Backend>(&self, device: &B::Device) -> Result<AttentionMaps<B>, Error> {
        for map in &self.maps {
            let cells = map.height * map.width;
            if map.probs.len() != cells * cells {
                return Err(diffseg_core::Error::Shape {
                    tensor: map.tensor_name(),
                    expected: format!("{} values", cells * cells),
                    actual: vec![map.probs.len()],
                }
                .into());
            }
        }
        let maps = self
            .maps
            .iter()
            .map(|map| {
                let cells = map.height * map.width;
                let data =
                    TensorData::new(map.probs.clone(), [cells, cells]).convert::<B::FloatElem>();
                (
                    Tensor::<B, 2>::from_data(data, device),
                    map.height,
                    map.width,
                )
            })
            .collect();
        Ok(AttentionMaps::from_maps(maps)?)
    }
}
