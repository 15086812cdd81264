//! Attention out as a dict of numpy arrays, and `merge` back in: the merge
//! stage alone, so τ and the other options can be swept without re-running
//! the model.

use burn::tensor::backend::Backend;
use diffseg::{BackendKind, BackendTask, MergeOptions, SelfAttention, SelfAttentionMap};
use numpy::ndarray::Array2;
use numpy::{PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyDictMethods};

use crate::errors::{to_py_err, type_error, value_error};
use crate::segmentation::PySegmentation;
use crate::segmenter::merge_options;

/// How far an attention row may sum away from 1, as the facade allows for
/// the model's own output (f16 rows over 4096 keys drift by about 1e-3).
const ROW_SUM_TOLERANCE: f32 = 1e-2;

/// Stable Diffusion's VAE downscaling: the model input is 8 times the
/// largest attention grid (64 → 512).
const PIXELS_PER_CELL: usize = 8;

/// Each map as `name → float32 [h*w, h*w]`, the buffers handed to numpy
/// without a copy.
pub fn attention_to_dict(py: Python<'_>, attention: SelfAttention) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for map in attention.maps {
        let name = map.tensor_name();
        let cells = map.height * map.width;
        let probs = Array2::from_shape_vec((cells, cells), map.probs)
            .map_err(|error| value_error(format!("{name}: {error}")))?;
        dict.set_item(name, PyArray2::from_owned_array(py, probs))?;
    }
    Ok(dict)
}

/// The grid of a map named `self_attn.{side}` or `self_attn.{h}x{w}`.
fn grid_of(name: &str) -> Option<(usize, usize)> {
    let grid = name.strip_prefix("self_attn.")?;
    match grid.split_once('x') {
        Some((height, width)) => Some((height.parse().ok()?, width.parse().ok()?)),
        None => grid.parse().ok().map(|side| (side, side)),
    }
}

/// Reads a dict as `Segmenter.attention` returns it.
fn attention_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<SelfAttention> {
    let mut maps = Vec::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let name: String = key
            .extract()
            .map_err(|_| type_error("attention keys must be strings like `self_attn.64`"))?;
        let (height, width) = grid_of(&name).ok_or_else(|| {
            value_error(format!(
                "attention key `{name}`: expected `self_attn.SIDE` or `self_attn.HxW`"
            ))
        })?;
        let array: PyReadonlyArray2<'_, f32> = value.extract().map_err(|_| {
            type_error(format!(
                "attention `{name}`: expected a 2-D float32 numpy array [h*w, h*w]"
            ))
        })?;
        let cells = height * width;
        if array.shape() != [cells, cells] {
            return Err(value_error(format!(
                "attention `{name}`: shape {:?}, expected [{cells}, {cells}]",
                array.shape()
            )));
        }
        // ndarray's `as_slice` is row-major only (numpy's also takes column-major).
        let view = array.as_array();
        let probs = match view.as_slice() {
            Some(row_major) => row_major.to_vec(),
            None => view.iter().copied().collect(),
        };
        maps.push(SelfAttentionMap {
            height,
            width,
            probs,
        });
    }
    // Largest grid first, as the facade orders them.
    maps.sort_by_key(|map| std::cmp::Reverse(map.height * map.width));
    Ok(SelfAttention { maps })
}

/// The merge stage on the CPU backend.
struct Merge {
    attention: SelfAttention,
    options: MergeOptions,
    height: usize,
    width: usize,
}

impl BackendTask for Merge {
    type Output = Result<diffseg::Segmentation, diffseg::Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let maps = self.attention.to_maps::<B>(&device)?;
        maps.check_distributions(ROW_SUM_TOLERANCE)?;
        Ok(diffseg_core::segment_attention(
            &maps,
            &self.options,
            self.height,
            self.width,
        )?)
    }
}

/// Merges attention (as `Segmenter.attention` returns it) into segments with
/// these options, on the CPU; the label map is `size` (an int for a square,
/// or `(height, width)`), by default the model's input square (8 × the
/// largest grid: 512 for SD 1.x).
// TODO(facade): map onto the image's own size as `segment` does once the
// facade's re-merge path does it (here the square grid of the model input).
#[pyfunction]
#[pyo3(signature = (attention, tau = None, iterations = 3, anchors = 16, refine = false, size = None))]
pub fn merge(
    py: Python<'_>,
    attention: &Bound<'_, PyDict>,
    tau: Option<&Bound<'_, PyAny>>,
    iterations: usize,
    anchors: usize,
    refine: bool,
    size: Option<Size>,
) -> PyResult<PySegmentation> {
    let options = merge_options(tau, iterations, anchors, refine)?;
    let attention = attention_from_dict(attention)?;
    let Some(largest) = attention.maps.first() else {
        return Err(value_error("attention holds no maps"));
    };
    let (height, width) = match size {
        Some(Size::Square(side)) => (side, side),
        Some(Size::Rectangle(height, width)) => (height, width),
        None => (
            largest.height * PIXELS_PER_CELL,
            largest.width * PIXELS_PER_CELL,
        ),
    };
    if height == 0 || width == 0 {
        return Err(value_error(format!("size {height}x{width} has no pixels")));
    }
    let segmentation = py
        .detach(|| {
            BackendKind::Cpu.run(Merge {
                attention,
                options,
                height,
                width,
            })
        })
        .map_err(to_py_err)?
        .map_err(to_py_err)?;
    PySegmentation::new(py, segmentation)
}

/// A label map size: one side, or `(height, width)`.
#[derive(FromPyObject)]
pub enum Size {
    /// A square.
    Square(usize),
    /// `(height, width)`.
    Rectangle(usize, usize),
}
