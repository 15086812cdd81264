//! An image's aggregated self-attention, off the device: what
//! `diffseg attention` writes, and what a re-merge with other options reads
//! (`diffseg merge`, [`SelfAttention::merge`]) without running the model again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffseg_core::{merge_attention, AttentionMaps, MergeOptions};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::input::{ImageLimits, Placement};
use crate::output::write_atomically;
use crate::pipeline::ROW_SUM_TOLERANCE;
use crate::segmentation::Segmentation;
use crate::{BackendKind, BackendTask, Error};

/// The safetensors metadata keys of [`SelfAttention::placement`].
const PLACEMENT_KEYS: [&str; 5] = ["image_width", "image_height", "top", "left", "side"];

/// The metadata key whose value (the version) marks a file diffseg wrote.
const WRITER_KEY: &str = "diffseg";

/// The little-endian u64 header length that opens every safetensors file.
pub(crate) const HEADER_SIZE_BYTES: usize = 8;

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
        let metadata = writer_metadata(self.placement);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|error| write_error(error.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Reads what [`SelfAttention::save_safetensors`] writes, or any
    /// safetensors file of `self_attn.{side}` / `self_attn.{h}x{w}` tensors,
    /// f32 or f16, shaped `[cells, cells]` or `[heads, cells, cells]` (heads
    /// are averaged). Every row must be a distribution.
    ///
    /// Every size in the file is bounded before it is used: a grid has at most
    /// [`MAX_GRID_CELLS`] cells, and the placement's image at most the default
    /// [`ImageLimits`] pixels (its labels are made at that size); see
    /// [`SelfAttention::load_safetensors_with_limits`] to raise that.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_safetensors_with_limits(path, &ImageLimits::default())
    }

    /// [`SelfAttention::load_safetensors`] with the placement's image held to
    /// `limits` (as the images of a [`crate::Segmenter`] built with
    /// [`crate::SegmenterBuilder::max_pixels`] are).
    pub fn load_safetensors_with_limits(
        path: impl AsRef<Path>,
        limits: &ImageLimits,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let problem = |reason: String| Error::Attention {
            path: path.to_path_buf(),
            reason,
        };
        // One parse of the header: it lists the tensors and holds the placement.
        let (bytes, header_len, header) = map_safetensors(path).map_err(problem)?;
        let data = &bytes[HEADER_SIZE_BYTES + header_len..];
        let mut grids = BTreeMap::new();
        for (name, info) in header.tensors() {
            match grid_of(&name) {
                Grid::Cells(height, width) => {
                    grids.insert(
                        std::cmp::Reverse((height * width, height, width)),
                        (name, info),
                    );
                }
                Grid::TooLarge => {
                    return Err(problem(format!(
                        "tensor {name}: a grid of more than {MAX_GRID_CELLS} cells"
                    )))
                }
                Grid::NotAttention => {}
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
        let placement = metadata_placement(header.metadata(), limits).map_err(problem)?;
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
        if let Some(placement) = &self.placement {
            check_placement(placement).map_err(|reason| {
                diffseg_core::Error::Size(format!("attention placement: {reason}"))
            })?;
        }
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

/// The metadata of a file diffseg writes: the writer's mark (which lets a
/// later run replace the file) and the placement, when known.
/// The file mapped into memory, with its header's length and parsed header
/// (what diffseg's safetensors readers share); the error is the reason alone,
/// for the caller's own error naming the file.
pub(crate) fn map_safetensors(
    path: &Path,
) -> Result<(memmap2::Mmap, usize, safetensors::tensor::Metadata), String> {
    let file = std::fs::File::open(path).map_err(|error| format!("cannot read: {error}"))?;
    // SAFETY: the mapping is read-only and dropped by the caller before it returns.
    // Like every memory-mapped reader (safetensors, candle, burn-store), it assumes
    // nobody truncates or rewrites the file meanwhile.
    let bytes =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|error| format!("cannot read: {error}"))?;
    let (header_len, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|error| format!("not a safetensors file ({error})"))?;
    Ok((bytes, header_len, header))
}

pub(crate) fn writer_metadata(placement: Option<Placement>) -> HashMap<String, String> {
    let mut metadata = HashMap::from([(
        WRITER_KEY.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )]);
    if let Some(placement) = placement {
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
    metadata
}

/// The placement in a file's metadata when all of [`PLACEMENT_KEYS`] are
/// there, bounded as [`read_placement`] says; `None` when it has none.
pub(crate) fn metadata_placement(
    metadata: &Option<HashMap<String, String>>,
    limits: &ImageLimits,
) -> Result<Option<Placement>, String> {
    match metadata {
        Some(metadata) if PLACEMENT_KEYS.iter().all(|key| metadata.contains_key(*key)) => {
            read_placement(metadata, limits).map(Some)
        }
        _ => Ok(None),
    }
}

/// The placement in a file's metadata (all of [`PLACEMENT_KEYS`] present),
/// bounded: an image within `limits` and a square [`check_placement`] accepts.
fn read_placement(
    metadata: &HashMap<String, String>,
    limits: &ImageLimits,
) -> Result<Placement, String> {
    let value = |key: &str| -> Result<i64, String> {
        metadata[key]
            .parse()
            .map_err(|_| format!("metadata {key} = {:?} is not an integer", metadata[key]))
    };
    let size = |key: &str| -> Result<u32, String> {
        let number = value(key)?;
        u32::try_from(number).map_err(|_| {
            format!(
                "metadata {key} = {number} is not a size of 0 to {}",
                u32::MAX
            )
        })
    };
    let placement = Placement {
        image_width: size("image_width")?,
        image_height: size("image_height")?,
        top: value("top")?,
        left: value("left")?,
        side: size("side")?,
    };
    check_placement(&placement).map_err(|reason| format!("metadata: {reason}"))?;
    limits
        .check(placement.image_width, placement.image_height)
        .map_err(|error| format!("metadata: {error}"))?;
    Ok(placement)
}

/// Checks that a placement describes a square a [`crate::Fit`] could make: a
/// non-empty image, a square no larger than its longer side, starting within a
/// side of it. Labels are mapped back through it: outside those bounds that
/// would need offsets nothing here makes.
pub(crate) fn check_placement(placement: &Placement) -> Result<(), String> {
    let Placement {
        image_width,
        image_height,
        top,
        left,
        side,
    } = *placement;
    let longer = image_width.max(image_height);
    let offsets = -(side as i64)..=longer as i64;
    if image_width == 0 || image_height == 0 || side == 0 {
        Err(format!("an empty image or square: {placement:?}"))
    } else if side > longer {
        Err(format!(
            "a {side}-pixel square is larger than the {image_width}×{image_height} image"
        ))
    } else if !offsets.contains(&top) || !offsets.contains(&left) {
        Err(format!(
            "the {side}-pixel square at top {top}, left {left} is off the \
             {image_width}×{image_height} image"
        ))
    } else {
        Ok(())
    }
}

/// The most cells (rows × columns) a saved attention grid may have: 128×128, the
/// largest grid of a 1024-pixel model input; its map is `cells²` = 2²⁸ values,
/// 1 GiB in f32.
pub const MAX_GRID_CELLS: usize = 128 * 128;

/// Checks that `map` holds `(h*w)²` values of a non-empty grid of at most
/// [`MAX_GRID_CELLS`] cells.
fn check_shape(map: &SelfAttentionMap) -> Result<(), Error> {
    let cells = map
        .height
        .checked_mul(map.width)
        .filter(|&cells| cells > 0 && cells <= MAX_GRID_CELLS);
    match cells {
        Some(cells) if map.probs.len() == cells * cells => Ok(()),
        _ => Err(diffseg_core::Error::Shape {
            tensor: map.tensor_name(),
            expected: match cells {
                Some(cells) => format!("{} values of a non-empty grid", cells * cells),
                None => format!(
                    "a grid of 1 to {MAX_GRID_CELLS} cells, not {}×{}",
                    map.height, map.width
                ),
            },
            actual: vec![map.probs.len()],
        }
        .into()),
    }
}

/// What a tensor's name says about it.
#[derive(Debug, PartialEq, Eq)]
enum Grid {
    /// `self_attn.{side}` or `self_attn.{h}x{w}` of a grid of 1 to
    /// [`MAX_GRID_CELLS`] cells: `(rows, columns)`.
    Cells(usize, usize),
    /// The name of a grid with more than [`MAX_GRID_CELLS`] cells.
    TooLarge,
    /// Not a self-attention map's name.
    NotAttention,
}

/// The grid a `self_attn.{side}` or `self_attn.{h}x{w}` name gives.
fn grid_of(name: &str) -> Grid {
    let Some(grid) = name.strip_prefix("self_attn.") else {
        return Grid::NotAttention;
    };
    let sides: Option<(usize, usize)> = match grid.split_once('x') {
        Some((height, width)) => height.parse().ok().zip(width.parse().ok()),
        None => grid.parse().ok().map(|side| (side, side)),
    };
    match sides {
        Some((height, width)) if height > 0 && width > 0 => {
            match usize::checked_mul(height, width) {
                Some(cells) if cells <= MAX_GRID_CELLS => Grid::Cells(height, width),
                _ => Grid::TooLarge,
            }
        }
        _ => Grid::NotAttention,
    }
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
