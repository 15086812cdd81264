//! Image in: decoding with limits, fitting any image to the model's square
//! input, and the exact resampling and scaling of docs/method.md §1.
//!
//! Two ways to fit a non-square image (see [`Fit`]):
//! - [`Fit::Pad`] (default) pads the image to a square with neutral grey, so the
//!   model sees all of it; the segmentation is mapped back to every pixel.
//! - [`Fit::CenterCrop`] is the paper's protocol: the centre square only, as the
//!   evaluation uses. Pixels outside the square take the label of the nearest
//!   pixel on the square's border.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::Error;

/// How a non-square image is fitted to the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fit {
    /// Pad to a square (image centred, neutral grey around it), segment, and crop the
    /// result back: every pixel of the image gets a segment. The default.
    #[default]
    Pad,
    /// The paper's protocol (docs/method.md §1): the centre square of side `min(H, W)`.
    /// The evaluation uses this.
    CenterCrop,
}

impl std::str::FromStr for Fit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pad" => Ok(Fit::Pad),
            "center-crop" | "centre-crop" | "crop" => Ok(Fit::CenterCrop),
            _ => Err(Error::unknown_name("fit", s, "expected pad or center-crop")),
        }
    }
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fit::Pad => "pad",
            Fit::CenterCrop => "center-crop",
        })
    }
}

/// The largest width or height [`open_image`] decodes.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory [`open_image`] lets a decoder allocate (1 GiB): enough for a
/// 16384×16384 RGB image, and a header that claims more fails before allocating.
pub(crate) const MAX_DECODE_BYTES: u64 = 1 << 30;

/// The most pixels (width × height) an image may have by default: 64 megapixels
/// (e.g. 8192×8192). What the model sees costs the same for any image, but two
/// things grow with its pixels: the decoded image (3 bytes a pixel in RGB8, up to 8
/// in 16-bit RGBA) and the label map returned at its own size (4 bytes a pixel, up
/// to three such arrays while the labels are renumbered). At 64 megapixels that is
/// about 1 GiB for an 8-bit RGB image (192 MiB + 768 MiB); at the decoders' largest,
/// 16384×16384, it would be 4 GiB. Raise it with
/// [`ImageLimits::with_max_pixels`], [`crate::SegmenterBuilder::max_pixels`],
/// `diffseg segment --max-pixels N` or `Segmenter(max_pixels=N)` in Python.
pub const DEFAULT_MAX_PIXELS: u64 = 64 << 20;

/// The size limits of an image taken in: at most [`MAX_IMAGE_SIDE`] pixels a side
/// (a fixed bound of the decoders here) and at most `max_pixels` pixels in all
/// ([`DEFAULT_MAX_PIXELS`] unless raised). Files are checked from their header,
/// before anything is decoded.
///
/// ```no_run
/// # fn main() -> Result<(), diffseg::Error> {
/// // A 100-megapixel scan: above the default limit.
/// let limits = diffseg::ImageLimits::default().with_max_pixels(100_000_000);
/// let image = limits.open("scan.tiff")?;
/// # let _ = image; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl ImageLimits {
    /// These limits with at most `max_pixels` pixels (width × height) an image.
    pub fn with_max_pixels(self, max_pixels: u64) -> Self {
        Self { max_pixels }
    }

    /// The most pixels (width × height) an image may have.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// [`open_image`] with these limits.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<DynamicImage, Error> {
        let path = path.as_ref();
        match self.open_allowing_damage(path)? {
            (image, None) => Ok(image),
            (_, Some(reason)) => Err(Error::ImageDamaged {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    /// [`open_image_allowing_damage`] with these limits.
    pub fn open_allowing_damage(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<(DynamicImage, Option<String>), Error> {
        let path = path.as_ref();
        let read_error = |source| Error::ImageRead {
            path: path.to_path_buf(),
            error: source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_DECODE_BYTES {
            return Err(Error::ImageTooLarge {
                path: path.to_path_buf(),
                reason: format!(
                    "a {} MiB file (at most {} MiB)",
                    size >> 20,
                    MAX_DECODE_BYTES >> 20
                ),
            });
        }
        // Read whole: the damage checks below read the bytes a second time.
        let bytes = std::fs::read(path).map_err(read_error)?;
        let mut reader = ImageReader::new(Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(read_error)?;
        let Some(format) = reader.format() else {
            return Err(Error::ImageDecode {
                path: path.to_path_buf(),
                reason: "not an image in a supported format (PNG, JPEG, TIFF, WebP, BMP)".into(),
            });
        };
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits.clone());
        let decode_error = |error| image_error(path, error);
        // The decoder reads the header only; the pixels are decoded after the size checks.
        let decoder = reader.into_decoder().map_err(decode_error)?;
        let (width, height) = decoder.dimensions();
        self.check_file(path, width, height)?;
        limits
            .reserve(decoder.total_bytes())
            .map_err(decode_error)?;
        let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::EmptyImage);
        }
        let damage = match format {
            ImageFormat::Jpeg => jpeg_damage(&bytes),
            ImageFormat::Png => png_damage(&bytes),
            // The WebP, TIFF and BMP decoders fail on a truncated file themselves.
            _ => None,
        };
        Ok((image, damage))
    }

    /// Checks an image already in memory (or about to be: a placement read back)
    /// against the pixel limit.
    pub(crate) fn check(&self, width: u32, height: u32) -> Result<(), Error> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(Error::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// [`ImageLimits::check`] for the file at `path`, as [`Error::ImageTooLarge`].
    fn check_file(&self, path: &Path, width: u32, height: u32) -> Result<(), Error> {
        self.check(width, height)
            .map_err(|error| Error::ImageTooLarge {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })
    }
}

/// Opens and decodes an image file of any format the `image` crate reads here
/// (PNG, JPEG including CMYK, TIFF, WebP, BMP), with decoding limits so that a
/// header claiming a huge size gives [`Error::ImageTooLarge`] instead of
/// exhausting memory: the default [`ImageLimits`] (at most [`MAX_IMAGE_SIDE`]
/// pixels a side and [`DEFAULT_MAX_PIXELS`] in all, checked from the header).
///
/// A damaged file is refused with [`Error::ImageDamaged`]: decoders fill in
/// what they cannot read (a truncated JPEG decodes with its missing part grey),
/// and a segmentation of that would look like a result. To accept such images
/// with a warning, use [`open_image_allowing_damage`].
pub fn open_image(path: impl AsRef<Path>) -> Result<DynamicImage, Error> {
    ImageLimits::default().open(path)
}

/// Like [`open_image`], but an image that decodes despite damage is returned
/// with a description of the damage, for the caller to report. Files that do
/// not decode at all are still errors.
pub fn open_image_allowing_damage(
    path: impl AsRef<Path>,
) -> Result<(DynamicImage, Option<String>), Error> {
    ImageLimits::default().open_allowing_damage(path)
}

/// A decoder's error on the file at `path`: a limit hit is [`Error::ImageTooLarge`],
/// anything else [`Error::ImageDecode`].
fn image_error(path: &Path, error: image::ImageError) -> Error {
    match error {
        image::ImageError::Limits(limit) => Error::ImageTooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "{limit} (at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels, {} MiB decoded)",
                MAX_DECODE_BYTES >> 20
            ),
        },
        other => Error::ImageDecode {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// What a strict JPEG decode finds wrong with a file that `image` decoded.
/// `image` runs zune-jpeg leniently: a premature end of the data or a broken
/// entropy-coded segment is logged and the rest of the image filled in. The
/// same decoder in strict mode makes those errors.
fn jpeg_damage(bytes: &[u8]) -> Option<String> {
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_IMAGE_SIDE as usize)
        .set_max_height(MAX_IMAGE_SIDE as usize);
    zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options)
        .decode()
        .err()
        .map(|error| format!("JPEG data is truncated or corrupt ({error})"))
}

/// What the PNG decoder finds wrong after the pixels: `image` stops reading at
/// the end of the image data, so a file cut off after it, or with bad chunks
/// there, decodes. Reading on to the end chunk (checking every chunk's CRC)
/// finds that.
fn png_damage(bytes: &[u8]) -> Option<String> {
    png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .and_then(|mut reader| reader.finish())
        .err()
        .map(|error| format!("PNG file is truncated or corrupt ({error})"))
}

/// Where the model's square input came from in the original image: the square
/// region, in original pixel coordinates, that was resized to the model's input.
/// For [`Fit::Pad`] the square extends past the image (negative `top`/`left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The original image's width.
    pub image_width: u32,
    /// The original image's height.
    pub image_height: u32,
    /// Row of the square's top edge in image coordinates.
    pub top: i64,
    /// Column of the square's left edge in image coordinates.
    pub left: i64,
    /// The square's side in image pixels.
    pub side: u32,
}

impl Placement {
    /// Where the model's square sits for `fit` on a `width`×`height` image.
    pub fn new(width: u32, height: u32, fit: Fit) -> Placement {
        match fit {
            Fit::CenterCrop => {
                // docs/method.md §1: side min(H, W), from row (H − c) // 2, column (W − c) // 2.
                let side = width.min(height);
                Placement {
                    image_width: width,
                    image_height: height,
                    top: ((height - side) / 2) as i64,
                    left: ((width - side) / 2) as i64,
                    side,
                }
            }
            Fit::Pad => {
                let side = width.max(height);
                Placement {
                    image_width: width,
                    image_height: height,
                    top: -(((side - height) / 2) as i64),
                    left: -(((side - width) / 2) as i64),
                    side,
                }
            }
        }
    }
}

/// An image ready for the VAE: `[3, size, size]` channel-major, values in [-1, 1].
#[derive(Debug, Clone)]
pub(crate) struct ModelInput {
    /// Channel-major pixels, `3 * size * size` values in [-1, 1].
    pub pixels: Vec<f32>,
    /// The model's input side in pixels.
    pub size: usize,
    /// Where the square came from in the original image.
    pub placement: Placement,
}

/// Mid-grey (0 after scaling to [-1, 1]) for the padding: no colour that a
/// segment could share with real content edges more than another.
const PAD_VALUE: f32 = 127.5;

/// docs/method.md §1 for one image: fit the image into a square (crop or pad), resize it
/// to `size`×`size` with TF2 bilinear semantics (half-pixel centres, no
/// antialiasing, float output) and scale pixels to [-1, 1] (`x / 127.5 − 1`).
///
/// Any colour type or bit depth is first converted as `image` converts to RGB8
/// (16-bit scaled to 8-bit, grey replicated, alpha dropped), which is what the
/// reference's PIL `convert("RGB")` does.
///
/// The fitted square is never built: its side is the image's longer side (pad),
/// 16384 for a 16384×1 image, and the resize reads at most two of its rows and
/// columns per output pixel. Those source pixels are read straight from the image
/// (the pad value where the square lies outside it), so the cost is bounded by
/// `size`, not by the image.
pub(crate) fn prepare_image(
    image: &DynamicImage,
    size: usize,
    fit: Fit,
) -> Result<ModelInput, Error> {
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(Error::EmptyImage);
    }
    if size == 0 {
        return Err(Error::InvalidInputSize(size));
    }
    let placement = Placement::new(width, height, fit);
    // The square's rows and columns share their taps: it is square.
    let taps = half_pixel_taps(placement.side as usize, size);
    let rows = SourceTaps::new(&taps, placement.top, height);
    let columns = SourceTaps::new(&taps, placement.left, width);
    let samples = SourceSamples::read(image, &rows.lines, &columns.lines);
    let mut pixels = Vec::with_capacity(3 * size * size);
    for channel in 0..3 {
        let resized = resize_half_pixel(&rows.taps, &columns.taps, |row, column| {
            samples.value(row, column, channel)
        });
        pixels.extend(resized.into_iter().map(|value| value / 127.5 - 1.0));
    }
    Ok(ModelInput {
        pixels,
        size,
        placement,
    })
}

/// One axis of the resize of a fitted square, in the image's own lines: the
/// distinct image rows (or columns) the taps read, in increasing order, and each
/// tap with its two square lines replaced by their index in that list (`None`
/// where the square lies outside the image: padding).
struct SourceTaps {
    lines: Vec<u32>,
    taps: Vec<(Option<usize>, Option<usize>, f32)>,
}

impl SourceTaps {
    /// The taps of the square's lines `taps`, the square starting at image line
    /// `offset` (negative when padded) of an image `extent` lines long.
    fn new(taps: &[(usize, usize, f32)], offset: i64, extent: u32) -> Self {
        let to_image = |line: usize| {
            u32::try_from(line as i64 + offset)
                .ok()
                .filter(|&line| line < extent)
        };
        let mut lines: Vec<u32> = taps
            .iter()
            .flat_map(|&(low, high, _)| [low, high])
            .filter_map(to_image)
            .collect();
        lines.sort_unstable();
        lines.dedup();
        let index = |line: usize| {
            to_image(line).map(|line| {
                lines
                    .binary_search(&line)
                    .expect("every line read is listed")
            })
        };
        let taps = taps
            .iter()
            .map(|&(low, high, weight)| (index(low), index(high), weight))
            .collect();
        Self { lines, taps }
    }
}

/// The RGB8 values of the image pixels a resize reads: the crossings of some rows
/// and some columns, converted row by row as [`DynamicImage::to_rgb8`] converts.
struct SourceSamples {
    /// `[rows, columns, 3]`, row-major.
    rgb: Vec<u8>,
    columns: usize,
}

impl SourceSamples {
    /// Reads the pixels of `image` at every row of `rows` and column of `columns`
    /// (both increasing), converting one row span at a time.
    fn read(image: &DynamicImage, rows: &[u32], columns: &[u32]) -> Self {
        let mut rgb = Vec::with_capacity(rows.len() * columns.len() * 3);
        if let (Some(&first), Some(&last)) = (columns.first(), columns.last()) {
            let span = last - first + 1;
            for &row in rows {
                let line = image.crop_imm(first, row, span, 1).to_rgb8();
                for &column in columns {
                    rgb.extend_from_slice(&line.get_pixel(column - first, 0).0);
                }
            }
        }
        Self {
            rgb,
            columns: columns.len(),
        }
    }

    /// Channel `channel` at the crossing of read row `row` and read column
    /// `column`, as a float; the pad value outside the image.
    fn value(&self, row: Option<usize>, column: Option<usize>, channel: usize) -> f32 {
        match (row, column) {
            (Some(row), Some(column)) => {
                self.rgb[(row * self.columns + column) * 3 + channel] as f32
            }
            _ => PAD_VALUE,
        }
    }
}

/// One axis of a half-pixel bilinear resize: for each output index, the two
/// source indices and the weight of the second.
fn half_pixel_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| {
            // Source coordinate of the output pixel's centre; clamped at 0 as
            // TF2 and PyTorch (align_corners=False) do.
            let source = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let low = (source.floor() as usize).min(input - 1);
            let high = (low + 1).min(input - 1);
            (low, high, (source - low as f64) as f32)
        })
        .collect()
}

/// Bilinear interpolation with half-pixel centres and no antialiasing (TF2
/// `tf.image.resize(..., "bilinear")`, PyTorch `interpolate(mode="bilinear",
/// align_corners=False, antialias=False)`), values kept in float: for each pair of
/// a row tap and a column tap (from [`half_pixel_taps`]), the source values come
/// from `sample(row, column)`. Row-major `[row_taps, column_taps]` out.
fn resize_half_pixel<R: Copy, C: Copy>(
    row_taps: &[(R, R, f32)],
    column_taps: &[(C, C, f32)],
    sample: impl Fn(R, C) -> f32,
) -> Vec<f32> {
    let mut output = Vec::with_capacity(row_taps.len() * column_taps.len());
    for &(top, bottom, row_weight) in row_taps {
        for &(left, right, column_weight) in column_taps {
            let (top_left, top_right) = (sample(top, left), sample(top, right));
            let (bottom_left, bottom_right) = (sample(bottom, left), sample(bottom, right));
            let upper = top_left + (top_right - top_left) * column_weight;
            let lower = bottom_left + (bottom_right - bottom_left) * column_weight;
            output.push(upper + (lower - upper) * row_weight);
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    /// The resize kernel [`prepare_image`] uses, on a row-major `[in_h, in_w]` plane.
    fn resize_bilinear_half_pixel(
        plane: &[f32],
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Vec<f32> {
        assert_eq!(plane.len(), in_h * in_w, "plane is not {in_h}×{in_w}");
        let rows = half_pixel_taps(in_h, out_h);
        let columns = half_pixel_taps(in_w, out_w);
        resize_half_pixel(&rows, &columns, |row, column| plane[row * in_w + column])
    }

    /// The algorithm [`prepare_image`] replaced, kept as its oracle: the whole
    /// fitted square built in float, then each channel resized.
    fn prepare_image_via_square(image: &DynamicImage, size: usize, fit: Fit) -> Vec<f32> {
        let (width, height) = (image.width(), image.height());
        let rgb = image.to_rgb8();
        let placement = Placement::new(width, height, fit);
        let side = placement.side as usize;
        let mut square = vec![PAD_VALUE; 3 * side * side];
        for y in 0..side {
            let source_y = y as i64 + placement.top;
            if source_y < 0 || source_y >= height as i64 {
                continue;
            }
            for x in 0..side {
                let source_x = x as i64 + placement.left;
                if source_x < 0 || source_x >= width as i64 {
                    continue;
                }
                let pixel = rgb.get_pixel(source_x as u32, source_y as u32);
                for channel in 0..3 {
                    square[channel * side * side + y * side + x] = pixel[channel] as f32;
                }
            }
        }
        let mut pixels = Vec::with_capacity(3 * size * size);
        for plane in square.chunks_exact(side * side) {
            let rows = half_pixel_taps(side, size);
            let mut resized = Vec::with_capacity(size * size);
            for &(top, bottom, row_weight) in &rows {
                let top_row = &plane[top * side..(top + 1) * side];
                let bottom_row = &plane[bottom * side..(bottom + 1) * side];
                for &(left, right, column_weight) in &rows {
                    let upper = top_row[left] + (top_row[right] - top_row[left]) * column_weight;
                    let lower =
                        bottom_row[left] + (bottom_row[right] - bottom_row[left]) * column_weight;
                    resized.push(upper + (lower - upper) * row_weight);
                }
            }
            pixels.extend(resized.into_iter().map(|value| value / 127.5 - 1.0));
        }
        pixels
    }

    /// Pixels that differ from their neighbours in every channel, in several colour types.
    fn odd_images(width: u32, height: u32) -> Vec<DynamicImage> {
        let value = |x: u32, y: u32, channel: u32| ((x * 37 + y * 101 + channel * 59) % 256) as u8;
        vec![
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
                Rgb([value(x, y, 0), value(x, y, 1), value(x, y, 2)])
            })),
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(width, height, |x, y| {
                Luma([value(x, y, 0)])
            })),
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(width, height, |x, y| {
                LumaA([value(x, y, 1), value(x, y, 2)])
            })),
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(width, height, |x, y| {
                Rgba([
                    value(x, y, 0),
                    value(x, y, 1),
                    value(x, y, 2),
                    value(x, y, 3),
                ])
            })),
            DynamicImage::ImageRgb16(ImageBuffer::from_fn(width, height, |x, y| {
                Rgb([
                    value(x, y, 0) as u16 * 256 + 37,
                    value(x, y, 1) as u16 * 250,
                    value(x, y, 2) as u16 * 3,
                ])
            })),
            DynamicImage::ImageRgb32F(ImageBuffer::from_fn(width, height, |x, y| {
                Rgb([value(x, y, 0) as f32 / 255.0, -0.5, 1.5])
            })),
        ]
    }

    #[test]
    fn prepared_pixels_match_the_full_square_bit_for_bit() {
        let shapes = [
            (1, 1),
            (1, 37),
            (37, 1),
            (1, 300),
            (300, 1),
            (7, 5),
            (5, 7),
            (13, 29),
            (29, 13),
            (64, 64),
            (200, 17),
            (17, 200),
            (255, 128),
        ];
        for (width, height) in shapes {
            for image in odd_images(width, height) {
                for size in [1, 8, 15, 16, 64] {
                    for fit in [Fit::Pad, Fit::CenterCrop] {
                        let ours = prepare_image(&image, size, fit).unwrap().pixels;
                        let oracle = prepare_image_via_square(&image, size, fit);
                        let same = ours.len() == oracle.len()
                            && ours
                                .iter()
                                .zip(&oracle)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{width}×{height} {:?} to {size} with {fit}",
                            image.color()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn upsampling_uses_half_pixel_centres() {
        // PyTorch interpolate([[0,1],[2,3]], size=4, bilinear, align_corners=False)
        // first row: [0, 0.25, 0.75, 1].
        let out = resize_bilinear_half_pixel(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        assert_eq!(&out[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out[12..], &[2.0, 2.25, 2.75, 3.0]);
    }

    #[test]
    fn downsampling_does_not_antialias() {
        // 4 → 2 without antialiasing samples at source 0.5 and 2.5: the mean of
        // neighbours 0,1 and 2,3, not the mean of all four.
        let out = resize_bilinear_half_pixel(&[0.0, 10.0, 20.0, 30.0], 1, 4, 1, 2);
        assert_eq!(out, vec![5.0, 25.0]);
        // 3 → 2: sources 0.25 and 1.75.
        let out = resize_bilinear_half_pixel(&[0.0, 10.0, 20.0], 1, 3, 1, 2);
        assert_eq!(out, vec![2.5, 17.5]);
    }

    #[test]
    fn resize_matches_pytorch() {
        // tools/reference/resize_reference.py: torch interpolate, bilinear,
        // align_corners=False, antialias=False, in float64. Tolerance 1e-3 on
        // values up to 255: f32 rounding of the interpolation, nothing more.
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/resize_reference.json")).unwrap();
        let as_f32 = |value: &serde_json::Value| -> Vec<f32> {
            value
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        let (in_h, in_w) = (
            fixture["in_h"].as_u64().unwrap() as usize,
            fixture["in_w"].as_u64().unwrap() as usize,
        );
        let plane = as_f32(&fixture["plane"]);
        for case in fixture["cases"].as_array().unwrap() {
            let (out_h, out_w) = (
                case["out_h"].as_u64().unwrap() as usize,
                case["out_w"].as_u64().unwrap() as usize,
            );
            let ours = resize_bilinear_half_pixel(&plane, in_h, in_w, out_h, out_w);
            let expected = as_f32(&case["values"]);
            assert_eq!(ours.len(), expected.len());
            for (index, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() < 1e-3,
                    "{out_h}×{out_w} at {index}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let plane: Vec<f32> = (0..35).map(|v| v as f32 * 1.5).collect();
        assert_eq!(resize_bilinear_half_pixel(&plane, 5, 7, 5, 7), plane);
    }

    #[test]
    fn center_crop_follows_the_method() {
        let placement = Placement::new(640, 480, Fit::CenterCrop);
        assert_eq!(
            (placement.top, placement.left, placement.side),
            (0, 80, 480)
        );
        let placement = Placement::new(5, 8, Fit::CenterCrop);
        assert_eq!((placement.top, placement.left, placement.side), (1, 0, 5));
    }

    #[test]
    fn pad_centres_the_image() {
        let placement = Placement::new(640, 480, Fit::Pad);
        assert_eq!(
            (placement.top, placement.left, placement.side),
            (-80, 0, 640)
        );
    }

    #[test]
    fn prepared_pixels_are_scaled_to_unit_range() {
        let image = DynamicImage::ImageRgb8(ImageBuffer::from_fn(4, 2, |x, _| {
            if x < 2 {
                Rgb([0, 255, 0])
            } else {
                Rgb([255, 0, 255])
            }
        }));
        let input = prepare_image(&image, 2, Fit::CenterCrop).unwrap();
        // The centre 2×2 is columns 1..3: one black-green column and one magenta.
        assert_eq!(input.pixels.len(), 12);
        assert_eq!(&input.pixels[0..4], &[-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(&input.pixels[4..8], &[1.0, -1.0, 1.0, -1.0]);
        let padded = prepare_image(&image, 4, Fit::Pad).unwrap();
        // Rows 0 and 3 are padding: neutral grey, 0 after scaling.
        assert!(padded.pixels[0..4].iter().all(|&v| v == 0.0));
        assert_eq!(padded.pixels[4], -1.0);
    }

    #[test]
    fn any_colour_type_becomes_rgb() {
        let grey16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(3, 3, Luma([65535u16])));
        let input = prepare_image(&grey16, 2, Fit::Pad).unwrap();
        assert!(input.pixels.iter().all(|&v| v == 1.0));
        let one_pixel = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(1, 1, Rgb([255, 0, 0])));
        let input = prepare_image(&one_pixel, 8, Fit::Pad).unwrap();
        assert_eq!(input.pixels.len(), 3 * 64);
        assert!(input.pixels[..64].iter().all(|&v| v == 1.0));
        assert!(input.pixels[64..].iter().all(|&v| v == -1.0));
    }
}

/// An RGB image as planar `[3, height, width]` values in [0, 1], as PyTorch code (DiffCut's
/// PAMR) reads images.
pub fn planar_rgb(rgb: &image::RgbImage) -> Vec<f32> {
    let plane = rgb.width() as usize * rgb.height() as usize;
    let mut planar = vec![0f32; 3 * plane];
    for (pixel, values) in rgb.pixels().enumerate() {
        for channel in 0..3 {
            planar[channel * plane + pixel] = f32::from(values[channel]) / 255.0;
        }
    }
    planar
}
