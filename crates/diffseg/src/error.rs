//! The one error type of the facade.

use std::path::PathBuf;

use crate::backend::BackendUnavailable;
use crate::weights::{HubMissing, WeightsOrigin};

/// Everything that can go wrong between an image file and its segments, each
/// naming the file or option it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image file could not be opened or read.
    #[error("{path}: cannot read: {error}")]
    ImageRead {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An image file is corrupt, truncated or not an image.
    #[error("{path}: cannot decode: {reason}")]
    ImageDecode {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// An image file that decodes only because the decoder filled in what it
    /// could not read (truncated or corrupt data).
    #[error("{path}: damaged image: {reason}")]
    ImageDamaged {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image larger than the decoding limits.
    #[error("{path}: image too large: {reason}")]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// The limit that was hit.
        reason: String,
    },
    /// An image with more pixels than the limit ([`crate::ImageLimits`],
    /// [`crate::SegmenterBuilder::max_pixels`]); a file is reported as
    /// [`Error::ImageTooLarge`] naming it.
    #[error(
        "a {width}×{height} image has {} pixels, more than the limit of {max_pixels} \
         (raise it with max_pixels, or --max-pixels on the command line)",
        *width as u64 * *height as u64
    )]
    TooManyPixels {
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// An image with no pixels.
    #[error("the image has no pixels")]
    EmptyImage,
    /// A model input side of zero (a broken model config).
    #[error("invalid model input size {0}")]
    InvalidInputSize(usize),
    /// The backend asked for is not compiled in.
    #[error(transparent)]
    Backend(#[from] BackendUnavailable),
    /// The backend is compiled in but its device cannot start here (no
    /// driver, no adapter).
    #[error(transparent)]
    NoDevice(#[from] diffseg_device::NoDevice),
    /// A precision the backend cannot compute in.
    #[error("precision {precision} is not available on the {backend} backend (use f32)")]
    PrecisionUnavailable {
        /// The precision asked for.
        precision: crate::Precision,
        /// The backend asked for.
        backend: crate::BackendKind,
    },
    /// An explicit or `DIFFSEG_WEIGHTS` weights path that does not exist.
    #[error("weights {path} ({origin}) do not exist")]
    WeightsPathMissing {
        /// The path given.
        path: PathBuf,
        /// Where the path came from.
        origin: WeightsOrigin,
    },
    /// No weights anywhere, and no download possible.
    #[error(
        "no Stable Diffusion weights for {model}: not given with --weights or {env}, not in the \
         Hugging Face cache {cache}, and {reason}. Run `diffseg fetch --model {model}` where there \
         is network, or put these files in a folder and pass it with --weights (or {env}): {files}; \
         a single-file .safetensors checkpoint works too",
        env = crate::weights::WEIGHTS_ENV,
        cache = cache.display(),
        files = files.join(", ")
    )]
    WeightsNotFound {
        /// The model id looked for.
        model: String,
        /// Why nothing was downloaded.
        reason: String,
        /// The Hugging Face cache folder searched.
        cache: PathBuf,
        /// The files a diffusers folder needs.
        files: Vec<String>,
    },
    /// The Hub refused access to a repository (HTTP 401 or 403).
    #[error(
        "{model}: {endpoint} refused access (HTTP {status}{}): {advice}",
        if message.is_empty() { String::new() } else { format!(", {message}") }
    )]
    HubAccessDenied {
        /// The repository id.
        model: String,
        /// The Hub or mirror asked.
        endpoint: String,
        /// 401 (no or an invalid token) or 403 (a token without access).
        status: u16,
        /// What the Hub said (its `X-Error-Message`), if anything.
        message: String,
        /// What to do about it.
        advice: String,
    },
    /// The Hub has no such repository, revision or file (HTTP 404).
    #[error(
        "{model}: {} on {endpoint} (HTTP 404): {}",
        match missing {
            HubMissing::Repository => "no such repository".to_string(),
            HubMissing::Revision => format!("no revision `{revision}`"),
            HubMissing::File => format!("no file `{file}` at revision `{revision}`"),
        },
        match missing {
            HubMissing::Repository => "check the id given with --model (a private repository \
                 needs HF_TOKEN or `huggingface-cli login`)",
            HubMissing::Revision => "check --revision: a branch, tag or commit hash of the \
                 repository",
            HubMissing::File => "the repository is not a Stable Diffusion 1.x model in the \
                 diffusers layout at this revision (or use --weights with a local copy)",
        }
    )]
    HubNotFound {
        /// The repository id.
        model: String,
        /// The revision asked for.
        revision: String,
        /// The Hub or mirror asked.
        endpoint: String,
        /// What does not exist.
        missing: HubMissing,
        /// The file being downloaded when the Hub said so.
        file: String,
    },
    /// A download that failed on the way (network, server error, a cut or
    /// corrupt transfer) after its retries, or a server that is not a Hub.
    #[error(
        "downloading {model}{} from {endpoint}: {reason}",
        if file.is_empty() { String::new() } else { format!(" {file}") }
    )]
    Download {
        /// The repository id.
        model: String,
        /// The Hub or mirror asked.
        endpoint: String,
        /// The file in the repository (empty before any file).
        file: String,
        /// What failed.
        reason: String,
    },
    /// A download stopped on request ([`crate::weights::DownloadProgress::interrupted`]).
    #[error(
        "downloading {model} {file}: interrupted; running again resumes the download from what \
         arrived"
    )]
    DownloadInterrupted {
        /// The repository id.
        model: String,
        /// The file being downloaded.
        file: String,
    },
    /// A Hub answer whose header cannot be used as it is (a hash or commit
    /// that is not one, and could lead a path out of the cache; no size): a
    /// server that is not a Hub, or one not to be trusted.
    #[error(
        "downloading {model} {file} from {endpoint}: the answer's `{header}` header is {value:?}, \
         not {expected}; nothing was written. Is HF_ENDPOINT ({endpoint}) a Hugging Face Hub or mirror?"
    )]
    HubInvalidAnswer {
        /// The repository id.
        model: String,
        /// The Hub or mirror asked.
        endpoint: String,
        /// The file in the repository.
        file: String,
        /// The header.
        header: &'static str,
        /// Its value (at most 100 characters of it).
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A Hub URL (the endpoint or a redirect target) that is not asked.
    #[error("downloading {model}: refusing {url}: {reason}")]
    HubInsecureUrl {
        /// The repository id.
        model: String,
        /// The URL.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The weights exist but cannot be loaded.
    #[error("loading weights {path}: {error}")]
    Load {
        /// The folder or file.
        path: PathBuf,
        /// What the loader said.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The model produced attention that is not usable (NaN, wrong shapes).
    #[error("the model's attention is unusable: {0}")]
    Model(String),
    /// Feature options out of range (see [`crate::FeatureOptions::new`]).
    #[error("invalid feature options: {0}")]
    FeatureOptions(String),
    /// A vocabulary that cannot be used: refused entries, or no tokenizer to read it with
    /// (naming the folder looked in).
    #[error(transparent)]
    Vocabulary(#[from] crate::VocabularyError),

    /// An image an evaluation protocol cannot bring to the model's input.
    #[error("image {path} is {width}×{height}: {reason}")]
    ImageSize {
        /// The image file.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// Why it does not fit.
        reason: String,
    },
    /// Options that cannot be combined, e.g. DiffCut with a vocabulary (its UNet pass stops
    /// before most cross-attention layers).
    #[error("incompatible options: {0}")]
    IncompatibleOptions(String),

    /// A features file that cannot be read or is not DiffCut features.
    #[error("features {path}: {reason}")]
    Features {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved self-attention file that cannot be read or used.
    #[error("attention {path}: {reason}")]
    Attention {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The segmentation algorithm failed.
    #[error(transparent)]
    Segment(#[from] diffseg_core::Error),
    /// An output file could not be written.
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// An output path that is one of the inputs: diffseg never writes over
    /// what it reads.
    #[error("{output} is an input ({input}); diffseg never writes over its inputs: choose another output")]
    OutputIsInput {
        /// The output path as given.
        output: PathBuf,
        /// The input it resolves to.
        input: PathBuf,
    },
    /// A file diffseg did not write is where an output would go: it is never
    /// replaced, even when redoing results.
    #[error(
        "{path} is in the way: {reason}; not replaced (move it away or choose another output)"
    )]
    NotOurs {
        /// The file in the way.
        path: PathBuf,
        /// Why it is not taken for diffseg's.
        reason: String,
    },
    /// A name that names no choice of its kind (a backend, precision, fit
    /// or dataset given as text).
    #[error("unknown {what} `{name}`: {reason}")]
    UnknownName {
        /// What kind of choice (`backend`, `precision`, `fit`, `dataset`, `file variant`).
        what: &'static str,
        /// The name given.
        name: String,
        /// The names accepted, or why this one names nothing here.
        reason: String,
    },
    // Evaluation (the `eval` module): each names the file or folder concerned.
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
    /// A prediction PNG that is not a label map (8-bit palette or greyscale,
    /// 16-bit greyscale).
    #[error("prediction {path} is {found}: expected an 8-bit palette, 8-bit greyscale or 16-bit greyscale PNG whose pixels are segment indices")]
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
    /// An evaluation file that cannot be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// An evaluation PNG (labels, predictions) that cannot be decoded or encoded.
    #[error("{path}: {error}")]
    Png {
        /// The file.
        path: PathBuf,
        /// Why.
        error: image::ImageError,
    },
    /// A ground-truth label map a protocol cannot bring to its grid.
    #[error("label file {path} is {width}×{height}: {reason}")]
    LabelSize {
        /// The label file.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// Why it does not fit.
        reason: String,
    },
    /// An image id list that cannot be used.
    #[error("image list {path}: {reason}")]
    ImageList {
        /// The list file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// An evaluation I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// An evaluation PNG decoding or encoding error on `path`.
    pub(crate) fn png(path: impl Into<PathBuf>, source: image::ImageError) -> Error {
        Error::Png {
            path: path.into(),
            error: source,
        }
    }

    /// An [`Error::UnknownName`] of a `what` named `name`.
    pub(crate) fn unknown_name(what: &'static str, name: &str, reason: impl Into<String>) -> Error {
        Error::UnknownName {
            what,
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}
