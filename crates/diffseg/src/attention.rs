//! An image's aggregated self-attention, off the device: what
//! `diffseg attention` writes, and what a re-merge with other options reads
//! (`diffseg merge`, [`SelfAttention::merge`]) without running the model again.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffseg_core::{merge_attention, AttentionMaps, MergeOptions};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::input::Placement;
use crate::output::write_atomically;
use crate::pipeline::ROW_SUM_TOLERANCE;
use crate::segmentation::Segmentation;
use crate::{BackendKind, BackendTask, Error};

/// The safetensors metadata keys of [`SelfAttention::placement`].
const PLACEMENT_KEYS: [&str; 5] = ["image_width", "image_height", "top", "left", "side"];

/// The metadata key whose value (the version) marks a file diffseg wrote.
const WRITER_KEY: &str = "diffseg";

/// The little-endian u64 header length that opens every safetensors file.
const HEADER_SIZE_BYTES: usize = 8;

/// Self-attention averaged over heads and layers, one map per latent
/// resolution, and where the model's input came from in the image.
///
/// Re-merging with other options gives what [`crate::Segmenter::segment`]
/// would have given with them, at the image's own size:
///
/// ```no_run
/// use diffseg::{BackendKind, MergeOptions, SelfAttention};
///
/// # fn main() -> Result<(), diffseg::Error> {
/// let attention = SelfAttention::load_safetensors("photo.attention.safetensors")?;
/// for tau in [0.9, 1.0, 1.1] {
///     let options = MergeOptions::default().with_tau(tau);
///     let segmentation = attention.merge(&options, BackendKind::Cpu)?;
///     println!("tau {tau}: {} segments", segmentation.segment_count());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SelfAttention {
    /// Largest grid first (64, 32, 16, 8 for SD 1.x at 512 px).
    pub maps: Vec<SelfAttentionMap>,
    /// Where the model's square input lies in the source image; `None` when
    /// unknown (a file from elsewhere): then merges label the square input.
    pub placement: Option<Placement>,
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
    /// The safetensors name: `self_attn.{side}` for square grids,
    /// `self_attn.{h}x{w}` otherwise.
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
    /// [`SelfAttentionMap::tensor_name`], and the placement as metadata,
    /// durably and atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
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
        // The writer's mark, which lets a later run replace the file.
        let mut metadata = std::collections::HashMap::from([(
            WRITER_KEY.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]);
        if let Some(placement) = self.placement {
            let values = [
                placement.image_width as i64,
                placement.image_height as i64,
                placement.top,
                placement.left,
                placement.side as i64,
            ];
            metadata.extend(
                PLACEMENT_KEYS
                    .iter()
                    .zip(values)
                    .map(|(key, value)| (key.to_string(), value.to_string())),
            );
        }
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|error| write_error(error.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Reads what [`SelfAttention::save_safetensors`] writes, or any
    /// safetensors file of `self_attn.{side}` / `self_attn.{h}x{w}` tensors,
    /// f32 or f16, shaped `[cells, cells]` or `[heads, cells, cells]` (heads
    /// are averaged). Every row must be a distribution.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let problem = |reason: String| Error::Attention {
            path: path.to_path_buf(),
            reason,
        };
        let file =
            std::fs::File::open(path).map_err(|error| problem(format!("cannot read: {error}")))?;
        // SAFETY: the mapping is read-only and dropped before this returns. Like
        // every memory-mapped reader (safetensors, candle, burn-store), it assumes
        // nobody truncates or rewrites the file meanwhile.
        let bytes = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|error| problem(format!("cannot read: {error}")))?;
        // One parse of the header: it lists the tensors and holds the placement.
        let (header_len, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|error| problem(format!("not a safetensors file ({error})")))?;
        let data = &bytes[HEADER_SIZE_BYTES + header_len..];
        let mut grids = BTreeMap::new();
        for (name, info) in header.tensors() {
            if let Some((height, width)) = grid_of(&name) {
                grids.insert(
                    std::cmp::Reverse((height * width, height, width)),
                    (name, info),
                );
            }
        }
        if grids.is_empty() {
            return Err(problem(
                "no self_attn.{side} or self_attn.{h}x{w} tensor in it".into(),
            ));
        }
        let maps = grids
            .into_iter()
            .map(|(std::cmp::Reverse((_, height, width)), (name, info))| {
                // read_metadata validated every tensor's offsets against the buffer.
                let (start, end) = info.data_offsets;
                TensorView::new(info.dtype, info.shape.clone(), &data[start..end])
                    .map_err(|error| error.to_string())
                    .and_then(|view| read_map(&view, height, width))
                    .map(|probs| SelfAttentionMap {
                        height,
                        width,
                        probs,
                    })
                    .map_err(|reason| problem(format!("tensor {name}: {reason}")))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let placement = match header.metadata() {
            Some(metadata) if PLACEMENT_KEYS.iter().all(|key| metadata.contains_key(*key)) => {
                let value = |key: &str| -> Result<i64, Error> {
                    metadata[key].parse().map_err(|_| {
                        problem(format!(
                            "metadata {key} = {:?} is not an integer",
                            metadata[key]
                        ))
                    })
                };
                let placement = Placement {
                    image_width: value("image_width")?.try_into().unwrap_or(0),
                    image_height: value("image_height")?.try_into().unwrap_or(0),
                    top: value("top")?,
                    left: value("left")?,
                    side: value("side")?.try_into().unwrap_or(0),
                };
                if placement.image_width == 0 || placement.image_height == 0 || placement.side == 0
                {
                    return Err(problem(format!(
                        "metadata holds an empty image: {placement:?}"
                    )));
                }
                Some(placement)
            }
            _ => None,
        };
        Ok(Self { maps, placement })
    }

    /// Checks maps that were built by hand or came from elsewhere: at least
    /// one map, `(h*w)²` values each, and every row a distribution (finite,
    /// non-negative, summing to 1 within the tolerance the facade allows for
    /// f16 attention). [`SelfAttention::load_safetensors`] checks as it reads.
    pub fn check(&self) -> Result<(), Error> {
        if self.maps.is_empty() {
            return Err(diffseg_core::Error::Maps("no attention map".into()).into());
        }
        for map in &self.maps {
            check_shape(map)?;
            let cells = map.height * map.width;
            if let Some((row, problem)) = row_problem(&map.probs, cells) {
                return Err(diffseg_core::Error::NotDistribution {
                    tensor: map.tensor_name(),
                    row,
                    problem,
                }
                .into());
            }
        }
        Ok(())
    }

    /// The maps as diffseg-core's [`AttentionMaps`] on `device`.
    pub fn to_maps<B: Backend>(&self, device: &B::Device) -> Result<AttentionMaps<B>, Error> {
        for map in &self.maps {
            check_shape(map)?;
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

    /// Merges on `B`'s `device` with `options`, labelled as
    /// [`crate::Pipeline::segment`] labels: at the source image's own size when
    /// the placement is known, else on a `side`×`side` square (`side`: the
    /// model's input size, 512 for SD 1.x).
    pub fn merge_on<B: Backend>(
        &self,
        options: &MergeOptions,
        device: &B::Device,
        side: usize,
    ) -> Result<Segmentation, Error> {
        let maps = self.to_maps::<B>(device)?;
        // merge_attention validates the options before any work.
        let proposals = merge_attention(&maps, options)?;
        match &self.placement {
            Some(placement) => crate::pipeline::label_image(proposals, placement),
            None => crate::pipeline::label_square(proposals, side),
        }
    }

    /// [`SelfAttention::merge_on`] on a backend chosen at run time, labelling
    /// a 512×512 square when the placement is unknown.
    pub fn merge(
        &self,
        options: &MergeOptions,
        backend: BackendKind,
    ) -> Result<Segmentation, Error> {
        struct Merge<'a> {
            attention: &'a SelfAttention,
            options: &'a MergeOptions,
        }
        impl BackendTask for Merge<'_> {
            type Output = Result<Segmentation, Error>;
            fn run<B: Backend>(self, device: B::Device) -> Self::Output {
                self.attention
                    .merge_on::<B>(self.options, &device, crate::pipeline::SD1_INPUT_SIZE)
            }
        }
        backend.run(Merge {
            attention: self,
            options,
        })?
    }
}

/// Checks that `map` holds `(h*w)²` values of a non-empty grid.
fn check_shape(map: &SelfAttentionMap) -> Result<(), Error> {
    let cells = map.height * map.width;
    if cells == 0 || map.probs.len() != cells * cells {
        return Err(diffseg_core::Error::Shape {
            tensor: map.tensor_name(),
            expected: format!("{} values of a non-empty grid", cells * cells),
            actual: vec![map.probs.len()],
        }
        .into());
    }
    Ok(())
}

/// `(rows, columns)` of a `self_attn.{side}` or `self_attn.{h}x{w}` name.
fn grid_of(name: &str) -> Option<(usize, usize)> {
    let grid = name.strip_prefix("self_attn.")?;
    let (height, width) = match grid.split_once('x') {
        Some((height, width)) => (height.parse().ok()?, width.parse().ok()?),
        None => {
            let side = grid.parse().ok()?;
            (side, side)
        }
    };
    (height > 0 && width > 0).then_some((height, width))
}

/// One stored map averaged over its heads, checked: finite, non-negative,
/// every row summing to 1.
fn read_map(view: &TensorView, height: usize, width: usize) -> Result<Vec<f32>, String> {
    let cells = height * width;
    let heads = match view.shape() {
        [rows, columns] if *rows == cells && *columns == cells => 1,
        [heads, rows, columns] if *heads > 0 && *rows == cells && *columns == cells => *heads,
        shape => {
            return Err(format!(
                "shape {shape:?}, expected [{cells}, {cells}] or [heads, {cells}, {cells}]"
            ))
        }
    };
    let data = view.data();
    let probs = match view.dtype() {
        Dtype::F32 => head_mean(data, cells, heads, |b: &[u8; 4]| f32::from_le_bytes(*b)),
        Dtype::F16 => head_mean(data, cells, heads, |b: &[u8; 2]| {
            half::f16::from_le_bytes(*b).to_f32()
        }),
        Dtype::BF16 => head_mean(data, cells, heads, |b: &[u8; 2]| {
            half::bf16::from_le_bytes(*b).to_f32()
        }),
        dtype => return Err(format!("dtype {dtype:?}, expected F32, F16 or BF16")),
    }?;
    if let Some((row, problem)) = row_problem(&probs, cells) {
        return Err(format!("row {row} is not a distribution: {problem}"));
    }
    Ok(probs)
}

/// The first row of row-major `[cells, cells]` probabilities that is not a
/// distribution (non-finite, negative, or summing away from 1 by more than
/// [`ROW_SUM_TOLERANCE`]), and what is wrong with it.
fn row_problem(probs: &[f32], cells: usize) -> Option<(usize, String)> {
    probs
        .chunks_exact(cells)
        .enumerate()
        .find_map(|(row, values)| {
            if let Some(value) = values.iter().find(|value| !value.is_finite()) {
                return Some((row, format!("it holds a non-finite value ({value})")));
            }
            if let Some(value) = values.iter().find(|&&value| value < 0.0) {
                return Some((row, format!("it holds a negative value ({value})")));
            }
            let sum: f64 = values.iter().map(|&value| value as f64).sum();
            ((sum as f32 - 1.0).abs() > ROW_SUM_TOLERANCE)
                .then(|| (row, format!("it sums to {sum:.6}")))
        })
}

/// The mean over the heads of `[heads, cells, cells]` stored values, decoded
/// by `decode` from `WIDTH`-byte chunks, in one pass; an error names the first
/// non-finite value, else the first negative one.
fn head_mean<const WIDTH: usize>(
    data: &[u8],
    cells: usize,
    heads: usize,
    decode: impl Fn(&[u8; WIDTH]) -> f32 + Copy,
) -> Result<Vec<f32>, String> {
    let values = || {
        data.chunks_exact(WIDTH)
            .map(move |b| decode(b.try_into().expect("chunks of WIDTH")))
    };
    let mut probs = vec![0f32; cells * cells];
    let mut valid = true;
    for head in data.chunks_exact(cells * cells * WIDTH) {
        for (mean, b) in probs.iter_mut().zip(head.chunks_exact(WIDTH)) {
            let value = decode(b.try_into().expect("chunks of WIDTH"));
            valid &= value.is_finite() && value >= 0.0;
            *mean += value / heads as f32;
        }
    }
    if !valid {
        if let Some((index, value)) = values().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(format!(
                "holds a non-finite value ({value}) at flat index {index}"
            ));
        }
        if let Some((index, value)) = values().enumerate().find(|&(_, v)| v < 0.0) {
            return Err(format!(
                "holds a negative value ({value}) at flat index {index}"
            ));
        }
    }
    Ok(probs)
}

/// Whether `path` is a safetensors file that diffseg wrote: its metadata
/// carries diffseg's mark, or (older versions) the placement of the image.
pub fn is_diffseg_attention(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: as in `SelfAttention::load_safetensors`: read-only, dropped here.
    let Ok(bytes) = (unsafe { memmap2::Mmap::map(&file) }) else {
        return false;
    };
    SafeTensors::read_metadata(&bytes).is_ok_and(|(_, header)| {
        header.metadata().as_ref().is_some_and(|metadata| {
            metadata.contains_key(WRITER_KEY)
                || PLACEMENT_KEYS.iter().all(|key| metadata.contains_key(*key))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side`×`side` grid whose every query attends to every key equally.
    fn uniform(side: usize) -> SelfAttentionMap {
        let cells = side * side;
        SelfAttentionMap {
            height: side,
            width: side,
            probs: vec![1.0 / cells as f32; cells * cells],
        }
    }

    #[test]
    fn check_accepts_distributions_and_names_the_first_bad_row() {
        let mut attention = SelfAttention {
            maps: vec![uniform(4), uniform(2)],
            placement: None,
        };
        attention.check().unwrap();

        // Row 2 of the 2×2 grid sums to 1.25, beyond the tolerance.
        attention.maps[1].probs[2 * 4] += 0.25;
        let error = attention.check().unwrap_err().to_string();
        assert!(error.contains("self_attn.2: row 2"), "{error}");
        assert!(error.contains("sums to 1.25"), "{error}");

        attention.maps[1].probs[2 * 4] = f32::NAN;
        let error = attention.check().unwrap_err().to_string();
        assert!(error.contains("non-finite"), "{error}");

        attention.maps[1].probs.pop();
        let error = attention.check().unwrap_err().to_string();
        assert!(error.contains("expected shape 16 values"), "{error}");

        attention.maps.clear();
        assert!(attention.check().is_err());
    }

    #[test]
    fn saved_attention_reads_back_with_its_placement() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("uniform.safetensors");
        let attention = SelfAttention {
            maps: vec![uniform(4), uniform(2)],
            placement: Some(Placement::new(40, 30, crate::Fit::Pad)),
        };
        attention.save_safetensors(&path).unwrap();
        assert_eq!(SelfAttention::load_safetensors(&path).unwrap(), attention);
    }
}
