//! Evaluation harness: scores segmentations on COCO-Stuff-27 and Cityscapes
//! exactly as the paper's code does (method §7).
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
//!   `<image stem>.png` (see [`Sample::prediction_file_name`]).

mod dataset;
mod error;
mod labels;
mod metric;
mod report;

use std::path::{Path, PathBuf};

pub use dataset::{
    check_labels, Dataset, LabelMap, Sample, UnknownDataset, CITYSCAPES_CLASS_NAMES,
    COCOSTUFF27_CLASS_NAMES, COCOSTUFF27_FINE_TO_COARSE, COCOSTUFF27_VAL_CURATED, IGNORED,
    NUM_CLASSES,
};
pub use error::EvalError;
pub use labels::{
    center_crop_resize_nearest, nearest_source_index, read_label_png, read_prediction_png,
    write_prediction_png, LabelImage, EVAL_SIDE,
};
pub use metric::{
    match_segments, max_weight_assignment, score_image, ClassCounts, Confusion, Scores,
};
pub use report::{ClassReport, EvalReport};

/// The ground truth of `sample` as the protocol compares it: `side`×`side` class
/// indices in `0..27`, or [`IGNORED`], row-major. The protocol's side is
/// [`EVAL_SIDE`] (512, SD 1.x's input); a model with another input size is scored
/// at its own.
pub fn load_ground_truth(
    dataset: Dataset,
    sample: &Sample,
    side: usize,
) -> Result<Vec<u8>, EvalError> {
    let raw = read_label_png(&sample.label)?;
    let resized = center_crop_resize_nearest(&raw, side);
    Ok(dataset.label_map().apply(&resized))
}

/// The prediction file of every sample in `folder` ([`Sample::find_prediction`]), or
/// an error naming the first one missing and how many are.
pub fn locate_predictions(samples: &[Sample], folder: &Path) -> Result<Vec<PathBuf>, EvalError> {
    if !folder.is_dir() {
        return Err(EvalError::MissingFolder {
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
        Some(first) => Err(EvalError::MissingPrediction {
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
) -> Result<ClassCounts, EvalError> {
    let classes = load_ground_truth(dataset, sample, side)?;
    Ok(score_image(&classes, prediction))
}

/// Scores the predictions in `folder` for `samples`: checks first that every label
/// file and every prediction is there, then reads and scores them in order, calling `progress` after each image
/// with the running sums.
pub fn score_predictions(
    dataset: Dataset,
    samples: &[Sample],
    folder: &Path,
    mut progress: impl FnMut(&Sample, &Scores),
) -> Result<Scores, EvalError> {
    check_labels(samples)?;
    let predictions = locate_predictions(samples, folder)?;
    let mut scores = Scores::default();
    for (sample, path) in samples.iter().zip(&predictions) {
        let prediction = read_prediction_png(path, EVAL_SIDE)?;
        scores.add(&score_sample(dataset, sample, &prediction, EVAL_SIDE)?);
        progress(sample, &scores);
    }
    Ok(scores)
}
