//! The result of segmenting an image, in the forms a vision pipeline takes it:
//! the label map as numbers or as an image, a mask per segment, an overlay,
//! the JSON description ([`SegmentsFile`]); and written to files atomically.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgba, RgbaImage};

use crate::naming::SegmentName;
use crate::output::{
    describe_labels, encode_label_png, encode_png, write_atomically, write_json_atomically,
    write_result, JsonStyle, OutputKind, OutputKinds, ResultPaths, SegmentSettings, SegmentsFile,
};
use crate::Error;

pub use diffseg_core::{BoundingBox, Segment};

/// A label map whose labels are exactly `0..segment_count()`, every one used,
/// with each segment's area and bounding box.
///
/// ```
/// # fn main() -> Result<(), diffseg::Error> {
/// let segmentation = diffseg::Segmentation::from_labels(vec![5, 5, 9, 9, 5, 5], 3, 2)?;
/// assert_eq!(segmentation.labels(), &[0, 0, 1, 1, 0, 0]);
/// assert_eq!(segmentation.segments()[1].area, 2);
/// let labels = segmentation.label_image()?; // 8-bit greyscale, pixel = label
/// assert_eq!(labels.to_luma8().get_pixel(2, 0)[0], 1);
/// let mask = segmentation.mask_image(1)?; // 255 inside segment 1
/// assert_eq!(mask.get_pixel(0, 1)[0], 255);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    map: diffseg_core::Segmentation,
    /// Each segment's names, by label, when segments were named from a vocabulary.
    names: Option<Vec<SegmentName>>,
}

impl From<diffseg_core::Segmentation> for Segmentation {
    fn from(map: diffseg_core::Segmentation) -> Self {
        Self { map, names: None }
    }
}

impl Segmentation {
    /// Builds a segmentation from row-major labels, renumbering them `0..K` in
    /// increasing order of the given labels so that no label is empty.
    pub fn from_labels(labels: Vec<u32>, width: usize, height: usize) -> Result<Self, Error> {
        Ok(diffseg_core::Segmentation::from_labels(labels, width, height)?.into())
    }

    /// Row-major labels, each in `0..segment_count()`.
    pub fn labels(&self) -> &[u32] {
        self.map.labels()
    }

    /// Label map columns (the image's width).
    pub fn width(&self) -> usize {
        self.map.width()
    }

    /// Label map rows (the image's height).
    pub fn height(&self) -> usize {
        self.map.height()
    }

    /// The label of pixel `(x, y)`.
    ///
    /// # Panics
    ///
    /// If `(x, y)` is outside the label map.
    pub fn label_at(&self, x: usize, y: usize) -> u32 {
        self.map.label_at(x, y)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.map.segment_count()
    }

    /// Each segment's label, area (pixels) and bounding box, by label.
    pub fn segments(&self) -> &[Segment] {
        self.map.segments()
    }

    /// Each segment's name, score and best entries, by label, when the segmenter was given a
    /// vocabulary ([`crate::SegmenterBuilder::vocabulary`]); `None` otherwise.
    pub fn names(&self) -> Option<&[SegmentName]> {
        self.names.as_deref()
    }

    /// The same segmentation with these names, one per segment by label.
    pub fn with_names(self, names: Vec<SegmentName>) -> Result<Self, Error> {
        if names.len() != self.segment_count() {
            return Err(diffseg_core::Error::Size(format!(
                "{} names for {} segments",
                names.len(),
                self.segment_count()
            ))
            .into());
        }
        Ok(Self {
            names: Some(names),
            ..self
        })
    }

    /// Row-major mask of segment `index`: `true` inside.
    pub fn mask(&self, index: usize) -> Result<Vec<bool>, Error> {
        Ok(self.map.mask(index)?)
    }

    /// Segment `index` as a greyscale image: 255 inside, 0 outside.
    pub fn mask_image(&self, index: usize) -> Result<GrayImage, Error> {
        let pixels = self
            .mask(index)?
            .into_iter()
            .map(|inside| if inside { 255 } else { 0 })
            .collect();
        Ok(
            GrayImage::from_raw(self.width() as u32, self.height() as u32, pixels)
                .expect("one value per pixel"),
        )
    }

    /// The label map as a greyscale image, pixel value = label: 8-bit when
    /// there are at most 256 segments, else 16-bit. Past 65,536 segments (more
    /// than a 256×256 image's pixels) no image format holds it: an error.
    pub fn label_image(&self) -> Result<DynamicImage, Error> {
        label_image(self.labels(), self.width() as u32, self.height() as u32)
    }

    /// Nearest-neighbour resize (TF2 semantics: source index
    /// `floor((i + 0.5) · in / out)`); labels are renumbered if a segment vanishes.
    ///
    /// Names are kept when every segment survives (renumbering keeps the order), else dropped.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Result<Self, Error> {
        let map = self.map.resize_nearest(width, height)?;
        let names = self
            .names
            .clone()
            .filter(|_| map.segment_count() == self.segment_count());
        Ok(Self { map, names })
    }

    /// `source` with every segment tinted in its own colour and, per `style`,
    /// outlined. The label map is resized (nearest) to the source's size when
    /// they differ; the source's alpha is kept.
    pub fn overlay(&self, source: &DynamicImage, style: &OverlayStyle) -> Result<RgbaImage, Error> {
        if !(0.0..=1.0).contains(&style.opacity) {
            return Err(diffseg_core::Error::Options(format!(
                "overlay opacity {} is not in 0..=1",
                style.opacity
            ))
            .into());
        }
        let (width, height) = (source.width() as usize, source.height() as usize);
        let fitted;
        let labels = if (width, height) == (self.width(), self.height()) {
            self
        } else {
            fitted = self.resize_nearest(width, height)?;
            &fitted
        };
        let rgba = source.to_rgba8();
        Ok(RgbaImage::from_fn(width as u32, height as u32, |x, y| {
            let (column, row) = (x as usize, y as usize);
            let label = labels.label_at(column, row);
            let pixel = rgba.get_pixel(x, y);
            if let Some(outline) = style.outline {
                let differs = |dx: isize, dy: isize| {
                    let (nx, ny) = (column as isize + dx, row as isize + dy);
                    nx >= 0
                        && ny >= 0
                        && (nx as usize) < width
                        && (ny as usize) < height
                        && labels.label_at(nx as usize, ny as usize) != label
                };
                // Right and bottom neighbours: a one-pixel line on each boundary.
                if differs(1, 0) || differs(0, 1) {
                    return Rgba([outline[0], outline[1], outline[2], pixel[3]]);
                }
            }
            let colour = palette_colour(label);
            Rgba([
                blend(pixel[0], colour[0], style.opacity),
                blend(pixel[1], colour[1], style.opacity),
                blend(pixel[2], colour[2], style.opacity),
                pixel[3],
            ])
        }))
    }

    /// The JSON description: size, and per segment its label, area, box and
    /// COCO RLE mask; `image` names the source image.
    pub fn describe(&self, image: Option<String>) -> SegmentsFile {
        let mut description = describe_labels(
            self.labels(),
            self.width() as u32,
            self.height() as u32,
            image,
        );
        if let Some(names) = &self.names {
            for (record, name) in description.segments.iter_mut().zip(names) {
                record.name = Some(name.name.clone());
                record.name_score = Some(name.score);
                record.names = name.top.clone();
            }
        }
        description
    }

    /// Writes the label map as a PNG whose pixel values are the labels,
    /// durably and atomically: up to 256 segments an 8-bit palette PNG whose
    /// colours are the overlay's (viewers show the segments, tools reading the
    /// values get the labels), else 16-bit greyscale. [`crate::read_label_png`]
    /// reads it back.
    pub fn save_label_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        write_atomically(path, &self.encode_label_png(path)?)
    }

    /// Writes [`Segmentation::overlay`] of `source` (default style) as a PNG,
    /// durably and atomically: RGB, or RGBA when the source has alpha.
    pub fn save_overlay(&self, source: &DynamicImage, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        write_atomically(path, &self.encode_overlay(source, path)?)
    }

    /// Writes [`Segmentation::describe`] as JSON in `style`, durably and
    /// atomically.
    pub fn save_json(
        &self,
        path: impl AsRef<Path>,
        image: Option<String>,
        style: JsonStyle,
    ) -> Result<(), Error> {
        write_json_atomically(path.as_ref(), &self.describe(image), style)
    }

    /// Writes the `kinds` of file asked for (label PNG, overlay of `source`,
    /// JSON description with `settings` and the other files' lengths and
    /// SHA-256, laid out in `style`) as one result: nothing is renamed into
    /// place before all are written whole, and the JSON goes last, so
    /// [`crate::check_result`] never takes a partial result for a finished
    /// one and a failure leaves a previous result as it was. Returns the
    /// description (what the JSON holds, if written).
    pub fn save_result(
        &self,
        source: &DynamicImage,
        paths: &ResultPaths,
        kinds: &OutputKinds,
        image: Option<String>,
        settings: Option<SegmentSettings>,
        style: JsonStyle,
    ) -> Result<SegmentsFile, Error> {
        let mut description = self.describe(image);
        description.settings = settings;
        let encode = |kind: OutputKind, path: &Path| match kind {
            OutputKind::Labels => self.encode_label_png(path),
            OutputKind::Overlay => self.encode_overlay(source, path),
            // The JSON is the record of the others, written by `write_result`.
            OutputKind::Json => unreachable!("write_result encodes the JSON itself"),
        };
        write_result(paths, kinds, encode, description, style)
    }

    /// The label PNG's bytes ([`Segmentation::save_label_png`]), to stage with
    /// [`crate::stage_file`] among other files (`path`, the file it is for, is
    /// named in errors).
    pub fn encode_label_png(&self, path: &Path) -> Result<Vec<u8>, Error> {
        encode_label_png(
            path,
            self.labels(),
            self.width() as u32,
            self.height() as u32,
        )
    }

    /// Draws the names' legend in `overlay`'s top-left corner when segments are named: one
    /// row per segment (as many as fit), its colour then `label: name`, in an 8×8 bitmap font
    /// (ASCII; other characters as `?`) scaled with the image, on a dark box. Without names
    /// `overlay` is left as it is.
    pub fn draw_legend(&self, overlay: &mut RgbaImage) {
        let Some(names) = &self.names else {
            return;
        };
        let scale = (overlay.width().min(overlay.height()) / LEGEND_SCALE_SIDE).max(1);
        let glyph = 8 * scale;
        let row = glyph + 2 * scale;
        let rows = (overlay.height().saturating_sub(2 * scale) / row) as usize;
        let lines: Vec<(u32, String)> = names
            .iter()
            .enumerate()
            .take(rows)
            .map(|(label, name)| (label as u32, format!("{label}: {}", name.name)))
            .collect();
        let Some(longest) = lines.iter().map(|(_, text)| text.chars().count()).max() else {
            return;
        };
        // Swatch, a space, the text; a margin of `scale` all round.
        let width = ((2 + longest as u32) * glyph + 2 * scale).min(overlay.width());
        let height = lines.len() as u32 * row + 2 * scale;
        for y in 0..height.min(overlay.height()) {
            for x in 0..width {
                let pixel = overlay.get_pixel_mut(x, y);
                *pixel = Rgba([pixel[0] / 4, pixel[1] / 4, pixel[2] / 4, 255]);
            }
        }
        for (index, (label, text)) in lines.iter().enumerate() {
            let top = scale + index as u32 * row + scale;
            let colour = palette_colour(*label);
            fill(
                overlay,
                scale,
                top,
                glyph,
                glyph,
                [colour[0], colour[1], colour[2], 255],
            );
            for (position, character) in text.chars().enumerate() {
                let left = scale + (2 + position as u32) * glyph;
                if left + glyph > width {
                    break;
                }
                draw_glyph(overlay, character, left, top, scale);
            }
        }
    }

    /// The overlay PNG's bytes (`path` names it in errors), with the names' legend when
    /// segments are named ([`Segmentation::draw_legend`]).
    fn encode_overlay(&self, source: &DynamicImage, path: &Path) -> Result<Vec<u8>, Error> {
        let mut overlay = self.overlay(source, &OverlayStyle::default())?;
        self.draw_legend(&mut overlay);
        let image = if source.color().has_alpha() {
            DynamicImage::ImageRgba8(overlay)
        } else {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(overlay).to_rgb8())
        };
        encode_png(path, &image)
    }
}

/// How [`Segmentation::overlay`] draws: each segment's tint and its outline.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OverlayStyle {
    /// The tint's weight, 0 (the image only) to 1 (the colour only).
    pub opacity: f32,
    /// The colour of segment boundaries, or `None` for no outline.
    pub outline: Option<[u8; 3]>,
}

impl Default for OverlayStyle {
    /// Half-opacity tints with white outlines.
    fn default() -> Self {
        Self {
            opacity: 0.5,
            outline: Some([255, 255, 255]),
        }
    }
}

impl OverlayStyle {
    /// Sets the tint's weight (0 to 1).
    pub fn with_opacity(mut self, opacity: f32) -> Self {
        self.opacity = opacity;
        self
    }

    /// Sets the boundary colour (`None`: no outline).
    pub fn with_outline(mut self, outline: Option<[u8; 3]>) -> Self {
        self.outline = outline;
        self
    }
}

/// Images of at least this many pixels on their shorter side draw the legend's font at twice
/// its 8×8 size (three times from twice this, and so on), so that it stays legible.
const LEGEND_SCALE_SIDE: u32 = 512;

/// Fills the `width × height` rectangle at `(left, top)` with `colour`, clipped to `image`.
fn fill(image: &mut RgbaImage, left: u32, top: u32, width: u32, height: u32, colour: [u8; 4]) {
    for y in top..(top + height).min(image.height()) {
        for x in left..(left + width).min(image.width()) {
            image.put_pixel(x, y, Rgba(colour));
        }
    }
}

/// Draws `character` (font8x8's public-domain ASCII glyphs; `?` for any other) in white at
/// `(left, top)`, each font pixel a `scale × scale` square.
fn draw_glyph(image: &mut RgbaImage, character: char, left: u32, top: u32, scale: u32) {
    let code = if character.is_ascii() {
        character as usize
    } else {
        '?' as usize
    };
    let rows = font8x8::legacy::BASIC_LEGACY[code];
    for (y, bits) in rows.iter().enumerate() {
        for x in 0..8 {
            // Bit 0 is the glyph's leftmost pixel.
            if bits >> x & 1 == 1 {
                let (x, y) = (left + x * scale, top + y as u32 * scale);
                fill(image, x, y, scale, scale, [255, 255, 255, 255]);
            }
        }
    }
}

fn blend(pixel: u8, colour: u8, opacity: f32) -> u8 {
    (pixel as f32 * (1.0 - opacity) + colour as f32 * opacity).round() as u8
}

/// The colour `label` is tinted with in overlays, the label PNG's palette
/// and `diffseg view`'s legends: distinct and saturated, hues a golden angle apart.
pub fn palette_colour(label: u32) -> [u8; 3] {
    let hue = (label as f32 * 137.507_77) % 360.0;
    let sector = hue / 60.0;
    let rising = (255.0 * (1.0 - (sector % 2.0 - 1.0).abs())) as u8;
    match sector as u32 {
        0 => [255, rising, 0],
        1 => [rising, 255, 0],
        2 => [0, 255, rising],
        3 => [0, rising, 255],
        4 => [rising, 0, 255],
        _ => [255, 0, rising],
    }
}

/// A row-major label map as a greyscale image: 8-bit when every label fits a
/// byte, else 16-bit.
fn label_image(labels: &[u32], width: u32, height: u32) -> Result<DynamicImage, Error> {
    let largest = labels.iter().copied().max().unwrap_or(0);
    let image = if largest <= u8::MAX as u32 {
        let pixels = labels.iter().map(|&label| label as u8).collect();
        DynamicImage::ImageLuma8(
            ImageBuffer::<Luma<u8>, _>::from_raw(width, height, pixels)
                .ok_or_else(|| size_error(labels.len(), width, height))?,
        )
    } else if largest <= u16::MAX as u32 {
        let pixels = labels.iter().map(|&label| label as u16).collect();
        DynamicImage::ImageLuma16(
            ImageBuffer::<Luma<u16>, _>::from_raw(width, height, pixels)
                .ok_or_else(|| size_error(labels.len(), width, height))?,
        )
    } else {
        return Err(diffseg_core::Error::Size(format!(
            "label {largest} does not fit a 16-bit label image"
        ))
        .into());
    };
    Ok(image)
}

fn size_error(count: usize, width: u32, height: u32) -> Error {
    diffseg_core::Error::Size(format!(
        "{count} labels do not fill a {width}x{height} label map"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_three() -> Segmentation {
        // 7 7 3
        // 3 7 9
        Segmentation::from_labels(vec![7, 7, 3, 3, 7, 9], 3, 2).unwrap()
    }

    #[test]
    fn statistics_and_masks() {
        let segmentation = two_by_three();
        assert_eq!(segmentation.labels(), &[1, 1, 0, 0, 1, 2]);
        assert_eq!(segmentation.segment_count(), 3);
        let second = segmentation.segments()[1];
        assert_eq!(second.area, 3);
        assert_eq!(
            second.bbox,
            BoundingBox {
                x: 0,
                y: 0,
                width: 2,
                height: 2
            }
        );
        assert_eq!(
            segmentation.mask(0).unwrap(),
            vec![false, false, true, true, false, false]
        );
        assert_eq!(
            segmentation.mask_image(0).unwrap().into_raw(),
            vec![0, 0, 255, 255, 0, 0]
        );
        assert!(segmentation.mask(3).is_err());
        assert!(Segmentation::from_labels(vec![0; 5], 3, 2).is_err());
    }

    #[test]
    fn label_images_are_8_bit_then_16_bit() {
        let small = two_by_three().label_image().unwrap();
        assert_eq!(small.color(), image::ColorType::L8);
        assert_eq!(small.to_luma8().into_raw(), vec![1, 1, 0, 0, 1, 2]);
        let many = Segmentation::from_labels((0..300).collect(), 300, 1).unwrap();
        let image = many.label_image().unwrap();
        assert_eq!(image.color(), image::ColorType::L16);
        assert_eq!(image.to_luma16().into_raw()[299], 299);
    }

    #[test]
    fn overlays_tint_outline_and_keep_alpha() {
        let segmentation = two_by_three();
        let mut source = RgbaImage::from_pixel(3, 2, Rgba([0, 0, 0, 7]));
        source.put_pixel(2, 1, Rgba([200, 100, 50, 9]));
        let source = DynamicImage::ImageRgba8(source);
        let plain = OverlayStyle::default().with_outline(None);
        let tinted = segmentation.overlay(&source, &plain).unwrap();
        let colour = palette_colour(2);
        assert_eq!(
            tinted.get_pixel(2, 1).0,
            [
                blend(200, colour[0], 0.5),
                blend(100, colour[1], 0.5),
                blend(50, colour[2], 0.5),
                9
            ]
        );
        assert_eq!(tinted.get_pixel(0, 0)[3], 7);
        let outlined = segmentation
            .overlay(&source, &plain.with_outline(Some([1, 2, 3])))
            .unwrap();
        // (1, 0) has label 1 with a label-0 pixel to its right: a boundary.
        assert_eq!(outlined.get_pixel(1, 0).0, [1, 2, 3, 7]);
        // (0, 0): right neighbour has its label, the one below does not.
        assert_eq!(outlined.get_pixel(0, 0).0, [1, 2, 3, 7]);
        // (2, 1): last pixel, no right or bottom neighbour: tinted.
        assert_eq!(outlined.get_pixel(2, 1), tinted.get_pixel(2, 1));
        // A larger source: labels follow it by nearest neighbour.
        let big = DynamicImage::new_rgb8(6, 4);
        assert_eq!(
            segmentation.overlay(&big, &plain).unwrap().dimensions(),
            (6, 4)
        );
        assert!(segmentation
            .overlay(&big, &plain.with_opacity(1.5))
            .is_err());
    }

    #[test]
    fn named_overlays_get_a_legend_in_their_corner() {
        let named =
            Segmentation::from_labels((0..64 * 48).map(|i| (i % 64 / 32) as u32).collect(), 64, 48)
                .unwrap();
        let name = |name: &str| crate::SegmentName {
            name: name.into(),
            score: 1.0,
            top: Vec::new(),
        };
        let named = named.with_names(vec![name("sky"), name("road")]).unwrap();
        let source = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            64,
            48,
            image::Rgb([200, 200, 200]),
        ));
        let plain = named.overlay(&source, &OverlayStyle::default()).unwrap();
        let mut legend = plain.clone();
        named.draw_legend(&mut legend);
        // Two rows of 10 pixels and a margin, "0: road" is 7 characters after the swatch.
        let (rows, width) = (2 * 10 + 2, (2 + 7) * 8 + 2);
        let differs = |x: u32, y: u32| plain.get_pixel(x, y) != legend.get_pixel(x, y);
        assert!((0..width).any(|x| (0..rows).any(|y| differs(x, y))));
        assert!(
            (0..64).all(|x| (rows..48).all(|y| !differs(x, y))),
            "the legend reaches past its rows"
        );
        // The first row's swatch is segment 0's colour.
        let colour = palette_colour(0);
        assert_eq!(
            legend.get_pixel(5, 5).0,
            [colour[0], colour[1], colour[2], 255]
        );
        // Without names nothing is drawn.
        let mut untouched = plain.clone();
        Segmentation::from_labels(vec![0; 64 * 48], 64, 48)
            .unwrap()
            .draw_legend(&mut untouched);
        assert_eq!(untouched, plain);
    }

    #[test]
    fn files_are_written_whole_and_named_in_errors() {
        let segmentation = two_by_three();
        let folder = tempfile::tempdir().unwrap();
        let png = folder.path().join("labels.png");
        segmentation.save_label_png(&png).unwrap();
        assert_eq!(
            crate::output::read_label_png(&png).unwrap(),
            (segmentation.labels().to_vec(), 3, 2)
        );
        let json = folder.path().join("labels.json");
        segmentation
            .save_json(&json, Some("photo.jpg".into()), JsonStyle::Pretty)
            .unwrap();
        let read: SegmentsFile =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(read, segmentation.describe(Some("photo.jpg".into())));
        let overlay = folder.path().join("overlay.png");
        segmentation
            .save_overlay(&DynamicImage::new_rgb8(6, 4), &overlay)
            .unwrap();
        let written = image::open(&overlay).unwrap();
        assert_eq!(
            (written.color(), written.width(), written.height()),
            (image::ColorType::Rgb8, 6, 4)
        );
        // A folder that cannot exist: its parent is a file.
        let blocked = png.join("labels.png");
        let error = segmentation
            .save_label_png(&blocked)
            .unwrap_err()
            .to_string();
        assert!(error.contains("labels.png/labels.png"), "{error}");
        let names: Vec<_> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "only the finished files: {names:?}");
    }
}
