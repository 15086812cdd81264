//! Command-line options shared by every command that runs the model or merges
//! attention.

use std::path::PathBuf;

use diffseg::weights::{FileVariant, DEFAULT_MODEL, DEFAULT_REVISION};
use diffseg::{BackendKind, Fit, ImageLimits, MergeOptions, Precision, SegmenterBuilder};

/// Where the model runs and which weights it loads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Compute backend: cpu, wgpu, wgpu:N (adapter N of `diffseg info`), wgpu:NAME (the first
    /// adapter whose description contains NAME, e.g. nvidia), cuda or cuda:N (each needs its
    /// Cargo feature).
    #[arg(long, default_value = "cpu", value_name = "BACKEND")]
    pub backend: BackendKind,
    /// Weights: a diffusers folder or a single-file .safetensors checkpoint
    /// (default: $DIFFSEG_WEIGHTS, then the Hugging Face cache, then a download).
    #[arg(long, value_name = "PATH")]
    pub weights: Option<PathBuf>,
    /// Hugging Face model id to look up in the cache or download.
    #[arg(long, default_value = DEFAULT_MODEL, value_name = "ID")]
    pub model: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Weight files to download where the model repository has both: fp16
    /// (half the download) or full [default: the files --precision computes
    /// in: full for f32, fp16 for f16].
    #[arg(long, value_name = "fp16|full")]
    pub variant: Option<FileVariant>,
    /// Compute precision: f32, or f16 on GPU backends (wgpu, cuda).
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    pub precision: Precision,
    /// How a non-square image is fitted to the model's square input:
    /// pad (every pixel gets a segment) or center-crop (the paper's protocol).
    #[arg(long, default_value = "pad", value_name = "pad|center-crop")]
    pub fit: Fit,
    /// Never download weights; fail with a list of the files needed instead.
    #[arg(long)]
    pub offline: bool,
    /// The most pixels (width × height) an image may have; larger ones are refused from
    /// their header, before decoding (an image costs memory in proportion to its pixels:
    /// decoded, and its label map at its own size). Default: 64 megapixels (67108864).
    #[arg(long, default_value_t = diffseg::DEFAULT_MAX_PIXELS, value_name = "N")]
    pub max_pixels: u64,
}

/// The merging options of docs/method.md §5 (the paper's values by default).
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// KL threshold τ: one value for every iteration, or one per iteration,
    /// comma-separated (1.1 for COCO-Stuff-27, 0.9 for Cityscapes). Smaller
    /// values give more, smaller segments.
    #[arg(long, value_delimiter = ',', default_value = "1.1", value_name = "TAU")]
    pub tau: Vec<f32>,
    /// Anchors per side of the anchor grid (M): M×M starting points of the merging.
    #[arg(long, default_value_t = 16, value_name = "M")]
    pub anchors: usize,
    /// Merging iterations (N).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub iterations: usize,
    /// Refine the proposals with one k-means run (off in the paper's benchmarks).
    #[arg(long)]
    pub refine: bool,
}

impl MergeArgs {
    /// The paper's options (τ 1.1, 16 anchors, 3 iterations, no refinement).
    pub fn paper() -> Self {
        let options = MergeOptions::default();
        Self {
            tau: options.tau,
            anchors: options.anchors,
            iterations: options.iterations,
            refine: options.refine,
        }
    }

    /// The options these arguments describe, checked: out of range they are
    /// a usage error, found before any work.
    pub fn checked_options(&self) -> anyhow::Result<MergeOptions> {
        let options = self.to_options();
        options.validate().map_err(crate::exit::usage)?;
        Ok(options)
    }

    /// The options these arguments describe.
    pub fn to_options(&self) -> MergeOptions {
        MergeOptions::default()
            .with_taus(self.tau.clone())
            .with_anchors(self.anchors)
            .with_iterations(self.iterations)
            .with_refine(self.refine)
    }
}

impl ModelArgs {
    /// A segmenter builder with these options (and the merge options given).
    pub fn builder(&self, merge: &MergeArgs) -> SegmenterBuilder {
        let mut builder = diffseg::Segmenter::builder()
            .backend(self.backend)
            .model(&self.model)
            .revision(&self.hub.revision)
            .precision(self.precision)
            .fit(self.fit)
            .allow_download(!self.offline)
            .max_pixels(self.max_pixels)
            .merge_options(merge.to_options());
        if let Some(variant) = self.variant {
            builder = builder.variant(variant);
        }
        if let Some(weights) = &self.weights {
            builder = builder.weights(weights);
        }
        builder
    }

    /// The limits `--max-pixels` sets, for opening images before a segmenter exists.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits::default().with_max_pixels(self.max_pixels)
    }
}

/// Which revision of a Hugging Face model to look up or download.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Branch, tag or commit hash of the model repository.
    #[arg(long, default_value = DEFAULT_REVISION, value_name = "REV")]
    pub revision: String,
}
