//! [`Segmenter`]: the model loaded on a backend chosen at run time, and what
//! users call.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use burn::tensor::backend::Backend;
use diffseg_core::{CutOptions, MergeOptions};
use diffseg_sd::ClipTokenizer;
use image::DynamicImage;

use crate::attention::SelfAttention;
use crate::features::{FeatureOptions, Features};
use crate::input::{Fit, ImageLimits, DEFAULT_MAX_PIXELS};
use crate::method::Method;
use crate::naming::DEFAULT_TOP_K;
use crate::pipeline::{Pipeline, Target};
use crate::segmentation::Segmentation;
use crate::timing::StageTimes;
use crate::vocabulary::{Vocabulary, VocabularyError};
use crate::weights::{
    load_tokenizer, locate, resolve_weights, ConsoleProgress, DownloadProgress, FileVariant,
    FoundWeights, HubModel, HubSettings, ResolvedWeights, WeightsOrigin, DEFAULT_MODEL,
    DEFAULT_REVISION, TOKENIZER_DIR,
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
    fn features(
        &self,
        image: &DynamicImage,
        fit: Fit,
        options: &FeatureOptions,
    ) -> Result<Features, Error>;
    fn segment_diffcut(
        &self,
        image: &DynamicImage,
        fit: Fit,
        feature_options: &FeatureOptions,
        cut_options: &CutOptions,
        target: Target,
    ) -> Result<Segmentation, Error>;
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

    fn features(
        &self,
        image: &DynamicImage,
        fit: Fit,
        options: &FeatureOptions,
    ) -> Result<Features, Error> {
        Pipeline::features(self, image, fit, options)
    }

    fn segment_diffcut(
        &self,
        image: &DynamicImage,
        fit: Fit,
        feature_options: &FeatureOptions,
        cut_options: &CutOptions,
        target: Target,
    ) -> Result<Segmentation, Error> {
        self.segment_diffcut_to(image, fit, feature_options, cut_options, target)
    }

    fn stage_times(&self) -> StageTimes {
        Pipeline::stage_times(self)
    }

    fn clone_box(&self) -> Box<dyn LoadedPipeline> {
        Box::new(self.clone())
    }
}

/// Loads a [`Pipeline`] on the backend [`BackendKind::run_in`] picks, naming segments from
/// `naming`'s vocabulary (read with its tokenizer) when given one.
struct Load<'a> {
    weights: &'a ResolvedWeights,
    naming: Option<(&'a Naming, ClipTokenizer)>,
}

impl BackendTask for Load<'_> {
    type Output = Result<Box<dyn LoadedPipeline>, Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let pipeline = Pipeline::<B>::load_opened(self.weights.opened(), device)?;
        Ok(Box::new(match self.naming {
            Some((naming, tokenizer)) => {
                pipeline.with_vocabulary(&naming.vocabulary, &tokenizer, naming.top_k)?
            }
            None => pipeline,
        }))
    }
}

/// What segments are named from: a vocabulary, and how many best entries each keeps.
#[derive(Debug, Clone, PartialEq)]
struct Naming {
    vocabulary: Vocabulary,
    top_k: usize,
}

/// DiffCut's pass stops at its hooked layer, before most cross-attention layers: it cannot
/// name segments.
fn check_naming(method: &Method, naming: Option<&Naming>) -> Result<(), Error> {
    match (method, naming) {
        (Method::DiffCut(_), Some(_)) => Err(Error::IncompatibleOptions(
            "naming segments with DiffCut: its UNet pass stops before most cross-attention \
             layers; name segments with DiffSeg, or leave out the vocabulary"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Handles on one loaded model, one per run in progress, at most `max_runs`:
/// Burn modules are `Send` but not `Sync`, and their clones share the weights,
/// so concurrent callers each take a handle (a fresh clone of the template while
/// fewer than `max_runs` exist). Each run holds its own activations, so callers
/// beyond the cap wait for a handle instead of allocating another set.
struct PipelinePool {
    handles: Mutex<Handles>,
    /// Signalled whenever a handle comes back (or is dropped after a panic).
    returned: Condvar,
    max_runs: usize,
    input_size: usize,
}

/// The pool's handles behind its lock.
struct Handles {
    /// Never lent: cloned for each new handle, and read for the shared stage times.
    template: Box<dyn LoadedPipeline>,
    /// Handles not in use.
    idle: Vec<Box<dyn LoadedPipeline>>,
    /// Handles that exist (idle or lent), at most `max_runs`.
    count: usize,
}

impl PipelinePool {
    fn new(pipeline: Box<dyn LoadedPipeline>, max_runs: usize) -> Self {
        Self {
            input_size: pipeline.input_size(),
            handles: Mutex::new(Handles {
                template: pipeline,
                idle: Vec::new(),
                count: 0,
            }),
            returned: Condvar::new(),
            max_runs,
        }
    }

    /// Runs `work` on an idle handle, a new one while fewer than `max_runs`
    /// exist, or else the first one returned (waiting for it).
    fn with<R>(&self, work: impl FnOnce(&dyn LoadedPipeline) -> R) -> R {
        let lent = Lent {
            pool: self,
            pipeline: Some(self.take()),
        };
        let pipeline = lent.pipeline.as_deref().expect("held until dropped");
        work(pipeline)
    }

    fn take(&self) -> Box<dyn LoadedPipeline> {
        let mut handles = self.handles();
        loop {
            if let Some(pipeline) = handles.idle.pop() {
                return pipeline;
            }
            if handles.count < self.max_runs {
                handles.count += 1;
                return handles.template.clone_box();
            }
            handles = self
                .returned
                .wait(handles)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The handles (a poisoned lock only means a panic in another caller while
    /// it held the lock, which never happens mid-update of the list).
    fn handles(&self) -> MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle lent by the pool, given back when dropped, also when the work
/// panicked (then it is dropped and its place freed: it may be mid-run).
struct Lent<'a> {
    pool: &'a PipelinePool,
    pipeline: Option<Box<dyn LoadedPipeline>>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let pipeline = self.pipeline.take();
        let mut handles = self.pool.handles();
        match pipeline {
            Some(pipeline) if !std::thread::panicking() => handles.idle.push(pipeline),
            _ => handles.count -= 1,
        }
        drop(handles);
        self.pool.returned.notify_one();
    }
}

/// The default of [`SegmenterBuilder::max_concurrent_runs`] on `backend`: one on
/// the CPU, whose kernels already use every core (a second run only doubles the
/// memory), two on a GPU (one run's CPU work, preparing the image and labelling,
/// overlaps the other's device work).
fn default_max_concurrent_runs(backend: BackendKind) -> usize {
    match backend {
        BackendKind::Cpu => 1,
        _ => 2,
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
/// At most [`SegmenterBuilder::max_concurrent_runs`] calls run at a time (one on
/// the CPU by default, two on a GPU); the others wait for one to finish, so
/// memory stays that of that many runs however many threads call.
///
/// Images are held to [`ImageLimits`] ([`crate::DEFAULT_MAX_PIXELS`] unless
/// raised with [`SegmenterBuilder::max_pixels`]): a larger image gives
/// [`Error::TooManyPixels`] before any work, as its label map alone would take
/// 4 bytes a pixel. Open files with [`Segmenter::image_limits`] to hold them to
/// the same limit before decoding.
pub struct Segmenter {
    pipelines: PipelinePool,
    limits: ImageLimits,
    weights: FoundWeights,
    backend: BackendKind,
    precision: Precision,
    fit: Fit,
    method: Method,
    naming: Option<Naming>,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("weights", &self.weights)
            .field("backend", &self.backend)
            .field("precision", &self.precision)
            .field("fit", &self.fit)
            .field("method", &self.method)
            .field("naming", &self.naming)
            .field("input_size", &self.pipelines.input_size)
            .field("limits", &self.limits)
            .field("max_concurrent_runs", &self.pipelines.max_runs)
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
    /// exactly the paper's evaluation protocol (docs/method.md §1 and §6). With
    /// DiffCut the grid is the mask-size square (128×128 by default) of the fitted
    /// input, PAMR against that input: `eval_diffcut.py`'s labels when the image is
    /// cropped as its data loader does ([`crate::eval::diffcut_crop`]).
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
        self.check_size(std::slice::from_ref(image))?;
        self.pipelines
            .with(|pipeline| pipeline.attention(image, self.fit))
    }

    /// DiffCut's features of the image (docs/method.md §9): the hooked
    /// self-attention's output and where the model's input lies in the image.
    pub fn features(
        &self,
        image: &DynamicImage,
        options: &FeatureOptions,
    ) -> Result<Features, Error> {
        self.check_size(std::slice::from_ref(image))?;
        self.pipelines
            .with(|pipeline| pipeline.features(image, self.fit, options))
    }

    /// Segments the image with DiffCut (docs/method.md §9); the result has the
    /// image's own size.
    pub fn segment_diffcut(
        &self,
        image: &DynamicImage,
        feature_options: &FeatureOptions,
        cut_options: &CutOptions,
    ) -> Result<Segmentation, Error> {
        self.check_size(std::slice::from_ref(image))?;
        self.pipelines.with(|pipeline| {
            pipeline.segment_diffcut(image, self.fit, feature_options, cut_options, Target::Image)
        })
    }

    fn run(&self, images: &[DynamicImage], target: Target) -> Result<Vec<Segmentation>, Error> {
        self.check_size(images)?;
        self.pipelines
            .with(|pipeline| match (&self.method, target) {
                (Method::DiffSeg(options), _) => {
                    pipeline.segment(images, self.fit, options, target)
                }
                // One image at a time: DiffCut's pass is a partial UNet at 1024 pixels.
                (Method::DiffCut(options), target) => images
                    .iter()
                    .map(|image| {
                        pipeline.segment_diffcut(
                            image,
                            self.fit,
                            &options.features,
                            &options.cut,
                            target,
                        )
                    })
                    .collect(),
            })
    }

    /// Checks every image against the pixel limit, before waiting for a handle.
    fn check_size(&self, images: &[DynamicImage]) -> Result<(), Error> {
        images
            .iter()
            .try_for_each(|image| self.limits.check(image.width(), image.height()))
    }

    /// Wall time per stage since the model was loaded (loading included),
    /// summed over every call from every thread: what a run spent where.
    pub fn stage_times(&self) -> StageTimes {
        // The totals are shared by every handle: read the template's.
        self.pipelines.handles().template.stage_times()
    }

    /// The size limits images are held to; [`ImageLimits::open`] opens a file
    /// with them, refusing one too large from its header.
    pub fn image_limits(&self) -> ImageLimits {
        self.limits
    }

    /// The most calls that run at once; more wait.
    pub fn max_concurrent_runs(&self) -> usize {
        self.pipelines.max_runs
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

    /// The method and its options.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// DiffSeg's merging options; `None` when another method runs.
    pub fn merge_options(&self) -> Option<&MergeOptions> {
        match &self.method {
            Method::DiffSeg(options) => Some(options),
            Method::DiffCut(_) => None,
        }
    }

    /// Changes the merging options, and so the method to DiffSeg (no reload: they apply
    /// after the model).
    pub fn set_merge_options(&mut self, options: MergeOptions) -> Result<(), Error> {
        self.set_method(Method::DiffSeg(options))
    }

    /// The vocabulary segments are named from, if any.
    pub fn vocabulary(&self) -> Option<&Vocabulary> {
        self.naming.as_ref().map(|naming| &naming.vocabulary)
    }

    /// How many best entries each named segment keeps.
    pub fn top_k(&self) -> Option<usize> {
        self.naming.as_ref().map(|naming| naming.top_k)
    }

    /// Changes the method (no reload: every method runs on the same loaded model).
    pub fn set_method(&mut self, method: Method) -> Result<(), Error> {
        method.validate()?;
        check_naming(&method, self.naming.as_ref())?;
        self.method = method;
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
    method: Method,
    allow_download: bool,
    max_pixels: u64,
    max_concurrent_runs: Option<usize>,
    vocabulary: Option<Vocabulary>,
    top_k: usize,
    tokenizer: Option<PathBuf>,
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
            method: Method::default(),
            allow_download: true,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_concurrent_runs: None,
            vocabulary: None,
            top_k: DEFAULT_TOP_K,
            tokenizer: None,
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

    /// DiffSeg with these merging options (τ per iteration, anchors, iterations,
    /// refinement): the same as `.method(Method::DiffSeg(options))`.
    pub fn merge_options(mut self, options: MergeOptions) -> Self {
        self.method = Method::DiffSeg(options);
        self
    }

    /// The method and its options (default: the paper's DiffSeg).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Whether missing weights may be downloaded (default yes).
    pub fn allow_download(mut self, allow: bool) -> Self {
        self.allow_download = allow;
        self
    }

    /// The most pixels (width × height) an image may have (default
    /// [`DEFAULT_MAX_PIXELS`], which says why): larger images are refused with a
    /// typed error before any work.
    pub fn max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The most calls of the [`Segmenter`] that run at once, each with its own
    /// activations; callers beyond it wait for one to finish.
    /// Default: 1 on the CPU, whose kernels already use every core, 2 on a GPU
    /// (one run's CPU work overlaps the other's device work). At least 1.
    pub fn max_concurrent_runs(mut self, runs: usize) -> Self {
        self.max_concurrent_runs = Some(runs);
        self
    }

    /// Names every segment from `vocabulary` (docs/method.md §10): its best entry, with
    /// its score and the [`Self::top_k`] best, in [`Segmentation::names`]. The model's own
    /// CLIP tokenizer reads the entries (the diffusers folder's `tokenizer/`, the Hub
    /// snapshot's, or [`Self::tokenizer`]); the text encoder encodes them once, when
    /// building. Without a vocabulary nothing is named and nothing extra is kept or computed.
    /// DiffSeg only: with DiffCut, building is [`Error::IncompatibleOptions`].
    pub fn vocabulary(mut self, vocabulary: Vocabulary) -> Self {
        self.vocabulary = Some(vocabulary);
        self
    }

    /// How many best entries a named segment keeps (default [`DEFAULT_TOP_K`], at least 1).
    pub fn top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }

    /// The CLIP tokenizer folder (`vocab.json`, `merges.txt`) to read the vocabulary with,
    /// instead of the model's own: the way for a single-file checkpoint, which holds none.
    pub fn tokenizer(mut self, folder: impl AsRef<Path>) -> Self {
        self.tokenizer = Some(folder.as_ref().to_path_buf());
        self
    }

    /// The naming asked for, checked against the method and `top_k`.
    fn naming(&self) -> Result<Option<Naming>, Error> {
        let naming = self.vocabulary.clone().map(|vocabulary| Naming {
            vocabulary,
            top_k: self.top_k,
        });
        check_naming(&self.method, naming.as_ref())?;
        if naming.is_some() && self.top_k == 0 {
            return Err(diffseg_core::Error::Options("top_k must be at least 1".into()).into());
        }
        Ok(naming)
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
        self.resolve_weights_with(&mut ConsoleProgress::default())
    }

    /// [`Self::resolve_weights`], telling `progress` how a download goes (and
    /// asking it whether to stop: [`DownloadProgress::interrupted`]).
    pub fn resolve_weights_with(
        &self,
        progress: &mut dyn DownloadProgress,
    ) -> Result<ResolvedWeights, Error> {
        let found = resolve_weights(
            self.weights.as_deref(),
            &self.hub_model(),
            self.allow_download,
            progress,
        )?;
        ResolvedWeights::open(found, self.file_variant())
    }

    /// The cap on concurrent runs, after checking it and the merge options:
    /// the settings that need no model.
    fn max_runs(&self) -> Result<usize, Error> {
        self.method.validate()?;
        self.naming()?;
        let max_runs = self
            .max_concurrent_runs
            .unwrap_or(default_max_concurrent_runs(self.backend));
        if max_runs == 0 {
            return Err(diffseg_core::Error::Options(
                "max_concurrent_runs must be at least 1".into(),
            )
            .into());
        }
        Ok(max_runs)
    }

    /// Finds (or downloads) the weights and loads the model on the backend.
    pub fn build(self) -> Result<Segmenter, Error> {
        self.build_reporting(&mut ConsoleProgress::default())
    }

    /// [`Self::build`], telling `progress` how a download goes (and asking it
    /// whether to stop: [`DownloadProgress::interrupted`]).
    pub fn build_reporting(self, progress: &mut dyn DownloadProgress) -> Result<Segmenter, Error> {
        // Checked before any download, and again by `build_with` for its own callers.
        self.max_runs()?;
        let weights = self.resolve_weights_with(progress)?;
        self.with_hub_tokenizer(&weights, progress)?
            .build_with(weights)
    }

    /// With a vocabulary and Hub weights whose snapshot lacks `tokenizer/`, the builder
    /// reading the Hub's tokenizer, fetched into the cache (plain segmentation never
    /// downloads it; naming needs it). Otherwise the builder as it is.
    fn with_hub_tokenizer(
        self,
        weights: &ResolvedWeights,
        progress: &mut dyn DownloadProgress,
    ) -> Result<Self, Error> {
        let from_hub = matches!(
            weights.found().origin,
            WeightsOrigin::HuggingFaceCache | WeightsOrigin::Downloaded
        );
        let lacks_tokenizer = !weights.found().path.join(TOKENIZER_DIR).is_dir();
        if self.vocabulary.is_some() && self.tokenizer.is_none() && from_hub && lacks_tokenizer {
            let folder = self.hub_model().fetch_tokenizer(progress)?;
            return Ok(self.tokenizer(folder));
        }
        Ok(self)
    }

    /// Loads the model on the backend from weights resolved before (by
    /// [`Self::locate_weights`] or [`Self::resolve_weights`]), without
    /// looking them up or opening them again.
    /// With a vocabulary, a Hub model's tokenizer is fetched here if its snapshot lacks it.
    pub fn build_with(self, weights: ResolvedWeights) -> Result<Segmenter, Error> {
        let max_runs = self.max_runs()?;
        let this = self.with_hub_tokenizer(&weights, &mut ConsoleProgress::default())?;
        let naming = this.naming()?;
        let tokenizer = match &naming {
            Some(_) => Some(
                load_tokenizer(&weights.found().path, this.tokenizer.as_deref())
                    .map_err(VocabularyError::from)?,
            ),
            None => None,
        };
        let pipeline = this.backend.run_in(
            this.precision,
            Load {
                weights: &weights,
                naming: naming.as_ref().zip(tokenizer),
            },
        )??;
        Ok(Segmenter {
            pipelines: PipelinePool::new(pipeline, max_runs),
            limits: ImageLimits::default().with_max_pixels(this.max_pixels),
            weights: weights.found().clone(),
            backend: this.backend,
            precision: this.precision,
            fit: this.fit,
            method: this.method,
            naming,
        })
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// What a pool did with its handles.
    #[derive(Default)]
    struct Counts {
        clones: AtomicUsize,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    /// A real pipeline whose clones and concurrent runs are counted.
    struct Counting {
        inner: Box<dyn LoadedPipeline>,
        counts: Arc<Counts>,
    }

    impl LoadedPipeline for Counting {
        fn input_size(&self) -> usize {
            self.inner.input_size()
        }

        fn segment(
            &self,
            images: &[DynamicImage],
            fit: Fit,
            options: &MergeOptions,
            target: Target,
        ) -> Result<Vec<Segmentation>, Error> {
            let running = self.counts.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.counts
                .most_running
                .fetch_max(running, Ordering::SeqCst);
            // Long enough that every thread arrives while runs are in progress.
            std::thread::sleep(Duration::from_millis(50));
            let output = self.inner.segment(images, fit, options, target);
            self.counts.running.fetch_sub(1, Ordering::SeqCst);
            output
        }

        fn attention(&self, image: &DynamicImage, fit: Fit) -> Result<SelfAttention, Error> {
            self.inner.attention(image, fit)
        }

        fn features(
            &self,
            image: &DynamicImage,
            fit: Fit,
            options: &FeatureOptions,
        ) -> Result<Features, Error> {
            self.inner.features(image, fit, options)
        }

        fn segment_diffcut(
            &self,
            image: &DynamicImage,
            fit: Fit,
            feature_options: &FeatureOptions,
            cut_options: &CutOptions,
            target: Target,
        ) -> Result<Segmentation, Error> {
            self.inner
                .segment_diffcut(image, fit, feature_options, cut_options, target)
        }

        fn stage_times(&self) -> StageTimes {
            self.inner.stage_times()
        }

        fn clone_box(&self) -> Box<dyn LoadedPipeline> {
            self.counts.clones.fetch_add(1, Ordering::SeqCst);
            Box::new(Counting {
                inner: self.inner.clone_box(),
                counts: self.counts.clone(),
            })
        }
    }

    /// The tiny test model, its clones and runs counted.
    fn counted_tiny_pipeline(counts: Arc<Counts>) -> Box<dyn LoadedPipeline> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../diffseg-sd/tests/fixtures/tiny"
        );
        let source = diffseg_sd::WeightsSource::detect(path).unwrap();
        let pipeline = Pipeline::<crate::backend::Cpu>::load(&source, Default::default()).unwrap();
        Box::new(Counting {
            inner: Box::new(pipeline),
            counts,
        })
    }

    /// Issue 19: N threads on one pool never hold more than its cap of handles
    /// (nor run more at once); the others wait, and every call completes.
    #[test]
    fn concurrent_runs_are_capped() {
        for cap in [1, 2] {
            let counts = Arc::new(Counts::default());
            let pool = PipelinePool::new(counted_tiny_pipeline(counts.clone()), cap);
            let image = DynamicImage::new_rgb8(24, 16);
            let options = MergeOptions::default();
            std::thread::scope(|scope| {
                for _ in 0..6 {
                    scope.spawn(|| {
                        pool.with(|pipeline| {
                            pipeline.segment(
                                std::slice::from_ref(&image),
                                Fit::Pad,
                                &options,
                                Target::Image,
                            )
                        })
                        .unwrap()
                    });
                }
            });
            let clones = counts.clones.load(Ordering::SeqCst);
            let most = counts.most_running.load(Ordering::SeqCst);
            assert!(clones <= cap, "cap {cap}: {clones} handles made");
            assert!(most <= cap, "cap {cap}: {most} runs at once");
            assert_eq!(
                pool.handles().idle.len(),
                clones,
                "cap {cap}: a handle not returned"
            );
        }
    }

    /// A run that panics frees its place: later callers still get a handle.
    #[test]
    fn a_panicking_run_frees_its_handle() {
        let counts = Arc::new(Counts::default());
        let pool = PipelinePool::new(counted_tiny_pipeline(counts.clone()), 1);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.with(|_| panic!("a failing run"))
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.handles().count, 0);
        assert_eq!(pool.with(|pipeline| pipeline.input_size()), 128);
    }
}
