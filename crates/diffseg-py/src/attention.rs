//! Attention out as a dict of numpy arrays, and `merge` back in: the merge
//! stage alone, so τ and the other options can be swept without re-running
//! the model.

use burn::tensor::backend::Backend;
use diffseg::{BackendKind, BackendTask, MergeOptions, Placement, SelfAttention, SelfAttentionMap};
use numpy::ndarray::{Array1, Array2};
use numpy::{PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyDictMethods};

use crate::errors::{to_py_err, type_error, value_error};
use crate::segmentation::PySegmentation;
use crate::segmenter::merge_settings;

/// Stable Diffusion's VAE downscaling: the model input is 8 times the
/// largest attention grid (64 → 512).
const PIXELS_PER_CELL: usize = 8;

/// The dict key of the placement: where the model's square input lay in the
/// image, `[image_height, image_width, top, left, side]` (int64).
const PLACEMENT_KEY: &str = "placement";

/// Each map as `name → float32 [h*w, h*w]` (the buffers handed to numpy
/// without a copy), and the placement under `"placement"`.
pub fn attention_to_dict(py: Python<'_>, attention: SelfAttention) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for map in attention.maps {
        let name = map.tensor_name();
        let cells = map.height * map.width;
        let probs = Array2::from_shape_vec((cells, cells), map.probs)
            .map_err(|error| value_error(format!("{name}: {error}")))?;
        dict.set_item(name, PyArray2::from_owned_array(py, probs))?;
    }
    if let Some(placement) = attention.placement {
        let numbers = Array1::from_vec(vec![
            i64::from(placement.image_height),
            i64::from(placement.image_width),
            placement.top,
            placement.left,
            i64::from(placement.side),
        ]);
        dict.set_item(PLACEMENT_KEY, PyArray1::from_owned_array(py, numbers))?;
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

/// Reads the `"placement"` entry.
fn placement_from(value: &Bound<'_, PyAny>) -> PyResult<Placement> {
    let invalid = || {
        value_error(format!(
            "attention `{PLACEMENT_KEY}`: expected int64 [image_height, image_width, top, left, \
             side] with positive sizes"
        ))
    };
    let array: PyReadonlyArray1<'_, i64> = value.extract().map_err(|_| invalid())?;
    let numbers = array.as_array().to_vec();
    let [height, width, top, left, side] = numbers[..] else {
        return Err(invalid());
    };
    let size = |value: i64| u32::try_from(value).ok().filter(|size| *size > 0);
    let (Some(image_height), Some(image_width), Some(side)) =
        (size(height), size(width), size(side))
    else {
        return Err(invalid());
    };
    Ok(Placement {
        image_width,
        image_height,
        top,
        left,
        side,
    })
}

/// Reads a dict as `Segmenter.attention` returns it.
fn attention_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<SelfAttention> {
    let mut maps = Vec::with_capacity(dict.len());
    let mut placement = None;
    for (key, value) in dict.iter() {
        let name: String = key
            .extract()
            .map_err(|_| type_error("attention keys must be strings like `self_attn.64`"))?;
        if name == PLACEMENT_KEY {
            placement = Some(placement_from(&value)?);
            continue;
        }
        let (height, width) = grid_of(&name).ok_or_else(|| {
            value_error(format!(
                "attention key `{name}`: expected `self_attn.SIDE`, `self_attn.HxW` or \
                 `{PLACEMENT_KEY}`"
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
    Ok(SelfAttention { maps, placement })
}

/// The facade's merge of checked attention.
struct Merge {
    attention: SelfAttention,
    options: MergeOptions,
    side: usize,
}

impl BackendTask for Merge {
    type Output = Result<diffseg::Segmentation, diffseg::Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        self.attention
            .merge_on::<B>(&self.options, &device, self.side)
    }
}

/// Merges attention (as `Segmenter.attention` returns it) into segments with
/// these options, on the CPU, labelled as `Segmenter.segment` labels: at the
/// image's own size when the dict holds the placement, else on the model's
/// square input (8 × the largest grid: 512 for SD 1.x).
#[pyfunction]
#[pyo3(signature = (attention, tau = None, iterations = None, anchors = None, refine = false))]
pub fn merge(
    py: Python<'_>,
    attention: &Bound<'_, PyDict>,
    tau: Option<&Bound<'_, PyAny>>,
    iterations: Option<usize>,
    anchors: Option<usize>,
    refine: bool,
) -> PyResult<PySegmentation> {
    let options = merge_settings(tau, iterations, anchors, refine)?
        .merge_options()
        .map_err(to_py_err)?;
    let attention = attention_from_dict(attention)?;
    let Some(largest) = attention.maps.first() else {
        return Err(value_error("attention holds no maps"));
    };
    // The dict may come from anywhere: every row must be a distribution.
    attention.check().map_err(to_py_err)?;
    let side = largest.height.max(largest.width) * PIXELS_PER_CELL;
    let segmentation = py
        .detach(|| {
            BackendKind::Cpu.run(Merge {
                attention,
                options,
                side,
            })
        })
        .map_err(to_py_err)?
        .map_err(to_py_err)?;
    PySegmentation::new(py, segmentation, None)
}
