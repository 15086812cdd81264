//! [`Segmenter`]: the model loaded on a backend chosen at run time, and what
//! users call.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use diffseg_core::{MergeOptions, Segmentation};
use diffseg_sd::weights::{Variant, WeightsSource};
use image::DynamicImage;

use crate::attention::SelfAttention;
use crate::input::{prepare_image, Fit, ModelInput};
use crate::pipeline::{Pipeline, Target};
use crate::timing::StageTimes;
use crate::weights::{resolve_weights, FoundWeights, DEFAULT_MODEL};
use crate::{BackendKind, BackendTask, Error, Precision};

/// The backend-independent face of [`Pipeline`], so a [`Segmenter`] can hold a
/// pipeline on whichever backend was chosen at run time.
trait LoadedPipeline {
    fn input_size(&self) -> usize;
    fn segment(
        &self,
        inputs: &[ModelInput],
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error>;
    fn attention(&self, input: &ModelInput) -> Result<SelfAttention, Error>;
    fn times(&self) -> std::sync::MutexGuard<'_, StageTimes>;
}

impl<B: Backend> LoadedPipeline for Pipeline<B> {
    fn input_size(&self) -> usize {
        Pipeline::input_size(self)
    }

    fn segment(
        &self,
        inputs: &[ModelInput],
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error> {
        Pipeline::segment(self, inputs, options, target)
    }

    fn attention(&self, input: &ModelInput) -> Result<SelfAttention, Error> {
        Pipeline::attention(self, input)
    }

    fn times(&self) -> std::sync::MutexGuard<'_, StageTimes> {
        Pipeline::times(self)
    }
}

/// Loads a [`Pipeline`] on the backend [`BackendKind::run_in`] picks.
struct Load {
    source: WeightsSource,
}

impl BackendTask for Load {
    type Output = Result<Box<dyn LoadedPipeline>, Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        Ok(Box::new(Pipeline::<B>::load(&self.source, device)?))
    }
}

/// Segments images with DiffSeg: one Stable Diffusion pass per image, its
/// self-attention merged into segments.
///
/// ```no_run
/// # fn main() -> Result<(), diffseg::Error> {
/// let segmenter = diffseg::Segmenter::new(diffseg::BackendKind::Cpu)?;
/// let image = diffseg::open_image("photo.jpg".as_ref())?;
/// let segmentation = segmenter.segment(&image)?;
/// println!("{} segments", segmentation.segment_count());
/// # Ok(()) }
/// ```
pub struct Segmenter {
    pipeline: Box<dyn LoadedPipeline>,
    weights: FoundWeights,
    backend: BackendKind,
    precision: Precision,
    fit: Fit,
    options: MergeOptions,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("weights", &self.weights)
            .field("backend", &self.backend)
            .field("precision", &self.precision)
            .field("fit", &self.fit)
            .field("options", &self.options)
            .field("input_size", &self.pipeline.input_size())
            .finish()
    }
}

impl Segmenter {
    /// Loads the default model (weights found as [`crate::weights`] describes)
    /// on `backend`, with the paper's merging options.
    pub fn new(backend: BackendKind) -> Result<Segmenter, Error> {
        Segmenter::builder().backend(backend).build()
    }

    /// A builder for every other choice.
    pub fn builder() -> SegmenterBuilder {
        SegmenterBuilder::default()
    }

    /// Segments one image; the result has the image's own size.
    pub fn segment(&self, image: &DynamicImage) -> Result<Segmentation, Error> {
        Ok(self.segment_batch(std::slice::from_ref(image))?.remove(0))
    }

    /// Segments images as one batch on the device; each result has its
    /// image's own size.
    pub fn segment_batch(&self, images: &[DynamicImage]) -> Result<Vec<Segmentation>, Error> {
        self.run(images, Target::Image)
    }

    /// Segments one image on the model's square input grid (e.g. 512×512) of
    /// the fitted image, without mapping back: with [`Fit::CenterCrop`] this is
    /// exactly the paper's evaluation protocol (method §1 and §6).
    pub fn segment_model_input(&self, image: &DynamicImage) -> Result<Segmentation, Error> {
        Ok(self
            .run(std::slice::from_ref(image), Target::ModelInput)?
            .remove(0))
    }

    /// Batch form of [`Segmenter::segment_model_input`].
    pub fn segment_model_input_batch(
        &self,
        images: &[DynamicImage],
    ) -> Result<Vec<Segmentation>, Error> {
        self.run(images, Target::ModelInput)
    }

    /// The image's self-attention averaged over heads and layers per
    /// resolution (method §3), before any merging.
    pub fn attention(&self, image: &DynamicImage) -> Result<SelfAttention, Error> {
        let input = prepare_image(image, self.pipeline.input_size(), self.fit)?;
        self.pipeline.attention(&input)
    }

    fn run(&self, images: &[DynamicImage], target: Target) -> Result<Vec<Segmentation>, Error> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let start = std::time::Instant::now();
        let inputs = images
            .iter()
            .map(|image| prepare_image(image, self.pipeline.input_size(), self.fit))
            .collect::<Result<Vec<_>, Error>>()?;
        self.pipeline.times().prepare += start.elapsed();
        self.pipeline.segment(&inputs, &self.options, target)
    }

    /// Wall time per stage since the model was loaded (loading included),
    /// summed over every call: what a run spent where.
    pub fn stage_times(&self) -> StageTimes {
        *self.pipeline.times()
    }

    /// The side of the model's square input in pixels (512 for SD 1.x).
    pub fn input_size(&self) -> usize {
        self.pipeline.input_size()
    }

    /// Where the weights were found.
    pub fn weights(&self) -> &FoundWeights {
        &self.weights
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The compute precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How non-square images are fitted.
    pub fn fit(&self) -> Fit {
        self.fit
    }

    /// The merging options.
    pub fn merge_options(&self) -> &MergeOptions {
        &self.options
    }

    /// Changes the merging options (no reload: they apply after the model).
    pub fn set_merge_options(&mut self, options: MergeOptions) -> Result<(), Error> {
        options.validate()?;
        self.options = options;
        Ok(())
    }

    /// Changes how non-square images are fitted.
    pub fn set_fit(&mut self, fit: Fit) {
        self.fit = fit;
    }
}

/// Builds a [`Segmenter`]: backend, weights, model, precision, fit and merging
/// options, each with a default (CPU, weights found automatically,
/// [`DEFAULT_MODEL`], f32, [`Fit::Pad`], the paper's options).
#[derive(Debug, Clone)]
pub struct SegmenterBuilder {
    backend: BackendKind,
    weights: Option<PathBuf>,
    model: String,
    precision: Precision,
    fit: Fit,
    options: MergeOptions,
    allow_download: bool,
}

impl Default for SegmenterBuilder {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            weights: None,
            model: DEFAULT_MODEL.to_string(),
            precision: Precision::default(),
            fit: Fit::default(),
            options: MergeOptions::default(),
            allow_download: true,
        }
    }
}

impl SegmenterBuilder {
    /// The backend to run on.
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Weights at this path (a diffusers folder or a single-file
    /// `.safetensors` checkpoint) instead of looking them up.
    pub fn weights(mut self, path: impl AsRef<Path>) -> Self {
        self.weights = Some(path.as_ref().to_path_buf());
        self
    }

    /// The Hugging Face model id to look up or download
    /// (e.g. [`crate::weights::PAPER_MODEL`]).
    pub fn model(mut self, id: impl Into<String>) -> Self {
        self.model = id.into();
        self
    }

    /// The compute precision (f16 on GPU backends only).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// How non-square images are fitted to the model's square input.
    pub fn fit(mut self, fit: Fit) -> Self {
        self.fit = fit;
        self
    }

    /// The merging options (τ per iteration, anchors, iterations, refinement).
    pub fn merge_options(mut self, options: MergeOptions) -> Self {
        self.options = options;
        self
    }

    /// Whether missing weights may be downloaded (default yes).
    pub fn allow_download(mut self, allow: bool) -> Self {
        self.allow_download = allow;
        self
    }

    /// Finds (or downloads) the weights and loads the model on the backend.
    pub fn build(self) -> Result<Segmenter, Error> {
        self.options.validate()?;
        let weights = resolve_weights(self.weights.as_deref(), &self.model, self.allow_download)?;
        let source = WeightsSource::detect(&weights.path).map_err(|error| Error::Load {
            path: weights.path.clone(),
            source: Box::new(error),
        })?;
        // Read the stored half-precision files directly when computing in f16.
        let source = match self.precision {
            Precision::F16 => source.with_variant(Variant::F16),
            Precision::F32 => source,
        };
        let pipeline = self.backend.run_in(self.precision, Load { source })??;
        Ok(Segmenter {
            pipeline,
            weights,
            backend: self.backend,
            precision: self.precision,
            fit: self.fit,
            options: self.options,
        })
    }
}
