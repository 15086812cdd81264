//! The result: a label map with per-segment statistics and masks. Images and
//! files of it are the facade's business (`diffseg::Segmentation`).

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
}
