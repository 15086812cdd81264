//! DiffSeg: unsupervised zero-shot image segmentation with Stable Diffusion
//! (Tian et al., CVPR 2024), on the CPU, WGPU or CUDA.
//!
//! One Stable Diffusion 1.x UNet pass over an image, its self-attention maps
//! aggregated and merged by KL divergence into segments. No prompt, no
//! training, no classes: every segment is a region the model attends to as one.
//!
//! ```no_run
//! use diffseg::{BackendKind, Segmenter};
//!
//! # fn main() -> Result<(), diffseg::Error> {
//! // Loads SD 1.5 from $DIFFSEG_WEIGHTS or the Hugging Face cache, else downloads it.
//! let segmenter = Segmenter::new(BackendKind::Cpu)?;
//! let image = diffseg::open_image("examples/images/astronaut.png")?;
//! let segmentation = segmenter.segment(&image)?;
//! for segment in segmentation.segments() {
//!     println!("segment {}: {} pixels, box {:?}", segment.label, segment.area, segment.bbox);
//! }
//! segmentation.save_overlay(&image, "astronaut.overlay.png")?;
//! # Ok(()) }
//! ```
//!
//! Every choice has a builder method:
//!
//! ```no_run
//! use diffseg::{BackendKind, Fit, MergeOptions, Precision, Segmenter};
//!
//! # fn main() -> Result<(), diffseg::Error> {
//! let segmenter = Segmenter::builder()
//!     .backend(BackendKind::Wgpu)
//!     .weights("/models/stable-diffusion-v1-4") // or .model(diffseg::weights::PAPER_MODEL)
//!     .precision(Precision::F16)
//!     .fit(Fit::CenterCrop) // the paper's protocol; the default Fit::Pad labels every pixel
//!     .merge_options(MergeOptions::default().with_tau(0.9))
//!     .build()?;
//! # let _ = segmenter; Ok(()) }
//! ```
//!
//! A [`Segmenter`] is `Send + Sync`: one can serve every thread of a program.
//! Programs that use Burn themselves can instead load a [`Pipeline`] on the
//! backend type and device of their choice.
//!
//! Modules: [`weights`] (finding and downloading weights), [`backend`] (the
//! Burn backend types for a [`Pipeline`]), [`eval`] (the paper's evaluation
//! protocol). Everything else is here at the root. The algorithm lives in
//! `diffseg-core`, the networks in `diffseg-sd`.

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

// A dependency only for its default `simd` and `multi-threads` features, which Burn's
// CPU backend needs to use every core with SIMD (see the workspace manifest).
#[cfg(feature = "ndarray")]
use burn_ndarray as _;

mod attention;
pub mod backend;
mod error;
pub mod eval;
mod features;
mod hub;
mod input;
mod method;
mod naming;
mod output;
mod pipeline;
mod segmentation;
mod segmenter;
mod timing;
mod vocabulary;
pub mod weights;

pub use attention::{is_diffseg_attention, SelfAttention, SelfAttentionMap};
pub use backend::{BackendKind, BackendTask, BackendUnavailable, Precision};
pub use diffseg_core::{CutOptions, FeatureMap, MergeOptions};
pub use error::Error;
pub use features::{
    FeatureOptions, Features, DEFAULT_FEATURE_SEED, DIFFCUT_INPUT_SIZE, DIFFCUT_TIMESTEP,
    FEATURES_TENSOR,
};
pub use input::{
    open_image, open_image_allowing_damage, planar_rgb, Fit, ImageLimits, Placement,
    DEFAULT_MAX_PIXELS, MAX_IMAGE_SIDE,
};
pub use method::{DiffCutOptions, Method, MethodKind, MethodSettings};
pub use naming::{NameScore, SegmentName, DEFAULT_TOP_K};
pub use output::{
    check_result, commit_in_order, is_diffseg_png, is_json_of, read_label_png, refuse_foreign,
    refuse_input_as_output, resolved_path, stage_file, write_atomically, write_json_atomically,
    CocoRle, DiffCutSettings, FileRecord, JsonStyle, NamingSettings, OutputKind, OutputKinds,
    ResultPaths, ResultState, SegmentRecord, SegmentSettings, SegmentsFile, StagedFile,
};
pub use pipeline::{Pipeline, TIMESTEP};
pub use segmentation::{palette_colour, BoundingBox, OverlayStyle, Segment, Segmentation};
pub use segmenter::{Segmenter, SegmenterBuilder};
pub use timing::StageTimes;
pub use vocabulary::{
    EntryColumns, Vocabulary, VocabularyError, VocabularyPreset, VocabularyPrompt, MAX_ENTRIES,
    MAX_ENTRY_BYTES, MAX_TEMPLATE_BYTES,
};
