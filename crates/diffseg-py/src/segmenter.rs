//! The `Segmenter` class: the facade's `Segmenter` (Send + Sync), called with
//! the GIL released so that other Python threads run, and so that several
//! threads can segment with one model at once.

use std::path::PathBuf;

use diffseg::{
    BackendKind, Fit, MergeOptions, Method, MethodKind, MethodSettings, Precision, Vocabulary,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::IntoPyObjectExt;

use crate::attention::attention_to_dict;
use crate::errors::{to_py_err, type_error, value_error};
use crate::image_input::ImageSource;
use crate::progress::{self, PythonDownloadProgress};
use crate::segmentation::PySegmentation;

/// The settings the `tau` argument gives: a number for every iteration, a sequence
/// with one per iteration, or `"auto"` (DiffCut's eigengap variant); nothing when left
/// out.
pub fn tau_settings(tau: Option<&Bound<'_, PyAny>>) -> PyResult<MethodSettings> {
    let Some(tau) = tau else {
        return Ok(MethodSettings::default());
    };
    let values = |tau: Vec<f32>| MethodSettings {
        tau: Some(tau),
        ..MethodSettings::default()
    };
    if let Ok(one) = tau.extract::<f32>() {
        return Ok(values(vec![one]));
    }
    if tau.is_instance_of::<PyString>() {
        if tau.extract::<String>()?.eq_ignore_ascii_case("auto") {
            return Ok(MethodSettings {
                auto_tau: Some(true),
                ..MethodSettings::default()
            });
        }
    // A str is a sequence too, but never one of numbers.
    } else if let Ok(many) = tau.extract::<Vec<f32>>() {
        return Ok(values(many));
    }
    Err(type_error(format!(
        "tau must be a number, a sequence of numbers or \"auto\", got {}",
        tau.get_type().name()?
    )))
}

/// The method settings from the keyword arguments `Segmenter` and `merge` share; each
/// `None` takes the method's default when the method is built.
pub fn merge_settings(
    tau: Option<&Bound<'_, PyAny>>,
    iterations: Option<usize>,
    anchors: Option<usize>,
    refine: bool,
) -> PyResult<MethodSettings> {
    Ok(MethodSettings {
        iterations,
        anchors,
        refine: refine.then_some(true),
        ..tau_settings(tau)?
    })
}

/// The method the settings describe, checked (a `ValueError` when out of range).
pub fn build_method(kind: MethodKind, settings: &MethodSettings) -> PyResult<Method> {
    Method::from_settings(kind, settings).map_err(to_py_err)
}

/// Segments images with DiffSeg (one Stable Diffusion pass per image, its
/// self-attention merged into segments). Loading takes a while; keep one and
/// reuse it, from any number of threads.
#[pyclass(module = "diffseg", name = "Segmenter", frozen)]
pub struct PySegmenter {
    inner: diffseg::Segmenter,
}

impl PySegmenter {
    /// DiffSeg's merging options; an `AttributeError` when another method runs.
    fn merge(&self) -> PyResult<&MergeOptions> {
        self.inner.merge_options().ok_or_else(|| {
            pyo3::exceptions::PyAttributeError::new_err(format!(
                "the {} method has no merging options",
                self.inner.method().kind()
            ))
        })
    }
}

/// `vocabulary=`: a preset's name or comma-separated entries (a string), or a list of entries.
fn vocabulary_argument(value: &Bound<'_, PyAny>) -> PyResult<Vocabulary> {
    let vocabulary = match value.extract::<String>() {
        Ok(text) => Vocabulary::parse(&text),
        Err(_) => {
            let entries: Vec<String> = value.extract().map_err(|_| {
                type_error("vocabulary must be a preset name, a comma-separated string or a list of strings")
            })?;
            Vocabulary::new(entries, "vocabulary")
        }
    };
    vocabulary.map_err(|error| to_py_err(error.into()))
}

#[pymethods]
impl PySegmenter {
    #[new]
    #[pyo3(signature = (
        backend = "cpu",
        weights = None,
        model = diffseg::weights::DEFAULT_MODEL,
        precision = "f32",
        fit = "pad",
        tau = None,
        iterations = None,
        anchors = None,
        refine = false,
        allow_download = true,
        max_pixels = diffseg::DEFAULT_MAX_PIXELS,
        progress = None,
        method = "diffseg",
        alpha = None,
        mask_size = None,
        pamr = false,
        median = false,
        input_size = None,
        seed = None,
        vocabulary = None,
        top_k = diffseg::DEFAULT_TOP_K,
        tokenizer = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: &str,
        weights: Option<PathBuf>,
        model: &str,
        precision: &str,
        fit: &str,
        tau: Option<&Bound<'_, PyAny>>,
        iterations: Option<usize>,
        anchors: Option<usize>,
        refine: bool,
        allow_download: bool,
        max_pixels: u64,
        progress: Option<&Bound<'_, PyAny>>,
        method: &str,
        alpha: Option<f32>,
        mask_size: Option<usize>,
        pamr: bool,
        median: bool,
        input_size: Option<usize>,
        seed: Option<u64>,
        vocabulary: Option<&Bound<'_, PyAny>>,
        top_k: usize,
        tokenizer: Option<PathBuf>,
    ) -> PyResult<Self> {
        let name_error = |error: diffseg::Error| value_error(error.to_string());
        let backend: BackendKind = backend.parse().map_err(name_error)?;
        let precision: Precision = precision.parse().map_err(name_error)?;
        let fit: Fit = fit.parse().map_err(name_error)?;
        let kind: MethodKind = method.parse().map_err(name_error)?;
        // DiffCut's options; given with DiffSeg they are refused by name.
        let settings = MethodSettings {
            alpha,
            mask_size,
            pamr: pamr.then_some(true),
            median: median.then_some(true),
            input_size,
            seed,
            ..merge_settings(tau, iterations, anchors, refine)?
        };
        let method = build_method(kind, &settings)?;
        let mut builder = diffseg::Segmenter::builder()
            .backend(backend)
            .model(model)
            .precision(precision)
            .fit(fit)
            .method(method)
            .allow_download(allow_download)
            .max_pixels(max_pixels);
        if let Some(weights) = weights {
            builder = builder.weights(weights);
        }
        if let Some(vocabulary) = vocabulary {
            builder = builder
                .vocabulary(vocabulary_argument(vocabulary)?)
                .top_k(top_k);
        }
        if let Some(tokenizer) = tokenizer {
            builder = builder.tokenizer(tokenizer);
        }
        let callback = progress::callback(py, progress)?;
        let mut reporter = PythonDownloadProgress::new(callback.as_ref());
        let built = py.detach(|| builder.build_reporting(&mut reporter));
        // A Ctrl-C (or the callback's exception) is what the caller sees,
        // not the interrupted download it caused.
        if let Some(error) = reporter.into_error() {
            return Err(error);
        }
        Ok(Self {
            inner: built.map_err(to_py_err)?,
        })
    }

    /// Segments one image (numpy uint8 array H×W, H×W×3 or H×W×4, a
    /// PIL.Image.Image or a path); the result has the image's size.
    fn segment(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<PySegmentation> {
        let source = ImageSource::extract(image)?;
        let (segmentation, image) = py.detach(|| {
            let image = source
                .load_within(&self.inner.image_limits())
                .map_err(to_py_err)?;
            let segmentation = self.inner.segment(&image).map_err(to_py_err)?;
            Ok::<_, PyErr>((segmentation, image))
        })?;
        PySegmentation::new(py, segmentation, Some(image))
    }

    /// Segments images (any mix of the inputs `segment` takes), `batch_size`
    /// per model pass (default: all in one); one result per image, in order.
    /// `progress(event)` is called before the first pass and after each with
    /// `{"stage": "segment", "done": images, "total": images}`. Ctrl-C stops
    /// it with `KeyboardInterrupt` between images read and between passes.
    #[pyo3(signature = (images, batch_size = None, progress = None))]
    fn segment_batch<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if batch_size == Some(0) {
            return Err(value_error("batch_size must be at least 1"));
        }
        // None and False report nothing (False as for `Segmenter`).
        let progress = progress.filter(|value| value.extract::<bool>().ok() != Some(false));
        if let Some(progress) = progress {
            if !progress.is_callable() {
                return Err(type_error(format!(
                    "progress must be a callable taking one dict, None or False; got {}",
                    progress.get_type().name()?
                )));
            }
        }
        let sources = images
            .try_iter()?
            .map(|image| ImageSource::extract(&image?))
            .collect::<PyResult<Vec<_>>>()?;
        let total = sources.len();
        let report = |done: usize| match progress {
            Some(callback) => progress::report(
                callback,
                &[
                    ("stage", "segment".into_bound_py_any(py)?),
                    ("done", done.into_bound_py_any(py)?),
                    ("total", total.into_bound_py_any(py)?),
                ],
            ),
            None => Ok(()),
        };
        report(0)?;
        let limits = self.inner.image_limits();
        let mut results = Vec::with_capacity(total);
        let mut sources = sources.into_iter().peekable();
        while sources.peek().is_some() {
            let mut images = Vec::new();
            for source in sources.by_ref().take(batch_size.unwrap_or(total)) {
                images.push(
                    py.detach(|| source.load_within(&limits))
                        .map_err(to_py_err)?,
                );
                py.check_signals()?;
            }
            let segmentations = py
                .detach(|| self.inner.segment_batch(&images))
                .map_err(to_py_err)?;
            for (segmentation, image) in segmentations.into_iter().zip(images) {
                results.push(PySegmentation::new(py, segmentation, Some(image))?);
            }
            py.check_signals()?;
            report(results.len())?;
        }
        PyList::new(py, results)
    }

    /// The image's self-attention averaged over heads and layers, before any
    /// merging: `{"self_attn.64": float32 [4096, 4096], ...}` (largest grid
    /// first). `diffseg.merge` turns it into segments with any options.
    fn attention<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let source = ImageSource::extract(image)?;
        let attention = py.detach(|| {
            let image = source
                .load_within(&self.inner.image_limits())
                .map_err(to_py_err)?;
            self.inner.attention(&image).map_err(to_py_err)
        })?;
        attention_to_dict(py, attention)
    }

    /// The side of the model's square input in pixels (512 for SD 1.x).
    #[getter]
    fn input_size(&self) -> usize {
        self.inner.input_size()
    }

    /// The backend the model runs on (`cpu`, `wgpu`, `cuda:0`, ...).
    #[getter]
    fn backend(&self) -> String {
        self.inner.backend().to_string()
    }

    /// The compute precision (`f32` or `f16`).
    #[getter]
    fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// How non-square images are fitted (`pad` or `center-crop`).
    #[getter]
    fn fit(&self) -> String {
        self.inner.fit().to_string()
    }

    /// The folder or file the weights were loaded from.
    #[getter]
    fn weights(&self) -> PathBuf {
        self.inner.weights().path.clone()
    }

    /// The KL thresholds (one, or one per iteration).
    #[getter]
    fn tau(&self) -> PyResult<Vec<f32>> {
        Ok(self.merge()?.tau.clone())
    }

    /// Merge iterations.
    #[getter]
    fn iterations(&self) -> PyResult<usize> {
        Ok(self.merge()?.iterations)
    }

    /// Anchors per side of the anchor grid.
    #[getter]
    fn anchors(&self) -> PyResult<usize> {
        Ok(self.merge()?.anchors)
    }

    /// The most pixels (width × height) an image may have.
    #[getter]
    fn max_pixels(&self) -> u64 {
        self.inner.image_limits().max_pixels()
    }

    /// Whether the k-means refinement runs.
    #[getter]
    fn refine(&self) -> PyResult<bool> {
        Ok(self.merge()?.refine)
    }

    /// The vocabulary's entries segments are named from (a preset's class names, or the
    /// list given), or None when segments are not named.
    #[getter]
    fn vocabulary(&self) -> Option<Vec<String>> {
        self.inner
            .vocabulary()
            .map(|vocabulary| vocabulary.entries().to_vec())
    }

    /// How many best names a named segment keeps, or None when segments are not named.
    #[getter]
    fn top_k(&self) -> Option<usize> {
        self.inner.top_k()
    }

    fn __repr__(&self) -> String {
        format!(
            "Segmenter(backend={:?}, weights={:?}, precision={:?}, fit={:?}, input_size={})",
            self.inner.backend().to_string(),
            self.inner.weights().path.display().to_string(),
            self.inner.precision().to_string(),
            self.inner.fit().to_string(),
            self.inner.input_size()
        )
    }
}
