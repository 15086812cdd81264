//! Results out: the JSON description of a segmentation (with COCO-style RLE
//! masks), the label-PNG codec, and the one writer every output goes through
//! (encoded in memory, written to a temporary file, flushed, synced, renamed,
//! the folder synced), so an interrupted or failed run never leaves a
//! half-written file, nor a result that a resumed run would take as done.
//! A segmented image's JSON is written last and records the length and
//! SHA-256 of its other files: [`check_result`] counts a result as done only
//! when they match. Nothing here replaces a file diffseg did not write.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::weights::{FoundWeights, WeightsOrigin};
use crate::{DiffCutOptions, Error, Fit, MergeOptions, Method, NameScore, Precision, Vocabulary};

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
    /// The kinds of file the result this JSON commits was written with
    /// (`--outputs`), itself included; `None` when it describes no result, or
    /// for a result of an earlier version (which wrote all three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputKind>>,
    /// The files of the result this JSON commits (label PNG, overlay), with
    /// their lengths and checksums; empty when it describes no files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
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
    /// The mask as COCO RLE (pycocotools' compressed form).
    pub segmentation: CocoRle,
    /// The segment's best vocabulary entry, when segments were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// That entry's score ([`crate::NameScore::score`]), when segments were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_score: Option<f32>,
    /// The best entries with their scores, best first, when segments were named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameScore>,
}

/// A mask as COCO run-length encoding, in pycocotools' compressed form (what
/// `pycocotools.mask.encode` returns and COCO results files hold): `size` is
/// `[height, width]`; the runs alternate 0 and 1 over the pixels in
/// column-major order, starting with a (possibly empty) run of 0, and `counts`
/// writes them as pycocotools' string of 6-bit digits.
///
/// A value always describes a whole mask: reading JSON checks that the counts
/// decode and that their runs cover `height × width` pixels. JSON written
/// before the compressed form (`counts` as a list of runs) is read too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredRle")]
pub struct CocoRle {
    size: [u32; 2],
    counts: String,
}

impl CocoRle {
    /// The mask of `height × width` pixels with these run lengths (zeros
    /// first, column-major); `None` when they do not cover it exactly.
    pub fn from_runs(height: u32, width: u32, runs: &[u64]) -> Option<CocoRle> {
        let covered = runs
            .iter()
            .try_fold(0u64, |sum, run| sum.checked_add(*run))?;
        (covered == u64::from(height) * u64::from(width)).then(|| CocoRle {
            size: [height, width],
            counts: compress_runs(runs),
        })
    }

    /// `[height, width]`.
    pub fn size(&self) -> [u32; 2] {
        self.size
    }

    /// The compressed counts string.
    pub fn counts(&self) -> &str {
        &self.counts
    }

    /// The run lengths (zeros first, column-major): COCO's uncompressed form.
    pub fn runs(&self) -> Vec<u64> {
        decompress_runs(&self.counts).expect("a CocoRle's counts decode (checked when made)")
    }
}

/// A [`CocoRle`] as JSON holds it: the compressed string, or the list of runs
/// that results written before it hold.
#[derive(Deserialize)]
struct StoredRle {
    size: [u32; 2],
    counts: StoredCounts,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredCounts {
    Compressed(String),
    Runs(Vec<u64>),
}

impl TryFrom<StoredRle> for CocoRle {
    type Error = String;

    fn try_from(stored: StoredRle) -> Result<CocoRle, String> {
        let [height, width] = stored.size;
        let runs = match stored.counts {
            StoredCounts::Compressed(counts) => decompress_runs(&counts)?,
            StoredCounts::Runs(runs) => runs,
        };
        CocoRle::from_runs(height, width, &runs)
            .ok_or_else(|| format!("RLE counts do not cover its {height}x{width} pixels exactly"))
    }
}

/// pycocotools' `rleToString`: each run, less the run two before it from the
/// fourth on, as little-endian 5-bit groups with a continuation bit, each
/// group written as the character `48 + group`.
fn compress_runs(runs: &[u64]) -> String {
    let mut text = String::new();
    for (index, &run) in runs.iter().enumerate() {
        // Runs are at most 2^32 · 2^32 pixels, far inside i64 and its differences.
        let mut x = run as i64;
        if index > 2 {
            x -= runs[index - 2] as i64;
        }
        loop {
            let mut group = (x & 0x1f) as u8;
            x >>= 5;
            let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                group |= 0x20;
            }
            text.push(char::from(group + 48));
            if !more {
                break;
            }
        }
    }
    text
}

/// pycocotools' `rleFrString`, refusing what it would misread: characters
/// outside its 64 digits, numbers past 64 bits, negative runs.
fn decompress_runs(text: &str) -> Result<Vec<u64>, String> {
    let mut runs: Vec<u64> = Vec::new();
    let mut bytes = text.bytes().peekable();
    while bytes.peek().is_some() {
        let (mut x, mut shift) = (0i64, 0u32);
        loop {
            let Some(byte) = bytes.next() else {
                return Err("RLE counts end inside a number".to_string());
            };
            let group = byte
                .checked_sub(48)
                .filter(|group| *group < 64)
                .ok_or_else(|| {
                    format!("RLE counts hold {:?}, not a count digit", char::from(byte))
                })?;
            if shift >= 60 {
                return Err("RLE counts hold a number past 64 bits".to_string());
            }
            x |= i64::from(group & 0x1f) << shift;
            shift += 5;
            if group & 0x20 == 0 {
                if group & 0x10 != 0 {
                    x |= -1i64 << shift;
                }
                break;
            }
        }
        if runs.len() > 2 {
            x = x
                .checked_add(runs[runs.len() - 2] as i64)
                .ok_or_else(|| "RLE counts hold a number past 64 bits".to_string())?;
        }
        let run =
            u64::try_from(x).map_err(|_| "RLE counts decode to a negative run".to_string())?;
        runs.push(run);
    }
    Ok(runs)
}

/// Encodes the mask `labels == label` of a row-major `width`×`height` label map
/// as COCO RLE (column-major runs, zeros first).
pub(crate) fn coco_rle(labels: &[u32], width: u32, height: u32, label: u32) -> CocoRle {
    let (w, h) = (width as usize, height as usize);
    let mut runs = Vec::new();
    let mut current = false;
    let mut run = 0u64;
    for x in 0..w {
        for y in 0..h {
            let inside = labels[y * w + x] == label;
            if inside != current {
                runs.push(run);
                run = 0;
                current = inside;
            }
            run += 1;
        }
    }
    runs.push(run);
    CocoRle {
        size: [height, width],
        counts: compress_runs(&runs),
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
                name: None,
                name_score: None,
                names: Vec::new(),
            }
        })
        .collect();
    SegmentsFile {
        image,
        width,
        height,
        settings: None,
        segments,
        outputs: None,
        files: Vec::new(),
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
    /// DiffSeg's merging options; `None` for another method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeOptions>,
    /// DiffCut's options; `None` for another method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffcut: Option<DiffCutSettings>,
    /// The vocabulary segments were named from; `None` when they were not named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naming: Option<NamingSettings>,
    /// The version of the diffseg crate that made the segmentation.
    pub version: String,
}

impl SegmentSettings {
    /// The settings of a DiffSeg run of `model` (a Hugging Face id) with the
    /// weights found, in this version of the crate.
    pub fn new(
        weights: &FoundWeights,
        model: &str,
        precision: Precision,
        fit: Fit,
        merge: &MergeOptions,
    ) -> SegmentSettings {
        Self::for_method(
            weights,
            model,
            precision,
            fit,
            &Method::DiffSeg(merge.clone()),
        )
    }

    /// The settings of a run of `method` on `model` (a Hugging Face id) with
    /// the weights found, in this version of the crate.
    pub fn for_method(
        weights: &FoundWeights,
        model: &str,
        precision: Precision,
        fit: Fit,
        method: &Method,
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
        let (merge, diffcut) = method.recorded_options();
        SegmentSettings {
            model,
            revision,
            precision: precision.to_string(),
            fit: fit.to_string(),
            merge,
            diffcut,
            naming: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl Method {
    /// The options a result or an evaluation cache records for this method, in one slot per
    /// method: DiffSeg's merging options, or DiffCut's settings (the other slot empty).
    pub fn recorded_options(&self) -> (Option<MergeOptions>, Option<DiffCutSettings>) {
        match self {
            Method::DiffSeg(options) => (Some(options.clone()), None),
            Method::DiffCut(options) => (None, Some(DiffCutSettings::from(options))),
        }
    }
}

impl SegmentSettings {
    /// The same settings, recording that segments were named from `vocabulary` with `top_k`.
    pub fn with_naming(self, vocabulary: &Vocabulary, top_k: usize) -> SegmentSettings {
        SegmentSettings {
            naming: Some(NamingSettings {
                vocabulary: vocabulary.entries().to_vec(),
                template: vocabulary.template().to_string(),
                top_k,
            }),
            ..self
        }
    }
}

/// The vocabulary segments were named from, as a result records it (see [`SegmentSettings`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamingSettings {
    /// The entries, in order.
    pub vocabulary: Vec<String>,
    /// The prompt template each entry went through.
    pub template: String,
    /// How many best entries each segment keeps.
    pub top_k: usize,
}

/// DiffCut's options as a result records them (see [`SegmentSettings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffCutSettings {
    /// The cut's threshold τ (unused when `auto_tau`).
    pub tau: f32,
    /// The eigengap variant, which reads the segment count off the spectrum.
    pub auto_tau: bool,
    /// The affinity exponent α.
    pub alpha: f32,
    /// The side of the square label grid.
    pub mask_size: usize,
    /// PAMR refinement on the image.
    pub pamr: bool,
    /// The 3×3 median filter last.
    pub median: bool,
    /// The side of the model's square input in pixels.
    pub input_size: usize,
    /// The timestep of the noise and of the UNet pass.
    pub timestep: usize,
    /// The seed of the noise.
    pub seed: u64,
}

impl From<&DiffCutOptions> for DiffCutSettings {
    fn from(options: &DiffCutOptions) -> Self {
        let (cut, features) = (&options.cut, &options.features);
        DiffCutSettings {
            tau: cut.tau(),
            auto_tau: cut.auto_tau(),
            alpha: cut.alpha(),
            mask_size: cut.mask_size(),
            pamr: cut.pamr(),
            median: cut.median(),
            input_size: features.input_size(),
            timestep: features.timestep(),
            seed: features.seed(),
        }
    }
}

// ---------------------------------------------------------------------------
// The one writer: bytes encoded in memory, written whole to a hidden temporary
// next to the target, flushed and synced, renamed into place, the folder synced.

/// A file written whole and synced to a hidden temporary next to its target,
/// waiting to be renamed into place by [`StagedFile::commit`]. Dropped
/// uncommitted, the temporary is removed and the target left as it was.
#[derive(Debug)]
pub struct StagedFile {
    temporary: tempfile::NamedTempFile,
    target: PathBuf,
}

impl StagedFile {
    /// Renames the temporary over the target and syncs the folder, so the
    /// rename survives a crash.
    pub fn commit(self) -> Result<(), Error> {
        let target = self.target;
        self.temporary
            .persist(&target)
            .map_err(|error| write_error(&target, format!("cannot rename into place: {error}")))?;
        sync_folder(&target)
    }
}

/// Stages `bytes` for `path`: the whole content is written to a temporary
/// file in the same folder, flushed and synced to disk before this returns.
pub fn stage_file(path: &Path, bytes: &[u8]) -> Result<StagedFile, Error> {
    stage_through(path, bytes, write_whole)
}

/// Renames staged files into place in the order given: a result's record
/// (its JSON) goes last, so it never names a file not yet in place.
pub fn commit_in_order(files: Vec<StagedFile>) -> Result<(), Error> {
    files.into_iter().try_for_each(StagedFile::commit)
}

/// Writes `bytes` to `path` durably and whole or not at all: on any error
/// (disk full included) the previous file, if any, is left as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    stage_file(path, bytes)?.commit()
}

/// Writes all of `bytes` and flushes: every error surfaces, the last one
/// (a full disk seen only at the flush) included.
fn write_whole(file: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.flush()
}

/// [`stage_file`] with the writing step given, so a test can make it fail.
fn stage_through<W>(path: &Path, bytes: &[u8], write: W) -> Result<StagedFile, Error>
where
    W: FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
{
    let folder = folder_of(path);
    std::fs::create_dir_all(&folder)
        .map_err(|error| write_error(path, format!("cannot create its folder: {error}")))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(path, "not a file path".into()))?
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
    let mut temporary = builder
        .tempfile_in(&folder)
        .map_err(|error| write_error(path, format!("cannot create a temporary file: {error}")))?;
    write(temporary.as_file_mut(), bytes)
        .map_err(|error| write_error(path, format!("cannot write: {error}")))?;
    temporary
        .as_file()
        .sync_all()
        .map_err(|error| write_error(path, format!("cannot sync to disk: {error}")))?;
    Ok(StagedFile {
        temporary,
        target: path.to_path_buf(),
    })
}

/// The folder `path` is in (`.` for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs the folder of `path`, which makes a rename in it durable. Windows
/// cannot open a folder as a file, and its renames need no such step.
fn sync_folder(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    std::fs::File::open(folder_of(path))
        .and_then(|folder| folder.sync_all())
        .map_err(|error| write_error(path, format!("cannot sync its folder: {error}")))?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn write_error(path: &Path, reason: String) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        reason,
    }
}

/// How a JSON file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonStyle {
    /// One line without spaces: the smallest file, for programs (the default).
    #[default]
    Compact,
    /// Indented, one value per line: for reading by eye.
    Pretty,
}

impl JsonStyle {
    /// `value` as JSON in this style, ending with a newline.
    pub fn encode<T: Serialize>(self, value: &T) -> serde_json::Result<Vec<u8>> {
        let mut bytes = match self {
            JsonStyle::Compact => serde_json::to_vec(value)?,
            JsonStyle::Pretty => serde_json::to_vec_pretty(value)?,
        };
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// `value` as JSON in `style` (`path`, the file it is for, is named in errors).
pub(crate) fn encode_json<T: Serialize>(
    path: &Path,
    value: &T,
    style: JsonStyle,
) -> Result<Vec<u8>, Error> {
    style
        .encode(value)
        .map_err(|error| write_error(path, error.to_string()))
}

/// Writes `value` as JSON in `style` to `path`, durably and atomically.
pub fn write_json_atomically<T: Serialize>(
    path: impl AsRef<Path>,
    value: &T,
    style: JsonStyle,
) -> Result<(), Error> {
    let path = path.as_ref();
    write_atomically(path, &encode_json(path, value, style)?)
}

/// The `tEXt` keyword and the start of the text that mark a PNG as written by
/// diffseg: what lets a later run replace it and a folder walk skip it.
const PNG_MARK_KEYWORD: &str = "Software";
const PNG_MARK_TEXT: &str = "diffseg";

/// `image` encoded as a PNG (8-bit grey, 16-bit grey, RGB or RGBA; other
/// colour types as RGBA), marked as diffseg's.
pub(crate) fn encode_png(path: &Path, image: &DynamicImage) -> Result<Vec<u8>, Error> {
    let (colour, depth, data): (png::ColorType, png::BitDepth, std::borrow::Cow<[u8]>) = match image
    {
        DynamicImage::ImageLuma8(buffer) => (
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            buffer.as_raw().into(),
        ),
        // PNG samples are big-endian.
        DynamicImage::ImageLuma16(buffer) => (
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            buffer
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ),
        DynamicImage::ImageRgb8(buffer) => (
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            buffer.as_raw().into(),
        ),
        other => (
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            other.to_rgba8().into_raw().into(),
        ),
    };
    let pixels = PngPixels {
        width: image.width(),
        height: image.height(),
        colour,
        depth,
        palette: None,
        data: &data,
    };
    encode_marked_png(path, &pixels)
}

/// Raw PNG pixels: rows of samples as the format stores them.
struct PngPixels<'a> {
    width: u32,
    height: u32,
    colour: png::ColorType,
    depth: png::BitDepth,
    /// RGB triples, for an indexed PNG.
    palette: Option<Vec<u8>>,
    data: &'a [u8],
}

/// `pixels` encoded as a PNG carrying diffseg's mark.
fn encode_marked_png(path: &Path, pixels: &PngPixels) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, pixels.width, pixels.height);
    encoder.set_color(pixels.colour);
    encoder.set_depth(pixels.depth);
    if let Some(palette) = &pixels.palette {
        encoder.set_palette(palette.as_slice());
    }
    let encoded = encoder
        .add_text_chunk(
            PNG_MARK_KEYWORD.into(),
            format!("{PNG_MARK_TEXT} {}", env!("CARGO_PKG_VERSION")),
        )
        .and_then(|()| encoder.write_header())
        .and_then(|mut writer| {
            writer.write_image_data(pixels.data)?;
            writer.finish()
        });
    encoded.map_err(|error| write_error(path, format!("cannot encode the PNG: {error}")))?;
    Ok(bytes)
}

/// The most labels a palette label PNG holds; a label map with more is
/// written as 16-bit greyscale.
pub(crate) const PALETTE_LABELS: u32 = 256;

/// A row-major label map encoded as a PNG whose pixel values are the labels
/// (the label-PNG codec's writer): up to [`PALETTE_LABELS`] labels an 8-bit
/// palette PNG whose colours are the overlay's, so viewers show the segments;
/// above, 16-bit greyscale (a palette holds 256 colours at most).
pub(crate) fn encode_label_png(
    path: &Path,
    labels: &[u32],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, Error> {
    if labels.len() as u64 != u64::from(width) * u64::from(height) {
        return Err(write_error(
            path,
            format!(
                "{} labels do not fill a {width}x{height} label map",
                labels.len()
            ),
        ));
    }
    let largest = labels.iter().copied().max().unwrap_or(0);
    let (colour, depth, palette, data) = if largest < PALETTE_LABELS {
        let palette = (0..=largest)
            .flat_map(crate::segmentation::palette_colour)
            .collect();
        let data = labels.iter().map(|&label| label as u8).collect::<Vec<u8>>();
        (
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            Some(palette),
            data,
        )
    } else if largest <= u32::from(u16::MAX) {
        // PNG samples are big-endian.
        let data = labels
            .iter()
            .flat_map(|&label| (label as u16).to_be_bytes())
            .collect();
        (
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            None,
            data,
        )
    } else {
        return Err(write_error(
            path,
            format!("label {largest} does not fit a 16-bit label PNG"),
        ));
    };
    let pixels = PngPixels {
        width,
        height,
        colour,
        depth,
        palette,
        data: &data,
    };
    encode_marked_png(path, &pixels)
}

/// Whether `path` is a PNG that diffseg wrote (it carries diffseg's mark).
/// Reads only the chunks before the image data.
pub fn is_diffseg_png(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.read_info().is_ok_and(|reader| {
        reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .any(|chunk| chunk.keyword == PNG_MARK_KEYWORD && chunk.text.starts_with(PNG_MARK_TEXT))
    })
}

/// Reads a label PNG as row-major labels, width and height: the reader of
/// what [`crate::Segmentation::save_label_png`] writes (8-bit palette, 16-bit
/// greyscale) and of what diffseg wrote before (8-bit greyscale); the pixel
/// value is the label, whatever the palette's colours. Anything else, damaged
/// or too large (the limits of [`crate::open_image`]) is a typed error.
pub fn read_label_png(path: impl AsRef<Path>) -> Result<(Vec<u32>, u32, u32), Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|error| Error::ImageRead {
        path: path.to_path_buf(),
        error,
    })?;
    decode_label_png(&bytes).map_err(|error| Error::ImageDecode {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Why bytes are not a label PNG.
#[derive(Debug)]
pub(crate) enum LabelPngError {
    /// Not a PNG, damaged, or too large.
    Damaged(String),
    /// A PNG of another kind: its colour type and bit depth.
    Kind(String),
}

impl std::fmt::Display for LabelPngError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelPngError::Damaged(reason) => formatter.write_str(reason),
            LabelPngError::Kind(kind) => write!(
                formatter,
                "a label PNG is 8-bit palette, 8-bit greyscale or 16-bit greyscale, this one is {kind}"
            ),
        }
    }
}

/// Decodes label PNG bytes (8-bit palette or greyscale, 16-bit greyscale)
/// without any colour conversion: the raw sample of each pixel is its label.
pub(crate) fn decode_label_png(bytes: &[u8]) -> Result<(Vec<u32>, u32, u32), LabelPngError> {
    let damaged = |error: png::DecodingError| LabelPngError::Damaged(error.to_string());
    let limits = png::Limits {
        bytes: usize::try_from(crate::input::MAX_DECODE_BYTES).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    // Palette indices and 16-bit samples as stored, not expanded to colours.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(damaged)?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    if width > crate::MAX_IMAGE_SIDE || height > crate::MAX_IMAGE_SIDE {
        return Err(LabelPngError::Damaged(format!(
            "{width}x{height} pixels: a side is larger than {}",
            crate::MAX_IMAGE_SIDE
        )));
    }
    let sixteen_bit = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale | png::ColorType::Indexed, png::BitDepth::Eight) => false,
        (png::ColorType::Grayscale, png::BitDepth::Sixteen) => true,
        (colour, depth) => {
            return Err(LabelPngError::Kind(format!(
                "{colour:?} at {} bits",
                depth as u8
            )))
        }
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| LabelPngError::Damaged("too large to decode".into()))?;
    let mut buffer = vec![0u8; size];
    let frame = reader.next_frame(&mut buffer).map_err(damaged)?;
    buffer.truncate(frame.buffer_size());
    let labels: Vec<u32> = if sixteen_bit {
        buffer
            .chunks_exact(2)
            .map(|sample| u32::from(u16::from_be_bytes([sample[0], sample[1]])))
            .collect()
    } else {
        buffer.iter().map(|&sample| u32::from(sample)).collect()
    };
    if labels.len() as u64 != u64::from(width) * u64::from(height) {
        return Err(LabelPngError::Damaged(format!(
            "{} pixels decoded for {width}x{height}",
            labels.len()
        )));
    }
    Ok((labels, width, height))
}

// ---------------------------------------------------------------------------
// One segmented image's files as one result: JSON last, recording the others.

/// One output file a result's JSON vouches for: its name (in the JSON's
/// folder), length and SHA-256, checked before the result counts as done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file's name, in the folder of the JSON.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl FileRecord {
    /// The record of `content` written as `name`.
    fn of(name: String, content: &[u8]) -> FileRecord {
        FileRecord {
            name,
            bytes: content.len() as u64,
            sha256: sha256_hex(content),
        }
    }
}

fn sha256_hex(content: &[u8]) -> String {
    format!("{:x}", Sha256::digest(content))
}

/// One kind of file a segmented image's result is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The label PNG, `<stem>.png`.
    Labels,
    /// The overlay PNG, `<stem>.overlay.png`.
    Overlay,
    /// The JSON description, `<stem>.json`: the result's commit record,
    /// written last.
    Json,
}

impl OutputKind {
    /// Every kind, in writing order (the JSON last).
    pub const ALL: [OutputKind; 3] = [OutputKind::Labels, OutputKind::Overlay, OutputKind::Json];

    /// Its name in `--outputs` and in a result's JSON.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Labels => "labels",
            OutputKind::Overlay => "overlay",
            OutputKind::Json => "json",
        }
    }

    /// What a result's base path (`<out>/<stem>`) is followed by in its name.
    pub fn suffix(self) -> &'static str {
        match self {
            OutputKind::Labels => ".png",
            OutputKind::Overlay => ".overlay.png",
            OutputKind::Json => ".json",
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl std::str::FromStr for OutputKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<OutputKind, Error> {
        OutputKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim())
            .ok_or_else(|| {
                Error::unknown_name(
                    "output kind",
                    name,
                    "the kinds are labels, overlay and json",
                )
            })
    }
}

/// The kinds of file a result is made of: at least one, each once, in
/// writing order (the JSON last). All three by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputKinds(Vec<OutputKind>);

impl OutputKinds {
    /// Label PNG, overlay and JSON.
    pub fn all() -> OutputKinds {
        OutputKinds(OutputKind::ALL.to_vec())
    }

    /// These kinds (in any order, repeats ignored); `None` when there are none.
    pub fn new(kinds: impl IntoIterator<Item = OutputKind>) -> Option<OutputKinds> {
        let mut kinds: Vec<OutputKind> = kinds.into_iter().collect();
        kinds.sort();
        kinds.dedup();
        (!kinds.is_empty()).then_some(OutputKinds(kinds))
    }

    /// Whether `kind` is one of them.
    pub fn contains(&self, kind: OutputKind) -> bool {
        self.0.contains(&kind)
    }

    /// The kinds, in writing order.
    pub fn iter(&self) -> impl Iterator<Item = OutputKind> + '_ {
        self.0.iter().copied()
    }
}

impl Default for OutputKinds {
    fn default() -> OutputKinds {
        OutputKinds::all()
    }
}

impl std::fmt::Display for OutputKinds {
    /// Comma-separated names: `labels,overlay,json`.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.iter().map(OutputKind::name).collect();
        formatter.write_str(&names.join(","))
    }
}

impl std::str::FromStr for OutputKinds {
    type Err = Error;

    /// Comma-separated names: `labels,json`.
    fn from_str(text: &str) -> Result<OutputKinds, Error> {
        let kinds = text
            .split(',')
            .filter(|name| !name.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<OutputKind>, Error>>()?;
        OutputKinds::new(kinds).ok_or_else(|| {
            Error::unknown_name(
                "output kind list",
                text,
                "name at least one of labels, overlay and json",
            )
        })
    }
}

/// Where one segmented image's files go: label PNG, overlay PNG and the JSON
/// that describes them, all in one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPaths {
    /// The label PNG.
    pub labels: PathBuf,
    /// The overlay PNG.
    pub overlay: PathBuf,
    /// The JSON description, the result's commit record.
    pub json: PathBuf,
}

impl ResultPaths {
    /// The files of the result at `base` (`<out>/<stem>`): `<stem>.png`,
    /// `<stem>.overlay.png`, `<stem>.json` ([`OutputKind::suffix`]).
    pub fn at(base: &Path) -> ResultPaths {
        let with = |kind: OutputKind| {
            let mut path = base.as_os_str().to_owned();
            path.push(kind.suffix());
            PathBuf::from(path)
        };
        ResultPaths {
            labels: with(OutputKind::Labels),
            overlay: with(OutputKind::Overlay),
            json: with(OutputKind::Json),
        }
    }

    /// The file of `kind`.
    pub fn path(&self, kind: OutputKind) -> &Path {
        match kind {
            OutputKind::Labels => &self.labels,
            OutputKind::Overlay => &self.overlay,
            OutputKind::Json => &self.json,
        }
    }
}

/// The name a result's JSON records for `path`.
fn record_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes one result of the `kinds` asked for: each file but the JSON is
/// encoded by `encode` and staged (written whole and synced), then
/// `description`, completed with the kinds and the other files' lengths and
/// checksums, is staged as JSON (if asked for); only then are they renamed
/// into place, JSON last. A failure before the renames leaves a previous
/// result untouched; one during them leaves a JSON whose checksums no longer
/// match, which [`check_result`] reports as damaged, never as done. Returns
/// the description as completed.
pub(crate) fn write_result(
    paths: &ResultPaths,
    kinds: &OutputKinds,
    mut encode: impl FnMut(OutputKind, &Path) -> Result<Vec<u8>, Error>,
    mut description: SegmentsFile,
    style: JsonStyle,
) -> Result<SegmentsFile, Error> {
    description.outputs = Some(kinds.iter().collect());
    description.files = Vec::new();
    let mut staged = Vec::new();
    for kind in kinds.iter() {
        let path = paths.path(kind);
        let bytes = if kind == OutputKind::Json {
            encode_json(path, &description, style)?
        } else {
            let bytes = encode(kind, path)?;
            description
                .files
                .push(FileRecord::of(record_name(path), &bytes));
            bytes
        };
        staged.push(stage_file(path, &bytes)?);
    }
    commit_in_order(staged)?;
    Ok(description)
}

/// What a result's files on disk are worth.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResultState {
    /// No JSON: no result was committed (files without one are leftovers of
    /// an interrupted write, diffseg's to replace).
    Missing,
    /// The JSON and every file it records are whole: the description read.
    Whole(Box<SegmentsFile>),
    /// A whole result of other kinds: it lacks these, asked for now. Redo it.
    Incomplete(Vec<OutputKind>),
    /// A result of diffseg's that cannot be trusted (a file missing, cut
    /// short or changed, or no checksums recorded): why. Redo it.
    Damaged(String),
    /// A file diffseg did not write is in the way: never replaced.
    Foreign {
        /// The file.
        path: PathBuf,
        /// Why it is not taken for diffseg's.
        reason: String,
    },
}

/// Checks the result at `paths` for the `kinds` asked for: the JSON must be
/// diffseg's, have been written with every kind asked for, and record each of
/// their files with the length and SHA-256 found on disk. A file in the way of
/// a kind asked for that diffseg did not write (no JSON of diffseg's naming
/// it, no diffseg mark) is reported as [`ResultState::Foreign`]. Without
/// [`OutputKind::Json`] among the kinds nothing records what is done: the
/// result is [`ResultState::Missing`] (unless a file is in the way).
pub fn check_result(paths: &ResultPaths, kinds: &OutputKinds) -> ResultState {
    let wants_json = kinds.contains(OutputKind::Json);
    let description = match std::fs::read(&paths.json) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) if wants_json => {
            return ResultState::Damaged(format!("{}: cannot read: {error}", paths.json.display()))
        }
        Err(_) => None,
        Ok(bytes) => match serde_json::from_slice::<SegmentsFile>(&bytes) {
            Ok(description) => Some(description),
            Err(error) if wants_json => {
                return ResultState::Foreign {
                    path: paths.json.clone(),
                    reason: format!("not a diffseg result JSON ({error})"),
                }
            }
            // Not diffseg's, but not to be written either: left alone.
            Err(_) => None,
        },
    };
    if let Some(foreign) = foreign_image(paths, kinds, description.as_ref()) {
        return foreign;
    }
    let Some(description) = description.filter(|_| wants_json) else {
        return ResultState::Missing;
    };
    let written = recorded_kinds(&description);
    let lacking: Vec<OutputKind> = kinds
        .iter()
        .filter(|kind| !written.contains(kind))
        .collect();
    if !lacking.is_empty() {
        return ResultState::Incomplete(lacking);
    }
    match damage(paths, kinds, &description) {
        Some(reason) => ResultState::Damaged(reason),
        None => ResultState::Whole(Box::new(description)),
    }
}

/// The kinds a result's JSON was written with: an earlier version's, which
/// records none, wrote all three.
fn recorded_kinds(description: &SegmentsFile) -> Vec<OutputKind> {
    description
        .outputs
        .clone()
        .unwrap_or_else(|| OutputKind::ALL.to_vec())
}

/// The PNG kinds among `kinds`: the files a result's JSON vouches for.
fn image_kinds(kinds: &OutputKinds) -> impl Iterator<Item = OutputKind> + '_ {
    kinds.iter().filter(|kind| *kind != OutputKind::Json)
}

/// The first of the result's PNGs of the `kinds` asked for that is in the way
/// and not diffseg's: neither recorded by its JSON (a JSON of an older
/// diffseg, without records, vouches for both) nor carrying diffseg's mark.
fn foreign_image(
    paths: &ResultPaths,
    kinds: &OutputKinds,
    description: Option<&SegmentsFile>,
) -> Option<ResultState> {
    let vouched = |path: &Path| {
        description.is_some_and(|description| {
            (description.outputs.is_none() && description.files.is_empty())
                || description
                    .files
                    .iter()
                    .any(|record| record.name == record_name(path))
        })
    };
    image_kinds(kinds)
        .map(|kind| paths.path(kind))
        .find(|path| path.symlink_metadata().is_ok() && !vouched(path) && !is_diffseg_png(path))
        .map(|path| ResultState::Foreign {
            path: path.to_path_buf(),
            reason: "not a diffseg result (no result JSON names it, no diffseg mark)".into(),
        })
}

/// Why the result `description` records is not whole for the `kinds` asked
/// for, or `None` when each of their files is there with the recorded length
/// and checksum.
fn damage(paths: &ResultPaths, kinds: &OutputKinds, description: &SegmentsFile) -> Option<String> {
    if description.outputs.is_none() && description.files.is_empty() {
        return Some(format!(
            "{}: no checksums recorded (an older diffseg's result)",
            paths.json.display()
        ));
    }
    for path in image_kinds(kinds).map(|kind| paths.path(kind)) {
        let name = record_name(path);
        let Some(record) = description.files.iter().find(|record| record.name == name) else {
            return Some(format!("{}: does not record {name}", paths.json.display()));
        };
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(error) => return Some(format!("{}: cannot read: {error}", path.display())),
        };
        if content.len() as u64 != record.bytes {
            return Some(format!(
                "{}: {} bytes, {} recorded",
                path.display(),
                content.len(),
                record.bytes
            ));
        }
        if sha256_hex(&content) != record.sha256 {
            return Some(format!(
                "{}: its SHA-256 differs from the one recorded",
                path.display()
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Refusals made before any work: an output that is an input, a file in the way
// that diffseg did not write.

/// The file a write to `path` replaces, resolved: its folder canonicalised
/// (symbolic links, `.`, `..`) and its name; `path` itself canonicalised when
/// it exists. `None` when the folder does not exist yet (then nothing there can
/// be an input).
pub fn resolved_path(path: &Path) -> Option<PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Some(real);
    }
    let folder = folder_of(path).canonicalize().ok()?;
    Some(folder.join(path.file_name()?))
}

/// Refuses `output` when it resolves to one of `inputs` (canonical paths):
/// diffseg never writes over what it reads.
pub fn refuse_input_as_output(
    output: &Path,
    inputs: &std::collections::HashMap<PathBuf, PathBuf>,
) -> Result<(), Error> {
    match resolved_path(output).and_then(|resolved| inputs.get(&resolved)) {
        Some(input) => Err(Error::OutputIsInput {
            output: output.to_path_buf(),
            input: input.clone(),
        }),
        None => Ok(()),
    }
}

/// Refuses to replace `path` when a file is there that `ours` does not take
/// for diffseg's (`what` says what diffseg writes there).
pub fn refuse_foreign(
    path: &Path,
    what: &str,
    ours: impl FnOnce(&Path) -> bool,
) -> Result<(), Error> {
    if path.symlink_metadata().is_ok() && !ours(path) {
        return Err(Error::NotOurs {
            path: path.to_path_buf(),
            reason: format!("not {what} written by diffseg"),
        });
    }
    Ok(())
}

/// Whether `path` holds JSON that reads as a `T` (diffseg's schema for it).
pub fn is_json_of<T: serde::de::DeserializeOwned>(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| serde_json::from_slice::<T>(&bytes).is_ok())
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
        write_json_atomically(&written, &[1, 2], JsonStyle::Compact).unwrap();
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
        assert_eq!(rle.size(), [2, 3]);
        // Column-major pixels: (0,0)=1 (0,1)=1 (1,0)=0 (1,1)=1 (2,0)=0 (2,1)=0.
        assert_eq!(rle.runs(), vec![0, 2, 1, 1, 2]);
        let background = coco_rle(&labels, 3, 2, 0);
        assert_eq!(background.runs(), vec![2, 1, 1, 2]);
    }

    /// Masks of every kind of run (empty first runs, one-pixel runs, runs past
    /// 2^20) against the strings pycocotools' `mask.encode` gives for them
    /// (tools/reference/coco_rle_reference.py): encoded alike, and decoded back.
    #[test]
    fn coco_rle_matches_pycocotools() {
        #[derive(Deserialize)]
        struct Case {
            name: String,
            height: u32,
            width: u32,
            counts: std::collections::BTreeMap<u32, String>,
        }
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_rle");
        let cases: Vec<Case> =
            serde_json::from_slice(&std::fs::read(folder.join("reference.json")).unwrap()).unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let image = image::open(folder.join(format!("{}.png", case.name))).unwrap();
            let labels: Vec<u32> = image
                .to_luma8()
                .pixels()
                .map(|p| u32::from(p.0[0]))
                .collect();
            assert_eq!((image.width(), image.height()), (case.width, case.height));
            for (label, expected) in &case.counts {
                let ours = coco_rle(&labels, case.width, case.height, *label);
                assert_eq!(ours.counts(), expected, "{} label {label}", case.name);
                let theirs: CocoRle = serde_json::from_value(serde_json::json!({
                    "size": [case.height, case.width], "counts": expected,
                }))
                .unwrap();
                assert_eq!(theirs.runs(), ours.runs(), "{} label {label}", case.name);
            }
        }
    }

    #[test]
    fn rle_json_reads_old_lists_and_refuses_what_does_not_cover_the_mask() {
        let read = |json: serde_json::Value| serde_json::from_value::<CocoRle>(json);
        let old = read(serde_json::json!({"size": [2, 3], "counts": [0, 2, 1, 1, 2]})).unwrap();
        assert_eq!(old, coco_rle(&[1, 0, 0, 1, 1, 0], 3, 2, 1));
        assert_eq!(serde_json::to_value(&old).unwrap()["counts"], old.counts());
        for bad in [
            serde_json::json!({"size": [2, 3], "counts": [0, 2, 1]}),
            serde_json::json!({"size": [2, 3], "counts": "07"}),
            serde_json::json!({"size": [2, 3], "counts": "0 6"}),
            serde_json::json!({"size": [2, 3], "counts": "0o"}),
            serde_json::json!({"size": [2, 3], "counts": "ooooooooooooooo0"}),
            serde_json::json!({"size": [2, 3], "counts": "6O"}),
        ] {
            assert!(read(bad.clone()).is_err(), "{bad}");
        }
    }

    /// The colour type, bit depth and palette of PNG `bytes`, as stored.
    fn png_kind(bytes: &[u8]) -> (png::ColorType, png::BitDepth, Option<Vec<u8>>) {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let info = reader.info();
        let palette = info.palette.as_ref().map(|palette| palette.to_vec());
        (info.color_type, info.bit_depth, palette)
    }

    #[test]
    fn label_pngs_up_to_256_labels_are_palettes_of_the_overlay_colours() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("labels.png");
        // Every label of a full palette, in a 16x16 map, and a small one.
        let full: Vec<u32> = (0..256).rev().collect();
        for (labels, width, height) in [(vec![2, 0, 0, 1, 2, 2], 3, 2), (full, 16, 16)] {
            let bytes = encode_label_png(&path, &labels, width, height).unwrap();
            let (colour, depth, palette) = png_kind(&bytes);
            assert_eq!(
                (colour, depth),
                (png::ColorType::Indexed, png::BitDepth::Eight)
            );
            let largest = *labels.iter().max().unwrap();
            let overlay_colours: Vec<u8> = (0..=largest)
                .flat_map(crate::segmentation::palette_colour)
                .collect();
            assert_eq!(palette.unwrap(), overlay_colours);
            write_atomically(&path, &bytes).unwrap();
            assert!(is_diffseg_png(&path));
            assert_eq!(
                read_label_png(&path).unwrap(),
                (labels.clone(), width, height)
            );
            // What a viewer shows: each pixel in its segment's overlay colour.
            let shown = image::load_from_memory(&bytes).unwrap().to_rgb8();
            for (pixel, &label) in shown.pixels().zip(&labels) {
                assert_eq!(pixel.0, crate::segmentation::palette_colour(label));
            }
        }
    }

    #[test]
    fn label_pngs_above_256_labels_are_16_bit_grey() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("labels.png");
        let labels: Vec<u32> = (0..257).chain([1000, 65535, 3]).collect();
        let bytes = encode_label_png(&path, &labels, 20, 13).unwrap();
        assert_eq!(
            png_kind(&bytes),
            (png::ColorType::Grayscale, png::BitDepth::Sixteen, None)
        );
        write_atomically(&path, &bytes).unwrap();
        assert!(is_diffseg_png(&path));
        assert_eq!(read_label_png(&path).unwrap(), (labels, 20, 13));
        let too_many: Vec<u32> = vec![0, 65536];
        let error = encode_label_png(&path, &too_many, 2, 1).unwrap_err();
        assert!(error.to_string().contains("labels.png"), "{error}");
    }

    #[test]
    fn label_pngs_of_earlier_versions_still_read() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("old.png");
        // 8-bit greyscale, pixel = label: what diffseg wrote before palettes.
        let grey = DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(3, 2, vec![1, 0, 0, 1, 4, 0]).unwrap(),
        );
        write_atomically(&path, &encode_png(&path, &grey).unwrap()).unwrap();
        assert_eq!(
            read_label_png(&path).unwrap(),
            (vec![1, 0, 0, 1, 4, 0], 3, 2)
        );
        // Another program's 8-bit grey label map, without diffseg's mark.
        grey.save(&path).unwrap();
        assert_eq!(read_label_png(&path).unwrap().0, [1, 0, 0, 1, 4, 0]);
        // Colour images are no label maps: the error names the file and the kind.
        DynamicImage::new_rgb8(2, 2).save(&path).unwrap();
        let error = read_label_png(&path).unwrap_err().to_string();
        assert!(
            error.contains("old.png") && error.contains("Rgb"),
            "{error}"
        );
    }

    #[test]
    fn json_is_compact_unless_pretty_is_asked_for() {
        let description = describe_labels(&[1, 0, 0, 1, 1, 0], 3, 2, Some("a.jpg".into()));
        let compact = JsonStyle::Compact.encode(&description).unwrap();
        let pretty = JsonStyle::Pretty.encode(&description).unwrap();
        let lines = |bytes: &[u8]| bytes.iter().filter(|&&byte| byte == b'\n').count();
        assert_eq!(lines(&compact), 1, "one line, newline-terminated");
        assert!(compact.ends_with(b"}\n") && !compact.contains(&b' '));
        assert!(lines(&pretty) > 10 && pretty.len() > compact.len());
        let read = |bytes: &[u8]| serde_json::from_slice::<SegmentsFile>(bytes).unwrap();
        assert_eq!(read(&compact), description);
        assert_eq!(read(&pretty), description);
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

    /// A disk that takes `room` more bytes, then fails as full; with
    /// `fail_flush` it takes every write and fails only at the flush, as a
    /// buffered writer does whose last block cannot be written.
    struct FullDisk<W> {
        inner: W,
        room: usize,
        fail_flush: bool,
    }

    impl<W: Write> Write for FullDisk<W> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if !self.fail_flush && self.room == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            let taken = if self.fail_flush {
                bytes.len()
            } else {
                bytes.len().min(self.room)
            };
            self.room = self.room.saturating_sub(taken);
            self.inner.write(&bytes[..taken])
        }

        fn flush(&mut self) -> std::io::Result<()> {
            if self.fail_flush {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            self.inner.flush()
        }
    }

    /// Names of the entries of `folder`, sorted.
    fn entries(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_full_disk_leaves_the_previous_file_and_no_temporary() {
        let folder = tempfile::tempdir().unwrap();
        let target = folder.path().join("out.png");
        write_atomically(&target, b"the previous good result").unwrap();
        for fail_flush in [false, true] {
            let staged = stage_through(&target, b"a new result, longer", |file, bytes| {
                let mut disk = FullDisk {
                    inner: file,
                    room: 5,
                    fail_flush,
                };
                write_whole(&mut disk, bytes)
            });
            let error = staged.unwrap_err().to_string();
            assert!(
                error.contains("out.png") && error.contains("cannot write"),
                "{error}"
            );
            assert_eq!(std::fs::read(&target).unwrap(), b"the previous good result");
            assert_eq!(
                entries(folder.path()),
                ["out.png"],
                "flush fails: {fail_flush}"
            );
        }
    }

    #[test]
    fn a_staged_result_is_renamed_only_when_committed() {
        let folder = tempfile::tempdir().unwrap();
        let first = folder.path().join("a.png");
        let second = folder.path().join("a.json");
        let staged = vec![
            stage_file(&first, b"one").unwrap(),
            stage_file(&second, b"two").unwrap(),
        ];
        assert_eq!(entries(folder.path()).len(), 2);
        assert!(!first.exists() && !second.exists());
        drop(staged);
        assert!(entries(folder.path()).is_empty(), "temporaries removed");
        commit_in_order(vec![
            stage_file(&first, b"one").unwrap(),
            stage_file(&second, b"two").unwrap(),
        ])
        .unwrap();
        assert_eq!(entries(folder.path()), ["a.json", "a.png"]);
    }

    /// A small result written the way `diffseg segment` writes one.
    fn written_result(folder: &Path) -> (ResultPaths, SegmentsFile) {
        let paths = ResultPaths {
            labels: folder.join("a.png"),
            overlay: folder.join("a.overlay.png"),
            json: folder.join("a.json"),
        };
        let labels = [1, 0, 0, 1, 1, 0];
        let description = describe_labels(&labels, 3, 2, Some("a.jpg".into()));
        let label_png = encode_label_png(&paths.labels, &labels, 3, 2).unwrap();
        let overlay = encode_png(&paths.overlay, &DynamicImage::new_rgb8(3, 2)).unwrap();
        let bytes = |kind: OutputKind, _: &Path| {
            Ok(match kind {
                OutputKind::Labels => label_png.clone(),
                _ => overlay.clone(),
            })
        };
        let all = OutputKinds::all();
        write_result(&paths, &all, bytes, description.clone(), JsonStyle::Compact).unwrap();
        (paths, description)
    }

    #[test]
    fn results_are_done_only_when_every_file_matches_its_record() {
        let folder = tempfile::tempdir().unwrap();
        let (paths, description) = written_result(folder.path());
        let ResultState::Whole(read) = check_result(&paths, &OutputKinds::all()) else {
            panic!("{:?}", check_result(&paths, &OutputKinds::all()));
        };
        assert_eq!(read.segments, description.segments);
        assert_eq!(read.files.len(), 2);
        assert_eq!(read_label_png(&paths.labels).unwrap().0, [1, 0, 0, 1, 1, 0]);
        // One byte changed, the file cut short, the file gone: damaged.
        let good = std::fs::read(&paths.overlay).unwrap();
        let mut changed = good.clone();
        *changed.last_mut().unwrap() ^= 1;
        for bad in [changed, good[..good.len() - 1].to_vec()] {
            std::fs::write(&paths.overlay, bad).unwrap();
            assert!(matches!(
                check_result(&paths, &OutputKinds::all()),
                ResultState::Damaged(_)
            ));
        }
        std::fs::remove_file(&paths.overlay).unwrap();
        assert!(matches!(
            check_result(&paths, &OutputKinds::all()),
            ResultState::Damaged(_)
        ));
        // Without the JSON nothing was committed; leftovers are diffseg's.
        std::fs::remove_file(&paths.json).unwrap();
        assert_eq!(
            check_result(&paths, &OutputKinds::all()),
            ResultState::Missing
        );
    }

    #[test]
    fn output_kinds_parse_as_a_set_in_writing_order() {
        let parse = |text: &str| text.parse::<OutputKinds>();
        let kinds = parse("json, labels,json").unwrap();
        assert_eq!(
            kinds.iter().collect::<Vec<_>>(),
            [OutputKind::Labels, OutputKind::Json]
        );
        assert_eq!(kinds.to_string(), "labels,json");
        assert_eq!(parse("labels,overlay,json").unwrap(), OutputKinds::all());
        for bad in ["", ",", "labels,thumbnail", "PNG"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("labels, overlay and json"), "{bad}: {error}");
        }
        assert_eq!(
            ResultPaths::at(Path::new("out/sub/a")),
            ResultPaths {
                labels: "out/sub/a.png".into(),
                overlay: "out/sub/a.overlay.png".into(),
                json: "out/sub/a.json".into(),
            }
        );
    }

    #[test]
    fn results_of_some_kinds_are_done_only_for_those_kinds() {
        let folder = tempfile::tempdir().unwrap();
        let paths = ResultPaths::at(&folder.path().join("a"));
        let labels = [1, 0, 0, 1, 1, 0];
        let some: OutputKinds = "labels,json".parse().unwrap();
        let label_png = encode_label_png(&paths.labels, &labels, 3, 2).unwrap();
        let written = write_result(
            &paths,
            &some,
            |kind, _| {
                assert_eq!(
                    kind,
                    OutputKind::Labels,
                    "only the kinds asked for are encoded"
                );
                Ok(label_png.clone())
            },
            describe_labels(&labels, 3, 2, None),
            JsonStyle::Compact,
        )
        .unwrap();
        assert_eq!(written.outputs, Some(some.iter().collect()));
        assert_eq!(entries(folder.path()), ["a.json", "a.png"]);
        assert!(matches!(check_result(&paths, &some), ResultState::Whole(_)));
        assert_eq!(
            check_result(&paths, &OutputKinds::all()),
            ResultState::Incomplete(vec![OutputKind::Overlay])
        );
        // Without the JSON nothing records what is done.
        let labels_only: OutputKinds = "labels".parse().unwrap();
        assert_eq!(check_result(&paths, &labels_only), ResultState::Missing);
        // A user's file in the way matters only for the kinds to be written.
        std::fs::write(&paths.overlay, b"my overlay").unwrap();
        assert!(matches!(check_result(&paths, &some), ResultState::Whole(_)));
        assert!(matches!(
            check_result(&paths, &OutputKinds::all()),
            ResultState::Foreign { path, .. } if path == paths.overlay
        ));
        std::fs::write(&paths.json, b"{\"my\": \"notes\"}").unwrap();
        assert_eq!(check_result(&paths, &labels_only), ResultState::Missing);
        assert!(matches!(
            check_result(&paths, &some),
            ResultState::Foreign { .. }
        ));
    }

    #[test]
    fn results_of_earlier_versions_count_as_all_three_kinds() {
        let folder = tempfile::tempdir().unwrap();
        let (paths, _) = written_result(folder.path());
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths.json).unwrap()).unwrap();
        assert_eq!(
            json["outputs"],
            serde_json::json!(["labels", "overlay", "json"])
        );
        json.as_object_mut().unwrap().remove("outputs");
        std::fs::write(&paths.json, serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(matches!(
            check_result(&paths, &OutputKinds::all()),
            ResultState::Whole(_)
        ));
    }

    #[test]
    fn files_diffseg_did_not_write_are_foreign() {
        let folder = tempfile::tempdir().unwrap();
        let (paths, _) = written_result(folder.path());
        assert!(is_diffseg_png(&paths.labels) && is_diffseg_png(&paths.overlay));
        // A user's PNG where the label PNG goes, and no JSON naming it.
        std::fs::remove_file(&paths.json).unwrap();
        let mut photo = Vec::new();
        DynamicImage::new_rgb8(2, 2)
            .write_to(
                &mut std::io::Cursor::new(&mut photo),
                image::ImageFormat::Png,
            )
            .unwrap();
        std::fs::write(&paths.labels, &photo).unwrap();
        assert!(!is_diffseg_png(&paths.labels));
        assert!(
            matches!(check_result(&paths, &OutputKinds::all()), ResultState::Foreign { path, .. } if path == paths.labels)
        );
        // A user's JSON where the result's JSON goes.
        std::fs::remove_file(&paths.labels).unwrap();
        std::fs::write(&paths.json, b"{\"my\": \"notes\"}").unwrap();
        assert!(
            matches!(check_result(&paths, &OutputKinds::all()), ResultState::Foreign { path, .. } if path == paths.json)
        );
    }

    #[test]
    fn refusals_name_the_files() {
        let folder = tempfile::tempdir().unwrap();
        let input = folder.path().join("photo.png");
        std::fs::write(&input, b"x").unwrap();
        let inputs =
            std::collections::HashMap::from([(input.canonicalize().unwrap(), input.clone())]);
        let spelled = folder.path().join("sub/../photo.png");
        std::fs::create_dir(folder.path().join("sub")).unwrap();
        let error = refuse_input_as_output(&spelled, &inputs)
            .unwrap_err()
            .to_string();
        assert!(error.contains("photo.png is an input"), "{error}");
        assert!(refuse_input_as_output(&folder.path().join("other.png"), &inputs).is_ok());
        let error = refuse_foreign(&input, "a label PNG", is_diffseg_png)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a label PNG written by diffseg"),
            "{error}"
        );
        assert!(refuse_foreign(
            &folder.path().join("new.png"),
            "a label PNG",
            is_diffseg_png
        )
        .is_ok());
    }

    #[test]
    fn failed_writes_leave_nothing() {
        let folder = tempfile::tempdir().unwrap();
        let target = folder.path().join("out.png");
        // The folder cannot be made: its parent is a file.
        std::fs::write(folder.path().join("file"), b"").unwrap();
        let blocked = folder.path().join("file/out.png");
        let error = write_atomically(&blocked, b"x").unwrap_err().to_string();
        assert!(error.contains("file/out.png"), "{error}");
        write_atomically(&target, b"whole").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(entries(folder.path()), ["file", "out.png"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A valid 16-bit label PNG of a few pixels.
        fn label_png() -> Vec<u8> {
            let labels: Vec<u32> = (0..12).map(|i| i * 40).collect();
            encode_label_png(Path::new("x.png"), &labels, 4, 3).unwrap()
        }

        proptest! {
            #[test]
            fn rle_counts_round_trip(runs in proptest::collection::vec(0u64..(1 << 40), 1..40)) {
                let compressed = compress_runs(&runs);
                prop_assert_eq!(decompress_runs(&compressed).unwrap(), runs);
            }

            #[test]
            fn rle_counts_reader_takes_any_text(text in ".{0,64}") {
                let _ = decompress_runs(&text);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Any bytes: labels or a typed error naming the file, no panic.
            #[test]
            fn label_png_reader_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let folder = tempfile::tempdir().unwrap();
                let path = folder.path().join("labels.png");
                std::fs::write(&path, &bytes).unwrap();
                if let Err(error) = read_label_png(&path) {
                    prop_assert!(error.to_string().contains("labels.png"), "{}", error);
                }
            }

            /// A valid label PNG with bytes changed or cut: labels of the
            /// declared size, or a typed error; no panic.
            #[test]
            fn label_png_reader_survives_mutations(
                changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut bytes = label_png();
                for (index, value) in changes {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                let folder = tempfile::tempdir().unwrap();
                let path = folder.path().join("labels.png");
                std::fs::write(&path, &bytes).unwrap();
                match read_label_png(&path) {
                    Ok((labels, width, height)) => {
                        prop_assert_eq!(labels.len(), width as usize * height as usize)
                    }
                    Err(error) => prop_assert!(error.to_string().contains("labels.png"), "{}", error),
                }
            }

            /// Any bytes as a result's JSON: never done, no panic.
            #[test]
            fn result_json_of_any_bytes_is_never_done(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
                let folder = tempfile::tempdir().unwrap();
                let (paths, _) = written_result(folder.path());
                std::fs::write(&paths.json, &bytes).unwrap();
                prop_assert!(!matches!(check_result(&paths, &OutputKinds::all()), ResultState::Whole(_)));
            }

            /// A result's JSON with bytes changed: done only if what it still
            /// records matches the files on disk (checked here independently),
            /// and a changed label PNG or overlay is never done.
            #[test]
            fn mutated_results_are_done_only_when_checksums_match(
                changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                file in 0usize..3,
            ) {
                let folder = tempfile::tempdir().unwrap();
                let (paths, _) = written_result(folder.path());
                let target = paths.path(OutputKind::ALL[file]).to_path_buf();
                let mut bytes = std::fs::read(&target).unwrap();
                let original = bytes.clone();
                for (index, value) in changes {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                std::fs::write(&target, &bytes).unwrap();
                let state = check_result(&paths, &OutputKinds::all());
                if let ResultState::Whole(description) = state {
                    prop_assert!(file == 2 || bytes == original, "a changed PNG counted as done");
                    for path in [&paths.labels, &paths.overlay] {
                        let content = std::fs::read(path).unwrap();
                        let name = record_name(path);
                        let record = description.files.iter().find(|r| r.name == name);
                        prop_assert!(record.is_some(), "{} not recorded", name);
                        let record = record.unwrap();
                        prop_assert_eq!(record.bytes, content.len() as u64);
                        prop_assert_eq!(&record.sha256, &format!("{:x}", Sha256::digest(&content)));
                    }
                }
            }
        }
    }
}
