//! What can go wrong while evaluating: every error names the file or folder.

use std::path::PathBuf;

/// An evaluation error. Each variant names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A folder of the dataset's official layout, or the predictions folder, is not there.
    #[error("folder {path} does not exist: {hint}")]
    MissingFolder {
        /// The folder looked for.
        path: PathBuf,
        /// What the folder should hold and where it comes from.
        hint: String,
    },
    /// The dataset folder holds no image to evaluate.
    #[error("no {what} found under {path}")]
    EmptyDataset {
        /// The folder searched.
        path: PathBuf,
        /// What was looked for.
        what: String,
    },
    /// A ground-truth label file of the dataset is missing.
    #[error(
        "label file {path} is missing for image `{id}` ({missing} of {total} images have none)"
    )]
    MissingLabel {
        /// The first label file looked for and not found.
        path: PathBuf,
        /// Its image.
        id: String,
        /// How many images have no label file.
        missing: usize,
        /// How many images were to be scored.
        total: usize,
    },
    /// No prediction for an image of the dataset.
    #[error(
        "prediction {path} is missing for image `{id}` ({missing} of {total} images have none)"
    )]
    MissingPrediction {
        /// The first prediction file looked for and not found.
        path: PathBuf,
        /// Its image.
        id: String,
        /// How many images have no prediction.
        missing: usize,
        /// How many images were to be scored.
        total: usize,
    },
    /// A prediction PNG of a size that cannot be compared with its labels.
    #[error("prediction {path} is {width}×{height}, expected {expected}")]
    PredictionSize {
        /// The prediction file.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The size or sizes accepted, and why.
        expected: String,
    },
    /// A prediction PNG that is not a single-channel 8- or 16-bit label map.
    #[error("prediction {path} is {found}: expected a greyscale 8- or 16-bit PNG whose pixels are segment indices")]
    PredictionFormat {
        /// The prediction file.
        path: PathBuf,
        /// The colour type found.
        found: String,
    },
    /// An image whose label map has another size.
    #[error("image {image} is {image_width}×{image_height} but its labels {label} are {label_width}×{label_height}")]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// The image's width.
        image_width: u32,
        /// The image's height.
        image_height: u32,
        /// The label file.
        label: PathBuf,
        /// The labels' width.
        label_width: u32,
        /// The labels' height.
        label_height: u32,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A PNG that cannot be decoded or encoded.
    #[error("{path}: {error}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        error: image::ImageError,
    },
    /// A report or prediction file that cannot be written.
    #[error(transparent)]
    Write(#[from] crate::Error),
    /// An image id list that cannot be used.
    #[error("image list {path}: {reason}")]
    ImageList {
        /// The list file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl EvalError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> EvalError {
        EvalError::Io {
            path: path.into(),
            error: source,
        }
    }

    /// An image decoding or encoding error on `path`.
    pub(crate) fn image(path: impl Into<PathBuf>, source: image::ImageError) -> EvalError {
        EvalError::Image {
            path: path.into(),
            error: source,
        }
    }
}
