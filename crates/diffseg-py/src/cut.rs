//! `cut`: DiffCut's recursive normalized cut on features in hand, without the model (as
//! `merge` is for DiffSeg's attention).

use diffseg::MethodSettings;
use diffseg_core::{cut_features, FeatureMap, PlanarImage};
use numpy::{PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{to_py_err, type_error, value_error};
use crate::image_input::ImageSource;
use crate::segmentation::PySegmentation;
use crate::segmenter::tau_settings;

/// Segments DiffCut features (float32 numpy `[h, w, c]`, as `diffseg features` writes
/// them) with the recursive normalized cut, on the CPU; labels on a `mask_size`² grid.
/// `pamr=True` refines them on `image` (a path, PIL image or uint8 array).
#[pyfunction]
#[pyo3(signature = (
    features, tau = None, alpha = None, mask_size = None, pamr = false, median = false, image = None
))]
#[allow(clippy::too_many_arguments)]
pub fn cut(
    py: Python<'_>,
    features: &Bound<'_, PyAny>,
    tau: Option<&Bound<'_, PyAny>>,
    alpha: Option<f32>,
    mask_size: Option<usize>,
    pamr: bool,
    median: bool,
    image: Option<&Bound<'_, PyAny>>,
) -> PyResult<PySegmentation> {
    let options = MethodSettings {
        alpha,
        mask_size,
        pamr: Some(pamr),
        median: Some(median),
        ..tau_settings(tau)?
    }
    .cut_options()
    .map_err(to_py_err)?;
    let array: PyReadonlyArray3<'_, f32> = features.extract().map_err(|_| {
        type_error("features: expected a 3-D float32 numpy array [h, w, c]".to_string())
    })?;
    let [height, width, channels] = [array.shape()[0], array.shape()[1], array.shape()[2]];
    // ndarray's `as_slice` is row-major only (numpy's also takes column-major).
    let view = array.as_array();
    let values = match view.as_slice() {
        Some(row_major) => row_major.to_vec(),
        None => view.iter().copied().collect(),
    };
    let features = FeatureMap::new(values, height, width, channels)
        .map_err(|error| value_error(error.to_string()))?;
    let rgb = match (image, pamr) {
        (Some(image), true) => {
            let source = ImageSource::extract(image)?;
            Some(py.detach(|| source.load()).map_err(to_py_err)?.to_rgb8())
        }
        (None, true) => return Err(value_error("pamr=True needs the image: pass image=")),
        (_, false) => None,
    };
    let segmentation = py
        .detach(|| {
            let planar = rgb.as_ref().map(|rgb| {
                (
                    diffseg::planar_rgb(rgb),
                    rgb.height() as usize,
                    rgb.width() as usize,
                )
            });
            let image = planar
                .as_ref()
                .map(|(values, height, width)| PlanarImage::new(values, 3, *height, *width))
                .transpose()?;
            cut_features(&features, &options, image.as_ref())
        })
        .map_err(|error| value_error(error.to_string()))?;
    PySegmentation::new(py, segmentation.into(), None)
}
