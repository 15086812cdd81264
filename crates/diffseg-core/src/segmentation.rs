//! The result: a label map with per-segment statistics, masks and writers.

use std::io::{BufWriter, Write};
use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Axis-aligned box of a segment, in pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundingBox {
    /// First column.
    pub x: usize,
    /// First row.
    pub y: usize,
    /// Columns covered.
    pub width: usize,
    /// Rows covered.
    pub height: usize,
}

/// One segment's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The segment's label (its value in the label map).
    pub label: u32,
    /// Pixels labelled with it.
    pub area: usize,
    /// The smallest box holding all of them.
    pub bbox: BoundingBox,
}

/// What [`Segmentation::to_json`] writes: size and per-segment statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentationSummary {
    /// Label map columns.
    pub width: usize,
    /// Label map rows.
    pub height: usize,
    /// Number of segments (labels are 0..segment_count).
    pub segment_count: usize,
    /// Statistics of each segment, by label.
    pub segments: Vec<Segment>,
}

/// A label map whose labels are exactly 0..K−1, every one used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmentation {
    labels: Vec<u32>,
    width: usize,
    height: usize,
    segments: Vec<Segment>,
}

impl Segmentation {
    /// Builds a segmentation from row-major labels, renumbering them 0..K−1 in increasing
    /// order of the given labels so that no label is empty.
    pub fn from_labels(labels: Vec<u32>, width: usize, height: usize) -> Result<Self, Error> {
        if width == 0 || height == 0 || labels.len() != width * height {
            return Err(Error::Size(format!(
                "{} labels do not fill a {width}x{height} label map",
                labels.len()
            )));
        }
        let mut used: Vec<u32> = labels.clone();
        used.sort_unstable();
        used.dedup();
        let renumbered: Vec<u32> = labels
            .iter()
            .map(|label| {
                used.binary_search(label)
                    .expect("label is among the used ones") as u32
            })
            .collect();
        let mut segments: Vec<Segment> = (0..used.len())
            .map(|label| Segment {
                label: label as u32,
                area: 0,
                bbox: BoundingBox {
                    x: usize::MAX,
                    y: usize::MAX,
                    width: 0,
                    height: 0,
                },
            })
            .collect();
        // Track max corners in width/height first, turned into sizes below.
        for (pixel, &label) in renumbered.iter().enumerate() {
            let (y, x) = (pixel / width, pixel % width);
            let segment = &mut segments[label as usize];
            segment.area += 1;
            segment.bbox.x = segment.bbox.x.min(x);
            segment.bbox.y = segment.bbox.y.min(y);
            segment.bbox.width = segment.bbox.width.max(x + 1);
            segment.bbox.height = segment.bbox.height.max(y + 1);
        }
        for segment in &mut segments {
            segment.bbox.width -= segment.bbox.x;
            segment.bbox.height -= segment.bbox.y;
        }
        Ok(Self {
            labels: renumbered,
            width,
            height,
            segments,
        })
    }

    /// Row-major labels, each in 0..segment_count.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Label map columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Label map rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The label of pixel `(x, y)`.
    pub fn label_at(&self, x: usize, y: usize) -> u32 {
        self.labels[y * self.width + x]
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Per-segment statistics, by label.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Row-major boolean mask of segment `index`.
    pub fn mask(&self, index: usize) -> Result<Vec<bool>, Error> {
        if index >= self.segments.len() {
            return Err(Error::NoSuchSegment {
                index,
                count: self.segments.len(),
            });
        }
        Ok(self
            .labels
            .iter()
            .map(|&label| label as usize == index)
            .collect())
    }

    /// Resizes with nearest neighbours, TF2 semantics: source index `floor((i + 0.5) · in /
    /// out)`, clamped. Labels are renumbered if a segment vanishes.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Result<Self, Error> {
        let source = |i: usize, input: usize, output: usize| {
            ((2 * i + 1) * input / (2 * output)).min(input - 1)
        };
        let mut labels = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = source(y, self.height, height);
            for x in 0..width {
                labels.push(self.labels[row * self.width + source(x, self.width, width)]);
            }
        }
        Self::from_labels(labels, width, height)
    }

    /// Size and per-segment statistics.
    pub fn summary(&self) -> SegmentationSummary {
        SegmentationSummary {
            width: self.width,
            height: self.height,
            segment_count: self.segments.len(),
            segments: self.segments.clone(),
        }
    }

    /// The [`SegmentationSummary`] as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.summary()).expect("plain structs always serialise")
    }

    /// Writes [`Segmentation::to_json`] to `path` atomically.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let json = self.to_json();
        write_atomically(path.as_ref(), |file| {
            file.write_all(json.as_bytes()).map_err(|e| e.to_string())
        })
    }

    /// Writes the label map as a grayscale PNG, pixel value = label: 8-bit when there are at
    /// most 256 segments, else 16-bit. Written to a temporary file, then renamed.
    pub fn save_label_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let (width, height) = (self.width as u32, self.height as u32);
        let image = if self.segments.len() <= 256 {
            let pixels = self.labels.iter().map(|&label| label as u8).collect();
            DynamicImage::ImageLuma8(
                ImageBuffer::<Luma<u8>, _>::from_raw(width, height, pixels).expect("size checked"),
            )
        } else if self.segments.len() <= 65536 {
            let pixels = self.labels.iter().map(|&label| label as u16).collect();
            DynamicImage::ImageLuma16(
                ImageBuffer::<Luma<u16>, _>::from_raw(width, height, pixels).expect("size checked"),
            )
        } else {
            return Err(Error::Write {
                path: path.as_ref().to_path_buf(),
                problem: format!("{} segments do not fit a 16-bit PNG", self.segments.len()),
            });
        };
        save_png(&image, path.as_ref())
    }

    /// Writes `source` with each segment tinted in its own colour (half opacity) as a PNG.
    /// The label map is resized (nearest) to the source's size when they differ.
    pub fn save_overlay(&self, source: &DynamicImage, path: impl AsRef<Path>) -> Result<(), Error> {
        let (width, height) = (source.width() as usize, source.height() as usize);
        let fitted;
        let labels = if (width, height) == (self.width, self.height) {
            self
        } else {
            fitted = self.resize_nearest(width, height)?;
            &fitted
        };
        let rgb = source.to_rgb8();
        let overlay = RgbImage::from_fn(width as u32, height as u32, |x, y| {
            let colour = palette_colour(labels.label_at(x as usize, y as usize));
            let pixel = rgb.get_pixel(x, y);
            Rgb(std::array::from_fn(|c| {
                ((pixel[c] as u16 + colour[c] as u16) / 2) as u8
            }))
        });
        save_png(&DynamicImage::ImageRgb8(overlay), path.as_ref())
    }
}

/// A distinct, saturated colour per label (hues a golden angle apart).
fn palette_colour(label: u32) -> [u8; 3] {
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

fn save_png(image: &DynamicImage, path: &Path) -> Result<(), Error> {
    write_atomically(path, |file| {
        let mut writer = BufWriter::new(file);
        image
            .write_to(&mut writer, ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        writer.flush().map_err(|e| e.to_string())
    })
}

/// Writes through a temporary file in the destination's folder, renamed over `path` only
/// once complete, so a failure never leaves a half-written file behind.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), String>,
) -> Result<(), Error> {
    let failed = |problem: String| Error::Write {
        path: path.to_path_buf(),
        problem,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // A temporary file is private (0600) by default; an output gets what any
    // new file would (0666 less the umask) before it is renamed into place.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temporary = builder
        .tempfile_in(folder)
        .map_err(|e| failed(e.to_string()))?;
    write(temporary.as_file_mut()).map_err(failed)?;
    temporary
        .persist(path)
        .map_err(|e| failed(e.error.to_string()))?;
    Ok(())
}
