//! Evaluation harness: scores segmentations on COCO-Stuff-27 and Cityscapes
//! exactly as the paper's code does (docs/method.md §7).
//!
//! - [`Dataset`] reads the official download layouts and lists the images
//!   ([`Sample`]s); the curated COCO-Stuff-27 list and the 182 → 27 class map are
//!   compiled in.
//! - [`load_ground_truth`] brings a label map to the protocol's 512×512 classes
//!   (centre square crop, nearest-neighbour resize, class map, ignored pixels).
//! - [`score_image`] matches one image's predicted segments to classes (Hungarian,
//!   scipy's choice among ties) and counts TP/FP/FN; [`Scores`] sums them and gives
//!   ACC, mIoU and per-class IoU; [`EvalReport`] writes them as JSON and Markdown.
//! - [`score_predictions`] does all of it for a folder of predicted label PNGs named
//!   `<image stem>.png` (see [`Sample::prediction_file_name`]), either on the
//!   protocol's 512×512 grid or at their image's own size ([`load_prediction`]).
//! - The open-vocabulary protocol (`eval --semantic`) scores class maps instead: each
//!   segment named from the dataset's class names ([`class_map`]) and compared without
//!   matching ([`score_image_by_class`], [`score_class_predictions`]).

mod dataset;
mod labels;
mod metric;
mod report;

use std::path::{Path, PathBuf};

pub use dataset::{check_images, check_labels, Dataset, Sample, IGNORED, NUM_CLASSES};
pub use labels::{decode_prediction_png, PredictionImage, DIFFCUT_EVAL_SIDE, EVAL_SIDE};
pub use metric::{
    match_segments, score_image, score_image_by_class, ClassCounts, Confusion, Scores,
};
pub use report::{ClassReport, EvalReport, Matching};

use crate::{Error, Segmentation};
use image::{DynamicImage, GrayImage};
use labels::{
    center_crop_resize_nearest, crop_resize_nearest, diffcut_crop_resize, diffcut_crop_square,
    read_label_png, LabelImage,
};

/// The input size of DiffCut's SD 1.4 setting (`eval_diffcut.py --img_size`), through
/// which its protocol resizes the labels.
pub const DIFFCUT_INPUT_SIZE: usize = 1024;

/// How predictions and ground truth are brought to one grid before the per-image
/// Hungarian matching (the same for both: each image's segments matched to classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// DiffSeg's paper (docs/method.md §7): [`EVAL_SIDE`]², the centre square of side
    /// `min(H, W)` resized by nearest neighbour.
    Paper,
    /// DiffCut's `eval_diffcut.py`: [`DIFFCUT_EVAL_SIDE`]², the labels cropped and
    /// resized as its data loader does for the model's `input_size`, then to 128.
    DiffCut {
        /// The side the images were resized to for the model (1024 in DiffCut's SD 1.4
        /// setting); the labels pass through it.
        input_size: usize,
    },
}

impl Protocol {
    /// The side of the square grid compared.
    pub fn side(&self) -> usize {
        match self {
            Protocol::Paper => EVAL_SIDE,
            Protocol::DiffCut { .. } => DIFFCUT_EVAL_SIDE,
        }
    }

    /// The protocol's name in reports: `paper` or `diffcut`.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::DiffCut { .. } => "diffcut",
        }
    }

    /// The ground truth of `sample` on this protocol's grid: class indices or
    /// [`IGNORED`], row-major.
    pub fn ground_truth(&self, dataset: Dataset, sample: &Sample) -> Result<Vec<u8>, Error> {
        self.ground_truth_from(dataset, sample, &read_label_png(&sample.label)?)
    }

    fn ground_truth_from(
        &self,
        dataset: Dataset,
        sample: &Sample,
        labels: &LabelImage,
    ) -> Result<Vec<u8>, Error> {
        match *self {
            Protocol::Paper => Ok(ground_truth_from(dataset, labels, EVAL_SIDE)),
            Protocol::DiffCut { input_size } => diffcut_crop_resize(labels, input_size)
                .map(|raw| dataset.label_map().apply(&raw))
                .ok_or_else(|| Error::LabelSize {
                    path: sample.label.clone(),
                    width: labels.width,
                    height: labels.height,
                    reason: format!(
                        "DiffCut's protocol crops a square of side min(width, height) - 1 \
                         and resizes it to the input size {input_size}: both must be at least 1"
                    ),
                }),
        }
    }
}

/// The image of `sample` (opened as `image`) as `eval_diffcut.py`'s data loader crops it
/// before resizing it to the model's input: the square of side `min(W, H) − 1` at its
/// centre, offsets rounded half to even (the labels' crop in [`Protocol::DiffCut`]).
/// Fitting the square to the model's input then only resizes it (bilinear, half-pixel
/// centres, no antialiasing, as its `T.Resize` on tensors).
pub fn diffcut_crop(sample: &Sample, image: &DynamicImage) -> Result<DynamicImage, Error> {
    let (width, height) = (image.width(), image.height());
    let (top, left, side) = diffcut_crop_square(width, height).ok_or_else(|| Error::ImageSize {
        path: sample.image.clone(),
        width,
        height,
        reason: "DiffCut's protocol crops a square of side min(width, height) - 1: \
                     both must be at least 2"
            .into(),
    })?;
    let side = side as u32;
    Ok(image.crop_imm(left as u32, top as u32, side, side))
}

/// The ground truth of `sample` as the protocol compares it: `side`×`side` class
/// indices in `0..27`, or [`IGNORED`], row-major. The protocol's side is
/// [`EVAL_SIDE`] (512, SD 1.x's input); a model with another input size is scored
/// at its own.
pub fn load_ground_truth(dataset: Dataset, sample: &Sample, side: usize) -> Result<Vec<u8>, Error> {
    Ok(ground_truth_from(
        dataset,
        &read_label_png(&sample.label)?,
        side,
    ))
}

/// [`load_ground_truth`] for a label map already read.
fn ground_truth_from(dataset: Dataset, labels: &LabelImage, side: usize) -> Vec<u8> {
    dataset
        .label_map()
        .apply(&center_crop_resize_nearest(labels, side))
}

/// A prediction on the protocol's `side`×`side` grid, and whether it had to be
/// brought there.
///
/// A `side`×`side` PNG is taken as it is (the protocol's grid: the centre crop
/// resized to `side`, as the model sees it). A PNG at its image's own size
/// (`image_width`×`image_height`, as `diffseg segment` writes label maps) gets the
/// labels' treatment: centre crop, nearest-neighbour resize. That comparison is
/// close to the protocol's but not exact (the segments were labelled at the image's
/// scale, not at `side`). Any other size is an error.
pub fn load_prediction(
    path: impl AsRef<Path>,
    side: usize,
    image_width: u32,
    image_height: u32,
) -> Result<(Vec<u16>, bool), Error> {
    let path = path.as_ref();
    let prediction = decode_prediction_png(path)?;
    let (width, height) = (prediction.width, prediction.height);
    if width as usize == side && height as usize == side {
        Ok((prediction.segments, false))
    } else if (width, height) == (image_width, image_height) {
        let resized =
            crop_resize_nearest(&prediction.segments, width as usize, height as usize, side);
        Ok((resized, true))
    } else {
        Err(Error::PredictionSize {
            path: path.to_path_buf(),
            width,
            height,
            expected: format!(
                "{side}×{side} (the protocol's centre crop resized to {side}) \
                 or {image_width}×{image_height} (its image's own size)"
            ),
        })
    }
}

/// A prediction that must be `side`×`side`.
fn load_square_prediction(path: &Path, side: usize) -> Result<Vec<u16>, Error> {
    let prediction = decode_prediction_png(path)?;
    if (prediction.width as usize, prediction.height as usize) != (side, side) {
        return Err(Error::PredictionSize {
            path: path.to_path_buf(),
            width: prediction.width,
            height: prediction.height,
            expected: format!("{side}×{side} (DiffCut's protocol compares its mask size)"),
        });
    }
    Ok(prediction.segments)
}

/// The prediction file of every sample in `folder` ([`Sample::find_prediction`]), or
/// an error naming the first one missing and how many are.
fn locate_predictions(samples: &[Sample], folder: &Path) -> Result<Vec<PathBuf>, Error> {
    if !folder.is_dir() {
        return Err(Error::MissingFolder {
            path: folder.to_path_buf(),
            hint: "the predictions folder (label PNGs named <image stem>.png)".into(),
        });
    }
    let found: Vec<Option<PathBuf>> = samples
        .iter()
        .map(|sample| sample.find_prediction(folder))
        .collect();
    let missing = found.iter().filter(|path| path.is_none()).count();
    match found.iter().position(Option::is_none) {
        Some(first) => Err(Error::MissingPrediction {
            path: folder.join(samples[first].prediction_file_name()),
            id: samples[first].id.clone(),
            missing,
            total: samples.len(),
        }),
        None => Ok(found.into_iter().flatten().collect()),
    }
}

/// Scores one sample against its predicted label map of `side`×`side` segment
/// indices (see [`load_ground_truth`] for the side).
///
/// # Panics
///
/// If `prediction` does not hold `side * side` values.
pub fn score_sample(
    dataset: Dataset,
    sample: &Sample,
    prediction: &[u16],
    side: usize,
) -> Result<ClassCounts, Error> {
    let classes = load_ground_truth(dataset, sample, side)?;
    Ok(score_image(&classes, prediction))
}

/// The scores of a folder of predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FolderScores {
    /// The dataset-level sums.
    pub scores: Scores,
    /// How many predictions were at their image's size and were cropped and resized
    /// to the protocol's grid ([`load_prediction`]).
    pub resized: usize,
}

/// Scores the predictions in `folder` for `samples` at the protocol's [`EVAL_SIDE`]:
/// checks first that every label file and every prediction is there, then reads and
/// scores them in order ([`load_prediction`]), calling `progress` after each image
/// with the running sums.
pub fn score_predictions(
    dataset: Dataset,
    samples: &[Sample],
    folder: impl AsRef<Path>,
    progress: impl FnMut(&Sample, &Scores),
) -> Result<FolderScores, Error> {
    score_predictions_with(Protocol::Paper, dataset, samples, folder, progress)
}

/// [`score_predictions`] with any [`Protocol`]. With [`Protocol::DiffCut`] every
/// prediction must be on its [`DIFFCUT_EVAL_SIDE`]² grid (what `eval_diffcut.py`
/// compares: the labels DiffCut assigns at its mask size).
pub fn score_predictions_with(
    protocol: Protocol,
    dataset: Dataset,
    samples: &[Sample],
    folder: impl AsRef<Path>,
    mut progress: impl FnMut(&Sample, &Scores),
) -> Result<FolderScores, Error> {
    let folder = folder.as_ref();
    check_labels(samples)?;
    let predictions = locate_predictions(samples, folder)?;
    let mut result = FolderScores::default();
    for (sample, path) in samples.iter().zip(&predictions) {
        let (counts, resized) = score_prediction_file(protocol, dataset, sample, path)?;
        result.scores.add(&counts);
        result.resized += usize::from(resized);
        progress(sample, &result.scores);
    }
    Ok(result)
}

/// Scores the prediction PNG at `path` for `sample` with `protocol`, and says whether it
/// was at its image's size and had to be cropped and resized ([`load_prediction`]; with
/// [`Protocol::DiffCut`] it must be [`DIFFCUT_EVAL_SIDE`]²).
pub fn score_prediction_file(
    protocol: Protocol,
    dataset: Dataset,
    sample: &Sample,
    path: &Path,
) -> Result<(ClassCounts, bool), Error> {
    let labels = read_label_png(&sample.label)?;
    let (prediction, resized) = match protocol {
        Protocol::Paper => load_prediction(path, EVAL_SIDE, labels.width, labels.height)?,
        Protocol::DiffCut { .. } => (load_square_prediction(path, DIFFCUT_EVAL_SIDE)?, false),
    };
    let classes = protocol.ground_truth_from(dataset, sample, &labels)?;
    Ok((score_image(&classes, &prediction), resized))
}

/// The class map of a segmentation named from `dataset`'s class names (the preset
/// vocabulary of [`crate::VocabularyPreset`]): each pixel the class index of its segment's
/// name, or [`IGNORED`] for a name that is none of the classes. `None` when the segments
/// were not named.
pub fn class_map(dataset: Dataset, segmentation: &Segmentation) -> Option<Vec<u8>> {
    let class_names = dataset.class_names();
    let segment_classes: Vec<u8> = segmentation
        .names()?
        .iter()
        .map(|named| {
            class_names
                .iter()
                .position(|class| *class == named.name)
                .map_or(IGNORED, |class| class as u8)
        })
        .collect();
    Some(
        segmentation
            .labels()
            .iter()
            .map(|&label| segment_classes[label as usize])
            .collect(),
    )
}

/// Writes a `width`×`height` class map (from [`class_map`]) as an 8-bit greyscale PNG whose
/// pixel values are the classes, durably and atomically: what [`score_class_predictions`]
/// reads.
///
/// # Panics
///
/// If `classes` does not hold `width * height` values.
pub fn save_class_png(path: &Path, width: u32, height: u32, classes: &[u8]) -> Result<(), Error> {
    let image = GrayImage::from_raw(width, height, classes.to_vec())
        .expect("a class per pixel of a width × height map");
    let bytes = crate::output::encode_png(path, &DynamicImage::ImageLuma8(image))?;
    crate::write_atomically(path, &bytes)
}

/// [`score_sample`] for a class map (the open-vocabulary protocol, [`score_image_by_class`]).
///
/// # Panics
///
/// If `prediction` does not hold `side * side` values.
pub fn score_sample_by_class(
    dataset: Dataset,
    sample: &Sample,
    prediction: &[u16],
    side: usize,
) -> Result<ClassCounts, Error> {
    let classes = load_ground_truth(dataset, sample, side)?;
    Ok(score_image_by_class(&classes, prediction))
}

/// [`score_predictions`] for class maps (pixel = class index of the dataset, anything from
/// 27 up = no class): the open-vocabulary protocol of `eval --semantic`, no matching. The
/// PNGs are on the protocol's 512×512 grid or at their image's own size, as there.
pub fn score_class_predictions(
    dataset: Dataset,
    samples: &[Sample],
    folder: impl AsRef<Path>,
    mut progress: impl FnMut(&Sample, &Scores),
) -> Result<FolderScores, Error> {
    let folder = folder.as_ref();
    check_labels(samples)?;
    let predictions = locate_predictions(samples, folder)?;
    let mut result = FolderScores::default();
    for (sample, path) in samples.iter().zip(&predictions) {
        let labels = read_label_png(&sample.label)?;
        let (prediction, resized) = load_prediction(path, EVAL_SIDE, labels.width, labels.height)?;
        let classes = ground_truth_from(dataset, &labels, EVAL_SIDE);
        result
            .scores
            .add(&score_image_by_class(&classes, &prediction));
        result.resized += usize::from(resized);
        progress(sample, &result.scores);
    }
    Ok(result)
}

// The integration tests' fixture reader; they use all of it, the tests here only part.
#[cfg(test)]
#[path = "../../tests/eval_support/mod.rs"]
#[allow(dead_code)]
mod eval_support;

/// The crate-private helpers against values computed independently by
/// `tools/reference/eval_reference.py` (the fixture of tests/eval_synthetic.rs).
#[cfg(test)]
mod reference_tests {
    use super::eval_support::{load_fixture, numbers};
    use super::labels::nearest_source_index;
    use super::metric::max_weight_assignment;
    use super::EVAL_SIDE;

    #[test]
    fn nearest_indices_match_pil() {
        let (inputs, _) = load_fixture();
        for table in inputs["nearest"].as_array().unwrap() {
            let source = table["source"].as_u64().unwrap() as usize;
            let indices: Vec<usize> = numbers(&table["indices"]);
            let ours: Vec<usize> = (0..EVAL_SIDE)
                .map(|i| nearest_source_index(i, source, EVAL_SIDE))
                .collect();
            assert_eq!(ours, indices, "source side {source}");
        }
    }

    #[test]
    fn assignments_match_scipy_including_its_choice_among_ties() {
        let (inputs, expected) = load_fixture();
        let cases = inputs["assignments"].as_array().unwrap();
        let answers = expected["assignments"].as_array().unwrap();
        assert_eq!(cases.len(), answers.len());
        for (index, (case, answer)) in cases.iter().zip(answers).enumerate() {
            let rows = case["rows"].as_u64().unwrap() as usize;
            let columns = case["columns"].as_u64().unwrap() as usize;
            let weights: Vec<u64> = numbers(&case["weights"]);
            let pairs = max_weight_assignment(rows, columns, &weights);
            let ours_rows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            let ours_columns: Vec<usize> = pairs.iter().map(|p| p.1).collect();
            assert_eq!(
                ours_rows,
                numbers::<usize>(&answer["matched_rows"]),
                "case {index} ({rows}×{columns}) rows"
            );
            assert_eq!(
                ours_columns,
                numbers::<usize>(&answer["matched_columns"]),
                "case {index} ({rows}×{columns}) columns"
            );
        }
    }
}
