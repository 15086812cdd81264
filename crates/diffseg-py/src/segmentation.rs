//! The result class: a label map with numpy views, masks, SAM-style records
//! and an overlay.

use diffseg::OverlayStyle;
use image::DynamicImage;
use numpy::ndarray::{Array2, Array3};
use numpy::{PyArray2, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{to_py_err, value_error};
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

/// The label map as `[height, width]` uint16 (half the memory of the facade's
/// u32): segment counts are bounded by the anchor grid (256 for the paper's
/// 16×16), far below 65 536.
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

    /// The image with each segment tinted in its own colour (`opacity`: 0 the
    /// image only, 1 the colour only) and outlined in `outline` (an RGB triple,
    /// or `None` for no outline), as uint8 RGB `[H, W, 3]` of the image's
    /// size; the labels are resized (nearest) when the sizes differ. `image`
    /// is any input `segment` takes. The defaults draw what `diffseg segment`
    /// writes as `.overlay.png`.
    #[pyo3(
        signature = (image, opacity = 0.5, outline = Some([255, 255, 255])),
        text_signature = "($self, image, opacity=0.5, outline=(255, 255, 255))"
    )]
    fn overlay<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        opacity: f32,
        outline: Option<[u8; 3]>,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        if !(0.0..=1.0).contains(&opacity) {
            return Err(value_error(format!(
                "opacity {opacity} is not between 0 and 1"
            )));
        }
        let style = OverlayStyle::default()
            .with_opacity(opacity)
            .with_outline(outline);
        let source = ImageSource::extract(image)?;
        let rgb = py.detach(|| {
            let image = source.load().map_err(to_py_err)?;
            let overlay = self.inner.overlay(&image, &style).map_err(to_py_err)?;
            Ok::<_, PyErr>(DynamicImage::ImageRgba8(overlay).into_rgb8())
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
            .map_err(to_py_err)
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
        let records = PyList::empty(py);
        for segment in self.inner.describe(None).segments {
            let record = PyDict::new(py);
            let mask = match mode {
                OutputMode::UncompressedRle => {
                    let encoded = PyDict::new(py);
                    encoded.set_item("size", segment.segmentation.size().to_vec())?;
                    encoded.set_item("counts", segment.segmentation.runs())?;
                    encoded.into_any()
                }
                OutputMode::BinaryMask => {
                    let mask = self.inner.mask(segment.label as usize).map_err(to_py_err)?;
                    let mask =
                        Array2::from_shape_vec((self.inner.height(), self.inner.width()), mask)
                            .expect("a mask covers the label map");
                    PyArray2::from_owned_array(py, mask).into_any()
                }
            };
            record.set_item("segmentation", mask)?;
            record.set_item("area", segment.area)?;
            record.set_item("bbox", segment.bbox.to_vec())?;
            record.set_item("label", segment.label)?;
            records.append(record)?;
        }
        Ok(records)
    }
}
