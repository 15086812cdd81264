//! The result class: a label map with numpy views, masks, SAM-style records
//! and an overlay.

use diffseg::OverlayStyle;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};
use numpy::ndarray::{Array2, Array3};
use numpy::{PyArray2, PyArray3, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{to_py_err, value_error};
use crate::image_input::ImageSource;

/// A segmentation: every pixel labelled `0..num_segments`.
#[pyclass(module = "diffseg", name = "Segmentation", frozen)]
pub struct PySegmentation {
    inner: diffseg::Segmentation,
    /// `.labels`, made once (read-only, so it cannot drift from `inner`).
    labels: Py<PyArray2<u16>>,
    /// The image that was segmented, for the notebook display (`None` for a
    /// merge of attention, which has no image).
    image: Option<DynamicImage>,
}

impl PySegmentation {
    /// Wraps a facade result; its labels become a read-only uint16 array.
    /// `image` is the image segmented, kept for [`PySegmentation::_repr_png_`].
    pub fn new(
        py: Python<'_>,
        inner: diffseg::Segmentation,
        image: Option<DynamicImage>,
    ) -> PyResult<Self> {
        let labels = PyArray2::from_owned_array(py, labels_u16(&inner)?);
        labels.readwrite().make_nonwriteable();
        Ok(Self {
            inner,
            labels: labels.unbind(),
            image,
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

/// The mask encodings of segment-anything's automatic mask generator.
#[derive(Clone, Copy)]
enum OutputMode {
    BinaryMask,
    UncompressedRle,
    CocoRle,
}

impl OutputMode {
    fn parse(name: &str) -> PyResult<OutputMode> {
        match name {
            "binary_mask" => Ok(OutputMode::BinaryMask),
            "uncompressed_rle" => Ok(OutputMode::UncompressedRle),
            "coco_rle" => Ok(OutputMode::CocoRle),
            other => Err(value_error(format!(
                "unknown output_mode `{other}`: expected binary_mask, coco_rle or uncompressed_rle"
            ))),
        }
    }
}

/// The longest side of the picture a notebook shows (`_repr_png_`): larger
/// images are scaled down first, so a photo's display stays small and quick.
const DISPLAY_SIDE: u32 = 1024;

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
    /// them: dicts with `segmentation` (a bool `[height, width]` mask),
    /// `area`, `bbox` (`[x, y, width, height]`) and `label`; with a
    /// vocabulary also `name`, `name_score` and `names` (the `top_k` best
    /// as `(name, score)` pairs, best first).
    #[getter]
    fn segments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.records(py, OutputMode::BinaryMask)
    }

    /// [`segments`] with the mask as `output_mode` says: `"binary_mask"`
    /// (bool `[height, width]` arrays), `"coco_rle"` (pycocotools' compressed
    /// RLE, `counts` a string) or `"uncompressed_rle"` (`counts` a list of runs).
    #[pyo3(signature = (output_mode = "binary_mask"))]
    fn segments_as<'py>(&self, py: Python<'py>, output_mode: &str) -> PyResult<Bound<'py, PyList>> {
        self.records(py, OutputMode::parse(output_mode)?)
    }

    /// Each segment's colour in overlays, uint8 `[num_segments, 3]` (RGB).
    fn palette<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let colours = py.detach(|| self.colours())?;
        let count = colours.len();
        let flat = colours.into_iter().flatten().collect();
        Ok(PyArray2::from_owned_array(
            py,
            Array2::from_shape_vec((count, 3), flat).expect("three channels per colour"),
        ))
    }

    /// The overlay as PNG bytes, which Jupyter and IPython show for a result:
    /// the segmented image tinted and outlined as `overlay` draws it (scaled
    /// to at most 1024 pixels a side), or the segment colours alone for a
    /// result of `merge`, which has no image.
    fn _repr_png_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let png = py.detach(|| self.display_png())?;
        Ok(PyBytes::new(py, &png))
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

    /// Writes the label map as a PNG whose pixel values are the labels (an
    /// 8-bit palette PNG in the overlay's colours up to 256 segments, else
    /// 16-bit grey), atomically: what `diffseg segment` writes.
    fn save_labels(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save_label_png(&path))
            .map_err(to_py_err)
    }

    /// The segments as `supervision.Detections` (supervision must be
    /// installed): `xyxy` boxes, `mask`, and `class_id` the label, in label order.
    fn to_supervision<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_view(slf, "to_supervision")
    }

    /// The overlay inline (base64 PNG) beside a legend of the segments
    /// (colour, label, area), which Jupyter shows for a result.
    fn _repr_html_<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_view(slf, "repr_html")
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

/// A view of a result written in Python (`diffseg/_display.py`): what only
/// needs numpy and the methods here, or another Python package.
fn python_view<'py>(
    result: &Bound<'py, PySegmentation>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    result
        .py()
        .import("diffseg._display")?
        .call_method1(name, (result,))
}

impl PySegmentation {
    fn records<'py>(&self, py: Python<'py>, mode: OutputMode) -> PyResult<Bound<'py, PyList>> {
        let records = PyList::empty(py);
        for segment in self.inner.describe(None).segments {
            let record = PyDict::new(py);
            let rle = |counts: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
                let encoded = PyDict::new(py);
                encoded.set_item("size", segment.segmentation.size().to_vec())?;
                encoded.set_item("counts", counts)?;
                Ok(encoded.into_any())
            };
            let mask = match mode {
                OutputMode::CocoRle => {
                    rle(segment.segmentation.counts().into_pyobject(py)?.into_any())?
                }
                OutputMode::UncompressedRle => {
                    rle(segment.segmentation.runs().into_pyobject(py)?.into_any())?
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
            // Only when the segmenter was given a vocabulary.
            if let (Some(name), Some(score)) = (&segment.name, segment.name_score) {
                record.set_item("name", name)?;
                record.set_item("name_score", score)?;
                let names = PyList::empty(py);
                for entry in &segment.names {
                    names.append((entry.name.as_str(), entry.score))?;
                }
                record.set_item("names", names)?;
            }
            records.append(record)?;
        }
        Ok(records)
    }

    /// Each segment's overlay colour: the overlay of a black image at full
    /// opacity is the colours alone, read at each segment's first pixel.
    fn colours(&self) -> PyResult<Vec<[u8; 3]>> {
        let (width, height) = (self.inner.width() as u32, self.inner.height() as u32);
        let black = DynamicImage::new_rgb8(width, height);
        let style = OverlayStyle::default().with_opacity(1.0).with_outline(None);
        let painted = self.inner.overlay(&black, &style).map_err(to_py_err)?;
        let mut colours = vec![None; self.inner.segment_count()];
        for (index, &label) in self.inner.labels().iter().enumerate() {
            let slot = &mut colours[label as usize];
            if slot.is_none() {
                let pixel = painted.get_pixel(index as u32 % width, index as u32 / width);
                *slot = Some([pixel[0], pixel[1], pixel[2]]);
            }
        }
        Ok(colours
            .into_iter()
            .map(|colour| colour.expect("every label has a pixel"))
            .collect())
    }

    /// The PNG `_repr_png_` shows.
    fn display_png(&self) -> PyResult<Vec<u8>> {
        let (image, style) = match &self.image {
            Some(image) => (image.clone(), OverlayStyle::default()),
            None => (
                DynamicImage::new_rgb8(self.inner.width() as u32, self.inner.height() as u32),
                OverlayStyle::default().with_opacity(1.0),
            ),
        };
        let image = if image.width().max(image.height()) > DISPLAY_SIDE {
            image.resize(DISPLAY_SIDE, DISPLAY_SIDE, FilterType::Triangle)
        } else {
            image
        };
        let overlay = self.inner.overlay(&image, &style).map_err(to_py_err)?;
        let mut png = Vec::new();
        DynamicImage::ImageRgba8(overlay)
            .into_rgb8()
            .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|error| value_error(format!("encoding the display PNG: {error}")))?;
        Ok(png)
    }
}
