//! DiffSeg: unsupervised zero-shot image segmentation with Stable Diffusion.

pub mod backend;

pub use backend::{BackendKind, BackendTask, BackendUnavailable};
