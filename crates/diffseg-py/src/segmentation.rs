//! The result class: a label map with numpy views, masks, SAM-style records
//! and an overlay.

use numpy::ndarray::{Array2, Array3};
use numpy::{PyArray2, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{core_to_py_err, to_py_err, value_error};
use crate::image_input::ImageSource;

/// A segmentation: every pixel labelled `0..num_segments`.
#[pyclass(module = "diffseg", name = "Segmentation", frozen)]
pub struct PySegmentation {
    inner: diffseg::Segmentation,
    /// `.labels`, made once (read-only, so it cannot drift from `inner`).
    labels: Py<PyArray2<u16>>,
}

impl PySegmentation {
    /// Wraps a facade result; its labels become a read-only uint16 array.
    pub fn new(py: Python<'_>, inner: diffseg::Segmentation) -> PyResult<Self> {
        let labels = PyArray2::from_owned_array(py, labels_u16(&inner)?);
        labels.readwrite().make_nonwriteable();
        Ok(Self {
            inner,
            labels: labels.unbind(),
        })
    }
}

/// The label map as `[height, width]` uint16: segment counts are bounded by
/// the anchor grid (256 for the paper's 16×16), far below 65 536.
// TODO(facade): take the facade's label map buffer once it has one.
fn labels_u16(segmentation: &diffseg::Segmentation) -> PyResult<Array2<u16>> {
    let labels = segmentation
        .labels()
        .iter()
        .map(|&label| u16::try_from(label))
        .collect::<Result<Vec<u16>, _>>()
        .map_err(|_| {
            value_error(format!(
                "{} segments do not fit uint16 labels",
                segmentation.segment_count()
            ))
        })?;
    Ok(
        Array2::from_shape_vec((segmentation.height(), segmentation.width()), labels)
            .expect("a segmentation's labels fill its size"),
    )
}

/// The two mask encodings of segment-anything's automatic mask generator
/// that this result offers.
#[derive(Clone, Copy)]
enum OutputMode {
    BinaryMask,
    UncompressedRle,
}

impl OutputMode {
    fn parse(name: &str) -> PyResult<OutputMode> {
        match name {
            "binary_mask" => Ok(OutputMode::BinaryMask),
            "uncompressed_rle" | "coco_rle" => Ok(OutputMode::UncompressedRle),
            other => Err(value_error(format!(
                "unknown output_mode `{other}`: expected uncompressed_rle or binary_mask"
            ))),
        }
    }
}

#[pymethods]
impl PySegmentation {
    /// The label map, uint16 `[height, width]`, read-only.
    #[getter]
    fn labels(&self, py: Python<'_>) -> Py<PyArray2<u16>> {
        self.labels.clone_ref(py)
    }

    /// Number of segments (labels are `0..num_segments`).
    #[getter]
    fn num_segments(&self) -> usize {
        self.inner.segment_count()
    }

    /// Label map rows.
    #[getter]
    fn height(&self) -> usize {
        self.inner.height()
    }

    /// Label map columns.
    #[getter]
    fn width(&self) -> usize {
        self.inner.width()
    }

    /// One boolean mask per segment, `[num_segments, height, width]`.
    fn masks<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray3<bool>> {
        let (count, height, width) = (
            self.inner.segment_count(),
            self.inner.height(),
            self.inner.width(),
        );
        let labels = self.inner.labels();
        let masks = py.detach(|| {
            Array3::from_shape_fn((count, height, width), |(segment, y, x)| {
                labels[y * width + x] as usize == segment
            })
        });
        PyArray3::from_owned_array(py, masks)
    }

    /// The segments as segment-anything's automatic mask generator lists
    /// them: dicts with `segmentation` (COCO uncompressed RLE), `area`,
    /// `bbox` (`[x, y, width, height]`) and `label`.
    #[getter]
    fn segments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.records(py, OutputMode::UncompressedRle)
    }

    /// [`segments`] with the mask as `output_mode` says: `"uncompressed_rle"`
    /// (COCO RLE dicts) or `"binary_mask"` (bool `[height, width]` arrays).
    #[pyo3(signature = (output_mode = "uncompressed_rle"))]
    fn segments_as<'py>(&self, py: Python<'py>, output_mode: &str) -> PyResult<Bound<'py, PyList>> {
        self.records(py, OutputMode::parse(output_mode)?)
    }

    /// The image with each segment tinted in its own colour (half opacity),
    /// as uint8 RGB `[H, W, 3]` of the image's size; the labels are resized
    /// (nearest) when the sizes differ. `image` is any input `segment` takes.
    fn overlay<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let source = ImageSource::extract(image)?;
        let rgb = py.detach(|| {
            let image = source.load().map_err(to_py_err)?;
            overlay_rgb(&self.inner, &image)
        })?;
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let pixels = Array3::from_shape_vec((height, width, 3), rgb.into_raw())
            .expect("an RGB image has 3 bytes per pixel");
        Ok(PyArray3::from_owned_array(py, pixels))
    }

    /// Writes the label map as a grey PNG (pixel value = label; 8-bit up to
    /// 256 segments, else 16-bit), atomically: what `diffseg segment` writes.
    fn save_labels(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save_label_png(&path))
            .map_err(core_to_py_err)
    }

    fn __repr__(&self) -> String {
        format!(
            "Segmentation({} segments, {}x{})",
            self.inner.segment_count(),
            self.inner.width(),
            self.inner.height()
        )
    }
}

impl PySegmentation {
    fn records<'py>(&self, py: Python<'py>, mode: OutputMode) -> PyResult<Bound<'py, PyList>> {
        let segmentation = &self.inner;
        let records = PyList::empty(py);
        for segment in segmentation.segments() {
            let record = PyDict::new(py);
            let mask = match mode {
                OutputMode::UncompressedRle => {
                    let rle = diffseg::output::coco_rle(
                        segmentation.labels(),
                        segmentation.width() as u32,
                        segmentation.height() as u32,
                        segment.label,
                    );
                    let encoded = PyDict::new(py);
                    encoded.set_item("size", rle.size.to_vec())?;
                    encoded.set_item("counts", rle.counts)?;
                    encoded.into_any()
                }
                OutputMode::BinaryMask => {
                    let (height, width) = (segmentation.height(), segmentation.width());
                    let labels = segmentation.labels();
                    let mask = Array2::from_shape_fn((height, width), |(y, x)| {
                        labels[y * width + x] == segment.label
                    });
                    PyArray2::from_owned_array(py, mask).into_any()
                }
            };
            record.set_item("segmentation", mask)?;
            record.set_item("area", segment.area)?;
            let bbox = segment.bbox;
            record.set_item("bbox", [bbox.x, bbox.y, bbox.width, bbox.height])?;
            record.set_item("label", segment.label)?;
            records.append(record)?;
        }
        Ok(records)
    }
}

/// The overlay in memory. The facade only writes overlays to files for now,
/// so this goes through a temporary PNG rather than copy its palette.
// TODO(facade): call the facade's in-memory RGBA overlay once it has one.
fn overlay_rgb(
    segmentation: &diffseg::Segmentation,
    image: &image::DynamicImage,
) -> PyResult<image::RgbImage> {
    let folder = tempfile::tempdir().map_err(|error| {
        pyo3::exceptions::PyOSError::new_err(format!("cannot create a temporary folder: {error}"))
    })?;
    let path = folder.path().join("overlay.png");
    segmentation
        .save_overlay(image, &path)
        .map_err(core_to_py_err)?;
    let overlay = diffseg::open_image(&path).map_err(to_py_err)?;
    Ok(overlay.to_rgb8())
}
