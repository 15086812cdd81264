//! The evaluation report: overall ACC and mIoU, per-class IoU and counts, as JSON
//! and as a Markdown table.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, NUM_CLASSES};
use super::metric::Scores;
use crate::Error;

/// One class's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// The class index, 0–26.
    pub index: usize,
    /// The class name.
    pub name: String,
    /// TP / (TP + FP + FN); `null` for a class without any pixel (left out of mIoU).
    pub iou: Option<f64>,
    /// True positives (pixels).
    pub tp: u64,
    /// False positives (pixels).
    pub fp: u64,
    /// False negatives (pixels).
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// How predictions meet the ground-truth classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Matching {
    /// The paper's: each image's segments matched to classes (Hungarian).
    #[default]
    Hungarian,
    /// The open-vocabulary protocol (`eval --semantic`): each segment's name is its
    /// class, compared directly.
    Names,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `cocostuff27` or `cityscapes`.
    pub dataset: String,
    /// The images scored.
    pub images_scored: usize,
    /// The images the evaluation was asked to score (the dataset, or its first
    /// `--limit` images).
    pub images_requested: usize,
    /// Labelled (not ignored) ground-truth pixels scored.
    pub labelled_pixels: u64,
    /// Pixel accuracy, ΣTP / labelled pixels, in [0, 1].
    pub acc: Option<f64>,
    /// Mean IoU over classes with pixels, in [0, 1].
    pub miou: Option<f64>,
    /// Where the predictions came from (a folder, or the model and its settings).
    pub source: String,
    /// Predictions that were at their image's own size and were cropped and resized
    /// like the labels: close to the protocol, not exact (see
    /// [`super::load_prediction`]).
    #[serde(default)]
    pub resized_predictions: usize,
    /// How segments met classes (reports made before `--semantic` existed are Hungarian).
    #[serde(default)]
    pub matching: Matching,
    /// Per-class results, by class index.
    pub classes: Vec<ClassReport>,
}

impl EvalReport {
    /// The report for `scores` on `dataset`.
    pub fn new(
        dataset: Dataset,
        scores: &Scores,
        images_requested: usize,
        source: impl Into<String>,
    ) -> EvalReport {
        let iou = scores.class_iou();
        let classes = (0..NUM_CLASSES)
            .map(|class| ClassReport {
                index: class,
                name: dataset.class_names()[class].to_string(),
                iou: iou[class],
                tp: scores.counts.tp[class],
                fp: scores.counts.fp[class],
                fn_: scores.counts.fn_[class],
            })
            .collect();
        EvalReport {
            dataset: dataset.name().to_string(),
            images_scored: scores.images,
            images_requested,
            labelled_pixels: scores.counts.labelled,
            acc: scores.accuracy(),
            miou: scores.mean_iou(),
            source: source.into(),
            resized_predictions: 0,
            matching: Matching::Hungarian,
            classes,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises") + "\n"
    }

    /// The report as Markdown: a summary table, then one row per class.
    pub fn to_markdown(&self) -> String {
        let title = self
            .dataset
            .parse::<Dataset>()
            .map_or(self.dataset.as_str(), |dataset| dataset.title());
        let mut text = String::new();
        let _ = writeln!(text, "# DiffSeg evaluation on {title}\n");
        let _ = writeln!(
            text,
            "Images scored: {} of {}. Labelled pixels: {}. Predictions: {}.\n",
            self.images_scored, self.images_requested, self.labelled_pixels, self.source
        );
        if self.resized_predictions > 0 {
            let _ = writeln!(
                text,
                "{} predictions were at their image's size and were centre-cropped and \
                 resized to the protocol's grid like the labels: close to the protocol, \
                 not exact.\n",
                self.resized_predictions
            );
        }
        if self.matching == Matching::Names {
            let _ = writeln!(
                text,
                "Segments were named from the class names and compared by name \
                 (open-vocabulary protocol), not matched to classes.\n"
            );
        }
        let _ = writeln!(text, "| metric | % |\n| --- | ---: |");
        let _ = writeln!(text, "| ACC | {} |", percent(self.acc));
        let _ = writeln!(text, "| mIoU | {} |\n", percent(self.miou));
        let _ = writeln!(
            text,
            "| # | class | IoU % | TP | FP | FN |\n| ---: | --- | ---: | ---: | ---: | ---: |"
        );
        for class in &self.classes {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} |",
                class.index,
                class.name,
                percent(class.iou),
                class.tp,
                class.fp,
                class.fn_
            );
        }
        text
    }

    /// Writes the JSON report to `path` (whole or not at all).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        crate::output::write_atomically(path.as_ref(), self.to_json().as_bytes())
    }

    /// Writes the Markdown report to `path` (whole or not at all).
    pub fn write_markdown(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        crate::output::write_atomically(path.as_ref(), self.to_markdown().as_bytes())
    }
}

/// A fraction as a percentage with two decimals, or `n/a` (no pixel).
fn percent(value: Option<f64>) -> String {
    value.map_or_else(
        || "n/a".to_string(),
        |value| format!("{:.2}", value * 100.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metric::score_image;

    #[test]
    fn report_lists_every_class_and_round_trips() {
        let mut scores = Scores::default();
        scores.add(&score_image(&[0, 0, 19, 19], &[1, 1, 1, 0]));
        let report = EvalReport::new(Dataset::Cityscapes, &scores, 3, "predictions/");
        assert_eq!(report.classes.len(), 27);
        assert_eq!(report.classes[19].name, "car");
        assert_eq!(report.acc, Some(0.75));
        let json = report.to_json();
        assert!(json.contains("\"fn\": "), "{json}");
        assert_eq!(serde_json::from_str::<EvalReport>(&json).unwrap(), report);
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("# DiffSeg evaluation on Cityscapes"),
            "{markdown}"
        );
        assert!(markdown.contains("Images scored: 1 of 3."), "{markdown}");
        assert!(markdown.contains("| ACC | 75.00 |"), "{markdown}");
        assert!(
            markdown.contains("| 19 | car | 50.00 | 1 | 0 | 1 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| 3 | rail track | n/a | 0 | 0 | 0 |"),
            "{markdown}"
        );
    }
}
