//! Command-line options shared by every command that runs the model or segments.

use std::path::PathBuf;

use diffseg::weights::{FileVariant, DEFAULT_MODEL, DEFAULT_REVISION};
use diffseg::{
    BackendKind, Fit, ImageLimits, MergeOptions, Method, MethodKind, MethodSettings, Precision,
    SegmenterBuilder, Vocabulary,
};

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

/// DiffSeg's merging options (docs/method.md §5), for every command that merges (`segment`,
/// `merge`, `eval`): each flag and its meaning written once. A flag left out takes the
/// paper's value, from [`diffseg::Method::from_settings`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MergeArgs {
    /// KL threshold τ: one value for every iteration, or one per iteration,
    /// comma-separated (default 1.1, the paper's for COCO-Stuff-27; 0.9 for Cityscapes).
    /// Smaller values give more, smaller segments. With DiffCut: its cut threshold
    /// (default 0.5), or `auto` for its eigengap variant, which needs none.
    #[arg(long, value_delimiter = ',', value_name = "TAU|auto")]
    pub tau: Vec<Tau>,
    /// Anchors per side of the anchor grid (M): M×M starting points of the merging
    /// (default 16).
    #[arg(long, value_name = "M")]
    pub anchors: Option<usize>,
    /// Merging iterations (N) (default 3).
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// Refine the proposals with one k-means run (off in the paper's benchmarks).
    #[arg(long)]
    pub refine: bool,
}

impl MergeArgs {
    /// What was given, each flag left out `None`; `default_tau` replaces the method's own
    /// τ when `--tau` is left out (`eval` takes the dataset's).
    pub fn settings(&self, default_tau: Option<f32>) -> MethodSettings {
        let auto = self.tau.contains(&Tau::Auto);
        let values: Vec<f32> = self
            .tau
            .iter()
            .filter_map(|tau| match tau {
                Tau::Value(tau) => Some(*tau),
                Tau::Auto => None,
            })
            .collect();
        let tau = match (values.is_empty(), default_tau) {
            (false, _) => Some(values),
            (true, _) if auto => None,
            (true, tau) => tau.map(|tau| vec![tau]),
        };
        MethodSettings {
            tau,
            auto_tau: auto.then_some(true),
            anchors: self.anchors,
            iterations: self.iterations,
            refine: self.refine.then_some(true),
            ..MethodSettings::default()
        }
    }

    /// The merging options these arguments describe, checked: out of range they are a
    /// usage error, found before any work.
    pub fn merge_options(&self, default_tau: Option<f32>) -> anyhow::Result<MergeOptions> {
        self.settings(default_tau)
            .merge_options()
            .map_err(crate::exit::usage)
    }
}

/// The method choice and DiffCut's own options, for `segment` and `eval`. DiffSeg's options are
/// [`MergeArgs`] (`--tau` serves both: left out, each method takes its own default).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MethodArgs {
    /// The method: `diffseg` (self-attention maps merged by KL divergence) or `diffcut`
    /// (one layer's features cut by a recursive normalized cut; --tau defaults to 0.5 then).
    #[arg(long, default_value_t = MethodKind::DiffSeg, value_name = "METHOD")]
    pub method: MethodKind,
    /// DiffCut: exponent sharpening the affinities (default 10).
    #[arg(long, value_name = "A")]
    pub alpha: Option<f32>,
    /// DiffCut: side of the square grid the segments are assigned on (default 128).
    #[arg(long, value_name = "S")]
    pub mask_size: Option<usize>,
    /// DiffCut: refine the labels with PAMR on the image.
    #[arg(long)]
    pub pamr: bool,
    /// DiffCut: smooth the labels last with a 3×3 median filter.
    #[arg(long)]
    pub median: bool,
    /// DiffCut: side of the model's square input in pixels, a multiple of 8 (default 1024).
    #[arg(long, value_name = "PIXELS")]
    pub input_size: Option<usize>,
    /// DiffCut: seed of the noise added to the latent (default 42).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
}

impl MethodArgs {
    /// The method chosen, with `merge`'s flags and these, checked: out of range, or an
    /// option of the other method, they are a usage error, found before any work.
    /// `diffseg_tau` replaces DiffSeg's τ when `--tau` is left out (`eval` takes the
    /// dataset's); DiffCut keeps its own.
    pub fn method(&self, merge: &MergeArgs, diffseg_tau: Option<f32>) -> anyhow::Result<Method> {
        let default_tau = diffseg_tau.filter(|_| self.method == MethodKind::DiffSeg);
        let settings = MethodSettings {
            alpha: self.alpha,
            mask_size: self.mask_size,
            pamr: self.pamr.then_some(true),
            median: self.median.then_some(true),
            input_size: self.input_size,
            seed: self.seed,
            ..merge.settings(default_tau)
        };
        Method::from_settings(self.method, &settings).map_err(crate::exit::usage)
    }
}

impl ModelArgs {
    /// A segmenter builder with these options (and the method given).
    pub fn builder(&self, method: &Method) -> SegmenterBuilder {
        let mut builder = diffseg::Segmenter::builder()
            .backend(self.backend)
            .model(&self.model)
            .revision(&self.hub.revision)
            .precision(self.precision)
            .fit(self.fit)
            .allow_download(!self.offline)
            .max_pixels(self.max_pixels)
            .method(method.clone());
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

/// `--tau`: a threshold, or `auto` for the eigengap variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tau {
    Value(f32),
    Auto,
}

impl std::str::FromStr for Tau {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Tau::Auto);
        }
        text.parse()
            .map(Tau::Value)
            .map_err(|_| format!("`{text}` is neither a number nor `auto`"))
    }
}

impl std::fmt::Display for Tau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tau::Value(tau) => write!(f, "{tau}"),
            Tau::Auto => f.write_str("auto"),
        }
    }
}

/// Naming segments from a vocabulary (`segment`): docs/method.md §10.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NamingArgs {
    /// Name each segment from these entries: comma-separated ("sky,road surface,person"), or a
    /// preset of an evaluation dataset's class names (coco-stuff-27, cityscapes-27). Each
    /// segment in the JSON gets `name`, `name_score` and `names` (the --top-k best), and the
    /// overlay a legend. DiffSeg only.
    #[arg(
        long,
        value_name = "ENTRIES|PRESET",
        conflicts_with = "vocabulary_file"
    )]
    pub vocabulary: Option<String>,
    /// Name each segment from the entries of FILE, one per line (blank lines skipped).
    #[arg(long, value_name = "FILE")]
    pub vocabulary_file: Option<PathBuf>,
    /// The CLIP tokenizer folder (vocab.json, merges.txt) that reads the vocabulary
    /// (default: the model's tokenizer/; a single-file checkpoint needs this).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// How many best entries each named segment keeps, with their scores.
    #[arg(long, default_value_t = diffseg::DEFAULT_TOP_K as u32, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
}

impl NamingArgs {
    /// The vocabulary asked for, if any (refused entries are a usage error).
    pub fn vocabulary(&self) -> anyhow::Result<Option<Vocabulary>> {
        let vocabulary = match (&self.vocabulary, &self.vocabulary_file) {
            (Some(text), _) => Some(Vocabulary::parse(text)),
            (None, Some(file)) => Some(Vocabulary::from_file(file)),
            (None, None) => None,
        };
        vocabulary.transpose().map_err(crate::exit::usage)
    }

    /// `builder` naming segments from `vocabulary` with these options.
    pub fn apply(
        &self,
        builder: SegmenterBuilder,
        vocabulary: Option<&Vocabulary>,
    ) -> SegmenterBuilder {
        let Some(vocabulary) = vocabulary else {
            return builder;
        };
        let builder = builder
            .vocabulary(vocabulary.clone())
            .top_k(self.top_k as usize);
        match &self.tokenizer {
            Some(folder) => builder.tokenizer(folder),
            None => builder,
        }
    }
}
