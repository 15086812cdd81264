//! Images in: numpy arrays, PIL images and paths, turned into the facade's
//! `DynamicImage` (paths are decoded later, with the GIL released).

use std::path::PathBuf;

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use numpy::{PyArrayDescrMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

use crate::errors::{to_py_err, type_error, value_error};

/// An image as given: pixels already in memory, or a file to decode.
pub enum ImageSource {
    /// Pixels copied out of a numpy array or PIL image.
    Pixels(DynamicImage),
    /// An image file, decoded by the facade (limits, every format it reads).
    File(PathBuf),
}

impl ImageSource {
    /// Reads a Python image argument: a path (`str` or `os.PathLike`), a
    /// `PIL.Image.Image`, or a uint8 array H×W (grey), H×W×1, H×W×3 (RGB)
    /// or H×W×4 (RGBA).
    pub fn extract(object: &Bound<'_, PyAny>) -> PyResult<ImageSource> {
        if object.is_instance_of::<PyString>() || object.hasattr("__fspath__")? {
            return Ok(ImageSource::File(object.extract()?));
        }
        if let Ok(array) = object.cast::<PyUntypedArray>() {
            return from_array(array).map(ImageSource::Pixels);
        }
        if is_pil_image(object)? {
            return from_pil(object).map(ImageSource::Pixels);
        }
        Err(type_error(format!(
            "expected an image: a numpy uint8 array (H×W, H×W×3 or H×W×4), a PIL.Image.Image or a \
             path; got {}",
            object.get_type().name()?
        )))
    }

    /// The decoded image (a file is opened and decoded here: call it without the GIL).
    pub fn load(self) -> Result<DynamicImage, diffseg::Error> {
        self.load_within(&diffseg::ImageLimits::default())
    }

    /// [`ImageSource::load`], a file refused from its header when larger than `limits`.
    pub fn load_within(
        self,
        limits: &diffseg::ImageLimits,
    ) -> Result<DynamicImage, diffseg::Error> {
        match self {
            ImageSource::Pixels(image) => Ok(image),
            ImageSource::File(path) => limits.open(&path),
        }
    }
}

/// Whether `object` is a `PIL.Image.Image` (PIL is only looked at when the
/// caller already imported it: a PIL image cannot exist otherwise).
fn is_pil_image(object: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = object.py();
    let modules = py.import("sys")?.getattr("modules")?;
    let Ok(pil) = modules.get_item("PIL.Image") else {
        return Ok(false);
    };
    let image_type = pil.getattr("Image")?.cast_into::<PyType>()?;
    object.is_instance(&image_type)
}

/// A PIL image's pixels: grey, RGB and RGBA as they are, any other mode
/// (palette, 16-bit, CMYK, ...) converted by PIL to RGB first.
fn from_pil(image: &Bound<'_, PyAny>) -> PyResult<DynamicImage> {
    let mode: String = image.getattr("mode")?.extract()?;
    let image = match mode.as_str() {
        "L" | "RGB" | "RGBA" => image.clone(),
        _ => image.call_method1("convert", ("RGB",))?,
    };
    let array = image
        .py()
        .import("numpy")?
        .call_method1("asarray", (image,))?;
    from_array(array.cast::<PyUntypedArray>()?)
}

/// The array shapes taken as images.
const SHAPES: &str = "an image array must be H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA)";

/// A uint8 array's pixels, copied in row-major order (any strides).
fn from_array(array: &Bound<'_, PyUntypedArray>) -> PyResult<DynamicImage> {
    let dtype = array.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(array.py())) {
        return Err(type_error(format!(
            "an image array must be uint8, got {} (convert with `array.astype(numpy.uint8)` after \
             scaling to 0..255)",
            dtype.str()?
        )));
    }
    let shape = array.shape().to_vec();
    let (height, width, channels) = match shape[..] {
        [height, width] => (height, width, 1),
        [height, width, channels @ (1 | 3 | 4)] => (height, width, channels),
        _ => return Err(value_error(format!("{SHAPES}; got shape {shape:?}"))),
    };
    if height == 0 || width == 0 {
        return Err(to_py_err(diffseg::Error::EmptyImage));
    }
    let too_large = || {
        value_error(format!(
            "image array of shape {shape:?} is too large (at most {side}×{side} pixels)",
            side = diffseg::MAX_IMAGE_SIDE
        ))
    };
    let side = |length: usize| {
        u32::try_from(length)
            .ok()
            .filter(|side| *side <= diffseg::MAX_IMAGE_SIDE)
    };
    let (Some(width), Some(height)) = (side(width), side(height)) else {
        return Err(too_large());
    };
    let readonly: PyReadonlyArrayDyn<'_, u8> = array.extract()?;
    // ndarray's `as_slice` is row-major only (numpy's also takes column-major).
    let view = readonly.as_array();
    let pixels: Vec<u8> = match view.as_slice() {
        Some(row_major) => row_major.to_vec(),
        None => view.iter().copied().collect(),
    };
    let sized = "the pixel count matches the shape";
    Ok(match channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels).expect(sized)),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).expect(sized)),
        _ => DynamicImage::ImageRgba8(RgbaImage::from_raw(width, height, pixels).expect(sized)),
    })
}
