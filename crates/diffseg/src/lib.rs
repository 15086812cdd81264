//! DiffSeg: unsupervised zero-shot image segmentation with Stable Diffusion.

pub mod backend;
pub mod eval;

pub use backend::{BackendKind, BackendTask, BackendUnavailable};
