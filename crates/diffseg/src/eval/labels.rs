//! Label maps in and out: ground truth read and brought to the protocol's 512×512
//! (docs/method.md §7), predictions read and written as PNG.

use std::path::Path;

use image::DynamicImage;

use crate::output::LabelPngError;
use crate::Error;

/// The side of the square that images, labels and predictions are compared at.
pub const EVAL_SIDE: usize = 512;

/// A single-channel 8-bit label map, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` raw label values.
    pub values: Vec<u8>,
}

/// Reads a ground-truth label PNG as the paper's code does: 8-bit values, and
/// channel 0 of a file with several channels (a palette PNG is expanded to RGB
/// first). 16-bit files keep their high byte, as an 8-bit decoder does.
pub(crate) fn read_label_png(path: &Path) -> Result<LabelImage, Error> {
    let decoded = image::open(path).map_err(|source| Error::png(path, source))?;
    let (width, height) = (decoded.width(), decoded.height());
    let values = match &decoded {
        DynamicImage::ImageLuma8(buffer) => buffer.as_raw().clone(),
        DynamicImage::ImageLumaA8(buffer) => first_channel(buffer.as_raw(), 2),
        DynamicImage::ImageRgb8(buffer) => first_channel(buffer.as_raw(), 3),
        DynamicImage::ImageRgba8(buffer) => first_channel(buffer.as_raw(), 4),
        DynamicImage::ImageLuma16(buffer) => high_bytes(buffer.as_raw(), 1),
        DynamicImage::ImageLumaA16(buffer) => high_bytes(buffer.as_raw(), 2),
        DynamicImage::ImageRgb16(buffer) => high_bytes(buffer.as_raw(), 3),
        DynamicImage::ImageRgba16(buffer) => high_bytes(buffer.as_raw(), 4),
        // Float colour types do not come out of PNG files; anything else is converted.
        other => first_channel(other.to_rgb8().as_raw(), 3),
    };
    Ok(LabelImage {
        width,
        height,
        values,
    })
}

/// Channel 0 of interleaved 8-bit pixels with `channels` channels.
fn first_channel(interleaved: &[u8], channels: usize) -> Vec<u8> {
    interleaved.iter().step_by(channels).copied().collect()
}

/// The high byte of channel 0 of interleaved 16-bit pixels.
fn high_bytes(interleaved: &[u16], channels: usize) -> Vec<u8> {
    interleaved
        .iter()
        .step_by(channels)
        .map(|&value| (value >> 8) as u8)
        .collect()
}

/// The source index that output index `i` of a nearest-neighbour resize from `source`
/// to `target` samples, with TF2 `tf.image.resize` semantics (half-pixel centres):
/// `floor((i + 0.5) · source / target)`, clamped to `source − 1`. Computed in integers,
/// which is exact (TF's float32 product never crosses an integer differently here,
/// since the fractional part of `(2i + 1) · source / (2 · target)` is either 0 or at
/// least 1 / (2 · target)).
pub(crate) fn nearest_source_index(i: usize, source: usize, target: usize) -> usize {
    ((2 * i + 1) * source / (2 * target)).min(source - 1)
}

/// The protocol's label pre-processing (docs/method.md §7): the centre square of side
/// `c = min(H, W)` starting at row `(H − c) / 2` and column `(W − c) / 2`, resized to
/// `side`×`side` by nearest neighbour ([`nearest_source_index`]). Row-major.
pub(crate) fn center_crop_resize_nearest(labels: &LabelImage, side: usize) -> Vec<u8> {
    crop_resize_nearest(
        &labels.values,
        labels.width as usize,
        labels.height as usize,
        side,
    )
}

/// [`center_crop_resize_nearest`] for any row-major `width`×`height` map.
///
/// # Panics
///
/// If `values` does not hold `width * height` values.
pub(crate) fn crop_resize_nearest<T: Copy>(
    values: &[T],
    width: usize,
    height: usize,
    side: usize,
) -> Vec<T> {
    assert_eq!(values.len(), width * height, "a width × height map");
    let crop = width.min(height);
    let top = (height - crop) / 2;
    let left = (width - crop) / 2;
    let columns: Vec<usize> = (0..side)
        .map(|x| left + nearest_source_index(x, crop, side))
        .collect();
    let mut out = Vec::with_capacity(side * side);
    for y in 0..side {
        let row = (top + nearest_source_index(y, crop, side)) * width;
        out.extend(columns.iter().map(|&x| values[row + x]));
    }
    out
}

/// The side of the square DiffCut's `eval_diffcut.py` compares at (its mask size).
pub const DIFFCUT_EVAL_SIDE: usize = 128;

/// Python's `round(d / 2)` for an integer `d`: halves go to the even neighbour, as
/// torchvision's `CenterCrop` rounds its offsets.
fn half_round_even(d: usize) -> usize {
    let (half, odd) = (d / 2, d % 2 == 1);
    if odd && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// The square `eval_diffcut.py`'s data loader crops from a `width`×`height` image or
/// label map, as `(top, left, side)`: side `min(H, W) − 1` (its `c`), offsets
/// torchvision's `CenterCrop` rounds half to even. `None` when a side is 1 pixel or less.
pub(crate) fn diffcut_crop_square(width: u32, height: u32) -> Option<(usize, usize, usize)> {
    let (width, height) = (width as usize, height as usize);
    let side = width.min(height).checked_sub(1).filter(|&c| c > 0)?;
    Some((
        half_round_even(height - side),
        half_round_even(width - side),
        side,
    ))
}

/// `eval_diffcut.py`'s label pre-processing, to [`DIFFCUT_EVAL_SIDE`]² values: its data
/// loader's centre square of side `min(H, W) − 1` (torchvision's `CenterCrop`, offsets
/// rounded half to even), resized to `input_size` by nearest-exact (half-pixel centres,
/// [`nearest_source_index`]), then to 128 by torch's legacy nearest (`floor(i · in /
/// out)`). `None` for a map too small to crop (a side of 1 pixel).
pub(crate) fn diffcut_crop_resize(labels: &LabelImage, input_size: usize) -> Option<Vec<u8>> {
    let width = labels.width as usize;
    let (top, left, crop) = diffcut_crop_square(labels.width, labels.height)?;
    if input_size == 0 {
        return None;
    }
    let source = |i: usize| {
        let resized = (i * input_size / DIFFCUT_EVAL_SIDE).min(input_size - 1);
        nearest_source_index(resized, crop, input_size)
    };
    let columns: Vec<usize> = (0..DIFFCUT_EVAL_SIDE).map(|x| left + source(x)).collect();
    let mut out = Vec::with_capacity(DIFFCUT_EVAL_SIDE * DIFFCUT_EVAL_SIDE);
    for y in 0..DIFFCUT_EVAL_SIDE {
        let row = (top + source(y)) * width;
        out.extend(columns.iter().map(|&x| labels.values[row + x]));
    }
    Some(out)
}

/// A predicted label map: segment indices, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` segment indices.
    pub segments: Vec<u16>,
}

/// Decodes a predicted label map of any size: a PNG whose pixel values are
/// segment indices, as `diffseg segment` writes them (8-bit palette, 16-bit
/// greyscale) or 8-bit greyscale.
pub fn decode_prediction_png(path: impl AsRef<Path>) -> Result<PredictionImage, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|error| Error::ImageRead {
        path: path.to_path_buf(),
        error,
    })?;
    let (labels, width, height) =
        crate::output::decode_label_png(&bytes).map_err(|error| match error {
            LabelPngError::Kind(found) => Error::PredictionFormat {
                path: path.to_path_buf(),
                found,
            },
            LabelPngError::Damaged(reason) => Error::ImageDecode {
                path: path.to_path_buf(),
                reason,
            },
        })?;
    Ok(PredictionImage {
        width,
        height,
        // At most 16-bit samples: all fit.
        segments: labels.into_iter().map(|label| label as u16).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_index_matches_the_protocol_formula() {
        // Upsampling 3 → 512: thirds of the output, split at floor((i + 0.5) · 3 / 512).
        assert_eq!(nearest_source_index(0, 3, 512), 0);
        assert_eq!(nearest_source_index(170, 3, 512), 0); // 170.5 · 3 / 512 = 0.999
        assert_eq!(nearest_source_index(171, 3, 512), 1);
        assert_eq!(nearest_source_index(511, 3, 512), 2);
        // Downsampling 1024 → 512 samples the odd source pixels.
        assert_eq!(nearest_source_index(0, 1024, 512), 1);
        assert_eq!(nearest_source_index(511, 1024, 512), 1023);
    }

    #[test]
    fn diffcut_offsets_round_half_to_even_as_python() {
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3) = 3.
        let rounded: Vec<usize> = [1, 3, 5, 6].into_iter().map(half_round_even).collect();
        assert_eq!(rounded, vec![0, 2, 2, 3]);
        let tiny = LabelImage {
            width: 1,
            height: 5,
            values: vec![0; 5],
        };
        assert_eq!(diffcut_crop_resize(&tiny, 1024), None);
    }

    #[test]
    fn crop_takes_the_centre_square() {
        // 4 wide, 2 high: the centre square is columns 1..3.
        let labels = LabelImage {
            width: 4,
            height: 2,
            values: vec![0, 1, 2, 3, 4, 5, 6, 7],
        };
        assert_eq!(center_crop_resize_nearest(&labels, 2), vec![1, 2, 5, 6]);
        assert_eq!(
            center_crop_resize_nearest(&labels, 4),
            vec![1, 1, 2, 2, 1, 1, 2, 2, 5, 5, 6, 6, 5, 5, 6, 6]
        );
    }

    #[test]
    fn predictions_round_trip_in_8_and_16_bits() {
        let folder = tempfile::tempdir().unwrap();
        for max in [200u16, 700] {
            let path = folder.path().join(format!("p{max}.png"));
            let labels: Vec<u16> = (0..16).map(|i| i * max / 15).collect();
            let wide: Vec<u32> = labels.iter().map(|&label| label as u32).collect();
            let png = crate::output::encode_label_png(&path, &wide, 4, 4).unwrap();
            crate::output::write_atomically(&path, &png).unwrap();
            assert_eq!(decode_prediction_png(&path).unwrap().segments, labels);
            let error = super::super::load_prediction(&path, 8, 8, 8).unwrap_err();
            assert!(
                matches!(error, Error::PredictionSize { width: 4, .. }),
                "{error}"
            );
        }
        // Only the two PNGs: no temporary file left behind.
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 2);
        // 8-bit greyscale, as diffseg wrote label PNGs before palettes.
        let grey = folder.path().join("grey.png");
        image::GrayImage::from_raw(2, 1, vec![3, 7])
            .unwrap()
            .save(&grey)
            .unwrap();
        assert_eq!(decode_prediction_png(&grey).unwrap().segments, [3, 7]);
        // RGB is no label map.
        let rgb = folder.path().join("rgb.png");
        image::RgbImage::new(2, 1).save(&rgb).unwrap();
        let error = decode_prediction_png(&rgb).unwrap_err();
        assert!(matches!(error, Error::PredictionFormat { .. }), "{error}");
    }
}
