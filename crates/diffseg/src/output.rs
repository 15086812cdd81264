//! Results out: the JSON description of a segmentation (with COCO-style RLE
//! masks) and atomic file writes (temp file + rename, so an interrupted run
//! never leaves a half-written result that a resumed run would take as done).

use std::path::{Path, PathBuf};

use image::{ColorType, DynamicImage, ImageFormat};
use serde::{Deserialize, Serialize};

use crate::weights::{FoundWeights, WeightsOrigin};
use crate::{Error, Fit, MergeOptions, Precision};

/// A segmentation described for JSON output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentsFile {
    /// The image the segments belong to, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The settings the segmentation was made with, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SegmentSettings>,
    /// One entry per segment, in label order.
    pub segments: Vec<SegmentRecord>,
}

/// One segment: its label in the label PNG, its pixel count, box and mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The segment's value in the label PNG.
    pub label: u32,
    /// Number of pixels.
    pub area: u64,
    /// `[x, y, width, height]` in pixels (COCO's bbox convention).
    pub bbox: [u32; 4],
    /// The mask as COCO uncompressed RLE.
    pub segmentation: CocoRle,
}

/// COCO uncompressed run-length encoding (what `pycocotools.mask.frPyObjects`
/// reads): `size` is `[height, width]`; `counts` alternate runs of 0 and 1 over
/// the pixels in column-major order, starting with a (possibly empty) run of 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Run lengths, zeros first.
    pub counts: Vec<u64>,
}

/// Encodes the mask `labels == label` of a row-major `width`×`height` label map
/// as COCO RLE (column-major runs, zeros first).
pub(crate) fn coco_rle(labels: &[u32], width: u32, height: u32, label: u32) -> CocoRle {
    let (w, h) = (width as usize, height as usize);
    let mut counts = Vec::new();
    let mut current = false;
    let mut run = 0u64;
    for x in 0..w {
        for y in 0..h {
            let inside = labels[y * w + x] == label;
            if inside != current {
                counts.push(run);
                run = 0;
                current = inside;
            }
            run += 1;
        }
    }
    counts.push(run);
    CocoRle {
        size: [height, width],
        counts,
    }
}

/// Describes a row-major label map: one record per label `0..count` that has
/// at least one pixel.
pub(crate) fn describe_labels(
    labels: &[u32],
    width: u32,
    height: u32,
    image: Option<String>,
) -> SegmentsFile {
    let count = labels.iter().max().map_or(0, |max| *max as usize + 1);
    let mut area = vec![0u64; count];
    // [min x, min y, max x, max y]
    let mut bounds = vec![[u32::MAX, u32::MAX, 0, 0]; count];
    for (index, &label) in labels.iter().enumerate() {
        let (x, y) = (
            (index % width as usize) as u32,
            (index / width as usize) as u32,
        );
        let label = label as usize;
        area[label] += 1;
        let b = &mut bounds[label];
        b[0] = b[0].min(x);
        b[1] = b[1].min(y);
        b[2] = b[2].max(x);
        b[3] = b[3].max(y);
    }
    let segments = (0..count)
        .filter(|&label| area[label] > 0)
        .map(|label| {
            let [x0, y0, x1, y1] = bounds[label];
            SegmentRecord {
                label: label as u32,
                area: area[label],
                bbox: [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                segmentation: coco_rle(labels, width, height, label as u32),
            }
        })
        .collect();
    SegmentsFile {
        image,
        width,
        height,
        settings: None,
        segments,
    }
}

/// The settings a segmentation was made with, recorded in its JSON so that a
/// resumed run can tell a result of other settings from a finished one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentSettings {
    /// The model: its Hugging Face id, or the weights path when the weights
    /// were given explicitly (`--weights`, `DIFFSEG_WEIGHTS`).
    pub model: String,
    /// The weights' Hugging Face revision (the snapshot's commit), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Compute precision (`f32`, `f16`).
    pub precision: String,
    /// How the image was fitted to the model's input (`pad`, `center-crop`).
    pub fit: String,
    /// The merging options.
    pub merge: MergeOptions,
    /// The version of the diffseg crate that made the segmentation.
    pub version: String,
}

impl SegmentSettings {
    /// The settings of a run of `model` (a Hugging Face id) with the weights
    /// found, in this version of the crate.
    pub fn new(
        weights: &FoundWeights,
        model: &str,
        precision: Precision,
        fit: Fit,
        merge: &MergeOptions,
    ) -> SegmentSettings {
        let from_hub = matches!(
            weights.origin,
            WeightsOrigin::HuggingFaceCache | WeightsOrigin::Downloaded
        );
        // A hub snapshot folder is named after its commit.
        let (model, revision) = if from_hub {
            let commit = weights.path.file_name();
            (
                model.to_string(),
                commit.map(|c| c.to_string_lossy().into_owned()),
            )
        } else {
            (weights.path.display().to_string(), None)
        };
        SegmentSettings {
            model,
            revision,
            precision: precision.to_string(),
            fit: fit.to_string(),
            merge: merge.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder
/// (same extension, so format-by-extension encoders work), which is renamed to
/// `path` only when `write` succeeded. On failure nothing is left behind.
pub(crate) fn write_atomically<F>(path: &Path, write: F) -> Result<(), Error>
where
    F: FnOnce(&Path) -> Result<(), Error>,
{
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write_error = |reason: String| Error::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(&folder).map_err(|error| write_error(error.to_string()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error("not a file path".into()))?
        .to_string_lossy()
        .into_owned();
    // `.name.XXXX.ext`: hidden while incomplete, same extension as the target.
    let suffix = path
        .extension()
        .map(|extension| format!(".{}", extension.to_string_lossy()))
        .unwrap_or_default();
    let prefix = format!(".{file_name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(&suffix);
    // A temporary file is private (0600) by default; an output gets what any
    // new file would (0666 less the umask) before it is renamed into place.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let temporary = builder
        .tempfile_in(&folder)
        .map_err(|error| write_error(format!("cannot create a temporary file: {error}")))?;
    write(temporary.path())?;
    temporary
        .persist(path)
        .map_err(|error| write_error(error.to_string()))?;
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json_atomically<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<(), Error> {
    let path = path.as_ref();
    write_atomically(path, |temporary| {
        let text = serde_json::to_string_pretty(value).map_err(|error| Error::Write {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        std::fs::write(temporary, text).map_err(|error| Error::Write {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    })
}

/// Writes `image` as a PNG to `path`, atomically.
pub(crate) fn write_png(path: &Path, image: &DynamicImage) -> Result<(), Error> {
    write_atomically(path, |temporary| {
        image
            .save_with_format(temporary, ImageFormat::Png)
            .map_err(|error| Error::Write {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })
    })
}

/// Writes a row-major label map as a greyscale PNG, pixel value = label (8-bit
/// when every label fits a byte, else 16-bit), atomically. The label-PNG
/// codec's writer.
pub(crate) fn write_label_png(
    path: &Path,
    labels: &[u32],
    width: u32,
    height: u32,
) -> Result<(), Error> {
    let image =
        crate::segmentation::label_image(labels, width, height).map_err(|error| Error::Write {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    write_png(path, &image)
}

/// Reads a label PNG (8- or 16-bit greyscale, pixel value = label) as
/// row-major labels, width and height: the tests' check of [`write_label_png`].
#[cfg(test)]
pub(crate) fn read_label_png(path: &Path) -> Result<(Vec<u32>, u32, u32), Error> {
    let decode_error = |reason: String| Error::ImageDecode {
        path: path.to_path_buf(),
        reason,
    };
    let image = image::open(path).map_err(|error| decode_error(error.to_string()))?;
    let (width, height) = (image.width(), image.height());
    let labels = label_values(image).map_err(|colour| {
        decode_error(format!(
            "a label PNG is 8- or 16-bit greyscale, this one is {colour:?}"
        ))
    })?;
    Ok((labels, width, height))
}

/// The labels of a decoded label image, or its colour type when it is not 8-
/// or 16-bit greyscale. The label-PNG codec's reader.
pub(crate) fn label_values(image: DynamicImage) -> Result<Vec<u32>, ColorType> {
    match image {
        DynamicImage::ImageLuma8(buffer) => Ok(buffer.iter().map(|&v| v as u32).collect()),
        DynamicImage::ImageLuma16(buffer) => Ok(buffer.iter().map(|&v| v as u32).collect()),
        other => Err(other.color()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs get the permissions of any new file (0666 less the umask), like
    /// `std::fs::write` gives, not a temporary file's private 0600.
    #[cfg(unix)]
    #[test]
    fn outputs_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let folder = tempfile::tempdir().unwrap();
        let plain = folder.path().join("plain.txt");
        std::fs::write(&plain, "x").unwrap();
        let written = folder.path().join("out.json");
        write_json_atomically(&written, &[1, 2]).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written), mode(&plain));
    }

    #[test]
    fn rle_runs_are_column_major_and_start_with_zeros() {
        // 3 wide, 2 high:
        // 1 0 0
        // 1 1 0
        let labels = [1, 0, 0, 1, 1, 0];
        let rle = coco_rle(&labels, 3, 2, 1);
        assert_eq!(rle.size, [2, 3]);
        // Column-major pixels: (0,0)=1 (0,1)=1 (1,0)=0 (1,1)=1 (2,0)=0 (2,1)=0.
        assert_eq!(rle.counts, vec![0, 2, 1, 1, 2]);
        let background = coco_rle(&labels, 3, 2, 0);
        assert_eq!(background.counts, vec![2, 1, 1, 2]);
    }

    #[test]
    fn segments_have_area_and_box() {
        let labels = [1, 0, 0, 1, 1, 0];
        let file = describe_labels(&labels, 3, 2, None);
        assert_eq!(file.segments.len(), 2);
        assert_eq!(file.segments[0].area, 3);
        assert_eq!(file.segments[0].bbox, [1, 0, 2, 2]);
        assert_eq!(file.segments[1].area, 3);
        assert_eq!(file.segments[1].bbox, [0, 0, 2, 2]);
    }

    #[test]
    fn failed_writes_leave_nothing() {
        let folder = tempfile::tempdir().unwrap();
        let target = folder.path().join("out.png");
        let result = write_atomically(&target, |temporary| {
            std::fs::write(temporary, b"half").unwrap();
            Err(Error::EmptyImage)
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 0);
        write_atomically(&target, |temporary| {
            std::fs::write(temporary, b"whole").map_err(|e| Error::Write {
                path: temporary.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 1);
    }
}
