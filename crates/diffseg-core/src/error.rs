//! The one error type of diffseg-core.

/// Everything that can go wrong in diffseg-core, each naming what it was about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor does not have the shape its role needs.
    #[error("{tensor}: expected shape {expected}, got {actual:?}")]
    Shape {
        /// Which tensor (e.g. `attention 32x32`).
        tensor: String,
        /// The shape that was expected, in words.
        expected: String,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// Attention maps that cannot be combined (none, or grids that do not divide the largest).
    #[error("attention maps: {0}")]
    Maps(String),
    /// Attention rows that are not probability distributions.
    #[error("{tensor}: row {row} is not a probability distribution ({problem})")]
    NotDistribution {
        /// Which tensor.
        tensor: String,
        /// The first offending row.
        row: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Merge options out of range.
    #[error("invalid merge options: {0}")]
    Options(String),
    /// DiffCut options out of range.
    #[error("invalid cut options: {0}")]
    CutOptions(String),
    /// DiffCut features that cannot be cut (non-finite values, a pixel with no affinity).
    #[error("features: {0}")]
    Features(String),
    /// A label or segment index out of range.
    #[error("segment {index} does not exist: the segmentation has {count} segments")]
    NoSuchSegment {
        /// Asked-for segment.
        index: usize,
        /// Number of segments.
        count: usize,
    },
    /// An image, label map or output size that does not fit.
    #[error("{0}")]
    Size(String),
}
