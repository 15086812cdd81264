//! [`Segmenter`]: the model loaded on a backend chosen at run time, and what
//! users call.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use burn::tensor::backend::Backend;
use diffseg_core::MergeOptions;
use image::DynamicImage;

use crate::attention::SelfAttention;
use crate::input::Fit;
use crate::pipeline::{Pipeline, Target};
use crate::segmentation::Segmentation;
use crate::timing::StageTimes;
use crate::weights::{
    locate, resolve_weights, ConsoleProgress, FileVariant, FoundWeights, HubModel, HubSettings,
    ResolvedWeights, DEFAULT_MODEL, DEFAULT_REVISION,
};
use crate::{BackendKind, BackendTask, Error, Precision};

/// The backend-independent face of [`Pipeline`], so a [`Segmenter`] can hold a
/// pipeline on whichever backend was chosen at run time.
trait LoadedPipeline: Send {
    fn input_size(&self) -> usize;
    fn segment(
        &self,
        images: &[DynamicImage],
        fit: Fit,
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error>;
    fn attention(&self, image: &DynamicImage, fit: Fit) -> Result<SelfAttention, Error>;
    fn stage_times(&self) -> StageTimes;
    /// Another handle on the same weights, for another thread.
    fn clone_box(&self) -> Box<dyn LoadedPipeline>;
}

impl<B: Backend> LoadedPipeline for Pipeline<B> {
    fn input_size(&self) -> usize {
        Pipeline::input_size(self)
    }

    fn segment(
        &self,
        images: &[DynamicImage],
        fit: Fit,
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error> {
        self.segment_images(images, fit, options, target)
    }

    fn attention(&self, image: &DynamicImage, fit: Fit) -> Result<SelfAttention, Error> {
        Pipeline::attention(self, image, fit)
    }

    fn stage_times(&self) -> StageTimes {
        Pipeline::stage_times(self)
    }

    fn clone_box(&self) -> Box<dyn LoadedPipeline> {
        Box::new(self.clone())
    }
}

/// Loads a [`Pipeline`] on the backend [`BackendKind::run_in`] picks.
struct Load<'a> {
    weights: &'a ResolvedWeights,
}

impl BackendTask for Load<'_> {
    type Output = Result<Box<dyn LoadedPipeline>, Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        Ok(Box::new(Pipeline::<B>::load_opened(
            self.weights.opened(),
            device,
        )?))
    }
}

/// Handles on one loaded model, one per thread using it at a time: Burn
/// modules are `Send` but not `Sync`, and their clones share the weights, so
/// concurrent callers each take a handle (cloning one when all are busy)
/// instead of queueing behind a lock.
struct PipelinePool {
    idle: Mutex<Vec<Box<dyn LoadedPipeline>>>,
    input_size: usize,
}

impl PipelinePool {
    fn new(pipeline: Box<dyn LoadedPipeline>) -> Self {
        Self {
            input_size: pipeline.input_size(),
            idle: Mutex::new(vec![pipeline]),
        }
    }

    /// Runs `work` on an idle handle, or a fresh clone of one when every
    /// handle is busy (an idle list is never empty between calls: a handle is
    /// only taken out while it is in use).
    fn with<R>(&self, work: impl FnOnce(&dyn LoadedPipeline) -> R) -> R {
        let pipeline = {
            let mut idle = self.idle();
            match idle.len() {
                1 => idle[0].clone_box(),
                _ => idle.pop().expect("the idle list keeps one handle"),
            }
        };
        let output = work(pipeline.as_ref());
        self.idle().push(pipeline);
        output
    }

    /// The idle handles (a poisoned lock only means a panic in another
    /// caller's work, which held no handle borrowed from the list).
    fn idle(&self) -> MutexGuard<'_, Vec<Box<dyn LoadedPipeline>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Segments images with DiffSeg: one Stable Diffusion pass per image, its
/// self-attention merged into segments.
///
/// ```no_run
/// # fn main() -> Result<(), diffseg::Error> {
/// let segmenter = diffseg::Segmenter::new(diffseg::BackendKind::Cpu)?;
/// let image = diffseg::open_image("photo.jpg")?;
/// let segmentation = segmenter.segment(&image)?;
/// println!("{} segments", segmentation.segment_count());
/// # Ok(()) }
/// ```
///
/// A `Segmenter` is `Send + Sync`: share one (e.g. in an `Arc`) between
/// threads and call it from all of them at once; the weights are loaded once.
pub struct Segmenter {
    pipelines: PipelinePool,
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
            .field("input_size", &self.pipelines.input_size)
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
    /// exactly the paper's evaluation protocol (docs/method.md §1 and §6).
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
    /// resolution (docs/method.md §3), before any merging.
    pub fn attention(&self, image: &DynamicImage) -> Result<SelfAttention, Error> {
        self.pipelines
            .with(|pipeline| pipeline.attention(image, self.fit))
    }

    fn run(&self, images: &[DynamicImage], target: Target) -> Result<Vec<Segmentation>, Error> {
        self.pipelines
            .with(|pipeline| pipeline.segment(images, self.fit, &self.options, target))
    }

    /// Wall time per stage since the model was loaded (loading included),
    /// summed over every call from every thread: what a run spent where.
    pub fn stage_times(&self) -> StageTimes {
        // The totals are shared by every handle: read an idle one, no need to take it.
        self.pipelines.idle()[0].stage_times()
    }

    /// The side of the model's square input in pixels (512 for SD 1.x).
    pub fn input_size(&self) -> usize {
        self.pipelines.input_size
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
/// [`DEFAULT_MODEL`] at [`DEFAULT_REVISION`], f32, [`Fit::Pad`], the paper's
/// options; the Hub as the environment describes it). Its `Debug` never shows
/// the Hub token.
#[derive(Debug, Clone)]
pub struct SegmenterBuilder {
    backend: BackendKind,
    weights: Option<PathBuf>,
    model: String,
    revision: String,
    variant: Option<FileVariant>,
    hub: Option<HubSettings>,
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
            revision: DEFAULT_REVISION.to_string(),
            variant: None,
            hub: None,
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

    /// The model's branch, tag or commit hash to look up or download.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// The weight files to download and read where the repository has both
    /// (default: the compute precision's, [`FileVariant::for_precision`]).
    pub fn variant(mut self, variant: FileVariant) -> Self {
        self.variant = Some(variant);
        self
    }

    /// How to reach the Hub and where its cache is (default:
    /// [`HubSettings::from_env`], read when building).
    pub fn hub(mut self, settings: HubSettings) -> Self {
        self.hub = Some(settings);
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

    /// The file variant read and downloaded: the one asked for, else the
    /// compute precision's.
    fn file_variant(&self) -> FileVariant {
        self.variant
            .unwrap_or(FileVariant::for_precision(self.precision))
    }

    /// The model on the Hub, at this builder's revision and variant.
    fn hub_model(&self) -> HubModel {
        HubModel {
            id: self.model.clone(),
            revision: self.revision.clone(),
            variant: self.file_variant(),
            settings: self.hub.clone().unwrap_or_else(HubSettings::from_env),
        }
    }

    /// The weights [`Self::build`] would load if they are on disk already
    /// (the explicit path, `DIFFSEG_WEIGHTS`, the Hugging Face cache at this
    /// builder's revision), opened; `Ok(None)` when they are still to be
    /// downloaded. Makes no request. Pass them to [`Self::build_with`].
    pub fn locate_weights(&self) -> Result<Option<ResolvedWeights>, Error> {
        locate(self.weights.as_deref(), &self.hub_model())?
            .map(|found| ResolvedWeights::open(found, self.file_variant()))
            .transpose()
    }

    /// The weights found, else downloaded (when allowed, with progress on
    /// standard error), and opened.
    pub fn resolve_weights(&self) -> Result<ResolvedWeights, Error> {
        let found = resolve_weights(
            self.weights.as_deref(),
            &self.hub_model(),
            self.allow_download,
            &mut ConsoleProgress::default(),
        )?;
        ResolvedWeights::open(found, self.file_variant())
    }

    /// Finds (or downloads) the weights and loads the model on the backend.
    pub fn build(self) -> Result<Segmenter, Error> {
        self.options.validate()?;
        let weights = self.resolve_weights()?;
        self.build_with(weights)
    }

    /// Loads the model on the backend from weights resolved before (by
    /// [`Self::locate_weights`] or [`Self::resolve_weights`]), without
    /// looking them up or opening them again.
    pub fn build_with(self, weights: ResolvedWeights) -> Result<Segmenter, Error> {
        self.options.validate()?;
        let pipeline = self
            .backend
            .run_in(self.precision, Load { weights: &weights })??;
        Ok(Segmenter {
            pipelines: PipelinePool::new(pipeline),
            weights: weights.found().clone(),
            backend: self.backend,
            precision: self.precision,
            fit: self.fit,
            options: self.options,
        })
    }
}
